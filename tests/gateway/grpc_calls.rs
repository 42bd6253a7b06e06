//! A module's gRPC calls made by `gateway` itself (issue #13 item 2): over HTTP/2 to a real
//! gRPC server on loopback (`wasmgate_tests::grpc`: hyper's, speaking gRPC's framing), unary and streaming, with the
//! call's status from the server's trailers or its trailers-only answer. Before, the gateway
//! closed every call at once with UNAVAILABLE (14) without dialling anything.

use std::time::{Duration, Instant};

use wasmgate_tests::client::send;
use wasmgate_tests::gateway::module_metric;
use wasmgate_tests::{EchoUpstream, Protocol, Request};

/// How a test module calls.
#[derive(Clone, Copy)]
enum Call {
    /// Unary, with the message `hi`.
    Unary,
    /// A stream: `a`, then `b` with its end.
    Stream,
    /// A stream: `a`, then `proxy_grpc_close`, which ends the module's side only.
    ClosedSide,
}

/// A filter named `name` that, on the request headers, calls `svc.Echo/<method>` on the
/// service `g` as `call` says,
/// pauses, and resumes the request when the call closes (the call's events come to the root
/// context, as in Envoy: the module makes the stream's context effective to resume it, as the
/// SDKs do). It records in gauges
/// `<name>_messages` (messages received), `<name>_size` (the last one's size) and
/// `<name>_status` (the status it closed with), `<name>_context` (the context the close came
/// to) and `<name>_root` (its root context).
fn caller(name: &str, method: &str, call: Call) -> Vec<u8> {
    let open = format!(
        "(drop (call $stream (i32.const 100) (i32.const 9) (i32.const 120) (i32.const 8)
           (i32.const 140) (i32.const {len}) (i32.const 240) (i32.const 4) (i32.const 220)))
         (drop (call $send (i32.load (i32.const 220)) (i32.const 170) (i32.const 1) (i32.const 0)))",
        len = method.len()
    );
    let start = match call {
        Call::Unary => format!(
            "(drop (call $call (i32.const 100) (i32.const 9) (i32.const 120) (i32.const 8)
               (i32.const 140) (i32.const {len}) (i32.const 240) (i32.const 4)
               (i32.const 160) (i32.const 2) (i32.const 5000) (i32.const 220)))",
            len = method.len()
        ),
        Call::Stream => format!(
            "{open} (drop (call $send (i32.load (i32.const 220)) (i32.const 180) (i32.const 1) (i32.const 1)))"
        ),
        Call::ClosedSide => format!("{open} (drop (call $close (i32.load (i32.const 220))))"),
    };
    let metric = |suffix: &str| format!("{name}_{suffix}");
    let (messages, size, status) = (metric("messages"), metric("size"), metric("status"));
    let (context, root) = (metric("context"), metric("root"));
    wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_grpc_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $close (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $messages (mut i32) (i32.const 0))
  (global $caller (mut i32) (i32.const 0))
  (data (i32.const 100) "service.g")
  (data (i32.const 120) "svc.Echo")
  (data (i32.const 140) "{method}")
  (data (i32.const 160) "hi")
  (data (i32.const 170) "a")
  (data (i32.const 180) "b")
  (data (i32.const 240) "\00\00\00\00")
  (data (i32.const 1000) "{messages}")
  (data (i32.const 1100) "{size}")
  (data (i32.const 1200) "{status}")
  (data (i32.const 1300) "{context}")
  (data (i32.const 1400) "{root}")
  (global $root (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (global.set $root (local.get $ctx)))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 1) (i32.const 1000) (i32.const {ml}) (i32.const 300)))
    (drop (call $define (i32.const 1) (i32.const 1100) (i32.const {sl}) (i32.const 304)))
    (drop (call $define (i32.const 1) (i32.const 1200) (i32.const {tl}) (i32.const 308)))
    (drop (call $define (i32.const 1) (i32.const 1300) (i32.const {cl}) (i32.const 312)))
    (drop (call $define (i32.const 1) (i32.const 1400) (i32.const {rl}) (i32.const 316)))
    (drop (call $record (i32.load (i32.const 316)) (i64.extend_i32_u (global.get $root))))
    (drop (call $record (i32.load (i32.const 308)) (i64.const 999)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $caller (local.get $ctx))
    {start}
    (i32.const 1))
  (func (export "proxy_on_grpc_receive") (param i32 i32) (param $size i32)
    (global.set $messages (i32.add (global.get $messages) (i32.const 1)))
    (drop (call $record (i32.load (i32.const 300)) (i64.extend_i32_u (global.get $messages))))
    (drop (call $record (i32.load (i32.const 304)) (i64.extend_i32_u (local.get $size)))))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param i32) (param $status i32)
    (drop (call $record (i32.load (i32.const 312)) (i64.extend_i32_u (local.get $ctx))))
    (drop (call $record (i32.load (i32.const 308)) (i64.extend_i32_u (local.get $status))))
    (drop (call $effective (global.get $caller)))
    (drop (call $continue (i32.const 0)))))"#,
        ml = messages.len(),
        sl = size.len(),
        tl = status.len(),
        cl = context.len(),
        rl = root.len(),
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_reach_a_grpc_server_and_close_with_its_status() {
    let grpc = wasmgate_tests::grpc::start_echo().await;
    let echo = EchoUpstream::start().await.unwrap();
    let filters = tempfile::tempdir().unwrap();
    for (name, method, call) in [
        ("say", "Say", Call::Unary),
        ("deny", "Deny", Call::Unary),
        ("chat", "Say", Call::Stream),
        ("half", "Say", Call::ClosedSide),
    ] {
        std::fs::write(
            filters.path().join(format!("{name}.wasm")),
            caller(name, method, call),
        )
        .unwrap();
    }
    let text = format!(
        "_format_version: \"3.0\"\n\
         services:\n\
         - {{name: e, url: \"http://{}\", routes: [{{name: say, paths: [/say]}}, {{name: deny, paths: [/deny]}}, {{name: chat, paths: [/chat]}}, {{name: half, paths: [/half]}}]}}\n\
         - {{name: g, url: \"grpc://{grpc}\"}}\n\
         filter_chains:\n\
         - {{route: say, filters: [{{name: say}}]}}\n\
         - {{route: deny, filters: [{{name: deny}}]}}\n\
         - {{route: chat, filters: [{{name: chat}}]}}\n\
         - {{route: half, filters: [{{name: half}}]}}\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let gauge = |name: &str| module_metric(&gateway, name).unwrap_or(-1);
    for path in ["/say", "/deny", "/chat", "/half"] {
        let request = Request::get(path);
        let exchange = send(gateway.addr(), Protocol::Http1, &request);
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the call closes and the request goes on")
            .unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    let started = Instant::now();
    while ["say_status", "deny_status", "chat_status", "half_status"]
        .iter()
        .any(|g| gauge(g) == 999)
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The events come to the root context, as in Envoy (cpp-host makes every call there).
    for name in ["say", "deny", "chat", "half"] {
        let root = gauge(&format!("{name}_root"));
        assert!(root > 0, "{name}");
        assert_eq!(gauge(&format!("{name}_context")), root, "{name}");
    }
    // Unary: one message, `re:hi`, then OK.
    assert_eq!(
        (
            gauge("say_messages"),
            gauge("say_size"),
            gauge("say_status")
        ),
        (1, 5, 0)
    );
    // Trailers-only: no message, the server's PERMISSION_DENIED.
    assert_eq!((gauge("deny_messages"), gauge("deny_status")), (0, 7));
    // A stream: both messages sent and answered, then OK.
    assert_eq!(
        (
            gauge("chat_messages"),
            gauge("chat_size"),
            gauge("chat_status")
        ),
        (2, 4, 0)
    );
    // The module closed its side after `a`: the answer still comes, as in Envoy (the close
    // only half-closes a stream).
    assert_eq!(
        (
            gauge("half_messages"),
            gauge("half_size"),
            gauge("half_status")
        ),
        (1, 4, 0)
    );
}
