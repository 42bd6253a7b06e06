//! [`AcmeIssuer`]: one order per certificate on an ACME server (RFC 8555), its HTTP-01
//! challenge answered by the data planes through a [`ChallengeSink`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::Mutex;

use super::{validity, AcmeSettings, ChallengeSink, IssueError, Issued};
use crate::hub::sha256_hex;
use crate::pki;

/// How long one issuance may take in all, the challenge's validation included: beyond it
/// the caller tries again later (the order expires on the server by itself).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(180);
/// One round of polling the order while the server validates, then while it signs: 250 ms
/// doubling to 4 s, then the next round starts again at 250 ms, until the overall timeout (so
/// no wait grows past 4 s). A `Retry-After` from the server wins, however long.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(2.0)
    .timeout(Duration::from_secs(8));

/// RFC 8555 problem types (section 6.7) after which asking again gets the same answer.
const REFUSALS: &[&str] = &[
    "rejectedIdentifier",
    "unauthorized",
    "caa",
    "unsupportedIdentifier",
    "badCSR",
    "malformed",
];
const ACME_ERROR: &str = "urn:ietf:params:acme:error:";

/// Issues through an ACME server. The account is made on the first issue and kept in the
/// data directory (`acme-account-<directory hash>.json`, 0600), so restarts reuse it.
pub struct AcmeIssuer {
    settings: AcmeSettings,
    http: AcmeHttp,
    account_file: PathBuf,
    data_dir: PathBuf,
    account: Mutex<Option<Account>>,
}

impl AcmeIssuer {
    pub const AUTHORITY: &'static str = "acme";

    /// Reads `settings.ca_file` now (a bad file stops the start, not the first issue).
    pub fn new(settings: &AcmeSettings, data_dir: &Path) -> Result<AcmeIssuer, String> {
        let http = AcmeHttp::new(settings.ca_file.as_deref())?;
        // One file per directory: an account belongs to its server.
        let hash = sha256_hex(settings.directory.as_bytes());
        let account_file = data_dir.join(format!("acme-account-{}.json", &hash[..16]));
        Ok(AcmeIssuer {
            settings: settings.clone(),
            http,
            account_file,
            data_dir: data_dir.to_owned(),
            account: Mutex::new(None),
        })
    }

    /// A certificate for `domain`. The challenge's token is withdrawn from `sink` whatever
    /// happens once it was published, the overall timeout included.
    pub async fn issue(
        &self,
        domain: &str,
        sink: &dyn ChallengeSink,
    ) -> Result<Issued, IssueError> {
        let mut published = None;
        let outcome =
            tokio::time::timeout(ISSUE_TIMEOUT, self.order(domain, sink, &mut published)).await;
        if let Some(token) = published {
            sink.withdraw(&token).await;
        }
        let issued = outcome.map_err(|_| IssueError {
            reason: format!(
                "no certificate from {} within {} s",
                self.settings.directory,
                ISSUE_TIMEOUT.as_secs()
            ),
            refused: false,
        })??;
        log::info!(
            "{domain}: certificate issued by {} (until {})",
            self.settings.directory,
            time::OffsetDateTime::from(issued.not_after)
        );
        Ok(issued)
    }

    /// The order's steps; `published` gets the token before it is handed to the sink.
    async fn order(
        &self,
        domain: &str,
        sink: &dyn ChallengeSink,
        published: &mut Option<String>,
    ) -> Result<Issued, IssueError> {
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let account = self.account().await?;
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            // The server forgot the account (a test server restarted, or an operator
            // deactivated it): a new one, once.
            Err(instant_acme::Error::Api(problem)) if is(&problem, "accountDoesNotExist") => {
                log::warn!(
                    "ACME account in {} unknown to {}: making a new one",
                    self.account_file.display(),
                    self.settings.directory
                );
                *self.account.lock().await = None;
                self.account()
                    .await?
                    .new_order(&NewOrder::new(&identifiers))
                    .await
            }
            other => other,
        }
        .map_err(|e| failure("new order", e))?;

