//! Downstream TLS (rustls): one or more certificates, chosen by the client's SNI; the first
//! one answers clients that send no name or a name no certificate covers. ALPN offers h2 and
//! http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate chain and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn covers(key: &CertifiedKey, name: &str) -> bool {
        let Some(leaf) = key.cert.first() else {
            return false;
        };
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .and_then(|cert| cert.verify_is_valid_for_subject_name(&server_name))
            .is_ok()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| {
                self.certificates
                    .iter()
                    .find(|k| SniResolver::covers(k, name))
            })
            .or_else(|| self.certificates.first())
            .cloned()
    }
}

fn load(
    files: &CertificateFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let context = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| context(&files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| context(&files.cert, &e))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| context(&files.key, &e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| context(&files.key, &e))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The server configuration for the given certificates (at least one).
pub fn server_config(certificates: &[CertificateFiles]) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = certificates
        .iter()
        .map(|files| load(files, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err("TLS needs at least one certificate".into());
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certificates }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
