//! Filter instances across reloads and their timers, on the gateway's own workers (review
//! findings 31 and 32): a reload keeps the instance of a filter it did not change, as Envoy
//! keeps a VM whose code and configuration are the same; a worker starts the instances of a
//! new configuration without waiting for a request, so their ticks run from the start.

use std::time::{Duration, Instant};

use wasmgate_tests::client::send;
use wasmgate_tests::{EchoUpstream, Protocol, Request};

/// Counts the requests its instance saw in its own memory and adds the count (one digit,
/// wrapping at 10) to each request as `x-count`.
const COUNTER: &str = r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $seen (mut i32) (i32.const 0))
  (data (i32.const 100) "x-count")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $seen (i32.add (global.get $seen) (i32.const 1)))
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.rem_u (global.get $seen) (i32.const 10))))
    (drop (call $add (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 200) (i32.const 1)))
    (i32.const 0)))"#;

fn filters_dir(name: &str, wasm: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.wasm")), wasm).unwrap();
    dir
}

async fn count(gateway: &gateway::Gateway) -> String {
    let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.echo_report().header_values("x-count").join(",")
}

/// Review finding 32: a reload that leaves a filter as it was leaves its instance too, with
/// the state in its memory (here, its count of requests); a filter whose configuration
/// changed starts afresh. (Before, every reload dropped every instance: the count started
/// over at each reload.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_instances_of_the_filters_it_did_not_change() {
    let filters = filters_dir("counter", &wat::parse_str(COUNTER).unwrap());
    let echo = EchoUpstream::start().await.unwrap();
    let config = |extra_route: &str, filter_config: &str| {
        format!(
            "_format_version: \"3.0\"\n\
             services: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}{extra_route}]}}]\n\
             filter_chains: [{{route: r, filters: [{{name: counter, config: \"{filter_config}\"}}]}}]\n",
            echo.addr()
        )
    };
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &config("", "a"));
    assert_eq!(count(&gateway).await, "1");
    assert_eq!(count(&gateway).await, "2");
    // Another route: the counter is the same filter, with the same instance.
    let shared = gateway.shared();
    shared
        .apply(&config(", {name: other, paths: [/other]}", "a"))
        .unwrap();
    assert_eq!(count(&gateway).await, "3");
    // Its configuration changed: a new instance.
    shared
        .apply(&config(", {name: other, paths: [/other]}", "b"))
        .unwrap();
    assert_eq!(count(&gateway).await, "1");
}

/// Review finding 31: a worker starts a configuration's instances without a request, so a
/// module's timer runs from its `on_configure` on (before, no instance existed, and no tick
/// ran, until the worker's first request for that route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_run_from_the_start_without_a_request() {
    // tests/wat/ticker.wat: a tick every 10 ms, counted in the counter `ticks`.
    let ticker = wasmgate_tests::paths::workspace_root().join("tests/wat/ticker.wat");
    let filters = filters_dir("ticker", &wat::parse_file(ticker).unwrap());
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: ticker}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let ticks = || {
        (gateway.shared().runtime.env.metrics.snapshot())
            .into_iter()
            .find(|m| m.name == "ticks")
            .map_or(0, |m| m.value)
    };
    let started = Instant::now();
    while ticks() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} ticks after {:?} without a request",
            ticks(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
