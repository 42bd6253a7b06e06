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
        declarative: String,
    },
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

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn module(plugin: &str) -> PathBuf {
    paths::wasm_dir().join(format!("{}.wasm", plugin.replace('-', "_")))
}

/// Our three plugins with the seed's settings; a module not built yet is left out and named.
fn wasm_plugins() -> (Vec<WasmFilter>, Option<String>) {
    let wanted = [
        ("request-size-limiting", json!({"allowed_payload_size": 10})),
        (
            "rate-limiting",
            json!({"second": 1_000_000_000, "limit_by": "service"}),
        ),
        (
            "request-transformer",
            json!({"replace": {"headers": [format!("authorization:{SECRET}")]}, "add": {"headers": [format!("authorization:{SECRET}")]}}),
        ),
    ];
    let mut filters = Vec::new();
    let mut missing = Vec::new();
    for (plugin, config) in wanted {
        let path = module(plugin);
        if path.is_file() {
            filters.push(WasmFilter {
                plugin: plugin.into(),
                module: path,
                config,
                vm_id: plugin.into(),
                env: Vec::new(),
            });
        } else {
            missing.push(plugin);
        }
    }
    let note =
        (!missing.is_empty()).then(|| format!("without {} (module not built)", missing.join(", ")));
    (filters, note)
}

fn native_filters() -> Vec<Value> {
    vec![
        json!({"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": 10_485_760}}),
        json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}}}}),
        json!({"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "authorization", "value": SECRET},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}}),
    ]
}

fn gateway_declarative(upstream: SocketAddr, plugins: bool) -> String {
    let mut text = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: bench\n    url: http://{upstream}\n    routes: [{{name: bench, paths: [/]}}]\n"
    );
    if plugins {
        text.push_str(&format!(
            "plugins:\n  - {{name: request-size-limiting, config: {{allowed_payload_size: 10}}}}\n  \
             - {{name: rate-limiting, config: {{second: 1000000000, limit_by: service}}}}\n  \
             - {{name: request-transformer, config: {{replace: {{headers: [\"authorization:{SECRET}\"]}}, add: {{headers: [\"authorization:{SECRET}\"]}}}}}}\n"
        ));
    }
    text
}

pub fn scenarios() -> Vec<Scenario> {
    let (wasm, missing) = wasm_plugins();
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
                wasm,
            },
            note: missing.clone(),
        },
        Scenario {
            name: "gateway, no plugins".into(),
            kind: Kind::Gateway {
                declarative: String::new(),
            },
            note: None,
        },
        Scenario {
            name: "gateway, wasmgate plugins".into(),
            kind: Kind::Gateway {
                declarative: "plugins".into(),
            },
            note: missing,
        },
    ]
}

/// The gateway binary `cargo xtask bench` built.
fn gateway_binary() -> Result<PathBuf, String> {
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

fn pin_process(pid: u32, core: usize) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts `gateway run` on a free port; returns when it answers.
pub fn start_gateway(declarative: &str, core: usize) -> Result<(Running, Duration), String> {
    let binary = gateway_binary()?;
    let dir = std::env::temp_dir().join(format!("wasmgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("kong.yaml");
    std::fs::write(&file, declarative).map_err(|e| format!("{}: {e}", file.display()))?;
    let (listen, admin) = (free_port()?, free_port()?);
    let started = Instant::now();
    let child = Command::new("taskset")
        .args(["-c", &core.to_string()])
        .arg(&binary)
        .args(["run", "--workers", "1", "--no-access-log", "--config"])
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
                let mut config = EnvoyConfig::new(upstream)
                    .concurrency(1)
                    .listener("bench", wasm.clone());
                config.listeners[0].native_filters = native.clone();
                let envoy = Envoy::start(&config).await?;
                pin_process(envoy.pid(), core);
                Ok(Running {
                    addr: envoy.listener("bench"),
                    pid: envoy.pid(),
                    _envoy: Some(envoy),
                    child: None,
                })
            }
            Kind::Gateway { declarative } => {
                let text = gateway_declarative(upstream, !declarative.is_empty());
                start_gateway(&text, core).map(|(running, _)| running)
            }
        }
    }

    pub fn workload(&self, base: &Workload) -> Workload {
        base.clone()
    }
}

/// User and system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
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
pub async fn body_size_runs(
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Vec<(usize, String, f64)> {
    let mut rows = Vec::new();
    let sizes = [0usize, 16 << 10, 1 << 20, 10 << 20];
    let duration = timing.closed.min(Duration::from_secs(3));
    let size_limit = module("request-size-limiting");
    let mut planes: Vec<(String, Result<Running, String>)> = Vec::new();
    if size_limit.is_file() {
        let filter =
            WasmFilter::plugin("request-size-limiting", json!({"allowed_payload_size": 10}));
        let mut config = EnvoyConfig::new(upstream)
            .concurrency(1)
            .listener("bench", vec![filter]);
        config.listeners[0].native_filters = Vec::new();
        let envoy = Envoy::start(&config).await.map(|envoy| {
            pin_process(envoy.pid(), core);
            Running {
                addr: envoy.listener("bench"),
                pid: envoy.pid(),
                _envoy: Some(envoy),
                child: None,
            }
        });
        planes.push(("Envoy + request-size-limiting (V8)".into(), envoy));
    }
    let text = format!(
        "{}plugins:\n  - {{name: request-size-limiting, config: {{allowed_payload_size: 10}}}}\n",
        gateway_declarative(upstream, false)
    );
    planes.push((
        "gateway + request-size-limiting".into(),
        start_gateway(&text, core).map(|(r, _)| r),
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

/// Module sizes and the gateway's cold start.
pub async fn wasm_specifics() -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for plugin in [
        "request-size-limiting",
        "rate-limiting",
        "request-transformer",
    ] {
        if let Ok(meta) = std::fs::metadata(module(plugin)) {
            rows.push((
                format!("{plugin}.wasm size"),
                format!("{:.1} KiB", meta.len() as f64 / 1024.0),
            ));
        }
    }
    let upstream = crate::upstream::start(None);
    let mut starts: Vec<Duration> = Vec::new();
    for _ in 0..3 {
        if let Ok((running, took)) = start_gateway(&gateway_declarative(upstream, true), 0) {
            starts.push(took);
            drop(running);
        }
    }
    starts.sort();
    if let Some(median) = starts.get(starts.len() / 2) {
        rows.push((
            "gateway cold start to first response (3 plugins, median of 3)".into(),
            format!("{:.1} ms", median.as_secs_f64() * 1000.0),
        ));
    }
    rows
}
