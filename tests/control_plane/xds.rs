//! Stock Envoy configured by the control plane over ADS: a real control plane (API, SQLite,
//! mTLS xDS endpoint), a real Envoy started from `control_plane::xds::bootstrap`, real
//! traffic to the echo upstream. Plugins arrive by ECDS and change without a restart; a
//! version Envoy refuses shows as `failed` with Envoy's words while the old config keeps
//! serving; an unpinned certificate gets nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::xds::{bootstrap, BootstrapOptions};
use serde_json::{json, Value};
use wasmgate_tests::client::{send, Connection};
use wasmgate_tests::control_plane::TestControlPlane;
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy, Protocol, Request, RequestBody};

const DEADLINE: Duration = Duration::from_secs(30);

/// A control plane with one service (the echo upstream), routes `/api` and `/open`,
/// request-transformer on the service and request-size-limiting on `/api` only; returns its
/// id and the transformer's id.
async fn configure(cp: &TestControlPlane, echo: SocketAddr) -> (String, String) {
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({"name": "envoy-cp", "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE"})),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let base = format!("/v2/control-planes/{id}/core-entities");
    cp.add_service(
        &id,
        &json!({"name": "echo", "url": format!("http://{echo}")}),
    )
    .await;
    for (name, path) in [("api", "/api"), ("open", "/open")] {
        cp.expect(
            201,
            "POST",
            &format!("{base}/services/echo/routes"),
            Some(&json!({"name": name, "paths": [path], "strip_path": false})),
        )
        .await;
    }
    let transformer = cp
        .expect(
            201,
            "POST",
            &format!("{base}/services/echo/plugins"),
            Some(&json!({"name": "request-transformer", "config": {"add": {"headers": ["x-xds:0"]}}})),
        )
        .await;
    cp.expect(
        201,
        "POST",
        &format!("{base}/routes/api/plugins"),
        Some(&json!({"name": "request-size-limiting", "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"}})),
    )
    .await;
    (id, transformer["id"].as_str().unwrap().to_owned())
}

async fn pin(cp: &TestControlPlane, id: &str, name: &str) -> (String, String) {
    let (cert, key) = control_plane::pki::client_certificate(name).unwrap();
    cp.pin_certificate(id, &cert).await;
    (cert, key)
}

fn envoy_bootstrap(
    cp: &TestControlPlane,
    id: &str,
    node: &str,
    (cert_pem, key_pem): (String, String),
    listen: SocketAddr,
) -> Value {
    bootstrap(&BootstrapOptions {
        node_id: node.to_owned(),
        control_plane_id: id.to_owned(),
        xds: cp.endpoints().xds,
        cert_pem,
        key_pem,
        ca_pem: cp.control_plane().state().identity.ca_pem.clone(),
        listen,
        admin: "127.0.0.1:0".parse().unwrap(),
        env_allow: Vec::new(),
        ratelimit: None,
        tls_listen: None,
    })
}

/// What the echo upstream saw of a GET through Envoy, or Envoy's own answer.
async fn get(listen: SocketAddr, path: &str) -> Result<EchoReport, String> {
    let response = send(listen, Protocol::Http1, &Request::get(path)).await?;
    if response.status != 200 {
        return Err(format!("{}: {}", response.status, response.text()));
    }
    serde_json::from_slice(&response.body).map_err(|e| format!("{e}: {}", response.text()))
}

/// Polls until the `x-xds` header the upstream sees is `value`; returns when it was.
async fn wait_for_header(listen: SocketAddr, value: &str, deadline: Duration) -> Instant {
    let what = format!("x-xds becoming {value:?}");
    wasmgate_tests::until(&what, deadline, async || match get(listen, "/api").await {
        Ok(report) if report.header("x-xds") == Some(value) => Ok(Instant::now()),
        Ok(report) => Err(format!("x-xds: {:?}", report.header("x-xds"))),
        Err(e) => Err(e),
    })
    .await
}

async fn node(cp: &TestControlPlane, id: &str, node: &str) -> Option<Value> {
    let nodes = cp
        .expect(200, "GET", &format!("/v2/control-planes/{id}/nodes"), None)
        .await;
    nodes["items"]
        .as_array()
        .or_else(|| nodes["data"].as_array())
        .into_iter()
        .flatten()
        .find(|n| n["id"] == node)
        .cloned()
}

