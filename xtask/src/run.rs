//! `cargo xtask run`: the seed's gateway on localhost.
//!
//! Starts a local echo backend and wasmgate's `gateway` with `gateway/seed.kong.yaml`
//! (10 MB size limit, 100 requests per second, backend secret injection) pointed at it; with
//! `--envoy`, a real Envoy with the same plugins instead. Ctrl-C stops everything it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use wasmgate_tests::{EchoUpstream, Envoy};

struct Options {
    port: u16,
    envoy: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        port: 8000,
        envoy: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                options.port = it
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--port takes a port number")?;
            }
            "--envoy" => options.envoy = true,
            other => return Err(format!("run: unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// The seed configuration with its backend pointed at `backend`.
fn seed_config(backend: SocketAddr) -> Result<String, String> {
    let path = crate::wasm::workspace_root().join("gateway/seed.kong.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.replace("http://127.0.0.1:8080", &format!("http://{backend}")))
}

/// What `run` starts: built here, unless the environment names prebuilt ones
/// (`WASMGATE_WASM_DIR` for the modules, `WASMGATE_GATEWAY` or `WASMGATE_ENVOY` for the data
/// plane), as `cargo xtask test` and CI already have them.
pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    let modules = match std::env::var_os("WASMGATE_WASM_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => crate::wasm::build()?,
    };
    std::env::set_var("WASMGATE_WASM_DIR", &modules);
    // The backend secret: yours if BACKEND_TOKEN is set, else one made up for this run.
    let token = std::env::var("BACKEND_TOKEN").unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("local-{nanos:x}")
    });
    std::env::set_var("BACKEND_TOKEN", &token);
    let data_plane = if options.envoy {
        let binary = crate::envoy::ensure()?;
        std::env::set_var("WASMGATE_ENVOY", &binary);
        DataPlane::Envoy
    } else {
        DataPlane::Gateway(match std::env::var_os("WASMGATE_GATEWAY") {
            Some(binary) => PathBuf::from(binary),
            None => {
                eprintln!("xtask: building gateway (debug)");
                crate::wasm::status(crate::wasm::cargo().args(["build", "-p", "gateway"]))?;
                crate::wasm::target_dir().join("debug/gateway")
            }
        })
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    runtime.block_on(serve(options.port, data_plane, &token))
}

enum DataPlane {
    Envoy,
    /// The `gateway` binary.
    Gateway(PathBuf),
}

async fn serve(port: u16, data_plane: DataPlane, token: &str) -> Result<(), String> {
    let echo = EchoUpstream::start()
        .await
        .map_err(|e| format!("echo backend: {e}"))?;
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let config = seed_config(echo.addr())?;
    let dir = std::env::temp_dir().join(format!("wasmgate-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config_path = dir.join("seed.kong.yaml");
    std::fs::write(&config_path, &config).map_err(|e| format!("{}: {e}", config_path.display()))?;

    let mut gateway = None;
    let mut envoy = None;
    let with_envoy = matches!(data_plane, DataPlane::Envoy);
    if let DataPlane::Gateway(binary) = &data_plane {
        let child = Command::new(binary)
            .args(["run", "--env-allow", "BACKEND_TOKEN", "--config"])
            .arg(&config_path)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        gateway = Some(child);
        // Wait until it answers (module compilation takes a moment in a debug build).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if std::time::Instant::now() > deadline {
                return Err("the gateway did not start listening".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    } else {
        let parsed = model::parse_declarative_checked(&config, &schemas::check)
            .map_err(|e| e.to_string())?;
        let options = model::envoy::EnvoyOptions {
            listen,
            admin,
            modules_dir: wasmgate_tests::paths::wasm_dir(),
            filters_dir: None,
            runtime: model::envoy::V8.into(),
            env_allow: vec!["BACKEND_TOKEN".into()],
            env_values: Vec::new(),
            upstream_ca_file: None,
        };
        let bootstrap = model::envoy::bootstrap(&parsed, &options);
        let started = Envoy::start_bootstrap(&bootstrap, 2).await?;
        envoy = Some(started);
    }
    let data_plane = if with_envoy {
        "Envoy 1.40 (V8)"
    } else {
        "wasmgate gateway"
    };
    println!(
        "\nwasmgate: {data_plane} on http://{listen} with the seed's plugins:\n  \
         request-size-limiting 10 MB · rate-limiting 100 req/s · request-transformer (backend secret)\n\
         backend (echo) http://{}; BACKEND_TOKEN={token}\n\
         config {}\n\n\
         try:\n  \
         curl -s http://{listen}/hello                                   # the backend sees Authorization: Bearer <token>\n  \
         curl -s -H 'Authorization: Bearer mine' http://{listen}/hello  # ...and never the client's\n  \
         head -c 11000000 /dev/zero | curl -s -o /dev/null -w '%{{http_code}}\\n' --data-binary @- http://{listen}/upload   # 413\n  \
         curl -s --parallel --parallel-max 50 -o /dev/null -w '%{{http_code}}\\n' 'http://{listen}/?[1-1000]' | sort | uniq -c   # 429s past 100/s\n\n\
         Ctrl-C stops everything.",
        echo.addr(),
        config_path.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("signal: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("wasmgate: stopping");
    if let Some(mut child) = gateway {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
    }
    drop(envoy);
    drop(echo);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
