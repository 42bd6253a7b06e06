//! Our modules in our own host (the `host` crate, as the gateway uses it): size, compile time
//! (Cranelift, no cache), instantiation time (a worker's instance: instantiate, `_initialize`,
//! `on_vm_start`, `on_configure`), and whether the configuration every run uses passes the
//! plugin's own validation, so no figure comes from a plugin that refused its settings. Also the
//! gateway's cold start to its first proxied response, with an empty and with a warm module
//! cache.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host::{Engine, EngineConfig, HostEnv, Plugin, PluginConfig, PluginModule};

use crate::proxies::{self, module, plugin_configs, MODULE_CACHE_FLAG};

pub struct ModuleFigures {
    pub plugin: &'static str,
    pub size_bytes: u64,
    /// The same plugin built at opt-level "z" (`wasm-small`), when built.
    pub small_size_bytes: Option<u64>,
    /// Median compile time.
    pub compile: Duration,
    /// Median time to a ready instance.
    pub instantiate: Duration,
    /// `Ok` when the bench's configuration passes the plugin's `on_configure`.
    pub validation: Result<(), String>,
}

const COMPILES: usize = 3;
const INSTANCES: usize = 21;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Measures every built plugin; a plugin whose module fails to load is named in `Err`.
pub fn measure() -> Vec<Result<ModuleFigures, String>> {
    let small_dir = proxies::small_dir().ok();
    // The gateway's engine configuration: pooling allocator, epoch interruption, no cache.
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(engine) => engine,
        Err(e) => return vec![Err(format!("wasm engine: {e}"))],
    };
    plugin_configs()
        .into_iter()
        .filter(|(plugin, _)| module(plugin).is_file())
        .map(|(plugin, config)| {
            let path = module(plugin);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut compiled = None;
            let mut compiles = Vec::new();
            for _ in 0..COMPILES {
                let started = Instant::now();
                let module = PluginModule::new(&engine, &bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                compiles.push(started.elapsed());
                compiled = Some(module);
            }
            let module = Arc::new(compiled.ok_or("no compile ran")?);
            let configured = Plugin::new(
                module,
                PluginConfig::new(plugin, config.to_string()),
                HostEnv::shared(),
            );
            let validation = configured.validate().map_err(|e| e.to_string());
            let mut instances = Vec::new();
            if validation.is_ok() {
                for _ in 0..INSTANCES {
                    let started = Instant::now();
                    let worker = configured.worker().map_err(|e| format!("{plugin}: {e}"))?;
                    instances.push(started.elapsed());
                    // Dropped after timing, so teardown is not counted and the pool slot
                    // is free for the next instance.
                    drop(worker);
                }
            }
            eprintln!(
                "  {plugin}: compile {:.1?}, instance {:.1?}, config {}",
                median(compiles.clone()),
                median(instances.clone()),
                if validation.is_ok() {
                    "valid"
                } else {
                    "refused"
                }
            );
            Ok(ModuleFigures {
                plugin,
                size_bytes: bytes.len() as u64,
                small_size_bytes: small_dir
                    .as_deref()
                    .and_then(|dir| std::fs::metadata(proxies::small_module(dir, plugin)).ok())
                    .map(|m| m.len()),
                compile: median(compiles),
                instantiate: median(instances),
                validation,
            })
        })
        .collect()
}

/// The gateway's start to its first proxied response with our three plugins, one worker on the
/// proxy core: compiling every module (`cold`, the module cache folder empty), and with that
/// folder as the first start left it (`warm`, median of 3).
pub struct ColdStart {
    pub cold: Result<Duration, String>,
    pub warm: Result<Duration, String>,
}

const WARM_STARTS: usize = 3;

pub fn cold_start(core: usize) -> ColdStart {
    let upstream = crate::upstream::start(None);
    let (plugins, _) = proxies::available_plugins(3);
    let declarative = proxies::gateway_declarative(upstream, &plugins);
    let start = |extra: &[&std::ffi::OsStr]| {
        proxies::start_gateway_with(&declarative, Some(core), 1, extra)
    };
    // Not there yet: the gateway creates it as it wants it (private to its user).
    let cache = proxies::scratch_dir().join("cold-start-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let args = [std::ffi::OsStr::new(MODULE_CACHE_FLAG), cache.as_os_str()];
    let cold = start(&args).map(|(running, took)| {
        // The gateway is killed, not drained: give it the time to finish writing the cache.
        settle(&cache);
        drop(running);
        took
    });
    let warm = cold.as_ref().map_err(Clone::clone).and_then(|_| {
        (0..WARM_STARTS)
            .map(|_| start(&args).map(|(_running, took)| took))
            .collect::<Result<Vec<_>, _>>()
            .map(median)
    });
    let _ = std::fs::remove_dir_all(&cache);
    ColdStart { cold, warm }
}

/// Bytes of the files in `dir` and its subfolders.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits (at most 5 s) until `dir` stops growing for 200 ms.
fn settle(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = folder_bytes(dir);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = folder_bytes(dir);
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
}