/// Polls `/nodes` until `check` holds for the node; returns it.
async fn wait_for_node(
    cp: &TestControlPlane,
    id: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let what = format!("node {name} getting {what}");
    wasmgate_tests::until(&what, DEADLINE, async || match node(cp, id, name).await {
        Some(node) if check(&node) => Ok(node),
        last => Err(format!("{last:?}")),
    })
    .await
}

async fn expected(cp: &TestControlPlane, id: &str) -> (String, u64) {
    let body = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/expected-config-hash"),
            None,
        )
        .await;
    (
        body["expected_hash"].as_str().unwrap().to_owned(),
        body["config_version"].as_u64().unwrap(),
    )
}

async fn in_sync(cp: &TestControlPlane, id: &str, name: &str) -> Value {
    let (hash, version) = expected(cp, id).await;
    wait_for_node(cp, id, name, "in_sync", |n| {
        n["sync_status"] == "in_sync"
            && n["config_hash"] == hash.as_str()
            && n["config_version"] == version
    })
    .await
}

async fn patch_header(cp: &TestControlPlane, id: &str, plugin: &str, value: &str) {
    cp.expect(
        200,
        "PATCH",
        &format!("/v2/control-planes/{id}/core-entities/plugins/{plugin}"),
        Some(&json!({"config": {"add": {"headers": [format!("x-xds:{value}")]}}})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_control_plane_over_ads() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, transformer) = configure(&cp, echo.addr()).await;
    let cert = pin(&cp, &id, "envoy-1").await;
    let listen = wasmgate_tests::free_port();
    let envoy = Envoy::start_bootstrap(&envoy_bootstrap(&cp, &id, "envoy-1", cert, listen), 2)
        .await
        .unwrap();
    let pid = envoy.pid();

    // Both plugins run, each where Kong scopes it (ECDS filters disabled per route).
    wait_for_header(listen, "0", DEADLINE).await;
    let big = Request::post("/api", RequestBody::Bytes(vec![b'a'; 2048]));
    let refused = send(listen, Protocol::Http1, &big).await.unwrap();
    assert_eq!(refused.status, 413, "{}", refused.text());
    let mut open = big.clone();
    open.path = "/open".into();
    let passed = send(listen, Protocol::Http1, &open).await.unwrap();
    assert_eq!(passed.status, 200, "{}", passed.text());
    let report: EchoReport = serde_json::from_slice(&passed.body).unwrap();
    assert_eq!(report.header("x-xds"), Some("0"));
    assert_eq!(report.body_len, 2048);

    let node = in_sync(&cp, &id, "envoy-1").await;
    assert_eq!(node["type"], "envoy");
    assert_eq!(node["connected"], true);
    assert!(
        node["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "Envoy's version: {node}"
    );

    // A plugin change through the API is enforced by the same process.
    let start = Instant::now();
    patch_header(&cp, &id, &transformer, "1").await;
    let seen = wait_for_header(listen, "1", DEADLINE).await;
    println!("first change enforced after {:?}", seen - start);
    assert_eq!(envoy.pid(), pid);
    in_sync(&cp, &id, "envoy-1").await;

    // Propagation latency: API call → enforced at Envoy, 20 changes.
    let mut latencies = Vec::new();
    let mut api = Vec::new();
    for n in 2..22 {
        let start = Instant::now();
        patch_header(&cp, &id, &transformer, &n.to_string()).await;
        api.push(start.elapsed());
        let seen = wait_for_header(listen, &n.to_string(), DEADLINE).await;
        latencies.push(seen - start);
    }
    latencies.sort();
    api.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "xDS propagation, API call → enforced at Envoy, {} changes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99,
        latencies[latencies.len() - 1]
    );
    println!("of which the API call itself: p50 {:?}", api[api.len() / 2]);

    // A route the model accepts but Envoy refuses: RE2's program size limit.
    let alternatives: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    let regex = format!("~/({}){{40}}", alternatives.join("|"));
    cp.expect(
        201,
        "POST",
        &format!("/v2/control-planes/{id}/core-entities/services/echo/routes"),
        Some(&json!({"name": "huge", "paths": [regex]})),
    )
    .await;
    let (refused_hash, refused_version) = expected(&cp, &id).await;
    let failed = wait_for_node(&cp, &id, "envoy-1", "failed", |n| {
        n["sync_status"] == "failed"
    })
    .await;
    let message = failed["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("program size"), "Envoy's reason: {failed}");
    assert_eq!(failed["last_error"]["config_hash"], refused_hash.as_str());
    assert_eq!(failed["last_error"]["config_version"], refused_version);
    // The old routes and plugins keep serving.
    let report = get(listen, "/api").await.unwrap();
    assert_eq!(report.header("x-xds"), Some("21"));

    // A plugin change on top: the filter changes, the refused routes are not sent again, and
    // the node stays failed for the same reason at the new version.
    patch_header(&cp, &id, &transformer, "after-refusal").await;
    wait_for_header(listen, "after-refusal", DEADLINE).await;
    let (hash, version) = expected(&cp, &id).await;
    let failed = wait_for_node(&cp, &id, "envoy-1", "failed at the new version", |n| {
        n["sync_status"] == "failed" && n["last_error"]["config_version"] == version
    })
    .await;
    assert_eq!(failed["last_error"]["config_hash"], hash.as_str());
    assert_eq!(failed["last_error"]["message"], message);
    assert_eq!(
        envoy
            .stat("http.wasmgate.rds.wasmgate.update_rejected")
            .await,
        Some(1),
        "the refused route configuration was sent once"
    );

    // Removing the route brings the node back in sync.
    cp.expect(
        204,
        "DELETE",
        &format!("/v2/control-planes/{id}/core-entities/routes/huge"),
        None,
    )
    .await;
    let node = in_sync(&cp, &id, "envoy-1").await;
    assert_eq!(node["connected"], true);
    assert_eq!(
        get(listen, "/api").await.unwrap().header("x-xds"),
        Some("after-refusal")
    );
    assert_eq!(envoy.pid(), pid);
}

fn tls_client(cert_pem: &str, key_pem: &str, ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens TLS to the xDS endpoint and starts HTTP/2; returns the server's first bytes (its
/// SETTINGS frame) or why there are none.
async fn h2_hello(
    xds: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(xds)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // The connection preface and an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed".into());
    }
    Ok(buf[..n].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_certificate_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, _) = configure(&cp, echo.addr()).await;
    let ca = cp.control_plane().state().identity.ca_pem.clone();
    let xds = cp.endpoints().xds;

    let (pinned_cert, pinned_key) = pin(&cp, &id, "pinned").await;
    let hello = h2_hello(xds, &tls_client(&pinned_cert, &pinned_key, &ca))
        .await
        .expect("a pinned certificate is served");
    assert_eq!(
        hello.get(3),
        Some(&4),
        "the server's SETTINGS frame: {hello:?}"
    );

    let (cert, key) = control_plane::pki::client_certificate("stranger").unwrap();
    let refused = h2_hello(xds, &tls_client(&cert, &key, &ca)).await;
    assert!(
        refused.is_err(),
        "an unpinned certificate was served: {refused:?}"
    );

    let listen = wasmgate_tests::free_port();
    let mut bootstrap = envoy_bootstrap(&cp, &id, "stranger", (cert, key), listen);
    for source in ["lds_config", "cds_config"] {
        bootstrap["dynamic_resources"][source]["initial_fetch_timeout"] = json!("1s");
    }
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let (_, listeners) = wasmgate_tests::envoy::admin_get(envoy.admin(), "/listeners?format=json")
        .await
        .unwrap();
    assert!(!listeners.contains("wasmgate"), "{listeners}");
    assert!(send(listen, Protocol::Http1, &Request::get("/api"))
        .await
        .is_err());
    assert!(node(&cp, &id, "stranger").await.is_none());
}

/// Konnect: "removing a pinned dataplane certificate would invalidate any dataplanes currently
/// connected to this control plane using this certificate". The stream ends at the unpin, so
/// a change made after it never reaches that Envoy, which keeps serving what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinning_a_certificate_cuts_a_connected_envoy_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, transformer) = configure(&cp, echo.addr()).await;
    let cert = pin(&cp, &id, "envoy-r").await;
    let listen = wasmgate_tests::free_port();
    let _envoy = Envoy::start_bootstrap(&envoy_bootstrap(&cp, &id, "envoy-r", cert, listen), 1)
        .await
        .unwrap();
    wait_for_header(listen, "0", DEADLINE).await;
    in_sync(&cp, &id, "envoy-r").await;

    let pins = format!("/v2/control-planes/{id}/dp-client-certificates");
    let listed = cp.expect(200, "GET", &pins, None).await;
    let pin_id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    cp.expect_response(204, "DELETE", &format!("{pins}/{pin_id}"), None)
        .await;
    patch_header(&cp, &id, &transformer, "after-unpin").await;
    wait_for_node(&cp, &id, "envoy-r", "disconnected", |n| {
        n["connected"] == false
    })
    .await;
    // A change reaches a connected Envoy in milliseconds (envoy_follows_the_control_plane_over_ads).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = get(listen, "/api").await.unwrap();
    assert_eq!(
        report.header("x-xds"),
        Some("0"),
        "a change made after the unpin reached the unpinned Envoy"
    );
}

/// Creates a control plane named `name` for Envoy; returns its id.
async fn create_control_plane(cp: &TestControlPlane, name: &str) -> String {
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({"name": name, "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE"})),
        )
        .await;
    created["id"].as_str().unwrap().to_owned()
}

