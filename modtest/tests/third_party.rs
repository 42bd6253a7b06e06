//! Modules wasmgate did not write, tested by the `modtest` command with their own case files
//! in the in-process host, in gateway and in Envoy, with the differential mode: an
//! AssemblyScript filter on the AssemblyScript SDK (`@solo-io/proxy-runtime`, ABI 0.2.0,
//! built here with npm and `asc`), and wasmgate's own plugins' case files on every target.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (the AssemblyScript example needs node and npm)"));
    assert!(out.status.success(), "{shown}: {}", text(&out));
    out
}

/// Builds `modtest/examples/as-header-guard` under `target/` (its npm packages are installed
/// there once, as its package-lock.json pins them) and returns the module.
fn as_header_guard() -> PathBuf {
    let source = workspace().join("modtest/examples/as-header-guard");
    let dir = workspace().join("target/modtest-examples/as-header-guard");
    std::fs::create_dir_all(dir.join("assembly")).expect("build dir");
    for file in ["package.json", "package-lock.json", "assembly/index.ts"] {
        std::fs::copy(source.join(file), dir.join(file)).expect("copying the example");
    }
    if !dir.join("node_modules/.bin/asc").exists() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir));
    }
    run(Command::new("npm").args(["run", "build"]).current_dir(&dir));
    dir.join("build/as_header_guard.wasm")
}

fn modtest(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modtest"));
    command.args(args).current_dir(workspace());
    if std::env::var_os("WASMGATE_WASM_DIR").is_none() {
        command.env(
            "WASMGATE_WASM_DIR",
            workspace().join("target/wasm32-wasip1/wasm"),
        );
    }
    command.output().expect("modtest runs")
}

/// Python's standard XML parser's count of a JUnit file's test cases by verdict and target.
fn junit_counts(path: &Path) -> serde_json::Value {
    let script = r#"
import collections, json, sys
import xml.etree.ElementTree as ET
counts = collections.Counter()
for suite in ET.parse(sys.argv[1]).getroot().findall("testsuite"):
    target = suite.get("name").rsplit("[", 1)[1].rstrip("]")
    for case in suite.findall("testcase"):
        kind = "failed" if case.find("failure") is not None else "skipped" if case.find("skipped") is not None else "passed"
        counts[target + " " + kind] += 1
print(json.dumps(counts, sort_keys=True))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(path));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn an_assemblyscript_filter_passes_its_own_cases_in_the_host_gateway_and_envoy_alike() {
    let module = as_header_guard();
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let out = modtest(&[
        "run",
        "--target",
        "host,gateway,envoy",
        "--diff",
        "--module",
        module.to_str().expect("utf-8 path"),
        "--junit",
        junit.to_str().expect("utf-8 path"),
        "modtest/examples/as-header-guard/cases.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        junit_counts(&junit),
        serde_json::json!({
            "host passed": 5,
            "gateway passed": 5,
            "envoy passed": 5,
            // The two refusals are judged on each plane by their expectation.
            "gateway-vs-envoy passed": 3,
            "gateway-vs-envoy skipped": 2,
        })
    );
}

#[test]
fn the_plugins_case_files_pass_on_every_target_and_gateway_agrees_with_envoy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let out = modtest(&[
        "run",
        "-q",
        "--target",
        "host,gateway,envoy",
        "--diff",
        "--junit",
        junit.to_str().expect("utf-8 path"),
        "tests/cases",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let counts = junit_counts(&junit);
    for target in ["host", "gateway", "envoy", "gateway-vs-envoy"] {
        assert!(
            counts[format!("{target} passed")].as_u64() > Some(70),
            "{target}: {counts}"
        );
        assert_eq!(counts.get(format!("{target} failed")), None, "{counts}");
    }
}
