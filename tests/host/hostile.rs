//! Hostile modules (hand-written WAT) against the in-process host: endless loops, memory
//! bombs, wild pointers, huge lengths, a trap in each callback, a pause nobody resumes. The
//! host never crashes or hangs; the stream fails per the failure policy; the failure is
//! counted and logged; the instance is replaced by a fresh, configured one.

use std::time::{Duration, Instant};

use host::testing::{Harness, TestBody, TestRequest, TestResponse};
use host::{Error, FailurePolicy, HttpCallResponse, HttpCallResult, Limits, PluginConfig};

/// A module with a bump allocator and the given callbacks' bodies. `{headers}` etc. are the
/// bodies of the callbacks (each must leave an i32 where a result is expected).
fn module(headers: &str, extra: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (data (i32.const 1024) "x-key")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (if (i32.gt_u (global.get $heap) (i32.const 65536)) (then (global.set $heap (i32.const 32768)) (return (i32.const 32768))))
    (local.get $p))
  ;; Answers with status 400 + a host status, so a test can read what the host returned.
  (func $answer (param $status i32) (result i32)
    (drop (call $respond (i32.add (i32.const 400) (local.get $status)) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    {headers})
  {extra})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("WAT: {e}\n{text}"))
}

fn limits() -> Limits {
    Limits {
        callback_deadline: Duration::from_millis(50),
        memory_bytes: 4 << 20,
        ..Limits::default()
    }
}

fn harness(wasm: &[u8], policy: FailurePolicy) -> (Harness, host::WorkerPlugin) {
    let mut h = Harness::new().expect("harness");
    let config = PluginConfig::new("hostile", "")
        .limits(limits())
        .failure_policy(policy);
    let w = h.load_bytes(wasm, config).expect("module loads");
    (h, w)
}

#[test]
fn an_endless_loop_hits_the_deadline_and_fails_closed_then_the_instance_is_replaced() {
    let wasm = module("(loop $l (br $l)) (i32.const 0)", "");
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let started = Instant::now();
    let out = h.send(TestRequest::get("/"));
    // A guard against a hang (the deadline is 50 ms), not a speed claim.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.response.status, 503);
    assert!(out.upstream.is_none());
    assert_eq!(w.plugin().failures(), 1);
    assert!(w.is_running(), "a fresh instance replaced the failed one");
    assert!(h.log_text().contains("Deadline"), "{}", h.log_text());
    // The next stream runs on the new instance (and fails the same way).
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert_eq!(w.plugin().failures(), 2);
    assert_eq!(
        h.metric("wasmgate.plugin.hostile.failures")
            .map(|m| m.value),
        Some(2)
    );
}

#[test]
fn fail_open_skips_the_failed_filter() {
    let wasm = module("(loop $l (br $l)) (i32.const 0)", "");
    let (mut h, w) = harness(&wasm, FailurePolicy::FailOpen);
    let out = h.send(TestRequest::get("/"));
    assert_eq!(out.response.status, 200);
    assert!(out.upstream.is_some());
    // Skipped, but not silently: counted, logged, and replaced like a fail-closed one.
    assert_eq!(w.plugin().failures(), 1);
    assert!(w.is_running(), "a fresh instance replaced the failed one");
    assert!(h.log_text().contains("Deadline"), "{}", h.log_text());
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let wasm = module(
        "(loop $l (br_if $l (i32.ge_s (memory.grow (i32.const 16)) (i32.const 0)))) (i32.const 0)",
        "",
    );
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/"));
    assert_eq!(out.response.status, 503);
    assert!(h.log_text().contains("Memory"), "{}", h.log_text());
    assert_eq!(w.plugin().failures(), 1);
    assert!(w.is_running(), "a fresh instance replaced the failed one");
}

