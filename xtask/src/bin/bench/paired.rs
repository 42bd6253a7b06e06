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

/// One leg of the overhead runs: a listener of the one Envoy or a route of a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    EnvoyNone,
    EnvoyNative,
    EnvoyOurs,
    EnvoyEmpty,
    /// Our plugins with rate-limiting's response headers hidden (`hide_client_headers`): what
    /// its five header writes cost is the difference to [`Leg::EnvoyOurs`].
    EnvoyOursHidden,
    GatewayPlain,
    GatewayOurs,
    GatewayOursHidden,
    /// Three empty proxy-wasm filters on a route of the same gateway: the floor of three
    /// filters in our host, as [`Leg::EnvoyEmpty`] is in V8.
    GatewayEmpty,
    /// The same gateway build with our plugins compiled at opt-level "z" (`wasm-small`).
    GatewaySmall,
}

impl Leg {
    pub const ALL: [Leg; 10] = [
        Leg::EnvoyNone,
        Leg::EnvoyNative,
        Leg::EnvoyOurs,
        Leg::EnvoyEmpty,
        Leg::EnvoyOursHidden,
        Leg::GatewayPlain,
        Leg::GatewayOurs,
        Leg::GatewayOursHidden,
        Leg::GatewayEmpty,
        Leg::GatewaySmall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Leg::EnvoyNone => "Envoy, no filter",
            Leg::EnvoyNative => "Envoy, native `buffer` + `local_ratelimit` + `header_mutation`",
            Leg::EnvoyOurs => "Envoy, our 3 wasm plugins (V8)",
            Leg::EnvoyEmpty => "Envoy, 3 empty proxy-wasm filters (V8)",
            Leg::EnvoyOursHidden => {
                "Envoy, our 3 wasm plugins, rate-limiting's headers hidden (`hide_client_headers`)"
            }
            Leg::GatewayPlain => "gateway, route without plugins",
            Leg::GatewayOurs => "gateway, route with our 3 plugins",
            Leg::GatewayOursHidden => {
                "gateway, route with our 3 plugins, rate-limiting's headers hidden"
            }
            Leg::GatewayEmpty => "gateway, route with 3 empty proxy-wasm filters",
            Leg::GatewaySmall => {
                "gateway, route with our 3 plugins built at opt-level \"z\" (a second gateway)"
            }
        }
    }

    /// The leg without filters this one's overhead is counted from.
    pub fn base(self) -> Leg {
        match self {
            Leg::EnvoyNone
            | Leg::EnvoyNative
            | Leg::EnvoyOurs
            | Leg::EnvoyEmpty
            | Leg::EnvoyOursHidden => Leg::EnvoyNone,
            Leg::GatewayPlain
            | Leg::GatewayOurs
            | Leg::GatewayOursHidden
            | Leg::GatewayEmpty
            | Leg::GatewaySmall => Leg::GatewayPlain,
        }
    }
}

/// CPU per request of each data plane with and without filters: one Envoy
/// (`--concurrency 1`) with a listener each for no filter, Envoy's native filters, our wasm
/// plugins and three empty wasm filters; one gateway (`--workers 1`) with a route without
/// plugins and one with them; and a second gateway whose plugins are the opt-level "z" build.
/// All loaded in turn.
#[derive(Debug)]
pub struct Overhead {
    /// (leg, median CPU µs per request, median of the per-round differences to its base leg:
    /// zero for the bases), in [`Leg::ALL`] order.
    pub legs: Vec<(Leg, f64, f64)>,
    /// Legs that could not run, and why.
    pub missing: Vec<(Leg, String)>,
}

impl Overhead {
    pub fn cpu(&self, leg: Leg) -> Option<f64> {
        self.legs.iter().find(|l| l.0 == leg).map(|l| l.1)
    }

    pub fn over(&self, leg: Leg) -> Option<f64> {
        self.legs.iter().find(|l| l.0 == leg).map(|l| l.2)
    }

    pub fn missing(&self, leg: Leg) -> Option<&str> {
        self.missing
            .iter()
            .find(|l| l.0 == leg)
            .map(|l| l.1.as_str())
    }
}

