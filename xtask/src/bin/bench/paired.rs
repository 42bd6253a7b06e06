//! Head-to-head figures for the targets. This machine is shared (other builds run on
//! it) and its load drifts within seconds, which moves whole scenarios measured one after
//! the other. Here the compared data planes run at the same time, pinned to the proxy core,
//! and take turns in short rounds; each figure is the median over rounds, so drift falls on
//! both sides alike.

use std::net::SocketAddr;

use wasmgate_tests::{Envoy, EnvoyConfig};

use crate::load::{self, Workload};
use crate::proxies::{self, cpu_ns, cpu_us_per_request};
use crate::{client_core, Timing};

const CONNECTIONS: usize = 16;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Envoy CPU per request with no filter, Envoy's native filters and our wasm plugins: one
/// Envoy (`--concurrency 1`) with a listener for each, loaded in turn.
#[derive(Debug)]
pub struct Overhead {
    /// Median CPU µs per request of each listener.
    pub none_us: f64,
    pub native_us: f64,
    pub wasm_us: f64,
    /// Medians of the per-round differences to the no-filter listener.
    pub native_over_us: f64,
    pub wasm_over_us: f64,
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
    let workload = Workload::get("/bench");
    let listeners = ["none", "native", "wasm"].map(|name| envoy.listener(name));
    for addr in listeners {
        load::closed_loop(addr, &workload, CONNECTIONS, timing.warmup, client_core());
    }
    let mut per_round: Vec<[f64; 3]> = Vec::new();
    for _ in 0..timing.rounds {
        let mut round = [0.0; 3];
        for (slot, addr) in round.iter_mut().zip(listeners) {
            let before = cpu_ns(envoy.pid());
            let outcome =
                load::closed_loop(addr, &workload, CONNECTIONS, timing.round, client_core());
            if crate::not_ok(&outcome) > 0 {
                return Err(format!("{} answers not 200", crate::not_ok(&outcome)));
            }
            *slot = cpu_us_per_request(before, cpu_ns(envoy.pid()), outcome.ok)
                .ok_or("no CPU reading")?;
        }
        eprintln!(
            "  round: none {:.1}, native {:.1}, wasm {:.1} µs/req",
            round[0], round[1], round[2]
        );
        per_round.push(round);
    }
    let column = |i: usize| per_round.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let over = |i: usize| per_round.iter().map(|r| r[i] - r[0]).collect::<Vec<f64>>();
    Ok(Overhead {
        none_us: median(column(0)),
        native_us: median(column(1)),
        wasm_us: median(column(2)),
        native_over_us: median(over(1)),
        wasm_over_us: median(over(2)),
    })
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