/// The cap is 4 MiB (64 pages): a module may grow to exactly that, not one page more.
#[test]
fn memory_grows_up_to_the_cap_and_not_a_page_past_it() {
    // One page to start with, then 63 more: 4 MiB.
    let to_the_cap = module("(drop (memory.grow (i32.const 63))) (i32.const 0)", "");
    let (mut h, w) = harness(&to_the_cap, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 200);
    assert_eq!(w.memory_size(), 4 << 20, "the instance that grew");
    assert_eq!(w.plugin().failures(), 0);
    let past_it = module("(drop (memory.grow (i32.const 64))) (i32.const 0)", "");
    let (mut h, w) = harness(&past_it, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert!(h.log_text().contains("Memory"), "{}", h.log_text());
    assert_eq!(w.plugin().failures(), 1);
}

#[test]
fn wild_pointers_get_invalid_memory_access() {
    // proxy_log from far outside memory.
    let wasm = module(
        "(call $answer (call $log (i32.const 2) (i32.const -16) (i32.const 100)))",
        "",
    );
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 406);

    // A return slot outside memory.
    let wasm = module(
        "(call $answer (call $get_header (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const -4) (i32.const 0)))",
        "",
    );
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/").header("x-key", "v"));
    assert_eq!(out.response.status, 406);

    let wasm = module(
        "(call $answer (call $get_pairs (i32.const 0) (i32.const 65535) (i32.const 0)))",
        "",
    );
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 406);
}

#[test]
fn huge_lengths_get_invalid_memory_access() {
    for call in [
        "(call $log (i32.const 2) (i32.const 0) (i32.const 0x7fffffff))",
        "(call $get_header (i32.const 0) (i32.const 1024) (i32.const -1) (i32.const 0) (i32.const 4))",
        "(call $set_shared (i32.const 0) (i32.const 4) (i32.const 0) (i32.const -1) (i32.const 0))",
        "(call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 8) (i32.const -8))",
    ] {
        let wasm = module(&format!("(call $answer {call})"), "");
        let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
        assert_eq!(h.send(TestRequest::get("/")).response.status, 406, "{call}");
    }
    // A huge max_size is clamped to what exists: OK.
    let wasm = module(
        "(call $answer (call $get_buffer (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 4)))",
        "",
    );
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 400);
}

#[test]
fn a_trap_in_each_stream_callback_fails_the_stream_and_is_counted() {
    let ok = "(i32.const 0)";
    let cases = [
        ("context_create", ok, ok, "", 503),
        ("request_headers", "(unreachable)", ok, "", 503),
        ("request_body", ok, ok, "(func (export \"proxy_on_request_body\") (param i32 i32 i32) (result i32) unreachable)", 503),
        ("response_headers", ok, ok, "(func (export \"proxy_on_response_headers\") (param i32 i32 i32) (result i32) unreachable)", 503),
        // The response headers went out already: the stream is reset (status 0 here).
        ("response_body", ok, ok, "(func (export \"proxy_on_response_body\") (param i32 i32 i32) (result i32) unreachable)", 0),
        ("on_done", ok, ok, "(func (export \"proxy_on_done\") (param i32) (result i32) unreachable)", 200),
        ("on_log", ok, ok, "(func (export \"proxy_on_log\") (param i32) unreachable)", 200),
    ];
    for (name, headers, _, extra, status) in cases {
        let wasm = if name == "context_create" {
            module_with_context_create()
        } else {
            module(headers, extra)
        };
        let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
        h.set_upstream(|_| host::testing::TestResponse::new(200, &[], b"upstream body"));
        let out = h.send(TestRequest::post("/", b"body".to_vec()));
        let got = if out.reset { 0 } else { out.response.status };
        assert_eq!(got, status, "{name}: {}", h.log_text());
        assert_eq!(w.plugin().failures(), 1, "{name}");
        assert!(w.is_running(), "{name}: replaced");
        assert!(h.log_text().contains("Trap"), "{name}: {}", h.log_text());
    }
}