/// A request-transformer on route `a` only must never reach route `b`'s upstream, also on a
/// keep-alive connection opened before a change of the listener's filters: that connection
/// stays on the old (draining) filter chain, while the routes (RDS) are the new ones. Each
/// change here renames or removes `a`'s filter, so the new routes no longer name the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_scoped_plugin_never_reaches_another_route_across_listener_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo_a = EchoUpstream::start().await.unwrap();
    let echo_b = EchoUpstream::start().await.unwrap();
    let id = create_control_plane(&cp, "scoped").await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    for (name, echo) in [("a", &echo_a), ("b", &echo_b)] {
        cp.add_service(
            &id,
            &json!({"name": name, "url": format!("http://{}", echo.addr())}),
        )
        .await;
        cp.expect(
            201,
            "POST",
            &format!("{base}/services/{name}/routes"),
            Some(&json!({"name": name, "paths": [format!("/{name}")]})),
        )
        .await;
    }
    let secret = "x-secret:for-a-only";
    let transformer = cp
        .expect(
            201,
            "POST",
            &format!("{base}/routes/a/plugins"),
            Some(&json!({"name": "request-transformer", "config": {"add": {"headers": [secret]}}})),
        )
        .await;
    let transformer = transformer["id"].as_str().unwrap().to_owned();
    let cert = pin(&cp, &id, "envoy-scoped").await;
    let listen = wasmgate_tests::free_port();
    let _envoy =
        Envoy::start_bootstrap(&envoy_bootstrap(&cp, &id, "envoy-scoped", cert, listen), 1)
            .await
            .unwrap();
    in_sync(&cp, &id, "envoy-scoped").await;
    wasmgate_tests::until("route a's secret", DEADLINE, async || {
        match get(listen, "/a").await {
            Ok(report) if report.header("x-secret") == Some("for-a-only") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let mut held = Connection::open(listen, Protocol::Http1).await.unwrap();
    let mut on_held = async |path: &str| -> EchoReport {
        let response = held.send(&Request::get(path)).await.unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        response.echo_report()
    };
    assert_eq!(on_held("/a").await.header("x-secret"), Some("for-a-only"));
    assert_eq!(on_held("/b").await.header("x-secret"), None);

    // Renaming the route keeps its filter (named by the plugin's id); then the filter goes.
    let changes = [
        (
            "PATCH",
            format!("{base}/routes/a"),
            Some(json!({"name": "a-renamed"})),
            200,
        ),
        ("DELETE", format!("{base}/plugins/{transformer}"), None, 204),
    ];
    for (method, path, body, status) in changes {
        cp.expect(status, method, &path, body.as_ref()).await;
        in_sync(&cp, &id, "envoy-scoped").await;
        if method == "PATCH" {
            // Before filters were named by plugin id, the rename gave the filter a new name:
            // the connection, left on the draining listener, lost route a's plugin.
            assert_eq!(
                on_held("/a").await.header("x-secret"),
                Some("for-a-only"),
                "renaming route a dropped its plugin on a connection opened before"
            );
        }
        let report = on_held("/b").await;
        assert_eq!(
            report.header("x-secret"),
            None,
            "after {method} {path}, route b's upstream got route a's header on a connection \
             opened before: {report:?}"
        );
        assert_eq!(get(listen, "/b").await.unwrap().header("x-secret"), None);
    }
    let leaked: Vec<_> = echo_b
        .arrivals()
        .into_iter()
        .filter(|a| a.headers.iter().any(|(k, _)| k == "x-secret"))
        .collect();
    assert!(leaked.is_empty(), "route b's upstream saw: {leaked:?}");
}

/// A refusal belongs to the Envoy process that refused: a new process with the same node id
/// (a restart) gets the content its predecessor refused. Here the refusal is transient: the
/// first Envoy cannot bind its listener's port (another socket holds it), so it refuses the
/// listener; once the port is free, a new Envoy with the same node id must get and serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_envoy_process_gets_what_its_predecessor_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, _) = configure(&cp, echo.addr()).await;
    let cert = pin(&cp, &id, "envoy-restarted").await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = blocker.local_addr().unwrap();
    let mut bootstrap = envoy_bootstrap(&cp, &id, "envoy-restarted", cert, listen);
    for source in ["lds_config", "cds_config"] {
        bootstrap["dynamic_resources"][source]["initial_fetch_timeout"] = json!("1s");
    }
    let mut first = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let failed = wait_for_node(&cp, &id, "envoy-restarted", "failed", |n| {
        n["sync_status"] == "failed"
    })
    .await;
    let message = failed["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("127.0.0.1"), "Envoy's reason: {failed}");
    first.stop();
    drop(blocker);

    let _second = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let within = Duration::from_secs(10);
    wait_for_header(listen, "0", within).await;
    in_sync(&cp, &id, "envoy-restarted").await;
}

/// Two Envoys with one node id, as during a hot restart: the old one leaving does not make
/// the node `disconnected` while the new one streams; the last one leaving does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stays_connected_while_any_of_its_streams_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, transformer) = configure(&cp, echo.addr()).await;
    let cert = pin(&cp, &id, "envoy-twice").await;
    let (old_listen, new_listen) = (wasmgate_tests::free_port(), wasmgate_tests::free_port());
    let mut old = Envoy::start_bootstrap(
        &envoy_bootstrap(&cp, &id, "envoy-twice", cert.clone(), old_listen),
        1,
    )
    .await
    .unwrap();
    in_sync(&cp, &id, "envoy-twice").await;
    let mut new = Envoy::start_bootstrap(
        &envoy_bootstrap(&cp, &id, "envoy-twice", cert, new_listen),
        1,
    )
    .await
    .unwrap();
    wait_for_header(new_listen, "0", DEADLINE).await;
    in_sync(&cp, &id, "envoy-twice").await;

    // The old process goes; its stream ends within moments (its sockets close with it).
    old.stop();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let node = node(&cp, &id, "envoy-twice").await.unwrap();
        assert_eq!(
            node["connected"], true,
            "the new Envoy still streams: {node}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    patch_header(&cp, &id, &transformer, "1").await;
    wait_for_header(new_listen, "1", DEADLINE).await;
    in_sync(&cp, &id, "envoy-twice").await;

    new.stop();
    wait_for_node(&cp, &id, "envoy-twice", "disconnected", |n| {
        n["connected"] == false && n["sync_status"] == "disconnected"
    })
    .await;
}

/// A control plane whose service `before` routes every path to `echo`, beside 300 other
/// services and routes: Envoy takes a while to build each new route table, the time a removed
/// cluster would still be named by the routes in force.
async fn many_routes(cp: &TestControlPlane, name: &str, echo: SocketAddr) -> String {
    let id = create_control_plane(cp, name).await;
    let url = format!("http://{echo}");
    let mut services = vec![json!({
        "name": "before",
        "url": url,
        "routes": [{"name": "all", "paths": ["/"]}],
    })];
    services.extend((0..300).map(|i| {
        json!({
            "name": format!("other-{i}"),
            "url": url,
            "routes": [{
                "name": format!("other-{i}"),
                "paths": [format!("~/other/{i}/(?<rest>[a-z]+)$")],
                "hosts": [format!("other-{i}.test")],
            }],
        })
    }));
    cp.expect(
        201,
        "POST",
        &format!("/v2/control-planes/{id}/declarative-config"),
        Some(&json!({"_format_version": "3.0", "services": services})),
    )
    .await;
    id
}

/// Four clients sending `GET /` on keep-alive connections until stopped.
struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<u16>>>,
}

impl Traffic {
    fn start(listen: SocketAddr) -> Traffic {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..4)
            .map(|_| {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    let mut connection = Connection::open(listen, Protocol::Http1).await.unwrap();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match connection.send(&Request::get("/")).await {
                            Ok(response) => statuses.push(response.status),
                            Err(_) => {
                                // A connection Envoy closed (drain): a new one, not a failure.
                                connection =
                                    Connection::open(listen, Protocol::Http1).await.unwrap();
                            }
                        }
                    }
                    statuses
                })
            })
            .collect();
        Traffic { stop, clients }
    }

    /// Stops the clients; insists that every answer was a 200. Returns how many there were.
    async fn stop_all_answered(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut statuses = Vec::new();
        for client in self.clients {
            statuses.extend(client.await.unwrap());
        }
        let failed: Vec<u16> = statuses.iter().copied().filter(|s| *s != 200).collect();
        assert!(
            statuses.len() > 100,
            "too little traffic: {}",
            statuses.len()
        );
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            statuses.len(),
            &failed[..failed.len().min(20)]
        );
        statuses.len()
    }
}

