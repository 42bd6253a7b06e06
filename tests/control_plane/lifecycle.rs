//! Provisioned data planes outlive their control plane (issue #15 item 2 and 7, review
//! findings D3, D4, D14, D15, D16, D24): a control plane stop, restart or crash (SIGKILL)
//! costs no request; at start it adopts the gateway that runs rather than starting a second
//! one; removing a configuration drains its gateway and removes its folder; what they keep on
//! disk is private; every write acknowledged before a crash is there after it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::client::{self, Protocol, Request};
use wasmgate_tests::control_plane::{
    call_api, processes_under, signal, Provisioned, TestControlPlane,
};
use wasmgate_tests::{until, EchoUpstream};

/// The folder of a provisioned data plane group.
fn group_dir(cp: &TestControlPlane, provisioned: &Provisioned) -> PathBuf {
    cp.data_dir()
        .join("cloud-gateways")
        .join(&provisioned.group_id)
}

/// The pid of the one gateway process running for the group in `dir`; panics when there
/// is none or more than one.
fn the_gateway(dir: &Path) -> u32 {
    let pids = processes_under(dir);
    assert_eq!(
        pids.len(),
        1,
        "gateway processes for {}: {pids:?}",
        dir.display()
    );
    pids[0]
}

/// The pid the group's pidfile names.
fn pidfile_pid(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("gateway.pid")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

async fn status(proxy: SocketAddr, path: &str) -> Result<u16, String> {
    client::send(proxy, Protocol::Http1, &Request::get(path))
        .await
        .map(|r| r.status)
}

/// Until the data plane group reports the control plane's expected configuration hash.
async fn converged(cp: &TestControlPlane, provisioned: &Provisioned) {
    let cp_path = format!("/v2/control-planes/{}", provisioned.control_plane_id);
    let api = cp.endpoints().api;
    until(
        "the data plane in sync",
        Duration::from_secs(60),
        async || {
            let expected = call_api(api, "GET", &format!("{cp_path}/expected-config-hash"), None)
                .await?
                .json()
                .ok_or("not JSON")?;
            let node = call_api(
                api,
                "GET",
                &format!("{cp_path}/nodes/{}", provisioned.group_id),
                None,
            )
            .await?
            .json()
            .ok_or("not JSON")?;
            let item = &node["item"];
            if item["sync_status"] == "in_sync"
                && item["config_hash"] == expected["expected_hash"]
                && expected["expected_hash"].is_string()
            {
                Ok(())
            } else {
                Err(format!("node {node}, expected {expected}"))
            }
        },
    )
    .await;
}

/// A client sending `GET /` to `proxy` every 50 ms (20 requests per second, under the
/// platform's 100), each on a new connection, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(proxy: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let failure = match status(proxy, "/").await {
                        Ok(200) => continue,
                        Ok(other) => format!("status {other}"),
                        Err(e) => e,
                    };
                    let at = format!("request {}: {failure}", sent.load(Ordering::Relaxed));
                    failures.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                }
            }
        });
        Traffic {
            stop,
            sent,
            failures,
            task,
        }
    }

    /// Requests sent, and those that failed.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

