//! `rate_limiting::remote::decode_answer` and `Limiter::decide_remote` (`policy: redis`) on any
//! bytes as the rate-limit service's answer: decoding is total; a decision is always made, and
//! it is one of what `policy: redis` may answer: allowed (with the configured windows' headers,
//! or none when the answer failed and `fault_tolerant` passes it), Kong's refusal with the
//! configured status, or Kong's 500 (an odd answer without `fault_tolerant`, or an error code
//! outside 400-599).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rate_limiting::limiter::Verdict;
use rate_limiting::{remote, Config, Limiter};
use wasmgate_fuzz::Bytes;

const CONFIGS: [&str; 4] = [
    r#"{"second": 3, "minute": 5, "policy": "redis", "redis": {"host": "r"}}"#,
    r#"{"second": 2.5, "window_type": "sliding", "policy": "redis", "redis": {"host": "r"}}"#,
    r#"{"hour": 4, "fault_tolerant": false, "error_code": 503, "policy": "redis", "redis": {"host": "r"}}"#,
    r#"{"day": 1e9, "hide_client_headers": true, "policy": "redis", "redis": {"host": "r"}}"#,
];

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes(data);
    let json = CONFIGS[usize::from(r.byte()) % CONFIGS.len()];
    let now_ms = (r.u64() % 4_000_000_000_000) as i64;
    let answer = r.0;
    let _ = remote::decode_answer(answer);
    let config = Config::parse(json.as_bytes()).expect("a valid config");
    let (hidden, status) = (config.hide_client_headers, config.rejection_status());
    let periods = config.limits.len();
    let limiter = Limiter::new(config, b"fuzz");
    let mut headers = Vec::new();
    let decision = limiter.decide_remote(
        answer,
        now_ms,
        &mut || (None, b"id".to_vec()),
        &mut |name, value| headers.push((name, value.text())),
    );
    match decision.verdict {
        Verdict::Allow { .. } => {
            let expected = if hidden { 0 } else { 2 * periods + 3 };
            assert!(
                headers.is_empty() || headers.len() == expected,
                "{json}: {headers:?}"
            );
        }
        Verdict::Reject { response } => {
            assert!(headers.is_empty());
            assert!(
                Some(response.status) == status || response.status == 500,
                "{json}: {}",
                response.status
            );
        }
    }
});