        if order.state().status == OrderStatus::Pending {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization = authorization.map_err(|e| failure("authorization", e))?;
                match authorization.status {
                    AuthorizationStatus::Pending => {}
                    // Validated earlier for this account (servers reuse authorizations).
                    AuthorizationStatus::Valid => continue,
                    status => {
                        return Err(IssueError {
                            reason: format!("authorization for {domain} is {status:?}"),
                            refused: true,
                        })
                    }
                }
                let mut challenge =
                    authorization
                        .challenge(ChallengeType::Http01)
                        .ok_or_else(|| IssueError {
                            reason: format!(
                                "the ACME server offers no HTTP-01 challenge for {domain}"
                            ),
                            refused: true,
                        })?;
                let token = challenge.token.clone();
                let key_authorization = challenge.key_authorization();
                *published = Some(token.clone());
                sink.publish(&token, key_authorization.as_str())
                    .await
                    .map_err(|e| IssueError {
                        reason: format!("publishing the HTTP-01 challenge: {e}"),
                        refused: false,
                    })?;
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| failure("challenge", e))?;
            }
        }

        let ready = loop {
            match order.poll_ready(&POLL).await {
                Err(instant_acme::Error::Timeout(next)) => until(next).await,
                other => break other,
            }
        };
        match ready {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                // Invalid: the reason is in the failed challenge.
                let mut reason = format!("order {status:?}");
                let mut authorizations = order.authorizations();
                while let Some(Ok(mut authorization)) = authorizations.next().await {
                    if let Ok(state) = authorization.refresh().await {
                        if let Some(problem) =
                            state.challenges.iter().find_map(|c| c.error.as_ref())
                        {
                            reason = describe(problem);
                        }
                    }
                }
                return Err(IssueError {
                    reason,
                    refused: true,
                });
            }
            Err(e) => return Err(failure("validation", e)),
        }

        let key = KeyPair::generate().map_err(|e| internal("certificate key", e))?;
        let csr = {
            let mut params = CertificateParams::new(vec![domain.to_owned()])
                .map_err(|e| internal("certificate request", e))?;
            params.distinguished_name = DistinguishedName::new();
            params
                .serialize_request(&key)
                .map_err(|e| internal("certificate request", e))?
        };
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| failure("finalize", e))?;
        let cert_pem = loop {
            match order.poll_certificate(&POLL).await {
                Err(instant_acme::Error::Timeout(next)) => until(next).await,
                other => break other.map_err(|e| failure("certificate", e))?,
            }
        };
        let (not_before, not_after) = validity(&cert_pem).map_err(|e| IssueError {
            reason: format!("the ACME server's certificate: {e}"),
            refused: false,
        })?;
        Ok(Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
            authority: AcmeIssuer::AUTHORITY,
        })
    }

    /// The account: the one in use, the one in the account file, or a new one (written to
    /// it). Under the lock, so concurrent issues make one account.
    async fn account(&self) -> Result<Account, IssueError> {
        let mut account = self.account.lock().await;
        if let Some(account) = account.as_ref() {
            return Ok(account.clone());
        }
        let made = match std::fs::read_to_string(&self.account_file) {
            Ok(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&json).map_err(|e| IssueError {
                        reason: format!("{}: {e}", self.account_file.display()),
                        refused: false,
                    })?;
                Account::builder_with_http(Box::new(self.http.clone()))
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| failure("account", e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create_account().await?,
            Err(e) => {
                return Err(IssueError {
                    reason: format!("reading {}: {e}", self.account_file.display()),
                    refused: false,
                })
            }
        };
        *account = Some(made.clone());
        Ok(made)
    }

    async fn create_account(&self) -> Result<Account, IssueError> {
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(self.http.clone()))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .map_err(|e| failure("new account", e))?;
        let json = serde_json::to_string(&credentials).map_err(|e| internal("account", e))?;
        let saved = pki::write_private(&self.account_file, &json)
            .and_then(|()| pki::sync_folder(&self.data_dir));
        if let Err(reason) = saved {
            return Err(IssueError {
                reason,
                refused: false,
            });
        }
        log::info!(
            "ACME account {} made on {}, kept in {}",
            account.id(),
            self.settings.directory,
            self.account_file.display()
        );
        Ok(account)
    }
}

