//! The control plane: how long an API call takes to be enforced at a real data plane
//! (gateway and Envoy), and how many gateway connections one control plane holds and how
//! long a new version takes to reach all of them.
//!
//! Propagation is measured end to end: `PATCH` a request-size-limiting plugin between a
//! 1-byte and a 1 KiB limit, then probe the data plane with a 10-byte POST until the answer
//! flips (413 ↔ 200), every 2 ms. The simulated gateways are real WebSocket clients over
//! mutual TLS speaking the sync protocol (basic_info with every module already present,
//! `applied` after each `reconfigure`), all in this process next to the control plane.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use model::sync::{Inbound, ModuleInfo, Outbound, PATH};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "kpat_bench";

pub struct Propagation {
    pub plane: &'static str,
    /// Milliseconds from the API's answer to the first probe that sees the change.
    pub samples: Vec<f64>,
    pub note: Option<String>,
}

pub struct Fanout {
    pub connections: usize,
    pub connect_seconds: f64,
    pub rss_mib_per_1k: Option<f64>,
    /// Milliseconds from the API's answer until every connection had the new version: per
    /// round, (p50, p99, max) over connections.
    pub rounds: Vec<(f64, f64, f64)>,
    /// Connections that did not get through the handshake and first version.
    pub refused: usize,
    /// Deliveries missing after 30 s, over all rounds.
    pub missed: usize,
}

pub struct Figures {
    pub propagation: Vec<Propagation>,
    pub fanout: Vec<Fanout>,
}

/// One HTTP/1.1 request to the API on a fresh connection.
fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("API: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("API: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("API: {e}"))?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("API: unreadable answer {response:?}"))?;
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}

fn expect(
    addr: SocketAddr,
    status: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let (got, json) = api(addr, method, path, body)?;
    if got != status {
        return Err(format!("{method} {path}: {got} {json}"));
    }
    Ok(json)
}

