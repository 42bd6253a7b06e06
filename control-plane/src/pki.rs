//! Who may talk to the data plane endpoints, and how data planes know they talk to us.
//!
//! The control plane is its own small CA: on first start it makes a CA certificate (ten
//! years) and a server certificate for `localhost`/`127.0.0.1` signed by it (a year), kept in
//! the data directory with the CA's key, so that the server certificate can be issued again
//! by the same CA (data planes keep trusting it) when it nears its end or is lost. Data planes
//! trust that CA (`cluster_ca_cert`). Data planes in turn present a client certificate that
//! must be pinned for a control plane (`dp-client-certificates`, Konnect's
//! `pinned_client_certs`) and within its validity: the handshake itself fails for any other
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::hub::sha256_hex;
use crate::store::Store;

/// How long the control plane's CA is valid: data planes trust it, and a new one means giving
/// every data plane the new `cluster_ca_cert`.
const CA_LIFETIME: Duration = Duration::days(3_650);
/// How long a server certificate is valid; the CA issues another at a start within
/// [`RENEW_BEFORE`] of its end.
const SERVER_LIFETIME: Duration = Duration::days(365);
/// How long a client certificate minted for a data plane (provisioned gateways, Envoy
/// bootstraps) is valid.
const CLIENT_LIFETIME: Duration = Duration::days(3_650);
const RENEW_BEFORE: Duration = Duration::days(30);
/// Every certificate starts this long before it is made: a data plane whose clock is behind
/// ours must not find it not valid yet.
const SKEW: Duration = Duration::hours(1);

const CA_CERT: &str = "cluster-ca.crt";
const CA_KEY: &str = "cluster-ca.key";
const SERVER_CERT: &str = "cluster.crt";
const SERVER_KEY: &str = "cluster.key";

