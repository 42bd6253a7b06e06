//! The per-request decision: who is asking (Kong's identifier), check-and-count, and the
//! response: headers to add to the upstream's response, or Kong's rejection.

use kit::{kong_error, LocalResponse};

use crate::config::{Config, LimitBy};
use crate::counters::headers;
use crate::store::{check_and_count, Counted, Store};

/// Kong's answer when the store fails and `fault_tolerant` is false.
pub const UNEXPECTED_ERROR: &str = "An unexpected error occurred";

/// What the identifier and the response depend on. The adapter reads only the fields
/// [`Limiter::needs`] asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestInfo<'a> {
    /// `source.address`: the downstream peer, `IP:port` (`[v6]:port`).
    pub source_address: Option<&'a str>,
    /// The Envoy cluster the request is routed to (`xds.cluster_name`): Kong's service.
    pub cluster: Option<&'a str>,
    /// The value of `config.header_name` (first one when repeated).
    pub header: Option<&'a str>,
    /// `:path`, query string included.
    pub path: Option<&'a str>,
    pub accept: Option<&'a str>,
}

/// What the adapter reads for a request, besides Accept and the peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Cluster,
    Header,
    Path,
}

/// What the filter does with the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Proxy the request; add these headers to its response.
    Allow {
        headers: Vec<(String, String)>,
        /// Something to log (the store failed and the request passes: `fault_tolerant`).
        log: Option<String>,
    },
    /// Answer with this response instead.
    Reject {
        response: LocalResponse,
        log: Option<String>,
    },
}

/// One configured plugin instance.
#[derive(Clone, Debug)]
pub struct Limiter {
    pub config: Config,
    /// Prefix of every shared-data key of this instance.
    pub scope: String,
}

impl Limiter {
    /// `instance` names the plugin instance within its VM's shared data (the adapter uses
    /// Envoy's `plugin_name` and a fingerprint of the configuration).
    pub fn new(config: Config, instance: &str) -> Limiter {
        Limiter {
            config,
            scope: format!("{}|{instance}", crate::PLUGIN_NAME),
        }
    }

    pub fn needs(&self) -> Need {
        match self.config.limit_by {
            LimitBy::Service => Need::Cluster,
            LimitBy::Header => Need::Header,
            LimitBy::Path => Need::Path,
            LimitBy::Consumer | LimitBy::Credential | LimitBy::ConsumerGroup | LimitBy::Ip => {
                Need::Nothing
            }
        }
    }

    /// Kong's `get_identifier`: the configured entity, else the client IP. No plugin sets a
    /// consumer or credential yet, so those fall back to the IP as in Kong without auth.
    pub fn identifier<'a>(&self, request: &RequestInfo<'a>) -> &'a str {
        let chosen = match self.config.limit_by {
            LimitBy::Service => request.cluster,
            LimitBy::Header => request.header,
            LimitBy::Path => request
                .path
                .map(|p| p.split(['?', '#']).next().unwrap_or(p))
                .filter(|p| Some(*p) == self.config.path.as_deref()),
            LimitBy::Consumer | LimitBy::Credential | LimitBy::ConsumerGroup | LimitBy::Ip => None,
        };
        chosen.unwrap_or_else(|| client_ip(request.source_address.unwrap_or("")))
    }

    /// Decides one request at the time `now_ms()` gives (Unix milliseconds).
    pub fn decide(
        &self,
        store: &dyn Store,
        request: &RequestInfo<'_>,
        now_ms: &mut dyn FnMut() -> i64,
    ) -> Verdict {
        let identifier = self.identifier(request);
        let config = &self.config;
        let mut at = 0;
        let mut clock = || {
            at = now_ms();
            at
        };
        match check_and_count(store, config, &self.scope, identifier, &mut clock) {
            Counted::Decided(eval) => {
                let (mut headers, reset) = if config.hide_client_headers {
                    (Vec::new(), 0)
                } else {
                    headers(config, &eval, at)
                };
                if eval.stop.is_none() {
                    return Verdict::Allow { headers, log: None };
                }
                if !config.hide_client_headers {
                    headers.push(("Retry-After".into(), reset.to_string()));
                }
                let mut response =
                    kong_error(config.error_code, &config.error_message, request.accept.map(str::as_bytes));
                response.headers.extend(headers);
                Verdict::Reject {
                    response,
                    log: None,
                }
            }
            Counted::Failed(problem) => {
                let log = Some(format!("failed to get usage: {problem}"));
                if config.fault_tolerant {
                    Verdict::Allow {
                        headers: Vec::new(),
                        log,
                    }
                } else {
                    Verdict::Reject {
                        response: kong_error(500, UNEXPECTED_ERROR, request.accept.map(str::as_bytes)),
                        log,
                    }
                }
            }
        }
    }
}

