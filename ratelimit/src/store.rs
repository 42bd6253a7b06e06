//! The counters in Redis: one atomic check-and-count per request (a Lua script, so no other
//! client's increment can fall between a read and a write), on one multiplexed connection per
//! Redis, reconnected on the next request after any failure.
//!
//! A counter is one Redis key per identifier, period and calendar window, as Kong's
//! (`ratelimit:<route>:<service>:<identifier>:<window start>:<period>`): it expires once the
//! window (and, for a sliding window, the window after it, which weighs it) is over, so a
//! window that rolls over starts from a fresh key and a Redis restart loses at most the
//! current windows.
//!
//! Windows are on Redis's clock: each store reads Redis's `TIME` when it connects and every
//! [`RESYNC`] after, and counts on its own clock moved by the difference (to within half a
//! round trip), so every data plane sharing a Redis puts a request in the same window
//! whatever its host's clock says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    TlsCertificates,
};
use tokio::sync::Mutex;

use crate::calendar::Period;
use crate::target::RedisTarget;

/// For each check: the current window's counter (KEYS[2i-1]) and the previous window's
/// (KEYS[2i], read only for a sliding window). ARGV[1]: the hits to add; then per check its
/// limit, the weight of the previous window (0 for a fixed window) and the keys' lifetime in
/// milliseconds. Kong's rule: a period stops the request when `limit - usage <= 0`; only when
/// none does, every counter is incremented. Returns the verdict (1 admitted), then per check
/// whether its limit is reached and the two counts read.
const SCRIPT: &str = r#"
local hits = tonumber(ARGV[1])
local n = #KEYS / 2
local out = {1}
local admitted = true
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  local weight = tonumber(ARGV[3 * i])
  local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0') or 0
  local previous = 0
  if weight > 0 then
    previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0') or 0
  end
  local over = 0
  if limit - (current + previous * weight) <= 0 then
    over = 1
    admitted = false
  end
  out[3 * i - 1] = over
  out[3 * i] = current
  out[3 * i + 1] = previous
end
if admitted then
  for i = 1, n do
    redis.call('INCRBY', KEYS[2 * i - 1], hits)
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[3 * i + 1])
  end
else
  out[1] = 0
end
return out
"#;

/// How long a reading of Redis's clock is used before it is read again.
pub const RESYNC: Duration = Duration::from_secs(30);

/// A wall clock in Unix milliseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// One period of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What the counter belongs to (the domain and the descriptor's entries); the key adds the
    /// period and the window.
    pub scope: Vec<u8>,
    pub unit: Period,
    /// Kong's limit, a number (a fractional one counts as its ceiling for a fixed window).
    pub limit: f64,
    /// Kong rate-limiting-advanced's sliding window: the previous window's count, weighted by
    /// how much of it still overlaps one window length back from now, is part of the usage.
    pub sliding: bool,
}

/// What the counters say about one period of a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeriodOutcome {
    pub unit: Period,
    /// Its limit is reached: this period refuses the request.
    pub over: bool,
    /// The request's own window's count before this request.
    pub current: u64,
    /// The previous window's count (sliding windows; 0 otherwise).
    pub previous: u64,
    /// The previous window's weight at the time of the check (0 for a fixed window).
    pub weight: f64,
    /// Milliseconds to the end of the window.
    pub until_reset_ms: i64,
}

/// The verdict on a request and every period's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub admitted: bool,
    pub periods: Vec<PeriodOutcome>,
}