/// The status of a 10-byte POST through a data plane.
fn probe(proxy: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(proxy).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn wait_for(proxy: SocketAddr, status: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if probe(proxy) == Some(status) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A control plane with one service (→ `upstream`), a catch-all route and a size limit.
fn setup(
    api_addr: SocketAddr,
    upstream: SocketAddr,
    name: &str,
) -> Result<(String, String), String> {
    let cp = expect(
        api_addr,
        201,
        "POST",
        "/v2/control-planes",
        Some(&json!({ "name": name })),
    )?;
    let id = cp["id"].as_str().unwrap_or_default().to_owned();
    let base = format!("/v2/control-planes/{id}/core-entities");
    expect(
        api_addr,
        201,
        "POST",
        &format!("{base}/services"),
        Some(&json!({ "name": "up", "url": format!("http://{upstream}") })),
    )?;
    expect(
        api_addr,
        201,
        "POST",
        &format!("{base}/services/up/routes"),
        Some(&json!({ "paths": ["/"] })),
    )?;
    let plugin = expect(
        api_addr,
        201,
        "POST",
        &format!("{base}/plugins"),
        Some(
            &json!({ "name": "request-size-limiting", "config": { "allowed_payload_size": 1, "size_unit": "kilobytes" } }),
        ),
    )?;
    Ok((
        id,
        format!(
            "{base}/plugins/{}",
            plugin["id"].as_str().unwrap_or_default()
        ),
    ))
}

/// Flips the limit `rounds` times and times each flip at `proxy`.
fn flips(
    api_addr: SocketAddr,
    plugin: &str,
    proxy: SocketAddr,
    rounds: usize,
) -> Result<Vec<f64>, String> {
    wait_for(proxy, 200, Duration::from_secs(60))
        .ok_or("the data plane never served the configuration")?;
    let mut samples = Vec::new();
    for round in 0..rounds {
        let (size, unit, status) = if round % 2 == 0 {
            (1, "bytes", 413)
        } else {
            (1, "kilobytes", 200)
        };
        expect(
            api_addr,
            200,
            "PATCH",
            plugin,
            Some(&json!({ "config": { "allowed_payload_size": size, "size_unit": unit } })),
        )?;
        let took = wait_for(proxy, status, Duration::from_secs(10))
            .ok_or("a change was not enforced within 10 s")?;
        samples.push(took.as_secs_f64() * 1e3);
    }
    Ok(samples)
}

fn gateway_propagation(
    api_addr: SocketAddr,
    cluster: SocketAddr,
    dir: &Path,
    id: &str,
    plugin: &str,
    ca: &str,
    rounds: usize,
) -> Result<Vec<f64>, String> {
    let (cert, key) = control_plane::pki::client_certificate("bench-gateway")?;
    expect(
        api_addr,
        201,
        "POST",
        &format!("/v2/control-planes/{id}/dp-client-certificates"),
        Some(&json!({ "cert": cert })),
    )?;
    for (file, text) in [
        ("dp.crt", cert.as_str()),
        ("dp.key", key.as_str()),
        ("ca.crt", ca),
    ] {
        std::fs::write(dir.join(file), text).map_err(|e| e.to_string())?;
    }
    let binary = std::env::var_os("WASMGATE_GATEWAY").ok_or("WASMGATE_GATEWAY is not set")?;
    let proxy = free_port();
    let child = crate::proxies::gateway_command(std::path::Path::new(&binary))?
        .args([
            "run",
            "--no-access-log",
            "--admin-listen",
            "127.0.0.1:0",
            "--listen",
            &proxy.to_string(),
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
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("gateway: {e}"))?;
    let _gateway = Killed(child);
    flips(api_addr, plugin, proxy, rounds)
}

fn envoy_propagation(
    api_addr: SocketAddr,
    id: &str,
    plugin: &str,
    dir: &Path,
    rounds: usize,
) -> Result<Vec<f64>, String> {
    let listen = free_port();
    let bootstrap = expect(
        api_addr,
        201,
        "POST",
        &format!("/v2/control-planes/{id}/envoy-bootstrap"),
        Some(&json!({ "node_id": "bench-envoy", "listen": listen.to_string() })),
    )?;
    let path = dir.join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).map_err(|e| e.to_string())?;
    let binary = std::env::var_os("WASMGATE_ENVOY").ok_or("WASMGATE_ENVOY is not set")?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("Envoy: {e}"))?;
    let _envoy = Killed(child);
    flips(api_addr, plugin, listen, rounds)
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `connections` simulated gateways; `rounds` changes, each timed until all have it.
async fn fanout(
    state: Arc<control_plane::State>,
    api_addr: SocketAddr,
    id: &str,
    plugin: &str,
    connections: usize,
    rounds: usize,
) -> Result<Fanout, String> {
    let (cert, key) = control_plane::pki::client_certificate("bench-fanout")?;
    expect(
        api_addr,
        201,
        "POST",
        &format!("/v2/control-planes/{id}/dp-client-certificates"),
        Some(&json!({ "cert": cert })),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(state.identity.ca_pem.as_bytes()).flatten() {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let modules: Vec<ModuleInfo> = state
        .modules
        .iter()
        .map(|m| ModuleInfo {
            file: m.file.clone(),
            sha256: m.sha256.clone(),
        })
        .collect();
    let cluster = state.endpoints.cluster;
    let rss_before = rss_mib();
    let started = Instant::now();
    let (versions_tx, mut versions_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut failed = 0;
    let mut tasks = Vec::new();
    for chunk in (0..connections).collect::<Vec<_>>().chunks(100) {
        let mut connecting = Vec::new();
        for &n in chunk {
            let connector = connector.clone();
            let modules = modules.clone();
            connecting.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(cluster)
                    .await
                    .map_err(|e| e.to_string())?;
                let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                let (mut socket, _) =
                    tokio_tungstenite::client_async(format!("wss://{cluster}{PATH}"), tls)
                        .await
                        .map_err(|e| e.to_string())?;
                let hello = Inbound::BasicInfo {
                    node_id: format!("sim-{n}"),
                    hostname: "bench".into(),
                    version: "bench".into(),
                    control_plane_id: None,
                    plugins: Vec::new(),
                    modules,
                    config_hash: None,
                };
                let text = serde_json::to_string(&hello).map_err(|e| e.to_string())?;
                socket
                    .send(Message::text(text))
                    .await
                    .map_err(|e| e.to_string())?;
                // The current version arrives first.
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(Outbound::Reconfigure {
                                config_version,
                                config_hash,
                                ..
                            }) = serde_json::from_str(&text)
                            {
                                let applied = serde_json::to_string(&Inbound::Applied {
                                    config_version,
                                    config_hash,
                                })
                                .map_err(|e| e.to_string())?;
                                socket
                                    .send(Message::text(applied))
                                    .await
                                    .map_err(|e| e.to_string())?;
                                return Ok::<_, String>(socket);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return Err("closed before the first version".to_owned()),
                    }
                }
            }));
        }
        for connected in connecting {
            match connected.await {
                Ok(Ok(mut socket)) => {
                    let versions = versions_tx.clone();
                    tasks.push(tokio::spawn(async move {
                        while let Some(Ok(message)) = socket.next().await {
                            if let Message::Text(text) = message {
                                if let Ok(Outbound::Reconfigure {
                                    config_version,
                                    config_hash,
                                    ..
                                }) = serde_json::from_str(&text)
                                {
                                    let _ = versions.send((config_version, Instant::now()));
                                    if let Ok(applied) = serde_json::to_string(&Inbound::Applied {
                                        config_version,
                                        config_hash,
                                    }) {
                                        let _ = socket.send(Message::text(applied)).await;
                                    }
                                }
                            }
                        }
                    }));
                }
                _ => failed += 1,
            }
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = connections - failed;
    let rss_mib_per_1k = match (rss_before, rss_mib()) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after - before) * 1000.0 / connected as f64)
        }
        _ => None,
    };
    let mut results = Vec::new();
    let mut missed = 0;
    for round in 0..rounds {
        let (size, unit) = if round % 2 == 0 {
            (1, "bytes")
        } else {
            (1, "kilobytes")
        };
        let body = json!({ "config": { "allowed_payload_size": size, "size_unit": unit } });
        let plugin_path = plugin.to_owned();
        let answered = tokio::task::spawn_blocking(move || {
            expect(api_addr, 200, "PATCH", &plugin_path, Some(&body)).map(|_| Instant::now())
        })
        .await
        .map_err(|e| e.to_string())??;
        let version = state.hub.current(id).map_or(0, |v| v.version);
        let mut delays = Vec::with_capacity(connected);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while delays.len() < connected {
            match tokio::time::timeout_at(deadline, versions_rx.recv()).await {
                Ok(Some((v, at))) if v == version => {
                    delays.push(at.saturating_duration_since(answered).as_secs_f64() * 1e3)
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        delays.sort_by(f64::total_cmp);
        results.push((
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.last().copied().unwrap_or(f64::NAN),
        ));
        missed += connected - delays.len();
    }
    for task in tasks {
        task.abort();
    }
    Ok(Fanout {
        connections,
        connect_seconds,
        rss_mib_per_1k,
        rounds: results,
        refused: failed,
        missed,
    })
}

pub fn measure(quick: bool) -> Result<Figures, String> {
    let dir = std::env::temp_dir().join(format!("wasmgate-bench-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let control = control_plane::ControlPlane::start(control_plane::Options {
        listen: any,
        cluster_listen: any,
        xds_listen: any,
        data_dir: dir.join("data"),
        token: Some(TOKEN.into()),
        modules_dir: wasmgate_tests::paths::wasm_dir(),
        ..control_plane::Options::default()
    })?;
    let endpoints = control.endpoints();
    let upstream = crate::upstream::start(None);
    let rounds = if quick { 6 } else { 20 };
    let ca = control.state().identity.ca_pem.clone();
    let mut propagation = Vec::new();
    for plane in ["gateway", "Envoy"] {
        let result = setup(endpoints.api, upstream, plane).and_then(|(id, plugin)| {
            let plane_dir = dir.join(plane);
            std::fs::create_dir_all(&plane_dir).map_err(|e| e.to_string())?;
            if plane == "gateway" {
                gateway_propagation(
                    endpoints.api,
                    endpoints.cluster,
                    &plane_dir,
                    &id,
                    &plugin,
                    &ca,
                    rounds,
                )
            } else {
                envoy_propagation(endpoints.api, &id, &plugin, &plane_dir, rounds)
            }
        });
        eprintln!(
            "bench: control plane → {plane}: {}",
            result
                .as_ref()
                .map_or_else(|e| e.clone(), |s| format!("{} changes", s.len()))
        );
        propagation.push(match result {
            Ok(samples) => Propagation {
                plane,
                samples,
                note: None,
            },
            Err(e) => Propagation {
                plane,
                samples: Vec::new(),
                note: Some(e),
            },
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sizes: &[usize] = if quick { &[1000] } else { &[1000, 5000] };
    let mut fanouts = Vec::new();
    for &n in sizes {
        let (id, plugin) = setup(endpoints.api, upstream, &format!("fanout-{n}"))?;
        let state = Arc::clone(control.state());
        let result = runtime.block_on(fanout(
            state,
            endpoints.api,
            &id,
            &plugin,
            n,
            if quick { 3 } else { 5 },
        ));
        match result {
            Ok(f) => fanouts.push(f),
            Err(e) => eprintln!("bench: {n} simulated gateways: {e}"),
        }
        expect(
            endpoints.api,
            204,
            "DELETE",
            &format!("/v2/control-planes/{id}"),
            None,
        )?;
    }
    drop(runtime);
    control.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Figures {
        propagation,
        fanout: fanouts,
    })
}

pub fn section(figures: &Result<Figures, String>) -> String {
    let mut out = String::from("### Control plane: from an API call to enforcement\n\n");
    let figures = match figures {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}\n");
            return out;
        }
    };
    out.push_str(
        "A `PATCH` of a request-size-limiting plugin flips its limit between 1 byte and 1 KiB; \
         a 10-byte POST probes the data plane every 2 ms until its answer flips (413 ↔ 200). \
         Time from the API's answer (the change is committed to SQLite) to the first flipped \
         answer. One control plane in the bench process; the data planes are real processes.\n\n\
         | data plane | changes | p50 | p99 | max |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for p in &figures.propagation {
        let mut sorted = p.samples.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            let _ = writeln!(out, "| {} | 0 | — | — | — |", p.plane);
        } else {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                p.plane,
                sorted.len(),
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.99),
                sorted[sorted.len() - 1]
            );
        }
        if let Some(note) = &p.note {
            let _ = writeln!(out, "\n{}: {note}\n", p.plane);
        }
    }
    out.push_str(
        "\n### Control plane: simulated gateways on one control plane\n\n\
         Real WebSocket clients over mutual TLS speaking the sync protocol, in the bench process \
         next to the control plane (both share the 2 cores). Each change: time from the API's \
         answer until each connection received the new version.\n\n\
         | connections | connected in | not connected | RSS per 1,000 (both ends) | change → all: p50 / p99 / max per round | missed deliveries |\n\
         | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for f in &figures.fanout {
        let rounds: Vec<String> = f
            .rounds
            .iter()
            .map(|(p50, p99, max)| format!("{p50:.0} / {p99:.0} / {max:.0} ms"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {} | {} | {} |",
            f.connections,
            f.connect_seconds,
            f.refused,
            f.rss_mib_per_1k
                .map_or("—".into(), |m| format!("{m:.1} MiB")),
            rounds.join("; "),
            f.missed
        );
    }
    out.push('\n');
    out
}
