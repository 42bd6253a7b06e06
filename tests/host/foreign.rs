//! A module of our own, hand-written in WAT (no SDK), run with the same cases in real Envoy
//! (V8) and in the in-process host: both must agree.

use crate::runner;

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

/// Compiles the module and writes it where the Envoy runner looks for plugin modules: once per
/// process, through a rename, so no test ever reads a half-written file.
fn module() -> std::path::PathBuf {
    static MODULE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    MODULE
        .get_or_init(|| {
            let root = wasmgate_tests::paths::workspace_root();
            let wasm =
                wat::parse_file(root.join("tests/wat/foreign.wat")).expect("foreign.wat compiles");
            let dir = wasmgate_tests::paths::wasm_dir();
            std::fs::create_dir_all(&dir).expect("wasm dir");
            let path = dir.join("wat_foreign.wasm");
            let partial = dir.join(format!("wat_foreign.wasm.{}", std::process::id()));
            std::fs::write(&partial, wasm).expect("writing wat_foreign.wasm");
            std::fs::rename(&partial, &path).expect("renaming wat_foreign.wasm");
            path
        })
        .clone()
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

/// An AssemblyScript-style module: ABI 0.2.0, `malloc`, `wasi_unstable`, and
/// `proxy_continue_request` to resume after an HTTP call answered by the test. The answer
/// comes to the root context (as in Envoy, where every call is the root context's), and the
/// module makes the calling stream's context effective first, as that SDK does.
#[test]
fn abi_0_2_0_module_with_an_http_call() {
    use host::testing::{Harness, TestRequest};
    use host::{HttpCallResponse, HttpCallResult, PluginConfig};

    let text = r#"(module
  (import "wasi_unstable" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_request" (func $continue (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (global $caller (mut i32) (i32.const 0))
  ;; iovec at 0: text at 1024, 6 bytes
  (data (i32.const 0) "\00\04\00\00\06\00\00\00")
  (data (i32.const 1024) "hello\0a")
  (data (i32.const 1040) "authz")
  ;; :method GET, :path /check, :authority authz
  (data (i32.const 1100) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\05\00\00\00:method\00GET\00:path\00/check\00:authority\00authz\00")
  (data (i32.const 1200) ":status")
  (data (i32.const 1216) "x-authz-status")
  (func (export "proxy_abi_version_0_2_0"))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $caller (local.get $ctx))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    (drop (call $http_call (i32.const 1040) (i32.const 5) (i32.const 1100) (i32.const 70)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 20)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call $effective (global.get $caller)))
    (if (i32.eqz (call $get_header (i32.const 6) (i32.const 1200) (i32.const 7) (i32.const 24) (i32.const 28)))
      (then (global.set $heap (global.get $heap))))
    (drop (call $add_header (i32.const 0) (i32.const 1216) (i32.const 14) (i32.load (i32.const 24)) (i32.load (i32.const 28))))
    (drop (call $continue))))"#;
    let wasm = wat::parse_str(text).expect("WAT");
    let mut h = Harness::new().expect("harness");
    h.on_http_call(|call| {
        assert_eq!(call.upstream, "authz");
        assert_eq!(call.headers.get(":path"), Some(b"/check".as_slice()));
        HttpCallResult::Response(HttpCallResponse::new(204, &[], b""))
    });
    h.load_bytes(&wasm, PluginConfig::new("as-style", ""))
        .expect("loads");
    let out = h.send(TestRequest::get("/"));
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    let upstream = out.upstream.expect("reached the upstream");
    assert_eq!(
        upstream.headers.get("x-authz-status"),
        Some(b"204".as_slice())
    );
    assert_eq!(out.http_calls.len(), 1);
    assert!(h.log_text().contains("hello"), "{}", h.log_text());
}
