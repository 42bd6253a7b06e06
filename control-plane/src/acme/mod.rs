//! Certificates for custom domains: from an ACME server (RFC 8555, HTTP-01 answered by the
//! data planes) when one is configured, else from the control plane's own custom-domains CA.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

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

/// Issues through an ACME server.
pub struct AcmeIssuer {
    settings: AcmeSettings,
}

impl AcmeIssuer {
    pub const AUTHORITY: &'static str = "acme";

    pub fn new(settings: &AcmeSettings, _data_dir: &Path) -> Result<AcmeIssuer, String> {
        Ok(AcmeIssuer {
            settings: settings.clone(),
        })
    }

    pub async fn issue(
        &self,
        domain: &str,
        _sink: &dyn ChallengeSink,
    ) -> Result<Issued, IssueError> {
        Err(IssueError {
            reason: format!(
                "{domain}: ACME issuance through {} is not written yet",
                self.settings.directory
            ),
            refused: false,
        })
    }
}

/// Issues from the control plane's own custom-domains CA.
pub struct ControlPlaneCa {
    validity: Duration,
}

impl ControlPlaneCa {
    pub const AUTHORITY: &'static str = "control-plane-ca";

    pub fn new(_data_dir: &Path, validity: Duration) -> Result<ControlPlaneCa, String> {
        Ok(ControlPlaneCa { validity })
    }

    /// The CA's certificate (PEM): what clients of a custom domain must trust.
    pub fn ca_pem(&self) -> &str {
        ""
    }

    pub fn issue(&self, domain: &str) -> Result<Issued, IssueError> {
        Err(IssueError {
            reason: format!(
                "{domain}: the control plane CA's {} s certificates are not written yet",
                self.validity.as_secs()
            ),
            refused: false,
        })
    }
}