/// Renaming a service renames its cluster. Under steady traffic, Envoy must never route to a
/// cluster it does not have: the new cluster arrives before the routes that name it, and the
/// old one leaves only once the new routes are acknowledged (make-before-break).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_service_under_traffic_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let id = many_routes(&cp, "renamed", echo.addr()).await;
    let cert = pin(&cp, &id, "envoy-renamed").await;
    let listen = wasmgate_tests::free_port();
    let envoy =
        Envoy::start_bootstrap(&envoy_bootstrap(&cp, &id, "envoy-renamed", cert, listen), 2)
            .await
            .unwrap();
    in_sync(&cp, &id, "envoy-renamed").await;
    get(listen, "/").await.unwrap();

    let traffic = Traffic::start(listen);
    let services = format!("/v2/control-planes/{id}/core-entities/services");
    for (from, to) in [("before", "after"), ("after", "again"), ("again", "before")] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cp.expect(
            200,
            "PATCH",
            &format!("{services}/{from}"),
            Some(&json!({"name": to})),
        )
        .await;
        in_sync(&cp, &id, "envoy-renamed").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answered = traffic.stop_all_answered().await;
    println!("{answered} requests across three renames");
    assert_eq!(
        envoy.stat("cluster_manager.active_clusters").await,
        Some(302)
    );
}