/// The IP of an `IP:port` or `[IPv6]:port` address (an address without a port is returned
/// as it is).
pub fn client_ip(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let bytes = address.as_bytes();
    match bytes.iter().position(|&b| b == b':') {
        // Exactly one colon, digits after it: IPv4 and port.
        Some(colon)
            if bytes[colon + 1..].iter().all(u8::is_ascii_digit)
                && !bytes[..colon].contains(&b':') =>
        {
            address.get(..colon).unwrap_or(address)
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::SetError;
    use crate::{Period, WindowType};

    const T0_MS: i64 = 1_709_208_000_000 + 15_250; // 12:00:15.250

    fn limiter(json: &str) -> Limiter {
        Limiter::new(Config::parse(json.as_bytes()).unwrap(), "test")
    }

    fn peer(address: &str) -> RequestInfo<'_> {
        RequestInfo {
            source_address: Some(address),
            ..Default::default()
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn client_ips_drop_the_port() {
        assert_eq!(client_ip("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(client_ip("[::1]:80"), "::1");
        assert_eq!(client_ip("[2001:db8::7]:65535"), "2001:db8::7");
        assert_eq!(client_ip("10.1.2.3"), "10.1.2.3");
        assert_eq!(client_ip("2001:db8::7"), "2001:db8::7");
        assert_eq!(client_ip(""), "");
    }

    #[test]
    fn identifiers_follow_limit_by_and_fall_back_to_the_ip() {
        let request = RequestInfo {
            source_address: Some("10.0.0.9:4000"),
            cluster: Some("backend"),
            header: Some("team-a"),
            path: Some("/v1/items?page=2"),
            accept: None,
        };
        let id = |json: &str| limiter(json).identifier(&request).to_owned();
        assert_eq!(id(r#"{"second":1}"#), "10.0.0.9");
        assert_eq!(id(r#"{"second":1,"limit_by":"credential"}"#), "10.0.0.9");
        assert_eq!(
            id(r#"{"second":1,"limit_by":"consumer-group"}"#),
            "10.0.0.9"
        );
        assert_eq!(id(r#"{"second":1,"limit_by":"ip"}"#), "10.0.0.9");
        assert_eq!(id(r#"{"second":1,"limit_by":"service"}"#), "backend");
        assert_eq!(
            id(r#"{"second":1,"limit_by":"header","header_name":"x-team"}"#),
            "team-a"
        );
        assert_eq!(
            id(r#"{"second":1,"limit_by":"path","path":"/v1/items"}"#),
            "/v1/items"
        );
        assert_eq!(
            id(r#"{"second":1,"limit_by":"path","path":"/v1"}"#),
            "10.0.0.9"
        );
        let bare = peer("10.0.0.9:4000");
        let l = limiter(r#"{"second":1,"limit_by":"header","header_name":"x-team"}"#);
        assert_eq!(l.identifier(&bare), "10.0.0.9");
        assert_eq!(l.needs(), Need::Header);
    }

    #[test]
    fn an_allowed_request_gets_kongs_headers() {
        let store = MemoryStore::default();
        let l = limiter(r#"{"second": 2, "minute": 10}"#);
        let Verdict::Allow { headers, log } = l.decide(&store, &peer("1.1.1.1:1"), &mut || T0_MS)
        else {
            panic!("must be allowed")
        };
        assert_eq!(log, None);
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
        let mut now = || T0_MS;
        assert!(matches!(
            l.decide(&store, &peer("1.1.1.1:1"), &mut now),
            Verdict::Allow { .. }
        ));
        let Verdict::Reject { response, .. } = l.decide(&store, &peer("1.1.1.1:2"), &mut now)
        else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 429);
        assert_eq!(response.body, br#"{"message":"API rate limit exceeded"}"#);
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(response.header("x-ratelimit-remaining-minute"), Some("0"));
        assert_eq!(response.header("ratelimit-remaining"), Some("0"));
        assert_eq!(response.header("ratelimit-reset"), Some("45"));
        assert_eq!(response.header("retry-after"), Some("45"));
        // Another IP has its own budget.
        assert!(matches!(
            l.decide(&store, &peer("2.2.2.2:1"), &mut now),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn custom_errors_and_hidden_headers() {
        let store = MemoryStore::default();
        let l = limiter(
            r#"{"second": 1, "error_code": 503, "error_message": "slow down",
                "hide_client_headers": true}"#,
        );
        let mut now = || T0_MS;
        let Verdict::Allow { headers, .. } = l.decide(&store, &peer("1.1.1.1:1"), &mut now) else {
            panic!("must be allowed")
        };
        assert!(headers.is_empty());
        let request = RequestInfo {
            accept: Some("text/plain"),
            ..peer("1.1.1.1:1")
        };
        let Verdict::Reject { response, .. } = l.decide(&store, &request, &mut now) else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"slow down\n");
        assert_eq!(response.headers.len(), 1, "{:?}", response.headers);
    }

    struct Failing;

    impl Store for Failing {
        fn get(&self, _key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
            Err(10)
        }
        fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> Result<(), SetError> {
            Err(SetError::Failed(10))
        }
    }

    #[test]
    fn a_failing_store_passes_when_fault_tolerant_and_answers_500_otherwise() {
        let tolerant = limiter(r#"{"second": 1}"#);
        let Verdict::Allow { headers, log } =
            tolerant.decide(&Failing, &peer("1.1.1.1:1"), &mut || T0_MS)
        else {
            panic!("must be allowed")
        };
        assert!(headers.is_empty());
        assert!(log.unwrap().starts_with("failed to get usage"));
        let strict = limiter(r#"{"second": 1, "fault_tolerant": false}"#);
        let Verdict::Reject { response, log } =
            strict.decide(&Failing, &peer("1.1.1.1:1"), &mut || T0_MS)
        else {
            panic!("must be rejected")
        };
        assert_eq!(response.status, 500);
        assert_eq!(
            response.body,
            br#"{"message":"An unexpected error occurred"}"#
        );
        assert!(log.is_some());
    }

    #[test]
    fn sliding_remaining_is_rounded_down() {
        let store = MemoryStore::default();
        let mut l = limiter(r#"{"second": 10, "window_type": "sliding"}"#);
        assert_eq!(l.config.window_type, WindowType::Sliding);
        for _ in 0..10 {
            l.decide(&store, &peer("1.1.1.1:1"), &mut || T0_MS);
        }
        // 0.35 s into the next second: 10 * 0.65 = 6.5 still count; 10 - 6.5 - 1 = 2.5.
        let Verdict::Allow { headers, .. } =
            l.decide(&store, &peer("1.1.1.1:1"), &mut || T0_MS + 1_100)
        else {
            panic!("must be allowed")
        };
        assert_eq!(header(&headers, "x-ratelimit-remaining-second"), Some("2"));
        l.config.window_type = WindowType::Fixed;
        assert_eq!(l.config.limit(Period::Second), Some(10.0));
    }
}
