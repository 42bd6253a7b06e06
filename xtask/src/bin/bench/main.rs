//! `cargo xtask bench [--quick]`: every data plane under the same workload, in one run on this
//! machine, written to docs/BENCHMARKS.md with SVG plots.
//!
//! Cores: the proxy under test is pinned to core 0 with one worker (`--concurrency 1`,
//! `--workers 1`); the load generator and the upstream share core 1 (the rate-limit runs,
//! with 2 and 4 workers, and the two-worker legs leave the proxy on every core). Every process
//! started is stopped by PID when its run ends. Traffic stays on loopback.

mod distribution;
mod load;
mod modules;
mod paired;
mod plots;
mod proxies;
mod ratelimit;
mod redis;
mod report;
mod upstream;
mod workers;

use std::time::Duration;

use load::{Outcome, Workload};

/// Pins the calling thread to one core (Linux).
pub fn pin_current_thread(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// How long each measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub closed: Duration,
    pub open: Duration,
    pub warmup: Duration,
    /// Each point of the plugin-count runs.
    pub chain: Duration,
    /// Each rate-limit accuracy run (started 0.2 s into a second).
    pub rate_limit: Duration,
    pub rate_limit_workers: &'static [usize],
    /// The head-to-head runs: rounds, and each data plane's turn in a round.
    pub rounds: usize,
    pub round: Duration,
    /// Rounds of the one-to-two-workers runs (each of their rounds is four data planes at two
    /// concurrencies, `round` each).
    pub worker_rounds: usize,
}

/// One data plane's figures.
#[derive(Debug, Default)]
pub struct Figures {
    pub name: String,
    /// (concurrency, outcome)
    pub closed: Vec<(usize, Outcome)>,
    /// (fraction of max, offered rate, outcome)
    pub open: Vec<(f64, f64, Outcome)>,
    pub cpu_us_per_request: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Answers other than 200 and failed exchanges over all runs: a figure made of errors
    /// would flatter the proxy.
    pub not_ok: u64,
    pub note: Option<String>,
}

impl Figures {
    pub fn max_rps(&self) -> f64 {
        self.closed.iter().map(|(_, o)| o.rps()).fold(0.0, f64::max)
    }
}

pub const CONCURRENCY: [usize; 3] = [1, 16, 64];
const PROXY_CORE: usize = 0;
const CLIENT_CORE: usize = 1;

/// The machine's online cores. Not `available_parallelism`: that follows this thread's
/// affinity, and the load generator pins this thread to the client core.
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

fn client_core() -> Option<usize> {
    (cores() > 1).then_some(CLIENT_CORE)
}

pub fn not_ok(outcome: &Outcome) -> u64 {
    outcome.ok + outcome.errors - outcome.statuses.get(&200).copied().unwrap_or(0)
}

/// Measures one target: closed loop at each concurrency, then open loop at 50% and 90% of the
/// best closed-loop rate.
fn measure(
    name: &str,
    target: std::net::SocketAddr,
    pid: Option<u32>,
    workload: &Workload,
    timing: Timing,
) -> Figures {
    eprintln!("bench: {name}");
    let mut figures = Figures {
        name: name.to_owned(),
        ..Figures::default()
    };
    load::closed_loop(target, workload, 16, timing.warmup, client_core());
    let cpu_before = pid.and_then(proxies::cpu_ns);
    let mut requests = 0u64;
    for connections in CONCURRENCY {
        let outcome =
            load::closed_loop(target, workload, connections, timing.closed, client_core());
        requests += outcome.ok;
        figures.not_ok += not_ok(&outcome);
        eprintln!(
            "  c={connections}: {:.0} req/s, p99 {:.2} ms, {} errors",
            outcome.rps(),
            outcome.percentile_ms(0.99),
            outcome.errors
        );
        figures.closed.push((connections, outcome));
    }
    figures.cpu_us_per_request =
        proxies::cpu_us_per_request(cpu_before, pid.and_then(proxies::cpu_ns), requests);
    let max = figures.max_rps();
    for fraction in [0.5, 0.9] {
        let rate = max * fraction;
        let outcome = load::open_loop(target, workload, rate, 32, timing.open, client_core());
        eprintln!(
            "  open {:.0}% ({rate:.0} req/s): p50 {:.2} ms, p99 {:.2} ms",
            fraction * 100.0,
            outcome.percentile_ms(0.5),
            outcome.percentile_ms(0.99)
        );
        figures.not_ok += not_ok(&outcome);
        figures.open.push((fraction, rate, outcome));
    }
    figures.peak_rss_mib = pid.and_then(proxies::peak_rss_mib);
    figures
}