/// A serverless control plane (the `control-plane` binary) with its provisioned gateway
/// proxying every path to `echo`, answering.
async fn serving(dir: &Path, echo: SocketAddr) -> (TestControlPlane, Provisioned) {
    let cp = TestControlPlane::spawn(&dir.join("cp"));
    let provisioned = cp.provision_serverless("lifecycle").await;
    cp.route_all_paths_to(&provisioned.control_plane_id, "echo", "all", echo)
        .await;
    let proxy = provisioned.proxy;
    until(
        "the gateway to proxy",
        Duration::from_secs(60),
        async || match status(proxy, "/").await {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    (cp, provisioned)
}

/// Review findings D3 and D4, issue #15 item 2: the control plane stops gracefully, starts
/// again, is killed with SIGKILL and starts again, while a client sends 20 requests per
/// second through its provisioned gateway: no request fails, the same gateway process (its
/// pidfile's) serves throughout and is the only one, and it follows the control plane again
/// after each start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_stop_restart_or_crash_costs_no_request() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    let gateway = the_gateway(&group);
    let traffic = Traffic::start(provisioned.proxy);
    tokio::time::sleep(Duration::from_secs(1)).await;

    cp.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.start_again();
    converged(&cp, &provisioned).await;
    let after_restart = processes_under(&group);

    cp.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.start_again();
    // A change made after the crash reaches the gateway: it reconnected.
    cp.add_service(
        &provisioned.control_plane_id,
        &json!({ "name": "after-crash", "url": format!("http://{}", echo.addr()) }),
    )
    .await;
    converged(&cp, &provisioned).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (sent, failures) = traffic.stop().await;
    eprintln!(
        "restart under traffic: {sent} requests, {} failed",
        failures.len()
    );
    assert!(sent >= 60, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(after_restart, [gateway], "after a restart");
    assert_eq!(the_gateway(&group), gateway, "after a crash");
    assert_eq!(pidfile_pid(&group), Some(gateway));
}

/// Issue #15 item 7: the control plane is killed with SIGKILL five times while a client
/// creates services as fast as it is answered. Every service acknowledged with a 201 is there
/// after each restart, SQLite's integrity check passes, and the provisioned gateway (still
/// the only one) converges to the expected configuration after each restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_loop_during_writes_loses_no_acknowledged_write() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    let gateway = the_gateway(&group);
    let services = format!(
        "/v2/control-planes/{}/core-entities/services",
        provisioned.control_plane_id
    );
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..5 {
        let api = cp.endpoints().api;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn({
            let (stop, acks, services) = (stop.clone(), acks.clone(), services.clone());
            let url = format!("http://{}", echo.addr());
            async move {
                let mut created = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("s-{round}-{i}");
                    let body = json!({ "name": name, "url": url });
                    match call_api(api, "POST", &services, Some(&body)).await {
                        Ok(r) if r.status == 201 => {
                            created.push(name);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        // The control plane is gone (or going): no acknowledgement.
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                created
            }
        });
        // Different moments of the write cycle at each round, and at least one write
        // acknowledged first, however slow the machine.
        tokio::time::sleep(Duration::from_millis(400 + 170 * round)).await;
        until(
            "a write acknowledged",
            Duration::from_secs(30),
            async || match acks.load(Ordering::Relaxed) {
                0 => Err("none yet".to_owned()),
                _ => Ok(()),
            },
        )
        .await;
        cp.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let created = writer.await.expect("writer");
        assert!(!created.is_empty(), "round {round}: no write acknowledged");
        acknowledged.extend(created);
        assert_eq!(integrity(cp.data_dir()), "ok", "round {round}");

        cp.start_again();
        for name in &acknowledged {
            cp.expect(200, "GET", &format!("{services}/{name}"), None)
                .await;
        }
        converged(&cp, &provisioned).await;
        assert_eq!(status(provisioned.proxy, "/").await, Ok(200));
        assert_eq!(the_gateway(&group), gateway, "round {round}");
    }
    eprintln!(
        "kill -9 loop: {} acknowledged writes, all present",
        acknowledged.len()
    );
}

/// SQLite's own check of the database a killed control plane left (its write-ahead log
/// recovered as the next start would).
fn integrity(data_dir: &Path) -> String {
    let db = rusqlite::Connection::open(data_dir.join("control-plane.db")).expect("the database");
    db.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check")
}

/// An upstream that answers each request 2 s after its head arrived, and says when one
/// arrived.
async fn slow_upstream() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived, arrivals) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived.send(()).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
                    )
                    .await;
            });
        }
    });
    (addr, arrivals)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Review findings D15 and D24: what the control plane keeps on disk is its user's alone:
/// the data directory and the group folders 0700; the database, the keys, the certificates,
/// the pidfile and the gateway's own log 0600. (Before, the cache folder was 0755 and the
/// files 0644, the key included, and the gateway's log was the control plane's standard
/// error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_control_plane_keeps_on_disk_is_private() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    for private in [
        cp.data_dir().to_path_buf(),
        cp.data_dir().join("cloud-gateways"),
        group.clone(),
        group.join("cache"),
        // The provisioned gateways' shared compiled-module cache: code they load and run.
        cp.data_dir().join("gateway-module-cache"),
    ] {
        assert_eq!(mode(&private), 0o700, "{}", private.display());
    }
    let database = cp.data_dir().join("control-plane.db");
    assert_eq!(mode(&database), 0o600, "{}", database.display());
    for file in [
        "cluster.key",
        "cluster.crt",
        "cluster-ca.crt",
        "gateway.pid",
        "gateway.log",
    ] {
        assert_eq!(mode(&group.join(file)), 0o600, "{file}");
    }
}

