//! Custom domains' lives, in the background: a new domain (`initializing`) gets its
//! certificate from the [`Issuer`] (ACME with HTTP-01 answered by the data planes, or the
//! control plane's own CA) and becomes `ready` with it pushed to every data plane of its
//! control plane, or `error` with the reason and nothing left behind (no certificate, no
//! challenge in any data plane's configuration). Certificates are renewed at their
//! `renew_at` under the same certificate id, so a data plane swaps its certificate in place
//! (Envoy gets a new SDS secret of the same name). A control plane that starts again resumes
//! the domains still `initializing` and the renewals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Transaction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::acme::{self, BoxFuture, ChallengeSink, Issued, Issuer};
use crate::config;
use crate::hub::ConfigVersion;
use crate::store::custom_domains::{self as rows, DomainRow};
use crate::store::StoreError;
use crate::State;

/// How long a published challenge may take to be served by every data plane.
const SERVE_WITHIN: Duration = Duration::from_secs(30);
/// How long a deletion waits for the connected data planes to drop the certificate.
const DROP_WITHIN: Duration = Duration::from_secs(10);
/// The first pause after a failed renewal, doubled at each failure in a row up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// Attempts at a first issuance that fails without the ACME server refusing it (30 s, 1, 2
/// and 4 minutes apart) before the domain is in `error`.
const ISSUE_ATTEMPTS: i64 = 5;
/// The renewal loop looks again at least this often (a clock that jumped, a missed wake-up).
const RENEWAL_LOOK: Duration = Duration::from_secs(300);

/// The issuer and what runs for each domain.
pub struct Domains {
    issuer: Issuer,
    /// The issuance or renewal running per domain id: one at a time; a deletion aborts it.
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Wakes the renewal loop when a certificate (and so a renewal time) is stored.
    wake: tokio::sync::Notify,
}