/// Why the counters could not be had.
#[derive(Debug)]
pub enum StoreError {
    /// No answer within the timeout.
    Timeout(Duration),
    Redis(redis::RedisError),
    /// An answer the script never gives.
    Malformed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout(t) => write!(f, "redis did not answer within {} ms", t.as_millis()),
            StoreError::Redis(e) => write!(f, "redis: {e}"),
            StoreError::Malformed(why) => write!(f, "redis answered the script oddly: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// The counters of one Redis.
pub struct RedisStore {
    target: RedisTarget,
    client: Client,
    script: redis::Script,
    /// The connection, `None` until the first request and after a failure.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Where to connect when TLS names the server otherwise than the host.
    connect_to: Option<ConnectTo>,
    /// This host's clock.
    clock: Clock,
    /// Redis's clock less this host's, in milliseconds, and when it was read.
    offset: Mutex<Option<(i64, Instant)>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .finish()
    }
}

/// The Redis key of a counter: the scope (length-prefixed, so no scope is a prefix of
/// another's key), the period and the window start.
pub fn counter_key(scope: &[u8], unit: Period, window_start: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(scope.len() + 40);
    key.extend_from_slice(b"wasmgate:rl:");
    key.extend_from_slice(scope.len().to_string().as_bytes());
    key.push(b':');
    key.extend_from_slice(scope);
    key.push(b':');
    key.extend_from_slice(unit.name().as_bytes());
    key.push(b':');
    key.extend_from_slice(window_start.to_string().as_bytes());
    key
}

/// Resolves the name TLS uses (`server_name`) to the host's addresses: redis connects to the
/// name it verifies, and Kong's `server_name` is only what TLS says to the host.
#[derive(Clone)]
struct ConnectTo {
    host: String,
}

impl redis::io::AsyncDNSResolver for ConnectTo {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _tls_name: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((self.host.as_str(), port))
                    .await?
                    .collect();
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = _> + Send>)
        })
    }
}

impl RedisStore {
    /// A store for `target`; nothing connects before the first request. With `ssl`, TLS
    /// (rustls): the certificate is checked only with `ssl_verify`, against `ca_pem` or else
    /// the Web PKI roots, for `server_name` when there is one (Kong's SNI), else the host.
    pub fn new(target: RedisTarget) -> Result<Arc<RedisStore>, StoreError> {
        RedisStore::with_clock(target, Arc::new(crate::service::now_ms))
    }

