//! The `gateway` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::{Gateway, GatewayOptions, Snapshot};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "wasmgate's data plane: Kong plugins and proxy-wasm modules in front of your services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Proxy traffic with a Kong declarative configuration.
    Run {
        /// The declarative file (`_format_version: "3.0"`, YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// Where clients connect.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// The admin API (status, metrics, POST /config).
        #[arg(long, default_value = "127.0.0.1:8001")]
        admin_listen: SocketAddr,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Do not print an access log line per request.
        #[arg(long)]
        no_access_log: bool,
        /// Where TLS clients connect (needs --tls-cert and --tls-key).
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
        /// A PEM certificate chain; repeat for several (chosen by SNI, the first is the default).
        #[arg(long = "tls-cert")]
        tls_certs: Vec<PathBuf>,
        /// The PEM private key of the --tls-cert at the same position.
        #[arg(long = "tls-key")]
        tls_keys: Vec<PathBuf>,
    },
    /// Check a declarative file and exit: 0 when valid, else every error on stderr.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write an Envoy bootstrap for the same services, routes and plugins.
    EnvoyBootstrap {
        #[arg(long)]
        config: PathBuf,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Envoy's listener.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Envoy's admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Where the plugin modules are (default: next to the gateway binary, then the build
        /// folder).
        #[arg(long)]
        modules_dir: Option<PathBuf>,
        /// Environment variables Envoy passes to the modules (secrets for `{vault://env/...}`).
        #[arg(long = "env-allow")]
        env_allow: Vec<String>,
    },
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn load(path: &PathBuf) -> Result<Snapshot, String> {
    let text = read(path)?;
    Snapshot::from_declarative(&text).map_err(|e| {
        let lines: Vec<String> = e
            .fields
            .iter()
            .map(|f| format!("  {}: {}", f.path, f.message))
            .collect();
        format!("{} is invalid:\n{}", path.display(), lines.join("\n"))
    })
}

/// The default place of the plugin modules: beside the binary, else the workspace build.
fn default_modules_dir() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("wasm")));
    match beside {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip1/release"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { config } => load(&config).map(|s| {
            println!("{}: valid (config hash {})", config.display(), s.hash);
        }),
        Command::EnvoyBootstrap {
            config,
            out,
            listen,
            admin_listen,
            modules_dir,
            env_allow,
        } => load(&config).and_then(|snapshot| {
            let options = model::envoy::EnvoyOptions {
                listen,
                admin: admin_listen,
                modules_dir: modules_dir.unwrap_or_else(default_modules_dir),
                filters_dir: None,
                runtime: model::envoy::V8.into(),
                env_allow,
            };
            let bootstrap = model::envoy::bootstrap(&snapshot.config, &options);
            let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
                }
                None => {
                    println!("{text}");
                    Ok(())
                }
            }
        }),
        Command::Run {
            config,
            listen,
            admin_listen,
            workers,
            no_access_log,
            tls_listen,
            tls_certs,
            tls_keys,
        } => tls_settings(tls_listen, tls_certs, tls_keys)
            .and_then(|tls| run(config, listen, admin_listen, workers, !no_access_log, tls)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

type TlsSettings = Option<(SocketAddr, std::sync::Arc<rustls::ServerConfig>)>;

fn tls_settings(
    listen: Option<SocketAddr>,
    certs: Vec<PathBuf>,
    keys: Vec<PathBuf>,
) -> Result<TlsSettings, String> {
    if certs.len() != keys.len() {
        return Err(format!(
            "--tls-cert given {} times but --tls-key {} times",
            certs.len(),
            keys.len()
        ));
    }
    match listen {
        None if certs.is_empty() => Ok(None),
        None => Err("--tls-cert needs --tls-listen".into()),
        Some(_) if certs.is_empty() => Err("--tls-listen needs --tls-cert and --tls-key".into()),
        Some(listen) => {
            let files: Vec<gateway::tls::CertificateFiles> = certs
                .into_iter()
                .zip(keys)
                .map(|(cert, key)| gateway::tls::CertificateFiles { cert, key })
                .collect();
            Ok(Some((listen, gateway::tls::server_config(&files)?)))
        }
    }
}

fn run(
    config: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    workers: Option<usize>,
    access_log: bool,
    tls: TlsSettings,
) -> Result<(), String> {
    let snapshot = load(&config)?;
    let mut options = GatewayOptions {
        listen,
        admin_listen: Some(admin_listen),
        access_log,
        config_path: Some(config.clone()),
        tls,
        ..GatewayOptions::default()
    };
    if let Some(n) = workers {
        options.workers = n;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let gateway =
        Gateway::start(options, snapshot).map_err(|e| format!("listening on {listen}: {e}"))?;
    eprintln!(
        "wasmgate: gateway on http://{} (admin http://{}), {} workers, config {} ({})",
        gateway.addr(),
        admin_listen,
        gateway.shared().options.workers,
        config.display(),
        gateway.shared().snapshot.load().hash
    );
    gateway::reload::watch(std::sync::Arc::clone(gateway.shared()), config.clone());
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return Err("cannot install signal handlers".to_owned());
        };
        loop {
            tokio::select! {
                _ = hup.recv() => gateway::reload::reload(gateway.shared(), &config, "SIGHUP"),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        Ok(())
    })?;
    eprintln!("wasmgate: draining in-flight requests");
    gateway.shutdown();
    Ok(())
}
