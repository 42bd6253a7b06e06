//! A few seconds of every libFuzzer target (`fuzz/`, docs/FUZZING.md) on the stable
//! toolchain: cargo-fuzz is installed from crates.io when missing, the targets build in
//! `target/fuzz`, apart from the workspace's own build.

use std::process::Command;

use crate::wasm::{status, target_dir, workspace_root};

/// Seconds each target runs in `cargo xtask test`; longer runs are `fuzz/run.sh SECONDS`.
const SECONDS_PER_TARGET: &str = "3";

fn ensure_cargo_fuzz() -> Result<(), String> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

pub fn smoke() -> Result<(), String> {
    ensure_cargo_fuzz()?;
    status(
        Command::new("bash")
            .arg(workspace_root().join("fuzz/run.sh"))
            .arg(SECONDS_PER_TARGET)
            .env("CARGO_TARGET_DIR", target_dir().join("fuzz")),
    )
}
