//! `cargo xtask run`: a working, seed-configured endpoint on localhost.

use std::net::SocketAddr;

use serde_json::json;
use wasmgate_tests::{EchoUpstream, Envoy, EnvoyConfig, WasmFilter};

/// The seed's "maximum request size: 10MB".
pub fn seed_filters() -> Vec<WasmFilter> {
    vec![WasmFilter::plugin(
        "request-size-limiting",
        json!({"allowed_payload_size": 10, "size_unit": "megabytes"}),
    )]
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut port = 8000u16;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port takes a port number")?;
            }
            other => return Err(format!("run: unknown argument {other:?}")),
        }
    }
    let modules = crate::wasm::build()?;
    let envoy = crate::envoy::ensure()?;
    std::env::set_var("WASMGATE_WASM_DIR", &modules);
    std::env::set_var("WASMGATE_ENVOY", &envoy);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    runtime.block_on(serve(port))
}

async fn serve(port: u16) -> Result<(), String> {
    let echo = EchoUpstream::start()
        .await
        .map_err(|e| format!("echo upstream: {e}"))?;
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut config = EnvoyConfig::new(echo.addr()).listener("gateway", seed_filters());
    config.listen = Some(listen);
    let envoy = Envoy::start(&config).await?;
    println!(
        "wasmgate: Envoy {} with request-size-limiting (10 MB) on http://{listen}\n\
         admin http://{}  upstream (echo) http://{}\n\n\
         try:\n  \
         curl -s http://{listen}/hello\n  \
         head -c 11000000 /dev/zero | curl -s -X POST --data-binary @- http://{listen}/upload   # 413\n\n\
         Ctrl-C stops everything.",
        envoy.pid(),
        envoy.admin(),
        echo.addr()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("signal: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("wasmgate: stopping");
    drop(envoy);
    drop(echo);
    Ok(())
}
