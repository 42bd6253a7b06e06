//! docs/BENCHMARKS.md: the generated section, between markers, so hand-written sections of the
//! document (module figures from other commands) stay.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::Figures;

const BEGIN: &str = "<!-- BEGIN cargo xtask bench -->";
const END: &str = "<!-- END cargo xtask bench -->";

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let envoy = std::env::var("WASMGATE_ENVOY")
        .ok()
        .and_then(|e| std::process::Command::new(e).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}; {envoy}")
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
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

pub fn write(
    results: &[Figures],
    body_sizes: &[(usize, String, f64)],
    extras: &[(String, String)],
    quick: bool,
    took: Duration,
) -> PathBuf {
    let docs = wasmgate_tests::paths::workspace_root().join("docs");
    let _ = std::fs::create_dir_all(&docs);
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "## Data planes side by side\n");
    let _ =
        writeln!(
        out,
        "Regenerate: `cargo xtask bench` (about 5 minutes; `--quick` about 2). Measured {} on {}, \
         in one run of {:.0} s{}.\n",
        date(),
        machine(),
        took.as_secs_f64(),
        if quick { " (quick mode: 2 s per point)" } else { " (5 s per point)" }
    );
    out.push_str(
        "Method: the proxy under test runs one worker (`--concurrency 1` / `--workers 1`) pinned to \
         core 0 with `taskset`; the load generator (a keep-alive HTTP/1.1 client on hyper, in \
         `xtask/src/bin/bench`) and the upstream (a hyper server answering `ok`) share core 1. \
         Closed loop: N connections each send the next request when the last answer arrives. Open \
         loop: requests are due on a fixed schedule at 50% and 90% of that proxy's best closed-loop \
         rate, and latency counts from when a request was due (coordinated omission corrected). \
         CPU per request is the proxy's user+system time over the closed-loop runs divided by the \
         requests served; peak RSS is its VmHWM. Every workload is `GET /bench` with no body.\n\n",
    );
    let _ = writeln!(out, "| data plane | req/s c=1 | req/s c=16 | req/s c=64 | p50 / p99 ms at 50% | p50 / p99 / p99.9 ms at 90% | CPU µs/req | peak RSS MiB | note |");
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for f in results {
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
            f.note.clone().unwrap_or_default()
        );
    }
    out.push_str("\n![throughput](bench-throughput.svg)\n\n![latency](bench-latency.svg)\n\n");

    out.push_str("### Ratios from this run\n\n");
    let envoy = find(results, "Envoy, no filters");
    let native = find(results, "Envoy, native");
    let envoy_wasm = find(results, "Envoy, wasmgate");
    let gateway = find(results, "gateway, no plugins");
    let gateway_plugins = find(results, "gateway, wasmgate");
    let cpu = |f: Option<&Figures>| f.and_then(|f| f.cpu_us_per_request).unwrap_or(0.0);
    let rps = |f: Option<&Figures>| f.map_or(0.0, Figures::max_rps);
    let p99 = |f: Option<&Figures>| {
        f.and_then(|f| f.open.iter().find(|(x, _, _)| *x > 0.8))
            .map_or(0.0, |(_, _, o)| o.percentile_ms(0.99))
    };
    let _ = writeln!(out, "- gateway with plugins vs Envoy with the same wasm plugins: throughput {}, p99 at 90% load {} (lower is better).", ratio(rps(gateway_plugins), rps(envoy_wasm)), ratio(p99(gateway_plugins), p99(envoy_wasm)));
    let _ = writeln!(out, "- Plugin overhead per request (CPU, with − without): Envoy wasm {:.1} µs, Envoy native filters {:.1} µs (wasm/native {}), gateway {:.1} µs.",
        cpu(envoy_wasm) - cpu(envoy), cpu(native) - cpu(envoy), ratio(cpu(envoy_wasm) - cpu(envoy), cpu(native) - cpu(envoy)), cpu(gateway_plugins) - cpu(gateway));
    let _ = writeln!(
        out,
        "- gateway floor vs Envoy floor: throughput {}, CPU per request {}.",
        ratio(rps(gateway), rps(envoy)),
        ratio(cpu(gateway), cpu(envoy))
    );
    let upstream = find(results, "upstream alone");
    let _ = writeln!(out, "- The upstream alone (same client, same core) serves {:.0} req/s: proxy figures near it are bounded by the client core, not the proxy.\n", rps(upstream));

    if !body_sizes.is_empty() {
        out.push_str("### Request body size through the size limit (4 connections, POST)\n\n| body | data plane | req/s | MiB/s |\n| ---: | --- | ---: | ---: |\n");
        for (size, name, rps) in body_sizes {
            let _ = writeln!(
                out,
                "| {} | {name} | {rps:.0} | {:.1} |",
                human(*size),
                rps * *size as f64 / (1 << 20) as f64
            );
        }
        out.push('\n');
    }
    if !extras.is_empty() {
        out.push_str("### Wasm specifics\n\n");
        for (k, v) in extras {
            let _ = writeln!(out, "- {k}: {v}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{END}");

    let _ = crate::plots::throughput(&docs.join("bench-throughput.svg"), results);
    let _ = crate::plots::latency(&docs.join("bench-latency.svg"), results);
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

fn human(size: usize) -> String {
    match size {
        0 => "0 B".into(),
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
