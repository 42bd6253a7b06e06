//! wasmgate's integration harness.
//!
//! Every data plane is tested the same way: a real [`echo`] upstream that reports what reached
//! it, a real [`client`] speaking HTTP/1.1 or h2c over loopback, and the shared [`cases`] files
//! that describe config → request → expected response and upstream view. [`envoy`] runs those
//! against a real Envoy; the in-process host runs the very same files.

pub mod acme;
pub mod cases;
pub mod control_plane;
pub mod gateway;
pub mod gateway_cases;
pub mod grpc;
pub mod grpc_tonic;
pub mod https_only;
pub mod modules;
pub mod process;
pub mod seed;
pub mod websocket;
pub mod windows;

pub use modtest::{client, echo, envoy, paths};

pub use client::{Protocol, Request, RequestBody, Response};
pub use echo::{EchoReport, EchoUpstream};
pub use envoy::{Envoy, EnvoyConfig, WasmFilter};

/// A loopback port that was free a moment ago, for a process that must be told its port
/// before it starts (a control plane, a gateway or an Envoy listener in a config file). The
/// kernel hands out ephemeral ports at random, so another test taking it in between is
/// unlikely; wherever a port can be 0 and read back, tests do that instead.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Polls `check` every 20 ms until it returns `Ok`, and returns that value; panics naming
/// `what` and the last `Err` once `within` has passed. The bound is against hanging, never a
/// latency claim (latencies are measured in docs/BENCHMARKS.md).
pub async fn until<T>(
    what: &str,
    within: std::time::Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = std::time::Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; last: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
