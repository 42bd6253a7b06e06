//! Building the plugin modules.

use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip1";

pub fn workspace_root() -> PathBuf {
    wasmgate_tests::paths::workspace_root()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command to completion; an error names it.
pub fn status(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} {:?} failed: {status}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        ))
    }
}

/// The plugin crates: every folder under `plugins/` but the shared kit and the plugins' native
/// schema check (`schemas`), which are libraries, not modules.
pub fn plugins() -> Result<Vec<String>, String> {
    let dir = workspace_root().join("plugins");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "kit" && name != "schemas")
        .collect();
    names.sort();
    Ok(names)
}

fn ensure_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: installing the {TARGET} target");
    status(Command::new("rustup").args(["target", "add", TARGET]))
}

/// Cargo's target folder (`CARGO_TARGET_DIR` or `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Modules only the tests and the bench load (`tests/modules/<folder>`), by package name: built
/// beside the plugins, into the same folder, but never listed as plugins.
pub const TEST_MODULES: &[&str] = &["wasmgate-trace-filter", "wasmgate-empty-filter"];

/// Builds every plugin and test module; returns the folder with the `.wasm` files.
pub fn build() -> Result<PathBuf, String> {
    let plugins = plugins()?;
    let modules: Vec<&str> = plugins
        .iter()
        .map(String::as_str)
        .chain(TEST_MODULES.iter().copied())
        .collect();
    build_profile("wasm", &modules)
}

/// Builds the plugins (no test module) in the `wasm-small` profile, the `wasm` profile at
/// opt-level "z", for the bench's comparison with the shipped (opt-level 3) modules; returns
/// their folder (`target/wasm32-wasip1/wasm-small`, apart from the shipped modules).
pub fn build_small() -> Result<PathBuf, String> {
    let plugins = plugins()?;
    let modules: Vec<&str> = plugins.iter().map(String::as_str).collect();
    build_profile("wasm-small", &modules)
}

/// Builds `modules` in `profile`; returns the folder with their `.wasm` files.
fn build_profile(profile: &str, modules: &[&str]) -> Result<PathBuf, String> {
    ensure_target()?;
    // One cargo invocation per module, exactly as `cargo build --profile wasm --target
    // wasm32-wasip1 -p <name>`: building them together would unify dependency features across
    // modules and grow every module by what only one of them needs.
    for (done, module) in modules.iter().enumerate() {
        eprintln!(
            "xtask: building module {} of {}: {module} ({TARGET}, profile {profile})",
            done + 1,
            modules.len()
        );
        status(cargo().args([
            "build",
            "--profile",
            profile,
            "--target",
            TARGET,
            "-p",
            module,
        ]))?;
    }
    let dir = target_dir().join(TARGET).join(profile);
    for name in modules {
        let module = dir.join(format!("{}.wasm", name.replace('-', "_")));
        let size = std::fs::metadata(&module)
            .map_err(|e| format!("{}: {e}", module.display()))?
            .len();
        eprintln!("xtask: {} ({} KiB)", module.display(), size.div_ceil(1024));
    }
    Ok(dir)
}
