//! The example bootstraps in `envoy/` start in a real Envoy and do what their comments say.

use wasmgate_tests::envoy::load_example;
use wasmgate_tests::{EchoUpstream, Envoy, Protocol, Request, RequestBody};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limiting_example_enforces_10_mb() {
    let echo = EchoUpstream::start().await.unwrap();
    let envoy = Envoy::start_bootstrap(&load_example("request-size-limiting.yaml", echo.addr()), 2)
        .await
        .unwrap();
    let addr = envoy.listener("gateway");
    let ok = Request::post(
        "/",
        RequestBody::Filler {
            len: 10 << 20,
            with_length: true,
        },
    );
    let response = wasmgate_tests::client::send(addr, Protocol::Http1, &ok)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let over = Request::post(
        "/",
        RequestBody::Filler {
            len: (10 << 20) + 1,
            with_length: true,
        },
    );
    let response = wasmgate_tests::client::send(addr, Protocol::Http2, &over)
        .await
        .unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
}