/// The control plane's TLS identity for its data plane endpoints.
pub struct ServerIdentity {
    /// The CA data planes trust (PEM).
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerIdentity {
    /// Reads `cluster-ca.crt`, `cluster.crt` and `cluster.key` from the data directory, or
    /// makes them (and `cluster-ca.key`) on first start. The server certificate is issued
    /// again by the same CA when it expires within 30 days, or when it is lost, if the CA key
    /// is there; a CA is made only for a data directory that has none of these files.
    pub fn load_or_create(data_dir: &Path) -> Result<ServerIdentity, String> {
        ServerIdentity::load_or_create_at(data_dir, OffsetDateTime::now_utc())
    }

    fn load_or_create_at(data_dir: &Path, now: OffsetDateTime) -> Result<ServerIdentity, String> {
        let path = |file: &str| data_dir.join(file);
        let ca_cert = path(CA_CERT);
        if !ca_cert.exists() {
            let others = [CA_KEY, SERVER_CERT, SERVER_KEY]
                .into_iter()
                .filter(|file| path(file).exists())
                .collect::<Vec<_>>();
            if others.is_empty() {
                return ServerIdentity::create(data_dir, now);
            }
            // A CA made now would not be the one data planes were given: say so, never
            // replace it silently. (The first start writes cluster-ca.crt last, so a crash
            // during it ends here too.)
            return Err(format!(
                "{} is missing while {} {} there: restore cluster-ca.crt from a backup, or \
                 remove {} to start with a new CA (every data plane must then be given the \
                 new cluster_ca_cert)",
                ca_cert.display(),
                others.join(", "),
                if others.len() == 1 { "is" } else { "are" },
                others
                    .iter()
                    .map(|file| path(file).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and "),
            ));
        }
        let ca_pem = read(&ca_cert)?;
        let ca = Parsed::from_pem(&ca_pem).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
        if ca.not_after < now + RENEW_BEFORE {
            // A CA cannot be renewed without giving every data plane the new one.
            log::error!(
                "{} is valid until {}: once it has expired data planes refuse the control \
                 plane; a new CA (remove the cluster* files) must be given to every one of them",
                ca_cert.display(),
                utc(ca.not_after)
            );
        }
        // The CA key, or why the server certificate cannot be issued again.
        let issuer = ca_issuer(data_dir, &ca);
        let (issuer, reason) = match (current_server(data_dir), issuer) {
            (Ok((cert_pem, key_pem, not_after)), issuer) => {
                let ending = not_after < now + RENEW_BEFORE;
                match issuer {
                    Ok(issuer) if ending => (issuer, format!("it expires on {}", utc(not_after))),
                    issuer => {
                        if let Err(why) = issuer {
                            // Still served: data planes take it until its end.
                            let level = if ending {
                                log::Level::Error
                            } else {
                                log::Level::Warn
                            };
                            log::log!(
                                level,
                                "{} is valid until {} and cannot be issued again: {why}",
                                path(SERVER_CERT).display(),
                                utc(not_after)
                            );
                        }
                        return Ok(ServerIdentity {
                            ca_pem,
                            cert_pem,
                            key_pem,
                        });
                    }
                }
            }
            (Err(lost), Ok(issuer)) => (issuer, lost),
            (Err(lost), Err(why)) => {
                let all = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
                    .into_iter()
                    .filter(|file| path(file).exists())
                    .map(|file| path(file).display().to_string())
                    .collect::<Vec<_>>();
                return Err(format!(
                    "{lost}, and no other can be issued by the CA data planes trust ({}): \
                     {why}. Restore cluster.crt and cluster.key (or cluster-ca.key) from a \
                     backup, or remove {} to start with a new CA (every data plane must then \
                     be given the new cluster_ca_cert)",
                    ca_cert.display(),
                    all.join(" and ")
                ));
            }
        };
        let (cert_pem, key_pem) = issue_server(&issuer, ca.not_after, now)
            .map_err(|e| format!("issuing a server certificate: {e}"))?;
        write_private(&path(SERVER_KEY), &key_pem)?;
        write_private(&path(SERVER_CERT), &cert_pem)?;
        sync_folder(data_dir)?;
        log::warn!(
            "{} issued again by the same CA ({reason}), valid until {}",
            path(SERVER_CERT).display(),
            utc((now + SERVER_LIFETIME).min(ca.not_after))
        );
        Ok(ServerIdentity {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// A new CA, its key and a server certificate, written to `data_dir`.
    fn create(data_dir: &Path, now: OffsetDateTime) -> Result<ServerIdentity, String> {
        let made = (|| -> Result<_, rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "wasmgate control plane CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - SKEW;
            params.not_after = now + CA_LIFETIME;
            let ca_key = KeyPair::generate()?;
            let ca = params.self_signed(&ca_key)?;
            let ca_key_pem = ca_key.serialize_pem();
            let not_after = params.not_after;
            let issuer = Issuer::new(params, ca_key);
            let (cert_pem, key_pem) = issue_server(&issuer, not_after, now)?;
            Ok((ca.pem(), ca_key_pem, cert_pem, key_pem))
        })();
        let (ca_pem, ca_key_pem, cert_pem, key_pem) =
            made.map_err(|e| format!("making certificates: {e}"))?;
        // cluster-ca.crt last: a data directory with it has all the others.
        for (file, pem) in [
            (CA_KEY, &ca_key_pem),
            (SERVER_KEY, &key_pem),
            (SERVER_CERT, &cert_pem),
            (CA_CERT, &ca_pem),
        ] {
            write_private(&data_dir.join(file), pem)?;
        }
        sync_folder(data_dir)?;
        log::info!(
            "made a new CA in {} (valid until {}); data planes must trust it",
            data_dir.join(CA_CERT).display(),
            utc(now + CA_LIFETIME)
        );
        Ok(ServerIdentity {
            ca_pem,
            cert_pem,
            key_pem,
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

/// A server certificate for `localhost` and `127.0.0.1` issued by the CA, and its new key: a
/// year from an hour ago, and never beyond the CA's own end.
fn issue_server(
    issuer: &Issuer<'_, KeyPair>,
    ca_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "wasmgate control plane");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - SKEW;
    params.not_after = (now + SERVER_LIFETIME).min(ca_not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What the control plane needs of a certificate it reads back.
struct Parsed {
    not_after: OffsetDateTime,
    /// The subject public key's bits, to tell whether a key file goes with it.
    public_key: Vec<u8>,
    der: Vec<u8>,
}

impl Parsed {
    fn from_pem(pem: &str) -> Result<Parsed, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("no PEM certificate")?
            .map_err(|e| format!("invalid PEM certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("invalid certificate: {e}"))?;
        Ok(Parsed {
            not_after: cert.validity().not_after.to_datetime(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            der: der.as_ref().to_vec(),
        })
    }
}

/// The CA as an issuer, from `cluster-ca.crt` and `cluster-ca.key`; or why there is none.
fn ca_issuer(data_dir: &Path, ca: &Parsed) -> Result<Issuer<'static, KeyPair>, String> {
    let path = data_dir.join(CA_KEY);
    if !path.exists() {
        return Err(format!(
            "{} is not there (data directories made before the CA key was kept have none)",
            path.display()
        ));
    }
    let key = KeyPair::from_pem(&read(&path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    if key.der_bytes() != ca.public_key.as_slice() {
        return Err(format!(
            "{} is not the key of {}",
            path.display(),
            data_dir.join(CA_CERT).display()
        ));
    }
    // The issuer's name and key identifier come from the certificate data planes hold, so
    // what it issues chains to that certificate.
    Issuer::from_ca_cert_der(&CertificateDer::from(ca.der.as_slice()), key)
        .map_err(|e| format!("{}: {e}", data_dir.join(CA_CERT).display()))
}

/// `cluster.crt`, `cluster.key` and the certificate's end; or why they cannot be used (lost,
/// unreadable, or not a pair: a crash between the two writes of a re-issue).
fn current_server(data_dir: &Path) -> Result<(String, String, OffsetDateTime), String> {
    let cert_path = data_dir.join(SERVER_CERT);
    let key_path = data_dir.join(SERVER_KEY);
    for path in [&cert_path, &key_path] {
        if !path.exists() {
            return Err(format!("{} is missing", path.display()));
        }
    }
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let cert = Parsed::from_pem(&cert_pem).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    if key.der_bytes() != cert.public_key.as_slice() {
        return Err(format!(
            "{} is not the key of {}",
            key_path.display(),
            cert_path.display()
        ));
    }
    Ok((cert_pem, key_pem, cert.not_after))
}

/// A time for the log, to the second (RFC 3339).
fn utc(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Writes `path` (0600) whole or not at all: a temporary file beside it, synced, renamed over
/// it. The caller syncs the folder once its files are written.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let mut temporary = PathBuf::from(path);
    temporary.set_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(&temporary)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Makes the renames in `dir` durable.
pub(crate) fn sync_folder(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
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

/// A self-signed client certificate and key (PEM) for a data plane, valid ten years from an
/// hour ago: provisioned gateways and Envoy bootstraps get one, pinned for their control plane.
pub fn client_certificate(common_name: &str) -> Result<(String, String), String> {
    let now = OffsetDateTime::now_utc();
    client_certificate_valid(common_name, now - SKEW, now + CLIENT_LIFETIME)
}

fn client_certificate_valid(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(String, String), String> {
    let mut params = CertificateParams::new(vec![common_name.to_owned()])
        .map_err(|e| format!("client certificate for {common_name}: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(|e| format!("client key for {common_name}: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("client certificate for {common_name}: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether a certificate is valid at `now`: rustls' own errors, so the data plane gets a
/// `certificate_expired` alert and the log says when.
fn within_validity(der: &[u8], now: UnixTime) -> Result<(), CertificateError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertificateError::BadEncoding)?;
    let validity = cert.validity();
    let at = |timestamp: i64| {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(timestamp).unwrap_or(0),
        ))
    };
    let seconds = i128::from(now.as_secs());
    if seconds < i128::from(validity.not_before.timestamp()) {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: at(validity.not_before.timestamp()),
        });
    }
    if seconds > i128::from(validity.not_after.timestamp()) {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: at(validity.not_after.timestamp()),
        });
    }
    Ok(())
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
        now: UnixTime,
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
        // A pin says which certificate, not for how long: it holds only while the
        // certificate is valid.
        within_validity(end_entity.as_ref(), now).map_err(rustls::Error::InvalidCertificate)?;
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

/// The CA of custom domains' certificates when no ACME server is configured: its own, not
/// the cluster CA. Clients of a tenant's domain are told to trust it, and trusting the cluster
/// CA would also vouch for the control plane's data plane endpoints; and the cluster CA's key
/// stays read at start only, while this one signs whenever a domain is added or renewed.
const DOMAINS_CA_CERT: &str = "custom-domains-ca.crt";
const DOMAINS_CA_KEY: &str = "custom-domains-ca.key";

/// The custom-domains CA: `custom-domains-ca.crt` and its key in the data directory, made on
/// first use (ten years).
pub struct DomainCa {
    /// The CA certificate (PEM): what a custom domain's clients trust.
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// The leaf alone (PEM): clients hold the CA.
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl DomainCa {
    /// Reads the CA back, or makes it when `custom-domains-ca.crt` is not there (a key left
    /// without it is from a first start that crashed: nobody was given that CA).
    pub fn load_or_create(data_dir: &Path) -> Result<DomainCa, String> {
        let cert_path = data_dir.join(DOMAINS_CA_CERT);
        let key_path = data_dir.join(DOMAINS_CA_KEY);
        if !cert_path.exists() {
            return DomainCa::create(data_dir, OffsetDateTime::now_utc());
        }
        let ca_pem = read(&cert_path)?;
        let ca = Parsed::from_pem(&ca_pem).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        if key.der_bytes() != ca.public_key.as_slice() {
            return Err(format!(
                "{} is not the key of {}",
                key_path.display(),
                cert_path.display()
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.der.as_slice()), key)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        Ok(DomainCa {
            ca_pem,
            issuer,
            not_after: ca.not_after,
        })
    }

    fn create(data_dir: &Path, now: OffsetDateTime) -> Result<DomainCa, String> {
        let made = (|| -> Result<_, rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, "wasmgate custom domains CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - SKEW;
            params.not_after = now + CA_LIFETIME;
            let key = KeyPair::generate()?;
            let ca = params.self_signed(&key)?;
            let key_pem = key.serialize_pem();
            let not_after = params.not_after;
            Ok((ca.pem(), key_pem, Issuer::new(params, key), not_after))
        })();
        let (ca_pem, key_pem, issuer, not_after) =
            made.map_err(|e| format!("making the custom domains CA: {e}"))?;
        // The certificate last: a data directory with it has its key.
        write_private(&data_dir.join(DOMAINS_CA_KEY), &key_pem)?;
        write_private(&data_dir.join(DOMAINS_CA_CERT), &ca_pem)?;
        sync_folder(data_dir)?;
        log::info!(
            "made the custom domains CA in {} (valid until {})",
            data_dir.join(DOMAINS_CA_CERT).display(),
            utc(not_after)
        );
        Ok(DomainCa {
            ca_pem,
            issuer,
            not_after,
        })
    }

    /// A server certificate for `domain` and its new key, valid for `validity` from now (and
    /// from up to an hour before, for clients whose clocks are behind ours), never beyond the
    /// CA's own end. The hour shrinks to a third of a short validity (tests shorten it to
    /// seconds): renewal comes two thirds into the whole lifetime, which must stay ahead of
    /// the end.
    pub fn issue(&self, domain: &str, validity: std::time::Duration) -> Result<Leaf, String> {
        let validity = Duration::try_from(validity)
            .map_err(|e| format!("validity {} s: {e}", validity.as_secs()))?;
        // Whole seconds: what the certificate holds, so the caller's dates are the leaf's.
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(vec![domain.to_owned()])
            .map_err(|e| format!("certificate for {domain}: {e}"))?;
        params.distinguished_name.push(DnType::CommonName, domain);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - SKEW.min(validity / 3);
        params.not_after = (now + validity).min(self.not_after);
        let key = KeyPair::generate().map_err(|e| format!("key for {domain}: {e}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("certificate for {domain}: {e}"))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeSet, HashMap};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DAY: i64 = 86_400;

    /// (not_before, not_after) of a PEM certificate, as UNIX seconds.
    fn validity(pem: &str) -> (i64, i64) {
        let der = parse_certificate(pem).expect("one certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
        (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        )
    }

    fn unix_now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    /// Asserts `at` is within an hour and a minute before `expected` (the skew allowance, and
    /// the test's own time).
    fn about(at: i64, expected: i64, what: &str) {
        assert!(
            (expected - 3_660..=expected + 60).contains(&at),
            "{what}: {at}, expected about {expected} (an hour of skew allowed)"
        );
    }

    #[test]
    fn generated_certificates_have_bounded_validities() {
        let dir = tempfile::tempdir().expect("dir");
        let now = unix_now();
        let identity = ServerIdentity::load_or_create(dir.path()).expect("identity");
        let (ca_from, ca_until) = validity(&identity.ca_pem);
        about(ca_from, now, "CA not before");
        about(
            ca_until,
            now + 3_650 * DAY + 3_600,
            "CA not after: ten years",
        );
        let (from, until) = validity(&identity.cert_pem);
        about(from, now, "server not before");
        about(until, now + 365 * DAY + 3_600, "server not after: a year");
        let (client, _) = client_certificate("dp-1").expect("client");
        let (from, until) = validity(&client);
        about(from, now, "client not before");
        about(
            until,
            now + 3_650 * DAY + 3_600,
            "client not after: ten years",
        );
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("a time")
    }

    /// A self-signed client certificate valid from `from` to `until` (UNIX seconds).
    fn client_valid(from: i64, until: i64) -> (String, String) {
        client_certificate_valid("dp", at(from), at(until)).expect("certificate")
    }

    /// Pins `certs` for one control plane, in memory (what a commit of a pin does).
    fn pin(store: &Store, certs: &[&str]) {
        let pins = certs
            .iter()
            .map(|pem| {
                let der = parse_certificate(pem).expect("certificate");
                (fingerprint(&der), BTreeSet::from(["cp".to_owned()]))
            })
            .collect::<HashMap<_, _>>();
        store.trust().replace(pins);
    }

    fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
    }

    /// A TLS handshake with the control plane's data plane verifier, in memory: what the
    /// server's verifier said, and what the client saw (after a byte the server sends once
    /// it has accepted).
    async fn handshake(
        identity: &ServerIdentity,
        store: Arc<Store>,
        (cert_pem, key_pem): &(String, String),
    ) -> (Result<(), rustls::Error>, Result<(), rustls::Error>) {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(identity.server_config(store, &[]).expect("server"));
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
            roots.add(ca.expect("CA")).expect("root");
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = async move {
            match acceptor.accept(far).await {
                Ok(mut tls) => {
                    let _ = tls.write_all(b"!").await;
                    let _ = tls.flush().await;
                    // Held until the client read the byte.
                    let mut rest = Vec::new();
                    let _ = tls.read_to_end(&mut rest).await;
                    Ok(())
                }
                Err(e) => Err(rustls_error(&e).unwrap_or_else(|| panic!("server: {e}"))),
            }
        };
        let client = async move {
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = match connector.connect(name, near).await {
                Ok(tls) => tls,
                Err(e) => return Err(rustls_error(&e).unwrap_or_else(|| panic!("client: {e}"))),
            };
            // TLS 1.3: the client is done before the server has checked its certificate;
            // the server's verdict comes with the first read.
            let mut byte = [0u8; 1];
            let read = tls.read_exact(&mut byte).await;
            let _ = tls.shutdown().await;
            match read {
                Ok(_) => Ok(()),
                Err(e) => Err(rustls_error(&e).unwrap_or_else(|| panic!("client read: {e}"))),
            }
        };
        tokio::join!(server, client)
    }

    #[tokio::test]
    async fn a_pinned_certificate_outside_its_validity_fails_the_handshake() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let identity = ServerIdentity::load_or_create(dir.path()).expect("identity");
        let now = unix_now();
        let expired = client_valid(now - 10 * DAY, now - DAY);
        let early = client_valid(now + DAY, now + 10 * DAY);
        let valid = client_valid(now - DAY, now + DAY);
        pin(&store, &[&expired.0, &early.0, &valid.0]);

        let (server, client) = handshake(&identity, Arc::clone(&store), &valid).await;
        assert_eq!(
            (server, client),
            (Ok(()), Ok(())),
            "a valid pinned certificate"
        );

        let (server, client) = handshake(&identity, Arc::clone(&store), &expired).await;
        let Err(rustls::Error::InvalidCertificate(error)) = server else {
            panic!("an expired certificate is refused: {server:?}");
        };
        assert!(
            matches!(error, CertificateError::ExpiredContext { not_after, .. }
                if not_after.as_secs() == u64::try_from(now - DAY).expect("after 1970")),
            "{error}"
        );
        // What the data plane sees: why, not just that it was refused.
        assert_eq!(
            client,
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            ))
        );

        let (server, client) = handshake(&identity, Arc::clone(&store), &early).await;
        let Err(rustls::Error::InvalidCertificate(error)) = server else {
            panic!("a certificate not valid yet is refused: {server:?}");
        };
        assert!(
            matches!(error, CertificateError::NotValidYetContext { not_before, .. }
                if not_before.as_secs() == u64::try_from(now + DAY).expect("after 1970")),
            "{error}"
        );
        assert_eq!(
            client,
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired
            ))
        );
    }

    #[test]
    fn without_the_ca_key_a_lost_server_certificate_stops_the_start_and_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let first = ServerIdentity::load_or_create(dir.path()).expect("identity");
        // A data dir from an earlier release has no CA key; its cluster.crt is lost.
        let _ = std::fs::remove_file(dir.path().join("cluster-ca.key"));
        std::fs::remove_file(dir.path().join("cluster.crt")).expect("remove");
        let refused = ServerIdentity::load_or_create(dir.path()).map(|_| ());
        let Err(message) = refused else {
            panic!("a new CA would cut every data plane");
        };
        for named in ["cluster.crt", "cluster-ca.key", "cluster-ca.crt"] {
            assert!(message.contains(named), "{named} in: {message}");
        }
        let ca = std::fs::read_to_string(dir.path().join("cluster-ca.crt")).expect("CA");
        assert_eq!(ca, first.ca_pem, "the CA file is untouched");
        assert!(!dir.path().join("cluster.crt").exists());
    }

    #[test]
    fn the_verifier_takes_a_pinned_certificate_from_its_first_to_its_last_second() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let from = 1_800_000_000;
        let until = from + 30 * DAY;
        let (pem, _) = client_valid(from, until);
        let unpinned = client_valid(from, until);
        pin(&store, &[&pem]);
        let verifier = PinnedClients {
            store,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let der = CertificateDer::from(parse_certificate(&pem).expect("der"));
        let verify = |der: &CertificateDer<'_>, unix: i64| {
            let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(unix).expect("after 1970"),
            ));
            verifier.verify_client_cert(der, &[], now).map(|_| ())
        };
        for unix in [from, from + DAY, until] {
            assert!(verify(&der, unix).is_ok(), "valid at {unix}");
        }
        assert!(matches!(
            verify(&der, from - 1),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            ))
        ));
        assert!(matches!(
            verify(&der, until + 1),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            ))
        ));
        let other = CertificateDer::from(parse_certificate(&unpinned.0).expect("der"));
        assert_eq!(
            verify(&other, from + DAY),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            )),
            "a valid certificate still has to be pinned"
        );
    }

    /// The issuer, validity and key of `cert_pem`, checked to be issued by `ca_pem`.
    fn issued_by(cert_pem: &str, ca_pem: &str) -> (i64, i64) {
        let der = parse_certificate(cert_pem).expect("certificate");
        let ca_der = parse_certificate(ca_pem).expect("CA");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA X.509");
        assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw(), "issuer");
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA's key");
        // OpenSSL and BoringSSL (Envoy) also match an authority key identifier, when there is
        // one, to the CA's subject key identifier.
        use x509_parser::extensions::ParsedExtension;
        let authority = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
                _ => None,
            });
        let subject = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.clone()),
                _ => None,
            });
        if authority.is_some() {
            assert_eq!(authority, subject, "the CA's key identifier");
        }
        validity(cert_pem)
    }

    fn files(dir: &Path) -> Vec<(String, String)> {
        [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
            .into_iter()
            .filter_map(|file| {
                let text = std::fs::read_to_string(dir.join(file)).ok()?;
                Some((file.to_owned(), text))
            })
            .collect()
    }

    #[test]
    fn a_server_certificate_near_its_end_is_issued_again_by_the_same_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let start = OffsetDateTime::now_utc();
        let first = ServerIdentity::load_or_create_at(dir.path(), start).expect("identity");
        let written = files(dir.path());
        assert_eq!(written.len(), 4, "the CA key is kept");
        for (file, _) in &written {
            let mode = std::fs::metadata(dir.path().join(file))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        issued_by(&first.cert_pem, &first.ca_pem);

        // 200 days on: more than 30 days left, nothing changes.
        let later = ServerIdentity::load_or_create_at(dir.path(), start + Duration::days(200))
            .expect("identity");
        assert_eq!(later.cert_pem, first.cert_pem);
        assert_eq!(files(dir.path()), written);

        // 340 days on: 25 days left, issued again by the same CA, with a new key.
        let renewal = start + Duration::days(340);
        let renewed = ServerIdentity::load_or_create_at(dir.path(), renewal).expect("identity");
        assert_eq!(renewed.ca_pem, first.ca_pem, "the same CA");
        assert_ne!(renewed.cert_pem, first.cert_pem);
        assert_ne!(renewed.key_pem, first.key_pem);
        let (from, until) = issued_by(&renewed.cert_pem, &first.ca_pem);
        about(from, renewal.unix_timestamp(), "renewed not before");
        about(
            until,
            (renewal + Duration::days(365)).unix_timestamp() + 3_600,
            "renewed not after",
        );
        let now = files(dir.path());
        assert_eq!(now[0], written[0], "cluster-ca.crt untouched");
        assert_eq!(now[1], written[1], "cluster-ca.key untouched");
        assert_eq!(now[2].1, renewed.cert_pem, "written");
        assert_eq!(now[3].1, renewed.key_pem, "written");
        let again = ServerIdentity::load_or_create_at(dir.path(), renewal).expect("identity");
        assert_eq!(
            again.cert_pem, renewed.cert_pem,
            "read back, not issued again"
        );

        // Near the CA's own end, the server certificate ends with it.
        let late = start + Duration::days(3_640);
        let last = ServerIdentity::load_or_create_at(dir.path(), late).expect("identity");
        let (_, ca_until) = validity(&first.ca_pem);
        assert_eq!(issued_by(&last.cert_pem, &first.ca_pem).1, ca_until);
    }

    #[tokio::test]
    async fn a_lost_server_certificate_is_issued_again_when_the_ca_key_is_there() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let first = ServerIdentity::load_or_create(dir.path()).expect("identity");
        std::fs::remove_file(dir.path().join(SERVER_CERT)).expect("remove");
        let second = ServerIdentity::load_or_create(dir.path()).expect("identity");
        assert_eq!(second.ca_pem, first.ca_pem, "the same CA");
        assert_ne!(second.cert_pem, first.cert_pem);
        issued_by(&second.cert_pem, &first.ca_pem);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(SERVER_CERT)).expect("written"),
            second.cert_pem
        );

        // A crash between the two writes of a re-issue leaves a key that is not the
        // certificate's: issued again too.
        let (_, stray_key) = client_certificate("stray").expect("key");
        std::fs::write(dir.path().join(SERVER_KEY), stray_key).expect("write");
        let third = ServerIdentity::load_or_create(dir.path()).expect("identity");
        assert_eq!(third.ca_pem, first.ca_pem);
        assert_ne!(third.cert_pem, second.cert_pem);

        // A data plane that was given the first CA still completes its handshake.
        let identity = ServerIdentity {
            ca_pem: first.ca_pem.clone(),
            ..third
        };
        let now = unix_now();
        let client = client_valid(now - DAY, now + DAY);
        pin(&store, &[&client.0]);
        let (server, client) = handshake(&identity, store, &client).await;
        assert_eq!((server, client), (Ok(()), Ok(())));
    }

    #[test]
    fn an_earlier_releases_data_dir_keeps_its_certificates() {
        let dir = tempfile::tempdir().expect("dir");
        let start = OffsetDateTime::now_utc();
        let first = ServerIdentity::load_or_create_at(dir.path(), start).expect("identity");
        std::fs::remove_file(dir.path().join(CA_KEY)).expect("remove");
        let written = files(dir.path());
        for days in [0, 340] {
            // Near its end it cannot be issued again: still used (logged), nothing written.
            let later = ServerIdentity::load_or_create_at(dir.path(), start + Duration::days(days))
                .expect("identity");
            assert_eq!(later.ca_pem, first.ca_pem);
            assert_eq!(later.cert_pem, first.cert_pem);
            assert_eq!(later.key_pem, first.key_pem);
            assert_eq!(files(dir.path()), written);
        }
    }

    #[test]
    fn a_ca_key_that_is_not_the_cas_issues_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let first = ServerIdentity::load_or_create(dir.path()).expect("identity");
        let (_, other_key) = client_certificate("other").expect("key");
        std::fs::write(dir.path().join(CA_KEY), other_key).expect("write");
        std::fs::remove_file(dir.path().join(SERVER_CERT)).expect("remove");
        let Err(message) = ServerIdentity::load_or_create(dir.path()).map(|_| ()) else {
            panic!("a certificate data planes would refuse");
        };
        assert!(message.contains("is not the key of"), "{message}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_CERT)).expect("CA"),
            first.ca_pem
        );
    }

    #[test]
    fn a_lost_ca_certificate_is_not_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        ServerIdentity::load_or_create(dir.path()).expect("identity");
        std::fs::remove_file(dir.path().join(CA_CERT)).expect("remove");
        let written = files(dir.path());
        let Err(message) = ServerIdentity::load_or_create(dir.path()).map(|_| ()) else {
            panic!("a new CA would cut every data plane");
        };
        for named in [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY] {
            assert!(message.contains(named), "{named} in: {message}");
        }
        assert_eq!(files(dir.path()), written, "nothing written");
    }

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
