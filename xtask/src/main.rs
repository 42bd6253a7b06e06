//! `cargo xtask <command>`: the one entry point for building, running and testing wasmgate.
//!
//! - `build`: the plugins for wasm32-wasip1 in release (installs the target when missing).
//! - `test [ARGS]`: build, make sure Envoy 1.40 is available, then every test in the workspace.
//! - `run [--port N]`: build, then a real Envoy on localhost with the seed's defaults in front
//!   of a local echo upstream, until Ctrl-C.

mod envoy;
mod run;
mod wasm;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => wasm::build().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("run") => run::run(&args[1..]),
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
  build            build every plugin for wasm32-wasip1 (release)
  test [ARGS]      build, install Envoy 1.40 if needed, run every test (ARGS go to cargo test)
  run [--port N]   start Envoy on 127.0.0.1:N (default 8000) with the seed's defaults";

fn test(args: &[String]) -> Result<(), String> {
    let modules = wasm::build()?;
    let envoy = envoy::ensure()?;
    let mut cargo = wasm::cargo();
    cargo
        .args(["test", "--workspace"])
        .args(args)
        .env("WASMGATE_WASM_DIR", &modules)
        .env("WASMGATE_ENVOY", &envoy);
    wasm::status(&mut cargo)
}
