//! Downstream TLS (rustls), the certificate chosen by the client's SNI: the configuration's
//! `certificates` by their `snis` (an exact name, then a `*.` wildcard one label deep), then the
//! operator's `--tls-cert` files by the names they cover, then the first of those files; with
//! none of these, the handshake is refused. ALPN offers h2 and http/1.1.
//!
//! The configuration's certificates are loaded with each snapshot ([`ConfigCertificates`]) and
//! swapped into the listener's resolver with it: a renewed certificate serves from the next
//! handshake, and connections already open keep theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use kit::schema::FieldError;
use model::ConfigError;
use rustls::crypto::CryptoProvider;
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

/// The configuration's certificates, loaded, and the names each one serves.
#[derive(Debug, Default)]
pub struct ConfigCertificates {
    /// In the configuration's order (a later snapshot reuses those whose id and PEM are
    /// unchanged).
    loaded: Vec<Arc<CertifiedKey>>,
    /// An SNI to its certificate's index in `loaded`.
    exact: HashMap<String, usize>,
    /// The parent of a `*.` SNI (`example.test` for `*.example.test`) to its certificate.
    wildcard: HashMap<String, usize>,
}

impl ConfigCertificates {
    /// Loads `certificates` as rustls will serve them, taking those whose id and PEM are
    /// unchanged from `previous` (the configuration it replaces, with its loaded
    /// certificates). A certificate rustls cannot load, or whose key is not its leaf's, refuses
    /// the whole configuration, naming it as the declarative file does (`certificates.<n>`,
    /// from 1).
    pub fn load(
        certificates: &[model::Certificate],
        previous: Option<(&[model::Certificate], &ConfigCertificates)>,
    ) -> Result<ConfigCertificates, ConfigError> {
        let provider = rustls::crypto::ring::default_provider();
        // By id, then compared whole: PEM is up to 64 KiB a field, not worth hashing.
        let reusable: HashMap<&str, (&model::Certificate, &Arc<CertifiedKey>)> = previous
            .map(|(config, loaded)| {
                config
                    .iter()
                    .zip(&loaded.loaded)
                    .map(|(c, key)| (c.id.as_str(), (c, key)))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = ConfigCertificates::default();
        let mut fields = Vec::new();
        for (index, certificate) in certificates.iter().enumerate() {
            let path = format!("certificates.{}", index + 1);
            let reused = reusable
                .get(certificate.id.as_str())
                .filter(|(was, _)| was.cert == certificate.cert && was.key == certificate.key);
            let key = match reused {
                Some((_, key)) => Arc::clone(key),
                None => match load_pem(&certificate.cert, &certificate.key, &provider) {
                    Ok(key) => key,
                    Err(LoadError { field, message }) => {
                        let path = match field {
                            Some(field) => format!("{path}.{field}"),
                            None => path,
                        };
                        fields.push(FieldError { path, message });
                        continue;
                    }
                },
            };
            out.loaded.push(key);
            let at = out.loaded.len() - 1;
            for sni in &certificate.snis {
                match sni.strip_prefix("*.") {
                    Some(parent) => out.wildcard.insert(parent.to_owned(), at),
                    None => out.exact.insert(sni.clone(), at),
                };
            }
        }
        if fields.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError { fields })
        }
    }

    /// The certificate for `name` (lowercase, no trailing dot): by exact SNI, else by the
    /// wildcard of its parent.
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let index = self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })?;
        self.loaded.get(*index)
    }
}

/// Why a certificate did not load, and which of its fields says so (`None`: the pair).
struct LoadError {
    field: Option<&'static str>,
    message: String,
}

fn load_pem(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, LoadError> {
    let field = |field, message: String| LoadError {
        field: Some(field),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| field("cert", format!("invalid certificate: {e}")))?;
    if chain.is_empty() {
        return Err(field(
            "cert",
            "invalid certificate: no PEM CERTIFICATE block in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| field("key", format!("invalid key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| field("key", format!("invalid key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(LoadError {
                field: None,
                message: "certificate does not match key".into(),
            })
        }
        // ring always knows a loaded key's public half; were it not to, rustls serves it.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(e) => Err(field("cert", format!("invalid certificate: {e}"))),
    }
}

#[derive(Debug)]
struct SniResolver {
    /// The operator's `--tls-cert` files, in order.
    files: Vec<Arc<CertifiedKey>>,
    /// The running configuration's certificates.
    configured: ArcSwap<ConfigCertificates>,
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

    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.strip_suffix('.').unwrap_or(name);
            let lowered;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lowered = name.to_ascii_lowercase();
                lowered.as_str()
            } else {
                name
            };
            if let Some(key) = self.configured.load().find(name) {
                return Some(Arc::clone(key));
            }
            if let Some(key) = self.files.iter().find(|k| SniResolver::covers(k, name)) {
                return Some(Arc::clone(key));
            }
        }
        self.files.first().cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name())
    }
}

