//! docs/BENCHMARKS.md: the generated section, between markers, so hand-written sections of the
//! document (module figures from other commands) stay.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use plotters::prelude::SeriesLabelPosition;

use crate::modules::{ColdStart, ModuleFigures};
use crate::paired::{HeadToHead, Leg, Overhead};
use crate::plots::Lines;
use crate::proxies::ChainPoint;
use crate::ratelimit::{AccuracyRun, LIMIT, OVERLOAD};
use crate::workers::{WorkersRow, CONNECTIONS};
use crate::{Figures, Timing};

const BEGIN: &str = "<!-- BEGIN cargo xtask bench -->";
const END: &str = "<!-- END cargo xtask bench -->";

/// Everything one run measured.
pub struct Report<'a> {
    /// The control plane's section, already written.
    pub distribution: &'a str,
    pub results: &'a [Figures],
    pub overhead: Result<Overhead, String>,
    pub head_to_head: Result<HeadToHead, String>,
    pub body_sizes: &'a [(usize, String, f64)],
    pub chain: &'a [ChainPoint],
    pub workers: Result<Vec<WorkersRow>, String>,
    pub accuracy: &'a [AccuracyRun],
    /// `policy: redis` against `local`; its shared-limit run is in `accuracy`.
    pub redis: &'a crate::redis::Figures,
    pub modules: &'a [Result<ModuleFigures, String>],
    pub cold_start: ColdStart,
    /// `gateway validate` on the three plugins' declarative file.
    pub validated: Result<String, String>,
    pub quick: bool,
    pub timing: Timing,
    pub load_at_start: String,
    pub took: Duration,
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A package's version as Cargo.lock pins it.
fn locked_version(package: &str) -> Option<String> {
    let lock =
        std::fs::read_to_string(wasmgate_tests::paths::workspace_root().join("Cargo.lock")).ok()?;
    let name = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    lines.find(|l| *l == name)?;
    lines
        .next()?
        .strip_prefix("version = \"")
        .map(|v| v.trim_end_matches('"').to_owned())
}

/// The commit measured, marked when the code (outside docs/) differs from it.
fn commit() -> String {
    let root = wasmgate_tests::paths::workspace_root();
    let root = root.to_string_lossy();
    let hash = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_line(
        "git",
        &["-C", &root, "status", "--porcelain", "--", ".", ":!docs"],
    )
    .is_some();
    if dirty {
        format!("{hash} with uncommitted changes")
    } else {
        hash
    }
}

fn setting(report: &Report<'_>) -> String {
    let cores = crate::cores();
    let envoy = std::env::var("WASMGATE_ENVOY")
        .ok()
        .and_then(|e| command_line(&e, &["--version"]))
        .map(|v| v.split_whitespace().last().unwrap_or_default().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let rustc = command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into());
    let wasmtime = locked_version("wasmtime").unwrap_or_else(|| "unknown".into());
    let timing = report.timing;
    format!(
        "| | |\n| --- | --- |\n\
         | date | {} |\n\
         | machine | {cores} cores, {} |\n\
         | load average (1/5/15 min) | {} at start, {} at end |\n\
         | versions | Envoy {envoy}; wasmgate {} (gateway and bench built with `--release`, {rustc}); wasmtime {wasmtime} |\n\
         | run | {:.0} s{}: {:.1} s per closed-loop point, {:.1} s per open-loop point, {:.1} s per plugin-count point, {:.1} s per rate-limit run; rounds: {} head-to-head, {} of the worker runs, {:.1} s per leg |\n",
        date(),
        cpu_model(),
        report.load_at_start,
        load_average(),
        commit(),
        report.took.as_secs_f64(),
        if report.quick { " (`--quick`)" } else { "" },
        timing.closed.as_secs_f64(),
        timing.open.as_secs_f64(),
        timing.chain.as_secs_f64(),
        timing.rate_limit.as_secs_f64(),
        timing.rounds,
        timing.worker_rounds,
        timing.round.as_secs_f64(),
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn find<'a>(results: &'a [Figures], prefix: &str) -> Option<&'a Figures> {
    results
        .iter()
        .find(|f| f.name.starts_with(prefix) && !f.closed.is_empty())
}

fn rps(f: Option<&Figures>) -> f64 {
    f.map_or(0.0, Figures::max_rps)
}

fn cpu(f: Option<&Figures>) -> f64 {
    f.and_then(|f| f.cpu_us_per_request).unwrap_or(0.0)
}

/// p99 at 90% of the data plane's own maximum.
fn p99(f: Option<&Figures>) -> f64 {
    f.and_then(|f| f.open.iter().find(|(x, _, _)| *x > 0.8))
        .map_or(0.0, |(_, _, o)| o.percentile_ms(0.99))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**behind**",
        None => "not measured",
    }
}

/// The per-request CPU budget for our three plugins in the gateway.
const GATEWAY_OVERHEAD_BUDGET_US: f64 = 5.0;
/// Our plugins' overhead in Envoy over three empty proxy-wasm filters' at most.
const ENVOY_OVER_EMPTY: f64 = 1.3;
/// gateway + plugins over Envoy + plugins in req/s at least.
const THROUGHPUT_OVER_ENVOY: f64 = 2.0;
/// Cold start with a warm module cache at most.
const WARM_START_BUDGET: Duration = Duration::from_millis(50);
/// Each module's size below this (1 MB, decimal).
const MODULE_SIZE_LIMIT: u64 = 1_000_000;

