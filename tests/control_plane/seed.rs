//! The seed's flow end to end, on localhost, through the API only: create a serverless
//! control plane, provision a data plane (`PUT /v3/cloud-gateways/configurations` → a real
//! `gateway` process the control plane supervises), attach a request-transformer to a
//! service, and proxy through it and a real Envoy, a self-managed data plane that follows a
//! control plane of its own kept in step by declarative export (a serverless control plane
//! does not mix data plane types). Then the platform limits, a live change, a crashed data
//! plane, a control plane restart and outage, and the removal of the configuration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmgate_tests::client::{self, Protocol, Request, RequestBody};
use wasmgate_tests::control_plane::TestControlPlane;
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy};

/// What the backend saw as `Authorization` for a GET through `proxy`, if the request reached it.
async fn authorization_seen(proxy: SocketAddr) -> Option<String> {
    let response = client::send(proxy, Protocol::Http1, &Request::get("/hello"))
        .await
        .ok()?;
    if response.status != 200 {
        return None;
    }
    let report: EchoReport = serde_json::from_slice(&response.body).ok()?;
    report.header("authorization").map(str::to_owned)
}

/// Polls until the backend sees `expected` through `proxy`; returns how long it took.
async fn until_seen(proxy: SocketAddr, expected: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let what = format!("{proxy} showing Authorization: {expected}");
    wasmgate_tests::until(&what, within, async || {
        match authorization_seen(proxy).await {
            Some(seen) if seen == expected => Ok(()),
            seen => Err(format!("sees {seen:?}")),
        }
    })
    .await;
    started.elapsed()
}

