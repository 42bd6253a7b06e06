//! The `gateway` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gateway::admin::{AdminListen, AdminOptions, AdminToken, TOKEN_ENV};
use gateway::cluster::{Cluster, ClusterOptions};
use gateway::filters::{default_modules_dir, Platform, Runtime, RuntimeOptions};
use gateway::proxy::egress::EgressPolicy;
use gateway::proxy::upstream::UpstreamOptions;
use gateway::server::{CLIENT_HEADER_TIMEOUT, WORKER_CONNECTIONS};
use gateway::{Gateway, GatewayOptions, Snapshot};
use host::shared_data::DEFAULT_MAX_BYTES_PER_VM;

// A request through plugins allocates a few hundred small blocks (header maps crossing the
// filter chain, host-call buffers); glibc's malloc took about a sixth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            shared_data_max_bytes: DEFAULT_MAX_BYTES_PER_VM,
            platform: None,
            module_cache_dir: None,
        }
    }
}

/// Compiled modules kept between runs.
#[derive(Args, Clone)]
struct ModuleCacheArgs {
    /// Where compiled modules are kept, so that a start loads them instead of compiling them
    /// again (created mode 0700; a folder another user may write to is not used). Gateways
    /// of one user may share it.
    #[arg(long, default_value = "gateway-module-cache")]
    module_cache_dir: PathBuf,
    /// Compile every module at start and keep nothing.
    #[arg(long, conflicts_with = "module_cache_dir")]
    no_module_cache: bool,
}

impl ModuleCacheArgs {
    fn dir(&self) -> Option<PathBuf> {
        (!self.no_module_cache).then(|| self.module_cache_dir.clone())
    }
}

/// Client and upstream connections: timeouts and limits (nginx's, Kong's and Envoy's names).
#[derive(Args, Clone)]
struct ConnectionArgs {
    /// Seconds a client may take to send a request's headers (nginx's and Kong's
    /// `client_header_timeout`).
    #[arg(long, default_value_t = CLIENT_HEADER_TIMEOUT.as_secs())]
    client_header_timeout: u64,
    /// Seconds a client may send nothing of a request body the gateway is reading before the
    /// request fails with 408 (nginx's and Kong's `client_body_timeout`).
    #[arg(long, default_value_t = gateway::server::CLIENT_BODY_TIMEOUT.as_secs())]
    client_body_timeout: u64,
    /// Connections each worker serves at once (nginx's `worker_connections`).
    #[arg(long, default_value_t = WORKER_CONNECTIONS)]
    worker_connections: usize,
    /// Seconds a connection with no request in flight stays open after its last response
    /// (nginx's and Kong's `keepalive_timeout`; HTTP/2 too).
    #[arg(long, default_value_t = gateway::server::KEEPALIVE_TIMEOUT.as_secs())]
    keepalive_timeout: u64,
    /// Seconds between pings on an HTTP/2 connection (Envoy's `connection_keepalive`).
    #[arg(long, default_value_t = gateway::server::HTTP2_KEEPALIVE_INTERVAL.as_secs())]
    http2_keepalive_interval: u64,
    /// Seconds a ping may go unanswered before the HTTP/2 connection is closed.
    #[arg(long, default_value_t = gateway::server::HTTP2_KEEPALIVE_TIMEOUT.as_secs())]
    http2_keepalive_timeout: u64,
    /// Requests in flight to one service, for the whole gateway (Envoy's circuit
    /// breaker `max_requests`; on HTTP/1.1, the connections in use).
    #[arg(long, default_value_t = gateway::proxy::upstream::MAX_REQUESTS)]
    upstream_max_requests: usize,
    /// Requests waiting for one of those to end (Envoy's `max_pending_requests`); past
    /// both, 503.
    #[arg(long, default_value_t = gateway::proxy::upstream::MAX_PENDING)]
    upstream_max_pending: usize,
    /// Idle upstream connections each worker keeps per host (Kong's
    /// `upstream_keepalive_pool_size`).
    #[arg(long, default_value_t = gateway::proxy::upstream::KEEPALIVE_POOL_SIZE)]
    upstream_keepalive_pool_size: usize,
}

/// The layer of a platform that runs other people's configurations.
#[derive(Args, Clone)]
struct PlatformArgs {
    /// Networks no upstream connection may reach (addresses or CIDR blocks,
    /// comma-separated or repeated; `private` for this host, private networks and
    /// link-local): what a platform hosting other tenants' services denies.
    #[arg(long, value_delimiter = ',')]
    upstream_deny: Vec<String>,
    /// The platform's plugins (YAML or JSON, `plugins:` a list of Kong plugin entities
    /// without a scope, with the modules of --modules-dir): they run on every proxied
    /// request before the route's own plugins, apart from them, whatever the configuration
    /// (or the control plane) says; read once, at start.
    #[arg(long)]
    platform_plugins: Option<PathBuf>,
}

