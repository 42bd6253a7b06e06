//! rate-limiting's `policy: redis` (README, "policy: redis"): what counting in Redis adds to a
//! request, against `policy: local`, and how exactly data planes sharing one limit in Redis
//! hold it under overload.
//!
//! Latency: one `gateway` (the service in-process) and one Envoy (with `wasmgate-ratelimit`
//! beside it) per policy, every proxy and service on the proxy core, Redis and the client on
//! the client core; one keep-alive connection in series (what a request pays, not
//! throughput), the four taking turns in short rounds so that the machine's drift falls on
//! all alike. The limit never refuses: every request runs the whole count.
//!
//! Accuracy: 2 gateways and 1 Envoy (2 workers) share `second: 100` in one Redis, offered 4×
//! that between them; the counting upstream gives the requests admitted per aligned second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmgate_tests::Envoy;

use crate::load::{self, Outcome, Workload};
use crate::proxies::{self, cpu_ns, Running};
use crate::ratelimit::{self, AccuracyRun, LIMIT, OVERLOAD};
use crate::{client_core, upstream, Timing};

/// Connections of the busy part of each turn, where CPU per request is taken.
pub const CPU_CONNECTIONS: usize = 16;

/// A limit no run reaches: every request is counted and admitted.
const UNREACHED: u64 = 1_000_000_000;

/// One data plane and policy of the latency runs, over all rounds.
#[derive(Debug)]
pub struct LatencyRow {
    pub plane: &'static str,
    pub policy: &'static str,
    /// Answered one at a time (the latency figures).
    pub requests: u64,
    /// Answered per second at [`CPU_CONNECTIONS`] (the CPU figures).
    pub busy_rps: f64,
    pub not_ok: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The proxy's CPU per request (the gateway's includes its in-process service).
    pub proxy_cpu_us: Option<f64>,
    /// `wasmgate-ratelimit`'s (Envoy) and Redis's CPU per request.
    pub service_cpu_us: Option<f64>,
    pub redis_cpu_us: Option<f64>,
}

