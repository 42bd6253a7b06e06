//! The wasmtime engine every plugin of a process shares: Cranelift, epoch interruption driven
//! by a ticker thread (when a running callback's CPU budget is checked), optionally fuel, and
//! the pooling allocator with copy-on-write memory images for fast instantiation. Modules are
//! compiled once per engine and, with a cache directory, once per machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{describe, Error};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How often the ticker advances the epoch: how often a running callback's CPU time is
    /// checked against its budget, so how far past its budget a callback may run.
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
            epoch_tick: Duration::from_millis(1),
            pooling: true,
            max_instances: 256,
            max_memory_bytes: 512 << 20,
            fuel: false,
            cache_dir: None,
        }
    }
}

/// Tables an instance may have, pooled or not (the pool's and the store's limit,
/// [`crate::state::HostState`]).
pub const MAX_TABLES: u32 = 4;
/// Elements a table may have, pooled or not (8 bytes each): a million, fifty times
/// wasmtime's pool default, past the function tables of large Go and .NET modules. On demand
/// they are host memory outside an instance's linear memory cap, so they are capped too.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

fn effective_tick(config: &EngineConfig) -> Duration {
    config.epoch_tick.max(Duration::from_millis(1))
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
            // wasmtime's defaults (one table of at most 20,000 elements) refuse modules that
            // Envoy loads: some toolchains (Go, .NET, AssemblyScript) make larger tables, and
            // some several. A slot's table space is only reserved address space until used.
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_core_instances(config.max_instances)
                .total_memories(config.max_instances)
                .total_tables(config.max_instances.saturating_mul(MAX_TABLES))
                .max_tables_per_module(MAX_TABLES)
                .table_elements(MAX_TABLE_ELEMENTS)
                .max_memory_size(config.max_memory_bytes);
            wc.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = match wasmtime::Engine::new(&wc) {
            Ok(engine) => engine,
            // The pool reserves its address space up front, which a tight address-space limit
            // (ulimit -v) refuses: instances are then allocated on demand, as the gateway's.
            Err(e) if config.pooling => {
                log::warn!(
                    "wasm engine: no instance pool ({}); allocating on demand",
                    describe(&e)
                );
                wc.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                wasmtime::Engine::new(&wc).map_err(|e| Error::Engine(describe(&e)))?
            }
            Err(e) => return Err(Error::Engine(describe(&e))),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let tick = effective_tick(&config);
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

    /// The ticker's period (a configured zero is a millisecond).
    pub fn epoch_tick(&self) -> Duration {
        effective_tick(&self.inner.config)
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

/// The CPU time the calling thread has used, which budgets are counted in: a callback is
/// charged for what it runs, not for the time it waits for a CPU another thread or process
/// holds, so contention does not kill legitimate callbacks (a wall-clock deadline did, and
/// the replacement that followed took more CPU still). Where the thread's CPU clock is
/// missing, the monotonic clock stands in.
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given, which lives here.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0 {
            return Duration::new(
                u64::try_from(now.tv_sec).unwrap_or(0),
                u32::try_from(now.tv_nsec).unwrap_or(0),
            );
        }
    }
    monotonic()
}

fn monotonic() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool too large to reserve (here, ten million instances of up to 512 MiB of memory
    /// each: more address space than the machine has) leaves an engine that allocates on
    /// demand, not none.
    #[test]
    fn a_pool_that_cannot_be_reserved_falls_back_to_allocating_on_demand() {
        let engine = Engine::new(EngineConfig {
            max_instances: 10_000_000,
            ..EngineConfig::default()
        })
        .expect("an engine");
        let wasm = wasmtime::Module::new(
            engine.wasmtime(),
            wat::parse_str("(module (memory 1))").expect("WAT"),
        )
        .expect("module");
        let mut store = wasmtime::Store::new(engine.wasmtime(), ());
        wasmtime::Instance::new(&mut store, &wasm, &[]).expect("an instance");
    }

    /// Sleeping costs no CPU; spinning does.
    #[test]
    fn the_thread_cpu_clock_counts_running_not_waiting() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(25), "sleeping cost {slept:?}");
        let before = thread_cpu_time();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(30) {
            std::hint::spin_loop();
        }
        assert!(thread_cpu_time() > before, "spinning cost nothing");
    }
}