/// The module with its own proxy_on_context_create (instead of the empty one).
fn module_with_context_create() -> Vec<u8> {
    let text = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 32768))
  (func (export "proxy_on_context_create") (param i32 i32)
    (if (i32.gt_u (local.get 0) (i32.const 1)) (then unreachable)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;
    wat::parse_str(text).expect("WAT")
}

#[test]
fn a_trap_at_start_or_configure_refuses_to_load() {
    let wasm = module(
        "(i32.const 0)",
        "(func (export \"_initialize\") unreachable)",
    );
    let mut h = Harness::new().expect("harness");
    match h.load_bytes(&wasm, PluginConfig::new("hostile", "")) {
        Err(Error::Start { reason, .. }) => assert!(reason.contains("_initialize"), "{reason}"),
        other => panic!("expected a start failure, got {:?}", other.err()),
    }
}

#[test]
fn an_endless_loop_at_start_is_bounded() {
    let wasm = module(
        "(i32.const 0)",
        "(func (export \"_initialize\") (loop $l (br $l)))",
    );
    let mut h = Harness::new().expect("harness");
    let started = Instant::now();
    let config = PluginConfig::new("hostile", "").limits(Limits {
        startup_deadline: Duration::from_millis(100),
        ..limits()
    });
    assert!(matches!(
        h.load_bytes(&wasm, config),
        Err(Error::Start { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_pause_nobody_resumes_ends_with_the_stream_timeout() {
    let wasm = module("(i32.const 1)", "");
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/"));
    assert!(out.timed_out);
    assert_eq!(out.response.status, 504);
    assert_eq!(out.response.text(), "stream timeout");
    assert!(out.upstream.is_none());
    // A body that is buffered forever is bounded by the buffer limit first.
    let wasm = module(
        "(i32.const 0)",
        "(func (export \"proxy_on_request_body\") (param i32 i32 i32) (result i32) (i32.const 1))",
    );
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(
        TestRequest::post("/", vec![b'a'; 2 << 20])
            .body(TestBody::Pieces(vec![vec![b'a'; 1 << 20]; 3])),
    );
    assert_eq!(out.response.status, 413);
}

#[test]
fn unknown_imports_trap_only_when_called() {
    let text = r#"(module
  (import "env" "proxy_not_a_function" (func $nope (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 32768))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.ne (call $open (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)) (i32.const 52))
      (then unreachable))
    (drop (call $nope))
    (i32.const 0)))"#;
    let wasm = wat::parse_str(text).expect("WAT");
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert!(
        h.log_text().contains("env.proxy_not_a_function"),
        "{}",
        h.log_text()
    );
    assert_eq!(w.plugin().failures(), 1);
}

/// The README's default budgets, each reached with nothing overridden: 128 MiB of memory
/// (2,048 pages run, 2,049 fail), 10 ms of CPU per callback, 2 s to start.
#[test]
fn the_default_budgets_are_the_documented_ones_and_hold() {
    let defaults = |wasm: &[u8]| {
        let mut h = Harness::new().expect("harness");
        let loaded = h.load_bytes(wasm, PluginConfig::new("hostile", ""));
        (h, loaded)
    };
    let (mut h, w) = defaults(&module(
        "(drop (memory.grow (i32.const 2047))) (i32.const 0)",
        "",
    ));
    let w = w.expect("module loads");
    assert_eq!(h.send(TestRequest::get("/")).response.status, 200);
    assert_eq!(w.memory_size(), 128 << 20);
    let (mut h, _) = defaults(&module(
        "(drop (memory.grow (i32.const 2048))) (i32.const 0)",
        "",
    ));
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert!(h.log_text().contains("Memory"), "{}", h.log_text());

    let (mut h, _) = defaults(&module("(loop $l (br $l)) (i32.const 0)", ""));
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert!(h.log_text().contains("Deadline"), "{}", h.log_text());

    let (_, loaded) = defaults(&module(
        "(i32.const 0)",
        "(func (export \"_initialize\") (loop $l (br $l)))",
    ));
    assert!(matches!(loaded, Err(Error::Start { .. })));
    assert_eq!(
        Limits::default().callback_deadline,
        Duration::from_millis(10)
    );
    assert_eq!(Limits::default().startup_deadline, Duration::from_secs(2));
}

/// An instance that fails is dropped at once and started again at the worker's next poll or
/// stream; a restart that fails is not tried again before a backoff (500 ms, doubling), so a
/// module that cannot start does not cost a start (up to the startup deadline of CPU) per
/// request. Meanwhile its requests fail by the failure policy. The module traps on every
/// request and refuses every configuration after its first.
#[test]
fn a_failed_restart_is_tried_again_only_after_a_backoff() {
    let text = r#"(module
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "started")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 100) (i32.const 7) (i32.const 0) (i32.const 4) (i32.const 8)))
      (then (return (i32.const 0))))
    (drop (call $set (i32.const 100) (i32.const 7) (i32.const 100) (i32.const 1) (i32.const 0)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable))"#;
    let wasm = wat::parse_str(text).expect("WAT");
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let restarts = |h: &Harness| h.log_text().matches("restart failed").count();
    // The trap: 503, the instance dropped, and its restart refused.
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert_eq!(w.plugin().failures(), 1);
    assert_eq!(restarts(&h), 1, "{}", h.log_text());
    assert!(
        h.log_text().contains("next try in 500ms"),
        "{}",
        h.log_text()
    );
    // Within the backoff: failed by the policy, no start tried.
    for _ in 0..5 {
        assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    }
    assert_eq!(restarts(&h), 1, "{}", h.log_text());
    // Once it is due, one more try, then twice as long.
    h.advance(Duration::from_millis(500));
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert_eq!(restarts(&h), 2, "{}", h.log_text());
    assert!(h.log_text().contains("next try in 1s"), "{}", h.log_text());
    h.advance(Duration::from_millis(999));
    assert_eq!(h.send(TestRequest::get("/")).response.status, 503);
    assert_eq!(restarts(&h), 2, "{}", h.log_text());
    assert!(!w.is_running());
}

