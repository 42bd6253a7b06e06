//! The per-request decision: who is asking (Kong's identifier), check-and-count, and the
//! response: headers to add to the upstream's response, or Kong's rejection.
//!
//! Everything a client sends is bytes here: header values, the path and the peer address are
//! never converted to text, so no byte sequence can make a request fail.

use kit::{kong_error, LocalResponse};

use crate::config::{Config, LimitBy, WindowType};
use crate::counters::{each_header, headers, Counters, Evaluation, HeaderValue, Usage};
use crate::remote;
use crate::siphash::{siphash128, SipKey};
use crate::store::{check_and_count, Counted, Store};

/// Kong's answer when the store fails and `fault_tolerant` is false, and when the plugin
/// itself fails (Kong's runloop answers a plugin error so).
pub const UNEXPECTED_ERROR: &str = "An unexpected error occurred";

/// What the identifier and the response depend on, as the host's bytes. The adapter reads
/// only the fields [`Limiter::needs`] asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    /// `source.address`: the downstream peer, `IP:port` (`[v6]:port`).
    pub source_address: Option<&'a [u8]>,
    /// The Envoy cluster the request is routed to (`xds.cluster_name`): Kong's service.
    pub cluster: Option<&'a [u8]>,
    /// The value of `config.header_name` (first one when repeated).
    pub header: Option<&'a [u8]>,
    /// `:path`, query string included, as the client sent it.
    pub path: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
    /// `request.id`: the data plane's request id, for Kong's error bodies.
    pub request_id: &'a [u8],
}

/// What the adapter reads for a request, besides Accept and the peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Cluster,
    Header,
    Path,
}

/// Where an identifier comes from. Part of its hash, so that a header value equal to a
/// client's IP address never shares that client's budget (in Kong it would: it keys by the
/// identifier alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The client IP: `limit_by` ip, and the fallback of every other kind.
    Ip,
    Service,
    Header,
    Path,
}

impl Source {
    fn code(self) -> u8 {
        match self {
            Source::Ip => 1,
            Source::Service => 2,
            Source::Header => 3,
            Source::Path => 4,
        }
    }
}

/// What the filter does with the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Proxy the request; add these headers to its response.
    Allow { headers: Vec<(String, String)> },
    /// Answer with this response instead.
    Reject { response: LocalResponse },
}

/// A verdict and what the adapter reports about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// An error to log (Kong logs these at `err`): the store failed, or `error_code` is not
    /// an error status.
    pub error: Option<String>,
    /// Live identifiers evicted from this request's bucket to make room for it: they lost
    /// their counts (metric `wasmgate_rate_limiting_evictions_total`).
    pub evicted: u32,
    /// The request passes without being counted: every write lost its race against other
    /// workers (metric `wasmgate_rate_limiting_uncounted_total`).
    pub uncounted: bool,
}

impl Decision {
    fn of(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            error: None,
            evicted: 0,
            uncounted: false,
        }
    }
}

/// One configured plugin instance.
#[derive(Clone, Debug)]
pub struct Limiter {
    pub config: Config,
    /// Prefix of every shared-data key of this instance.
    pub scope: Vec<u8>,
}

impl Limiter {
    /// `plugin_name` is the host's stable name of the plugin instance (Envoy's `plugin_name`
    /// property). The counters belong to it alone: not to the configuration, so a new
    /// `error_message`, a raised limit or an added window keeps the current usage, as in Kong.
    pub fn new(config: Config, plugin_name: &[u8]) -> Limiter {
        let mut scope = Vec::with_capacity(crate::PLUGIN_NAME.len() + 1 + plugin_name.len());
        scope.extend_from_slice(crate::PLUGIN_NAME.as_bytes());
        scope.push(b'|');
        scope.extend_from_slice(plugin_name);
        Limiter { config, scope }
    }

    pub fn needs(&self) -> Need {
        match self.config.limit_by {
            LimitBy::Service => Need::Cluster,
            LimitBy::Header => Need::Header,
            LimitBy::Path => Need::Path,
            LimitBy::Consumer | LimitBy::Credential | LimitBy::Ip => Need::Nothing,
        }
    }

