//! The rate-limiting module's side of the protocol against this crate's: its hand-written
//! protobuf against prost's, its cluster names against the service's, and its decisions with
//! `policy: redis` against its decisions with `policy: local`, request by request, on a real
//! Redis.

use prost::Message;
use rate_limiting::limiter::{Decision, RequestInfo, Verdict};
use rate_limiting::store::memory::MemoryStore;
use rate_limiting::{remote, Config, Limiter};
use ratelimit::testing::RedisServer;
use ratelimit::{RedisStore, RedisTarget, Service};
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use xds_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// 2024-02-29T12:00:15.250Z
const T0_MS: i64 = 1_709_208_015_250;

fn limiter(json: &str) -> Limiter {
    Limiter::new(Config::parse(json.as_bytes()).unwrap(), b"plugin-1")
}

fn peer(address: &[u8]) -> RequestInfo<'_> {
    RequestInfo {
        source_address: Some(address),
        request_id: b"req-1",
        ..Default::default()
    }
}

#[test]
fn the_modules_request_is_what_prost_reads() {
    let l = limiter(
        r#"{"second": 2.5, "hour": 100, "window_type": "sliding", "limit_by": "header", "header_name": "x-key"}"#,
    );
    let request = RequestInfo {
        header: Some(b"team\xffa"),
        ..peer(b"10.0.0.1:5")
    };
    let decoded = RateLimitRequest::decode(l.remote_request(&request).as_slice()).unwrap();
    assert_eq!(decoded.domain, "rate-limiting|plugin-1");
    assert_eq!(decoded.hits_addend, 0);
    type Described = (Vec<(String, String)>, u32, i32);
    let described: Vec<Described> = decoded
        .descriptors
        .iter()
        .map(|d| {
            let limit = d.limit.unwrap();
            (
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                limit.requests_per_unit,
                limit.unit,
            )
        })
        .collect();
    let entry = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        described,
        [
            (
                vec![
                    entry("header.hex", "7465616dff61"),
                    entry("wasmgate.limit", "2.5"),
                    entry("wasmgate.window", "sliding"),
                ],
                3,
                1
            ),
            (
                vec![
                    entry("header.hex", "7465616dff61"),
                    entry("wasmgate.window", "sliding"),
                ],
                100,
                3
            ),
        ]
    );
    let ip = limiter(r#"{"minute": 7}"#);
    let decoded =
        RateLimitRequest::decode(ip.remote_request(&peer(b"[::1]:80")).as_slice()).unwrap();
    assert_eq!(decoded.descriptors[0].entries[0].key, "ip");
    assert_eq!(decoded.descriptors[0].entries[0].value, "::1");
}

#[test]
fn prosts_answer_is_what_the_module_reads_and_any_bytes_decode_or_fail() {
    let response = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "n".into(),
                    requests_per_unit: 5,
                    unit: 1,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Default::default()),
                quota: None,
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: 300_000,
                ..Default::default()
            },
        ],
        raw_body: b"ignored".to_vec(),
        ..Default::default()
    };
    let bytes = response.encode_to_vec();
    let answer = remote::decode_answer(&bytes).unwrap();
    assert_eq!(answer.overall_code, 2);
    assert_eq!(
        answer.statuses,
        [
            remote::Status {
                code: 2,
                limit_remaining: 0
            },
            remote::Status {
                code: 1,
                limit_remaining: 300_000
            }
        ]
    );
    for cut in 0..bytes.len() {
        // Every prefix decodes to something or fails; nothing panics.
        let _ = remote::decode_answer(&bytes[..cut]);
    }
    assert!(remote::decode_answer(&[0x0b]).is_err());
    assert!(remote::decode_answer(&[0x12, 0x05, 0x08]).is_err());
}

#[test]
fn the_module_calls_the_cluster_the_service_is_served_under() {
    for json in [
        r#"{"second": 1, "policy": "redis", "redis": {"host": "cache"}}"#,
        r#"{"second": 1, "policy": "redis", "redis": {"host": "cache", "port": 6380, "database": 4, "username": "u", "password": "p"}}"#,
        r#"{"second": 1, "policy": "redis", "redis_host": "old", "redis": {"host": "new", "ssl": true}}"#,
        r#"{"second": 1, "policy": "redis", "redis": {"host": "h", "ssl": true, "ssl_verify": true, "server_name": "h"}}"#,
    ] {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let module = Config::parse(json.as_bytes()).unwrap().redis.unwrap();
        let service = RedisTarget::from_kong_config(&value).unwrap();
        assert_eq!(module.cluster_name(), service.cluster_name(), "{json}");
        assert_eq!(
            (module.host.as_str(), module.port, module.database),
            (service.host.as_str(), service.port, service.database)
        );
    }
}

