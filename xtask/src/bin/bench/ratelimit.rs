//! Rate-limit accuracy: a limit of [`LIMIT`] requests per second under [`OVERLOAD`]× that rate
//! (open loop, evenly spaced), with several workers, for our rate-limiting plugin in Envoy and
//! in the gateway and for Envoy's native `local_ratelimit`. The upstream counts what reached
//! it per aligned UTC second: the window Kong's `second` limit promises to hold.
//!
//! With more than one worker the proxy is not pinned (the workers need both cores); the
//! client and the counting upstream stay on the client core. The load is light (a few hundred
//! requests per second), so the figure here is accuracy, not speed.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wasmgate_tests::WasmFilter;

use crate::load::{self, Outcome, Workload};
use crate::proxies::{self, Running};
use crate::upstream::{self, PerSecond};
use crate::{client_core, Timing};

pub const LIMIT: u64 = 100;
pub const OVERLOAD: f64 = 4.0;
const CONNECTIONS: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Plane {
    EnvoyWasm,
    Gateway,
    EnvoyNative,
}

impl Plane {
    fn name(self) -> &'static str {
        match self {
            Plane::EnvoyWasm => "rate-limiting in Envoy (V8)",
            Plane::Gateway => "rate-limiting in gateway",
            Plane::EnvoyNative => "Envoy local_ratelimit (token bucket)",
        }
    }

    /// Whether the plane runs our plugin (the no-over-admission target applies).
    fn ours(self) -> bool {
        !matches!(self, Plane::EnvoyNative)
    }

    async fn start(self, upstream: SocketAddr, workers: usize) -> Result<Running, String> {
        // Everyone is 127.0.0.1: one budget for the whole load.
        let config: Value = json!({"second": LIMIT, "limit_by": "ip"});
        let concurrency = u32::try_from(workers).map_err(|e| e.to_string())?;
        match self {
            Plane::EnvoyWasm => {
                proxies::start_envoy(
                    upstream,
                    concurrency,
                    vec![],
                    vec![WasmFilter::plugin("rate-limiting", config)],
                    None,
                )
                .await
            }
            Plane::Gateway => proxies::start_gateway(
                &proxies::gateway_declarative(upstream, &[("rate-limiting", config)]),
                None,
                workers,
            )
            .map(|(running, _)| running),
            Plane::EnvoyNative => {
                proxies::start_envoy(
                    upstream,
                    concurrency,
                    vec![proxies::local_ratelimit(LIMIT)],
                    vec![],
                    None,
                )
                .await
            }
        }
    }
}

#[derive(Debug)]
pub struct AccuracyRun {
    pub plane: &'static str,
    pub ours: bool,
    pub workers: usize,
    pub offered_rps: f64,
    /// Requests that reached the upstream in each aligned second of the run, in order; the
    /// first and the last are partial seconds.
    pub seconds: Vec<u64>,
    /// Answers at the client by kind.
    pub ok: u64,
    pub limited: u64,
    pub other: u64,
    pub error: Option<String>,
}

impl AccuracyRun {
    /// Takes in what the clients saw (`outcomes`, over `duration`) and what reached the
    /// upstream in each second from `started` to `ended` (`counts`); an error when the two
    /// disagree on how many got through.
    pub fn record(
        &mut self,
        outcomes: &[Outcome],
        duration: Duration,
        counts: &PerSecond,
        (started, ended): (f64, f64),
    ) {
        for outcome in outcomes {
            let ok = outcome.statuses.get(&200).copied().unwrap_or(0);
            let limited = outcome.statuses.get(&429).copied().unwrap_or(0);
            self.ok += ok;
            self.limited += limited;
            self.other += outcome.ok + outcome.errors - ok - limited;
            self.offered_rps += (outcome.ok + outcome.errors) as f64 / duration.as_secs_f64();
        }
        if let Ok(counts) = counts.lock() {
            self.seconds = (started as u64..=ended as u64)
                .map(|second| counts.get(&second).copied().unwrap_or(0))
                .collect();
        }
        let reached: u64 = self.seconds.iter().sum();
        if reached != self.ok {
            self.error = Some(format!(
                "{reached} requests reached the upstream, {} answered 200",
                self.ok
            ));
        }
    }

    /// The seconds lying wholly inside the run.
    pub fn full_seconds(&self) -> &[u64] {
        match self.seconds.len() {
            0..=2 => &[],
            n => &self.seconds[1..n - 1],
        }
    }

    /// The most any second (partial ones included) admitted above the limit.
    pub fn worst_over(&self) -> u64 {
        self.seconds
            .iter()
            .max()
            .map_or(0, |max| max.saturating_sub(LIMIT))
    }
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sleeps until 0.2 s into the next second, so each run starts at the same place in a window.
pub fn align_to_second() {
    let now = now_secs();
    std::thread::sleep(Duration::from_secs_f64(now.floor() + 1.2 - now));
}

fn run_one(
    runtime: &tokio::runtime::Runtime,
    plane: Plane,
    workers: usize,
    upstream: SocketAddr,
    counts: &PerSecond,
    duration: Duration,
) -> AccuracyRun {
    let mut run = AccuracyRun {
        plane: plane.name(),
        ours: plane.ours(),
        workers,
        offered_rps: 0.0,
        seconds: Vec::new(),
        ok: 0,
        limited: 0,
        other: 0,
        error: None,
    };
    let running = match runtime.block_on(plane.start(upstream, workers)) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("bench: {} with {workers} workers: skipped: {e}", run.plane);
            run.error = Some(format!("not measured: {e}"));
            return run;
        }
    };
    align_to_second();
    if let Ok(mut counts) = counts.lock() {
        counts.clear();
    }
    let started = now_secs();
    let outcome = load::open_loop(
        running.addr,
        &Workload::get("/limited"),
        LIMIT as f64 * OVERLOAD,
        CONNECTIONS,
        duration,
        client_core(),
    );
    let ended = now_secs();
    drop(running);
    run.record(&[outcome], duration, counts, (started, ended));
    eprintln!(
        "  {}, {workers} workers: {:?} per second, {} × 429, {} other",
        run.plane, run.seconds, run.limited, run.other
    );
    run
}

/// Every plane at every worker count of `timing`.
pub fn runs(runtime: &tokio::runtime::Runtime, timing: Timing) -> Vec<AccuracyRun> {
    let (upstream, counts) = upstream::start_counting(client_core());
    let rate_limiting_built = proxies::module("rate-limiting").is_file();
    let mut runs = Vec::new();
    for &workers in timing.rate_limit_workers {
        for plane in [Plane::EnvoyWasm, Plane::Gateway, Plane::EnvoyNative] {
            if plane.ours() && !rate_limiting_built {
                continue;
            }
            runs.push(run_one(
                runtime,
                plane,
                workers,
                upstream,
                &counts,
                timing.rate_limit,
            ));
        }
    }
    runs
}
