//! A platform's provisioned data planes may not reach services on its own host or networks:
//! a tenant's service `http://127.0.0.1:<port>` would reach the platform's services and the
//! other tenants' through the tenant's proxy. The control plane starts them with
//! `--upstream-deny private` unless it is told `--allow-private-upstreams`, as every other
//! control-plane test is (their backends are on loopback).

use std::time::Duration;

use wasmgate_tests::client::{self, Protocol, Request};
use wasmgate_tests::control_plane::{Provisioned, TestControlPlane};
use wasmgate_tests::EchoUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_gateways_do_not_reach_loopback_services_by_default() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start_denying_private_upstreams(dir.path());
    let Provisioned {
        control_plane_id: id,
        proxy,
        ..
    } = cp.provision_serverless("tenant").await;
    cp.route_all_paths_to(&id, "backend", "backend", echo.addr())
        .await;
    // Once the gateway runs the route (Kong's 404 until then), the loopback service is
    // refused: Kong's 502.
    let refused = wasmgate_tests::until(
        "the provisioned gateway answering the route",
        Duration::from_secs(90),
        async || match client::send(proxy, Protocol::Http1, &Request::get("/hello")).await {
            Ok(response) if response.status != 404 => Ok(response),
            Ok(response) => Err(format!("{} {}", response.status, response.text())),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(
        refused.json().expect("JSON"),
        refused.kong_error_json("An invalid response was received from the upstream server")
    );
    assert!(
        echo.arrivals().is_empty(),
        "the loopback service got a request through a provisioned gateway"
    );
}
