//! `gateway` data planes following a real control plane over the sync protocol: real
//! `gateway` processes, a real control plane (in-process, SQLite on disk), the real echo
//! backend, all on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmgate_tests::client::{self, Protocol, Request};
use wasmgate_tests::control_plane::TestControlPlane;
use wasmgate_tests::{EchoReport, EchoUpstream};

/// The `gateway` binary beside this test's folder (`target/debug/deps/..`).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let debug = exe.parent().and_then(Path::parent).expect("target folder");
    let binary = debug.join("gateway");
    assert!(
        binary.is_file(),
        "{} is missing: build it (`cargo build -p gateway`, or run `cargo xtask test`)",
        binary.display()
    );
    binary
}

/// A data plane's files: its client certificate, the control plane's CA and its cache.
struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    fn new(dir: &Path, ca_pem: &str) -> (Credentials, String) {
        std::fs::create_dir_all(dir).expect("dir");
        let (cert, key) = control_plane::pki::client_certificate("dp").expect("cert");
        std::fs::write(dir.join("dp.crt"), &cert).expect("cert");
        std::fs::write(dir.join("dp.key"), key).expect("key");
        std::fs::write(dir.join("ca.crt"), ca_pem).expect("ca");
        (
            Credentials {
                dir: dir.to_path_buf(),
            },
            cert,
        )
    }
}