/// Review findings D4 and D24, issue #15 item 2: deleting the configuration drains its
/// gateway: a request in flight is answered, then the process is gone, its port closed and
/// its folder (keys, cache) removed. (Before, the gateway was SIGKILLed, the request in
/// flight cut, and the folder left behind.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_configuration_drains_its_gateway_and_removes_its_folder() {
    let (slow, mut arrivals) = slow_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (cp, provisioned) = serving(dir.path(), slow).await;
    let group = group_dir(&cp, &provisioned);
    let gateway = the_gateway(&group);
    // The requests that checked the gateway serves.
    while arrivals.try_recv().is_ok() {}

    let proxy = provisioned.proxy;
    let in_flight =
        tokio::spawn(
            async move { client::send(proxy, Protocol::Http1, &Request::get("/slow")).await },
        );
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the slow request upstream within 10 s");
    let configurations = cp
        .expect(200, "GET", "/v3/cloud-gateways/configurations", None)
        .await;
    let id = configurations["data"][0]["id"].as_str().expect("id");
    let started = Instant::now();
    cp.expect(
        204,
        "DELETE",
        &format!("/v3/cloud-gateways/configurations/{id}"),
        None,
    )
    .await;
    eprintln!("DELETE answered in {:?}", started.elapsed());
    let answer = in_flight
        .await
        .expect("task")
        .expect("the request in flight");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "slow");
    until("the gateway to exit", Duration::from_secs(10), async || {
        if processes_under(&group).is_empty() {
            Ok(())
        } else {
            Err(format!("gateway {gateway} still runs"))
        }
    })
    .await;
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "{proxy} still accepts connections"
    );
    assert!(!group.exists(), "{} is left behind", group.display());
}

/// Waits until no process runs for the group in `dir`.
async fn until_gone(dir: &Path) {
    until(
        "the gateway to exit",
        Duration::from_secs(10),
        async || match processes_under(dir)[..] {
            [] => Ok(()),
            ref running => Err(format!("still running: {running:?}")),
        },
    )
    .await;
}

/// Review finding D16: a group whose key a crash lost (the store has the group and its pin,
/// the folder not the key) gets a new certificate, pinned in place of the old one, when the
/// control plane starts, and its gateway serves and follows again. (Before, the gateway
/// failed to start for want of its key, again and again, until the configuration was
/// deleted and made again with a new id and port.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_key_was_lost_gets_a_new_certificate_at_start() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    let pins = format!(
        "/v2/control-planes/{}/dp-client-certificates",
        provisioned.control_plane_id
    );
    let before = cp.expect(200, "GET", &pins, None).await;
    cp.kill();
    signal(the_gateway(&group), "-KILL");
    until_gone(&group).await;
    std::fs::remove_file(group.join("cluster.key")).expect("removing the key");

    cp.start_again();
    let proxy = provisioned.proxy;
    until(
        "the gateway to proxy again",
        Duration::from_secs(60),
        async || match status(proxy, "/").await {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    converged(&cp, &provisioned).await;
    let after = cp.expect(200, "GET", &pins, None).await;
    assert_eq!(after["items"].as_array().map(Vec::len), Some(1), "{after}");
    assert_ne!(after["items"][0]["id"], before["items"][0]["id"]);
    assert_eq!(mode(&group.join("cluster.key")), 0o600);
}

/// Review finding D14: two groups the store gives the same port (as a port handed out twice
/// would) do not share it. The second gateway refuses to start, its group is not ready and
/// says why (the address taken), and every request to the port still reaches the
/// first group's configuration; the second group's gateway still running on its old port
/// is drained, as its group no longer says that port. (Before, both bound the port with
/// `SO_REUSEPORT` and the kernel split the requests between the two tenants'
/// configurations.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_two_groups_were_given_is_refused_loudly_not_shared() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, first) = serving(dir.path(), echo.addr()).await;
    let second = cp.provision_serverless("second").await;
    let first_group = group_dir(&cp, &first);
    let first_gateway = the_gateway(&first_group);
    cp.stop();
    // The second group's gateway still runs, on the port it was given first: the next start
    // drains it, as it no longer listens where its group says.
    {
        let db = rusqlite::Connection::open(cp.data_dir().join("control-plane.db"))
            .expect("the database");
        let doc: String = db
            .query_row(
                "SELECT doc FROM cloud_gateways WHERE control_plane_id = ?1",
                [&second.control_plane_id],
                |r| r.get(0),
            )
            .expect("the second configuration");
        let mut doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
        doc["dataplane_groups"][0]["proxy_port"] = json!(first.proxy.port());
        db.execute(
            "UPDATE cloud_gateways SET doc = ?1 WHERE control_plane_id = ?2",
            [doc.to_string(), second.control_plane_id.clone()],
        )
        .expect("giving the second group the first one's port");
    }

    cp.start_again();
    let taken = format!("{}: another process already listens there", first.proxy);
    let api = cp.endpoints().api;
    until(
        "the second group to fail",
        Duration::from_secs(60),
        async || {
            let list = call_api(api, "GET", "/v3/cloud-gateways/configurations", None)
                .await?
                .json()
                .ok_or("not JSON")?;
            let configuration = list["data"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["control_plane_id"] == second.control_plane_id.as_str())
                .ok_or("no second configuration")?;
            let group = &configuration["dataplane_groups"][0];
            // Its exit and why, wherever the representation says it.
            if group["state"] != "ready" && group.to_string().contains(&taken) {
                Ok(())
            } else {
                Err(group.to_string())
            }
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(status(first.proxy, "/").await, Ok(200), "{}", first.proxy);
    }
    assert!(
        tokio::net::TcpStream::connect(second.proxy).await.is_err(),
        "the second group's old port {} still accepts connections",
        second.proxy
    );
    assert_eq!(the_gateway(&first_group), first_gateway);
}

/// Review finding D24: concurrent `PUT`s of one configuration end with what the last commit
/// says, whatever order their requests finish in: one gateway per stored group, no other
/// gateway and no other group folder. (Before, each request applied its own document after
/// its commit, so two could apply in the reverse order of their commits, and replaced
/// groups' folders were never removed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_end_as_the_last_commit_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(&dir.path().join("cp"));
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "concurrent", "cluster_type": "CLUSTER_TYPE_SERVERLESS" })),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let api = cp.endpoints().api;
    let regions = [
        &["us"][..],
        &["eu"],
        &["us", "eu"],
        &["ap"],
        &["eu", "ap"],
        &["us"],
    ];
    let puts: Vec<_> = regions
        .iter()
        .map(|regions| {
            let groups: Vec<_> = regions.iter().map(|r| json!({ "region": r })).collect();
            let body = json!({
                "control_plane_id": id,
                "control_plane_geo": "us",
                "dataplane_groups": groups,
                "kind": "serverless.v0",
            });
            tokio::spawn(async move {
                call_api(api, "PUT", "/v3/cloud-gateways/configurations", Some(&body)).await
            })
        })
        .collect();
    for put in puts {
        let answer = put.await.expect("task").expect("PUT");
        assert!(matches!(answer.status, 200 | 201), "{}", answer.text());
    }
    let list = cp
        .expect(200, "GET", "/v3/cloud-gateways/configurations", None)
        .await;
    let root = cp.data_dir().join("cloud-gateways");
    let mut stored: Vec<PathBuf> = list["data"][0]["dataplane_groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| root.join(g["id"].as_str().expect("group id")))
        .collect();
    stored.sort();
    until("the stored groups alone to run", Duration::from_secs(60), async || {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(|e| e.to_string())?
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        folders.sort();
        let running: Vec<usize> = stored.iter().map(|g| processes_under(g).len()).collect();
        let all = processes_under(&root).len();
        if folders == stored && running.iter().all(|n| *n == 1) && all == stored.len() {
            Ok(())
        } else {
            Err(format!(
                "stored {stored:?}, folders {folders:?}, gateways per group {running:?}, in all {all}"
            ))
        }
    })
    .await;
}

