//! The `gateway` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gateway::filters::{default_modules_dir, Runtime, RuntimeOptions};
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

/// Where modules come from and what they may read.
#[derive(Args, Clone)]
struct Modules {
    /// wasmgate's plugin modules (default: $WASMGATE_WASM_DIR, `wasm/` beside this binary, or
    /// the workspace build folder).
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// Third-party proxy-wasm modules for `filter_chains` (`<name>.wasm`).
    #[arg(long)]
    filters_dir: Option<PathBuf>,
    /// An environment variable modules may read (secrets for `{vault://env/NAME}`); repeat
    /// for several. Nothing else of the environment reaches them.
    #[arg(long = "env-allow")]
    env_allow: Vec<String>,
}

impl Modules {
    fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            modules_dir: self.modules_dir.clone().unwrap_or_else(default_modules_dir),
            filters_dir: self.filters_dir.clone(),
            env_allow: self.env_allow.clone(),
            env_values: Vec::new(),
        }
    }
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
        #[command(flatten)]
        modules: Modules,
    },
    /// Check a declarative file, plugins included, and exit: 0 when valid, else every error.
    Validate {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        modules: Modules,
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
        #[command(flatten)]
        modules: Modules,
    },
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn invalid(path: &std::path::Path, error: &model::ConfigError) -> String {
    let lines: Vec<String> = error
        .fields
        .iter()
        .map(|f| format!("  {}: {}", f.path, f.message))
        .collect();
    format!("{} is invalid:\n{}", path.display(), lines.join("\n"))
}

/// Module logs and the gateway's own go to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("wasmgate: [{}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { config, modules } => validate(&config, &modules),
        Command::EnvoyBootstrap {
            config,
            out,
            listen,
            admin_listen,
            modules,
        } => envoy_bootstrap(&config, out, listen, admin_listen, &modules),
        Command::Run {
            config,
            listen,
            admin_listen,
            workers,
            no_access_log,
            tls_listen,
            tls_certs,
            tls_keys,
            modules,
        } => tls_settings(tls_listen, tls_certs, tls_keys).and_then(|tls| {
            let mut options = GatewayOptions {
                listen,
                admin_listen: Some(admin_listen),
                access_log: !no_access_log,
                config_path: Some(config.clone()),
                tls,
                runtime: modules.options(),
                ..GatewayOptions::default()
            };
            if let Some(n) = workers {
                options.workers = n;
            }
            run(config, options)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(config: &PathBuf, modules: &Modules) -> Result<(), String> {
    let text = read(config)?;
    let runtime = Runtime::new(modules.options())?;
    let snapshot = Snapshot::build(&text, &runtime).map_err(|e| invalid(config, &e))?;
    println!(
        "{}: valid (config hash {})",
        config.display(),
        snapshot.hash
    );
    Ok(())
}

fn envoy_bootstrap(
    config: &PathBuf,
    out: Option<PathBuf>,
    listen: SocketAddr,
    admin: SocketAddr,
    modules: &Modules,
) -> Result<(), String> {
    let text = read(config)?;
    let parsed = model::parse_declarative(&text).map_err(|e| invalid(config, &e))?;
    let runtime = modules.options();
    let options = model::envoy::EnvoyOptions {
        listen,
        admin,
        modules_dir: runtime.modules_dir,
        filters_dir: runtime.filters_dir,
        runtime: model::envoy::V8.into(),
        env_allow: runtime.env_allow,
        env_values: Vec::new(),
    };
    let bootstrap = model::envoy::bootstrap(&parsed, &options);
    let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
    match out {
        Some(path) => std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            println!("{text}");
            Ok(())
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

fn run(config: PathBuf, options: GatewayOptions) -> Result<(), String> {
    let text = read(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let gateway =
        Gateway::start(options, &text).map_err(|e| format!("{}: {e}", config.display()))?;
    let shared = gateway.shared();
    eprintln!(
        "wasmgate: gateway on http://{}{} (admin http://{}), {} workers, config {} ({})",
        gateway.addr(),
        gateway
            .tls_addr()
            .map_or(String::new(), |a| format!(" and https://{a}")),
        gateway.admin_addr().map_or("off".into(), |a| a.to_string()),
        shared.options.workers,
        config.display(),
        shared.snapshot.load().hash
    );
    gateway::reload::watch(std::sync::Arc::clone(shared), config.clone());
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
