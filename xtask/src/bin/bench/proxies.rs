//! The data planes under test, each started pinned to the proxy core and stopped by PID.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmgate_tests::{paths, Envoy, EnvoyConfig, WasmFilter};

use crate::load::{self, Workload};
use crate::{client_core, Timing};

/// The secret the transform injects, as the seed does.
const SECRET: &str = "Bearer s3cret-token";

pub enum Kind {
    Envoy {
        native: Vec<Value>,
        wasm: Vec<WasmFilter>,
    },
    Gateway {
        plugins: Vec<(&'static str, Value)>,
    },
    /// Cannot run here: why.
    Missing(String),
}

pub struct Scenario {
    pub name: String,
    pub kind: Kind,
    pub note: Option<String>,
}

/// A started data plane; stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub pid: u32,
    _envoy: Option<Envoy>,
    child: Option<Child>,
}

impl Running {
    /// An Envoy started elsewhere, listening on `addr`.
    pub fn envoy(addr: SocketAddr, envoy: Envoy) -> Running {
        Running {
            addr,
            pid: envoy.pid(),
            _envoy: Some(envoy),
            child: None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn module(plugin: &str) -> PathBuf {
    paths::wasm_dir().join(format!("{}.wasm", plugin.replace('-', "_")))
}

/// The folder of our plugins built at opt-level "z" (`cargo xtask bench` builds them there with
/// the `wasm-small` profile), when it holds all three.
pub fn small_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("WASMGATE_WASM_SMALL_DIR")
        .map(PathBuf::from)
        .ok_or("WASMGATE_WASM_SMALL_DIR is not set (`cargo xtask bench` sets it)")?;
    match plugin_configs()
        .iter()
        .map(|(plugin, _)| small_module(&dir, plugin))
        .find(|module| !module.is_file())
    {
        Some(missing) => Err(format!("{} is missing", missing.display())),
        None => Ok(dir),
    }
}

pub fn small_module(dir: &std::path::Path, plugin: &str) -> PathBuf {
    dir.join(format!("{}.wasm", plugin.replace('-', "_")))
}

/// The empty proxy-wasm filter (`tests/modules/empty-filter`): every callback continues.
pub fn empty_module() -> PathBuf {
    paths::wasm_dir().join("wasmgate_empty_filter.wasm")
}

/// Three instances of the empty filter, each with a root_id and vm_id of its own as our three
/// plugins have, so V8 runs three VMs per worker for them as it does for ours.
pub fn empty_filters() -> Result<Vec<WasmFilter>, String> {
    let module = empty_module();
    if !module.is_file() {
        return Err(format!(
            "{} is missing (`cargo xtask build` builds it)",
            module.display()
        ));
    }
    Ok((1..=3)
        .map(|n| WasmFilter {
            plugin: format!("empty-{n}"),
            module: module.clone(),
            config: json!({}),
            vm_id: format!("empty-{n}"),
            env: Vec::new(),
            // As our plugins' filters are configured, so the two differ only in the module.
            allow_on_headers_stop_iteration: true,
        })
        .collect())
}

/// Our three plugins in chain order with the settings every run uses: a size limit (10 MB)
/// above any body sent, a rate limit that never triggers (one budget for the service, so the
/// full read-and-count path runs on every request), and the seed's header transform.
pub fn plugin_configs() -> [(&'static str, Value); 3] {
    [
        ("request-size-limiting", json!({"allowed_payload_size": 10})),
        (
            "rate-limiting",
            json!({"second": 1_000_000_000, "limit_by": "service"}),
        ),
        (
            "request-transformer",
            json!({"replace": {"headers": [format!("authorization:{SECRET}")]}, "add": {"headers": [format!("authorization:{SECRET}")]}}),
        ),
    ]
}

/// The first `n` of our plugins whose module is built; the note names any left out.
pub fn available_plugins(n: usize) -> (Vec<(&'static str, Value)>, Option<String>) {
    let (built, missing): (Vec<_>, Vec<_>) = plugin_configs()
        .into_iter()
        .take(n)
        .partition(|(plugin, _)| module(plugin).is_file());
    let names: Vec<&str> = missing.iter().map(|(plugin, _)| *plugin).collect();
    let note =
        (!names.is_empty()).then(|| format!("without {} (module not built)", names.join(", ")));
    (built, note)
}

/// The same plugins with rate-limiting's `X-RateLimit-*` and `RateLimit-*` response headers
/// hidden (Kong's `hide_client_headers`): it counts the same, and writes no header.
pub fn headers_hidden(plugins: &[(&'static str, Value)]) -> Vec<(&'static str, Value)> {
    plugins
        .iter()
        .map(|(plugin, config)| {
            let mut config = config.clone();
            if *plugin == "rate-limiting" {
                config["hide_client_headers"] = json!(true);
            }
            (*plugin, config)
        })
        .collect()
}

pub fn wasm_filters(plugins: &[(&'static str, Value)]) -> Vec<WasmFilter> {
    plugins
        .iter()
        .map(|(plugin, config)| WasmFilter::plugin(plugin, config.clone()))
        .collect()
}

pub fn native_filters() -> Vec<Value> {
    vec![
        json!({"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 10_485_760}}),
        local_ratelimit(1_000_000_000),
        json!({"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "authorization", "value": SECRET},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}}),
    ]
}

/// Envoy's native local rate limit: one token bucket of `per_second` tokens, refilled each
/// second, shared by the workers.
pub fn local_ratelimit(per_second: u64) -> Value {
    json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": per_second, "tokens_per_fill": per_second, "fill_interval": "1s"},
        "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}}})
}

/// A Kong declarative file: one service in front of `upstream`, `plugins` global. Each plugin
/// is written as a JSON flow mapping (YAML accepts JSON), so Envoy and the gateway get the
/// very same configuration values.
pub fn gateway_declarative(upstream: SocketAddr, plugins: &[(&str, Value)]) -> String {
    let mut text = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: bench\n    url: http://{upstream}\n    routes: [{{name: bench, paths: [/]}}]\n"
    );
    if !plugins.is_empty() {
        text.push_str("plugins:\n");
        for (plugin, config) in plugins {
            text.push_str(&format!(
                "  - {}\n",
                json!({"name": plugin, "config": config})
            ));
        }
    }
    text
}

pub fn scenarios() -> Vec<Scenario> {
    let (plugins, missing) = available_plugins(3);
    vec![
        Scenario {
            name: "Envoy, no filters".into(),
            kind: Kind::Envoy {
                native: vec![],
                wasm: vec![],
            },
            note: None,
        },
        Scenario {
            name: "Envoy, native filters (buffer, local_ratelimit, header_mutation)".into(),
            kind: Kind::Envoy {
                native: native_filters(),
                wasm: vec![],
            },
            note: None,
        },
        Scenario {
            name: "Envoy, wasmgate plugins (V8)".into(),
            kind: Kind::Envoy {
                native: vec![],
                wasm: wasm_filters(&plugins),
            },
            note: missing.clone(),
        },
        match empty_filters() {
            Ok(wasm) => Scenario {
                name: "Envoy, 3 empty proxy-wasm filters (V8)".into(),
                kind: Kind::Envoy {
                    native: vec![],
                    wasm,
                },
                note: None,
            },
            Err(e) => Scenario {
                name: "Envoy, 3 empty proxy-wasm filters (V8)".into(),
                kind: Kind::Missing(e),
                note: None,
            },
        },
        Scenario {
            name: "gateway, no plugins".into(),
            kind: Kind::Gateway { plugins: vec![] },
            note: None,
        },
        Scenario {
            name: "gateway, wasmgate plugins".into(),
            kind: Kind::Gateway { plugins },
            note: missing,
        },
    ]
}

/// The gateway binary `cargo xtask bench` built.
pub fn gateway_binary() -> Result<PathBuf, String> {
    std::env::var_os("WASMGATE_GATEWAY")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| "WASMGATE_GATEWAY does not name the gateway binary".to_owned())
}

fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("free port: {e}"))
}

/// `taskset`'s CPU list for a process on `core`, or on every core when `None`. Never left to
/// inheritance: a process inherits the affinity of the thread that starts it, and the load
/// generator pins the bench's main thread to the client core.
pub fn cpu_list(core: Option<usize>) -> String {
    match core {
        Some(core) => core.to_string(),
        None => format!("0-{}", crate::cores() - 1),
    }
}

/// Moves every thread of `pid` to `core` (every core when `None`).
pub fn pin_process(pid: u32, core: Option<usize>) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu_list(core), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// This bench process's scratch folder (declarative files, module caches); removed at its end.
pub fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("wasmgate-bench-{}", std::process::id()))
}

/// Writes a declarative file for one gateway. Each gateway gets a file of its own: a gateway
/// reloads when its file changes, so with one shared file every gateway still running took
/// the configuration of the last one started (both legs of the `policy: redis` latency table
/// ran `redis`, and showed no added latency).
fn declarative_file(declarative: &str) -> Result<PathBuf, String> {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.join(format!("kong-{n}.yaml"));
    std::fs::write(&file, declarative).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}

/// `gateway run`'s flag for its compiled-module cache folder.
pub const MODULE_CACHE_FLAG: &str = "--module-cache-dir";

/// `gateway` started in the bench's scratch folder: what it keeps relative to its working
/// directory by default (its module cache) stays out of the caller's.
pub fn gateway_command(binary: &std::path::Path) -> Result<Command, String> {
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut command = Command::new(binary);
    command.current_dir(dir);
    Ok(command)
}

/// `gateway validate` on a declarative file: the model's checks and every plugin's own
/// (`on_configure` in a throwaway instance). `Ok` holds what it printed.
pub fn validate_gateway(declarative: &str) -> Result<String, String> {
    let binary = gateway_binary()?;
    let file = declarative_file(declarative)?;
    let output = gateway_command(&binary)?
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    }
}

/// Starts `gateway run` on a free port with `workers` workers, pinned to `core` (every core
/// when `None`); returns when it answers, with the time that took.
pub fn start_gateway(
    declarative: &str,
    core: Option<usize>,
    workers: usize,
) -> Result<(Running, Duration), String> {
    start_gateway_with(declarative, core, workers, &[])
}

/// [`start_gateway`] with more arguments to `gateway run`.
pub fn start_gateway_with(
    declarative: &str,
    core: Option<usize>,
    workers: usize,
    extra: &[&std::ffi::OsStr],
) -> Result<(Running, Duration), String> {
    let binary = gateway_binary()?;
    let file = declarative_file(declarative)?;
    let (listen, admin) = (free_port()?, free_port()?);
    let started = Instant::now();
    // taskset execs the gateway, so the PID it gets is the gateway's own.
    let child = Command::new("taskset")
        .current_dir(scratch_dir())
        .args(["-c", &cpu_list(core)])
        .arg(&binary)
        .args(["run", "--workers", &workers.to_string(), "--no-access-log"])
        .args(extra)
        .arg("--config")
        .arg(&file)
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = child.id();
    let running = Running {
        addr: listen,
        pid,
        _envoy: None,
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if answers(listen) {
            return Ok((running, started.elapsed()));
        }
        if Instant::now() > deadline {
            return Err("gateway did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts Envoy with `concurrency` workers and one listener (`native` filters, then `wasm`
/// ones), pinned to `core` (every core when `None`).
pub async fn start_envoy(
    upstream: SocketAddr,
    concurrency: u32,
    native: Vec<Value>,
    wasm: Vec<WasmFilter>,
    core: Option<usize>,
) -> Result<Running, String> {
    let mut config = EnvoyConfig::new(upstream)
        .concurrency(concurrency)
        .listener("bench", wasm);
    config.listeners[0].native_filters = native;
    let envoy = Envoy::start(&config).await?;
    pin_process(envoy.pid(), core);
    Ok(Running {
        addr: envoy.listener("bench"),
        pid: envoy.pid(),
        _envoy: Some(envoy),
        child: None,
    })
}

/// Whether an HTTP server answers a GET on `addr` (blocking; used before the load starts).
fn answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

impl Scenario {
    pub async fn start(&self, upstream: SocketAddr, core: usize) -> Result<Running, String> {
        match &self.kind {
            Kind::Envoy { native, wasm } => {
                start_envoy(upstream, 1, native.clone(), wasm.clone(), Some(core)).await
            }
            Kind::Gateway { plugins } => {
                start_gateway(&gateway_declarative(upstream, plugins), Some(core), 1)
                    .map(|(running, _)| running)
            }
            Kind::Missing(why) => Err(why.clone()),
        }
    }
}

/// CPU time a process has run so far, in ns: the sum of its threads' schedstat (ns
/// resolution, where /proc/<pid>/stat counts 10 ms ticks).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// CPU µs per request between two `cpu_ns` readings.
pub fn cpu_us_per_request(before: Option<u64>, after: Option<u64>, requests: u64) -> Option<f64> {
    match (before, after) {
        (Some(before), Some(after)) if requests > 0 => {
            Some(after.saturating_sub(before) as f64 / 1e3 / requests as f64)
        }
        _ => None,
    }
}

pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// (body size, data plane, req/s) through the size limit.
///
/// Not async: the load generator runs its own runtime on this thread, so only the starts go
/// through `runtime`.
pub fn body_size_runs(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Vec<(usize, String, f64)> {
    let mut rows = Vec::new();
    let sizes = [0usize, 16 << 10, 1 << 20, 10 << 20];
    let duration = timing.closed.min(Duration::from_secs(3));
    let (size_limit, _) = available_plugins(1);
    let mut planes: Vec<(String, Result<Running, String>)> = Vec::new();
    if !size_limit.is_empty() {
        planes.push((
            "Envoy + request-size-limiting (V8)".into(),
            runtime.block_on(start_envoy(
                upstream,
                1,
                vec![],
                wasm_filters(&size_limit),
                Some(core),
            )),
        ));
    }
    planes.push((
        "gateway + request-size-limiting".into(),
        start_gateway(&gateway_declarative(upstream, &size_limit), Some(core), 1).map(|(r, _)| r),
    ));
    for (name, running) in planes {
        let Ok(running) = running else { continue };
        for size in sizes {
            let outcome = load::closed_loop(
                running.addr,
                &Workload::post("/body", size),
                4,
                duration,
                client_core(),
            );
            eprintln!("  {name}, {size} B: {:.0} req/s", outcome.rps());
            rows.push((size, name.clone(), outcome.rps()));
        }
    }
    rows
}

/// One point of the plugin-count runs.
#[derive(Debug)]
pub struct ChainPoint {
    pub plane: &'static str,
    pub plugins: usize,
    pub rps: f64,
    pub p99_ms: f64,
    pub cpu_us_per_request: Option<f64>,
    /// Answers other than 200 and failed exchanges: the runs must not trip any plugin.
    pub not_ok: u64,
}

/// Each data plane with the first 0, 1, 2 and 3 of our plugins (size limit, then the rate
/// limit, then the transform): closed loop at 16 connections, one worker on the proxy core.
pub fn plugin_count_runs(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Vec<ChainPoint> {
    let mut points = Vec::new();
    let workload = Workload::get("/bench");
    for n in 0..=3 {
        let (plugins, missing) = available_plugins(n);
        if missing.is_some() {
            continue;
        }
        let planes = [
            (
                "Envoy (V8)",
                runtime.block_on(start_envoy(
                    upstream,
                    1,
                    vec![],
                    wasm_filters(&plugins),
                    Some(core),
                )),
            ),
            (
                "gateway",
                start_gateway(&gateway_declarative(upstream, &plugins), Some(core), 1)
                    .map(|(r, _)| r),
            ),
        ];
        for (plane, running) in planes {
            let running = match running {
                Ok(running) => running,
                Err(e) => {
                    eprintln!("bench: {plane} with {n} plugins: skipped: {e}");
                    continue;
                }
            };
            load::closed_loop(running.addr, &workload, 16, timing.warmup, client_core());
            let before = cpu_ns(running.pid);
            let outcome =
                load::closed_loop(running.addr, &workload, 16, timing.chain, client_core());
            let cpu_us_per_request = cpu_us_per_request(before, cpu_ns(running.pid), outcome.ok);
            let point = ChainPoint {
                plane,
                plugins: n,
                rps: outcome.rps(),
                p99_ms: outcome.percentile_ms(0.99),
                cpu_us_per_request,
                not_ok: crate::not_ok(&outcome),
            };
            eprintln!(
                "  {plane}, {n} plugins: {:.0} req/s, {:.1} µs CPU/req, {} not 200",
                point.rps,
                point.cpu_us_per_request.unwrap_or(0.0),
                point.not_ok
            );
            points.push(point);
        }
    }
    points
}

#[cfg(test)]
mod tests {
    /// Two gateways alive at once keep their own configurations.
    #[test]
    fn every_gateway_gets_a_declarative_file_of_its_own() {
        let first = super::declarative_file("first").unwrap();
        let second = super::declarative_file("second").unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read_to_string(&first).unwrap(), "first");
        let _ = std::fs::remove_dir_all(super::scratch_dir());
    }
}
