//! The `control-plane` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use control_plane::{ControlPlane, Options};

#[derive(Parser)]
#[command(
    name = "control-plane",
    version,
    about = "wasmgate's control plane: a Konnect-style API that pushes Kong configuration to Envoy and gateway data planes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the data plane endpoints until interrupted. Provisioned data planes
    /// keep serving when it stops, and are adopted when it starts again.
    Serve {
        /// The REST API.
        #[arg(long, default_value = "127.0.0.1:8100")]
        listen: SocketAddr,
        /// Where `gateway` data planes connect (mTLS).
        #[arg(long, default_value = "127.0.0.1:8005")]
        cluster_listen: SocketAddr,
        /// Where Envoy data planes connect over ADS (mTLS).
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds_listen: SocketAddr,
        /// Database, certificates and provisioned data planes' files.
        #[arg(long, default_value = "control-plane-data")]
        data_dir: PathBuf,
        /// The API's bearer token (default: the stored one, or a new one printed once).
        #[arg(long, env = "WASMGATE_CP_TOKEN")]
        token: Option<String>,
        /// wasmgate's plugin modules (default: $WASMGATE_WASM_DIR, `wasm/` beside this
        /// binary, or the workspace build folder).
        #[arg(long)]
        modules_dir: Option<PathBuf>,
        /// The `gateway` binary for provisioned data planes (default: beside this binary).
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
        /// Seconds between data plane pings.
        #[arg(long, default_value_t = 30)]
        ping_interval: u64,
        /// Let provisioned data planes reach services on this host and on private and
        /// link-local networks (denied by default: tenants would reach the platform's own
        /// services). For local development.
        #[arg(long)]
        allow_private_upstreams: bool,
        /// The Redis (HOST:PORT) through which the replicas of a serverless data plane group
        /// (`autoscale: {kind: static, requested_instances: 2 or more}`) share its limit of
        /// 100 requests per second. Without it, such groups are refused.
        #[arg(long, value_name = "HOST:PORT")]
        redis: Option<control_plane::config::Redis>,
        /// The ACME server (its directory URL) that issues custom domains' certificates,
        /// validating them over HTTP-01 through the data planes. Without it, the control
        /// plane's own CA issues them (not publicly trusted).
        #[arg(long, value_name = "URL")]
        acme_directory: Option<String>,
        /// CA certificates (PEM) trusted for the ACME server's HTTPS, besides the public
        /// roots (a test ACME server's own CA).
        #[arg(long, value_name = "PEM", requires = "acme_directory")]
        acme_ca_file: Option<PathBuf>,
        /// The ACME account's contact (`mailto:ops@example.com`); repeatable.
        #[arg(long, value_name = "URL", requires = "acme_directory")]
        acme_contact: Vec<String>,
        /// Days a certificate from the control plane's own CA is valid (when no ACME
        /// directory is set); renewed two thirds into it.
        #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3650))]
        ca_validity_days: u64,
    },
    /// Print the bootstrap of an Envoy data plane (JSON): ADS over mTLS to the control plane;
    /// the certificate must be pinned for the control plane.
    EnvoyBootstrap(EnvoyBootstrap),
    /// Drain and stop every provisioned data plane of a data directory (they outlive `serve`;
    /// the next `serve` starts them again). Stop `serve` first: it would restart them.
    StopDataPlanes {
        #[arg(long, default_value = "control-plane-data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct EnvoyBootstrap {
    #[arg(long)]
    control_plane_id: String,
    #[arg(long)]
    node_id: String,
    /// The control plane's xDS endpoint.
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds: SocketAddr,
    /// The data plane's client certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The control plane's CA (`cluster-ca.crt` in its data directory, PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The gateway listener.
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    /// Envoy's admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// An environment variable plugins may read (`{vault://env/NAME}`); repeatable.
    #[arg(long = "env-allow")]
    env_allow: Vec<String>,
    /// Where `wasmgate-ratelimit` serves this Envoy, for rate-limiting's `policy: redis`.
    #[arg(long)]
    ratelimit_address: Option<SocketAddr>,
    /// Envoy's TLS listener, for custom domains: their certificates come by SDS, chosen by
    /// SNI.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
}

fn envoy_bootstrap(args: &EnvoyBootstrap) -> ExitCode {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let pems = (|| Ok::<_, String>((read(&args.cert)?, read(&args.key)?, read(&args.ca)?)))();
    let (cert_pem, key_pem, ca_pem) = match pems {
        Ok(pems) => pems,
        Err(e) => {
            eprintln!("control-plane envoy-bootstrap: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bootstrap = control_plane::xds::bootstrap(&control_plane::xds::BootstrapOptions {
        node_id: args.node_id.clone(),
        control_plane_id: args.control_plane_id.clone(),
        xds: args.xds,
        cert_pem,
        key_pem,
        ca_pem,
        listen: args.listen,
        admin: args.admin,
        env_allow: args.env_allow.clone(),
        ratelimit: args.ratelimit_address,
        tls_listen: args.tls_listen,
    });
    // Not println!: a closed pipe (`| head`) is an exit status, not a panic.
    use std::io::Write;
    match writeln!(std::io::stdout(), "{bootstrap:#}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn stop_data_planes(data_dir: &std::path::Path) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => {
            let stopped = runtime.block_on(control_plane::provision::stop_data_planes(data_dir));
            println!("{}: data planes stopped: {stopped}", data_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-plane stop-data-planes: runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let command = Cli::parse().command;
    if let Command::EnvoyBootstrap(args) = &command {
        return envoy_bootstrap(args);
    }
    if let Command::StopDataPlanes { data_dir } = &command {
        return stop_data_planes(data_dir);
    }
    let Command::Serve {
        listen,
        cluster_listen,
        xds_listen,
        data_dir,
        token,
        modules_dir,
        gateway_bin,
        ping_interval,
        allow_private_upstreams,
        redis,
        acme_directory,
        acme_ca_file,
        acme_contact,
        ca_validity_days,
    } = command
    else {
        return ExitCode::FAILURE;
    };
    let options = Options {
        listen,
        cluster_listen,
        xds_listen,
        data_dir,
        token,
        modules_dir: modules_dir.unwrap_or_else(model::plugins::default_modules_dir),
        gateway_bin,
        ping_interval: Duration::from_secs(ping_interval.max(1)),
        allow_private_upstreams,
        redis,
        certificates: control_plane::acme::Settings {
            acme: acme_directory.map(|directory| control_plane::acme::AcmeSettings {
                directory,
                ca_file: acme_ca_file,
                contact: acme_contact,
            }),
            ca_validity: Duration::from_secs(ca_validity_days * 24 * 3600),
        },
    };
    let control_plane = match ControlPlane::start(options) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("control-plane: {e}");
            return ExitCode::FAILURE;
        }
    };
    let endpoints = control_plane.endpoints();
    if let Some(token) = control_plane.generated_token() {
        println!("API token (shown once, keep it): {token}");
    }
    println!(
        "control plane: API http://{} · gateway data planes {} · Envoy xDS {}",
        endpoints.api, endpoints.cluster, endpoints.xds
    );
    wait_for_signal();
    control_plane.shutdown();
    ExitCode::SUCCESS
}

fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime {
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term.as_mut() {
                Ok(term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
    }
}
