//! Hostcall details of the review's section D (#13 item 7), in the in-process host: a WAT
//! module (tests/wat/abi_probe.wat) calls each one and answers what the host returned. The
//! same module runs in real Envoy 1.40 (tests/envoy/abi.rs), which gave the expected values
//! wherever Envoy has the function.

use crate::abi_probe;
use host::testing::{Harness, TestRequest};
use host::{HttpCallResponse, HttpCallResult, PluginConfig, WorkerPlugin};

use abi_probe::Report;

const OK: u32 = 0;
const BAD_ARGUMENT: u32 = 2;

fn harness() -> (Harness, WorkerPlugin) {
    let mut h = Harness::new().unwrap();
    h.foreign_function("probe_fn", |args| Ok([args, b"!"].concat()));
    // The data plane knows two upstreams.
    h.env()
        .set_upstream_check(std::sync::Arc::new(|name: &str| {
            name == "known" || name == "upstream"
        }));
    let w = h
        .load_bytes(&abi_probe::wasm(), PluginConfig::new("abi-probe", ""))
        .unwrap();
    (h, w)
}

fn probe(h: &mut Harness) -> Report {
    let out = h.send(
        TestRequest::get("/probe")
            .header("x-probe", "all")
            .header("x-empty", "")
            .header("x-multi", "a")
            .header("x-multi", "b"),
    );
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    Report::new(out.response.body)
}

/// What Envoy answers too (tests/envoy/abi.rs checks the same with `check_common`).
#[test]
fn the_probes_answer_as_envoy_does() {
    let (mut h, w) = harness();
    let r = probe(&mut h);
    abi_probe::check_common(&r, "host");
    assert_eq!(w.plugin().failures(), 0);
}

#[test]
fn a_log_past_critical_is_refused_and_not_kept() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    assert_eq!((r.u32(0), r.u32(4)), (BAD_ARGUMENT, OK));
    let logs = h.logs();
    assert_eq!(
        logs.iter().filter(|l| l.message == "level 6").count(),
        1,
        "only the level-5 one: {logs:?}"
    );
}

#[test]
fn built_in_properties_cannot_be_shadowed() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    // request.path set to /spoofed: accepted (as Envoy), and invisible.
    assert_eq!((r.u32(36), r.u32(40)), (OK, OK));
    assert_eq!(r.bytes(232, r.u32(44) as usize), b"/probe");
    // plugin_name set to "spoof": the real name.
    assert_eq!((r.u32(216), r.u32(220)), (OK, OK));
    assert_eq!(r.u32(224) as usize, "abi-probe".len());
}

#[test]
fn request_headers_is_a_map_of_each_name_once() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    let map = r.headers_map();
    let get = |name: &str| {
        map.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("x-multi"), vec![&b"a,b"[..]]);
    assert_eq!(get("x-empty"), vec![&b""[..]]);
    assert_eq!(get(":path"), vec![&b"/probe"[..]]);
}

/// The SDK sees an empty value either way; the pointer is null as in cpp-host, and nothing is
/// allocated in the module.
#[test]
fn an_empty_header_value_is_a_null_pointer_and_size_zero() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    assert_eq!((r.u32(8), r.u32(12), r.u32(16)), (OK, 0, 0));
}

#[test]
fn a_foreign_function_with_null_result_pointers_writes_nothing() {
    let (mut h, w) = harness();
    let r = probe(&mut h);
    // Both null: OK, and nothing allocated in the module (its heap did not move).
    assert_eq!(r.u32(188), OK);
    assert_eq!(r.u32(192), r.u32(196));
    // The size only: "v1!" is 3 bytes.
    assert_eq!((r.u32(200), r.u32(204)), (OK, 3));
    // The pointer only: allocated and written.
    assert_eq!(r.u32(208), OK);
    assert_ne!(r.u32(212), 0);
    assert_eq!(w.plugin().failures(), 0);
}

#[test]
fn an_unknown_upstream_is_refused_at_once_and_timeout_zero_is_no_timeout() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    assert_eq!((r.u32(172), r.u32(176)), (BAD_ARGUMENT, BAD_ARGUMENT));
    let mut seen = Vec::new();
    h.on_http_call(move |call| {
        seen.push(call.timeout);
        HttpCallResult::Failed
    });
    let out = h.send(TestRequest::get("/").header("x-probe", "known"));
    assert_eq!(out.response.body, [OK as u8], "{}", h.log_text());
    assert_eq!(out.http_calls.len(), 1);
    assert_eq!(out.http_calls[0].upstream, "known");
    assert_eq!(out.http_calls[0].timeout, None);
}

/// Envoy hands a call's response body to the module as a constant buffer
/// (tests/envoy/abi.rs answers the same).
#[test]
fn a_calls_response_body_cannot_be_changed() {
    let (mut h, _) = harness();
    h.on_http_call(|_| HttpCallResult::Response(HttpCallResponse::new(200, &[], b"answer")));
    let out = h.send(TestRequest::get("/").header("x-probe", "Kall"));
    assert_eq!(out.http_calls.len(), 1, "{}", h.log_text());
    assert_eq!(
        out.response.body,
        [BAD_ARGUMENT as u8, 1],
        "{}",
        h.log_text()
    );
}

#[test]
fn metrics_answer_increments_as_envoy_and_ids_are_the_plugins_own() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    assert_eq!(r.u32(120), 1, "the plugin's first metric");
    assert_eq!(
        (r.u32(124), r.u32(128), r.u32(132)),
        (BAD_ARGUMENT, OK, BAD_ARGUMENT)
    );
    assert_eq!(h.metric("probe_counter").map(|m| m.value), Some(1));
    // The host's failure counter is the host's: the module's ids do not reach it.
    assert_eq!(
        h.metric("wasmgate.plugin.abi-probe.failures")
            .map(|m| m.value),
        Some(0)
    );
}

/// Without a process logger (tests) the plugin's configured level, 1 (debug); with one,
/// its level when higher (host/src/logs.rs `a_process_logger_raises_the_level_to_its_own`).
#[test]
fn the_reported_log_level_is_the_configured_one_without_a_process_logger() {
    let (mut h, _) = harness();
    let r = probe(&mut h);
    assert_eq!((r.u32(180), r.u32(184)), (OK, 1));
}

/// Envoy 1.40 sends 200 to 999 as they are (tests/envoy/abi.rs); after a 1xx it never sends
/// a final response, so the host refuses a 1xx (BAD_ARGUMENT) rather than leave the client
/// waiting.
#[test]
fn local_response_statuses() {
    let (mut h, _) = harness();
    for code in ["200", "204", "304", "418", "599", "600", "999"] {
        let out = h.send(
            TestRequest::get("/")
                .header("x-probe", "code")
                .header("x-code", code),
        );
        assert_eq!(out.response.status.to_string(), code, "{}", h.log_text());
    }
    for code in ["100", "199"] {
        let out = h.send(
            TestRequest::get("/")
                .header("x-probe", "code")
                .header("x-code", code),
        );
        assert_eq!(out.response.status, 200, "{code}");
        assert_eq!(
            out.response.body,
            [&b"refused"[..], &[BAD_ARGUMENT as u8]].concat(),
            "{code}"
        );
    }
}
