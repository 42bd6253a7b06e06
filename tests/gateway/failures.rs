//! A plugin's `wasmgate` block on the gateway's request path: its failure policy (a trapping
//! filter fails its request open or closed, as its block says) and its budgets (the callback
//! and start-up budgets and the memory cap are the block's, not the defaults).

use wasmgate_tests::client::send;
use wasmgate_tests::{EchoUpstream, Protocol, Request};

/// Writes `<name>.wasm` into `dir`: a proxy-wasm module that accepts any configuration, with
/// `imports` and the request headers callback `headers` (leaving its i32 result).
fn write_filter(dir: &std::path::Path, name: &str, imports: &str, headers: &str) {
    let wasm = wat::parse_str(format!(
        r#"(module
          {imports}
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
          (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            {headers}))"#
    ))
    .unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
}

/// One route per `(path, filter, wasmgate block)`, each with its filter alone in its chain.
fn start(
    dir: &std::path::Path,
    echo: std::net::SocketAddr,
    routes: &[(&str, &str, &str)],
) -> gateway::Gateway {
    let mut text = format!(
        "_format_version: \"3.0\"\nservices:\n  - name: e\n    url: http://{echo}\n    routes:\n"
    );
    for (path, _, _) in routes {
        text.push_str(&format!(
            "      - {{name: r{}, paths: [{path}], strip_path: false}}\n",
            path.trim_start_matches('/')
        ));
    }
    text.push_str("filter_chains:\n");
    for (path, filter, block) in routes {
        text.push_str(&format!(
            "  - {{route: r{}, filters: [{{name: {filter}, wasmgate: {block}}}]}}\n",
            path.trim_start_matches('/')
        ));
    }
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 1;
    options.runtime.filters_dir = Some(dir.to_owned());
    wasmgate_tests::gateway::start_with(options, &text)
}

async fn status(gateway: &gateway::Gateway, path: &str) -> u16 {
    let response = send(gateway.addr(), Protocol::Http1, &Request::get(path))
        .await
        .unwrap();
    response.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_open_or_closed_as_the_filters_wasmgate_block_says() {
    let filters = tempfile::tempdir().unwrap();
    write_filter(filters.path(), "trap", "", "unreachable");
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(
        filters.path(),
        echo.addr(),
        &[
            ("/open", "trap", "{failure_policy: fail_open}"),
            ("/closed", "trap", "{failure_policy: fail_closed}"),
            ("/default", "trap", "{}"),
        ],
    );
    // Twice each: the instance that trapped is replaced, and its successor answers the same.
    for _ in 0..2 {
        assert_eq!(status(&gateway, "/open").await, 200);
        assert_eq!(status(&gateway, "/closed").await, 503);
        assert_eq!(status(&gateway, "/default").await, 503);
    }
    let reached: Vec<String> = echo.arrivals().iter().map(|a| a.path.clone()).collect();
    assert_eq!(
        reached,
        ["/open", "/open"],
        "only fail-open requests go upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_and_memory_cap_are_the_blocks() {
    let filters = tempfile::tempdir().unwrap();
    // Spins for 50 ms of the host's clock, then lets the request go on.
    write_filter(
        filters.path(),
        "spin",
        r#"(import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))"#,
        "(local $start i64)
         (drop (call $now (i32.const 0)))
         (local.set $start (i64.load (i32.const 0)))
         (loop $l
           (drop (call $now (i32.const 0)))
           (br_if $l (i64.lt_u (i64.sub (i64.load (i32.const 0)) (local.get $start)) (i64.const 50000000))))
         (i32.const 0)",
    );
    // Grows its memory by 2 MiB.
    write_filter(
        filters.path(),
        "grow",
        "",
        "(drop (memory.grow (i32.const 32))) (i32.const 0)",
    );
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(
        filters.path(),
        echo.addr(),
        &[
            ("/spin-5", "spin", "{callback_budget_ms: 5}"),
            ("/spin-5000", "spin", "{callback_budget_ms: 5000}"),
            ("/grow-1", "grow", "{memory_limit_mb: 1}"),
            ("/grow-3", "grow", "{memory_limit_mb: 3}"),
        ],
    );
    assert_eq!(status(&gateway, "/spin-5").await, 503);
    assert_eq!(status(&gateway, "/spin-5000").await, 200);
    assert_eq!(status(&gateway, "/grow-1").await, 503);
    assert_eq!(status(&gateway, "/grow-3").await, 200);
}

/// The start-up budget is the block's too: a filter whose `on_configure` spins for 50 ms of
/// the host's clock is refused, naming it, with 5 ms to start, and serves with 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_budget_is_the_blocks() {
    let filters = tempfile::tempdir().unwrap();
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (local $start i64)
            (drop (call $now (i32.const 0)))
            (local.set $start (i64.load (i32.const 0)))
            (loop $l
              (drop (call $now (i32.const 0)))
              (br_if $l (i64.lt_u (i64.sub (i64.load (i32.const 0)) (local.get $start)) (i64.const 50000000))))
            (i32.const 1)))"#,
    )
    .unwrap();
    std::fs::write(filters.path().join("slow_start.wasm"), wasm).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = |budget: u32| {
        format!(
            "_format_version: \"3.0\"\nservices: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n\
             filter_chains: [{{name: c, route: r, filters: [{{name: slow_start, wasmgate: {{startup_budget_ms: {budget}}}}}]}}]\n",
            echo.addr()
        )
    };
    let options = || {
        let mut options = wasmgate_tests::gateway::options();
        options.workers = 1;
        options.runtime.filters_dir = Some(filters.path().to_owned());
        options
    };
    let refused = match gateway::Gateway::start(options(), &text(5)) {
        Ok(_) => panic!("a start over its budget was accepted"),
        Err(e) => e,
    };
    assert!(
        refused.contains("filter_chains.c.filters.slow_start") && refused.contains("Deadline"),
        "{refused}"
    );
    let gateway = wasmgate_tests::gateway::start_with(options(), &text(5000));
    assert_eq!(status(&gateway, "/").await, 200);
}
