//! The service on a real Redis (Debian's `redis-server`, started here on loopback).

use std::sync::Arc;

use ratelimit::calendar::{self, Period};
use ratelimit::testing::RedisServer;
use ratelimit::{RedisStore, RedisTarget, Service};
use xds_api::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use xds_api::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use xds_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// 2024-02-29T12:00:15.250Z
const T0_MS: i64 = 1_709_208_015_250;

fn service(redis: &RedisServer, timeout_ms: u32) -> Service {
    let mut target = RedisTarget::new("127.0.0.1", redis.port);
    target.timeout_ms = timeout_ms;
    Service::new(RedisStore::new(target).unwrap())
}

fn descriptor(
    identifier: &str,
    unit: Period,
    limit: u32,
    extra: &[(&str, &str)],
) -> RateLimitDescriptor {
    let mut entries = vec![Entry {
        key: "identifier".into(),
        value: identifier.into(),
    }];
    entries.extend(extra.iter().map(|(k, v)| Entry {
        key: (*k).into(),
        value: (*v).into(),
    }));
    RateLimitDescriptor {
        entries,
        limit: Some(RateLimitOverride {
            requests_per_unit: limit,
            unit: calendar::to_proto(unit),
        }),
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

fn remaining(response: &RateLimitResponse) -> Vec<(i32, u32)> {
    response
        .statuses
        .iter()
        .map(|s| (s.code, s.limit_remaining))
        .collect()
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

#[tokio::test]
async fn a_fixed_window_admits_its_limit_and_says_what_remains() {
    let redis = RedisServer::start().unwrap();
    let service = service(&redis, 2000);
    let req = request(
        "fixed",
        vec![
            descriptor("ip=10.0.0.1", Period::Second, 3, &[]),
            descriptor("ip=10.0.0.1", Period::Minute, 5, &[]),
        ],
    );
    let mut seen = Vec::new();
    for i in 0..4 {
        let r = service.decide(&req, T0_MS + i * 10).await.unwrap();
        seen.push((r.overall_code, remaining(&r)));
    }
    assert_eq!(
        seen,
        [
            (OK, vec![(OK, 2), (OK, 4)]),
            (OK, vec![(OK, 1), (OK, 3)]),
            (OK, vec![(OK, 0), (OK, 2)]),
            // Refused by the second, not counted in the minute either.
            (OVER, vec![(OVER, 0), (OK, 2)]),
        ]
    );
    // The next second (calendar-aligned: 12:00:16.000) starts from zero; the minute goes on.
    let r = service.decide(&req, T0_MS + 750).await.unwrap();
    assert_eq!(
        (r.overall_code, remaining(&r)),
        (OK, vec![(OK, 2), (OK, 1)])
    );
    let reset = r.statuses[1].duration_until_reset.unwrap();
    assert_eq!((reset.seconds, reset.nanos), (44, 0));
    // Another identifier, another domain: counters of their own.
    let other = request(
        "fixed",
        vec![descriptor("ip=10.0.0.2", Period::Minute, 5, &[])],
    );
    assert_eq!(
        remaining(&service.decide(&other, T0_MS).await.unwrap()),
        [(OK, 4)]
    );
    let other = request(
        "other",
        vec![descriptor("ip=10.0.0.1", Period::Minute, 5, &[])],
    );
    assert_eq!(
        remaining(&service.decide(&other, T0_MS).await.unwrap()),
        [(OK, 4)]
    );
    // A fractional limit admits its ceiling; the entries that refine the limit do not change
    // the counter.
    let fractional = request(
        "fixed",
        vec![descriptor(
            "ip=10.0.0.1",
            Period::Minute,
            3,
            &[("wasmgate.limit", "2.5")],
        )],
    );
    let r = service.decide(&fractional, T0_MS + 800).await.unwrap();
    assert_eq!((r.overall_code, remaining(&r)), (OVER, vec![(OVER, 0)]));
}

#[tokio::test]
async fn a_sliding_window_weighs_the_previous_one() {
    let redis = RedisServer::start().unwrap();
    let service = service(&redis, 2000);
    let sliding = [("wasmgate.window", "sliding")];
    let req = request("s", vec![descriptor("k", Period::Minute, 10, &sliding)]);
    let minute_start = T0_MS - 15_250;
    for i in 0..8 {
        let r = service
            .decide(&req, minute_start + 1_000 + i)
            .await
            .unwrap();
        assert_eq!(r.overall_code, OK);
    }
    // 45 s into the next minute the previous 8 weigh 8 * 15/60 = 2: 10 - 2 - 1 = 7 left.
    let r = service.decide(&req, minute_start + 105_000).await.unwrap();
    assert_eq!(remaining(&r), [(OK, 7)]);
    // Half-way, 8 * 0.5 = 4: after 1 counted, 10 - 4 - 2 = 4; then 4 more are admitted.
    let half = minute_start + 90_000;
    let mut admitted = 0;
    let fresh = request("s2", vec![descriptor("k", Period::Minute, 10, &sliding)]);
    for i in 0..8 {
        service
            .decide(&fresh, minute_start + 1_000 + i)
            .await
            .unwrap();
    }
    for _ in 0..10 {
        if service.decide(&fresh, half).await.unwrap().overall_code == OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 6);
}

/// Many clients on separate connections, all at once: the script's check-and-count is
/// atomic, so exactly the limit is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_separate_connections_never_over_admit() {
    let redis = RedisServer::start().unwrap();
    let services: Vec<Service> = (0..4).map(|_| service(&redis, 5000)).collect();
    let req = Arc::new(request(
        "c",
        vec![descriptor("shared", Period::Minute, 50, &[])],
    ));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let service = services[i % services.len()].clone();
        let req = Arc::clone(&req);
        tasks.push(tokio::spawn(async move {
            service.decide(&req, T0_MS).await.unwrap().overall_code == OK
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 50);
}

#[tokio::test]
async fn a_redis_down_slow_or_restarted_fails_the_call_and_is_used_again_after() {
    let mut redis = RedisServer::start().unwrap();
    let service = service(&redis, 300);
    let req = request("f", vec![descriptor("k", Period::Minute, 100, &[])]);
    assert_eq!(service.decide(&req, T0_MS).await.unwrap().overall_code, OK);

    // Slow: the process stops answering, its connection stays open.
    redis.pause();
    let failure = service.decide(&req, T0_MS).await.unwrap_err();
    assert_eq!(failure.code, ratelimit::service::UNAVAILABLE);
    assert!(
        failure.message.contains("did not answer within 300 ms"),
        "{}",
        failure.message
    );
    redis.resume();
    let r = service.decide(&req, T0_MS).await.unwrap();
    assert_eq!(r.overall_code, OK);

    // Down: refused connections.
    redis.kill();
    let failure = service.decide(&req, T0_MS).await.unwrap_err();
    assert_eq!(
        failure.code,
        ratelimit::service::UNAVAILABLE,
        "{}",
        failure.message
    );

    // Restarted: empty, and used again by the same service (the script is loaded again).
    redis.restart().unwrap();
    let r = service.decide(&req, T0_MS).await.unwrap();
    assert_eq!(remaining(&r), [(OK, 99)]);
}

#[tokio::test]
async fn descriptors_without_a_limit_count_nothing_and_bad_ones_are_refused() {
    let redis = RedisServer::start().unwrap();
    let service = service(&redis, 2000);
    let mut unlimited = descriptor("k", Period::Second, 1, &[]);
    unlimited.limit = None;
    let r = service
        .decide(&request("d", vec![unlimited]), T0_MS)
        .await
        .unwrap();
    assert_eq!((r.overall_code, remaining(&r)), (OK, vec![(OK, 0)]));
    assert!(r.statuses[0].current_limit.is_none());
    let mut unknown = descriptor("k", Period::Second, 1, &[]);
    unknown.limit.as_mut().unwrap().unit = 0;
    let failure = service
        .decide(&request("d", vec![unknown]), T0_MS)
        .await
        .unwrap_err();
    assert_eq!(failure.code, ratelimit::service::INVALID_ARGUMENT);
    let bad = descriptor("k", Period::Second, 1, &[("wasmgate.limit", "-1")]);
    assert!(service
        .decide(&request("d", vec![bad]), T0_MS)
        .await
        .is_err());
}

/// A TLS-only Redis whose self-signed certificate names `name` only, and that certificate.
fn tls_redis(name: &str) -> (RedisServer, String) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    (RedisServer::start_tls(&cert, &key).unwrap(), cert)
}

/// A service counting in the Redis at `host:port`, with Kong's `(ssl, ssl_verify)`, the CAs
/// it trusts and `server_name`.
fn tls_service(
    host: &str,
    port: u16,
    (ssl, ssl_verify): (bool, bool),
    ca: Option<&str>,
    server_name: Option<&str>,
) -> Service {
    let mut target = RedisTarget::new(host, port);
    target.ssl = ssl;
    target.ssl_verify = ssl_verify;
    target.ca_pem = ca.map(|c| c.as_bytes().to_vec());
    target.server_name = server_name.map(str::to_owned);
    target.timeout_ms = 2000;
    Service::new(RedisStore::new(target).unwrap())
}

/// Kong's `ssl`: TLS to Redis; the certificate is checked with `ssl_verify` only, against the
/// data plane's CAs (`ca_pem`) or the Web PKI roots, which do not know a private CA.
#[tokio::test]
async fn a_tls_redis_is_used_with_ssl_and_its_certificate_checked_with_ssl_verify() {
    let (redis, cert) = tls_redis("localhost");
    let req = request("tls", vec![descriptor("k", Period::Minute, 10, &[])]);
    let service = |ssl: bool, ssl_verify: bool, ca: Option<&str>| {
        tls_service("localhost", redis.port, (ssl, ssl_verify), ca, None)
    };
    // Unverified, then verified against its CA: both count in the same Redis.
    let r = service(true, false, None)
        .decide(&req, T0_MS)
        .await
        .unwrap();
    assert_eq!(remaining(&r), [(OK, 9)]);
    let r = service(true, true, Some(&cert))
        .decide(&req, T0_MS)
        .await
        .unwrap();
    assert_eq!(remaining(&r), [(OK, 8)]);
    // Verified against the Web PKI: refused; and cleartext to a TLS port gets no answer.
    let failure = service(true, true, None)
        .decide(&req, T0_MS)
        .await
        .unwrap_err();
    assert_eq!(
        failure.code,
        ratelimit::service::UNAVAILABLE,
        "{}",
        failure.message
    );
    let failure = service(false, false, None)
        .decide(&req, T0_MS)
        .await
        .unwrap_err();
    assert_eq!(
        failure.code,
        ratelimit::service::UNAVAILABLE,
        "{}",
        failure.message
    );
}

/// Kong's `server_name`: the connection goes to the host (here an address), and TLS names the
/// server and checks its certificate for that name; without it the same certificate does not
/// match the host.
#[tokio::test]
async fn a_tls_server_name_other_than_the_host_is_what_the_certificate_is_checked_for() {
    let (redis, cert) = tls_redis("redis.internal");
    let req = request("sni", vec![descriptor("k", Period::Minute, 10, &[])]);
    let service = |server_name: Option<&str>| {
        tls_service(
            "127.0.0.1",
            redis.port,
            (true, true),
            Some(&cert),
            server_name,
        )
    };
    let r = service(Some("redis.internal"))
        .decide(&req, T0_MS)
        .await
        .unwrap();
    assert_eq!(remaining(&r), [(OK, 9)]);
    let failure = service(None).decide(&req, T0_MS).await.unwrap_err();
    assert_eq!(
        failure.code,
        ratelimit::service::UNAVAILABLE,
        "{}",
        failure.message
    );
}

/// Hosts whose clocks disagree by a minute still count in one window: each service counts on
/// Redis's clock (its own moved by Redis's `TIME`), so a minute's limit holds across them.
#[tokio::test]
async fn services_on_skewed_hosts_count_in_the_same_window_on_redis_clock() {
    let redis = RedisServer::start().unwrap();
    // Away from a minute's end, on Redis's clock, so that the requests below share a minute.
    let redis_secs = |r: &RedisServer| {
        let mut reply = String::new();
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
        s.write_all(b"TIME\r\n").unwrap();
        let mut reader = BufReader::new(s);
        for _ in 0..3 {
            reply.clear();
            reader.read_line(&mut reply).unwrap();
        }
        reply.trim().parse::<i64>().unwrap()
    };
    let into_minute = redis_secs(&redis) % 60;
    if into_minute >= 57 {
        tokio::time::sleep(std::time::Duration::from_secs((61 - into_minute) as u64)).await;
    }
    let skewed = |skew_ms: i64| {
        let clock: ratelimit::store::Clock =
            Arc::new(move || ratelimit::service::now_ms() + skew_ms);
        Service::new(
            RedisStore::with_clock(RedisTarget::new("127.0.0.1", redis.port), clock).unwrap(),
        )
    };
    let (ahead, behind) = (skewed(40_000), skewed(-20_000));
    let req = request("skew", vec![descriptor("k", Period::Minute, 5, &[])]);
    let mut admitted = 0;
    for i in 0..10 {
        let service = if i % 2 == 0 { &ahead } else { &behind };
        if service.decide_now(&req).await.unwrap().overall_code == OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}