/// What rate-limiting's five response-header writes cost of a leg's overhead: the leg against
/// the same plugins with the headers hidden (`hide_client_headers`), run side by side.
fn header_writes(o: &Overhead, ours: Leg, hidden: Leg) -> String {
    match (o.over(ours), o.over(hidden)) {
        (Some(ours), Some(hidden)) => format!(
            "; of it, rate-limiting's 5 response-header writes (Kong's `X-RateLimit-*`, \
             `RateLimit-*`): {:+.1} µs, measured against the same plugins with \
             `hide_client_headers`",
            ours - hidden
        ),
        _ => String::new(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The targets, each with this run's figures and whether it is met.
fn targets(out: &mut String, report: &Report<'_>) {
    out.push_str(
        "### Targets: where wasmgate stands in this run

",
    );
    out.push_str(
        "From the head-to-head runs below (compared data planes running at once, taking turns, \
         medians over rounds), the one-and-two-workers runs, the module figures and the \
         rate-limit runs. Each ratio is measured against its comparison in the same run.\n\n",
    );
    let start = out.len();
    out.push_str("| target | measured in this run | status |\n| --- | --- | --- |\n");
    let target = "The 3 plugins add ≤ 5 µs of CPU per request in `gateway`";
    match &report.overhead {
        Ok(o) => match (
            o.cpu(Leg::GatewayPlain),
            o.cpu(Leg::GatewayOurs),
            o.over(Leg::GatewayOurs),
        ) {
            (Some(plain), Some(ours), Some(over)) => {
                let _ = writeln!(
                    out,
                    "| {target} | {over:+.1} µs per request over the same gateway's route without plugins ({plain:.1} → {ours:.1} µs; {} the budget){}{} | {} |",
                    ratio(over, GATEWAY_OVERHEAD_BUDGET_US),
                    o.over(Leg::GatewayEmpty).map_or(String::new(), |empty| format!(
                        "; three empty proxy-wasm filters on a route alone: {empty:+.1} µs"
                    )),
                    header_writes(o, Leg::GatewayOurs, Leg::GatewayOursHidden),
                    verdict(Some(over <= GATEWAY_OVERHEAD_BUDGET_US))
                );
            }
            _ => {
                let _ = writeln!(out, "| {target} | a leg did not run | not measured |");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "| {target} | {e} | not measured |");
        }
    }
    let target = "In Envoy, our 3 plugins cost ≤ 1.3× three empty proxy-wasm filters";
    match &report.overhead {
        Ok(o) => match (o.over(Leg::EnvoyOurs), o.over(Leg::EnvoyEmpty)) {
            (Some(ours), Some(empty)) => {
                let status = if empty <= 0.0 {
                    "not determinable (the empty filters measured no cost above noise)"
                } else {
                    verdict(Some(ours <= ENVOY_OVER_EMPTY * empty))
                };
                let _ = writeln!(
                    out,
                    "| {target} | Envoy CPU per request above no filter: our plugins {ours:+.1} µs, empty filters {empty:+.1} µs ({}){} | {status} |",
                    ratio(ours, empty),
                    header_writes(o, Leg::EnvoyOurs, Leg::EnvoyOursHidden),
                );
            }
            _ => {
                let why = o
                    .missing(Leg::EnvoyEmpty)
                    .unwrap_or("a leg did not run")
                    .to_owned();
                let _ = writeln!(out, "| {target} | {why} | not measured |");
            }
        },
        Err(e) => {
            let _ = writeln!(out, "| {target} | {e} | not measured |");
        }
    }
    let target =
        "`gateway` + 3 plugins serves ≥ 2× the req/s of Envoy + the same plugins at 16 connections";
    match &report.head_to_head {
        Ok(h) => {
            let (gateway, envoy) = h.rps;
            let _ = writeln!(
                out,
                "| {target} | {gateway:.0} vs {envoy:.0} req/s, both running at once ({}) | {} |",
                ratio(gateway, envoy),
                verdict(Some(gateway >= THROUGHPUT_OVER_ENVOY * envoy))
            );
        }
        Err(e) => {
            let _ = writeln!(out, "| {target} | {e} | not measured |");
        }
    }
    let target = "Cold start with the 3 plugins, to the first proxied response, ≤ 50 ms with a warm module cache";
    let cold = match &report.cold_start.cold {
        Ok(cold) => format!("{:.1} ms with an empty cache", ms(*cold)),
        Err(e) => format!("empty cache: {e}"),
    };
    match &report.cold_start.warm {
        Ok(warm) => {
            let _ = writeln!(
                out,
                "| {target} | {:.1} ms with a warm cache, median of 3 ({} the budget); {cold} | {} |",
                ms(*warm),
                ratio(ms(*warm), ms(WARM_START_BUDGET)),
                verdict(Some(*warm <= WARM_START_BUDGET))
            );
        }
        Err(e) => {
            let _ = writeln!(out, "| {target} | warm cache: {e}; {cold} | not measured |");
        }
    }
    let target = "Report how throughput and CPU per request change from 1 to 2 workers, with the client's placement stated";
    match &report.workers {
        Ok(rows) => match worker_pair(rows, "gateway") {
            Some((one, two)) => {
                let _ = writeln!(
                    out,
                    "| {target} | gateway + 3 plugins, 1 worker on {} → 2 workers on {} (client and upstream on core 1, shared with the second worker): {} | reported (see One worker and two) |",
                    one.placement,
                    two.placement,
                    worker_changes(one, two)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {target} | the gateway's legs did not run | not measured |"
                );
            }
        },
        Err(e) => {
            let _ = writeln!(out, "| {target} | {e} | not measured |");
        }
    }
    let target = "Each module < 1 MB";
    let sizes: Vec<&ModuleFigures> = report.modules.iter().flatten().collect();
    match sizes.iter().max_by_key(|m| m.size_bytes) {
        Some(largest) => {
            let _ = writeln!(
                out,
                "| {target} | largest of {}: {} {} bytes ({} of 1,000,000) | {} |",
                sizes.len(),
                largest.plugin,
                thousands(largest.size_bytes),
                ratio(largest.size_bytes as f64, MODULE_SIZE_LIMIT as f64),
                verdict((sizes.len() == 3).then_some(largest.size_bytes < MODULE_SIZE_LIMIT))
            );
        }
        None => {
            let _ = writeln!(out, "| {target} | no module measured | not measured |");
        }
    }
    let ours: Vec<&AccuracyRun> = report
        .accuracy
        .iter()
        .filter(|r| r.ours && r.error.is_none())
        .collect();
    let worst = ours.iter().map(|r| r.worst_over()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "| no over-admission in any rate-limit run | {} runs of our plugin (Envoy and gateway), worst second {} the limit of {LIMIT} | {} |",
        ours.len(),
        if worst == 0 {
            "at or below".to_owned()
        } else {
            format!("{worst} above")
        },
        verdict((!ours.is_empty()).then_some(worst == 0))
    );
    // The targets behind, by their first column, then where else gateway trails Envoy.
    let mut behind: Vec<String> = out[start..]
        .lines()
        .filter(|l| l.ends_with("| **behind** |"))
        .filter_map(|l| l.split(" | ").next())
        .map(|target| target.trim_start_matches("| ").to_owned())
        .collect();
    let (planes, rows) = body_size_table(report.body_sizes);
    let column = |prefix: &str| planes.iter().position(|p| p.starts_with(prefix));
    if let (Some(envoy), Some(gateway)) = (column("Envoy"), column("gateway")) {
        for (size, values) in rows {
            if values[gateway] < values[envoy] {
                behind.push(format!(
                    "gateway vs Envoy with the size limit at {} request bodies ({})",
                    human(size),
                    ratio(values[gateway], values[envoy])
                ));
            }
        }
    }
    if behind.is_empty() {
        out.push_str("\nwasmgate is behind on none of the targets in this run.\n\n");
    } else {
        let _ = writeln!(
            out,
            "\n**Behind in this run:** {}. Why each is missed, with a count of instructions per \
             request that does not move with the machine's load: [Why the targets are \
             missed](#why-the-targets-are-missed) below.\n",
            behind.join("; ")
        );
    }
}

/// How the head-to-head figures were taken, and all of them.
fn head_to_head(out: &mut String, report: &Report<'_>) {
    out.push_str(
        "### Head to head

",
    );
    let _ = writeln!(
        out,
        "This machine is shared and its load drifts within seconds, which moves scenarios measured \
         one after the other (the table above) by more than some of the differences the targets \
         ask about. So the compared data planes also run at the same time, each with one worker \
         pinned to core 0, and take turns: {} rounds of {:.1} s per data plane; figures are the \
         medians over rounds (overheads: the median of each round's difference).\n",
        report.timing.rounds,
        report.timing.round.as_secs_f64()
    );
    match &report.overhead {
        Ok(o) => {
            out.push_str(
                "**Overhead of the plugins**: one Envoy (`--concurrency 1`) with five listeners in \
                 front of the same upstream (no filter; the native filters; our three wasm plugins; \
                 three empty proxy-wasm filters, `tests/modules/empty-filter`, whose callbacks all \
                 continue, each with its own root_id and vm_id as ours have: what three filters cost \
                 in V8 before they do anything; our three with rate-limiting's response headers \
                 hidden, `hide_client_headers`, which counts the same and writes no header), one \
                 gateway (`--workers 1`) with a route without plugins, a route with our three, a \
                 route with the three and the headers hidden and a route with three empty filters \
                 (the same module, as a `filter_chains` entry), and a second gateway whose plugins are \
                 built at opt-level \"z\" (its overhead is counted from the first gateway's route \
                 without plugins: the same binary); closed loop at 16 connections on each in turn; \
                 CPU per request from the sum of the process's threads' schedstat.\n\n\
                 | leg | CPU µs/req | over the same data plane without filters |\n| --- | ---: | ---: |\n",
            );
            for leg in Leg::ALL {
                match (o.cpu(leg), o.over(leg)) {
                    (Some(cpu), Some(over)) => {
                        let over = if leg.base() == leg {
                            String::new()
                        } else {
                            format!("{over:+.1} µs")
                        };
                        let _ = writeln!(out, "| {} | {cpu:.1} | {over} |", leg.name());
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            "| {} | not measured: {} | |",
                            leg.name(),
                            o.missing(leg).unwrap_or("did not run")
                        );
                    }
                }
            }
            out.push('\n');
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "Overhead of the plugins: not measured: {e}
"
            );
        }
    }
    match &report.head_to_head {
        Ok(h) => {
            let _ = writeln!(
                out,
                "**gateway + 3 plugins vs Envoy + 3 wasm plugins**, both running at once: closed loop \
                 at 16 connections, then open loop (32 connections, latency from when each request was \
                 due) at 50% and 90% of Envoy's median closed-loop rate.\n\n\
                 | | gateway | Envoy (V8) | gateway / Envoy |\n| --- | ---: | ---: | ---: |\n\
                 | req/s, 16 connections | {:.0} | {:.0} | {} |",
                h.rps.0,
                h.rps.1,
                ratio(h.rps.0, h.rps.1)
            );
            for (fraction, rate, gateway, envoy) in &h.p99 {
                let _ = writeln!(
                    out,
                    "| p99 ms at {rate:.0} req/s ({:.0}% of Envoy's rate) | {gateway:.2} | {envoy:.2} | {} |",
                    fraction * 100.0,
                    ratio(*gateway, *envoy)
                );
            }
            out.push('\n');
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "gateway vs Envoy head to head: not measured: {e}
"
            );
        }
    }
}

