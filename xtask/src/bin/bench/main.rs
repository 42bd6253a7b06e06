//! `cargo xtask bench [--quick]`: every data plane under the same workload, in one run on this
//! machine, written to docs/BENCHMARKS.md with SVG plots.
//!
//! Cores: the proxy under test is pinned to core 0 with one worker (`--concurrency 1`,
//! `--workers 1`); the load generator and the upstream share core 1. Every process started is
//! stopped by PID when its scenario ends. Traffic stays on loopback.

mod load;
mod plots;
mod proxies;
mod report;
mod upstream;

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

fn client_core() -> Option<usize> {
    (std::thread::available_parallelism().map_or(1, usize::from) > 1).then_some(CLIENT_CORE)
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
    let cpu_before = pid.and_then(proxies::cpu_ticks);
    let mut requests = 0u64;
    for connections in CONCURRENCY {
        let outcome =
            load::closed_loop(target, workload, connections, timing.closed, client_core());
        requests += outcome.ok;
        eprintln!(
            "  c={connections}: {:.0} req/s, p99 {:.2} ms, {} errors",
            outcome.rps(),
            outcome.percentile_ms(0.99),
            outcome.errors
        );
        figures.closed.push((connections, outcome));
    }
    if let (Some(before), Some(after)) = (cpu_before, pid.and_then(proxies::cpu_ticks)) {
        let ticks_per_second = proxies::clock_ticks_per_second();
        figures.cpu_us_per_request = (requests > 0)
            .then(|| (after - before) as f64 * 1e6 / ticks_per_second / requests as f64);
    }
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
        figures.open.push((fraction, rate, outcome));
    }
    figures.peak_rss_mib = pid.and_then(proxies::peak_rss_mib);
    figures
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let timing = if quick {
        Timing {
            closed: Duration::from_secs(2),
            open: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
        }
    } else {
        Timing {
            closed: Duration::from_secs(5),
            open: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
        }
    };
    let started = std::time::Instant::now();
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
                    &scenario.workload(&workload),
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
    let body_sizes = runtime.block_on(proxies::body_size_runs(upstream, PROXY_CORE, timing));
    let extras = runtime.block_on(proxies::wasm_specifics());
    let path = report::write(&results, &body_sizes, &extras, quick, started.elapsed());
    eprintln!(
        "bench: wrote {} in {:.0?}",
        path.display(),
        started.elapsed()
    );
}