/// The circuit breaker: a module that traps on every request is replaced at once after its
/// first failure, but its second failure in a row opens the breaker for 1 s (Envoy's
/// FAIL_RELOAD wait), the third for 2 s, and so on; meanwhile requests fail by the policy
/// without running (or restarting) the module. Ten quiet seconds close it again.
#[test]
fn repeated_traps_open_a_circuit_breaker_that_waits_before_each_restart() {
    let wasm = module("unreachable", "");
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let status = |h: &mut Harness| h.send(TestRequest::get("/")).response.status;
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 1);
    // Replaced at once: the next request runs (and trips) a fresh instance.
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 2);
    assert!(
        h.log_text()
            .contains("failure 2 in a row: the next instance starts in 1s"),
        "{}",
        h.log_text()
    );
    // Open: no module runs within the wait.
    for _ in 0..5 {
        assert_eq!(status(&mut h), 503);
    }
    assert_eq!(w.plugin().failures(), 2);
    assert!(!w.is_running());
    h.advance(Duration::from_millis(999));
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 2);
    // Due: one try, which fails again and doubles the wait.
    h.advance(Duration::from_millis(1));
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 3);
    assert!(
        h.log_text()
            .contains("failure 3 in a row: the next instance starts in 2s"),
        "{}",
        h.log_text()
    );
    // After the wait and ten quiet seconds the count starts over: replaced at once again.
    h.advance(Duration::from_secs(12));
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 4);
    assert_eq!(status(&mut h), 503);
    assert_eq!(w.plugin().failures(), 5);
}

/// Linear memory never shrinks: an instance whose memory passed its soft limit is replaced
/// once its stream is over, without counting a failure; the next request gets a fresh one.
#[test]
fn an_instance_past_its_memory_soft_limit_is_replaced_between_streams() {
    // Grows by four pages (256 KiB) on every request, from one.
    let wasm = module("(drop (memory.grow (i32.const 4))) (i32.const 0)", "");
    let mut h = Harness::new().expect("harness");
    let config = PluginConfig::new("grower", "")
        .limits(Limits {
            memory_soft_bytes: Some(128 << 10),
            ..limits()
        })
        .failure_policy(FailurePolicy::FailClosed);
    let w = h.load_bytes(&wasm, config).expect("module loads");
    assert_eq!(w.memory_size(), 64 << 10);
    assert_eq!(h.send(TestRequest::get("/")).response.status, 200);
    // A fresh instance (the harness polls after each request, which starts it) is back to
    // one page.
    assert_eq!(w.memory_size(), 64 << 10, "{}", h.log_text());
    assert_eq!(w.plugin().failures(), 0);
    assert!(
        h.log_text().contains("past its soft limit"),
        "{}",
        h.log_text()
    );
    assert_eq!(h.send(TestRequest::get("/")).response.status, 200);
    assert_eq!(w.plugin().failures(), 0);

    // Under the limit nothing is replaced.
    let mut h = Harness::new().expect("harness");
    let config = PluginConfig::new("grower", "").limits(Limits {
        memory_soft_bytes: Some(1 << 20),
        ..limits()
    });
    let w = h.load_bytes(&wasm, config).expect("module loads");
    assert_eq!(h.send(TestRequest::get("/")).response.status, 200);
    assert!(w.is_running());
    assert_eq!(w.memory_size(), 320 << 10);
}

