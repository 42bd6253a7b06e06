//! A filter's `wasmgate.failure_policy` on both data planes: a filter that traps on every
//! request fails it closed (503, never upstream) or open (upstream without the filter), in
//! the gateway and in Envoy from the translation (FAIL_RELOAD and FAIL_OPEN), and where
//! Envoy's FAIL_OPEN differs.

use model::envoy::{bootstrap, EnvoyOptions};
use wasmgate_tests::client::send;
use wasmgate_tests::{EchoUpstream, Envoy, Protocol, Request};

/// A proxy-wasm module whose request headers callback traps.
const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_fails_open_or_closed_on_both_data_planes() {
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(
        filters.path().join("trap.wasm"),
        wat::parse_str(TRAP).unwrap(),
    )
    .unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        r#"
_format_version: "3.0"
services:
  - name: s
    url: http://{}
    routes:
      - {{name: open, paths: [/open], strip_path: false}}
      - {{name: closed, paths: [/closed], strip_path: false}}
filter_chains:
  - route: open
    filters: [{{name: trap, wasmgate: {{failure_policy: fail_open}}}}]
  - route: closed
    filters: [{{name: trap}}]
"#,
        echo.addr()
    );
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 1;
    options.runtime.filters_dir = Some(filters.path().to_owned());
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    let config = model::parse_declarative(&text).unwrap();
    let envoy_options = EnvoyOptions {
        filters_dir: Some(filters.path().to_owned()),
        ..wasmgate_tests::envoy::translation_options()
    };
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &envoy_options), 1)
        .await
        .unwrap();
    // The gateway: each trap fails its own request by the policy, and the next request runs
    // in a fresh instance (and traps again).
    // Envoy 1.40: FAIL_OPEN does not spare the request that trapped (503, wasm_fail_stream);
    // the VM then stays failed and later requests skip the filter until the next
    // configuration. FAIL_RELOAD answers 503 and runs the next request in a fresh VM.
    for (plane, addr, open) in [
        ("gateway", gateway.addr(), [200, 200]),
        ("Envoy", envoy.listener("wasmgate"), [503, 200]),
    ] {
        for (attempt, open) in open.into_iter().enumerate() {
            for (path, status) in [("/open", open), ("/closed", 503)] {
                let r = send(addr, Protocol::Http1, &Request::get(path))
                    .await
                    .unwrap();
                assert_eq!(
                    r.status,
                    status,
                    "{plane} {path} #{}: {}",
                    attempt + 1,
                    r.text()
                );
            }
        }
    }
    let reached: Vec<String> = echo.arrivals().iter().map(|a| a.path.clone()).collect();
    assert_eq!(reached, ["/open"; 3], "only fail-open requests go upstream");
}
