//! The feature pins of `workspace-hack`: `cargo build -p gateway` (what `run` builds) and
//! `cargo test --workspace` (what `test` builds) must ask for the same features of every crate
//! wasmtime is built from, or each compiles a wasmtime of its own, minutes on two cores.

use std::collections::BTreeSet;

use crate::wasm::cargo;

/// Every `name version [features]` of `cargo tree` for `selection` and `edges`.
pub(crate) fn resolved(selection: &[&str], edges: &str) -> Result<BTreeSet<String>, String> {
    let out = cargo()
        .arg("tree")
        .args(selection)
        .args([
            "-e",
            edges,
            "--prefix",
            "none",
            "--no-dedupe",
            "-f",
            "{p} [{f}]",
        ])
        .output()
        .map_err(|e| format!("cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree {selection:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.replace(" (*)", ""))
        .collect())
}

/// `name version` of a `cargo tree` line.
fn package(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails, naming the crates, when the two builds would resolve wasmtime's dependencies apart.
pub fn check() -> Result<(), String> {
    let wasmtime: BTreeSet<String> = resolved(&["-p", "wasmtime"], "normal,build")?
        .iter()
        .map(|line| package(line))
        .collect();
    let below = |lines: BTreeSet<String>| -> BTreeSet<String> {
        lines
            .into_iter()
            .filter(|line| wasmtime.contains(&package(line)))
            .collect()
    };
    let run = below(resolved(&["-p", "gateway"], "normal,build")?);
    let test = below(resolved(&["--workspace"], "normal,build,dev")?);
    let apart: Vec<&String> = run.symmetric_difference(&test).collect();
    if apart.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`cargo build -p gateway` and `cargo test --workspace` resolve these crates below \
         wasmtime apart, so each would build a wasmtime of its own; pin the test build's \
         features in workspace-hack/Cargo.toml:\n  {}",
        apart
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    ))
}