/// Review finding 20: a module answers a paused stream from its root context (`on_tick`,
/// after `proxy_set_effective_context` to that stream): the stream gets that answer, through
/// its filters, as in Envoy. Before, the call returned NOT_FOUND (which makes the Rust SDK
/// panic) and the stream waited for the stream timeout.
#[test]
fn a_stream_is_answered_from_the_root_context() {
    let wasm = wat::parse_str(
        r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $waiting (mut i32) (i32.const 0))
  (data (i32.const 100) "decided on tick")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $waiting (local.get $ctx))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $waiting)
      (then
        (drop (call $effective (global.get $waiting)))
        (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0)
          (i32.const 100) (i32.const 15) (i32.const 0) (i32.const 0) (i32.const -1)))
        (global.set $waiting (i32.const 0))))))"#,
    )
    .expect("WAT");
    let (mut h, _) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/"));
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 403, "{}", h.log_text());
    assert_eq!(out.response.text(), "decided on tick");
    assert!(out.upstream.is_none());
}

/// Review finding 20 (#13): every host call acts on the effective context, as in Envoy. A
/// module that paused a stream's request headers edits and reads them from `on_tick` after
/// `proxy_set_effective_context`, and the upstream gets what it wrote. Once it resumed the
/// request the headers are no longer its to change (Envoy: BAD_ARGUMENT), without a trap.
/// Before, the add was BAD_ARGUMENT and the read NOT_FOUND (the Rust SDK panics on both).
#[test]
fn a_paused_streams_request_headers_are_edited_from_the_root_context() {
    let wasm = wasmgate_tests::modules::edits_from_tick("proxy_on_request_headers", 0, 0);
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/"));
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    let upstream = out.upstream.expect("the request went on");
    assert_eq!(upstream.headers.get_str("x-from-tick"), Some("added"));
    assert_eq!(upstream.headers.get_str("x-read-back"), Some("added"));
    assert_eq!(upstream.headers.get("x-late"), None);
    assert!(h.log_text().contains("late: 2"), "{}", h.log_text());
    assert_eq!(w.plugin().failures(), 0);
}

/// The same for the response headers: the client gets the header added from `on_tick`.
#[test]
fn a_paused_streams_response_headers_are_edited_from_the_root_context() {
    let wasm = wasmgate_tests::modules::edits_from_tick("proxy_on_response_headers", 2, 1);
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let out = h.send(TestRequest::get("/"));
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    assert_eq!(out.response.header("x-from-tick"), Some("added"));
    assert_eq!(out.response.header("x-read-back"), Some("added"));
    assert_eq!(out.response.header("x-late"), None);
    assert!(h.log_text().contains("late: 2"), "{}", h.log_text());
    assert_eq!(w.plugin().failures(), 0);
}