/// The gateway's declarative file for the overhead runs: `/plain` without plugins, `/plugins`
/// with them (route-scoped), on one service.
/// The gateway's routes for the overhead runs: `/plain` without plugins, `/plugins` with ours,
/// `/hidden` with ours and rate-limiting's headers hidden, and (`empty`) `/empty` with three
/// empty filters.
fn overhead_routes(upstream: SocketAddr, plugins: &[(&'static str, Value)], empty: bool) -> String {
    let mut text = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: bench\n    url: http://{upstream}\n    routes:\n      - {{name: plain, paths: [/plain]}}\n"
    );
    for (route, plugins) in [
        ("plugins", plugins.to_vec()),
        ("hidden", proxies::headers_hidden(plugins)),
    ] {
        text.push_str(&format!(
            "      - name: {route}\n        paths: [/{route}]\n        plugins:\n"
        ));
        for (plugin, config) in plugins {
            text.push_str(&format!(
                "          - {}\n",
                json!({"name": plugin, "config": config})
            ));
        }
    }
    if empty {
        let module = proxies::empty_module();
        let name = module
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        text.push_str(&format!(
            "      - name: empty\n        paths: [/empty]\n        filter_chains:\n          - filters: [{{name: {name}}}, {{name: {name}}}, {{name: {name}}}]\n"
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
    let mut not_run = Vec::new();
    let mut config = EnvoyConfig::new(upstream)
        .concurrency(1)
        .listener("none", vec![])
        .listener("native", vec![])
        .listener("wasm", proxies::wasm_filters(&plugins))
        .listener(
            "wasm-hidden",
            proxies::wasm_filters(&proxies::headers_hidden(&plugins)),
        );
    config.listeners[1].native_filters = proxies::native_filters();
    match proxies::empty_filters() {
        Ok(filters) => config = config.listener("empty", filters),
        Err(e) => not_run.push((Leg::EnvoyEmpty, e)),
    }
    let envoy = runtime.block_on(Envoy::start(&config))?;
    proxies::pin_process(envoy.pid(), Some(core));
    let empty = proxies::empty_module();
    let declarative = overhead_routes(upstream, &plugins, empty.is_file());
    if !empty.is_file() {
        not_run.push((
            Leg::GatewayEmpty,
            format!(
                "{} is missing (`cargo xtask build` builds it)",
                empty.display()
            ),
        ));
    }
    // Third-party modules (the empty filter) come from the folder the build writes them to.
    let filters_dir = empty.parent().map(|dir| dir.as_os_str().to_owned());
    let filters_dir = filters_dir.unwrap_or_default();
    let (gateway, _) = proxies::start_gateway_with(
        &declarative,
        Some(core),
        1,
        &[std::ffi::OsStr::new("--filters-dir"), &filters_dir],
    )?;
    let small = proxies::small_dir().and_then(|dir| {
        let args = [
            std::ffi::OsStr::new("--modules-dir"),
            dir.as_os_str(),
            std::ffi::OsStr::new("--filters-dir"),
            &filters_dir,
        ];
        proxies::start_gateway_with(&declarative, Some(core), 1, &args)
    });
    let small = match small {
        Ok((running, _)) => Some(running),
        Err(e) => {
            not_run.push((Leg::GatewaySmall, e));
            None
        }
    };
    // (leg, pid, address, workload) of each leg that runs, in Leg::ALL order.
    let legs: Vec<(Leg, u32, SocketAddr, Workload)> = Leg::ALL
        .iter()
        .filter_map(|&leg| {
            let (pid, addr, path) = match leg {
                Leg::EnvoyNone => (envoy.pid(), envoy.listener("none"), "/bench"),
                Leg::EnvoyNative => (envoy.pid(), envoy.listener("native"), "/bench"),
                Leg::EnvoyOurs => (envoy.pid(), envoy.listener("wasm"), "/bench"),
                Leg::EnvoyEmpty => {
                    if not_run.iter().any(|(l, _)| *l == leg) {
                        return None;
                    }
                    (envoy.pid(), envoy.listener("empty"), "/bench")
                }
                Leg::EnvoyOursHidden => (envoy.pid(), envoy.listener("wasm-hidden"), "/bench"),
                Leg::GatewayPlain => (gateway.pid, gateway.addr, "/plain"),
                Leg::GatewayOurs => (gateway.pid, gateway.addr, "/plugins"),
                Leg::GatewayOursHidden => (gateway.pid, gateway.addr, "/hidden"),
                Leg::GatewayEmpty => {
                    if not_run.iter().any(|(l, _)| *l == leg) {
                        return None;
                    }
                    (gateway.pid, gateway.addr, "/empty")
                }
                Leg::GatewaySmall => {
                    let small = small.as_ref()?;
                    (small.pid, small.addr, "/plugins")
                }
            };
            Some((leg, pid, addr, Workload::get(path)))
        })
        .collect();
    for (_, _, addr, workload) in &legs {
        load::closed_loop(*addr, workload, CONNECTIONS, timing.warmup, client_core());
    }
    let mut per_round: Vec<Vec<f64>> = Vec::new();
    for _ in 0..timing.rounds {
        let mut round = Vec::new();
        for (_, pid, addr, workload) in &legs {
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
            round.push(
                cpu_us_per_request(before, cpu_ns(*pid), outcome.ok).ok_or("no CPU reading")?,
            );
        }
        eprintln!("  round (CPU µs/req): {round:.1?}");
        per_round.push(round);
    }
    let column = |leg: Leg| legs.iter().position(|l| l.0 == leg);
    let legs = legs
        .iter()
        .enumerate()
        .map(|(i, (leg, ..))| {
            let cpu = median(per_round.iter().map(|r| r[i]).collect());
            let over = column(leg.base()).map_or(0.0, |base| {
                median(per_round.iter().map(|r| r[i] - r[base]).collect())
            });
            (*leg, cpu, over)
        })
        .collect();
    Ok(Overhead {
        legs,
        missing: not_run,
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
