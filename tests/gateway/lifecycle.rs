//! Filter instances across reloads, their timers and their calls, on the gateway's own
//! workers (review findings 21, 31 and 32): a reload keeps the instance of a filter it did not
//! change, as Envoy keeps a VM whose code and configuration are the same; a worker starts the
//! instances of a new configuration without waiting for a request, so their ticks run from
//! the start; a call outlives the stream that made it, as in Envoy; calls made from the root
//! context carry trailers both ways and their answer is bounded.

use std::time::{Duration, Instant};

use wasmgate_tests::client::send;
use wasmgate_tests::gateway::module_metric;
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
    let ticks = || module_metric(&gateway, "ticks").unwrap_or(0);
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

/// On each request: `proxy_http_call` to the service `slow` (5 s timeout), then Pause. Its
/// `proxy_on_http_call_response` counts answers in `answers` and records the context it was
/// given in the gauge `answered_context`; the root context's id is in the gauge `root_context`.
const CALLER: &str = r#"(module
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (global $root (mut i32) (i32.const 0))
  (data (i32.const 100) "service.slow")
  (data (i32.const 120) "answers")
  (data (i32.const 140) "answered_context")
  (data (i32.const 160) "root_context")
  ;; The call's headers: :method GET, :path /, :authority slow (64 bytes).
  (data (i32.const 300) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/\00:authority\00slow\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (global.set $root (local.get $ctx)))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 120) (i32.const 7) (i32.const 200)))
    (drop (call $define (i32.const 1) (i32.const 140) (i32.const 16) (i32.const 204)))
    (drop (call $define (i32.const 1) (i32.const 160) (i32.const 12) (i32.const 208)))
    (drop (call $record (i32.load (i32.const 208)) (i64.extend_i32_u (global.get $root))))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call (i32.const 100) (i32.const 12) (i32.const 300) (i32.const 64)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 220)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param i32 i32 i32 i32)
    (drop (call $increment (i32.load (i32.const 200)) (i64.const 1)))
    (drop (call $record (i32.load (i32.const 204)) (i64.extend_i32_u (local.get $ctx))))))"#;

/// Review finding 21: a stream that ends before its filter's call is answered (here at its
/// 300 ms read_timeout, while the call's upstream answers after 800 ms) leaves the call
/// running, and the answer goes to the root context, as in Envoy, where cpp-host makes every
/// call on the root context: the module's SDK keeps each call's token until its answer
/// comes. (Before, the gateway dropped the call with its stream: no answer ever came, and an
/// SDK module kept one token per such call for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlives_its_stream_and_its_answer_goes_to_the_root_context() {
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = slow.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(800)).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let filters = filters_dir("caller", &wat::parse_str(CALLER).unwrap());
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services:\n\
         - {{name: e, url: \"http://{}\", read_timeout: 300, routes: [{{name: r, paths: [/]}}]}}\n\
         - {{name: slow, url: \"http://{slow_addr}\"}}\n\
         filter_chains: [{{route: r, filters: [{{name: caller}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
        .await
        .unwrap();
    assert_eq!(response.status, 504, "{}", response.text());
    let metric = |name: &str| module_metric(&gateway, name).unwrap_or(0);
    let started = Instant::now();
    while metric("answers") < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no answer reached the module"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric("answers"), 1);
    assert_ne!(metric("root_context"), 0);
    assert_eq!(metric("answered_context"), metric("root_context"));
}

/// Makes two calls from its root context, on its first two ticks, to the service `up`:
/// `GET /small` with the request trailer `x-t: 1`, then `GET /big`. For each answer it records
/// the counts it was given (headers, body bytes, trailers) and the context id in gauges
/// `small_*` and `big_*`; `root_context` is its root context's id.
const ROOT_CALLER: &str = r#"(module
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (global $root (mut i32) (i32.const 0))
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 100) "service.up")
  ;; Gauge names, 16 bytes apart from 1000; their ids from 1200, 4 bytes apart.
  (data (i32.const 1000) "root_context")
  (data (i32.const 1016) "small_headers")
  (data (i32.const 1032) "small_body")
  (data (i32.const 1048) "small_trailers")
  (data (i32.const 1064) "small_context")
  (data (i32.const 1080) "big_headers")
  (data (i32.const 1096) "big_body")
  ;; Headers of the two calls (67 and 65 bytes), the trailer x-t: 1 (18 bytes).
  (data (i32.const 300) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\02\00\00\00:method\00GET\00:path\00/small\00:authority\00up\00")
  (data (i32.const 400) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\04\00\00\00\0a\00\00\00\02\00\00\00:method\00GET\00:path\00/big\00:authority\00up\00")
  (data (i32.const 500) "\01\00\00\00\03\00\00\00\01\00\00\00x-t\001\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (global.set $root (local.get $ctx)))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func $gauge (param $i i32) (param $len i32)
    (drop (call $define (i32.const 1)
      (i32.add (i32.const 1000) (i32.mul (local.get $i) (i32.const 16))) (local.get $len)
      (i32.add (i32.const 1200) (i32.mul (local.get $i) (i32.const 4))))))
  (func $set (param $i i32) (param $value i32)
    (drop (call $record (i32.load (i32.add (i32.const 1200) (i32.mul (local.get $i) (i32.const 4))))
      (i64.extend_i32_u (local.get $value)))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $gauge (i32.const 0) (i32.const 12))
    (call $gauge (i32.const 1) (i32.const 13))
    (call $gauge (i32.const 2) (i32.const 10))
    (call $gauge (i32.const 3) (i32.const 14))
    (call $gauge (i32.const 4) (i32.const 13))
    (call $gauge (i32.const 5) (i32.const 11))
    (call $gauge (i32.const 6) (i32.const 8))
    (call $set (i32.const 0) (global.get $root))
    ;; Not yet answered.
    (call $set (i32.const 2) (i32.const 999))
    (call $set (i32.const 6) (i32.const 999))
    (drop (call $period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (if (i32.eqz (global.get $calls))
      (then (drop (call $call (i32.const 100) (i32.const 10) (i32.const 300) (i32.const 67)
        (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 18) (i32.const 5000) (i32.const 220)))))
    (if (i32.eq (global.get $calls) (i32.const 1))
      (then (drop (call $call (i32.const 100) (i32.const 10) (i32.const 400) (i32.const 65)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 10000) (i32.const 224)))))
    (global.set $calls (i32.add (global.get $calls) (i32.const 1))))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $h i32) (param $b i32) (param $t i32)
    (if (i32.eq (local.get $token) (i32.load (i32.const 220)))
      (then
        (call $set (i32.const 1) (local.get $h))
        (call $set (i32.const 2) (local.get $b))
        (call $set (i32.const 3) (local.get $t))
        (call $set (i32.const 4) (local.get $ctx))))
    (if (i32.eq (local.get $token) (i32.load (i32.const 224)))
      (then
        (call $set (i32.const 5) (local.get $h))
        (call $set (i32.const 6) (local.get $b))))))"#;

