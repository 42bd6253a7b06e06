//! The wasmtime engine every plugin of a process shares: Cranelift, epoch interruption driven
//! by a ticker thread (the per-callback CPU deadline), optionally fuel, and the pooling
//! allocator with copy-on-write memory images for fast instantiation. Modules are compiled
//! once per engine and, with a cache directory, once per machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{describe, Error};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How often the ticker advances the epoch; deadlines are rounded up to it.
    pub epoch_tick: Duration,
    /// Use the pooling instance allocator.
    pub pooling: bool,
    /// Pool size: instances alive at once (plugins × workers, plus replacements).
    pub max_instances: u32,
    /// The largest linear memory any instance may get (per-plugin caps are lower).
    pub max_memory_bytes: usize,
    /// Count fuel (a per-callback instruction budget) in addition to the deadline.
    pub fuel: bool,
    /// Where compiled modules are kept between runs.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            epoch_tick: Duration::from_millis(5),
            pooling: true,
            max_instances: 256,
            max_memory_bytes: 512 << 20,
            fuel: false,
            cache_dir: None,
        }
    }
}

struct Inner {
    engine: wasmtime::Engine,
    config: EngineConfig,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A shareable engine handle (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, Error> {
        let mut wc = wasmtime::Config::new();
        wc.epoch_interruption(true);
        wc.consume_fuel(config.fuel);
        wc.cranelift_opt_level(wasmtime::OptLevel::Speed);
        if config.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_core_instances(config.max_instances)
                .total_memories(config.max_instances)
                .total_tables(config.max_instances)
                .max_memory_size(config.max_memory_bytes);
            wc.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&wc).map_err(|e| Error::Engine(describe(&e)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let tick = config.epoch_tick.max(Duration::from_millis(1));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                engine,
                config,
                stop,
            }),
        })
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// A deadline in epoch ticks (at least 1; one more for the tick already under way).
    pub fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.max(Duration::from_millis(1));
        (deadline.as_nanos().div_ceil(tick.as_nanos()) as u64).max(1) + 1
    }

    /// Compiles a module (or loads it from the cache directory).
    pub fn compile(&self, bytes: &[u8]) -> Result<wasmtime::Module, Error> {
        let Some(dir) = &self.inner.config.cache_dir else {
            return wasmtime::Module::new(&self.inner.engine, bytes)
                .map_err(|e| Error::Module(describe(&e)));
        };
        let path = self.cache_path(dir, bytes);
        if path.is_file() {
            // SAFETY: the file was written by `Module::serialize` of this engine
            // configuration (the name includes the engine's compatibility hash), in a
            // directory the operator gave us for this purpose.
            if let Ok(module) =
                unsafe { wasmtime::Module::deserialize_file(&self.inner.engine, &path) }
            {
                return Ok(module);
            }
        }
        let module = wasmtime::Module::new(&self.inner.engine, bytes)
            .map_err(|e| Error::Module(describe(&e)))?;
        if let Ok(serialized) = module.serialize() {
            let tmp = path.with_extension("tmp");
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, serialized).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(module)
    }

    fn cache_path(&self, dir: &Path, bytes: &[u8]) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        dir.join(format!("{:016x}-{}.cwasm", h.finish(), bytes.len()))
    }
}
