//! A module of our own, hand-written in WAT (no SDK), run with the same cases in real Envoy
//! (V8) and in the in-process host: both must agree.

#[path = "runner.rs"]
mod runner;

use wasmgate_tests::cases::{run_in_envoy, CaseFile};

const CASES: &str = r#"
plugin: wat-foreign
cases:
  - name: headers read, added, replaced and removed; properties, shared data, time, metrics
    config: {}
    request:
      path: /hello?x=1
      headers: ["x-who: alice", "x-wat: 0", "x-remove-me: yes"]
    expect:
      status: 200
      headers: ["x-wat-response: 1"]
      upstream:
        path: /hello
        query: "x=1"
        headers:
          - "x-wat-saw: alice"
          - "x-wat: 1"
          - "x-wat-path: /hello?x=1"
          - "x-wat-shared: wat-value"
          - "x-wat-root: wat-foreign"
          - "x-wat-time: ok"
          - "x-wat-metric: ok"
        absent_headers: [x-remove-me]
  - name: a local response passes through the filter's own response phase
    config: {}
    request: {path: /deny}
    expect:
      status: 403
      body: "denied by wat\n"
      headers: ["x-wat-local: 1", "x-wat-response: 1", "content-type: text/plain"]
      upstream: {reached: false}
  - name: a configuration the module refuses
    config: refuse
    expect:
      config_error: "wat: configuration refused"
"#;

/// Compiles the module and writes it where the Envoy runner looks for plugin modules.
fn module() -> std::path::PathBuf {
    let root = wasmgate_tests::paths::workspace_root();
    let wasm = wat::parse_file(root.join("tests/wat/foreign.wat")).expect("foreign.wat compiles");
    let dir = wasmgate_tests::paths::wasm_dir();
    std::fs::create_dir_all(&dir).expect("wasm dir");
    let path = dir.join("wat_foreign.wasm");
    std::fs::write(&path, wasm).expect("writing wat_foreign.wasm");
    path
}

fn cases() -> CaseFile {
    let mut file: CaseFile = serde_yaml_ng::from_str(CASES).expect("cases parse");
    file.path = "tests/host/foreign.rs".into();
    file
}

#[test]
fn foreign_module_in_the_host() {
    let path = module();
    let failures = runner::run_file(&cases(), Some(&path));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_module_in_envoy() {
    module();
    let failures = run_in_envoy(&cases()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