/// Names the next part of the run on stderr, with the time spent so far (the budget is 10
/// minutes).
fn phase(started: std::time::Instant, what: &str) {
    eprintln!("bench: [{:.0} s] {what}", started.elapsed().as_secs_f64());
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Only the control plane's figures, printed (BENCHMARKS.md is left alone).
    if std::env::args().any(|a| a == "--control-plane-only") {
        print!("{}", distribution::section(&distribution::measure(quick)));
        let _ = std::fs::remove_dir_all(proxies::scratch_dir());
        return;
    }
    let timing = if quick {
        Timing {
            closed: Duration::from_millis(500),
            open: Duration::from_millis(500),
            warmup: Duration::from_millis(300),
            chain: Duration::from_millis(500),
            rate_limit: Duration::from_millis(3_500),
            rate_limit_workers: &[2],
            rounds: 3,
            round: Duration::from_millis(500),
            worker_rounds: 1,
        }
    } else {
        Timing {
            closed: Duration::from_secs(5),
            open: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            chain: Duration::from_secs(4),
            rate_limit: Duration::from_millis(5_500),
            rate_limit_workers: &[2, 4],
            rounds: 5,
            round: Duration::from_secs(2),
            worker_rounds: 3,
        }
    };
    let started = std::time::Instant::now();
    // Only the `policy: redis` legs, printed (BENCHMARKS.md is left alone).
    if std::env::args().any(|a| a == "--redis-only") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let upstream = upstream::start(client_core());
        let figures = redis::measure(&runtime, upstream, PROXY_CORE, timing);
        let mut out = String::new();
        report::redis_policy(&mut out, &figures);
        print!("{out}");
        println!("{:?}", figures.accuracy);
        let _ = std::fs::remove_dir_all(proxies::scratch_dir());
        return;
    }
    // Other work on the machine moves every figure; the report shows how busy it was.
    let load_at_start = report::load_average();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let upstream = upstream::start(client_core());
    let workload = Workload::get("/bench");

    let mut results = Vec::new();
    results.push(measure(
        "upstream alone (no proxy)",
        upstream,
        None,
        &workload,
        timing,
    ));
    for scenario in proxies::scenarios() {
        match runtime.block_on(scenario.start(upstream, PROXY_CORE)) {
            Ok(running) => {
                let mut figures = measure(
                    &scenario.name,
                    running.addr,
                    Some(running.pid),
                    &workload,
                    timing,
                );
                figures.note = scenario.note.clone();
                results.push(figures);
                drop(running);
            }
            Err(e) => {
                eprintln!("bench: {}: skipped: {e}", scenario.name);
                results.push(Figures {
                    name: scenario.name.clone(),
                    note: Some(format!("not measured: {e}")),
                    ..Figures::default()
                });
            }
        }
    }
    phase(started, "overhead of the plugins, interleaved");
    let overhead = paired::overhead(&runtime, upstream, PROXY_CORE, timing);
    phase(started, "gateway vs Envoy with the plugins, interleaved");
    let head_to_head = paired::head_to_head(&runtime, upstream, PROXY_CORE, timing);
    phase(started, "request body sizes");
    let body_sizes = proxies::body_size_runs(&runtime, upstream, PROXY_CORE, timing);
    phase(started, "number of plugins");
    let chain = proxies::plugin_count_runs(&runtime, upstream, PROXY_CORE, timing);
    phase(started, "one worker and two, interleaved");
    let workers = workers::runs(&runtime, upstream, PROXY_CORE, timing);
    phase(started, "rate-limit accuracy");
    let mut accuracy = ratelimit::runs(&runtime, timing);
    phase(started, "rate-limiting policy: redis against local");
    let mut redis = redis::measure(&runtime, upstream, PROXY_CORE, timing);
    accuracy.extend(redis.accuracy.take());
    phase(started, "modules in our host");
    let modules = modules::measure();
    phase(started, "gateway cold start");
    let cold_start = modules::cold_start(PROXY_CORE);
    phase(started, "control plane distribution");
    let distribution = distribution::section(&distribution::measure(quick));
    let plugins = proxies::plugin_configs();
    let validated = proxies::validate_gateway(&proxies::gateway_declarative(upstream, &plugins));
    let _ = std::fs::remove_dir_all(proxies::scratch_dir());
    let path = report::write(&report::Report {
        results: &results,
        overhead,
        head_to_head,
        body_sizes: &body_sizes,
        chain: &chain,
        workers,
        accuracy: &accuracy,
        redis: &redis,
        modules: &modules,
        cold_start,
        validated,
        distribution: &distribution,
        quick,
        timing,
        load_at_start,
        took: started.elapsed(),
    });
    eprintln!(
        "bench: wrote {} in {:.0?}",
        path.display(),
        started.elapsed()
    );
}