/// The same while the Envoy is away: its stream is cut (its certificate unpinned), the service
/// renamed, the certificate pinned again. The Envoy process comes back with the old clusters
/// and routes, and keeps the old cluster until it has the new routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_renamed_while_envoy_was_away_drops_no_request_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let id = many_routes(&cp, "away", echo.addr()).await;
    let (cert, key) = pin(&cp, &id, "envoy-away").await;
    let listen = wasmgate_tests::free_port();
    let bootstrap = envoy_bootstrap(&cp, &id, "envoy-away", (cert.clone(), key), listen);
    let envoy = Envoy::start_bootstrap(&bootstrap, 2).await.unwrap();
    in_sync(&cp, &id, "envoy-away").await;
    get(listen, "/").await.unwrap();

    let traffic = Traffic::start(listen);
    let pins = format!("/v2/control-planes/{id}/dp-client-certificates");
    let listed = cp.expect(200, "GET", &pins, None).await;
    let pin_id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    cp.expect_response(204, "DELETE", &format!("{pins}/{pin_id}"), None)
        .await;
    wait_for_node(&cp, &id, "envoy-away", "disconnected", |n| {
        n["connected"] == false
    })
    .await;
    cp.expect(
        200,
        "PATCH",
        &format!("/v2/control-planes/{id}/core-entities/services/before"),
        Some(&json!({"name": "after"})),
    )
    .await;
    cp.pin_certificate(&id, &cert).await;
    in_sync(&cp, &id, "envoy-away").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answered = traffic.stop_all_answered().await;
    println!("{answered} requests across the reconnection");
    assert_eq!(
        envoy.stat("cluster_manager.active_clusters").await,
        Some(302)
    );
}

