//! The hostcall probes of tests/wat/abi_probe.wat in real Envoy 1.40 (V8): what Envoy answers
//! is what the in-process host must answer (tests/host/abi.rs checks the host with the same
//! `check_common`).

use crate::abi_probe;

use std::path::PathBuf;

use abi_probe::Report;
use serde_json::json;
use wasmgate_tests::{EchoUpstream, Envoy, EnvoyConfig, Protocol, Request, WasmFilter};

fn module_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("abi_probe.wasm");
    std::fs::write(&path, abi_probe::wasm()).unwrap();
    path
}

async fn envoy(dir: &std::path::Path) -> (Envoy, EchoUpstream) {
    let echo = EchoUpstream::start().await.unwrap();
    let filter = WasmFilter {
        plugin: "abi-probe".into(),
        module: module_file(dir),
        config: json!({}),
        vm_id: "abi-probe".into(),
        env: Vec::new(),
        allow_on_headers_stop_iteration: false,
    };
    let config = EnvoyConfig::new(echo.addr())
        .concurrency(1)
        .listener("probe", vec![filter]);
    let envoy = Envoy::start(&config).await.expect("Envoy starts");
    (envoy, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_answers_the_probes_as_the_host_does() {
    let dir = tempfile::tempdir().unwrap();
    let (envoy, _echo) = envoy(dir.path()).await;
    let request = Request::get("/probe")
        .header("x-probe", "all")
        .header("x-empty", "")
        .header("x-multi", "a")
        .header("x-multi", "b");
    let r = wasmgate_tests::client::send(envoy.listener("probe"), Protocol::Http1, &request)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    let report = Report::new(r.body);
    abi_probe::check_common(&report, "Envoy");
    // Envoy has no foreign function of that name.
    assert_eq!(report.u32(188), 1);
    // Envoy's logger runs at info here.
    assert_eq!(report.u32(184), 2);
}

/// A call's response body is a constant buffer: proxy_set_buffer_bytes on it is BAD_ARGUMENT
/// (the host answers the same: tests/host/abi.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_changes_to_a_calls_response_body() {
    let dir = tempfile::tempdir().unwrap();
    let (envoy, _echo) = envoy(dir.path()).await;
    let request = Request::get("/").header("x-probe", "Kall");
    let r = wasmgate_tests::client::send(envoy.listener("probe"), Protocol::Http1, &request)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &[2u8, 1][..]),
        "{}",
        envoy.log()
    );
}

/// Envoy 1.40 sends any status from 200 to 999 a module answers with; after a 1xx it sends
/// no final response at all (the client waits), which the host refuses instead
/// (tests/host/abi.rs `local_response_statuses`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_local_response_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (envoy, _echo) = envoy(dir.path()).await;
    let send = |code: &'static str| {
        let request = Request::get("/")
            .header("x-probe", "code")
            .header("x-code", code);
        let addr = envoy.listener("probe");
        async move { wasmgate_tests::client::send(addr, Protocol::Http1, &request).await }
    };
    for code in ["200", "204", "304", "418", "599", "600", "999"] {
        let r = send(code).await.unwrap();
        assert_eq!(
            r.status.to_string(),
            code,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for code in ["100", "199"] {
        // A bound against a hang of the test, not a latency claim: nothing final comes.
        let r = tokio::time::timeout(std::time::Duration::from_secs(3), send(code)).await;
        assert!(r.is_err(), "{code}: {:?}", r.map(|r| r.map(|r| r.status)));
    }
}