/// What a decision shows the client: allowed with these headers, or this response.
fn shown(decision: Decision, emitted: Vec<(String, String)>) -> Verdict {
    match decision.verdict {
        Verdict::Allow { headers } if headers.is_empty() => Verdict::Allow { headers: emitted },
        other => other,
    }
}

/// The same requests at the same times through `local` (the module's shared-data store) and
/// through the service on Redis: the same verdicts, headers and bodies, for fixed and sliding
/// windows, fractional limits, several periods and hidden headers.
#[tokio::test]
async fn redis_decides_and_answers_as_local_does() {
    let redis = RedisServer::start().unwrap();
    let service = Service::new(RedisStore::new(RedisTarget::new("127.0.0.1", redis.port)).unwrap());
    let configs = [
        r#"{"second": 3, "minute": 5}"#,
        r#"{"second": 2.5, "hour": 4}"#,
        r#"{"minute": 4, "window_type": "sliding"}"#,
        r#"{"second": 1.5, "minute": 6.5, "window_type": "sliding"}"#,
        r#"{"second": 2, "hide_client_headers": true, "error_code": 503, "error_message": "slow"}"#,
    ];
    // Milliseconds after T0: bursts within a second, the next second, the next minute (for
    // the sliding windows' previous window) and a little into it.
    let times = [
        0, 1, 2, 3, 4, 5, 760, 770, 780, 44_760, 44_800, 60_000, 60_010, 75_000, 75_001, 75_002,
    ];
    let mut compared = 0;
    for (i, json) in configs.iter().enumerate() {
        let local = limiter(json);
        let remote = Limiter::new(
            Config::parse(json.as_bytes()).unwrap(),
            format!("cfg-{i}").as_bytes(),
        );
        let store = MemoryStore::default();
        let request = RequestInfo {
            accept: Some(b"application/json"),
            ..peer(b"10.9.8.7:1234")
        };
        for &dt in &times {
            let now = T0_MS + dt;
            let expected = local.decide(&store, &[3; 16], &request, &mut || now);
            let message = remote.remote_request(&request);
            let decoded = RateLimitRequest::decode(message.as_slice()).unwrap();
            let answer = service.decide(&decoded, now).await.unwrap().encode_to_vec();
            let mut emitted = Vec::new();
            let got = remote.decide_remote(
                &answer,
                now,
                &mut || (Some(b"application/json".to_vec()), b"req-1".to_vec()),
                &mut |name, value| emitted.push((name.to_owned(), value.text())),
            );
            assert_eq!(got.error, expected.error, "{json} at +{dt} ms");
            assert_eq!(shown(got, emitted), expected.verdict, "{json} at +{dt} ms");
            compared += 1;
        }
    }
    assert_eq!(compared, configs.len() * times.len());
}

/// A service that fails follows `fault_tolerant`: the request passes without headers, or
/// gets Kong's 500; an answer that does not match the periods fails the same way.
#[test]
fn a_failed_or_odd_answer_follows_fault_tolerant() {
    let tolerant = limiter(r#"{"second": 1}"#);
    let strict = limiter(r#"{"second": 1, "fault_tolerant": false}"#);
    let mut reply = || (None, b"req-1".to_vec());
    let odd = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![],
        ..Default::default()
    }
    .encode_to_vec();
    for answer in [odd.as_slice(), b"\xff"] {
        let d = tolerant.decide_remote(answer, T0_MS, &mut reply, &mut |_, _| panic!("no headers"));
        assert_eq!(d.verdict, Verdict::Allow { headers: vec![] });
        assert!(d
            .error
            .unwrap()
            .starts_with("failed to get usage: rate-limit service"));
        let d = strict.decide_remote(answer, T0_MS, &mut reply, &mut |_, _| panic!("no headers"));
        match d.verdict {
            Verdict::Reject { response } => assert_eq!(response.status, 500),
            other => panic!("{other:?}"),
        }
    }
}