#[derive(Debug)]
pub struct Figures {
    pub latency: Result<Vec<LatencyRow>, String>,
    /// The shared-limit run, also in the accuracy table.
    pub accuracy: Option<AccuracyRun>,
    pub rounds: usize,
    pub round: Duration,
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// Debian's `redis-server` on a free loopback port, without persistence, on `core`.
fn start_redis(core: Option<usize>) -> Result<(Process, u16), String> {
    // taskset would start, and fail to run a missing redis-server.
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
    let port = free_port()?;
    let dir = proxies::scratch_dir().join(format!("redis-{port}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let child = Command::new("taskset")
        .args(["-c", &proxies::cpu_list(core)])
        .arg("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (apt-get install redis-server): {e}"))?;
    let redis = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut answer = [0u8; 5];
            s.read_exact(&mut answer)?;
            Ok(answer == *b"+PONG")
        });
        if matches!(pong, Ok(true)) {
            return Ok((redis, port));
        }
        if Instant::now() > deadline {
            return Err("redis-server did not answer PING within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wasmgate-ratelimit` (built beside the gateway by `cargo xtask bench`) for Redis on
/// `redis`, on `core`; returns when it accepts connections.
fn start_service(redis: u16, core: Option<usize>) -> Result<(Process, SocketAddr), String> {
    let binary = proxies::gateway_binary()?
        .parent()
        .map(|dir| dir.join("wasmgate-ratelimit"))
        .filter(|b| b.is_file())
        .ok_or("wasmgate-ratelimit is not built beside the gateway")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let child = Command::new("taskset")
        .args(["-c", &proxies::cpu_list(core)])
        .arg(&binary)
        .args(["--listen", &listen.to_string()])
        .args([
            "--redis-host",
            "127.0.0.1",
            "--redis-port",
            &redis.to_string(),
        ])
        .args(["--redis-timeout", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let service = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline {
            return Err("wasmgate-ratelimit did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((service, listen))
}

/// A Kong file with one service before `upstream` and one global rate-limiting plugin with
/// `config`, whose `id` names its counters: proxies given the same id share them.
fn declarative(upstream: SocketAddr, id: &str, config: &Value) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n  - name: bench\n    url: http://{upstream}\n    \
         routes: [{{name: bench, paths: [/]}}]\nplugins:\n  - {}\n",
        json!({ "id": id, "name": "rate-limiting", "config": config })
    )
}

fn config(limit: u64, limit_by: &str, redis: Option<u16>) -> Value {
    let mut config = json!({ "second": limit, "limit_by": limit_by });
    if let Some(port) = redis {
        config["policy"] = json!("redis");
        config["redis"] = json!({ "host": "127.0.0.1", "port": port, "timeout": 1000 });
    }
    config
}

/// Envoy from `gateway envoy-bootstrap` (the translation users run), with the rate-limit
/// service's cluster when given one, `workers` workers on `core`.
async fn start_envoy(
    declarative: &str,
    service: Option<SocketAddr>,
    workers: u32,
    core: Option<usize>,
) -> Result<Running, String> {
    let dir = proxies::scratch_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let n = free_port()?;
    let (config, out) = (
        dir.join(format!("redis-{n}.yaml")),
        dir.join(format!("redis-{n}.json")),
    );
    std::fs::write(&config, declarative).map_err(|e| format!("{}: {e}", config.display()))?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut command = proxies::gateway_command(&proxies::gateway_binary()?)?;
    command
        .arg("envoy-bootstrap")
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()]);
    if let Some(service) = service {
        command.args(["--ratelimit-address", &service.to_string()]);
    }
    let made = command
        .output()
        .map_err(|e| format!("gateway envoy-bootstrap: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "gateway envoy-bootstrap: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let bootstrap: Value = serde_json::from_str(&text).map_err(|e| format!("bootstrap: {e}"))?;
    let envoy = Envoy::start_bootstrap(&bootstrap, workers).await?;
    proxies::pin_process(envoy.pid(), core);
    Ok(Running::envoy(listen, envoy))
}

fn start_gateway(
    declarative: &str,
    workers: usize,
    core: Option<usize>,
) -> Result<Running, String> {
    proxies::start_gateway(declarative, core, workers).map(|(running, _)| running)
}

/// The latency leg: `(plane, policy, proxy, its service)` in turns.
fn latency(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    redis: (u16, u32),
    core: usize,
    timing: Timing,
    rounds: usize,
    round: Duration,
) -> Result<Vec<LatencyRow>, String> {
    let (redis_port, redis_pid) = redis;
    let (service, service_addr) = start_service(redis_port, Some(core))?;
    let local = config(UNREACHED, "service", None);
    let shared = config(UNREACHED, "service", Some(redis_port));
    let id = |n: u8| format!("7e1a0000-0000-4000-8000-00000000000{n}");
    let legs: Vec<(&'static str, &'static str, Running, Option<u32>)> = vec![
        (
            "gateway",
            "local",
            start_gateway(&declarative(upstream, &id(1), &local), 1, Some(core))?,
            None,
        ),
        (
            "gateway",
            "redis",
            start_gateway(&declarative(upstream, &id(2), &shared), 1, Some(core))?,
            None,
        ),
        (
            "Envoy (V8)",
            "local",
            runtime.block_on(start_envoy(
                &declarative(upstream, &id(3), &local),
                None,
                1,
                Some(core),
            ))?,
            None,
        ),
        (
            "Envoy (V8)",
            "redis",
            runtime.block_on(start_envoy(
                &declarative(upstream, &id(4), &shared),
                Some(service_addr),
                1,
                Some(core),
            ))?,
            Some(service.0.id()),
        ),
    ];
    let workload = Workload::get("/bench");
    for (_, _, running, _) in &legs {
        load::closed_loop(running.addr, &workload, 1, timing.warmup, client_core());
    }
    let mut outcomes: Vec<Option<Outcome>> = legs.iter().map(|_| None).collect();
    // CPU of the proxy, of its service and of Redis, and the requests answered, during each
    // one's busy part of its turns.
    let mut cpu = vec![([0u64; 3], 0u64, Duration::ZERO); legs.len()];
    for _ in 0..rounds {
        for (i, (_, policy, running, service)) in legs.iter().enumerate() {
            // Latency: one request at a time.
            let outcome = load::closed_loop(running.addr, &workload, 1, round, client_core());
            // CPU per request: busy, as the other CPU figures of this page (at one request
            // at a time a proxy's fixed wake-ups would weigh on each request).
            let redis_pid = (*policy == "redis").then_some(redis_pid);
            let pids = [Some(running.pid), *service, redis_pid];
            let before = pids.map(|p| p.and_then(cpu_ns));
            let busy = load::closed_loop(
                running.addr,
                &workload,
                CPU_CONNECTIONS,
                round / 2,
                client_core(),
            );
            let after = pids.map(|p| p.and_then(cpu_ns));
            for k in 0..3 {
                if let (Some(b), Some(a)) = (before[k], after[k]) {
                    cpu[i].0[k] += a.saturating_sub(b);
                }
            }
            cpu[i].1 += busy.ok;
            cpu[i].2 += busy.elapsed;
            match &mut outcomes[i] {
                Some(total) => {
                    total.ok += outcome.ok;
                    total.errors += outcome.errors;
                    for (status, n) in &outcome.statuses {
                        *total.statuses.entry(*status).or_insert(0) += n;
                    }
                    let _ = total.latency.add(&outcome.latency);
                }
                None => outcomes[i] = Some(outcome),
            }
        }
    }
    let rows = legs
        .iter()
        .zip(outcomes)
        .zip(cpu)
        .filter_map(|(((plane, policy, _, service), outcome), (cpu, busy, elapsed))| {
            let outcome = outcome?;
            let per_request = |ns: u64| (busy > 0).then(|| ns as f64 / 1e3 / busy as f64);
            let row = LatencyRow {
                plane,
                policy,
                requests: outcome.ok,
                busy_rps: busy as f64 / elapsed.as_secs_f64().max(1e-9),
                not_ok: crate::not_ok(&outcome),
                p50_ms: outcome.percentile_ms(0.5),
                p99_ms: outcome.percentile_ms(0.99),
                proxy_cpu_us: per_request(cpu[0]),
                service_cpu_us: service.and_then(|_| per_request(cpu[1])),
                redis_cpu_us: (*policy == "redis").then(|| per_request(cpu[2])).flatten(),
            };
            eprintln!(
                "  {plane}, policy {policy}: p50 {:.3} ms, p99 {:.3} ms, {:.1} µs CPU/req, {} not 200",
                row.p50_ms,
                row.p99_ms,
                row.proxy_cpu_us.unwrap_or(0.0),
                row.not_ok
            );
            Some(row)
        })
        .collect();
    drop(legs);
    drop(service);
    Ok(rows)
}

/// The accuracy leg: 2 gateways and 1 Envoy (2 workers) sharing `second: LIMIT` in Redis,
/// `OVERLOAD`× the limit offered in equal parts to the three.
fn accuracy(
    runtime: &tokio::runtime::Runtime,
    redis: u16,
    duration: Duration,
) -> Result<AccuracyRun, String> {
    let (upstream, counts) = upstream::start_counting(client_core());
    let (_service, service_addr) = start_service(redis, None)?;
    // One plugin id on the three: one budget in Redis.
    let file = declarative(
        upstream,
        "7e1a0000-0000-4000-8000-000000000100",
        &config(LIMIT, "ip", Some(redis)),
    );
    let proxies = [
        start_gateway(&file, 1, None)?,
        start_gateway(&file, 1, None)?,
        runtime.block_on(start_envoy(&file, Some(service_addr), 2, None))?,
    ];
    let mut run = AccuracyRun {
        plane: "policy: redis, 2 gateways + 1 Envoy sharing one limit",
        ours: true,
        workers: 4,
        offered_rps: 0.0,
        seconds: Vec::new(),
        ok: 0,
        limited: 0,
        other: 0,
        error: None,
    };
    ratelimit::align_to_second();
    if let Ok(mut counts) = counts.lock() {
        counts.clear();
    }
    let started = ratelimit::now_secs();
    let rate = LIMIT as f64 * OVERLOAD / proxies.len() as f64;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let loads: Vec<_> = proxies
            .iter()
            .map(|proxy| {
                let addr = proxy.addr;
                scope.spawn(move || {
                    load::open_loop(
                        addr,
                        &Workload::get("/limited"),
                        rate,
                        6,
                        duration,
                        client_core(),
                    )
                })
            })
            .collect();
        loads.into_iter().filter_map(|l| l.join().ok()).collect()
    });
    let ended = ratelimit::now_secs();
    drop(proxies);
    run.record(&outcomes, duration, &counts, (started, ended));
    eprintln!(
        "  {}: {:?} per second, {} × 429, {} other",
        run.plane, run.seconds, run.limited, run.other
    );
    Ok(run)
}

/// Both legs; what could not run says why.
pub fn measure(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Figures {
    let (rounds, round) = (
        timing.rounds.min(3),
        timing.round.min(Duration::from_secs(1)),
    );
    let mut figures = Figures {
        latency: Err("not measured".into()),
        accuracy: None,
        rounds,
        round,
    };
    if !proxies::module("rate-limiting").is_file() {
        figures.latency = Err("not measured: the rate-limiting module is not built".into());
        return figures;
    }
    let (redis, port) = match start_redis(client_core()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("bench: policy: redis: skipped: {e}");
            figures.latency = Err(format!("not measured: {e}"));
            return figures;
        }
    };
    figures.latency = latency(
        runtime,
        upstream,
        (port, redis.0.id()),
        core,
        timing,
        rounds,
        round,
    );
    if let Err(e) = &figures.latency {
        eprintln!("bench: policy: redis latency: {e}");
    }
    figures.accuracy = match accuracy(runtime, port, timing.rate_limit) {
        Ok(run) => Some(run),
        Err(e) => {
            eprintln!("bench: policy: redis accuracy: {e}");
            Some(AccuracyRun {
                plane: "policy: redis, 2 gateways + 1 Envoy sharing one limit",
                ours: true,
                workers: 4,
                offered_rps: 0.0,
                seconds: Vec::new(),
                ok: 0,
                limited: 0,
                other: 0,
                error: Some(format!("not measured: {e}")),
            })
        }
    };
    drop(redis);
    figures
}