/// Waits for the time a server's `Retry-After` asked for, if any, before the next round of
/// polling (the overall timeout bounds it).
async fn until(next: Option<std::time::Instant>) {
    if let Some(next) = next {
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Whether `problem` is the ACME error `kind`.
fn is(problem: &Problem, kind: &str) -> bool {
    problem
        .r#type
        .as_deref()
        .and_then(|t| t.strip_prefix(ACME_ERROR))
        .is_some_and(|t| t == kind)
}

/// The problem document for the domain's `reason`: its type and detail, and its
/// subproblems' (RFC 8555 6.7.1).
fn describe(problem: &Problem) -> String {
    let mut reason = match (&problem.r#type, &problem.detail) {
        (Some(kind), Some(detail)) => format!("{kind}: {detail}"),
        (Some(kind), None) => kind.clone(),
        (None, Some(detail)) => detail.clone(),
        (None, None) => "an ACME problem without type or detail".to_owned(),
    };
    for sub in &problem.subproblems {
        reason.push_str(&format!(
            "; {}: {}",
            sub.r#type.as_deref().unwrap_or("problem"),
            sub.detail.as_deref().unwrap_or("")
        ));
    }
    reason
}

/// An ACME step's error: the server's refusals are final, anything else (the network, a
/// 5xx, rate limits, a timeout) is worth another try.
fn failure(step: &str, error: instant_acme::Error) -> IssueError {
    match error {
        instant_acme::Error::Api(problem) => IssueError {
            refused: REFUSALS.iter().any(|kind| is(&problem, kind))
                || problem
                    .subproblems
                    .iter()
                    .filter_map(|sub| sub.r#type.as_deref())
                    .any(|t| {
                        REFUSALS
                            .iter()
                            .any(|kind| t == format!("{ACME_ERROR}{kind}"))
                    }),
            reason: describe(&problem),
        },
        other => IssueError {
            reason: format!("ACME {step}: {other}"),
            refused: false,
        },
    }
}

fn internal(what: &str, error: impl std::fmt::Display) -> IssueError {
    IssueError {
        reason: format!("{what}: {error}"),
        refused: false,
    }
}

/// instant-acme's HTTP client: hyper over rustls (ring), trusting the public roots and
/// `--acme-ca-file`'s certificates.
#[derive(Clone)]
struct AcmeHttp(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ACME CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "ACME CA file {}: no PEM certificate",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("ACME CA file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(AcmeHttp(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(request);
        Box::pin(async move {
            response
                .await
                .map(BytesResponse::from)
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(problem: serde_json::Value) -> instant_acme::Error {
        instant_acme::Error::Api(serde_json::from_value(problem).expect("a problem document"))
    }

    #[test]
    fn the_servers_final_answers_are_refusals_and_the_rest_retryable() {
        let refused = failure(
            "new order",
            api(serde_json::json!({
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "Order included an identifier for which issuance is forbidden by policy: \"shop.blocked.test\"",
                "status": 400,
            })),
        );
        assert_eq!(
            refused,
            IssueError {
                reason: "urn:ietf:params:acme:error:rejectedIdentifier: Order included an \
                         identifier for which issuance is forbidden by policy: \
                         \"shop.blocked.test\""
                    .to_owned(),
                refused: true,
            }
        );

        // A compound problem refuses when one of its subproblems does, and says which.
        let compound = failure(
            "new order",
            api(serde_json::json!({
                "type": "urn:ietf:params:acme:error:compound",
                "detail": "Errors in the order",
                "subproblems": [{
                    "type": "urn:ietf:params:acme:error:caa",
                    "detail": "CAA record forbids issuance",
                    "identifier": { "type": "dns", "value": "shop.example.test" },
                }],
            })),
        );
        assert!(compound.refused, "{compound:?}");
        assert!(
            compound
                .reason
                .ends_with("; urn:ietf:params:acme:error:caa: CAA record forbids issuance"),
            "{compound:?}"
        );

        for kind in [
            "rateLimited",
            "serverInternal",
            "badNonce",
            "accountDoesNotExist",
        ] {
            let error = failure(
                "finalize",
                api(serde_json::json!({ "type": format!("{ACME_ERROR}{kind}"), "status": 503 })),
            );
            assert!(!error.refused, "{error:?}");
            assert_eq!(error.reason, format!("{ACME_ERROR}{kind}"));
        }
        let timeout = failure("validation", instant_acme::Error::Timeout(None));
        assert!(!timeout.refused, "{timeout:?}");
        assert!(
            timeout.reason.starts_with("ACME validation: "),
            "{timeout:?}"
        );
    }
}