/// Review finding 19 (calls from a root context, in `gateway` itself) and what a call carries
/// (22): a module's calls from `on_tick`, with no request at all, reach their service and
/// their answers come to the root context. The request's trailer reaches the service (it
/// answers `ok` only when it saw it), the answer's trailer reaches the module, and an answer
/// past 64 MiB fails the call (no headers, no body) instead of being held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_the_root_context_carry_trailers_and_a_bounded_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = up.accept().await {
            tokio::spawn(async move {
                // The whole request: its head, and for /small its chunked body and trailer.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    let done = if text.starts_with("GET /small") {
                        text.ends_with("\r\n\r\n") && text.contains("\r\n0\r\n")
                    } else {
                        text.contains("\r\n\r\n")
                    };
                    if done {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                if text.starts_with("get /small") {
                    let body = if text.contains("\r\nx-t: 1\r\n") {
                        "ok"
                    } else {
                        "none"
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-up\r\n\r\n\
                         {:x}\r\n{body}\r\n0\r\nx-up: 1\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                } else {
                    let len = (64 << 20) + 1;
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                    let _ = socket.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 1 << 20];
                    for _ in 0..64 {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.write_all(b"x").await;
                }
            });
        }
    });
    let filters = filters_dir("root_caller", &wat::parse_str(ROOT_CALLER).unwrap());
    let text = format!(
        "_format_version: \"3.0\"\n\
         services:\n\
         - {{name: up, url: \"http://{up_addr}\", routes: [{{name: r, paths: [/]}}]}}\n\
         filter_chains: [{{route: r, filters: [{{name: root_caller}}]}}]\n"
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let gauge = |name: &str| module_metric(&gateway, name).unwrap_or(-1);
    let started = Instant::now();
    while gauge("small_body") == 999 || gauge("big_body") == 999 || gauge("small_body") < 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "answers: small {} big {}",
            gauge("small_body"),
            gauge("big_body")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(gauge("root_context"), 0);
    assert_eq!(gauge("small_context"), gauge("root_context"));
    assert!(gauge("small_headers") >= 2, "{}", gauge("small_headers"));
    assert_eq!(
        gauge("small_body"),
        2,
        "the service did not see the request's trailer"
    );
    assert_eq!(gauge("small_trailers"), 1);
    assert_eq!((gauge("big_headers"), gauge("big_body")), (0, 0));
}

/// Counts its `on_configure` calls in the counter `configured`, each taking 100 ms.
const SLOW_START: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "configured")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $until i64)
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
    (local.set $until (i64.add (i64.load (i32.const 0)) (i64.const 100000000)))
    (loop $wait
      (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
      (br_if $wait (i64.lt_u (i64.load (i32.const 0)) (local.get $until))))
    (drop (call $define (i32.const 0) (i32.const 100) (i32.const 10) (i32.const 200)))
    (drop (call $increment (i32.load (i32.const 200)) (i64.const 1)))
    (i32.const 1)))"#;

/// Review finding 32 and design observation 3: a reload returns once every worker has
/// started the new configuration's instances (each `on_configure` here takes 100 ms), so no
/// worker's first request on it pays for a start; as Envoy warms a configuration before it
/// serves. (Before, the reload returned after the validating instance alone, and each worker
/// started its instance at its next poll or request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_once_every_worker_started_its_instances() {
    let filters = filters_dir("slow_start", &wat::parse_str(SLOW_START).unwrap());
    let echo = EchoUpstream::start().await.unwrap();
    let config = |chain: &str| {
        format!(
            "_format_version: \"3.0\"\n\
             services: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n{chain}",
            echo.addr()
        )
    };
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 2;
    options.runtime.filters_dir = Some(filters.path().to_owned());
    let gateway = wasmgate_tests::gateway::start_with(options, &config(""));
    let configured = || module_metric(&gateway, "configured").unwrap_or(0);
    let shared = std::sync::Arc::clone(gateway.shared());
    let chain = "filter_chains: [{route: r, filters: [{name: slow_start}]}]\n".to_owned();
    let text = config(&chain);
    tokio::task::spawn_blocking(move || shared.apply(&text).unwrap())
        .await
        .unwrap();
    // The validating instance, and one per worker.
    assert_eq!(configured(), 3);
}
