//! The `modtest` command as a user runs it: exit status, per-case lines, JUnit XML read back
//! by Python's standard parser (`xml.etree`), GitHub annotations, and errors for bad input
//! that name the file, the case and the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// wasmgate's built plugins: `WASMGATE_WASM_DIR`, as `cargo xtask test` sets it.
fn wasm_dir() -> PathBuf {
    std::env::var_os("WASMGATE_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/wasm32-wasip1/wasm"))
}

fn modtest(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modtest"))
        .args(args)
        .current_dir(dir)
        .env("WASMGATE_WASM_DIR", wasm_dir())
        .env_remove("GITHUB_ACTIONS")
        .output()
        .unwrap_or_else(|e| panic!("running modtest: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Python's standard XML parser's view of a JUnit file: the root's counts and every test
/// case as `classname|name|failure-or-skipped-or-ok`.
fn parse_junit(path: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
cases = []
for suite in root.findall("testsuite"):
    for case in suite.findall("testcase"):
        kind = "ok"
        if case.find("failure") is not None:
            kind = "failure: " + case.find("failure").text
        elif case.find("skipped") is not None:
            kind = "skipped"
        cases.append([case.get("classname"), case.get("name"), kind])
print(json.dumps({"tests": int(root.get("tests")), "failures": int(root.get("failures")),
                  "skipped": int(root.get("skipped")), "cases": cases}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn the_plugins_case_files_pass_in_the_host_with_a_junit_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("reports/junit.xml");
    let out = modtest(
        &[
            "run",
            "--junit",
            junit.to_str().expect("utf-8 path"),
            workspace()
                .join("tests/cases")
                .to_str()
                .expect("utf-8 path"),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS host") && stdout.contains("request-size-limiting.yaml"),
        "{stdout}"
    );
    let report = parse_junit(&junit);
    let cases = report["cases"].as_array().expect("cases");
    assert!(cases.len() > 90, "{report}");
    assert_eq!(report["tests"].as_u64(), Some(cases.len() as u64));
    assert_eq!(report["failures"], 0, "{report}");
    // A case about routes does not run in the host: skipped, with its reason.
    assert!(report["skipped"].as_u64() >= Some(1), "{report}");
    assert!(cases.iter().any(|c| c[1]
        == "a Content-Length over the limit is refused with 413 before the body is read"
        && c[2] == "ok"));
}

const FAILING: &str = r#"
plugin: request-size-limiting
cases:
  - name: passes
    config: {allowed_payload_size: 1, size_unit: bytes}
    request: {method: POST, body: "x"}
    expect: {status: 200}
  - name: expects the wrong status & header
    config: {allowed_payload_size: 1, size_unit: bytes}
    request: {method: POST, body: "xy"}
    expect: {status: 200, headers: ["x-nope: 1"]}
"#;

#[test]
fn a_failing_case_exits_1_says_what_differed_and_is_a_junit_failure_and_an_annotation() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("size.yaml"), FAILING).expect("write");
    let junit = dir.path().join("junit.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_modtest"))
        .args(["run", "size.yaml", "--junit", "junit.xml"])
        .current_dir(dir.path())
        .env("WASMGATE_WASM_DIR", wasm_dir())
        .env("GITHUB_ACTIONS", "true")
        .output()
        .expect("modtest runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASS host     size.yaml:4: \"passes\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL host     size.yaml:8: \"expects the wrong status & header\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("[Http1] step 1: status: expected 200, got 413"),
        "{stdout}"
    );
    assert!(
        stdout.contains("response header x-nope: expected exactly [\"1\"], got []"),
        "{stdout}"
    );
    assert!(
        stdout.contains("::error file=size.yaml,line=8,title=modtest host%3A expects the wrong status & header::"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    let report = parse_junit(&junit);
    assert_eq!(report["tests"], 2, "{report}");
    assert_eq!(report["failures"], 1, "{report}");
    let failed = &report["cases"][1];
    assert_eq!(failed[1], "expects the wrong status & header");
    assert!(
        failed[2]
            .as_str()
            .is_some_and(|f| f.contains("status: expected 200, got 413")),
        "{report}"
    );
}

#[test]
fn bad_input_exits_2_naming_file_case_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write(
        "typo.yaml",
        "plugin: request-size-limiting\ncases:\n  - name: first\n    expect: {status: 200}\n  - name: the second\n    expect: {stauts: 200}\n",
    );
    write(
        "steps.yaml",
        "plugin: request-size-limiting\ncases:\n  - name: waits\n    steps:\n      - {expect: {}}\n      - {advance: -1, expect: {}}\n",
    );
    write("broken.wasm", "not wasm");
    write(
        "module.yaml",
        "module: broken.wasm\ncases: [{name: a, expect: {status: 200}}]\n",
    );
    write("nothing.yaml", "cases: [{name: a, expect: {}}]\n");
    for (file, wanted) in [
        (
            "typo.yaml",
            "typo.yaml: case 2 \"the second\": cases[1].expect: unknown field `stauts`",
        ),
        (
            "steps.yaml",
            "steps.yaml: case 1 \"waits\": steps[1].advance: -1 is not a number of seconds >= 0",
        ),
        ("module.yaml", "broken.wasm: the module does not load"),
        ("nothing.yaml", "nothing.yaml: no module"),
        ("missing.yaml", "missing.yaml: No such file"),
    ] {
        let out = modtest(&["run", file], dir.path());
        assert_eq!(out.status.code(), Some(2), "{file}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(wanted),
            "{file}: wanted {wanted:?} in {stderr}"
        );
    }
}

#[test]
fn the_schema_is_printed_for_editors() {
    let out = modtest(&["schema"], &workspace());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(schema["title"], "modtest case file");
}

/// A minute window's budget comes back after `advance: 60` in the host at once (its manual
/// clock); the real-clock gateway skips a case that would wait that long, saying why.
#[test]
fn advance_moves_the_hosts_clock_and_a_long_wait_is_skipped_on_real_clocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = "plugin: rate-limiting\ncases:\n  - name: a minute later\n    config: {minute: 2}\n    steps:\n      - expect: {status: 200}\n      - expect: {status: 200}\n      - expect: {status: 429}\n      - advance: 60\n        expect: {status: 200}\n";
    std::fs::write(dir.path().join("minute.yaml"), file).expect("write");
    let out = modtest(
        &["run", "--target", "host,gateway", "minute.yaml"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASS host     minute.yaml:3"), "{stdout}");
    assert!(
        stdout.contains("SKIP gateway  minute.yaml:3: \"a minute later\": its steps advance the clock 60 s, more than --max-wait (5 s)"),
        "{stdout}"
    );
    // Without the advance the budget stays spent: the step fails.
    let spent = file.replace("      - advance: 60\n        expect", "      - expect");
    std::fs::write(dir.path().join("spent.yaml"), spent).expect("write");
    let out = modtest(&["run", "spent.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// A failed case comes with what the module logged while it ran: the host's record, and in
/// `gateway` the lines the module logged during that case.
#[test]
fn a_failed_case_shows_what_the_module_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("inject.yaml"),
        "plugin: request-transformer\ncases:\n  - name: wrong status\n    protocols: [http1]\n    config: {add: {headers: [\"x-q:$(query_params.q)\"]}}\n    request: {path: \"/?q=a%0D%0AInjected:%201\"}\n    expect: {status: 200}\n",
    )
    .expect("write");
    let out = modtest(
        &["run", "--target", "host,gateway", "inject.yaml"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logged =
        "request-transformer: headers: the value rendered for header x-q holds control characters";
    assert!(
        stdout.contains(&format!("    | [Error] {logged}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "    | [ERROR] wasmgate.plugin.request-transformer@route:case-0-http1: {logged}"
        )),
        "{stdout}"
    );
}

/// A run that lasts says how far it is on stderr (every 10 s by default).
#[test]
fn a_long_run_prints_progress_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = workspace().join("tests/cases/request-size-limiting.yaml");
    let cases = modtest::cases::CaseFile::load(&file)
        .unwrap_or_else(|e| panic!("{e}"))
        .cases
        .len();
    let out = modtest(
        &[
            "run",
            "-q",
            "--progress-every",
            "0.05",
            "--target",
            "host,gateway",
            file.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("modtest: ") && l.contains(" cases, 0 failed, "))
        .unwrap_or_else(|| panic!("no progress line: {stderr}"));
    // Both targets' cases.
    assert!(line.contains(&format!("/{} cases", 2 * cases)), "{line}");
    assert!(line.contains("; running "), "{line}");
}
