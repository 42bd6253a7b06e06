//! `cargo xtask control-plane`: the seed's hosted control plane on localhost.
//!
//! Builds the plugins, `gateway` and `control-plane`, starts a local echo backend and
//! `control-plane serve` (API on 127.0.0.1:8100, data in target/control-plane-data), and
//! prints the seed's flow as curl lines: create a serverless control plane, provision a data
//! plane, attach a request-transformer to a service, proxy. Ctrl-C stops everything (the
//! provisioned gateways included); the data stays for the next run.

use std::process::{Command, Stdio};

use wasmgate_tests::EchoUpstream;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut port: u16 = 8100;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port takes a port number")?;
            }
            other => return Err(format!("control-plane: unknown argument {other:?}")),
        }
    }
    let modules = crate::wasm::build()?;
    crate::wasm::status(crate::wasm::cargo().args([
        "build",
        "--quiet",
        "-p",
        "gateway",
        "-p",
        "control-plane",
    ]))?;
    let token = std::env::var("KONNECT_TOKEN").unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("kpat_local{nanos:x}")
    });
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let envoy = crate::envoy::ensure()?;
    runtime.block_on(serve(port, &token, &modules, &envoy))
}

async fn serve(
    port: u16,
    token: &str,
    modules: &std::path::Path,
    envoy: &std::path::Path,
) -> Result<(), String> {
    let echo = EchoUpstream::start()
        .await
        .map_err(|e| format!("echo backend: {e}"))?;
    let target = crate::wasm::target_dir();
    let data_dir = target.join("control-plane-data");
    let api = format!("127.0.0.1:{port}");
    let mut child = Command::new(target.join("debug/control-plane"))
        .args(["serve", "--listen", &api, "--token", token, "--data-dir"])
        .arg(&data_dir)
        .arg("--modules-dir")
        .arg(modules)
        .arg("--gateway-bin")
        .arg(target.join("debug/gateway"))
        // The flow's backend is the echo on this machine, which provisioned data planes may
        // not reach by default.
        .arg("--allow-private-upstreams")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("control-plane: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&api).await.is_err() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("the control plane did not start listening".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let auth = "-H \"Authorization: Bearer $KONNECT_TOKEN\" -H 'Content-Type: application/json'";
    println!(
        "\nwasmgate control plane: API http://{api} (data in {data}); echo backend http://{backend}\n\n\
         the seed's flow:\n\n\
         export KONNECT_TOKEN={token} CP=http://{api}\n\
         export CONTROL_PLANE_ID=$(curl -s -X POST $CP/v2/control-planes {auth} \\\n  \
           -d '{{\"name\":\"serverless-gateway-control-plane\",\"cluster_type\":\"CLUSTER_TYPE_SERVERLESS_V1\"}}' \\\n  \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')\n\
         export PROXY=$(curl -s -X PUT $CP/v3/cloud-gateways/configurations {auth} \\\n  \
           -d '{{\"control_plane_id\":\"'$CONTROL_PLANE_ID'\",\"control_plane_geo\":\"us\",\"dataplane_groups\":[{{\"region\":\"us\",\"provider\":\"aws\"}}],\"kind\":\"serverless.v1\"}}' \\\n  \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"dataplane_groups\"][0][\"proxy_url\"])')\n\
         curl -s -X POST $CP/v2/control-planes/$CONTROL_PLANE_ID/core-entities/services {auth} -d '{{\"name\":\"backend\",\"url\":\"http://{backend}\"}}'\n\
         curl -s -X POST $CP/v2/control-planes/$CONTROL_PLANE_ID/core-entities/services/backend/routes {auth} -d '{{\"name\":\"backend\",\"paths\":[\"/\"]}}'\n\
         curl -s -X POST $CP/v2/control-planes/$CONTROL_PLANE_ID/core-entities/services/backend/plugins {auth} \\\n  \
           -d '{{\"name\":\"request-transformer\",\"config\":{{\"add\":{{\"headers\":[\"Authorization:Bearer s3cr3t\"]}}}}}}'\n\
         curl -s $PROXY/hello          # the backend (echo) shows Authorization: Bearer s3cr3t\n\
         curl -s $CP/v2/control-planes/$CONTROL_PLANE_ID/nodes {auth}\n\n\
         # a stock Envoy is a self-managed data plane: a serverless control plane takes none, so\n\
         # it follows a control plane of its own, here with the same entities\n\
         export HYBRID_ID=$(curl -s -X POST $CP/v2/control-planes {auth} \\\n  \
           -d '{{\"name\":\"self-managed\",\"cluster_type\":\"CLUSTER_TYPE_CONTROL_PLANE\"}}' \\\n  \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')\n\
         curl -s $CP/v2/control-planes/$CONTROL_PLANE_ID/declarative-config {auth} \\\n  \
           | curl -s -X POST $CP/v2/control-planes/$HYBRID_ID/declarative-config {auth} -d @-\n\
         curl -s -X POST $CP/v2/control-planes/$HYBRID_ID/envoy-bootstrap {auth} -d '{{\"listen\":\"127.0.0.1:10000\"}}' > envoy.json\n\
         {envoy} -c envoy.json &   # the same configuration in a stock Envoy, over xDS\n\
         curl -s http://127.0.0.1:10000/hello\n\n\
         Ctrl-C stops the control plane and the data planes it started.",
        data = data_dir.display(),
        backend = echo.addr(),
        envoy = envoy.display(),
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("signal: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("wasmgate: stopping");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    // Data planes outlive the control plane; the end of a local session stops them too.
    let _ = Command::new(target.join("debug/control-plane"))
        .arg("stop-data-planes")
        .arg("--data-dir")
        .arg(&data_dir)
        .status();
    drop(echo);
    Ok(())
}