    /// [`RedisStore::new`] on another clock than the system's (tests: a skewed host).
    pub fn with_clock(target: RedisTarget, clock: Clock) -> Result<Arc<RedisStore>, StoreError> {
        let mut redis = redis::RedisConnectionInfo::default().set_db(target.database);
        if let Some(user) = &target.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &target.password {
            redis = redis.set_password(password);
        }
        // TLS names the server by `server_name`; the connection still goes to the host
        // ([`ConnectTo`]), as Kong's SNI does.
        let tls_name = target
            .server_name
            .clone()
            .filter(|name| target.ssl && *name != target.host);
        let addr = if target.ssl {
            ConnectionAddr::TcpTls {
                host: tls_name.clone().unwrap_or_else(|| target.host.clone()),
                port: target.port,
                insecure: !target.ssl_verify,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(target.host.clone(), target.port)
        };
        let info: ConnectionInfo = addr
            .into_connection_info()
            .map_err(StoreError::Redis)?
            .set_redis_settings(redis);
        if target.ssl {
            // redis's rustls asks the process for a crypto provider; an earlier one (the
            // gateway's own, also ring) stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match (&target.ca_pem, target.ssl && target.ssl_verify) {
            (Some(ca), true) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(info),
        }
        .map_err(StoreError::Redis)?;
        Ok(Arc::new(RedisStore {
            connect_to: tls_name.map(|_| ConnectTo {
                host: target.host.clone(),
            }),
            target,
            client,
            script: redis::Script::new(SCRIPT),
            connection: Mutex::new(None),
            clock,
            offset: Mutex::new(None),
        }))
    }

    /// Now on Redis's clock, in Unix milliseconds: this host's clock moved by the last
    /// reading of Redis's `TIME`, read again (within the timeout) when older than [`RESYNC`].
    pub async fn now_ms(&self) -> Result<i64, StoreError> {
        let held = *self.offset.lock().await;
        let offset = match held {
            Some((offset, at)) if at.elapsed() < RESYNC => offset,
            _ => {
                let timeout = self.target.timeout();
                match tokio::time::timeout(timeout, self.read_offset()).await {
                    Ok(Ok(offset)) => offset,
                    Ok(Err(e)) => {
                        self.forget_connection().await;
                        return Err(e);
                    }
                    Err(_) => {
                        self.forget_connection().await;
                        return Err(StoreError::Timeout(timeout));
                    }
                }
            }
        };
        Ok((self.clock)() + offset)
    }

    /// Reads Redis's `TIME`: Redis's clock less this host's, taken at the middle of the
    /// round trip.
    async fn read_offset(&self) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        let before = (self.clock)();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut connection)
            .await
            .map_err(StoreError::Redis)?;
        let after = (self.clock)();
        let offset = secs * 1000 + micros / 1000 - (before + (after - before) / 2);
        *self.offset.lock().await = Some((offset, Instant::now()));
        Ok(offset)
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// Checks and counts one request of `hits` at `now_ms` (Unix milliseconds), within the
    /// target's timeout (connecting included).
    pub async fn check(
        &self,
        checks: &[Check],
        hits: u32,
        now_ms: i64,
    ) -> Result<Outcome, StoreError> {
        let timeout = self.target.timeout();
        match tokio::time::timeout(timeout, self.check_now(checks, hits, now_ms)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            // The connection's own response timeout (the same length) may fire first.
            Ok(Err(StoreError::Redis(e))) if e.is_timeout() => {
                self.forget_connection().await;
                Err(StoreError::Timeout(timeout))
            }
            Ok(Err(e)) => {
                self.forget_connection().await;
                Err(e)
            }
            Err(_) => {
                self.forget_connection().await;
                Err(StoreError::Timeout(timeout))
            }
        }
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = held.as_ref() {
            return Ok(connection.clone());
        }
        let timeout = Some(self.target.timeout());
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        if let Some(connect_to) = &self.connect_to {
            config = config.set_dns_resolver(connect_to.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(StoreError::Redis)?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    async fn check_now(
        &self,
        checks: &[Check],
        hits: u32,
        now_ms: i64,
    ) -> Result<Outcome, StoreError> {
        let now = now_ms.div_euclid(1000);
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(hits);
        let mut periods = Vec::with_capacity(checks.len());
        for check in checks {
            let start = check.unit.start(now);
            let end = check.unit.next(now);
            let length_ms = (end - start).saturating_mul(1000).max(1);
            let end_ms = end.saturating_mul(1000);
            let weight = if check.sliding {
                (end_ms - now_ms).clamp(0, length_ms) as f64 / length_ms as f64
            } else {
                0.0
            };
            // A sliding window's count weighs on the whole next window too.
            let lifetime_ms = (end_ms - now_ms).max(1) + if check.sliding { length_ms } else { 0 };
            invocation
                .key(counter_key(&check.scope, check.unit, start))
                .key(counter_key(
                    &check.scope,
                    check.unit,
                    check.unit.previous(now),
                ))
                .arg(check.limit.to_string())
                .arg(weight.to_string())
                .arg(lifetime_ms);
            periods.push(PeriodOutcome {
                unit: check.unit,
                over: false,
                current: 0,
                previous: 0,
                weight,
                until_reset_ms: end_ms - now_ms,
            });
        }
        let mut connection = self.connection().await?;
        let answer: Vec<i64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::Redis)?;
        if answer.len() != 1 + 3 * checks.len() {
            return Err(StoreError::Malformed(format!(
                "{} numbers for {} periods",
                answer.len(),
                checks.len()
            )));
        }
        for (period, numbers) in periods.iter_mut().zip(answer[1..].chunks_exact(3)) {
            period.over = numbers[0] == 1;
            period.current = u64::try_from(numbers[1]).unwrap_or(0);
            period.previous = u64::try_from(numbers[2]).unwrap_or(0);
        }
        Ok(Outcome {
            admitted: answer[0] == 1,
            periods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous() {
        assert_eq!(
            counter_key(b"d|ip=1", Period::Second, 17),
            b"wasmgate:rl:6:d|ip=1:second:17".to_vec()
        );
        assert_ne!(
            counter_key(b"a:1", Period::Minute, 0),
            counter_key(b"a", Period::Minute, 0)
        );
    }
}
