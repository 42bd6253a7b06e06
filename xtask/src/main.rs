//! `cargo xtask <command>`: the one entry point for building, running and testing wasmgate.
//!
//! - `build`: the plugins for wasm32-wasip1 in the size-tuned `wasm` profile (installs the target when missing).
//! - `test [ARGS]`: build, make sure Envoy 1.40 is available, then every test in the workspace
//!   (without ARGS, first a few seconds of every fuzz target).
//! - `run [--port N] [--envoy]`: build, then wasmgate's gateway (or a real Envoy) on localhost
//!   with the seed's defaults in front of a local echo backend, until Ctrl-C.
//! - `control-plane [--port N]`: build, then the control plane on localhost (API on :8100)
//!   with the seed's flow printed as curl lines, until Ctrl-C.
//! - `bench [--quick]`: every data plane side by side; writes docs/BENCHMARKS.md and plots.

mod control_plane;
mod envoy;
mod fuzz;
mod links;
mod pins;
mod run;
mod wasm;
mod wasm32_tests;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => wasm::build().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("test-wasm32") => wasm32_tests::run(),
        Some("run") => run::run(&args[1..]),
        Some("control-plane") => control_plane::run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            println!("{}", USAGE);
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <command>

commands:
  build            build every plugin for wasm32-wasip1 (the size-tuned `wasm` profile)
  test [ARGS]      build, install Envoy 1.40 if needed, run every test (ARGS go to cargo test;
                   without ARGS, a few seconds of every fuzz target and the plugins' unit
                   tests on wasm32-wasip1 first)
  test-wasm32      only the plugins' unit tests on wasm32-wasip1 (a WASI runner on wasmtime-py)
  run [--port N] [--envoy]
                   the seed's gateway on 127.0.0.1:N (default 8000; admin N+1), or Envoy
  control-plane [--port N]
                   the control plane on 127.0.0.1:N (default 8100) and the seed's flow as curl
  bench [--quick]  measure every data plane; writes docs/BENCHMARKS.md and its plots";

fn test(args: &[String]) -> Result<(), String> {
    pins::check()?;
    links::check()?;
    let modules = wasm::build()?;
    let envoy = envoy::ensure()?;
    // The whole suite (no cargo test arguments) includes a few seconds of every fuzz target,
    // before the tests so that their summary stays the run's last word.
    if args.is_empty() {
        fuzz::smoke()?;
        // The plugins' cores on the 32-bit target they ship on, not only natively.
        wasm32_tests::run()?;
    }
    let mut cargo = wasm::cargo();
    cargo
        .args(["test", "--workspace"])
        .args(args)
        .env("WASMGATE_WASM_DIR", &modules)
        .env("WASMGATE_ENVOY", &envoy);
    wasm::status(&mut cargo)
}

/// Builds the modules (also at opt-level "z", which the bench compares with the shipped ones) and
/// the native binaries (release), and runs the benchmark driver.
fn bench(args: &[String]) -> Result<(), String> {
    let modules = wasm::build()?;
    let small_modules = wasm::build_small()?;
    let envoy = envoy::ensure()?;
    wasm::status(wasm::cargo().args([
        "build",
        "--release",
        "-p",
        "gateway",
        "-p",
        "xtask",
        "-p",
        "wasmgate-ratelimit",
        "--bin",
        "gateway",
        "--bin",
        "bench",
        // policy: redis in Envoy (the bench finds it beside the gateway).
        "--bin",
        "wasmgate-ratelimit",
    ]))?;
    let bin = wasm::target_dir().join("release");
    let mut driver = std::process::Command::new(bin.join("bench"));
    driver
        .args(args)
        .env("WASMGATE_WASM_DIR", &modules)
        .env("WASMGATE_WASM_SMALL_DIR", &small_modules)
        .env("WASMGATE_ENVOY", &envoy)
        .env("WASMGATE_GATEWAY", bin.join("gateway"));
    wasm::status(&mut driver)
}