impl Domains {
    pub fn new(issuer: Issuer) -> Domains {
        Domains {
            issuer,
            running: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::AbortHandle>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops what runs for a domain being deleted (its challenges go with its row).
    pub fn cancel(&self, id: &str) {
        if let Some(task) = self.running().remove(id) {
            task.abort();
        }
    }
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// At start: resumes every domain still `initializing` (its validation died with the
/// previous process, its challenges were cleared before the configurations were
/// reassembled) and starts the renewal loop.
pub async fn resume(state: Arc<State>) {
    let store = Arc::clone(&state.store);
    let pending = tokio::task::spawn_blocking(move || {
        store.transaction(|tx| rows::in_state(tx, rows::INITIALIZING))
    })
    .await;
    match pending {
        Ok(Ok(pending)) => {
            for row in pending {
                log::info!("custom domain {}: resuming its issuance", row.domain);
                begin(&state, row);
            }
        }
        Ok(Err(e)) => log::error!("custom domains: {e}"),
        Err(e) => log::error!("custom domains: {e}"),
    }
    renewals(state).await;
}

/// Issues the certificate of a domain just created (or resumed) on a task of its own.
pub fn begin(state: &Arc<State>, row: DomainRow) {
    spawn(state, row, false);
}

fn spawn(state: &Arc<State>, row: DomainRow, renewal: bool) {
    let mut running = state.domains.running();
    if running.get(&row.id).is_some_and(|t| !t.is_finished()) {
        return;
    }
    let id = row.id.clone();
    let task = {
        let state = Arc::clone(state);
        tokio::spawn(async move {
            let id = row.id.clone();
            if renewal {
                renew(&state, row).await;
            } else {
                issue(&state, row).await;
            }
            state.domains.running().remove(&id);
            state.domains.wake.notify_one();
        })
    };
    running.insert(id, task.abort_handle());
}

/// Runs `f` and makes the control plane's next config version in one transaction when the
/// data planes' document changed; publishes it after the commit.
async fn commit<T: Send + 'static>(
    state: &Arc<State>,
    control_plane_id: &str,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
) -> Result<(T, Option<Arc<ConfigVersion>>), String> {
    let state = Arc::clone(state);
    let id = control_plane_id.to_owned();
    tokio::task::spawn_blocking(move || {
        let (value, version) = state
            .store
            .transaction(|tx| {
                let value = f(tx)?;
                // A control plane deleted meanwhile took its domains along: no version.
                if crate::api::control_plane_exists(tx, &id)? {
                    let version = config::next_version_if_changed(tx, &id, crate::nodes::now())?;
                    return Ok::<_, config::Rejection>((value, version));
                }
                Ok((value, None))
            })
            .map_err(|e| match e {
                config::Rejection::Declarative(e) | config::Rejection::Schema(e) => {
                    format!("the data planes' configuration would be invalid: {e}")
                }
                config::Rejection::Store(e) => e.to_string(),
                config::Rejection::ForeignKey { field, id, .. } => {
                    format!("{field} {id} does not exist")
                }
            })?;
        if let Some(version) = &version {
            state.hub.publish(Arc::clone(version));
        }
        Ok((value, version))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The certificate, from the issuer, or why not.
async fn obtain(state: &Arc<State>, row: &DomainRow) -> Result<Issued, acme::IssueError> {
    let sink = Sink {
        state: Arc::clone(state),
        domain_id: row.id.clone(),
        control_plane_id: row.control_plane_id.clone(),
        domain: row.domain.clone(),
    };
    let issued = state.domains.issuer.issue(&row.domain, &sink).await;
    // Whatever the issuer withdrew or not: no challenge of this domain stays in any data
    // plane's configuration.
    let domain_id = row.id.clone();
    if let Err(e) = commit(state, &row.control_plane_id, move |tx| {
        rows::remove_challenges_of(tx, &domain_id)
    })
    .await
    {
        log::error!("custom domain {}: removing its challenges: {e}", row.domain);
    }
    issued
}

fn acme_directory(state: &State) -> Option<String> {
    state
        .options
        .certificates
        .acme
        .as_ref()
        .map(|a| a.directory.clone())
}

/// Stores an issued certificate (first issuance or renewal, same certificate id) and pushes
/// it; the reason when it could not be.
async fn store_certificate(
    state: &Arc<State>,
    row: &DomainRow,
    issued: Issued,
) -> Result<(bool, Option<Arc<ConfigVersion>>), String> {
    let id = row.id.clone();
    let directory = (issued.authority == acme::AcmeIssuer::AUTHORITY)
        .then(|| acme_directory(state))
        .flatten();
    let renew_at = unix(acme::renew_at(issued.not_before, issued.not_after));
    let not_after = unix(issued.not_after);
    commit(state, &row.control_plane_id, move |tx| {
        rows::set_certificate(
            tx,
            &id,
            &issued.cert_pem,
            &issued.key_pem,
            not_after,
            renew_at,
            issued.authority,
            directory.as_deref(),
            crate::nodes::now(),
        )
    })
    .await
}

/// A first certificate is stored and in the data planes' document: the domain is `ready`
/// once every connected data plane runs that document, so a client that connects when it
/// reads `ready` gets the certificate (`version` is `None` after a restart: data planes get
/// the whole document as they connect again). After
/// [`SERVE_WITHIN`] it is `ready` anyway, with the reason saying which data planes lag.
async fn deployed(state: &Arc<State>, row: &DomainRow, version: Option<Arc<ConfigVersion>>) {
    let lag = match &version {
        Some(version) => applied(state, &row.control_plane_id, version, SERVE_WITHIN)
            .await
            .err(),
        None => None,
    };
    if let Some(lag) = &lag {
        log::warn!("custom domain {}: {lag}", row.domain);
    }
    let id = row.id.clone();
    let result = commit(state, &row.control_plane_id, move |tx| {
        rows::set_ready(tx, &id, lag.as_deref(), crate::nodes::now())
    })
    .await;
    match result {
        Ok((true, _)) => log::info!("custom domain {}: ready", row.domain),
        Ok((false, _)) => {}
        Err(e) => log::error!("custom domain {}: {e}", row.domain),
    }
}

/// The first issuance: `ready`, or `error` when the ACME server refused (asking again gets
/// the same answer), when [`ISSUE_ATTEMPTS`] attempts failed (a server or a data plane
/// down: retried meanwhile, the domain still `initializing` with the last reason), or when
/// the certificate could not be stored.
async fn issue(state: &Arc<State>, row: DomainRow) {
    // Issued before a restart, not yet confirmed by the data planes.
    if row.cert.is_some() {
        deployed(state, &row, None).await;
        return;
    }
    let mut attempt = 0;
    let (status, reason) = loop {
        attempt += 1;
        match obtain(state, &row).await {
            Ok(issued) => match store_certificate(state, &row, issued).await {
                Ok((true, version)) => {
                    log::info!("custom domain {}: certificate issued", row.domain);
                    deployed(state, &row, version).await;
                    return;
                }
                // Deleted meanwhile: nothing to do.
                Ok((false, _)) => return,
                Err(reason) => break ("ERROR", reason),
            },
            Err(e) if e.refused => break ("INVALID", e.reason),
            Err(e) if attempt >= ISSUE_ATTEMPTS => {
                break (
                    "ERROR",
                    format!("{} (attempt {attempt} of {ISSUE_ATTEMPTS})", e.reason),
                )
            }
            Err(e) => {
                let pause = retry_pause(attempt);
                let reason = format!(
                    "attempt {attempt} of {ISSUE_ATTEMPTS} failed, the next one in {} s: {}",
                    pause.as_secs(),
                    e.reason
                );
                log::warn!("custom domain {}: {reason}", row.domain);
                let id = row.id.clone();
                let recorded = commit(state, &row.control_plane_id, move |tx| {
                    rows::set_retrying(tx, &id, &reason, crate::nodes::now())
                })
                .await;
                match recorded {
                    Ok((true, _)) => tokio::time::sleep(pause).await,
                    // Deleted meanwhile.
                    Ok((false, _)) => return,
                    Err(e) => log::error!("custom domain {}: {e}", row.domain),
                }
            }
        }
    };
    log::warn!("custom domain {}: {reason}", row.domain);
    let id = row.id.clone();
    let result = commit(state, &row.control_plane_id, move |tx| {
        rows::set_failed(tx, &id, status, &reason, crate::nodes::now())
    })
    .await;
    if let Err(e) = result {
        log::error!("custom domain {}: recording its failure: {e}", row.domain);
    }
}

/// The pause before the `failures`-th retry in a row (1-based).
fn retry_pause(failures: i64) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

async fn renew(state: &Arc<State>, row: DomainRow) {
    let reason = match obtain(state, &row).await {
        Ok(issued) => match store_certificate(state, &row, issued).await {
            Ok(_) => {
                log::info!("custom domain {}: certificate renewed", row.domain);
                return;
            }
            Err(reason) => reason,
        },
        Err(e) => e.reason,
    };
    let now = crate::nodes::now();
    let failures = row.renew_failures + 1;
    let retry_at = now + retry_pause(failures).as_secs() as i64;
    let not_after = row.not_after.unwrap_or_default();
    let valid = not_after > now;
    let reason = format!(
        "renewal failed ({failures} in a row), next attempt at {}: {reason}; {}",
        crate::api::rfc3339(retry_at),
        if valid {
            format!(
                "the current certificate stays in use until it expires at {}",
                crate::api::rfc3339(not_after)
            )
        } else {
            format!(
                "the current certificate expired at {}",
                crate::api::rfc3339(not_after)
            )
        }
    );
    log::warn!("custom domain {}: {reason}", row.domain);
    let id = row.id.clone();
    let state_now = if valid { rows::READY } else { rows::ERROR };
    let result = commit(state, &row.control_plane_id, move |tx| {
        rows::set_renewal_failed(tx, &id, state_now, &reason, retry_at, now)
    })
    .await;
    if let Err(e) = result {
        log::error!("custom domain {}: recording its failure: {e}", row.domain);
    }
}

/// Renews each certificate at its `renew_at` (and retries failed renewals at theirs), for
/// the life of the runtime.
async fn renewals(state: Arc<State>) {
    loop {
        let now = crate::nodes::now();
        let store = Arc::clone(&state.store);
        let looked = tokio::task::spawn_blocking(move || {
            store.transaction(|tx| {
                Ok::<_, StoreError>((rows::due(tx, now)?, rows::next_renewal(tx)?))
            })
        })
        .await;
        let next = match looked {
            Ok(Ok((due, next))) => {
                for row in due {
                    spawn(&state, row, true);
                }
                next
            }
            Ok(Err(e)) => {
                log::error!("custom domains' renewals: {e}");
                None
            }
            Err(e) => {
                log::error!("custom domains' renewals: {e}");
                None
            }
        };
        // A renewal running keeps its domain due: looked at again each second until it ends
        // (and wakes this loop).
        let pause = next.map_or(RENEWAL_LOOK, |at| {
            Duration::from_secs(u64::try_from(at - now).unwrap_or(0).max(1)).min(RENEWAL_LOOK)
        });
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.domains.wake.notified() => {}
        }
    }
}

/// Removes a domain: its issuance stops, its certificate leaves the control plane's data
/// plane document in the same commit as its row, and the answer waits (a while) for the
/// connected data planes to run that document. `false` when there is no such domain.
pub async fn delete(state: &Arc<State>, id: &str) -> Result<bool, String> {
    state.domains.cancel(id);
    let lookup = {
        let (store, id) = (Arc::clone(&state.store), id.to_owned());
        tokio::task::spawn_blocking(move || store.transaction(|tx| rows::get(tx, &id)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let Some(row) = lookup else {
        return Ok(false);
    };
    let deleted_id = id.to_owned();
    let (deleted, version) = commit(state, &row.control_plane_id, move |tx| {
        rows::delete(tx, &deleted_id)
    })
    .await?;
    // An issuance that started between the cancel and the commit finds no row to update.
    state.domains.cancel(id);
    if let Some(version) = version {
        if let Err(e) = applied(state, &row.control_plane_id, &version, DROP_WITHIN).await {
            log::warn!("custom domain {} deleted; {e}", row.domain);
        }
    }
    Ok(deleted)
}

/// Until every connected data plane of the control plane (gateways over sync, Envoys over
/// xDS) runs `version` or a later one; an error naming those that do not by `within`, or
/// one that refused it.
async fn applied(
    state: &State,
    control_plane_id: &str,
    version: &ConfigVersion,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let (nodes, _) = state
            .nodes
            .page(control_plane_id, None, crate::nodes::MAX_NODES);
        let mut behind = Vec::new();
        for node in nodes.iter().filter(|n| n.connected) {
            if node.config_version.is_some_and(|v| v >= version.version) {
                continue;
            }
            if let Some(error) = node
                .last_error
                .as_ref()
                .filter(|e| e.config_version >= version.version)
            {
                return Err(format!(
                    "data plane {} refused config version {}: {}",
                    node.id, error.config_version, error.message
                ));
            }
            behind.push(node.id.clone());
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "data planes {} did not apply config version {} within {} s",
                behind.join(", "),
                version.version,
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HTTP-01 challenges of one domain: in its control plane's data plane document.
struct Sink {
    state: Arc<State>,
    domain_id: String,
    control_plane_id: String,
    domain: String,
}

impl ChallengeSink for Sink {
    /// Puts the challenge into the control plane's document and waits until it is served.
    /// Both checks are needed: the acks cover every connected data plane, Envoys included,
    /// whose listeners the control plane does not know; an ack says a data plane loaded the
    /// version, while the GET through each provisioned gateway's listener is the request
    /// the ACME server makes, answered or not before routing and the platform's plugins
    /// (and covers a gateway that restarts meanwhile and serves from its cache).
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (domain_id, cp) = (self.domain_id.clone(), self.control_plane_id.clone());
            let (token_owned, key_owned) = (token.to_owned(), key_authorization.to_owned());
            let (_, version) = commit(&self.state, &self.control_plane_id, move |tx| {
                rows::add_challenge(
                    tx,
                    &domain_id,
                    &cp,
                    &token_owned,
                    &key_owned,
                    crate::nodes::now(),
                )
            })
            .await?;
            let deadline = Instant::now() + SERVE_WITHIN;
            if let Some(version) = version {
                applied(&self.state, &self.control_plane_id, &version, SERVE_WITHIN).await?;
            }
            for proxy in self.state.provisioner.proxies(&self.control_plane_id) {
                served(proxy, &self.domain, token, key_authorization, deadline).await?;
            }
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let token_owned = token.to_owned();
            let removed = commit(&self.state, &self.control_plane_id, move |tx| {
                rows::remove_challenge(tx, &token_owned)
            })
            .await;
            if let Err(e) = removed {
                log::error!(
                    "custom domain {}: withdrawing challenge {token}: {e}",
                    self.domain
                );
            }
        })
    }
}

/// Until `GET http://<proxy>/.well-known/acme-challenge/<token>` with `Host: <domain>`
/// answers 200 with the key authorization, as the ACME server will ask.
async fn served(
    proxy: SocketAddr,
    domain: &str,
    token: &str,
    key_authorization: &str,
    deadline: Instant,
) -> Result<(), String> {
    let path = format!("{}{token}", model::ACME_CHALLENGE_PREFIX);
    loop {
        let last =
            match tokio::time::timeout(Duration::from_secs(2), get(proxy, domain, &path)).await {
                Ok(Ok((200, body))) if body.trim_end() == key_authorization => return Ok(()),
                Ok(Ok((status, _))) => format!("answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => "no answer within 2 s".into(),
            };
        if Instant::now() >= deadline {
            return Err(format!(
                "the gateway on {proxy} does not serve the challenge for {domain} ({path}): {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most of an answer read: a key authorization is at most 256 bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// A plain HTTP/1.1 GET (the challenge's request, nothing more): status and body.
async fn get(proxy: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "an incomplete answer".to_owned())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {}", head.lines().next().unwrap_or("")))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_owned()));
    }
    let mut decoded = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "a malformed chunk".to_owned())?;
        if size == 0 || after.len() < size {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((status, decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_plain_or_chunked() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nt.k-1"),
            Ok((200, "t.k-1".into()))
        );
        assert_eq!(
            parse_answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nt.k\r\n2\r\n-1\r\n0\r\n\r\n"
            ),
            Ok((200, "t.k-1".into()))
        );
        assert_eq!(
            parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Ok((404, String::new()))
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_answer(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn failed_renewals_wait_longer_each_time_up_to_an_hour() {
        assert_eq!(retry_pause(1), FIRST_RETRY);
        assert_eq!(retry_pause(2), FIRST_RETRY * 2);
        assert_eq!(retry_pause(3), FIRST_RETRY * 4);
        assert_eq!(retry_pause(40), MAX_RETRY);
        assert_eq!(retry_pause(0), FIRST_RETRY);
    }
}
