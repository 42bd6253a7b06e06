//! A serverless data plane group of several replicas (`autoscale: {kind: static,
//! requested_instances: N}`): the control plane runs N `gateway`s for it, and their platform
//! rate-limiting counts in the control plane's Redis (`--redis`), so that together they admit
//! the group's 100 requests per second, no more. A group of one counts locally, and a control
//! plane without Redis refuses replicas, naming the field.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wasmgate_tests::control_plane::TestControlPlane;
use wasmgate_tests::EchoUpstream;

fn request(control_plane_id: &str, autoscale: Option<Value>) -> Value {
    let mut group = json!({ "region": "us", "provider": "aws" });
    if let Some(autoscale) = autoscale {
        group["autoscale"] = autoscale;
    }
    json!({
        "control_plane_id": control_plane_id,
        "control_plane_geo": "us",
        "dataplane_groups": [group],
        "kind": "serverless.v1",
    })
}

fn replicas(n: u64) -> Option<Value> {
    Some(json!({ "kind": "static", "instance_type": "small", "requested_instances": n }))
}

fn proxies(configuration: &Value) -> Vec<SocketAddr> {
    configuration["dataplane_groups"][0]["proxy_urls"]
        .as_array()
        .expect("proxy_urls")
        .iter()
        .map(|url| {
            url.as_str()
                .expect("a URL")
                .trim_start_matches("http://")
                .parse()
                .expect("proxy address")
        })
        .collect()
}

/// The rate-limiting policy of the platform plugins a data plane's folder holds.
fn platform_policy(data_dir: &Path, group_id: &str) -> Option<String> {
    let file = data_dir
        .join("cloud-gateways")
        .join(group_id)
        .join("platform-plugins.json");
    let plugins: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    plugins["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "rate-limiting")
        .and_then(|p| p["config"]["policy"].as_str())
        .map(str::to_owned)
}

async fn serverless_control_plane(cp: &TestControlPlane, upstream: SocketAddr) -> String {
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "replicated", "cluster_type": "CLUSTER_TYPE_SERVERLESS_V1" })),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    cp.route_all_paths_to(&id, "backend", "backend", upstream)
        .await;
    id
}

/// The status of a GET on a fresh connection, if one is answered.
fn status_of(proxy: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(proxy).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// GETs on one keep-alive connection; the status of each.
struct Client {
    proxy: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
}

impl Client {
    fn get(&mut self) -> Option<u16> {
        let status = self.try_get();
        if status.is_none() {
            self.reader = None;
        }
        status
    }

    fn try_get(&mut self) -> Option<u16> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(self.proxy).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .ok()?;
            stream.set_nodelay(true).ok()?;
            self.reader = Some(BufReader::new(stream));
        }
        let reader = self.reader.as_mut()?;
        write!(reader.get_mut(), "GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").ok()?;
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(status)
    }
}

/// One admitted request: which proxy, and the client's clock when it was sent and answered.
type Admitted = (usize, f64, f64);

