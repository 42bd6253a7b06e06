//! Who may talk to the data plane endpoints, and how data planes know they talk to us.
//!
//! The control plane is its own small CA: on first start it makes a CA certificate and a
//! server certificate for `localhost`/`127.0.0.1` signed by it, kept in the data directory.
//! Data planes trust that CA (`cluster_ca_cert`). Data planes in turn present a client
//! certificate that must be pinned for a control plane (`dp-client-certificates`, Konnect's
//! `pinned_client_certs`): the handshake itself fails for any other certificate.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::hub::sha256_hex;
use crate::store::Store;

/// The control plane's TLS identity for its data plane endpoints.
pub struct ServerIdentity {
    /// The CA data planes trust (PEM).
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerIdentity {
    /// Reads `cluster-ca.crt`, `cluster.crt` and `cluster.key` from the data directory, or
    /// makes them on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerIdentity, String> {
        let ca = data_dir.join("cluster-ca.crt");
        let cert = data_dir.join("cluster.crt");
        let key = data_dir.join("cluster.key");
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        if ca.exists() && cert.exists() && key.exists() {
            return Ok(ServerIdentity {
                ca_pem: read(&ca)?,
                cert_pem: read(&cert)?,
                key_pem: read(&key)?,
            });
        }
        let identity =
            ServerIdentity::generate().map_err(|e| format!("making certificates: {e}"))?;
        for (path, pem) in [
            (&ca, &identity.ca_pem),
            (&cert, &identity.cert_pem),
            (&key, &identity.key_pem),
        ] {
            write_private(path, pem)?;
        }
        Ok(identity)
    }

    fn generate() -> Result<ServerIdentity, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wasmgate control plane CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "wasmgate control plane");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(ServerIdentity {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A rustls server configuration that requires a pinned client certificate.
    pub fn server_config(
        &self,
        store: Arc<Store>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedClients {
            store,
            algorithms: provider.signature_verification_algorithms,
        });
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cluster.crt: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("cluster.key: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| format!("cluster certificate: {e}"))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// SHA-256 (hex) of a certificate's DER: what pinning compares.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// The single certificate of a PEM document, as DER; the error names what is wrong.
pub fn parse_certificate(pem: &str) -> Result<Vec<u8>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "invalid PEM certificate".to_owned())?;
    match certs.as_slice() {
        [one] => Ok(one.as_ref().to_vec()),
        [] => Err("expected a PEM certificate".to_owned()),
        _ => Err("expected exactly one certificate".to_owned()),
    }
}

/// A self-signed client certificate and key (PEM) for a data plane: provisioned gateways get
/// one, pinned for their control plane.
pub fn client_certificate(common_name: &str) -> Result<(String, String), String> {
    let mut params = CertificateParams::new(vec![common_name.to_owned()])
        .map_err(|e| format!("client certificate for {common_name}: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Accepts exactly the client certificates pinned for some control plane.
#[derive(Debug)]
struct PinnedClients {
    store: Arc<Store>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // In memory: this runs inside every handshake, on the async workers.
        if self
            .store
            .pinned_control_planes(&fingerprint(end_entity.as_ref()))
            .is_empty()
        {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connected data plane's certificate: its fingerprint, and the control planes it may
/// serve.
pub struct Peer {
    pub fingerprint: String,
    pub control_planes: Vec<String>,
}

/// Who a connected data plane is, from its (already pinned) certificate.
pub fn peer(store: &Store, chain: Option<&[CertificateDer<'static>]>) -> Result<Peer, String> {
    let leaf = chain
        .and_then(|chain| chain.first())
        .ok_or("no client certificate")?;
    let fingerprint = fingerprint(leaf.as_ref());
    Ok(Peer {
        control_planes: store.pinned_control_planes(&fingerprint),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_document_must_hold_exactly_one_certificate() {
        let (pem, key) = client_certificate("dp-1").expect("certificate");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key}");
        let der = parse_certificate(&pem).expect("one certificate");
        assert_eq!(der.first(), Some(&0x30), "a DER SEQUENCE");
        let print = fingerprint(&der);
        assert_eq!(print, sha256_hex(&der));
        assert_eq!(print.len(), 64);
        assert!(print
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let (other, _) = client_certificate("dp-1").expect("certificate");
        assert_ne!(
            fingerprint(&parse_certificate(&other).expect("other")),
            print,
            "a new key pair for the same name is a different certificate"
        );

        assert_eq!(
            parse_certificate(&format!("{pem}{other}")),
            Err("expected exactly one certificate".to_owned())
        );
        assert_eq!(
            parse_certificate("not a certificate"),
            Err("expected a PEM certificate".to_owned())
        );
        assert_eq!(
            parse_certificate(&key),
            Err("expected a PEM certificate".to_owned()),
            "a key is not a certificate"
        );
        assert_eq!(
            parse_certificate("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err("invalid PEM certificate".to_owned())
        );
    }
}
