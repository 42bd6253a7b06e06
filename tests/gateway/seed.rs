//! The seed's gateway (`host/gateway/seed.kong.yaml`, what `cargo xtask run` starts) does what
//! the seed promises: 10 MB request size limit, 100 requests per second for the gateway, and a
//! backend secret no client can replace.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::{Gateway, GatewayOptions};
use wasmgate_tests::client::{send, Connection};
use wasmgate_tests::{paths, EchoReport, EchoUpstream, Protocol, Request, RequestBody};

const TOKEN: &str = "seed-test-token";

fn start(echo: &EchoUpstream) -> Gateway {
    let text = std::fs::read_to_string(paths::workspace_root().join("host/gateway/seed.kong.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", &format!("http://{}", echo.addr()));
    let options = GatewayOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        workers: 2,
        access_log: false,
        runtime: gateway::filters::RuntimeOptions {
            modules_dir: paths::wasm_dir(),
            env_values: vec![("BACKEND_TOKEN".into(), TOKEN.into())],
            ..Default::default()
        },
        ..GatewayOptions::default()
    };
    Gateway::start(options, &text).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_gateway_injects_the_secret_and_limits_size() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&echo);
    for protocol in Protocol::ALL {
        let response = send(
            gateway.addr(),
            protocol,
            &Request::get("/hello").header("authorization", "Bearer client"),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            seen.header_values("authorization"),
            vec![format!("Bearer {TOKEN}").as_str()]
        );
        assert!(response
            .header("x-ratelimit-limit-second")
            .is_some_and(|v| v == "100"));
    }
    // The admin API exports the gateway's metrics and the modules' own.
    let admin = gateway.admin_addr().unwrap();
    let metrics = send(admin, Protocol::Http1, &Request::get("/metrics"))
        .await
        .unwrap()
        .text();
    for line in [
        "wasmgate_requests_total{route=\"backend\",service=\"backend\",status=\"200\"} 2",
        "wasmgate_filter_outcomes_total{filter=\"rate-limiting\",outcome=\"ran\"} 2",
        "wasm_wasmgate_plugin_request_transformer_failures 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let at_limit = Request::post(
        "/up",
        RequestBody::Filler {
            len: 10 << 20,
            with_length: true,
        },
    );
    assert_eq!(
        send(gateway.addr(), Protocol::Http1, &at_limit)
            .await
            .unwrap()
            .status,
        200
    );
    let over = Request::post(
        "/up",
        RequestBody::Filler {
            len: (10 << 20) + 1,
            with_length: false,
        },
    );
    let response = send(gateway.addr(), Protocol::Http2, &over).await.unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json().unwrap(),
        response.kong_error_json("Request size limit exceeded")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_gateway_admits_at_most_100_requests_per_second() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&echo);
    let addr = gateway.addr();
    // Start just after a second boundary, then offer 3× the limit for 2.5 s from 6 connections.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(
        1000 - u64::from(now.subsec_millis()) + 20,
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr, Protocol::Http1).await.unwrap();
            let mut statuses = Vec::new();
            let until = std::time::Instant::now() + Duration::from_millis(2500);
            while std::time::Instant::now() < until {
                statuses.push(
                    connection
                        .send(&Request::get("/burst"))
                        .await
                        .map(|r| r.status)
                        .unwrap_or(0),
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    let rejected = statuses.iter().filter(|s| **s == 429).count();
    assert!(rejected > 0, "an offered load of ~300 req/s must meet 429s");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let mut per_second = std::collections::BTreeMap::new();
    for arrival in echo.arrivals() {
        let second = arrival.at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        *per_second.entry(second).or_insert(0u32) += 1;
    }
    for (second, admitted) in per_second {
        assert!(
            admitted <= 100,
            "second {second}: {admitted} requests reached the backend"
        );
    }
}
