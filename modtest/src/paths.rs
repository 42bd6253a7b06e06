//! Where this workspace's built modules and Envoy are, for its tests and for `modtest` run
//! from a checkout. `cargo xtask test` sets both variables; the defaults match what `cargo
//! xtask build` produces.

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The folder with the plugins' release `.wasm` modules: `WASMGATE_WASM_DIR`, else
/// `target/wasm32-wasip1/wasm`.
pub fn wasm_dir() -> PathBuf {
    std::env::var_os("WASMGATE_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip1/wasm"))
}

/// The module of a plugin by its Kong name (`request-size-limiting` →
/// `request_size_limiting.wasm`). Panics with the command to run when it is missing.
pub fn plugin_module(plugin: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{}.wasm", plugin.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with `cargo xtask build` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

/// The Envoy binary: `WASMGATE_ENVOY`, else the virtualenv `cargo xtask test` installs, else
/// `envoy` on PATH.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMGATE_ENVOY") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join("target/envoy-venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("envoy")
}
