//! `rate_limiting::Limiter::decide` against `store::memory::MemoryStore` (Envoy's shared-data
//! semantics), for a generated config and a sequence of requests with arbitrary bytes in the
//! peer address, the limited-by header, the path, the cluster and Accept, on a clock that
//! only moves forward.
//!
//! - The identifier is Kong's: the header, Kong's normalised path compared with
//!   `config.path`, or the cluster, else the client IP; sources never share a budget.
//! - Fixed windows are exact: a request passes if and only if every period's window has
//!   counted fewer requests than its limit (no over-admission, and no refusal because of
//!   other clients). Sliding windows never admit more than the limit in a window, and are
//!   exact while the previous window is empty.
//! - The headers tell the truth: `X-RateLimit-Limit-*`, `X-RateLimit-Remaining-*` and
//!   `RateLimit-Remaining` are the model's; a refusal has Kong's status (or 500 for an
//!   error code outside 400-599, logged) and a `Retry-After`; `hide_client_headers` hides
//!   them all.
//!
//! An eviction (only with a tiny `max_identifiers`) legitimately forgets a count: the model
//! stops checking counts from there.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use rate_limiting::limiter::{client_ip, Source};
use rate_limiting::store::memory::MemoryStore;
use rate_limiting::{Config, Limiter, Period, RequestInfo, Verdict};
use serde_json::{json, Map, Value};
use wasmgate_fuzz::Bytes;

const PATH: &[u8] = b"/v1/items";
const T0_MS: i64 = 1_709_208_000_000;

fn source_code(s: Source) -> u8 {
    match s {
        Source::Ip => 1,
        Source::Service => 2,
        Source::Header => 3,
        Source::Path => 4,
    }
}

fn without_query(path: &[u8]) -> &[u8] {
    match path.iter().skip(1).position(|&b| b == b'?') {
        Some(i) => &path[..=i],
        None => path,
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn number(headers: &[(String, String)], name: &str) -> f64 {
    header(headers, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number: {headers:?}"))
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes(data);
    let knobs = r.byte();
    let limit_by = ["ip", "header", "path", "service"][usize::from(knobs & 3)];
    let sliding = knobs & 4 != 0;
    let hide = knobs & 8 != 0;
    let tiny = knobs & 16 != 0;
    let error_code: f64 = [429.0, 503.0, 200.0, 418.7][usize::from(knobs >> 5 & 3)];
    let mask = match r.byte() & 63 {
        0 => 1,
        m => m,
    };
    let mut document = Map::new();
    let mut limits = Vec::new();
    let mut floor = 1.0;
    for p in Period::ALL {
        if mask & (1 << p.code()) != 0 {
            let limit = f64::from(1 + r.byte() % 5).max(floor);
            floor = limit;
            limits.push((p, limit));
            document.insert(p.name().into(), json!(limit));
        }
    }
    document.insert("limit_by".into(), json!(limit_by));
    document.insert("header_name".into(), json!("x-client"));
    document.insert("path".into(), json!("/v1/items"));
    document.insert("hide_client_headers".into(), json!(hide));
    document.insert("error_code".into(), json!(error_code));
    document.insert(
        "window_type".into(),
        json!(if sliding { "sliding" } else { "fixed" }),
    );
    let max = if tiny {
        1 + u64::from(r.byte() % 16)
    } else {
        10_000
    };
    document.insert("max_identifiers".into(), json!(max));
    let config = Config::parse(Value::Object(document).to_string().as_bytes())
        .expect("the generated config is valid");
    let rejection = config.rejection_status();
    let limiter = Limiter::new(config, b"fuzz");
    let store = MemoryStore::default();
    let key = [7u8; 16];

    let mut now = T0_MS + i64::from(r.u16()) * 997;
    // (source, identifier, period, window start) → requests counted.
    let mut counts: HashMap<(u8, Vec<u8>, Period, i64), u64> = HashMap::new();
    let mut exact = true;
    // Enough requests to fill and roll every window of a limit up to 5; more only slow the
    // executions down.
    let mut budget = 48;
    while !r.is_empty() && budget > 0 {
        budget -= 1;
        let step = r.byte();
        now += [0, 1, 250, 999, 1_000, 59_000, 3_600_000, 31 * 86_400_000][usize::from(step & 7)]
            + i64::from(step >> 3);
        let request = RequestInfo {
            source_address: r.field(),
            header: r.field(),
            path: r.field(),
            cluster: r.field(),
            accept: r.field(),
            request_id: b"fuzz-request-id",
        };
        let ip = (Source::Ip, client_ip(request.source_address.unwrap_or(b"")));
        let expected_id = match limit_by {
            "header" => request.header.map(|h| (Source::Header, h)),
            "path" => request
                .path
                .filter(|p| kit::path::normalize(without_query(p)) == PATH)
                .map(|_| (Source::Path, PATH)),
            "service" => request.cluster.map(|c| (Source::Service, c)),
            _ => None,
        }
        .unwrap_or(ip);
        let (source, id) = limiter.identifier(&request);
        assert_eq!((source, id), expected_id, "Kong's identifier");
        let id_key = (source_code(source), id.to_vec());

        let secs = now.div_euclid(1000);
        let windows: Vec<(Period, f64, u64, u64, i64)> = limits
            .iter()
            .map(|&(p, limit)| {
                let start = p.start(secs);
                let count = |s: i64| {
                    counts
                        .get(&(id_key.0, id_key.1.clone(), p, s))
                        .copied()
                        .unwrap_or(0)
                };
                (p, limit, count(start), count(p.previous(secs)), start)
            })
            .collect();
        let decision = limiter.decide(&store, &key, &request, &mut || now);
        assert!(!decision.uncounted, "one thread never loses a race");
        if decision.evicted > 0 {
            exact = false;
        }
        let allowed = matches!(decision.verdict, Verdict::Allow { .. });
        if exact {
            let under = windows.iter().all(|w| (w.2 as f64) < w.1);
            if allowed {
                assert!(under, "over-admitted: {windows:?}");
            } else if !sliding || windows.iter().all(|w| w.3 == 0) {
                assert!(!under, "refused under the limit: {windows:?}");
            }
        }
        match &decision.verdict {
            Verdict::Allow { headers } => {
                assert_eq!(decision.error, None);
                for w in &windows {
                    *counts
                        .entry((id_key.0, id_key.1.clone(), w.0, w.4))
                        .or_insert(0) += 1;
                }
                if hide {
                    assert!(headers.is_empty());
                } else if exact && !sliding {
                    let mut lowest = f64::INFINITY;
                    for &(p, limit, count, _, _) in &windows {
                        let (limit_name, remaining_name) = p.header_names();
                        assert_eq!(number(headers, limit_name), limit);
                        let remaining = limit - count as f64 - 1.0;
                        assert_eq!(number(headers, remaining_name), remaining);
                        lowest = lowest.min(remaining);
                    }
                    assert_eq!(number(headers, "RateLimit-Remaining"), lowest);
                    assert!(number(headers, "RateLimit-Reset") >= 1.0);
                }
            }
            Verdict::Reject { response } => {
                let status = rejection.unwrap_or(500);
                assert_eq!(response.status, status);
                assert_eq!(decision.error.is_some(), rejection.is_none());
                if hide {
                    assert_eq!(response.headers.len(), 1, "{:?}", response.headers);
                } else {
                    assert!(number(&response.headers, "Retry-After") >= 1.0);
                    assert_eq!(number(&response.headers, "RateLimit-Remaining"), 0.0);
                }
            }
        }
    }
});