/// The one-worker and two-worker rows of `plane`.
fn worker_pair<'r>(
    rows: &'r [WorkersRow],
    plane: &str,
) -> Option<(&'r WorkersRow, &'r WorkersRow)> {
    let find = |workers| {
        rows.iter()
            .find(|r| r.plane == plane && r.workers == workers)
    };
    Some((find(1)?, find(2)?))
}

/// How req/s and CPU per request move from `one` to `two` workers, per concurrency.
fn worker_changes(one: &WorkersRow, two: &WorkersRow) -> String {
    CONNECTIONS
        .iter()
        .enumerate()
        .map(|(i, connections)| {
            format!(
                "{connections} connections {:.0} → {:.0} req/s ({}), CPU {:.1} → {:.1} µs/req ({})",
                one.rps[i],
                two.rps[i],
                ratio(two.rps[i], one.rps[i]),
                one.cpu_us[i],
                two.cpu_us[i],
                ratio(two.cpu_us[i], one.cpu_us[i])
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn workers(out: &mut String, report: &Report<'_>) {
    out.push_str("### One worker and two\n\n");
    let rows = match &report.workers {
        Ok(rows) => rows,
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        out,
        "Each data plane with our three plugins, once with one worker pinned to core 0 and once \
         with two workers free to run on both cores, all four running at once and loaded in turn: \
         {} rounds of {:.1} s per data plane and concurrency, medians over rounds. The client and \
         the upstream stay on core 1, so with two workers on this 2-core machine the second \
         worker competes with them for that core: this is what a second worker buys here, not \
         on a machine with a core to spare. CPU per request counts the proxy's threads only.\n",
        report.timing.worker_rounds,
        report.timing.round.as_secs_f64()
    );
    out.push_str(
        "| data plane + 3 plugins | workers | proxy on | req/s, 16 connections | req/s, 64 connections | CPU µs/req, 16 | CPU µs/req, 64 |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} |",
            row.plane,
            row.workers,
            row.placement,
            row.rps[0],
            row.rps[1],
            row.cpu_us[0],
            row.cpu_us[1]
        );
    }
    out.push('\n');
    for plane in ["gateway", "Envoy (V8)"] {
        if let Some((one, two)) = worker_pair(rows, plane) {
            let _ = writeln!(
                out,
                "- {plane}, 1 → 2 workers: {}.",
                worker_changes(one, two)
            );
        }
    }
    out.push('\n');
}

/// Our plugins at opt-level 3 (shipped) and "z": sizes, and the gateway's CPU per request with
/// each from the overhead runs.
fn opt_levels(out: &mut String, report: &Report<'_>) {
    out.push_str("### Guest code: opt-level 3 (shipped) vs \"z\"\n\n");
    out.push_str(
        "Our three plugins built with the `wasm` profile (opt-level 3, what `cargo xtask build` \
         ships) and with `wasm-small` (the same profile at opt-level \"z\", built by the bench \
         into `target/wasm32-wasip1/wasm-small`). CPU per request: the two gateways of the \
         overhead runs above, side by side in the same rounds.\n\n\
         | | opt-level 3 | opt-level \"z\" | z / 3 |\n| --- | ---: | ---: | ---: |\n",
    );
    for m in report.modules.iter().flatten() {
        let small = m.small_size_bytes;
        let _ = writeln!(
            out,
            "| {} size | {:.1} KiB | {} | {} |",
            m.plugin,
            m.size_bytes as f64 / 1024.0,
            small.map_or("not built".into(), |b| format!(
                "{:.1} KiB",
                b as f64 / 1024.0
            )),
            small.map_or("–".into(), |b| ratio(b as f64, m.size_bytes as f64))
        );
    }
    match &report.overhead {
        Ok(o) => {
            let pair = |leg| o.cpu(leg).zip(o.over(leg));
            match (pair(Leg::GatewayOurs), pair(Leg::GatewaySmall)) {
                (Some((cpu, over)), Some((small_cpu, small_over))) => {
                    let _ = writeln!(
                        out,
                        "| gateway CPU µs/req, route with the 3 plugins | {cpu:.1} | {small_cpu:.1} | {} |\n\
                         | … of which over the route without plugins | {over:+.1} | {small_over:+.1} | {} |",
                        ratio(small_cpu, cpu),
                        ratio(small_over, over)
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "| gateway CPU µs/req | not measured: {} | | |",
                        o.missing(Leg::GatewaySmall).unwrap_or("a leg did not run")
                    );
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "| gateway CPU µs/req | not measured: {e} | | |");
        }
    }
    out.push('\n');
}

fn main_table(out: &mut String, report: &Report<'_>) {
    out.push_str(
        "Method: the proxy under test runs one worker (`--concurrency 1` / `--workers 1`) pinned to \
         core 0 with `taskset`; the load generator (a keep-alive HTTP/1.1 client on hyper, in \
         `xtask/src/bin/bench`) and the upstream (a hyper server answering `ok`) share core 1. \
         Closed loop: N connections each send the next request when the last answer arrives. Open \
         loop: requests are due on a fixed schedule at 50% and 90% of that proxy's best closed-loop \
         rate, and latency counts from when a request was due (coordinated omission corrected). \
         CPU per request is the proxy's CPU time (the sum of its threads' schedstat) over the \
         closed-loop runs divided by the requests served; peak RSS is its VmHWM. Every workload \
         is `GET /bench` with no body. At 90% of a proxy's maximum the client's core is busy \
         too (see the upstream alone), so those tails are partly this machine's. The three \
         plugins: request-size-limiting (`allowed_payload_size: 10`), rate-limiting \
         (`second: 1000000000, limit_by: service`: never triggers, but reads and counts on every \
         request) and request-transformer (the seed's `replace` + `add` of `Authorization`).\n\n",
    );
    let _ = writeln!(out, "| data plane | req/s c=1 | req/s c=16 | req/s c=64 | p50 / p99 ms at 50% | p50 / p99 / p99.9 ms at 90% | CPU µs/req | peak RSS MiB | note |");
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for f in report.results {
        let rps: Vec<String> = (0..3)
            .map(|i| {
                f.closed
                    .get(i)
                    .map_or("–".into(), |(_, o)| format!("{:.0}", o.rps()))
            })
            .collect();
        let at = |frac: f64, qs: &[f64]| {
            f.open
                .iter()
                .find(|(x, _, _)| (*x - frac).abs() < 0.01)
                .map_or("–".into(), |(_, _, o)| {
                    qs.iter()
                        .map(|q| format!("{:.2}", o.percentile_ms(*q)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
        };
        let mut notes: Vec<String> = f.note.iter().cloned().collect();
        if f.not_ok > 0 {
            notes.push(format!("{} answers not 200", f.not_ok));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            rps[0],
            rps[1],
            rps[2],
            at(0.5, &[0.5, 0.99]),
            at(0.9, &[0.5, 0.99, 0.999]),
            f.cpu_us_per_request
                .map_or("–".into(), |c| format!("{c:.1}")),
            f.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            notes.join("; ")
        );
    }
    out.push_str("\n![throughput](bench-throughput.svg)\n\n![latency](bench-latency.svg)\n\n");
}

fn ratios(out: &mut String, results: &[Figures]) {
    let envoy = find(results, "Envoy, no filters");
    let native = find(results, "Envoy, native");
    let envoy_wasm = find(results, "Envoy, wasmgate");
    let gateway = find(results, "gateway, no plugins");
    let gateway_plugins = find(results, "gateway, wasmgate");
    out.push_str("### Ratios from this run\n\n");
    let _ = writeln!(
        out,
        "- gateway with plugins vs Envoy with the same wasm plugins: throughput {} ({:.0} vs {:.0} req/s), p99 at 90% of each one's own maximum {} ({:.2} vs {:.2} ms; lower is better; the offered rates differ, see the head-to-head runs for the same rate), CPU per request {} ({:.1} vs {:.1} µs).",
        ratio(rps(gateway_plugins), rps(envoy_wasm)),
        rps(gateway_plugins),
        rps(envoy_wasm),
        ratio(p99(gateway_plugins), p99(envoy_wasm)),
        p99(gateway_plugins),
        p99(envoy_wasm),
        ratio(cpu(gateway_plugins), cpu(envoy_wasm)),
        cpu(gateway_plugins),
        cpu(envoy_wasm)
    );
    let _ = writeln!(
        out,
        "- Plugin overhead per request (CPU, with − without): Envoy wasm {:.1} µs ({:.1} − {:.1}), Envoy native filters {:.1} µs ({:.1} − {:.1}); wasm/native {}; gateway {:.1} µs ({:.1} − {:.1}).",
        cpu(envoy_wasm) - cpu(envoy),
        cpu(envoy_wasm),
        cpu(envoy),
        cpu(native) - cpu(envoy),
        cpu(native),
        cpu(envoy),
        ratio(cpu(envoy_wasm) - cpu(envoy), cpu(native) - cpu(envoy)),
        cpu(gateway_plugins) - cpu(gateway),
        cpu(gateway_plugins),
        cpu(gateway)
    );
    let _ = writeln!(
        out,
        "- gateway floor vs Envoy floor: throughput {} ({:.0} vs {:.0} req/s), CPU per request {} ({:.1} vs {:.1} µs).",
        ratio(rps(gateway), rps(envoy)),
        rps(gateway),
        rps(envoy),
        ratio(cpu(gateway), cpu(envoy)),
        cpu(gateway),
        cpu(envoy)
    );
    let upstream = find(results, "upstream alone");
    let _ = writeln!(out, "- The upstream alone (same client, same core) serves {:.0} req/s: proxy figures near it are bounded by the client core, not the proxy.\n", rps(upstream));
}

fn plugin_count(out: &mut String, report: &Report<'_>, docs: &std::path::Path) {
    if report.chain.is_empty() {
        return;
    }
    out.push_str("### Number of plugins\n\n");
    let _ = writeln!(
        out,
        "The first 0, 1, 2 and 3 of the plugins above in chain order (size limit, + rate limit, + transform), \
         each data plane with one worker pinned to core 0, closed loop at 16 connections for {:.1} s after a warm-up.\n",
        report.timing.chain.as_secs_f64()
    );
    out.push_str("| data plane | plugins | req/s | vs 0 plugins | p99 ms | CPU µs/req | CPU over 0 plugins | note |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    let mut planes: Vec<&str> = Vec::new();
    for point in report.chain {
        if !planes.contains(&point.plane) {
            planes.push(point.plane);
        }
    }
    let mut rps_series = Vec::new();
    let mut cpu_series = Vec::new();
    for plane in planes {
        let points: Vec<&ChainPoint> = report.chain.iter().filter(|p| p.plane == plane).collect();
        let floor = points.iter().find(|p| p.plugins == 0);
        for p in &points {
            let cpu = p.cpu_us_per_request.unwrap_or(0.0);
            let floor_cpu = floor.and_then(|f| f.cpu_us_per_request).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "| {plane} | {} | {:.0} | {} | {:.2} | {cpu:.1} | {:+.1} µs | {} |",
                p.plugins,
                p.rps,
                floor.map_or("–".into(), |f| ratio(p.rps, f.rps)),
                p.p99_ms,
                cpu - floor_cpu,
                if p.not_ok > 0 {
                    format!("{} answers not 200", p.not_ok)
                } else {
                    String::new()
                }
            );
        }
        rps_series.push((plane.to_owned(), points.iter().map(|p| p.rps).collect()));
        cpu_series.push((
            plane.to_owned(),
            points
                .iter()
                .map(|p| p.cpu_us_per_request.unwrap_or(0.0))
                .collect(),
        ));
    }
    let x_labels: Vec<String> = ["none", "size limit", "+ rate limit", "+ transform"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let _ = Lines {
        title: "Throughput by number of plugins (16 connections, one proxy core)",
        x_labels: x_labels.clone(),
        y_desc: "requests per second",
        series: rps_series,
        legend: SeriesLabelPosition::LowerLeft,
    }
    .draw(&docs.join("bench-plugins-throughput.svg"));
    let _ = Lines {
        title: "Proxy CPU per request by number of plugins",
        x_labels,
        y_desc: "µs of CPU per request",
        series: cpu_series,
        legend: SeriesLabelPosition::UpperLeft,
    }
    .draw(&docs.join("bench-plugins-cpu.svg"));
    out.push_str("\n![throughput by number of plugins](bench-plugins-throughput.svg)\n\n![CPU by number of plugins](bench-plugins-cpu.svg)\n\n");
}

fn accuracy(out: &mut String, report: &Report<'_>, docs: &std::path::Path) {
    if report.accuracy.is_empty() {
        return;
    }
    out.push_str("### Rate-limit accuracy under overload\n\n");
    let _ = writeln!(
        out,
        "A limit of {LIMIT} requests per second for everyone (our plugin: `second: {LIMIT}, limit_by: ip`, and every \
         client is 127.0.0.1; Envoy's native `local_ratelimit`: a token bucket of {LIMIT} tokens refilled by {LIMIT} \
         every second, shared by the workers). The client offers {:.0}× the limit ({:.0} req/s, open loop, evenly \
         spaced over 16 kept connections) for {:.1} s starting 0.2 s into a second; the upstream counts the requests \
         that reach it per aligned UTC second (the first and last seconds are partial). The proxy runs 2 or 4 workers \
         and is not pinned; client and upstream share core 1.\n",
        OVERLOAD,
        LIMIT as f64 * OVERLOAD,
        report.timing.rate_limit.as_secs_f64()
    );
    out.push_str("| data plane | workers | offered req/s | admitted per aligned second | full seconds min / mean / max | worst over-admission | 200 | 429 | other | note |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
    let mut series = Vec::new();
    for run in report.accuracy {
        let full = run.full_seconds();
        let summary = match (full.iter().min(), full.iter().max()) {
            (Some(min), Some(max)) => format!(
                "{min} / {:.1} / {max}",
                full.iter().sum::<u64>() as f64 / full.len() as f64
            ),
            _ => "–".into(),
        };
        let seconds: Vec<String> = run.seconds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {summary} | {} | {} | {} | {} | {} |",
            run.plane,
            run.workers,
            run.offered_rps,
            seconds.join(", "),
            run.worst_over(),
            run.ok,
            run.limited,
            run.other,
            run.error.clone().unwrap_or_default()
        );
        if run.error.is_none() {
            series.push((
                format!("{}, {} workers", run.plane, run.workers),
                run.seconds.iter().map(|n| *n as f64).collect::<Vec<f64>>(),
            ));
        }
    }
    let seconds = series.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    series.push((format!("limit ({LIMIT}/s)"), vec![LIMIT as f64; seconds]));
    let _ = Lines {
        title: "Admitted per aligned second under 4× overload (first and last partial)",
        x_labels: (0..seconds).map(|s| format!("second {s}")).collect(),
        y_desc: "requests reaching the upstream",
        series,
        legend: SeriesLabelPosition::LowerRight,
    }
    .draw(&docs.join("bench-rate-limit.svg"));
    out.push_str(
        "\nOur plugin counts in a fixed window per aligned second (Kong's `second`), shared by all \
         workers through proxy-wasm shared data with compare-and-swap. Envoy's native filter is a \
         token bucket, not a calendar window: an aligned second can see the full bucket plus a \
         refill.",
    );
    if report
        .accuracy
        .iter()
        .any(|r| r.plane.starts_with("policy: redis"))
    {
        let _ = write!(
            out,
            " The `policy: redis` row is three data planes sharing one limit: 2 `gateway`s (1 \
             worker each, the rate-limit service in-process) and 1 Envoy (2 workers, \
             `wasmgate-ratelimit` beside it), one plugin id (one budget) counted in one \
             `redis-server`, `second: {LIMIT}, policy: redis`; the {:.0} req/s are offered in \
             equal parts to the three (6 connections each), nothing pinned; its `workers` are \
             the three's together.",
            LIMIT as f64 * OVERLOAD
        );
    }
    out.push_str("\n\n![admitted per second](bench-rate-limit.svg)\n\n");
}

/// `policy: redis` against `policy: local`: latency and CPU per request.
pub fn redis_policy(out: &mut String, figures: &crate::redis::Figures) {
    out.push_str("### rate-limiting: `policy: redis` against `policy: local`\n\n");
    let _ = writeln!(
        out,
        "What counting in Redis adds to a request. Each data plane runs rate-limiting with \
         `second: 1000000000, limit_by: service` (never refused: every request is counted), \
         once with `policy: local` and once with `policy: redis` (a `redis-server` on \
         loopback, on the client core): `gateway` with its in-process rate-limit service, \
         Envoy with `wasmgate-ratelimit` beside it (its bootstrap from `gateway \
         envoy-bootstrap --ratelimit-address`). Each proxy and service on the proxy core, one \
         worker. The four take turns, {} rounds; in each turn, {:.1} s of one keep-alive \
         connection sending in series (the latency a request pays, merged over the rounds), \
         then {:.1} s of {} connections (req/s, and CPU per request: the proxy's, the \
         gateway's including its service; the service's for Envoy; Redis's).\n",
        figures.rounds,
        figures.round.as_secs_f64(),
        figures.round.as_secs_f64() / 2.0,
        crate::redis::CPU_CONNECTIONS
    );
    let rows = match &figures.latency {
        Ok(rows) => rows,
        Err(e) => {
            let _ = writeln!(out, "{e}\n");
            return;
        }
    };
    out.push_str(
        "| data plane | policy | requests in series | p50 ms | p99 ms | added p50 / p99 ms | req/s busy | proxy CPU µs/req | service CPU µs/req | Redis CPU µs/req | not 200 |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1}"));
    for row in rows {
        let local = rows
            .iter()
            .find(|r| r.plane == row.plane && r.policy == "local");
        let added = match local {
            Some(local) if row.policy == "redis" => format!(
                "{:+.3} / {:+.3}",
                row.p50_ms - local.p50_ms,
                row.p99_ms - local.p99_ms
            ),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.3} | {added} | {:.0} | {} | {} | {} | {} |",
            row.plane,
            row.policy,
            row.requests,
            row.p50_ms,
            row.p99_ms,
            row.busy_rps,
            cell(row.proxy_cpu_us),
            cell(row.service_cpu_us),
            cell(row.redis_cpu_us),
            row.not_ok
        );
    }
    out.push('\n');
}

/// The data planes of the body-size runs, in order, and for each size their req/s.
fn body_size_table(body_sizes: &[(usize, String, f64)]) -> (Vec<&str>, Vec<(usize, Vec<f64>)>) {
    let mut planes: Vec<&str> = Vec::new();
    let mut rows: Vec<(usize, Vec<f64>)> = Vec::new();
    for (size, name, _) in body_sizes {
        if !planes.contains(&name.as_str()) {
            planes.push(name);
        }
        if !rows.iter().any(|(s, _)| s == size) {
            rows.push((*size, Vec::new()));
        }
    }
    for (size, values) in &mut rows {
        *values = planes
            .iter()
            .map(|plane| {
                body_sizes
                    .iter()
                    .find(|(s, n, _)| s == size && n == plane)
                    .map_or(0.0, |(_, _, rps)| *rps)
            })
            .collect();
    }
    (planes, rows)
}

fn body_sizes(out: &mut String, body_sizes: &[(usize, String, f64)]) {
    if body_sizes.is_empty() {
        return;
    }
    let (planes, rows) = body_size_table(body_sizes);
    out.push_str("### Request body size through the size limit (4 connections, POST)\n\n| body |");
    for plane in &planes {
        let _ = write!(out, " {plane} req/s (MiB/s) |");
    }
    let short = |name: &str| name.split(' ').next().unwrap_or_default().to_owned();
    let _ = write!(
        out,
        " {} |\n| ---: |",
        match planes.as_slice() {
            [first, second] => format!("{} / {}", short(second), short(first)),
            _ => "ratio".into(),
        }
    );
    for _ in 0..=planes.len() {
        out.push_str(" ---: |");
    }
    out.push('\n');
    for (size, values) in &rows {
        let _ = write!(out, "| {} |", human(*size));
        for rps in values {
            let _ = write!(
                out,
                " {rps:.0} ({:.1}) |",
                rps * *size as f64 / (1 << 20) as f64
            );
        }
        let _ = writeln!(
            out,
            " {} |",
            match values.as_slice() {
                [first, second] => ratio(*second, *first),
                _ => "–".into(),
            }
        );
    }
    out.push('\n');
}

fn wasm_specifics(out: &mut String, report: &Report<'_>) {
    out.push_str("### Wasm specifics\n\n");
    out.push_str(
        "Each module in our host (the `host` crate with the gateway's engine configuration: \
         wasmtime, Cranelift, pooling allocator, epoch interruption, no compilation cache), \
         measured in the bench process: compile is `PluginModule::new` (median of 3), instance is \
         a worker's ready instance (instantiate, `_initialize`, `on_vm_start`, `on_configure` with \
         the configuration above; median of 21). \"Config\" is the plugin's own validation of that \
         configuration.\n\n| module | size | compile | instance | config |\n| --- | ---: | ---: | ---: | --- |\n",
    );
    for figures in report.modules {
        match figures {
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "| {} | {:.1} KiB | {:.1} ms | {:.0} µs | {} |",
                    m.plugin,
                    m.size_bytes as f64 / 1024.0,
                    m.compile.as_secs_f64() * 1e3,
                    m.instantiate.as_secs_f64() * 1e6,
                    match &m.validation {
                        Ok(()) => "valid".to_owned(),
                        Err(e) => format!("refused: {e}"),
                    }
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {e} | | | | |");
            }
        }
    }
    out.push('\n');
    let start = |figure: &Result<Duration, String>| match figure {
        Ok(took) => format!("{:.1} ms", ms(*took)),
        Err(e) => e.clone(),
    };
    let _ = writeln!(
        out,
        "- gateway start to its first proxied response (3 plugins, one worker on core 0), with an \
         empty module cache folder (every module compiled): {}; with the folder that start left \
         (median of 3): {}",
        start(&report.cold_start.cold),
        start(&report.cold_start.warm)
    );
    let _ = writeln!(
        out,
        "- `gateway validate` on the three-plugin declarative file used above: {}\n",
        match &report.validated {
            Ok(_) => "valid".to_owned(),
            Err(e) => format!("**refused**: {}", e.replace('\n', " ")),
        }
    );
}

pub fn write(report: &Report<'_>) -> PathBuf {
    let docs = wasmgate_tests::paths::workspace_root().join("docs");
    let _ = std::fs::create_dir_all(&docs);
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "## Data planes side by side\n");
    out.push_str(
        "Regenerate: `cargo xtask bench` (under 10 minutes; `--quick` under 2, with shorter \
         points and the rate-limit runs at 2 workers only). This section is written by that \
         command; the sections after it are not.\n\n",
    );
    out.push_str(&setting(report));
    out.push('\n');
    targets(&mut out, report);
    main_table(&mut out, report);
    ratios(&mut out, report.results);
    head_to_head(&mut out, report);
    opt_levels(&mut out, report);
    workers(&mut out, report);
    plugin_count(&mut out, report, &docs);
    accuracy(&mut out, report, &docs);
    redis_policy(&mut out, report.redis);
    body_sizes(&mut out, report.body_sizes);
    wasm_specifics(&mut out, report);
    out.push_str(report.distribution);
    let _ = writeln!(out, "{END}");

    let _ = crate::plots::throughput(&docs.join("bench-throughput.svg"), report.results);
    let _ = crate::plots::latency(&docs.join("bench-latency.svg"), report.results);
    let path = docs.join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &existing[..b],
            out.trim_end(),
            &existing[e + END.len()..]
        ),
        _ => format!("{}\n{}", existing.trim_end(), out),
    };
    let _ = std::fs::write(&path, updated);
    path
}

/// 302256 → "302,256".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(size: usize) -> String {
    match size {
        0 => "0 B".into(),
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}

fn date() -> String {
    command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default()
}