    /// Kong's `get_identifier`: the configured entity, else the client IP. No plugin sets a
    /// consumer or credential yet, so those fall back to the IP as in Kong without auth.
    /// `path` is Kong's normalised path (`kong.request.get_path()`) compared with
    /// `config.path` as configured.
    pub fn identifier<'a>(&'a self, request: &RequestInfo<'a>) -> (Source, &'a [u8]) {
        self.entity(request)
            .unwrap_or_else(|| (Source::Ip, client_ip(request.source_address.unwrap_or(b""))))
    }

    /// Whether the identifier of `request` (read as [`Limiter::needs`] says) is the client
    /// IP: only then does the adapter read the peer address.
    pub fn needs_address(&self, request: &RequestInfo<'_>) -> bool {
        self.entity(request).is_none()
    }

    /// The configured entity's identifier, when the request has one.
    fn entity<'a>(&'a self, request: &RequestInfo<'a>) -> Option<(Source, &'a [u8])> {
        match self.config.limit_by {
            LimitBy::Service => request.cluster.map(|c| (Source::Service, c)),
            LimitBy::Header => request.header.map(|h| (Source::Header, h)),
            LimitBy::Path => request
                .path
                .zip(self.config.path.as_deref())
                .filter(|(raw, configured)| {
                    kit::path::normalize(without_query(raw)) == configured.as_bytes()
                })
                .map(|(_, configured)| (Source::Path, configured.as_bytes())),
            LimitBy::Consumer | LimitBy::Credential | LimitBy::Ip => None,
        }
    }

    /// Decides one request at the time `now_ms()` gives (Unix milliseconds). `hash_key` is the
    /// process's identifier hash key ([`crate::store::hash_key`]).
    pub fn decide(
        &self,
        store: &dyn Store,
        hash_key: &SipKey,
        request: &RequestInfo<'_>,
        now_ms: &mut dyn FnMut() -> i64,
    ) -> Decision {
        let mut headers = Vec::new();
        let mut decision = self.decide_with(
            store,
            hash_key,
            request,
            now_ms,
            &mut || {
                (
                    request.accept.map(<[u8]>::to_vec),
                    request.request_id.to_vec(),
                )
            },
            &mut |name, value| headers.push((name.to_owned(), value.text())),
        );
        if let Verdict::Allow { headers: allowed } = &mut decision.verdict {
            *allowed = headers;
        }
        decision
    }

    /// [`Limiter::decide`] for the request path: an allowed request's headers go to
    /// `allowed` one by one, unprinted (its verdict holds none), and `reply` gives the
    /// client's Accept and the request id, which Kong's error body needs, only when the
    /// request is refused (`request.accept` and `request.request_id` are not read).
    pub fn decide_with(
        &self,
        store: &dyn Store,
        hash_key: &SipKey,
        request: &RequestInfo<'_>,
        now_ms: &mut dyn FnMut() -> i64,
        reply: &mut dyn FnMut() -> (Option<Vec<u8>>, Vec<u8>),
        allowed: &mut dyn FnMut(&'static str, HeaderValue),
    ) -> Decision {
        let (source, identifier) = self.identifier(request);
        let owner = siphash128(hash_key, &[&[source.code()], identifier]);
        let mut at = 0;
        let mut clock = || {
            at = now_ms();
            at
        };
        match check_and_count(store, &self.config, &self.scope, owner, &mut clock) {
            Counted::Decided { eval, evicted } => Decision {
                evicted,
                ..self.respond(&eval, at, reply, allowed)
            },
            Counted::Uncounted(eval) => Decision {
                uncounted: true,
                ..self.respond(&eval, at, reply, allowed)
            },
            Counted::Failed(problem) => self.failed(&problem, reply),
        }
    }

    /// `policy: redis`: the encoded `ShouldRateLimit` request for `request` (see [`remote`]).
    pub fn remote_request(&self, request: &RequestInfo<'_>) -> Vec<u8> {
        remote::encode_request(
            &self.scope,
            &self.config.limits,
            self.config.window_type,
            self.identifier(request),
        )
    }

    /// `policy: redis`: the decision the rate-limit service's encoded answer gives, with the
    /// same headers and rejection as `local` would give for the same counts. An answer that
    /// cannot be read, or that does not match the configured periods, fails as a store does
    /// (`fault_tolerant`).
    pub fn decide_remote(
        &self,
        answer: &[u8],
        now_ms: i64,
        reply: &mut dyn FnMut() -> (Option<Vec<u8>>, Vec<u8>),
        allowed: &mut dyn FnMut(&'static str, HeaderValue),
    ) -> Decision {
        let answer = match remote::decode_answer(answer) {
            Ok(answer) => answer,
            Err(why) => {
                return self.failed(&format!("rate-limit service answer: {why}"), reply);
            }
        };
        let config = &self.config;
        if answer.statuses.len() != config.limits.len() {
            return self.failed(
                &format!(
                    "rate-limit service answered {} statuses for {} periods",
                    answer.statuses.len(),
                    config.limits.len()
                ),
                reply,
            );
        }
        let stop = match answer.overall_code {
            remote::CODE_OK => None,
            remote::CODE_OVER_LIMIT => {
                let over = config
                    .limits
                    .iter()
                    .zip(&answer.statuses)
                    .find(|(_, s)| s.code == remote::CODE_OVER_LIMIT);
                match over {
                    Some(((period, _), _)) => Some(*period),
                    None => {
                        return self.failed(
                            "rate-limit service refused without a period over its limit",
                            reply,
                        )
                    }
                }
            }
            code => return self.failed(&format!("rate-limit service answered code {code}"), reply),
        };
        let now = now_ms.div_euclid(1000);
        let usages = config
            .limits
            .iter()
            .zip(&answer.statuses)
            .map(|(&(period, limit), status)| {
                let left = status.limit_remaining as f64;
                // What Kong's header shows (see `ratelimit::service`): a fixed window's
                // remaining is counted against the limit's ceiling.
                let shown = if config.window_type == WindowType::Sliding || left == 0.0 {
                    left
                } else {
                    (limit - limit.ceil() + left).max(0.0)
                };
                // The header subtracts the request itself from the period that stops it, or
                // from every period of an allowed request.
                let counted = if stop.is_none() || stop == Some(period) {
                    1.0
                } else {
                    0.0
                };
                Usage {
                    period,
                    limit,
                    usage: limit - shown - counted,
                    start: period.start(now),
                }
            })
            .collect();
        let eval = Evaluation {
            usages,
            stop,
            next: Counters::default(),
        };
        self.respond(&eval, now_ms, reply, allowed)
    }

    /// Kong's answer when the counters cannot be had: the request passes when
    /// `fault_tolerant` (without headers), else 500. Logged either way.
    pub fn store_failed(&self, problem: &str, request: &RequestInfo<'_>) -> Decision {
        self.failed(problem, &mut || {
            (
                request.accept.map(<[u8]>::to_vec),
                request.request_id.to_vec(),
            )
        })
    }

    fn failed(
        &self,
        problem: &str,
        reply: &mut dyn FnMut() -> (Option<Vec<u8>>, Vec<u8>),
    ) -> Decision {
        let verdict = if self.config.fault_tolerant {
            Verdict::Allow {
                headers: Vec::new(),
            }
        } else {
            let (accept, request_id) = reply();
            Verdict::Reject {
                response: kong_error(500, UNEXPECTED_ERROR, accept.as_deref(), &request_id),
            }
        };
        Decision {
            error: Some(format!("failed to get usage: {problem}")),
            ..Decision::of(verdict)
        }
    }

    fn respond(
        &self,
        eval: &Evaluation,
        now_ms: i64,
        reply: &mut dyn FnMut() -> (Option<Vec<u8>>, Vec<u8>),
        allowed: &mut dyn FnMut(&'static str, HeaderValue),
    ) -> Decision {
        let config = &self.config;
        if eval.stop.is_none() {
            if !config.hide_client_headers {
                each_header(config, eval, now_ms, allowed);
            }
            return Decision::of(Verdict::Allow {
                headers: Vec::new(),
            });
        }
        let (mut headers, reset) = if config.hide_client_headers {
            (Vec::new(), 0)
        } else {
            headers(config, eval, now_ms)
        };
        if !config.hide_client_headers {
            headers.push(("Retry-After".into(), reset.to_string()));
        }
        let (accept, request_id) = reply();
        let accept = accept.as_deref();
        // Kong sets the headers before `kong.response.error`, which refuses a status outside
        // 400-599; its runloop then answers 500 and the headers stay.
        let (mut response, error) = match config.rejection_status() {
            Some(status) => (
                kong_error(status, &config.error_message, accept, &request_id),
                None,
            ),
            None => (
                kong_error(500, UNEXPECTED_ERROR, accept, &request_id),
                Some("code must be a number between 400 and 599".to_owned()),
            ),
        };
        response.headers.extend(headers);
        Decision {
            error,
            ..Decision::of(Verdict::Reject { response })
        }
    }
}

/// `kong.request.get_raw_path()`: the path up to the first `?` after its first byte.
fn without_query(path: &[u8]) -> &[u8] {
    match path.iter().skip(1).position(|&b| b == b'?') {
        Some(i) => path.get(..=i).unwrap_or(path),
        None => path,
    }
}

/// The IP of an `IP:port` or `[IPv6]:port` address (an address without a port is returned
/// as it is).
pub fn client_ip(address: &[u8]) -> &[u8] {
    if let Some(rest) = address.strip_prefix(b"[") {
        return rest.split(|&b| b == b']').next().unwrap_or(rest);
    }
    match address.iter().position(|&b| b == b':') {
        // Exactly one colon, digits after it: IPv4 and port.
        Some(colon) => match address.split_at_checked(colon) {
            Some((ip, port))
                if port
                    .get(1..)
                    .is_some_and(|p| p.iter().all(u8::is_ascii_digit)) =>
            {
                ip
            }
            _ => address,
        },
        None => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::SetError;
    use crate::{Period, WindowType};

    const T0_MS: i64 = 1_709_208_000_000 + 15_250; // 12:00:15.250
    const KEY: SipKey = [7; 16];

    fn limiter(json: &str) -> Limiter {
        Limiter::new(Config::parse(json.as_bytes()).unwrap(), b"test")
    }

    /// Kong's JSON error body for the request id [`peer`] gives.
    fn kong_json(message: &str) -> Vec<u8> {
        format!("{{\n  \"message\":\"{message}\",\n  \"request_id\":\"rl-1\"\n}}").into_bytes()
    }

    fn peer(address: &[u8]) -> RequestInfo<'_> {
        RequestInfo {
            source_address: Some(address),
            request_id: b"rl-1",
            ..Default::default()
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn decide(l: &Limiter, store: &dyn Store, request: &RequestInfo<'_>, now: i64) -> Decision {
        l.decide(store, &KEY, request, &mut || now)
    }

    fn allowed(decision: &Decision) -> bool {
        matches!(decision.verdict, Verdict::Allow { .. })
    }

    #[test]
    fn client_ips_drop_the_port() {
        assert_eq!(client_ip(b"10.1.2.3:5555"), b"10.1.2.3");
        assert_eq!(client_ip(b"[::1]:80"), b"::1");
        assert_eq!(client_ip(b"[2001:db8::7]:65535"), b"2001:db8::7");
        assert_eq!(client_ip(b"10.1.2.3"), b"10.1.2.3");
        assert_eq!(client_ip(b"2001:db8::7"), b"2001:db8::7");
        assert_eq!(client_ip(b""), b"");
        assert_eq!(client_ip(b"["), b"");
        assert_eq!(client_ip(b"\xff:\xfe"), b"\xff:\xfe");
    }

    #[test]
    fn identifiers_follow_limit_by_and_fall_back_to_the_ip() {
        let request = RequestInfo {
            source_address: Some(b"10.0.0.9:4000"),
            cluster: Some(b"backend"),
            header: Some(b"team-a"),
            path: Some(b"/v1/items?page=2"),
            accept: None,
            request_id: b"",
        };
        let id = |json: &str| {
            let l = limiter(json);
            let (source, id) = l.identifier(&request);
            (source, id.to_vec())
        };
        let ip = (Source::Ip, b"10.0.0.9".to_vec());
        assert_eq!(id(r#"{"second":1}"#), ip);
        assert_eq!(id(r#"{"second":1,"limit_by":"credential"}"#), ip);
        assert_eq!(id(r#"{"second":1,"limit_by":"ip"}"#), ip);
        assert_eq!(
            id(r#"{"second":1,"limit_by":"service"}"#),
            (Source::Service, b"backend".to_vec())
        );
        assert_eq!(
            id(r#"{"second":1,"limit_by":"header","header_name":"x-team"}"#),
            (Source::Header, b"team-a".to_vec())
        );
        assert_eq!(
            id(r#"{"second":1,"limit_by":"path","path":"/v1/items"}"#),
            (Source::Path, b"/v1/items".to_vec())
        );
        assert_eq!(id(r#"{"second":1,"limit_by":"path","path":"/v1"}"#), ip);
        let bare = peer(b"10.0.0.9:4000");
        let l = limiter(r#"{"second":1,"limit_by":"header","header_name":"x-team"}"#);
        assert_eq!(l.identifier(&bare), (Source::Ip, &b"10.0.0.9"[..]));
        assert_eq!(l.needs(), Need::Header);
    }

    /// The adapter reads the peer address only when `needs_address` says so: otherwise the
    /// identifier is the same without it.
    #[test]
    fn the_address_is_read_only_when_the_identifier_falls_back_to_it() {
        let configs = [
            r#"{"second":1}"#,
            r#"{"second":1,"limit_by":"service"}"#,
            r#"{"second":1,"limit_by":"header","header_name":"x-team"}"#,
            r#"{"second":1,"limit_by":"path","path":"/v1/items"}"#,
        ];
        let mut skipped = 0;
        for json in configs {
            let l = limiter(json);
            for cluster in [None, Some(b"backend".as_slice())] {
                for header in [None, Some(b"team-a".as_slice())] {
                    for path in [
                        None,
                        Some(b"/v1/items?a".as_slice()),
                        Some(b"/v2".as_slice()),
                    ] {
                        let without = RequestInfo {
                            cluster,
                            header,
                            path,
                            ..RequestInfo::default()
                        };
                        let with = RequestInfo {
                            source_address: Some(b"10.0.0.9:4000"),
                            ..without
                        };
                        if l.needs_address(&without) {
                            assert_eq!(l.identifier(&with).0, Source::Ip, "{json}");
                        } else {
                            assert_eq!(l.identifier(&with), l.identifier(&without), "{json}");
                            skipped += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(skipped, 6 + 6 + 4);
    }

    /// The request path's `decide_with` answers as `decide`: the same headers, emitted
    /// instead of held, and Accept and the request id asked for only by a refusal.
    #[test]
    fn deciding_with_emitted_headers_and_a_late_reply_answers_as_decide() {
        for json in [
            r#"{"second":2,"minute":3,"limit_by":"service"}"#,
            r#"{"second":2.5,"window_type":"sliding"}"#,
            r#"{"second":2,"hide_client_headers":true}"#,
            r#"{"second":1,"error_code":200}"#,
        ] {
            let l = limiter(json);
            let (held, emitting) = (MemoryStore::default(), MemoryStore::default());
            let request = RequestInfo {
                cluster: Some(b"backend"),
                accept: Some(b"text/plain"),
                ..peer(b"10.0.0.9:1")
            };
            let mut replies = 0;
            for n in 0..5 {
                let now = T0_MS + n * 300;
                let expected = decide(&l, &held, &request, now);
                let mut emitted = Vec::new();
                let got = l.decide_with(
                    &emitting,
                    &KEY,
                    &RequestInfo {
                        accept: None,
                        request_id: b"",
                        ..request
                    },
                    &mut || now,
                    &mut || {
                        replies += 1;
                        (Some(b"text/plain".to_vec()), b"rl-1".to_vec())
                    },
                    &mut |name, value| emitted.push((name.to_owned(), value.text())),
                );
                match (&expected.verdict, &got.verdict) {
                    (Verdict::Allow { headers }, Verdict::Allow { headers: none }) => {
                        assert!(none.is_empty());
                        assert_eq!(&emitted, headers, "{json} {n}");
                    }
                    _ => {
                        assert!(emitted.is_empty());
                        assert_eq!(got, expected, "{json} {n}");
                    }
                }
            }
            assert!(replies > 0 && replies < 5, "{json}: {replies}");
        }
    }

    /// Review #1: every identifier source and Accept are bytes; nothing a client sends can
    /// make the decision fail, and bytes outside UTF-8 are never merged by a lossy conversion.
    #[test]
    fn no_byte_sequence_makes_a_request_fail() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute":1,"limit_by":"header","header_name":"x-key"}"#);
        let keyed = |value: &'static [u8]| RequestInfo {
            source_address: Some(b"\xff[:]"),
            header: Some(value),
            accept: Some(b"\xff\xfe, text/\xe9;q=\xff"),
            ..Default::default()
        };
        assert!(allowed(&decide(&l, &store, &keyed(b"\xff"), T0_MS)));
        // "\xfe" and "\xe9" would both be U+FFFD after a lossy conversion: own budgets.
        assert!(allowed(&decide(&l, &store, &keyed(b"\xfe"), T0_MS)));
        assert!(allowed(&decide(&l, &store, &keyed(b"\xe9"), T0_MS)));
        assert!(allowed(&decide(&l, &store, &keyed(b"\xc3\xa9"), T0_MS)));
        let Verdict::Reject { response } = decide(&l, &store, &keyed(b"\xff"), T0_MS).verdict
        else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 429);
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let by_path = limiter(r#"{"minute":1,"limit_by":"path","path":"/a"}"#);
        for path in [
            &b"\xff"[..],
            b"/%ff%",
            b"",
            b"?",
            b"/a\x00",
            b"/\xc0\xaf..%2f",
        ] {
            let request = RequestInfo {
                path: Some(path),
                ..peer(b"1.1.1.1:1")
            };
            decide(&by_path, &store, &request, T0_MS);
        }
    }

    /// Review #7: Kong compares its normalised path, so the spellings of one path are one
    /// budget, whoever sends them.
    #[test]
    fn limit_by_path_compares_kongs_normalised_path() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute":4,"limit_by":"path","path":"/v1/items"}"#);
        let spellings: [&[u8]; 5] = [
            b"/v1//items",
            b"/v1/%69tems",
            b"/v1/./items?page=2",
            b"/v1/x/../items",
            b"/v1/items",
        ];
        let results: Vec<bool> = spellings
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let address = format!("10.0.0.{i}:1000");
                let request = RequestInfo {
                    path: Some(path),
                    ..peer(address.as_bytes())
                };
                allowed(&decide(&l, &store, &request, T0_MS))
            })
            .collect();
        assert_eq!(results, [true, true, true, true, false]);
        // A query is not part of the path, an encoded `?` or `/` is.
        for other in [&b"/v1/items%3F"[..], b"/v1%2Fitems", b"/V1/items"] {
            let request = RequestInfo {
                path: Some(other),
                ..peer(b"10.0.0.1:1")
            };
            assert_eq!(l.identifier(&request).0, Source::Ip, "{other:?}");
        }
    }

    /// Review #6: the counters belong to the plugin instance's name, not to its configuration.
    #[test]
    fn a_configuration_change_keeps_the_usage() {
        let store = MemoryStore::default();
        let before = Limiter::new(Config::parse(br#"{"minute":3}"#).unwrap(), b"rl");
        let client = peer(b"1.1.1.1:1");
        for _ in 0..3 {
            assert!(allowed(&decide(&before, &store, &client, T0_MS)));
        }
        assert!(!allowed(&decide(&before, &store, &client, T0_MS)));
        let after = Limiter::new(
            Config::parse(br#"{"minute":5,"error_message":"x"}"#).unwrap(),
            b"rl",
        );
        assert_eq!(after.scope, before.scope);
        let Verdict::Allow { headers } = decide(&after, &store, &client, T0_MS).verdict else {
            panic!("room for 2 more")
        };
        assert_eq!(header(&headers, "x-ratelimit-remaining-minute"), Some("1"));
        assert!(allowed(&decide(&after, &store, &client, T0_MS)));
        let Verdict::Reject { response } = decide(&after, &store, &client, T0_MS).verdict else {
            panic!("must be rejected")
        };
        assert_eq!(response.body, kong_json("x"));
        // Another instance has its own counters.
        let other = Limiter::new(Config::parse(br#"{"minute":3}"#).unwrap(), b"rl-2");
        assert!(allowed(&decide(&other, &store, &client, T0_MS)));
    }

    #[test]
    fn a_header_value_never_shares_a_budget_with_an_ip() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute":1,"limit_by":"header","header_name":"x-key"}"#);
        let by_ip = peer(b"10.0.0.1:1");
        let by_header = RequestInfo {
            header: Some(b"10.0.0.1"),
            ..peer(b"10.0.0.2:1")
        };
        assert!(allowed(&decide(&l, &store, &by_ip, T0_MS)));
        assert!(allowed(&decide(&l, &store, &by_header, T0_MS)));
        assert!(!allowed(&decide(&l, &store, &by_ip, T0_MS)));
    }

    #[test]
    fn an_allowed_request_gets_kongs_headers() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"second": 2, "minute": 10}"#);
        let decision = decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS);
        assert_eq!(
            (decision.error, decision.evicted, decision.uncounted),
            (None, 0, false)
        );
        let Verdict::Allow { headers } = decision.verdict else {
            panic!("must be allowed")
        };
        assert_eq!(header(&headers, "X-RateLimit-Limit-Second"), Some("2"));
        assert_eq!(header(&headers, "X-RateLimit-Remaining-Second"), Some("1"));
        assert_eq!(header(&headers, "X-RateLimit-Limit-Minute"), Some("10"));
        assert_eq!(header(&headers, "X-RateLimit-Remaining-Minute"), Some("9"));
        assert_eq!(header(&headers, "RateLimit-Limit"), Some("2"));
        assert_eq!(header(&headers, "RateLimit-Remaining"), Some("1"));
        assert_eq!(header(&headers, "RateLimit-Reset"), Some("1"));
        assert_eq!(header(&headers, "Retry-After"), None);
    }

    #[test]
    fn a_rejection_is_kongs_429_with_headers_and_retry_after() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute": 1}"#);
        assert!(allowed(&decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS)));
        let Verdict::Reject { response } = decide(&l, &store, &peer(b"1.1.1.1:2"), T0_MS).verdict
        else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 429);
        assert_eq!(
            response.body,
            b"{\n  \"message\":\"API rate limit exceeded\",\n  \"request_id\":\"rl-1\"\n}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(response.header("x-ratelimit-remaining-minute"), Some("0"));
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
        assert_eq!(response.header("ratelimit-reset"), Some("45"));
        assert_eq!(response.header("retry-after"), Some("45"));
        // Another IP has its own budget.
        assert!(allowed(&decide(&l, &store, &peer(b"2.2.2.2:1"), T0_MS)));
    }

    #[test]
    fn custom_errors_and_hidden_headers() {
        let store = MemoryStore::default();
        let l = limiter(
            r#"{"second": 1, "error_code": 503, "error_message": "slow down",
                "hide_client_headers": true}"#,
        );
        let Verdict::Allow { headers } = decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS).verdict
        else {
            panic!("must be allowed")
        };
        assert!(headers.is_empty());
        let request = RequestInfo {
            accept: Some(b"text/plain"),
            ..peer(b"1.1.1.1:1")
        };
        let Verdict::Reject { response } = decide(&l, &store, &request, T0_MS).verdict else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"slow down\nrequest_id: rl-1\n");
        assert_eq!(response.headers.len(), 1, "{:?}", response.headers);
    }

    /// Review #17: Kong accepts any `error_code` > 0; `kong.response.error` refuses a status
    /// outside 400-599 at run time and Kong's runloop answers 500, keeping the headers the
    /// plugin had set. A fractional status is truncated, as nginx does.
    #[test]
    fn an_error_code_outside_400_to_599_answers_kongs_500() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute": 1, "error_code": 200}"#);
        assert!(allowed(&decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS)));
        let decision = decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS);
        assert_eq!(
            decision.error.as_deref(),
            Some("code must be a number between 400 and 599")
        );
        let Verdict::Reject { response } = decision.verdict else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 500);
        assert_eq!(response.body, kong_json("An unexpected error occurred"));
        assert_eq!(response.header("retry-after"), Some("45"));
        let fractional = limiter(r#"{"minute": 1, "error_code": 429.9}"#);
        decide(&fractional, &store, &peer(b"2.2.2.2:1"), T0_MS);
        let Verdict::Reject { response } =
            decide(&fractional, &store, &peer(b"2.2.2.2:1"), T0_MS).verdict
        else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 429);
    }

    struct Failing;

    impl Store for Failing {
        fn get(&self, _key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
            Err(10)
        }
        fn set(&self, _key: &[u8], _value: &[u8], _cas: u32) -> Result<(), SetError> {
            Err(SetError::Failed(10))
        }
    }

    #[test]
    fn a_failing_store_passes_when_fault_tolerant_and_answers_500_otherwise() {
        let tolerant = limiter(r#"{"second": 1}"#);
        let decision = decide(&tolerant, &Failing, &peer(b"1.1.1.1:1"), T0_MS);
        assert_eq!(
            decision.verdict,
            Verdict::Allow {
                headers: Vec::new()
            }
        );
        assert!(decision.error.unwrap().starts_with("failed to get usage"));
        let strict = limiter(r#"{"second": 1, "fault_tolerant": false}"#);
        let decision = decide(&strict, &Failing, &peer(b"1.1.1.1:1"), T0_MS);
        let Verdict::Reject { response } = decision.verdict else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 500);
        assert_eq!(response.body, kong_json("An unexpected error occurred"));
        assert!(decision.error.is_some());
    }

    /// A store where every write loses its race (other workers keep writing the bucket).
    struct Contended(MemoryStore);

    impl Store for Contended {
        fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
            self.0.get(key)
        }
        fn set(&self, _key: &[u8], _value: &[u8], _cas: u32) -> Result<(), SetError> {
            Err(SetError::CasMismatch)
        }
    }

    /// Review #12: a request whose every write lost its race passes (contention is not an
    /// unreachable store, so not `fault_tolerant`'s 500), with the headers of the last read,
    /// and says it was not counted.
    #[test]
    fn a_lost_race_storm_passes_uncounted_and_says_so() {
        for json in [
            r#"{"minute": 5}"#,
            r#"{"minute": 5, "fault_tolerant": false}"#,
        ] {
            let l = limiter(json);
            let decision = decide(
                &l,
                &Contended(MemoryStore::default()),
                &peer(b"1.1.1.1:1"),
                T0_MS,
            );
            assert!(decision.uncounted, "{json}");
            assert_eq!(decision.error, None);
            let Verdict::Allow { headers } = decision.verdict else {
                panic!("must be allowed: {json}")
            };
            assert_eq!(header(&headers, "x-ratelimit-remaining-minute"), Some("4"));
        }
    }

    #[test]
    fn sliding_remaining_is_rounded_down() {
        let store = MemoryStore::default();
        let mut l = limiter(r#"{"second": 10, "window_type": "sliding"}"#);
        assert_eq!(l.config.window_type, WindowType::Sliding);
        for _ in 0..10 {
            decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS);
        }
        // 0.35 s into the next second: 10 * 0.65 = 6.5 still count; 10 - 6.5 - 1 = 2.5.
        let Verdict::Allow { headers } =
            decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS + 1_100).verdict
        else {
            panic!("must be allowed")
        };
        assert_eq!(header(&headers, "x-ratelimit-remaining-second"), Some("2"));
        l.config.window_type = WindowType::Fixed;
        assert_eq!(l.config.limit(Period::Second), Some(10.0));
    }

    /// A full table evicts the least recently counted identifier for a new one; the decision
    /// says so, for the adapter's eviction metric.
    #[test]
    fn a_decision_reports_the_identifiers_it_evicted() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"minute": 5, "max_identifiers": 1}"#);
        assert_eq!(decide(&l, &store, &peer(b"1.1.1.1:1"), T0_MS).evicted, 0);
        let decision = decide(&l, &store, &peer(b"2.2.2.2:1"), T0_MS);
        assert!(allowed(&decision));
        assert_eq!(decision.evicted, 1);
    }
}