fn load_files(
    files: &CertificateFiles,
    provider: &CryptoProvider,
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

/// The TLS listener's server configuration and its resolver, which the gateway hands each
/// new configuration's certificates ([`TlsListener::serve`]).
#[derive(Clone, Debug)]
pub struct TlsListener {
    pub config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
}

impl TlsListener {
    /// A listener presenting `files` (any number: with none, only the configuration's
    /// certificates are served).
    pub fn new(files: &[CertificateFiles]) -> Result<TlsListener, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = files
            .iter()
            .map(|files| load_files(files, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = Arc::new(SniResolver {
            files,
            configured: ArcSwap::default(),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            config: Arc::new(config),
            resolver,
        })
    }

    /// Serves `certificates` from the next handshake on.
    pub fn serve(&self, certificates: Arc<ConfigCertificates>) {
        self.resolver.configured.store(certificates);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(names: &[&str]) -> (String, String) {
        let issued = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        (issued.cert.pem(), issued.signing_key.serialize_pem())
    }

    fn certificate(id: &str, (cert, key): &(String, String), snis: &[&str]) -> model::Certificate {
        model::Certificate {
            id: id.into(),
            cert: cert.clone(),
            key: key.clone(),
            snis: snis.iter().map(|s| (*s).to_owned()).collect(),
            tags: Vec::new(),
        }
    }

    fn leaf(key: &CertifiedKey) -> &[u8] {
        key.cert[0].as_ref()
    }

    /// Exact names, then one-label wildcards, then the files by SAN, then the first file;
    /// nothing at all without files.
    #[test]
    fn names_pick_config_certificates_then_files() {
        let exact = issue(&["api.example.test"]);
        let wild = issue(&["*.example.test"]);
        let configured = vec![
            certificate("a", &exact, &["api.example.test"]),
            certificate("w", &wild, &["*.example.test"]),
        ];
        let loaded = Arc::new(ConfigCertificates::load(&configured, None).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for name in ["first.test", "second.test"] {
            let (cert, key) = issue(&[name]);
            let paths = CertificateFiles {
                cert: dir.path().join(format!("{name}.pem")),
                key: dir.path().join(format!("{name}.key")),
            };
            std::fs::write(&paths.cert, cert).unwrap();
            std::fs::write(&paths.key, key).unwrap();
            files.push(paths);
        }
        let listener = TlsListener::new(&files).unwrap();
        listener.serve(Arc::clone(&loaded));
        let resolver = &listener.resolver;
        let pick = |name: Option<&str>| resolver.find(name).map(|k| leaf(&k).to_vec());
        let exact_der = Some(leaf(&loaded.loaded[0]).to_vec());
        let wild_der = Some(leaf(&loaded.loaded[1]).to_vec());
        let first = Some(leaf(&resolver.files[0]).to_vec());
        let second = Some(leaf(&resolver.files[1]).to_vec());
        assert_eq!(pick(Some("api.example.test")), exact_der);
        assert_eq!(pick(Some("API.Example.Test.")), exact_der);
        assert_eq!(pick(Some("www.example.test")), wild_der);
        // One label only: neither a deeper name nor the parent itself.
        assert_eq!(pick(Some("a.b.example.test")), first);
        assert_eq!(pick(Some("example.test")), first);
        assert_eq!(pick(Some("second.test")), second);
        assert_eq!(pick(None), first);

        let bare = TlsListener::new(&[]).unwrap();
        bare.serve(loaded);
        assert_eq!(
            bare.resolver
                .find(Some("api.example.test"))
                .map(|k| leaf(&k).to_vec()),
            exact_der
        );
        assert!(bare.resolver.find(Some("other.test")).is_none());
        assert!(bare.resolver.find(None).is_none());
    }

    #[test]
    fn a_certificate_that_does_not_load_is_named() {
        let one = issue(&["one.test"]);
        let two = issue(&["two.test"]);
        let swapped = (one.0.clone(), two.1.clone());
        let not_der = (
            "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n".to_owned(),
            one.1.clone(),
        );
        let bad_key = (
            one.0.clone(),
            "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n".to_owned(),
        );
        let error = ConfigCertificates::load(
            &[
                certificate("ok", &one, &["one.test"]),
                certificate("swapped", &swapped, &["x.test"]),
                certificate("not-der", &not_der, &["y.test"]),
                certificate("bad-key", &bad_key, &["z.test"]),
            ],
            None,
        )
        .unwrap_err();
        let paths: Vec<&str> = error.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "certificates.2",
                "certificates.3.cert",
                "certificates.4.key"
            ],
            "{error}"
        );
        assert_eq!(error.fields[0].message, "certificate does not match key");
        assert!(
            error.fields[1].message.starts_with("invalid certificate: "),
            "{error}"
        );
        assert!(
            error.fields[2].message.starts_with("invalid key: "),
            "{error}"
        );
    }

    /// An unchanged certificate is not loaded again; a renewed one (same id, new PEM) is.
    #[test]
    fn a_new_configuration_reuses_unchanged_certificates() {
        let one = issue(&["one.test"]);
        let two = issue(&["two.test"]);
        let first = vec![
            certificate("one", &one, &["one.test"]),
            certificate("two", &two, &["two.test"]),
        ];
        let loaded = ConfigCertificates::load(&first, None).unwrap();
        let renewed = issue(&["two.test"]);
        let second = vec![
            certificate("one", &one, &["one.test"]),
            certificate("two", &renewed, &["two.test"]),
        ];
        let reloaded = ConfigCertificates::load(&second, Some((&first, &loaded))).unwrap();
        assert!(Arc::ptr_eq(&loaded.loaded[0], &reloaded.loaded[0]));
        assert!(!Arc::ptr_eq(&loaded.loaded[1], &reloaded.loaded[1]));
        assert_ne!(leaf(&loaded.loaded[1]), leaf(&reloaded.loaded[1]));
        assert_eq!(
            leaf(reloaded.find("two.test").unwrap()),
            leaf(&reloaded.loaded[1])
        );
    }
}