/// The `wasmgate-ratelimit` binary beside this test's folder (`target/debug/deps/..`).
fn ratelimit_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target folder")
        .join("wasmgate-ratelimit");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build -p wasmgate-ratelimit (or cargo xtask test)",
        binary.display()
    );
    binary
}

/// rate-limiting's `policy: redis` over ADS: the node's bootstrap names its rate-limit service
/// (`node.metadata.ratelimit`), CDS gives it the cluster the module calls, and the plugin
/// counts in Redis: each answer says one request fewer remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_redis_plugin_counts_in_redis_through_the_nodes_rate_limit_service() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ratelimit::testing::RedisServer::start().unwrap();
    let service_addr = wasmgate_tests::free_port();
    let mut service = std::process::Command::new(ratelimit_binary())
        .args(["--listen", &service_addr.to_string()])
        .args([
            "--redis-host",
            "127.0.0.1",
            "--redis-port",
            &redis.port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, _) = configure(&cp, echo.addr()).await;
    cp.expect(
        201,
        "POST",
        &format!("/v2/control-planes/{id}/core-entities/routes/open/plugins"),
        Some(
            &json!({"name": "rate-limiting", "config": {"hour": 1000, "policy": "redis",
            "redis": {"host": "127.0.0.1", "port": redis.port}}}),
        ),
    )
    .await;
    let (cert_pem, key_pem) = pin(&cp, &id, "envoy-rl").await;
    let listen = wasmgate_tests::free_port();
    let bootstrap = bootstrap(&BootstrapOptions {
        node_id: "envoy-rl".to_owned(),
        control_plane_id: id.clone(),
        xds: cp.endpoints().xds,
        cert_pem,
        key_pem,
        ca_pem: cp.control_plane().state().identity.ca_pem.clone(),
        listen,
        admin: "127.0.0.1:0".parse().unwrap(),
        env_allow: Vec::new(),
        ratelimit: Some(service_addr),
        tls_listen: None,
    });
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let remaining = |response: &wasmgate_tests::client::Response| {
        response
            .header("x-ratelimit-remaining-hour")
            .and_then(|v| v.parse::<u32>().ok())
    };
    let first = wasmgate_tests::until("a counted answer on /open", DEADLINE, async || {
        let response = send(listen, Protocol::Http1, &Request::get("/open")).await?;
        match remaining(&response) {
            Some(left) if response.status == 200 => Ok(left),
            _ => Err(format!("{} {:?}", response.status, response.headers)),
        }
    })
    .await;
    let next = send(listen, Protocol::Http1, &Request::get("/open"))
        .await
        .unwrap();
    assert_eq!(remaining(&next), Some(first - 1), "{:?}", next.headers);
    assert_eq!(next.header("x-ratelimit-limit-hour"), Some("1000"));
    let keys = redis.command(&["DBSIZE"]).unwrap();
    assert!(keys.starts_with(':') && keys != ":0", "{keys}");
    drop(envoy);
    let _ = service.kill();
    let _ = service.wait();
}