/// `threads` paced clients per proxy, `per_thread` requests a second each, for `seconds`.
fn overload(
    proxies: &[SocketAddr],
    threads: usize,
    per_thread: f64,
    seconds: f64,
) -> Vec<Admitted> {
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    for (i, &proxy) in proxies.iter().enumerate() {
        for _ in 0..threads {
            let (admitted, stop) = (Arc::clone(&admitted), Arc::clone(&stop));
            running.push(std::thread::spawn(move || {
                let mut client = Client {
                    proxy,
                    reader: None,
                };
                let gap = Duration::from_secs_f64(1.0 / per_thread);
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let sent = now_secs();
                    if client.get() == Some(200) {
                        let answered = now_secs();
                        admitted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, sent, answered));
                    }
                    next += gap;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in running {
        thread.join().expect("a client thread");
    }
    let admitted = admitted.lock().unwrap_or_else(|e| e.into_inner());
    admitted.clone()
}

/// The group's 100 a second, two replicas, four times that offered: every whole second
/// admits at most 100 requests surely in it (sent and answered within it), both replicas
/// admitting some. Each replica counting alone (`policy: local`) admitted about 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_groups_hundred_a_second_through_redis() {
    let redis = ratelimit::testing::RedisServer::start().expect("redis-server");
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let address = format!("127.0.0.1:{}", redis.port);
    let cp = TestControlPlane::start_with_redis(dir.path(), address.parse().expect("address"));
    let id = serverless_control_plane(&cp, echo.addr()).await;

    let configuration = cp
        .expect(
            201,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&request(&id, replicas(2))),
        )
        .await;
    let group_id = configuration["dataplane_groups"][0]["id"]
        .as_str()
        .expect("group id")
        .to_owned();
    let pair = proxies(&configuration);
    assert_eq!(pair.len(), 2, "{configuration:#}");
    assert_eq!(
        configuration["dataplane_group_config"][0]["autoscale"]["requested_instances"],
        2
    );
    for proxy in pair.clone() {
        wasmgate_tests::until(
            &format!("replica {proxy} proxying"),
            Duration::from_secs(120),
            async || match tokio::task::spawn_blocking(move || status_of(proxy)).await {
                Ok(Some(200)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    // Read by each gateway at its start (written by the control plane before it).
    assert_eq!(
        platform_policy(dir.path(), &group_id).as_deref(),
        Some("redis")
    );
    // Past the seconds the readiness checks counted in.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // 2 replicas x 3 clients x 70 a second: 420 offered against 100.
    let load = pair.clone();
    let (from, admitted, to) = tokio::task::spawn_blocking(move || {
        let from = now_secs();
        let admitted = overload(&load, 3, 70.0, 4.5);
        (from, admitted, now_secs())
    })
    .await
    .expect("load");
    let seconds: Vec<(i64, usize)> = (from.ceil() as i64..to.floor() as i64)
        .map(|s| {
            let sure = admitted
                .iter()
                .filter(|(_, a, b)| a.floor() as i64 == s && b.floor() as i64 == s)
                .count();
            (s, sure)
        })
        .collect();
    eprintln!("admitted surely in each whole second: {seconds:?}");
    assert!(seconds.len() >= 3, "{seconds:?}");
    assert!(
        seconds.iter().all(|(_, sure)| *sure <= 100),
        "over the group's 100 a second: {seconds:?}"
    );
    for replica in 0..2 {
        assert!(
            admitted.iter().any(|(i, _, _)| *i == replica),
            "replica {replica} admitted nothing: {seconds:?}"
        );
    }

    // Back to one gateway: the replica is drained, and the group counts locally again.
    let configuration = cp
        .expect(
            200,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&request(&id, None)),
        )
        .await;
    assert_eq!(proxies(&configuration), pair[..1]);
    assert!(
        TcpStream::connect(pair[1]).is_err(),
        "the replica still listens"
    );
    let data_dir = dir.path().to_path_buf();
    let group = group_id.clone();
    wasmgate_tests::until(
        "the group's gateway started again with local counting",
        Duration::from_secs(120),
        async || {
            let policy = platform_policy(&data_dir, &group);
            let proxy = pair[0];
            let status = tokio::task::spawn_blocking(move || status_of(proxy))
                .await
                .ok()
                .flatten();
            match (policy.as_deref(), status) {
                (Some("local"), Some(200)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// One gateway counts locally, with or without a Redis; without one, a group of replicas
/// (which would each admit the whole limit) is refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_need_the_control_planes_redis_and_one_gateway_counts_locally() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(dir.path());
    let id = serverless_control_plane(&cp, echo.addr()).await;
    let refused = cp
        .expect(
            400,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&request(&id, replicas(2))),
        )
        .await;
    let invalid = &refused["invalid_parameters"][0];
    assert_eq!(
        invalid["field"], "dataplane_groups[0].autoscale.requested_instances",
        "{refused:#}"
    );
    let reason = invalid["reason"].as_str().expect("reason");
    assert!(reason.contains("--redis"), "{reason}");
    let too_many = cp
        .expect(
            400,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&request(&id, replicas(11))),
        )
        .await;
    assert_eq!(
        too_many["invalid_parameters"][0]["field"],
        "dataplane_groups[0].autoscale.requested_instances"
    );

    let configuration = cp
        .expect(
            201,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&request(&id, replicas(1))),
        )
        .await;
    assert_eq!(proxies(&configuration).len(), 1);
    let group_id = configuration["dataplane_groups"][0]["id"]
        .as_str()
        .expect("group id");
    let data_dir = dir.path().to_path_buf();
    wasmgate_tests::until(
        "the gateway's platform plugins",
        Duration::from_secs(60),
        async || match platform_policy(&data_dir, group_id).as_deref() {
            Some("local") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}