struct GatewayProcess {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl GatewayProcess {
    fn start(cluster: SocketAddr, credentials: &Credentials, proxy: SocketAddr) -> GatewayProcess {
        let admin = wasmgate_tests::free_port();
        let dir = &credentials.dir;
        let child = Command::new(gateway_binary())
            .args([
                "run",
                "--no-access-log",
                "--workers",
                "2",
                "--cluster-ping-interval",
                "1",
            ])
            .args([
                "--listen",
                &proxy.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(["--control-plane", &cluster.to_string()])
            .arg("--cluster-cert")
            .arg(dir.join("dp.crt"))
            .arg("--cluster-cert-key")
            .arg(dir.join("dp.key"))
            .arg("--cluster-ca-cert")
            .arg(dir.join("ca.crt"))
            .arg("--cluster-cache-dir")
            .arg(dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("gateway");
        GatewayProcess {
            child,
            proxy,
            admin,
        }
    }

    /// Whether its `/status` says it is connected to its control plane.
    async fn connected(&self) -> Option<bool> {
        self.status().await?["control_plane"]["connected"].as_bool()
    }

    async fn status(&self) -> Option<Value> {
        let request = Request::get("/status").header("host", &self.admin.to_string());
        let response = client::send(self.admin, Protocol::Http1, &request)
            .await
            .ok()?;
        response.json()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `x-from-cp` header the backend saw through `proxy`.
async fn seen(proxy: SocketAddr) -> Option<String> {
    let response = client::send(proxy, Protocol::Http1, &Request::get("/"))
        .await
        .ok()?;
    if response.status != 200 {
        return None;
    }
    let report: EchoReport = serde_json::from_slice(&response.body).ok()?;
    report.header("x-from-cp").map(str::to_owned)
}

/// How long a change may take to be enforced before the test gives up: a bound against
/// hanging, not a latency target (propagation times are measured in docs/BENCHMARKS.md).
const PROPAGATION: Duration = Duration::from_secs(30);

/// [`wasmgate_tests::until`] for a yes/no check; returns how long it took.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    wasmgate_tests::until(what, within, async || {
        if check().await {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    started.elapsed()
}

/// Creates a control plane and, in `dir`, a data plane's credentials for it; returns its id,
/// the credentials and their certificate, which is not pinned yet.
async fn control_plane_with_credentials(
    cp: &TestControlPlane,
    dir: &Path,
) -> (String, Credentials, String) {
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "cp" })),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let ca = created["config"]["cluster_ca_cert"].as_str().expect("ca");
    let (credentials, cert) = Credentials::new(dir, ca);
    (id, credentials, cert)
}

async fn node(cp: &TestControlPlane, id: &str) -> Value {
    let nodes = cp
        .expect(200, "GET", &format!("/v2/control-planes/{id}/nodes"), None)
        .await;
    nodes["items"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_its_control_plane_and_survives_without_it() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cp = TestControlPlane::start(&dir.path().join("cp"));
    let (id, credentials, cert) = control_plane_with_credentials(&cp, &dir.path().join("dp")).await;
    cp.pin_certificate(&id, &cert).await;
    cp.route_all_paths_to(&id, "echo", "all", echo.addr()).await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    let plugin = cp
        .expect(201, "POST", &format!("{base}/services/echo/plugins"), Some(&json!({ "name": "request-transformer", "config": { "add": { "headers": ["x-from-cp:1"] } } })))
        .await;
    let plugin_path = format!("{base}/plugins/{}", plugin["id"].as_str().expect("id"));
    cp.expect(201, "POST", &format!("{base}/plugins"), Some(&json!({ "name": "request-size-limiting", "config": { "allowed_payload_size": 1, "size_unit": "kilobytes" } }))).await;

    let proxy = wasmgate_tests::free_port();
    let mut gateway = GatewayProcess::start(cp.endpoints().cluster, &credentials, proxy);
    until(
        "the first configuration",
        Duration::from_secs(60),
        async || seen(proxy).await.as_deref() == Some("1"),
    )
    .await;
    let big = Request::post("/", wasmgate_tests::RequestBody::Bytes(vec![b'x'; 2048]));
    let response = client::send(proxy, Protocol::Http1, &big)
        .await
        .expect("post");
    assert_eq!(response.status, 413, "{}", response.text());
    let expected = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/expected-config-hash"),
            None,
        )
        .await;
    until("in sync", Duration::from_secs(10), async || {
        node(&cp, &id).await["sync_status"] == "in_sync"
    })
    .await;
    let in_sync = node(&cp, &id).await;
    assert_eq!(in_sync["sync_status"], "in_sync", "{in_sync}");
    assert_eq!(in_sync["config_hash"], expected["expected_hash"]);
    assert_eq!(in_sync["kind"], "gateway");
    let status = gateway.status().await.expect("status");
    assert_eq!(status["config_hash"], expected["expected_hash"]);
    assert_eq!(status["control_plane"]["connected"], true);

    // Live changes, while a client keeps sending: each one enforced within a second, and no
    // request fails across the swaps.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, sent, failed) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut connection = client::Connection::open(proxy, Protocol::Http1)
                .await
                .expect("connection");
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match connection.send(&Request::get("/")).await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    for round in 2..=6 {
        let value = round.to_string();
        cp.expect(
            200,
            "PATCH",
            &plugin_path,
            Some(&json!({ "config": { "add": { "headers": [format!("x-from-cp:{round}")] } } })),
        )
        .await;
        let took = until("a PATCH", PROPAGATION, async || {
            seen(proxy).await.as_deref() == Some(value.as_str())
        })
        .await;
        eprintln!("version {round}: enforced after {took:?}");
    }
    // Changes land in milliseconds: let the client run on a little, then stop it.
    until(
        "requests on the new version",
        Duration::from_secs(10),
        async || sent.load(Ordering::Relaxed) >= 100,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reconfiguration"
    );

    // A version the model accepts but this data plane cannot run (its secret is not given to
    // it): refused, reported with the reason, and the previous version keeps serving.
    cp.expect(200, "PATCH", &plugin_path, Some(&json!({ "config": { "add": { "headers": ["x-from-cp:{vault://env/WASMGATE_TEST_UNSET_SECRET}"] } } }))).await;
    until("the refusal", Duration::from_secs(5), async || {
        node(&cp, &id).await["sync_status"] == "failed"
    })
    .await;
    let refused = node(&cp, &id).await;
    let message = refused["last_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("WASMGATE_TEST_UNSET_SECRET"), "{refused}");
    assert_eq!(seen(proxy).await.as_deref(), Some("6"));
    cp.expect(
        200,
        "PATCH",
        &plugin_path,
        Some(&json!({ "config": { "add": { "headers": ["x-from-cp:7"] } } })),
    )
    .await;
    until("recovery", PROPAGATION, async || {
        seen(proxy).await.as_deref() == Some("7")
    })
    .await;

    // The control plane goes away: the gateway keeps serving; restarted meanwhile, it serves
    // from its cache.
    cp.stop();
    assert_eq!(seen(proxy).await.as_deref(), Some("7"));
    drop(gateway);
    gateway = GatewayProcess::start(cp.endpoints().cluster, &credentials, proxy);
    until(
        "serving from the cache",
        Duration::from_secs(60),
        async || seen(proxy).await.as_deref() == Some("7"),
    )
    .await;
    assert_eq!(
        gateway.status().await.expect("status")["control_plane"]["connected"],
        false
    );

    // Back on the same data: the gateway reconnects and is in sync again.
    cp.start_again();
    until("reconnection", Duration::from_secs(10), async || {
        let n = node(&cp, &id).await;
        n["connected"] == true && n["sync_status"] == "in_sync"
    })
    .await;
    cp.expect(
        200,
        "PATCH",
        &plugin_path,
        Some(&json!({ "config": { "add": { "headers": ["x-from-cp:8"] } } })),
    )
    .await;
    until("a change after the restart", PROPAGATION, async || {
        seen(proxy).await.as_deref() == Some("8")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_certificate_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(&dir.path().join("cp"));
    let (id, credentials, _unpinned) =
        control_plane_with_credentials(&cp, &dir.path().join("dp")).await;
    let gateway = GatewayProcess::start(
        cp.endpoints().cluster,
        &credentials,
        wasmgate_tests::free_port(),
    );
    until("a refused attempt", Duration::from_secs(60), async || {
        gateway
            .status()
            .await
            .and_then(|s| s["control_plane"]["last_error"].as_str().map(str::to_owned))
            .is_some_and(|e| e.contains("not pinned"))
    })
    .await;
    let nodes = cp
        .expect(200, "GET", &format!("/v2/control-planes/{id}/nodes"), None)
        .await;
    assert_eq!(nodes["items"], json!([]));
    // The data plane still answers, with no configuration: Kong's 404.
    let response = client::send(gateway.proxy, Protocol::Http1, &Request::get("/"))
        .await
        .expect("get");
    assert_eq!(response.status, 404);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Stops (`STOP`) or resumes (`CONT`) the gateway process, by its id.
fn signal(gateway: &GatewayProcess, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(gateway.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// README "Nodes": what a real gateway says about itself (hostname, version) and its pings
/// (`last_ping`) reach `/nodes`, and each `sync_status` is shown when it holds: `in_sync`,
/// `pending` (a newer version it has not applied: here the process is stopped), and
/// `disconnected`, both when it goes silent for 1.5 ping intervals and when its connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_show_what_a_gateway_reports_and_every_sync_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(&dir.path().join("cp"));
    let (id, credentials, cert) = control_plane_with_credentials(&cp, &dir.path().join("dp")).await;
    cp.pin_certificate(&id, &cert).await;
    let expected = async || {
        cp.expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/expected-config-hash"),
            None,
        )
        .await["expected_hash"]
            .clone()
    };
    let started = unix_now();
    let gateway = GatewayProcess::start(
        cp.endpoints().cluster,
        &credentials,
        wasmgate_tests::free_port(),
    );
    until("in sync", Duration::from_secs(60), async || {
        node(&cp, &id).await["sync_status"] == "in_sync"
    })
    .await;
    let first = node(&cp, &id).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(first["hostname"], hostname.trim(), "{first}");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"), "{first}");
    assert_eq!(first["connected"], true);
    assert_eq!(first["config_hash"], expected().await);
    let first_ping = first["last_ping"].as_i64().expect("last_ping");
    assert!(
        (started..=unix_now()).contains(&first_ping),
        "last_ping {first_ping} is not between the gateway's start ({started}) and now"
    );
    // The gateway pings every second (--cluster-ping-interval 1): last_ping moves on.
    until("a later ping", PROPAGATION, async || {
        node(&cp, &id).await["last_ping"].as_i64() > Some(first_ping)
    })
    .await;

    // A version the stopped gateway cannot take yet: pending, still running the old hash.
    let running = expected().await;
    signal(&gateway, "STOP");
    cp.add_service(&id, &json!({ "name": "new", "host": "new.internal" }))
        .await;
    assert_ne!(expected().await, running);
    until("pending", PROPAGATION, async || {
        node(&cp, &id).await["sync_status"] == "pending"
    })
    .await;
    let pending = node(&cp, &id).await;
    assert_eq!(pending["config_hash"], running, "{pending}");
    assert_eq!(pending["connected"], true, "{pending}");
    signal(&gateway, "CONT");
    until("in sync after resuming", PROPAGATION, async || {
        node(&cp, &id).await["sync_status"] == "in_sync"
    })
    .await;

    // Silent for 1.5 ping intervals of the control plane (10 s here): disconnected; back in
    // sync once it resumes and reconnects.
    signal(&gateway, "STOP");
    until("disconnected by silence", PROPAGATION, async || {
        let n = node(&cp, &id).await;
        n["sync_status"] == "disconnected" && n["connected"] == false
    })
    .await;
    signal(&gateway, "CONT");
    until("in sync after reconnecting", PROPAGATION, async || {
        let n = node(&cp, &id).await;
        n["sync_status"] == "in_sync" && n["connected"] == true
    })
    .await;

    // Its connection closes: disconnected as the control plane reads the end of it, sooner
    // than the silence rule (15 s after its last ping) would say so; what it reported stays.
    drop(gateway);
    until(
        "disconnected by the close",
        Duration::from_secs(10),
        async || node(&cp, &id).await["sync_status"] == "disconnected",
    )
    .await;
    let gone = node(&cp, &id).await;
    assert_eq!(gone["connected"], false, "{gone}");
    assert_eq!(gone["hostname"], hostname.trim(), "{gone}");
}

/// Konnect: "removing a pinned dataplane certificate would invalidate any dataplanes currently
/// connected to this control plane using this certificate". The session ends at the unpin, so
/// a change made after it never reaches that gateway, which keeps serving what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinning_a_certificate_cuts_a_connected_gateway_at_once() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(&dir.path().join("cp"));
    let (id, credentials, cert) = control_plane_with_credentials(&cp, &dir.path().join("dp")).await;
    let pins = format!("/v2/control-planes/{id}/dp-client-certificates");
    let pinned = cp
        .expect(201, "POST", &pins, Some(&json!({ "cert": cert })))
        .await;
    let pin_id = pinned["item"]["id"].as_str().expect("id").to_owned();
    cp.route_all_paths_to(&id, "echo", "all", echo.addr()).await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    let plugin = cp
        .expect(201, "POST", &format!("{base}/services/echo/plugins"), Some(&json!({ "name": "request-transformer", "config": { "add": { "headers": ["x-from-cp:1"] } } })))
        .await;
    let plugin_path = format!("{base}/plugins/{}", plugin["id"].as_str().expect("id"));
    let proxy = wasmgate_tests::free_port();
    let gateway = GatewayProcess::start(cp.endpoints().cluster, &credentials, proxy);
    until(
        "the first configuration",
        Duration::from_secs(60),
        async || seen(proxy).await.as_deref() == Some("1"),
    )
    .await;
    until("connected", Duration::from_secs(10), async || {
        node(&cp, &id).await["connected"] == true
    })
    .await;

    cp.expect_response(204, "DELETE", &format!("{pins}/{pin_id}"), None)
        .await;
    cp.expect(
        200,
        "PATCH",
        &plugin_path,
        Some(&json!({ "config": { "add": { "headers": ["x-from-cp:after-unpin"] } } })),
    )
    .await;
    until("the session cut", Duration::from_secs(10), async || {
        node(&cp, &id).await["connected"] == false
    })
    .await;
    until(
        "the gateway told why",
        Duration::from_secs(10),
        async || gateway.connected().await == Some(false),
    )
    .await;
    // A change reaches a connected gateway in milliseconds (the test above).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        seen(proxy).await.as_deref(),
        Some("1"),
        "a change made after the unpin reached the unpinned gateway"
    );
}

/// A loopback TCP relay to `target` that can go silent in both directions without closing
/// anything: a network partition, or a control plane host lost, as the gateway sees it.
struct Partition {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

impl Partition {
    async fn start(target: SocketAddr) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = Arc::new(AtomicBool::new(false));
        let relay_silent = Arc::clone(&silent);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pump(
                    client_read,
                    server_write,
                    Arc::clone(&relay_silent),
                ));
                tokio::spawn(Self::pump(
                    server_read,
                    client_write,
                    Arc::clone(&relay_silent),
                ));
            }
        });
        Partition { addr, silent }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        silent: Arc<AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0; 16 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Held, never delivered: the connection stays open and says nothing.
            while silent.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// A control plane that goes silent without closing the connection is noticed within 1.5
/// ping intervals (1 s here), not after TCP's minutes of retransmissions, and the gateway
/// keeps serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_notices_a_silent_control_plane_within_one_and_a_half_pings() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(&dir.path().join("cp"));
    let (id, credentials, cert) = control_plane_with_credentials(&cp, &dir.path().join("dp")).await;
    cp.pin_certificate(&id, &cert).await;
    cp.route_all_paths_to(&id, "echo", "all", echo.addr()).await;
    let partition = Partition::start(cp.endpoints().cluster).await;
    let proxy = wasmgate_tests::free_port();
    let gateway = GatewayProcess::start(partition.addr, &credentials, proxy);
    until("connected", Duration::from_secs(60), async || {
        gateway.connected().await == Some(true)
    })
    .await;
    // A few pongs through the relay: an answering control plane keeps the session.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gateway.connected().await, Some(true));

    partition.silent.store(true, Ordering::Relaxed);
    let mut noticed = Value::Null;
    let took = until(
        "the silence noticed",
        Duration::from_secs(20),
        async || match gateway.status().await {
            Some(status) if status["control_plane"]["connected"] == false => {
                noticed = status;
                true
            }
            _ => false,
        },
    )
    .await;
    eprintln!("silence noticed after {took:?}");
    let error = noticed["control_plane"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("not even a pong"), "{noticed}");
    let response = client::send(proxy, Protocol::Http1, &Request::get("/"))
        .await
        .expect("get");
    assert_eq!(response.status, 200, "still serving: {}", response.text());
}
