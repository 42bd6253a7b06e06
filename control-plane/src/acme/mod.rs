//! Certificates for custom domains: from an ACME server (RFC 8555, HTTP-01 answered by the
//! data planes) when one is configured, else from the control plane's own custom-domains CA.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::pki;

mod client;
pub use client::AcmeIssuer;

/// A boxed `Send` future: [`ChallengeSink`] is used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A certificate for one domain and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    /// PEM chain, leaf first.
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// `"acme"` or `"control-plane-ca"`.
    pub authority: &'static str,
}

/// Why a certificate was not issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueError {
    /// For the domain's `state_metadata.reason`: the ACME problem's type and detail, or what
    /// failed on the way.
    pub reason: String,
    /// The ACME server said no (rejectedIdentifier, unauthorized, an invalid challenge):
    /// asking again gets the same answer, so the domain is in `error`, not retried.
    pub refused: bool,
}

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where HTTP-01 challenges go: the control plane puts the token into the domain's control
/// plane config (pushed to every data plane) and returns once the data planes serve it.
pub trait ChallengeSink: Send + Sync {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()>;
}

/// Where custom domains' certificates come from (the control plane's options).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The ACME server; without one, the control plane's own CA issues.
    pub acme: Option<AcmeSettings>,
    /// How long a certificate from the control plane's own CA is valid.
    pub ca_validity: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            acme: None,
            ca_validity: DEFAULT_CA_VALIDITY,
        }
    }
}

/// Let's Encrypt's lifetime, so that renewal behaves alike with either issuer.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// `--acme-directory`, `--acme-ca-file`, `--acme-contact`.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// A PEM file of CA certificates trusted for the ACME server's HTTPS, besides the
    /// public roots (pebble's test certificate).
    pub ca_file: Option<PathBuf>,
    /// The account's contacts (`mailto:...`).
    pub contact: Vec<String>,
}

/// Issues certificates for custom domains.
pub enum Issuer {
    Acme(AcmeIssuer),
    ControlPlaneCa(ControlPlaneCa),
}

impl Issuer {
    /// The ACME issuer when `settings.acme` is set, else the control plane's own CA (made in
    /// `data_dir` on first use). Reads the files it needs now, so a bad one stops the start;
    /// the ACME account is made (or read back from `data_dir`) on the first issue.
    pub fn new(settings: &Settings, data_dir: &Path) -> Result<Issuer, String> {
        match &settings.acme {
            Some(acme) => AcmeIssuer::new(acme, data_dir).map(Issuer::Acme),
            None => ControlPlaneCa::new(data_dir, settings.ca_validity).map(Issuer::ControlPlaneCa),
        }
    }

    /// What the API shows as the certificates' authority.
    pub fn authority(&self) -> &'static str {
        match self {
            Issuer::Acme(_) => AcmeIssuer::AUTHORITY,
            Issuer::ControlPlaneCa(_) => ControlPlaneCa::AUTHORITY,
        }
    }

    /// A certificate for `domain`; ACME's HTTP-01 challenge goes through `sink`.
    pub async fn issue(
        &self,
        domain: &str,
        sink: &dyn ChallengeSink,
    ) -> Result<Issued, IssueError> {
        match self {
            Issuer::Acme(acme) => acme.issue(domain, sink).await,
            Issuer::ControlPlaneCa(ca) => ca.issue(domain),
        }
    }
}

/// When to renew a certificate: two thirds into its lifetime, so a third is left (Let's
/// Encrypt's advice) for retries when the ACME server or a data plane is down.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * 2 / 3
}

/// `not_before` and `not_after` of the first certificate of a PEM chain.
pub fn validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), String> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let at = |seconds: i64| {
        u64::try_from(seconds)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| format!("certificate dated before 1970 ({seconds})"))
    };
    Ok((
        at(cert.validity().not_before.timestamp())?,
        at(cert.validity().not_after.timestamp())?,
    ))
}

/// Issues from the control plane's own custom-domains CA ([`pki::DomainCa`]).
pub struct ControlPlaneCa {
    ca: pki::DomainCa,
    validity: Duration,
}

impl ControlPlaneCa {
    pub const AUTHORITY: &'static str = "control-plane-ca";

    pub fn new(data_dir: &Path, validity: Duration) -> Result<ControlPlaneCa, String> {
        Ok(ControlPlaneCa {
            ca: pki::DomainCa::load_or_create(data_dir)?,
            validity,
        })
    }

