//! Our modules in our own host (the `host` crate, as the gateway uses it): size, compile time
//! (Cranelift, no cache), instantiation time (a worker's instance: instantiate, `_initialize`,
//! `on_vm_start`, `on_configure`), and whether the configuration every run uses passes the
//! plugin's own validation, so no figure comes from a plugin that refused its settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use host::{Engine, EngineConfig, HostEnv, Plugin, PluginConfig, PluginModule};

use crate::proxies::{module, plugin_configs};

pub struct ModuleFigures {
    pub plugin: &'static str,
    pub size_bytes: u64,
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
                compile: median(compiles),
                instantiate: median(instances),
                validation,
            })
        })
        .collect()
}
