//! Head-to-head figures for the targets. This machine is shared (other builds run on
//! it) and its load drifts within seconds, which moves whole scenarios measured one after
//! the other. Here the compared data planes run at the same time, pinned to the proxy core,
//! and take turns in short rounds; each figure is the median over rounds, so drift falls on
//! both sides alike.

use std::net::SocketAddr;

use serde_json::{json, Value};
use wasmgate_tests::{Envoy, EnvoyConfig};

use crate::load::{self, Workload};
use crate::proxies::{self, cpu_ns, cpu_us_per_request};
use crate::{client_core, Timing};

const CONNECTIONS: usize = 16;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// CPU per request of each data plane with and without our plugins: one Envoy
/// (`--concurrency 1`) with a listener each for no filter, Envoy's native filters and our wasm
/// plugins, and one gateway (`--workers 1`) with a route without plugins and one with them;
/// all five loaded in turn.
#[derive(Debug)]
pub struct Overhead {
    /// Median CPU µs per request of each leg, in [`LEGS`] order.
    pub cpu_us: [f64; 5],
    /// Medians of the per-round differences to the same data plane's leg without filters
    /// (zero for those legs).
    pub over_us: [f64; 5],
}

pub const LEGS: [&str; 5] = [
    "Envoy, no filter",
    "Envoy, native `buffer` + `local_ratelimit` + `header_mutation`",
    "Envoy, our 3 wasm plugins (V8)",
    "gateway, route without plugins",
    "gateway, route with our 3 plugins",
];
/// The leg each one is compared with.
pub const BASE: [usize; 5] = [0, 0, 0, 3, 3];

impl Overhead {
    pub fn envoy_native_over(&self) -> f64 {
        self.over_us[1]
    }

    pub fn envoy_wasm_over(&self) -> f64 {
        self.over_us[2]
    }
}

/// The gateway's declarative file for the overhead runs: `/plain` without plugins, `/plugins`
/// with them (route-scoped), on one service.
fn two_routes(upstream: SocketAddr, plugins: &[(&str, Value)]) -> String {
    let mut text = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: bench\n    url: http://{upstream}\n    routes:\n      - {{name: plain, paths: [/plain]}}\n      - name: plugins\n        paths: [/plugins]\n        plugins:\n"
    );
    for (plugin, config) in plugins {
        text.push_str(&format!(
            "          - {}\n",
            json!({"name": plugin, "config": config})
        ));
    }
    text
}

pub fn overhead(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Result<Overhead, String> {
    let (plugins, missing) = proxies::available_plugins(3);
    if let Some(missing) = missing {
        return Err(missing);
    }
    let mut config = EnvoyConfig::new(upstream)
        .concurrency(1)
        .listener("none", vec![])
        .listener("native", vec![])
        .listener("wasm", proxies::wasm_filters(&plugins));
    config.listeners[1].native_filters = proxies::native_filters();
    let envoy = runtime.block_on(Envoy::start(&config))?;
    proxies::pin_process(envoy.pid(), core);
    let (gateway, _) = proxies::start_gateway(&two_routes(upstream, &plugins), Some(core), 1)?;
    // (pid, address, workload) of each leg, in LEGS order.
    let legs = [
        (envoy.pid(), envoy.listener("none"), "/bench"),
        (envoy.pid(), envoy.listener("native"), "/bench"),
        (envoy.pid(), envoy.listener("wasm"), "/bench"),
        (gateway.pid, gateway.addr, "/plain"),
        (gateway.pid, gateway.addr, "/plugins"),
    ]
    .map(|(pid, addr, path)| (pid, addr, Workload::get(path)));
    for (_, addr, workload) in &legs {
        load::closed_loop(*addr, workload, CONNECTIONS, timing.warmup, client_core());
    }
    let mut per_round: Vec<[f64; 5]> = Vec::new();
    for _ in 0..timing.rounds {
        let mut round = [0.0; 5];
        for (slot, (pid, addr, workload)) in round.iter_mut().zip(&legs) {
            let before = cpu_ns(*pid);
            let outcome =
                load::closed_loop(*addr, workload, CONNECTIONS, timing.round, client_core());
            if crate::not_ok(&outcome) > 0 {
                return Err(format!(
                    "{} answers not 200 on {}",
                    crate::not_ok(&outcome),
                    workload.path
                ));
            }
            *slot = cpu_us_per_request(before, cpu_ns(*pid), outcome.ok).ok_or("no CPU reading")?;
        }
        eprintln!("  round (CPU µs/req): {round:.1?}");
        per_round.push(round);
    }
    let cpu_us = std::array::from_fn(|i| median(per_round.iter().map(|r| r[i]).collect()));
    let over_us =
        std::array::from_fn(|i| median(per_round.iter().map(|r| r[i] - r[BASE[i]]).collect()));
    Ok(Overhead { cpu_us, over_us })
}

/// gateway with our three plugins against Envoy with the same three as wasm, both running
/// at once on the proxy core (one worker each), loaded in turn.
#[derive(Debug)]
pub struct HeadToHead {
    /// Median closed-loop req/s at 16 connections: (gateway, Envoy).
    pub rps: (f64, f64),
    /// (fraction of Envoy's median rate, offered req/s, median p99 ms gateway, Envoy).
    pub p99: Vec<(f64, f64, f64, f64)>,
}

pub fn head_to_head(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    core: usize,
    timing: Timing,
) -> Result<HeadToHead, String> {
    let (plugins, missing) = proxies::available_plugins(3);
    if let Some(missing) = missing {
        return Err(missing);
    }
    let envoy = runtime.block_on(proxies::start_envoy(
        upstream,
        1,
        vec![],
        proxies::wasm_filters(&plugins),
        Some(core),
    ))?;
    let (gateway, _) = proxies::start_gateway(
        &proxies::gateway_declarative(upstream, &plugins),
        Some(core),
        1,
    )?;
    let workload = Workload::get("/bench");
    let planes = [gateway.addr, envoy.addr];
    for addr in planes {
        load::closed_loop(addr, &workload, CONNECTIONS, timing.warmup, client_core());
    }
    let mut rps: [Vec<f64>; 2] = Default::default();
    for _ in 0..timing.rounds {
        for (samples, addr) in rps.iter_mut().zip(planes) {
            let outcome =
                load::closed_loop(addr, &workload, CONNECTIONS, timing.round, client_core());
            samples.push(outcome.rps());
        }
    }
    let [gateway_rps, envoy_rps] = rps.map(median);
    eprintln!("  closed loop: gateway {gateway_rps:.0}, Envoy {envoy_rps:.0} req/s");
    let mut p99 = Vec::new();
    for fraction in [0.5, 0.9] {
        let rate = envoy_rps * fraction;
        let mut samples: [Vec<f64>; 2] = Default::default();
        for _ in 0..timing.rounds {
            for (samples, addr) in samples.iter_mut().zip(planes) {
                let outcome =
                    load::open_loop(addr, &workload, rate, 32, timing.round, client_core());
                samples.push(outcome.percentile_ms(0.99));
            }
        }
        let [gateway_p99, envoy_p99] = samples.map(median);
        eprintln!("  open {rate:.0} req/s: p99 gateway {gateway_p99:.2}, Envoy {envoy_p99:.2} ms");
        p99.push((fraction, rate, gateway_p99, envoy_p99));
    }
    drop(gateway);
    drop(envoy);
    Ok(HeadToHead {
        rps: (gateway_rps, envoy_rps),
        p99,
    })
}
