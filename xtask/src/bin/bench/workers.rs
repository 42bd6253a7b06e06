//! From one worker to two: each data plane with our three plugins, once with one worker pinned
//! to the proxy core and once with two workers on every core, all running at once and loaded in
//! turn (as the head-to-head runs). The client and the upstream stay on the client core, so
//! with two workers on a two-core machine the second worker competes with them for it: the
//! figures say what a second worker buys on this machine, not on one with a core to spare.

use std::net::SocketAddr;

use crate::load::{self, Workload};
use crate::proxies::{self, cpu_ns, cpu_us_per_request, Running};
use crate::{client_core, Timing};

/// The concurrencies each leg runs at.
pub const CONNECTIONS: [usize; 2] = [16, 64];

/// One data plane at one worker count.
#[derive(Debug)]
pub struct WorkersRow {
    pub plane: &'static str,
    pub workers: usize,
    /// Where the proxy's threads may run.
    pub placement: String,
    /// Median req/s at each of [`CONNECTIONS`].
    pub rps: [f64; 2],
    /// Median CPU µs per request at each of [`CONNECTIONS`].
    pub cpu_us: [f64; 2],
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub fn runs(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Result<Vec<WorkersRow>, String> {
    let (plugins, missing) = proxies::available_plugins(3);
    if let Some(missing) = missing {
        return Err(missing);
    }
    let all_cores = format!("cores 0-{}", crate::cores() - 1);
    let pinned = format!("core {core}");
    let mut legs: Vec<(&'static str, usize, String, Running)> = Vec::new();
    for (workers, placement) in [(1, Some(core)), (2, None)] {
        let (gateway, _) = proxies::start_gateway(
            &proxies::gateway_declarative(upstream, &plugins),
            placement,
            workers,
        )?;
        let envoy = runtime.block_on(proxies::start_envoy(
            upstream,
            u32::try_from(workers).map_err(|e| e.to_string())?,
            vec![],
            proxies::wasm_filters(&plugins),
            placement,
        ))?;
        let placement = if placement.is_some() {
            &pinned
        } else {
            &all_cores
        };
        legs.push(("gateway", workers, placement.clone(), gateway));
        legs.push(("Envoy (V8)", workers, placement.clone(), envoy));
    }
    // Gateway legs first, then Envoy's, each 1 then 2 workers.
    legs.sort_by_key(|(plane, workers, ..)| (*plane != "gateway", *workers));
    let workload = Workload::get("/bench");
    for (.., running) in &legs {
        load::closed_loop(running.addr, &workload, 16, timing.warmup, client_core());
    }
    // samples[leg][concurrency] = (req/s, CPU µs per request) of each round.
    let mut samples: Vec<[Vec<(f64, f64)>; 2]> = legs.iter().map(|_| Default::default()).collect();
    for _ in 0..timing.worker_rounds {
        for ((plane, workers, _, running), samples) in legs.iter().zip(&mut samples) {
            for (connections, samples) in CONNECTIONS.iter().zip(samples.iter_mut()) {
                let before = cpu_ns(running.pid);
                let outcome = load::closed_loop(
                    running.addr,
                    &workload,
                    *connections,
                    timing.round,
                    client_core(),
                );
                if crate::not_ok(&outcome) > 0 {
                    return Err(format!(
                        "{plane} with {workers} workers: {} answers not 200",
                        crate::not_ok(&outcome)
                    ));
                }
                let cpu = cpu_us_per_request(before, cpu_ns(running.pid), outcome.ok)
                    .ok_or("no CPU reading")?;
                samples.push((outcome.rps(), cpu));
            }
        }
    }
    let rows: Vec<WorkersRow> = legs
        .into_iter()
        .zip(samples)
        .map(
            |((plane, workers, placement, _running), samples)| WorkersRow {
                plane,
                workers,
                placement,
                rps: [0, 1].map(|c| median(samples[c].iter().map(|s| s.0).collect())),
                cpu_us: [0, 1].map(|c| median(samples[c].iter().map(|s| s.1).collect())),
            },
        )
        .collect();
    for row in &rows {
        eprintln!(
            "  {} with {} workers ({}): {:.0} / {:.0} req/s, {:.1} / {:.1} µs CPU/req at 16 / 64 connections",
            row.plane, row.workers, row.placement, row.rps[0], row.rps[1], row.cpu_us[0], row.cpu_us[1]
        );
    }
    Ok(rows)
}