/// `control-plane stop-data-planes`, for a host taken out of service or the end of a local
/// session (data planes outlive `serve`): it drains every provisioned gateway of the data
/// directory and keeps their folders; the next `serve` starts them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_data_planes_drains_them_and_the_next_start_starts_them_again() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    cp.stop();
    assert_eq!(
        cp.stop_data_planes(),
        format!("{}: data planes stopped: 1\n", cp.data_dir().display())
    );
    until_gone(&group).await;
    assert!(
        tokio::net::TcpStream::connect(provisioned.proxy)
            .await
            .is_err(),
        "{} still accepts connections",
        provisioned.proxy
    );
    assert!(group.join("cluster.key").is_file());

    cp.start_again();
    let proxy = provisioned.proxy;
    until(
        "the gateway to proxy again",
        Duration::from_secs(60),
        async || match status(proxy, "/").await {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    converged(&cp, &provisioned).await;
}

/// Issue #15 item 2: a gateway the control plane adopted (not its child: it started before
/// a crash of the control plane) is watched through `/proc` and started again when it dies,
/// as a child is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_gateway_that_dies_is_started_again() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut cp, provisioned) = serving(dir.path(), echo.addr()).await;
    let group = group_dir(&cp, &provisioned);
    let adopted = the_gateway(&group);
    cp.kill();
    cp.start_again();
    converged(&cp, &provisioned).await;
    assert_eq!(the_gateway(&group), adopted);

    signal(adopted, "-KILL");
    let proxy = provisioned.proxy;
    until("another gateway", Duration::from_secs(60), async || {
        let pids = processes_under(&group);
        match (&pids[..], status(proxy, "/").await) {
            ([pid], Ok(200)) if *pid != adopted => Ok(()),
            (_, answer) => Err(format!("gateways {pids:?}, {answer:?}")),
        }
    })
    .await;
    assert_eq!(pidfile_pid(&group), Some(the_gateway(&group)));
}
