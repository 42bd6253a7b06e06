//! The wasmtime engine every plugin of a process shares: Cranelift, epoch interruption driven
//! by a ticker thread (when a running callback's CPU budget is checked), optionally fuel, and
//! the pooling allocator with copy-on-write memory images for fast instantiation. Modules are
//! compiled once per engine and, with a cache directory ([`crate::module_cache`]), once per
//! machine and user.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{describe, Error};
use crate::module_cache::{self, Key, ModuleCache, Unusable};

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
    /// Where compiled modules are kept between runs (see [`crate::module_cache`]).
    pub cache_dir: Option<PathBuf>,
    /// How much that folder may hold.
    pub cache_limits: module_cache::Limits,
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
            cache_limits: module_cache::Limits::default(),
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
    cache: Option<ModuleCache>,
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
        // `perf` names the guest's functions (from the module's name section) in its reports
        // through /tmp/perf-<pid>.map (docs/BENCHMARKS.md, "Where the time goes").
        if std::env::var_os("WASMGATE_PERFMAP").is_some() {
            wc.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
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
        let cache =
            (config.cache_dir.clone()).map(|dir| ModuleCache::new(dir, config.cache_limits));
        Ok(Engine {
            inner: Arc::new(Inner {
                engine,
                config,
                cache,
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

    /// Compiles a module, or loads it from the cache folder when an entry there passes every
    /// check. A cache that cannot be used (a folder another user may write to, an entry that
    /// fails a check, a full disk) costs a warning and a compile, never the module.
    pub fn compile(&self, bytes: &[u8]) -> Result<wasmtime::Module, Error> {
        let compile = || {
            wasmtime::Module::new(&self.inner.engine, bytes)
                .map_err(|e| Error::Module(describe(&e)))
        };
        let Some(cache) = &self.inner.cache else {
            return compile();
        };
        let key = Key::new(&self.inner.engine, &self.code_settings(), bytes);
        match cache.load(&self.inner.engine, &key) {
            Ok(Some(module)) => {
                log::debug!("module cache: loaded {}", cache.path(&key).display());
                return Ok(module);
            }
            Ok(None) => {}
            Err(Unusable::Folder(why)) => {
                log::warn!("module cache: {why}; compiling without it");
                return compile();
            }
            Err(Unusable::Entry(why)) => {
                log::warn!("module cache: {why}; compiling the module again");
            }
        }
        let module = compile()?;
        let stored = match module.serialize() {
            Ok(artifact) => cache.store(&key, &artifact),
            Err(e) => Err(Unusable::Entry(describe(&e))),
        };
        if let Err(why) = stored {
            log::warn!("module cache: not kept: {why}");
        }
        Ok(module)
    }

    /// The [`EngineConfig`] knobs that change the code a module compiles to: fuel, the only
    /// one (epoch interruption and Cranelift's level are fixed in [`Engine::new`]). wasmtime's
    /// compatibility hash covers it too; the key takes it from here as well. The ticker's
    /// period and the pool are not part of it: they decide when the epoch moves and where
    /// instances live, not the code, and a pool's limits are checked when an instance is made.
    fn code_settings(&self) -> impl std::hash::Hash {
        ("fuel", self.inner.config.fuel)
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

    /// A module of many functions, so that most of its compiled artifact is code.
    fn large_wasm() -> Vec<u8> {
        let mut wat = String::from("(module");
        for i in 0..200 {
            wat.push_str(&format!(
                "(func (export \"f{i}\") (param i32) (result i32) local.get 0 i32.const {i} \
                 i32.mul i32.const 7 i32.add local.get 0 i32.xor i32.const 3 i32.rotl)"
            ));
        }
        wat.push(')');
        wat::parse_str(&wat).expect("WAT")
    }

    fn cached(dir: &std::path::Path, fuel: bool) -> Engine {
        Engine::new(EngineConfig {
            cache_dir: Some(dir.to_owned()),
            fuel,
            ..EngineConfig::default()
        })
        .expect("an engine")
    }

    /// The cache's entries (compiled modules) in `dir`.
    fn entries(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|listing| listing.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
        found.sort();
        found
    }

    /// Compiles `wasm` with a fresh engine caching in `dir`: what its `f7` answers, and the one
    /// entry that left in `dir`.
    fn compiled_once(dir: &std::path::Path, wasm: &[u8]) -> (i32, PathBuf) {
        let engine = cached(dir, false);
        let answer = f7(&engine, &engine.compile(wasm).expect("compiles"));
        let [entry] = &entries(dir)[..] else {
            panic!("{:?}", entries(dir));
        };
        (answer, entry.clone())
    }

    fn inode(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("metadata").ino()
    }

    fn f7(engine: &Engine, module: &wasmtime::Module) -> i32 {
        let mut store = wasmtime::Store::new(engine.wasmtime(), ());
        store.set_epoch_deadline(1_000_000);
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("an instance");
        let f = (instance.get_typed_func::<i32, i32>(&mut store, "f7")).expect("f7");
        f.call(&mut store, 5).expect("runs")
    }

    /// A second engine of the same settings loads what the first compiled (the entry is not
    /// written again); an engine with fuel compiles its own.
    #[test]
    fn the_next_engine_loads_the_entry_and_other_settings_have_their_own() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wasm = large_wasm();
        let (expected, ref entry) = compiled_once(dir.path(), &wasm);
        let written = inode(entry);
        let second = cached(dir.path(), false);
        assert_eq!(
            f7(&second, &second.compile(&wasm).expect("loads")),
            expected
        );
        assert_eq!(
            inode(entry),
            written,
            "the entry was written again: not a hit"
        );
        let fuel = cached(dir.path(), true);
        fuel.compile(&wasm).expect("compiles");
        assert_eq!(entries(dir.path()).len(), 2);
    }

    /// An entry altered on disk (one byte of code, or cut short) is not run: the module is
    /// compiled again and the entry written again as it was.
    #[test]
    fn an_altered_entry_is_compiled_again_and_rewritten_not_run() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let wasm = large_wasm();
        let (expected, ref entry) = compiled_once(dir.path(), &wasm);
        let good = std::fs::read(entry).expect("the entry");
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x01;
        for (what, altered) in [
            ("flipped", &flipped[..]),
            ("truncated", &good[..good.len() / 2]),
        ] {
            std::fs::write(entry, altered).expect("altered");
            let engine = cached(dir.path(), false);
            let module = engine.compile(&wasm).expect("compiles");
            assert!(
                std::fs::read(entry).expect("the entry") == good,
                "{what}: not rewritten"
            );
            assert_eq!(f7(&engine, &module), expected, "{what}");
        }
    }

    /// An entry others could read or write is compiled again and written again, 0600.
    #[test]
    fn an_entry_others_could_change_is_replaced_by_one_of_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let wasm = large_wasm();
        let (_, ref entry) = compiled_once(dir.path(), &wasm);
        let mode = |path: &std::path::Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode(entry), 0o600);
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let planted = inode(entry);
        cached(dir.path(), false).compile(&wasm).expect("compiles");
        assert_ne!(inode(entry), planted, "the entry of mode 0666 was loaded");
        assert_eq!(mode(entry), 0o600);
    }

    /// A folder others can write to is not used: nothing is written to it.
    #[test]
    fn a_folder_others_can_write_to_is_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770))
            .expect("chmod");
        let engine = cached(dir.path(), false);
        let module = engine.compile(&large_wasm()).expect("compiles");
        assert_eq!(f7(&engine, &module), ((7 * 5 + 7) ^ 5i32).rotate_left(3));
        assert_eq!(entries(dir.path()), Vec::<PathBuf>::new());
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