/// A module that removes `content-length` in `{headers}` (map `{map}`), pauses in `{body}`
/// until the end of that body (each pause: StopIterationAndBuffer), and from `on_tick` with
/// `proxy_set_effective_context` to that stream reads the whole buffered body (buffer
/// `{buffer}`), replaces it with `replaced from tick` and resumes direction `{stream}`. It
/// logs what the root context itself got for that buffer first (`root: status get set
/// length`), `read: <body>`, and `set: N after: S L`: the set's status, then the status of a
/// read after its `proxy_continue_stream` and whether that read still saw the 18 bytes.
fn body_edits_from_tick(headers: &str, body: &str, map: u32, buffer: u32, stream: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $waiting (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "content-length")
  (data (i32.const 120) "replaced from tick")
  (data (i32.const 160) "root: _ _ _ _")
  (data (i32.const 180) "set: _ after: _ _")
  (data (i32.const 500) "read: ")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 100)))
    (i32.const 1))
  (func (export "{headers}") (param i32 i32 i32) (result i32)
    (drop (call $remove (i32.const {map}) (i32.const 100) (i32.const 14)))
    (i32.const 0))
  (func (export "{body}") (param $ctx i32) (param i32) (param $eos i32) (result i32)
    (if (local.get $eos) (then (global.set $waiting (local.get $ctx))))
    (i32.const 1))
  (func $digit (param $at i32) (param $v i32)
    (i32.store8 (local.get $at) (i32.add (i32.const 48) (local.get $v))))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $waiting)
      (then
        (i32.store (i32.const 300) (i32.const 7))
        (call $digit (i32.const 166) (call $status (i32.const {buffer}) (i32.const 300) (i32.const 304)))
        (call $digit (i32.const 168) (call $get (i32.const {buffer}) (i32.const 0) (i32.const 100) (i32.const 308) (i32.const 312)))
        (call $digit (i32.const 170) (call $set (i32.const {buffer}) (i32.const 0) (i32.const 0) (i32.const 120) (i32.const 18)))
        (call $digit (i32.const 172) (i32.load (i32.const 300)))
        (drop (call $log (i32.const 2) (i32.const 160) (i32.const 13)))
        (drop (call $effective (global.get $waiting)))
        (i32.store (i32.const 300) (i32.const 0))
        (i32.store (i32.const 308) (i32.const 0))
        (i32.store (i32.const 312) (i32.const 0))
        (drop (call $status (i32.const {buffer}) (i32.const 300) (i32.const 304)))
        (drop (call $get (i32.const {buffer}) (i32.const 0) (i32.load (i32.const 300)) (i32.const 308) (i32.const 312)))
        (memory.copy (i32.const 506) (i32.load (i32.const 308)) (i32.load (i32.const 312)))
        (drop (call $log (i32.const 2) (i32.const 500) (i32.add (i32.const 6) (i32.load (i32.const 312)))))
        (call $digit (i32.const 185) (call $set (i32.const {buffer}) (i32.const 0) (i32.load (i32.const 300)) (i32.const 120) (i32.const 18)))
        (drop (call $continue (i32.const {stream})))
        (call $digit (i32.const 194) (call $status (i32.const {buffer}) (i32.const 300) (i32.const 304)))
        (call $digit (i32.const 196) (i32.eq (i32.load (i32.const 300)) (i32.const 18)))
        (drop (call $log (i32.const 2) (i32.const 180) (i32.const 17)))
        (global.set $waiting (i32.const 0))))))"#
    ))
    .expect("WAT")
}

/// Review finding 20 (#13), bodies: a module that buffers a request body (its body callback
/// pauses, Envoy's StopIterationAndBuffer) reads and replaces it from `on_tick` after
/// `proxy_set_effective_context`, as Envoy's `getBuffer` hands another context the
/// decoder's buffered body; the upstream gets the replaced body (unframed: the module
/// removed `content-length`). The root context itself has no body: Envoy answers an empty
/// one (status and get OK, length 0) and refuses a set (BAD_ARGUMENT). Envoy resumes once
/// the callback returns, so a read right after `proxy_continue_stream` still sees the body.
/// Before, every one of these calls answered NOT_FOUND and the upstream got `hello world`.
#[test]
fn a_buffered_request_body_is_replaced_from_the_root_context() {
    let wasm = body_edits_from_tick("proxy_on_request_headers", "proxy_on_request_body", 0, 0, 0);
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    let request = TestRequest::post("/", Vec::new()).body(TestBody::Pieces(vec![
        b"hello ".to_vec(),
        b"world".to_vec(),
    ]));
    let out = h.send(request);
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    let log = h.log_text();
    assert!(log.contains("root: 0 0 2 0"), "{log}");
    assert!(log.contains("read: hello world"), "{log}");
    assert!(log.contains("set: 0 after: 0 1"), "{log}");
    let upstream = out.upstream.expect("the request went on");
    assert_eq!(upstream.body, b"replaced from tick");
    assert_eq!(upstream.headers.get("content-length"), None);
    assert_eq!(w.plugin().failures(), 0);
}

/// The same for a buffered response body: the client gets the body replaced from `on_tick`.
#[test]
fn a_buffered_response_body_is_replaced_from_the_root_context() {
    let wasm = body_edits_from_tick(
        "proxy_on_response_headers",
        "proxy_on_response_body",
        2,
        1,
        1,
    );
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    h.set_upstream(|_| TestResponse::new(200, &[], b"hello world"));
    let out = h.send(TestRequest::get("/"));
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    let log = h.log_text();
    assert!(log.contains("root: 0 0 2 0"), "{log}");
    assert!(log.contains("read: hello world"), "{log}");
    assert!(log.contains("set: 0 after: 0 1"), "{log}");
    assert_eq!(out.response.text(), "replaced from tick");
    assert_eq!(out.response.header("content-length"), None);
    assert_eq!(w.plugin().failures(), 0);
}

