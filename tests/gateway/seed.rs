//! The seed's gateway (`gateway/seed.kong.yaml`, what `cargo xtask run` starts) does what
//! the seed promises: 10 MB request size limit, 100 requests per second for the gateway, and a
//! backend secret no client can replace.

use std::time::{Duration, SystemTime};

use gateway::Gateway;
use wasmgate_tests::client::{send, Connection};
use wasmgate_tests::seed::assert_secret_injected_and_rate_limited;
use wasmgate_tests::windows::{check_fixed_window, epoch_seconds, Decision};
use wasmgate_tests::{paths, EchoUpstream, Protocol, Request, RequestBody};

const TOKEN: &str = "seed-test-token";

fn start(echo: &EchoUpstream) -> Gateway {
    let text = std::fs::read_to_string(paths::workspace_root().join("gateway/seed.kong.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:8080", &format!("http://{}", echo.addr()));
    let mut options = wasmgate_tests::gateway::options();
    options.runtime.env_values = vec![("BACKEND_TOKEN".into(), TOKEN.into())];
    wasmgate_tests::gateway::start_with(options, &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_gateway_injects_the_secret_and_limits_size() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&echo);
    for protocol in Protocol::ALL {
        assert_secret_injected_and_rate_limited(gateway.addr(), protocol, TOKEN).await;
    }
    // The admin API exports the gateway's metrics and the modules' own.
    let admin = gateway.admin_addr().unwrap();
    let request = Request::get("/metrics").header("host", &admin.to_string());
    let metrics = send(admin, Protocol::Http1, &request).await.unwrap().text();
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

/// The seed's 100 requests a second, judged by the bounds the clients recorded around each
/// decision (`windows::check_fixed_window`): never more than 100 in a second, and exactly 100
/// in every second that refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_gateway_admits_exactly_100_requests_per_second() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&echo);
    let addr = gateway.addr();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr, Protocol::Http1).await.unwrap();
            let mut decisions = Vec::new();
            let until = std::time::Instant::now() + Duration::from_millis(3500);
            while std::time::Instant::now() < until {
                let sent = epoch_seconds(SystemTime::now());
                let status = connection
                    .send(&Request::get("/burst"))
                    .await
                    .map(|r| r.status)
                    .unwrap_or(0);
                let answered = epoch_seconds(SystemTime::now());
                assert!(status == 200 || status == 429, "status {status}");
                decisions.push(Decision {
                    key: "gateway".into(),
                    sent,
                    answered,
                    admitted: status == 200,
                });
            }
            decisions
        }));
    }
    let mut decisions = Vec::new();
    for client in clients {
        decisions.extend(client.await.unwrap());
    }
    let check = check_fixed_window(&decisions, 100);
    assert!(check.failures.is_empty(), "{:?}", check.failures);
    assert!(
        check.exact_seconds >= 1,
        "no second spent its budget: {:?}",
        check.admitted
    );
    assert_eq!(
        echo.record().whole,
        decisions.iter().filter(|d| d.admitted).count(),
        "every 200 reached the backend, no 429 did"
    );
}