fn proxy_of(configuration: &Value) -> SocketAddr {
    let url = configuration["dataplane_groups"][0]["proxy_url"]
        .as_str()
        .expect("proxy_url");
    url.trim_start_matches("http://")
        .parse()
        .expect("proxy address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_flow_on_a_provisioned_gateway_and_envoy() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cp = TestControlPlane::start(dir.path());

    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({
                "name": "serverless-gateway-control-plane",
                "description": "A test control plane for Serverless Gateways.",
                "cluster_type": "CLUSTER_TYPE_SERVERLESS_V1",
            })),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let configuration = cp
        .expect(
            201,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&json!({
                "control_plane_id": id,
                "control_plane_geo": "us",
                "dataplane_groups": [{ "region": "us", "provider": "aws" }],
                "kind": "serverless.v1",
            })),
        )
        .await;
    let configuration_id = configuration["id"].as_str().expect("id").to_owned();
    let gateway = proxy_of(&configuration);
    let group = configuration["dataplane_groups"][0]["id"]
        .as_str()
        .expect("group id")
        .to_owned();

    // Konnect: "Control planes that use Serverless Gateways can't mix types of data planes"
    // (review D21). The Envoy follows a control plane of its own.
    let envoy_listen = wasmgate_tests::free_port();
    let envoy_node = json!({ "node_id": "envoy-1", "listen": envoy_listen.to_string() });
    cp.expect(
        400,
        "POST",
        &format!("/v2/control-planes/{id}/envoy-bootstrap"),
        Some(&envoy_node),
    )
    .await;
    let self_managed = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "self-managed", "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE" })),
        )
        .await;
    let self_managed = self_managed["id"].as_str().expect("id").to_owned();
    let bootstrap = cp
        .expect(
            201,
            "POST",
            &format!("/v2/control-planes/{self_managed}/envoy-bootstrap"),
            Some(&envoy_node),
        )
        .await;
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.expect("Envoy");

    cp.route_all_paths_to(&id, "backend", "backend", echo.addr())
        .await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    let plugin = cp
        .expect(
            201,
            "POST",
            &format!("{base}/services/backend/plugins"),
            Some(&json!({ "name": "request-transformer", "config": { "add": { "headers": ["Authorization:Bearer s3cr3t"] } } })),
        )
        .await;
    let plugin_id = plugin["id"].as_str().expect("id").to_owned();
    mirror(&cp, &id, &self_managed).await;

    // Both data planes proxy with the secret (the gateway may still be starting up).
    until_seen(gateway, "Bearer s3cr3t", Duration::from_secs(90)).await;
    until_seen(envoy_listen, "Bearer s3cr3t", Duration::from_secs(30)).await;
    // Serving the config and the supervisor's record of it are two events: the group's
    // state follows within its status poll, not necessarily before the first request.
    let started = Instant::now();
    loop {
        let ready = cp
            .expect(
                200,
                "GET",
                &format!("/v3/cloud-gateways/configurations/{configuration_id}"),
                None,
            )
            .await;
        if ready["dataplane_groups"][0]["state"] == "ready" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for control_plane in [&id, &self_managed] {
        let nodes = cp
            .expect(
                200,
                "GET",
                &format!("/v2/control-planes/{control_plane}/nodes"),
                None,
            )
            .await;
        let nodes = nodes["items"].as_array().expect("items");
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0]["sync_status"], "in_sync", "{}", nodes[0]);
    }

    // The serverless platform limits are the provisioned gateway's platform plugins (the
    // self-managed control plane's Envoy has none: they are no entities to export).
    let big = Request::post(
        "/upload",
        RequestBody::Filler {
            len: 11 << 20,
            with_length: true,
        },
    );
    let response = client::send(gateway, Protocol::Http1, &big)
        .await
        .expect("upload");
    assert_eq!(response.status, 413, "{}", response.text());

    // A change reaches both and is enforced within a second.
    cp.expect(
        200,
        "PATCH",
        &format!("{base}/plugins/{plugin_id}"),
        Some(&json!({ "config": { "add": { "headers": ["Authorization:Bearer rotated"] } } })),
    )
    .await;
    mirror(&cp, &id, &self_managed).await;
    // Bounds against hanging, not latency targets (those are in docs/BENCHMARKS.md).
    let gateway_took = until_seen(gateway, "Bearer rotated", Duration::from_secs(30)).await;
    let envoy_took = until_seen(envoy_listen, "Bearer rotated", Duration::from_secs(30)).await;
    eprintln!("propagation: gateway {gateway_took:?}, Envoy {envoy_took:?}");

    // A provisioned data plane that dies is started again.
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("node-id {group}")])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no gateway process for group {group}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = cp
            .expect(
                200,
                "GET",
                &format!("/v3/cloud-gateways/configurations/{configuration_id}"),
                None,
            )
            .await;
        if state["dataplane_groups"][0]["restarts"].as_u64() >= Some(1)
            && authorization_seen(gateway).await.as_deref() == Some("Bearer rotated")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was not restarted: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The control plane goes away: Envoy and the provisioned gateway keep serving what they
    // had (the gateway's process outlives the control plane's, which adopts it when it
    // starts again). It comes back on the same data: its data planes reconnect and take the
    // next change.
    cp.stop();
    for data_plane in [gateway, envoy_listen] {
        assert_eq!(
            authorization_seen(data_plane).await.as_deref(),
            Some("Bearer rotated"),
            "{data_plane} while the control plane is stopped"
        );
    }
    cp.start_again();
    until_seen(gateway, "Bearer rotated", Duration::from_secs(30)).await;
    cp.expect(
        200,
        "PATCH",
        &format!("{base}/plugins/{plugin_id}"),
        Some(
            &json!({ "config": { "add": { "headers": ["Authorization:Bearer after-restart"] } } }),
        ),
    )
    .await;
    mirror(&cp, &id, &self_managed).await;
    until_seen(gateway, "Bearer after-restart", Duration::from_secs(30)).await;
    until_seen(
        envoy_listen,
        "Bearer after-restart",
        Duration::from_secs(30),
    )
    .await;

    // Removing the configuration stops its data plane.
    cp.expect(
        204,
        "DELETE",
        &format!("/v3/cloud-gateways/configurations/{configuration_id}"),
        None,
    )
    .await;
    until_closed(gateway, "its configuration was removed").await;
    drop(envoy);
}

/// Copies control plane `from`'s configuration to `to` (its declarative export, imported), as
/// a user keeps a self-managed control plane in step with a serverless one.
async fn mirror(cp: &TestControlPlane, from: &str, to: &str) {
    let export = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{from}/declarative-config"),
            None,
        )
        .await;
    cp.expect(
        201,
        "POST",
        &format!("/v2/control-planes/{to}/declarative-config"),
        Some(&export),
    )
    .await;
}

/// Waits until nothing listens on `addr` any more: the provisioned gateway has stopped.
async fn until_closed(addr: std::net::SocketAddr, why: &str) {
    // A bound against hanging, not a latency target.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{why}, but the gateway still listens on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
