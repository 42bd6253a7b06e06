//! The plugins' unit tests (their pure cores) compiled for `wasm32-wasip1`, the 32-bit target
//! the modules ship on, and run by a WASI runner: `xtask/wasi-run.py` on wasmtime's Python
//! package, installed with pip into a virtualenv under `target/` (wasmgate's own host runs
//! proxy-wasm filters, not WASI commands: it has no `_start`, arguments or preopens for
//! libtest).

use std::path::PathBuf;
use std::process::Command;

use crate::wasm::{cargo, status, workspace_root};

/// wasmtime's Python package, pinned.
const WASMTIME_PY: &str = "wasmtime==51.0.0";

/// The crates whose unit tests run on wasm32.
const CRATES: [&str; 4] = [
    "wasmgate-kit",
    "rate-limiting",
    "request-size-limiting",
    "request-transformer",
];

/// Tests that need what wasm32-wasip1 has not: threads. The first runs the JSON parser on a
/// thread with a small stack to show deep nesting cannot overflow it; the second races
/// workers (threads) on one bucket, as Envoy's do on shared data.
const SKIP: [&str; 2] = [
    "json::tests::deep_nesting_and_many_keys_stay_cheap",
    "store::tests::threads_never_over_admit",
];

fn python() -> Result<PathBuf, String> {
    let venv = workspace_root().join("target/wasi-venv");
    let python = venv.join("bin/python");
    let has_wasmtime = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import wasmtime"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_wasmtime(&python) {
        return Ok(python);
    }
    eprintln!("xtask: installing {WASMTIME_PY} into {}", venv.display());
    status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    status(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        WASMTIME_PY,
    ]))?;
    Ok(python)
}

/// Builds and runs the unit tests of [`CRATES`] for wasm32-wasip1.
pub fn run() -> Result<(), String> {
    let runner = format!(
        "{} {}",
        python()?.display(),
        workspace_root().join("xtask/wasi-run.py").display()
    );
    let mut test = cargo();
    test.args(["test", "--target", "wasm32-wasip1", "--lib"]);
    for name in CRATES {
        test.args(["-p", name]);
    }
    test.arg("--");
    for name in SKIP {
        test.args(["--skip", name]);
    }
    status(test.env("CARGO_TARGET_WASM32_WASIP1_RUNNER", runner))
}