/// Configuration from a control plane instead of a file (Kong's hybrid-mode names).
#[derive(Args, Clone)]
struct ClusterArgs {
    /// The control plane's cluster endpoint (`host:port`).
    #[arg(long, requires_all = ["cluster_cert", "cluster_cert_key", "cluster_ca_cert"])]
    control_plane: Option<String>,
    /// Which control plane, when the certificate is pinned for several.
    #[arg(long)]
    control_plane_id: Option<String>,
    /// This data plane's id (default: made once and kept in the cache directory).
    #[arg(long)]
    node_id: Option<String>,
    /// The client certificate (PEM) pinned for the control plane.
    #[arg(long)]
    cluster_cert: Option<PathBuf>,
    #[arg(long)]
    cluster_cert_key: Option<PathBuf>,
    /// The control plane's CA (PEM).
    #[arg(long)]
    cluster_ca_cert: Option<PathBuf>,
    /// Where the last configuration and its modules are kept.
    #[arg(long, default_value = "gateway-cluster-cache")]
    cluster_cache_dir: PathBuf,
    /// Seconds between pings to the control plane.
    #[arg(long, default_value_t = 30)]
    cluster_ping_interval: u64,
}

impl ClusterArgs {
    fn options(&self) -> Option<ClusterOptions> {
        Some(ClusterOptions {
            control_plane: self.control_plane.clone()?,
            control_plane_id: self.control_plane_id.clone(),
            node_id: self.node_id.clone(),
            cert: self.cluster_cert.clone()?,
            key: self.cluster_cert_key.clone()?,
            ca: self.cluster_ca_cert.clone()?,
            cache_dir: self.cluster_cache_dir.clone(),
            ping_interval: std::time::Duration::from_secs(self.cluster_ping_interval.max(1)),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Proxy traffic with a Kong declarative configuration.
    Run {
        /// The declarative file (`_format_version: "3.0"`, YAML or JSON); not with
        /// --control-plane.
        #[arg(
            long,
            required_unless_present = "control_plane",
            conflicts_with = "control_plane"
        )]
        config: Option<PathBuf>,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
        /// Where clients connect.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// The admin API (/status, /metrics, GET and POST /config): HOST:PORT, unix:PATH (a
        /// socket only this user may open, mode 0600) or off. Without a token it must be on
        /// loopback or unix:, refuses requests a proxy relayed (X-Forwarded-For, X-Real-IP,
        /// Forwarded, Via) and over TCP answers only requests for localhost or a loopback
        /// address. Requests from browsers (with Origin or Sec-Fetch-Site) are always
        /// refused; with --control-plane, POST /config is.
        #[arg(long, default_value = "127.0.0.1:8001")]
        admin_listen: AdminListen,
        /// A file holding the admin API's token (or set WASMGATE_ADMIN_TOKEN, not both):
        /// every admin request must then present it, as `Authorization: Bearer TOKEN` or
        /// `Kong-Admin-Token: TOKEN`, or gets 401.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Do not print an access log line per request.
        #[arg(long)]
        no_access_log: bool,
        #[command(flatten)]
        connections: Box<ConnectionArgs>,
        /// Proxies (addresses or CIDR blocks, comma-separated or repeated) whose
        /// --real-ip-header names the client and whose X-Forwarded-* headers go on (Kong's
        /// `trusted_ips`; none by default, `0.0.0.0/0,::/0` for all).
        #[arg(long, value_delimiter = ',')]
        trusted_ips: Vec<gateway::proxy::real_ip::Cidr>,
        /// The header a trusted proxy names the client in (Kong's `real_ip_header`).
        #[arg(long, default_value = "X-Real-IP")]
        real_ip_header: String,
        /// Skip trusted proxies in --real-ip-header from the right, up to the first address
        /// that is none (Kong's `real_ip_recursive`).
        #[arg(long)]
        real_ip_recursive: bool,
        /// CA certificates (PEM) that `tls_verify` services may be signed by, besides the Web
        /// PKI roots (Kong's `lua_ssl_trusted_certificate`).
        #[arg(long)]
        upstream_ca_file: Option<PathBuf>,
        /// Bytes (keys and values) each module's vm_id may keep in shared data; a write past
        /// it fails (rate-limiting then follows `fault_tolerant`).
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES_PER_VM)]
        shared_data_max_bytes: usize,
        #[command(flatten)]
        platform: Box<PlatformArgs>,
        /// Where TLS clients connect. Certificates come from the configuration's
        /// `certificates` (chosen by their `snis`) and from --tls-cert, if any.
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
        /// A PEM certificate chain; repeat for several. Chosen by the names it covers when no
        /// configuration certificate has the client's SNI; the first is the default.
        #[arg(long = "tls-cert")]
        tls_certs: Vec<PathBuf>,
        /// The PEM private key of the --tls-cert at the same position.
        #[arg(long = "tls-key")]
        tls_keys: Vec<PathBuf>,
        #[command(flatten)]
        modules: Modules,
        #[command(flatten)]
        module_cache: Box<ModuleCacheArgs>,
    },
    /// Check a declarative file, plugins included, and exit: 0 when valid, else every error.
    Validate {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        modules: Modules,
        #[command(flatten)]
        module_cache: ModuleCacheArgs,
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
        /// The CA certificates (PEM, a path on Envoy's host) that sign the certificates of
        /// `tls_verify` services (default: the system bundle, /etc/ssl/certs/ca-certificates.crt).
        #[arg(long)]
        upstream_ca_file: Option<PathBuf>,
        /// Where `wasmgate-ratelimit` serves the Redis of the rate-limiting plugins with
        /// `policy: redis` (required when there are some): Envoy gets a cluster for it.
        #[arg(long)]
        ratelimit_address: Option<SocketAddr>,
        /// Envoy's TLS listener: the configuration's `certificates`, chosen by their `snis`
        /// (none: no TLS listener).
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
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
            // Not eprintln!: a closed stderr must not panic a worker that logs.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "wasmgate: [{}] {}",
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate {
            config,
            modules,
            module_cache,
        } => validate(&config, &modules, &module_cache),
        Command::EnvoyBootstrap {
            config,
            out,
            listen,
            admin_listen,
            upstream_ca_file,
            ratelimit_address,
            tls_listen,
            modules,
        } => envoy_bootstrap(
            &config,
            out,
            (listen, admin_listen, tls_listen),
            upstream_ca_file,
            ratelimit_address,
            &modules,
        ),
        Command::Run {
            config,
            cluster,
            listen,
            admin_listen,
            admin_token_file,
            workers,
            no_access_log,
            connections,
            trusted_ips,
            real_ip_header,
            real_ip_recursive,
            upstream_ca_file,
            shared_data_max_bytes,
            platform,
            tls_listen,
            tls_certs,
            tls_keys,
            modules,
            module_cache,
        } => tls_settings(tls_listen, tls_certs, tls_keys).and_then(|tls| {
            let header = http::HeaderName::from_bytes(real_ip_header.as_bytes())
                .map_err(|e| format!("--real-ip-header {real_ip_header:?}: {e}"))?;
            let mut options = GatewayOptions {
                listen,
                admin_listen: match admin_listen {
                    AdminListen::Tcp(addr) => Some(addr),
                    AdminListen::Unix(_) | AdminListen::Off => None,
                },
                admin: admin_options(&admin_listen, admin_token_file.as_deref())?,
                access_log: !no_access_log,
                config_path: config.clone(),
                tls,
                runtime: RuntimeOptions {
                    shared_data_max_bytes,
                    platform: (platform.platform_plugins)
                        .map(|file| platform_plugins(file, &modules))
                        .transpose()?,
                    module_cache_dir: module_cache.dir(),
                    ..modules.options()
                },
                client_header_timeout: Duration::from_secs(connections.client_header_timeout),
                client_body_timeout: Duration::from_secs(connections.client_body_timeout),
                worker_connections: connections.worker_connections,
                keepalive_timeout: Duration::from_secs(connections.keepalive_timeout),
                http2_keepalive_interval: Duration::from_secs(connections.http2_keepalive_interval),
                http2_keepalive_timeout: Duration::from_secs(connections.http2_keepalive_timeout),
                real_ip: gateway::proxy::real_ip::RealIp {
                    trusted_ips,
                    header,
                    recursive: real_ip_recursive,
                },
                upstream: UpstreamOptions {
                    egress: Arc::new(
                        EgressPolicy::parse(&platform.upstream_deny)
                            .map_err(|e| format!("--upstream-deny: {e}"))?,
                    ),
                    trusted_cas: match &upstream_ca_file {
                        Some(path) => UpstreamOptions::read_cas(path)
                            .map_err(|e| format!("--upstream-ca-file: {e}"))?,
                        None => Vec::new(),
                    },
                    max_requests: connections.upstream_max_requests,
                    max_pending: connections.upstream_max_pending,
                    keepalive_pool_size: connections.upstream_keepalive_pool_size,
                    ..UpstreamOptions::default()
                },
                ..GatewayOptions::default()
            };
            if let Some(n) = workers {
                options.workers = n;
            }
            match (config, cluster.options()) {
                (Some(config), _) => run(Source::File(config), options),
                (None, Some(cluster)) => run(Source::ControlPlane(cluster), options),
                (None, None) => Err("--config or --control-plane is required".into()),
            }
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

/// The admin API's settings from `--admin-listen`, `--admin-token-file` and
/// [`TOKEN_ENV`]; `read_only` is for [`run`] to set, which knows where configuration comes
/// from.
fn admin_options(listen: &AdminListen, token_file: Option<&Path>) -> Result<AdminOptions, String> {
    Ok(AdminOptions {
        unix_socket: match listen {
            AdminListen::Unix(path) => Some(path.clone()),
            AdminListen::Tcp(_) | AdminListen::Off => None,
        },
        token: AdminToken::configured(token_file, std::env::var_os(TOKEN_ENV))?,
        read_only: false,
    })
}

/// The platform's plugins from `file`, read and checked by the model; their modules check
/// their configs when the runtime starts them.
fn platform_plugins(file: PathBuf, modules: &Modules) -> Result<Platform, String> {
    let plugins =
        model::parse_platform_plugins(&read(&file)?, None).map_err(|e| invalid(&file, &e))?;
    Ok(Platform {
        file,
        plugins,
        modules_dir: modules.options().modules_dir,
    })
}

fn validate(
    config: &PathBuf,
    modules: &Modules,
    module_cache: &ModuleCacheArgs,
) -> Result<(), String> {
    let text = read(config)?;
    let options = RuntimeOptions {
        module_cache_dir: module_cache.dir(),
        ..modules.options()
    };
    let runtime = Runtime::new(options.clone())?;
    let snapshot = Snapshot::build(&text, &runtime, &options.modules_dir, None)
        .map_err(|e| invalid(config, &e))?;
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
    (listen, admin, tls_listen): (SocketAddr, SocketAddr, Option<SocketAddr>),
    upstream_ca_file: Option<PathBuf>,
    ratelimit_address: Option<SocketAddr>,
    modules: &Modules,
) -> Result<(), String> {
    let text = read(config)?;
    // The plugins' configs are judged by the modules Envoy loads (from a folder that may be
    // Envoy's own, with secrets from Envoy's environment): Envoy refuses a config they refuse,
    // logging each field. `gateway validate` checks them with the modules here.
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
        upstream_ca_file,
    };
    let mut bootstrap = model::envoy::bootstrap_with_tls(&parsed, &options, tls_listen);
    gateway::ratelimit::add_envoy_clusters(&mut bootstrap, &parsed, ratelimit_address)
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
    let holds_keys = bootstrap["static_resources"]["listeners"]
        .as_array()
        .is_some_and(|listeners| {
            listeners
                .iter()
                .any(|l| l["name"] == model::envoy::TLS_LISTENER)
        });
    match out {
        Some(path) => write_bootstrap(&path, &text, holds_keys),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

/// Writes a bootstrap; one holding private keys (the TLS listener's certificates, inline) is
/// for its owner only, also when the file was there before.
fn write_bootstrap(path: &Path, text: &str, holds_keys: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let context = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if holds_keys {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(context)?;
    if holds_keys {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(context)?;
    }
    file.write_all(text.as_bytes()).map_err(context)
}

type TlsSettings = Option<(SocketAddr, gateway::tls::TlsListener)>;

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
        Some(listen) => {
            let files: Vec<gateway::tls::CertificateFiles> = certs
                .into_iter()
                .zip(keys)
                .map(|(cert, key)| gateway::tls::CertificateFiles { cert, key })
                .collect();
            Ok(Some((listen, gateway::tls::TlsListener::new(&files)?)))
        }
    }
}

/// Where the configuration comes from.
enum Source {
    File(PathBuf),
    ControlPlane(ClusterOptions),
}

fn run(source: Source, mut options: GatewayOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (gateway, config, origin) = match source {
        Source::File(config) => {
            let text = read(&config)?;
            let gateway =
                Gateway::start(options, &text).map_err(|e| format!("{}: {e}", config.display()))?;
            gateway::reload::watch(std::sync::Arc::clone(gateway.shared()), config.clone());
            let origin = config.display().to_string();
            (gateway, Some(config), origin)
        }
        Source::ControlPlane(cluster_options) => {
            // Kong hybrid mode: a data plane takes its configuration from the control plane only.
            options.admin.read_only = true;
            let address = cluster_options.control_plane.clone();
            let cluster = Cluster::new(cluster_options)?;
            if let Some(dir) = cluster.modules_dir() {
                options.runtime.modules_dir = dir;
            }
            // The cached configuration when there is one that still loads; else none yet.
            let cached = cluster.cached_config();
            let gateway = match cached
                .as_deref()
                .map(|text| Gateway::start(options.clone(), text))
            {
                Some(Ok(gateway)) => gateway,
                Some(Err(e)) => {
                    eprintln!(
                        "wasmgate: the cached configuration does not load ({e}); starting empty"
                    );
                    Gateway::start(options, gateway::cluster::EMPTY_CONFIG)?
                }
                None => Gateway::start(options, gateway::cluster::EMPTY_CONFIG)?,
            };
            cluster.spawn(std::sync::Arc::clone(gateway.shared()))?;
            let origin = format!(
                "control plane {address}{}",
                if cached.is_some() {
                    ", cached configuration"
                } else {
                    ""
                }
            );
            (gateway, None, origin)
        }
    };
    let shared = gateway.shared();
    eprintln!(
        "wasmgate: gateway on http://{}{} (admin {}), {} workers, config {} ({})",
        gateway.addr(),
        gateway
            .tls_addr()
            .map_or(String::new(), |a| format!(" and https://{a}")),
        match (gateway.admin_addr(), &shared.options.admin.unix_socket) {
            (Some(addr), _) => format!("http://{addr}"),
            (None, Some(path)) => format!("unix:{}", path.display()),
            (None, None) => "off".into(),
        },
        shared.options.workers,
        origin,
        shared.snapshot.load().hash
    );
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
                _ = hup.recv() => {
                    if let Some(config) = &config {
                        gateway::reload::reload(gateway.shared(), config, "SIGHUP");
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The README: both listeners, and above all the admin API (which can replace the
    /// configuration), are on loopback unless the operator says otherwise.
    #[test]
    fn listeners_default_to_loopback() {
        let cli = Cli::try_parse_from(["gateway", "run", "--config", "kong.yaml"])
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Run {
            listen,
            admin_listen,
            ..
        } = cli.command
        else {
            panic!("not a run");
        };
        assert!(listen.ip().is_loopback(), "{listen}");
        assert_eq!(
            admin_listen,
            AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8001)))
        );
    }

    /// `--tls-listen` alone is a TLS listener: its certificates are the configuration's.
    #[test]
    fn tls_listen_needs_no_certificate_file() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let settings = tls_settings(Some(listen), Vec::new(), Vec::new());
        assert!(matches!(settings, Ok(Some((at, _))) if at == listen));
        assert!(matches!(
            tls_settings(None, Vec::new(), Vec::new()),
            Ok(None)
        ));
        let files = || vec![PathBuf::from("c.pem")];
        assert_eq!(
            tls_settings(None, files(), files()).err().as_deref(),
            Some("--tls-cert needs --tls-listen")
        );
    }

    /// The module cache is on unless --no-module-cache says otherwise, in
    /// `gateway-module-cache` beside `gateway-cluster-cache` unless a folder is given; both
    /// flags at once are refused.
    #[test]
    fn the_module_cache_is_on_by_default_and_can_be_turned_off() {
        let cache = |args: &[&str]| {
            let cli = Cli::try_parse_from(
                ["gateway", "validate", "--config", "k.yaml"]
                    .iter()
                    .chain(args),
            )
            .map_err(|e| e.kind())?;
            let Command::Validate { module_cache, .. } = cli.command else {
                panic!("not a validate");
            };
            Ok::<_, clap::error::ErrorKind>(module_cache.dir())
        };
        assert_eq!(cache(&[]), Ok(Some(PathBuf::from("gateway-module-cache"))));
        assert_eq!(
            cache(&["--module-cache-dir", "/c"]),
            Ok(Some(PathBuf::from("/c")))
        );
        assert_eq!(cache(&["--no-module-cache"]), Ok(None));
        assert_eq!(
            cache(&["--no-module-cache", "--module-cache-dir", "/c"]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
    }
}