/// A module that removes `content-length` in `{headers}` (map `{map}`), pauses in `{body}`
/// until the end of that body (each pause: StopIterationAndBuffer), logs `body: NN` (the
/// size its last body callback got), calls `{upstream}` there and stays paused; in its
/// `on_http_call_response`, with its stream's context effective (as the SDKs make it: Envoy
/// hands the answer to the root context), it reads that buffered body (buffer `{buffer}`),
/// prepends `auth ok: ` to it and resumes direction `{buffer}`. It logs `own: S NN`
/// (status, length), `read: <body>`, `other: S NN G T` and `net: S NN G T S NN G T`
/// (status, length, get and set of the other body and of DownstreamData / UpstreamData; 77
/// is a length never written), and `set: S after: S NN` (the prepend, then a read after its
/// continue).
fn body_edits_from_call_response(
    headers: &str,
    body: &str,
    map: u32,
    buffer: u32,
    upstream: &str,
) -> Vec<u8> {
    let other = 1 - buffer;
    let upstream_len = upstream.len();
    wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $stream (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "content-length")
  (data (i32.const 120) "auth ok: ")
  (data (i32.const 140) "{upstream}")
  ;; The call's headers: :method GET, :path /auth, :authority auth (68 bytes).
  (data (i32.const 300) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\05\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/auth\00:authority\00auth\00")
  (data (i32.const 400) "own: _ __")
  (data (i32.const 420) "other: _ __ _ _")
  (data (i32.const 440) "net: _ __ _ _ _ __ _ _")
  (data (i32.const 470) "set: _ after: _ __")
  (data (i32.const 500) "read: ")
  (data (i32.const 600) "body: __")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "{headers}") (param i32 i32 i32) (result i32)
    (drop (call $remove (i32.const {map}) (i32.const 100) (i32.const 14)))
    (i32.const 0))
  (func (export "{body}") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (local.get $eos)
      (then
        (global.set $stream (local.get $ctx))
        (call $two (i32.const 606) (local.get $size))
        (drop (call $log (i32.const 2) (i32.const 600) (i32.const 8)))
        (drop (call $call (i32.const 140) (i32.const {upstream_len}) (i32.const 300) (i32.const 68)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 216)))))
    (i32.const 1))
  (func $digit (param $at i32) (param $v i32)
    (i32.store8 (local.get $at) (i32.add (i32.const 48) (local.get $v))))
  (func $two (param $at i32) (param $v i32)
    (call $digit (local.get $at) (i32.div_u (local.get $v) (i32.const 10)))
    (call $digit (i32.add (local.get $at) (i32.const 1)) (i32.rem_u (local.get $v) (i32.const 10))))
  ;; Status, length, get and set of buffer $b, written at $at as "S NN G T".
  (func $probe (param $b i32) (param $at i32)
    (i32.store (i32.const 200) (i32.const 77))
    (call $digit (local.get $at) (call $status (local.get $b) (i32.const 200) (i32.const 204)))
    (call $two (i32.add (local.get $at) (i32.const 2)) (i32.load (i32.const 200)))
    (call $digit (i32.add (local.get $at) (i32.const 5))
      (call $get (local.get $b) (i32.const 0) (i32.const 100) (i32.const 208) (i32.const 212)))
    (call $digit (i32.add (local.get $at) (i32.const 7))
      (call $set (local.get $b) (i32.const 0) (i32.const 0) (i32.const 120) (i32.const 9))))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (local $len i32)
    (drop (call $effective (global.get $stream)))
    (i32.store (i32.const 200) (i32.const 77))
    (call $digit (i32.const 405) (call $status (i32.const {buffer}) (i32.const 200) (i32.const 204)))
    (local.set $len (i32.load (i32.const 200)))
    (call $two (i32.const 407) (local.get $len))
    (drop (call $log (i32.const 2) (i32.const 400) (i32.const 9)))
    (i32.store (i32.const 208) (i32.const 0))
    (i32.store (i32.const 212) (i32.const 0))
    (drop (call $get (i32.const {buffer}) (i32.const 0) (local.get $len) (i32.const 208) (i32.const 212)))
    (memory.copy (i32.const 506) (i32.load (i32.const 208)) (i32.load (i32.const 212)))
    (drop (call $log (i32.const 2) (i32.const 500) (i32.add (i32.const 6) (i32.load (i32.const 212)))))
    (call $probe (i32.const {other}) (i32.const 427))
    (drop (call $log (i32.const 2) (i32.const 420) (i32.const 15)))
    (call $probe (i32.const 2) (i32.const 445))
    (call $probe (i32.const 3) (i32.const 454))
    (drop (call $log (i32.const 2) (i32.const 440) (i32.const 22)))
    (call $digit (i32.const 475) (call $set (i32.const {buffer}) (i32.const 0) (i32.const 0) (i32.const 120) (i32.const 9)))
    (drop (call $continue (i32.const {buffer})))
    (i32.store (i32.const 200) (i32.const 77))
    (call $digit (i32.const 484) (call $status (i32.const {buffer}) (i32.const 200) (i32.const 204)))
    (call $two (i32.const 486) (i32.load (i32.const 200)))
    (drop (call $log (i32.const 2) (i32.const 470) (i32.const 18)))))"#
    ))
    .expect("WAT")
}