    /// The CA's certificate (PEM): what clients of a custom domain must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca.ca_pem
    }

    pub fn issue(&self, domain: &str) -> Result<Issued, IssueError> {
        let leaf = self
            .ca
            .issue(domain, self.validity)
            .map_err(|reason| IssueError {
                reason,
                refused: false,
            })?;
        Ok(Issued {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            not_before: leaf.not_before.into(),
            not_after: leaf.not_after.into(),
            authority: ControlPlaneCa::AUTHORITY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    const DAY: Duration = Duration::from_secs(86_400);

    /// A sink for issuers that must not use one.
    struct NoChallenges;

    impl ChallengeSink for NoChallenges {
        fn publish<'a>(&'a self, token: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move { Err(format!("no challenge expected, got {token}")) })
        }
        fn withdraw<'a>(&'a self, _: &'a str) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
    }

    /// Verifies `cert_pem` (leaf first) for `domain` at `at`, trusting `ca_pem` only.
    fn verify(ca_pem: &str, cert_pem: &str, domain: &str, at: SystemTime) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| e.to_string())?;
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], at)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(renew_at(start, start + 90 * DAY), start + 60 * DAY);
        // Pebble's short lifetimes in the end-to-end test: seconds, not days.
        assert_eq!(
            renew_at(start, start + Duration::from_secs(30)),
            start + Duration::from_secs(20)
        );
        // A certificate that ends before it starts is due at once.
        assert_eq!(renew_at(start, start - DAY), start);
    }

    #[tokio::test]
    async fn own_ca_issues_a_leaf_for_the_domain_that_chains_to_it() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = Settings {
            acme: None,
            ca_validity: 30 * DAY,
        };
        let issuer = Issuer::new(&settings, dir.path()).expect("issuer");
        assert_eq!(issuer.authority(), "control-plane-ca");
        let Issuer::ControlPlaneCa(ca) = &issuer else {
            panic!("no ACME directory, yet an ACME issuer")
        };
        let ca_pem = ca.ca_pem().to_owned();
        let issued = issuer
            .issue("shop.example.test", &NoChallenges)
            .await
            .expect("issued");
        assert_eq!(issued.authority, "control-plane-ca");

        // The dates are the leaf's, and the lifetime the configured one (plus the hour of
        // skew allowance before now).
        assert_eq!(
            validity(&issued.cert_pem).expect("validity"),
            (issued.not_before, issued.not_after)
        );
        let now = SystemTime::now();
        assert!(issued.not_before <= now && now < issued.not_before + Duration::from_secs(3_700));
        assert_eq!(
            issued
                .not_after
                .duration_since(issued.not_before)
                .expect("order"),
            30 * DAY + Duration::from_secs(3_600)
        );

        // Valid for its domain (SAN) under the CA, and for nothing else.
        verify(&ca_pem, &issued.cert_pem, "shop.example.test", now).expect("verified");
        let other = verify(&ca_pem, &issued.cert_pem, "other.example.test", now);
        assert!(other.is_err(), "valid for another name: {other:?}");
        let expired = verify(
            &ca_pem,
            &issued.cert_pem,
            "shop.example.test",
            issued.not_after + DAY,
        );
        assert!(expired.is_err(), "valid after not_after: {expired:?}");

        // The key is the leaf's: a TLS server takes the pair.
        let leaf = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .expect("PKCS#8 key");
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf, key)
        .expect("the key goes with the certificate");

        // Not the cluster CA data planes trust, and the same CA after a restart.
        let cluster = pki::ServerIdentity::load_or_create(dir.path()).expect("cluster CA");
        assert_ne!(cluster.ca_pem, ca_pem);
        let again = Issuer::new(&settings, dir.path()).expect("issuer again");
        let Issuer::ControlPlaneCa(again) = &again else {
            panic!("ACME issuer")
        };
        assert_eq!(again.ca_pem(), ca_pem);
        let second = again.issue("shop.example.test").expect("issued again");
        verify(&ca_pem, &second.cert_pem, "shop.example.test", now).expect("verified");
        assert_ne!(
            second.key_pem, issued.key_pem,
            "a fresh key per certificate"
        );
        // A lifetime shortened to seconds is renewed before its end, not after the hour of
        // skew allowance.
        let short = Issuer::new(
            &Settings {
                acme: None,
                ca_validity: Duration::from_secs(30),
            },
            dir.path(),
        )
        .expect("issuer");
        let short = short
            .issue("shop.example.test", &NoChallenges)
            .await
            .expect("issued");
        let renewal = renew_at(short.not_before, short.not_after);
        assert!(
            now < renewal && renewal + Duration::from_secs(5) < short.not_after,
            "renewal at {renewal:?} for {:?}..{:?}",
            short.not_before,
            short.not_after
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("custom-domains-ca.key"))
            .expect("CA key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn an_unreachable_acme_server_is_worth_another_try() {
        let dir = tempfile::tempdir().expect("dir");
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let settings = Settings {
            acme: Some(AcmeSettings {
                directory: format!("https://127.0.0.1:{port}/dir"),
                ca_file: None,
                contact: Vec::new(),
            }),
            ..Settings::default()
        };
        let issuer = Issuer::new(&settings, dir.path()).expect("issuer");
        assert_eq!(issuer.authority(), "acme");
        let error = issuer
            .issue("shop.example.test", &NoChallenges)
            .await
            .expect_err("nothing listens");
        assert!(!error.refused, "{error:?}");
        assert!(error.reason.contains("ACME new account"), "{error:?}");
        assert!(!dir.path().read_dir().expect("dir").any(|f| f
            .map(|f| f.file_name().to_string_lossy().starts_with("acme-account"))
            .unwrap_or(false)));
    }

    #[test]
    fn a_bad_acme_ca_file_stops_the_start() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate").expect("write");
        let settings = Settings {
            acme: Some(AcmeSettings {
                directory: "https://127.0.0.1:14000/dir".to_owned(),
                ca_file: Some(file.clone()),
                contact: Vec::new(),
            }),
            ..Settings::default()
        };
        let error = Issuer::new(&settings, dir.path()).err().expect("refused");
        assert!(error.contains("no PEM certificate"), "{error}");

        // A good one is taken, outside any runtime (the control plane makes its issuer
        // before starting its own).
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|params| params.self_signed(&rcgen::KeyPair::generate()?))
            .expect("CA");
        std::fs::write(&file, ca.pem()).expect("write");
        let issuer = Issuer::new(&settings, dir.path()).expect("issuer");
        assert_eq!(issuer.authority(), "acme");
    }
}