#[path = "../envoy/tls_client.rs"]
mod tls_client;

/// Publishes the control plane's current configuration with `certificates` as its next
/// version, as a change through the API would. (The custom-domains API puts certificates
/// there from ACME: tests/control_plane/custom_domains.rs; this is the xDS side alone.)
/// Returns the version's number.
fn publish_certificates(
    cp: &TestControlPlane,
    id: &str,
    certificates: Vec<model::Certificate>,
) -> u64 {
    let hub = &cp.control_plane().state().hub;
    let current = hub.current(id).expect("the control plane has a version");
    let mut config = current.config.clone();
    config.certificates = certificates;
    let version = current.version + 1;
    hub.publish(Arc::new(control_plane::hub::ConfigVersion {
        control_plane_id: id.to_owned(),
        version,
        hash: control_plane::hub::sha256_hex(format!("{}/{version}", current.hash).as_bytes()),
        text: current.text.clone(),
        config,
        created_at: current.created_at,
    }));
    version
}

fn certificate(id: &str, issued: &tls_client::Issued, sni: &str) -> model::Certificate {
    model::Certificate {
        id: id.to_owned(),
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        snis: vec![sni.to_owned()],
        tags: Vec::new(),
    }
}

/// Polls until a handshake for `sni` presents `expected`.
async fn wait_for_certificate(tls: SocketAddr, sni: &str, ca: &str, expected: &[u8], what: &str) {
    wasmgate_tests::until(what, DEADLINE, async || {
        match tls_client::handshake(tls, sni, ca, &[b"http/1.1"]).await {
            Ok(handshake) if handshake.leaf == expected => Ok(()),
            Ok(_) => Err("another certificate".to_owned()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// `control-plane envoy-bootstrap --tls-listen` names the node's TLS listener as the API's
/// `tls_listen` does; without it the node has none.
#[test]
fn the_cli_bootstrap_names_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let bootstrap = |extra: &[&str]| -> Value {
        let out = std::process::Command::new(wasmgate_tests::control_plane::control_plane_binary())
            .args([
                "envoy-bootstrap",
                "--control-plane-id",
                "cp",
                "--node-id",
                "n",
            ])
            .args(
                ["--cert", "--key", "--ca"]
                    .iter()
                    .flat_map(|flag| [std::ffi::OsStr::new(flag), pem.as_os_str()]),
            )
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let with_tls = bootstrap(&["--tls-listen", "127.0.0.1:10443"]);
    assert_eq!(
        with_tls["node"]["metadata"]["tls_listen"],
        "127.0.0.1:10443"
    );
    assert_eq!(bootstrap(&[])["node"]["metadata"].get("tls_listen"), None);
}

/// Custom domains over xDS: a node whose bootstrap names a TLS address gets the TLS listener
/// by LDS and each certificate by SDS. A renewal (same id, new certificate and key) reaches
/// new handshakes while a connection opened before keeps working, and Envoy neither modifies
/// nor drains its listener: only the secret changed. Deleting a certificate removes its filter
/// chain; the other certificate's name keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_come_by_sds_and_a_renewal_changes_only_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cp = TestControlPlane::start(dir.path());
    let echo = EchoUpstream::start().await.unwrap();
    let (id, _) = configure(&cp, echo.addr()).await;
    let (listen, tls) = (wasmgate_tests::free_port(), wasmgate_tests::free_port());
    let api = format!("/v2/control-planes/{id}/envoy-bootstrap");
    let node = json!({"node_id": "envoy-tls", "listen": listen.to_string()});
    let mut with_tls = node.clone();
    with_tls["tls_listen"] = json!("nowhere");
    cp.expect(400, "POST", &api, Some(&with_tls)).await;
    with_tls["tls_listen"] = json!(tls.to_string());
    let bootstrap = cp.expect(201, "POST", &api, Some(&with_tls)).await;
    assert_eq!(bootstrap["node"]["metadata"]["tls_listen"], tls.to_string());
    let plain = cp.expect(201, "POST", &api, Some(&node)).await;
    assert_eq!(plain["node"]["metadata"].get("tls_listen"), None);
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    in_sync(&cp, &id, "envoy-tls").await;

    let ca = tls_client::TestCa::new("wasmgate-test-ca");
    let (api, shop) = (
        ca.issue(&["api.example.test"]),
        ca.issue(&["shop.example.test"]),
    );
    let version = publish_certificates(
        &cp,
        &id,
        vec![
            certificate("api", &api, "api.example.test"),
            certificate("shop", &shop, "shop.example.test"),
        ],
    );
    wait_for_certificate(
        tls,
        "api.example.test",
        &ca.pem,
        &api.der(),
        "api's certificate by SDS",
    )
    .await;
    // The node reports the version applied once it has acknowledged the secrets too.
    wait_for_node(&cp, &id, "envoy-tls", "the certificates' version", |n| {
        n["config_version"] == version
    })
    .await;
    wait_for_certificate(
        tls,
        "shop.example.test",
        &ca.pem,
        &shop.der(),
        "shop's certificate",
    )
    .await;
    let held = tls_client::handshake(tls, "api.example.test", &ca.pem, &[b"http/1.1"])
        .await
        .unwrap();
    let mut held = tls_client::Client::over(held).await.unwrap();
    let response = held.send("GET", "api.example.test", "/open").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let stats = [
        "listener_manager.listener_modified",
        "listener_manager.listener_in_place_updated",
    ];
    let mut before = Vec::new();
    for stat in stats {
        let count = envoy.stat(stat).await;
        assert!(count.is_some(), "Envoy has no {stat}");
        before.push(count);
    }

    // The renewal: new handshakes get the new certificate.
    let renewed = ca.issue(&["api.example.test"]);
    publish_certificates(
        &cp,
        &id,
        vec![
            certificate("api", &renewed, "api.example.test"),
            certificate("shop", &shop, "shop.example.test"),
        ],
    );
    wait_for_certificate(
        tls,
        "api.example.test",
        &ca.pem,
        &renewed.der(),
        "the renewed certificate",
    )
    .await;
    let response = held.send("GET", "api.example.test", "/open").await.unwrap();
    assert_eq!(
        response.status,
        200,
        "the connection opened before the renewal: {}",
        response.text()
    );
    for (stat, before) in stats.iter().zip(before) {
        assert_eq!(
            envoy.stat(stat).await,
            before,
            "{stat}: the renewal changed the listener"
        );
    }
    assert_eq!(
        envoy
            .stat("listener_manager.total_filter_chains_draining")
            .await,
        Some(0)
    );

    // Deleting a certificate: its name gets no handshake, the other's does.
    publish_certificates(
        &cp,
        &id,
        vec![certificate("shop", &shop, "shop.example.test")],
    );
    wasmgate_tests::until(
        "api's filter chain gone",
        DEADLINE,
        async || match tls_client::handshake(tls, "api.example.test", &ca.pem, &[b"http/1.1"]).await
        {
            Ok(_) => Err("a handshake for api.example.test".to_owned()),
            Err(_) => Ok(()),
        },
    )
    .await;
    let (leaf, response) = tls_client::request(tls, "shop.example.test", &ca.pem, "GET", "/open")
        .await
        .unwrap();
    assert!(leaf == shop.der(), "shop's certificate");
    assert_eq!(response.status, 200, "{}", response.text());
}