/// What [`body_edits_from_call_response`] logs in Envoy 1.40 (its `getBuffer` hands the
/// context that buffers a body the filter manager's buffered body in every callback, and any
/// other body, DownstreamData and UpstreamData as an empty buffer that takes no bytes):
/// the body callback got the running total (11), the call's answer reads `hello world`,
/// the other buffers are empty (status and get OK, set BAD_ARGUMENT), the prepend is OK,
/// and a read right after `proxy_continue_stream` still sees the 20 bytes.
fn assert_call_response_edits(log: &str) {
    for line in [
        "body: 11",
        "own: 0 11",
        "read: hello world",
        "other: 0 00 0 2",
        "net: 0 00 0 2 0 00 0 2",
        "set: 0 after: 0 20",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
}

/// Review finding 20 (#13), the stream's own callbacks: a module that buffers the request
/// body until its end, calls out (an auth check) and stays paused reads that body in its
/// `on_http_call_response`, prepends to it and resumes: the upstream gets the edited body,
/// as in Envoy, whose `getBuffer` hands a context with `buffering_request_body_` the
/// decoder's buffered body whatever the callback. Before, that callback saw an empty body
/// (own: 0 00), the other body took the prepend (OK), its own prepend went nowhere and the
/// upstream got `hello world`; buffer types 2 and 3 were NOT_FOUND (Envoy: empty). The same
/// module in Envoy 1.40 logs the same lines and forwards the same body.
#[test]
fn a_buffered_request_body_is_edited_in_the_call_response() {
    let wasm = body_edits_from_call_response(
        "proxy_on_request_headers",
        "proxy_on_request_body",
        0,
        0,
        "auth",
    );
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    h.on_http_call(|call| {
        assert_eq!(call.upstream, "auth");
        HttpCallResult::Response(HttpCallResponse::new(200, &[], b"ok"))
    });
    let request = TestRequest::post("/", Vec::new()).body(TestBody::Pieces(vec![
        b"hello ".to_vec(),
        b"world".to_vec(),
    ]));
    let out = h.send(request);
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    assert_eq!(out.http_calls.len(), 1);
    assert_call_response_edits(&h.log_text());
    let upstream = out.upstream.expect("the request went on");
    assert_eq!(upstream.body, b"auth ok: hello world");
    assert_eq!(upstream.headers.get("content-length"), None);
    assert_eq!(w.plugin().failures(), 0);
}

/// The same for a buffered response body: the client gets the body edited in the call's
/// answer.
#[test]
fn a_buffered_response_body_is_edited_in_the_call_response() {
    let wasm = body_edits_from_call_response(
        "proxy_on_response_headers",
        "proxy_on_response_body",
        2,
        1,
        "auth",
    );
    let (mut h, w) = harness(&wasm, FailurePolicy::FailClosed);
    h.on_http_call(|_| HttpCallResult::Response(HttpCallResponse::new(200, &[], b"ok")));
    h.set_upstream(|_| TestResponse::new(200, &[], b"hello world"));
    let out = h.send(TestRequest::get("/"));
    assert!(!out.timed_out, "{}", h.log_text());
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    assert_call_response_edits(&h.log_text());
    assert_eq!(out.response.text(), "auth ok: hello world");
    assert_eq!(out.response.header("content-length"), None);
    assert_eq!(w.plugin().failures(), 0);
}
