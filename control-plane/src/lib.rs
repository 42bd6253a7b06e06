//! `control-plane`: wasmgate's control plane.
//!
//! A Konnect-style REST API ([`api`]) over embedded SQLite ([`store`]) owns the services,
//! routes and plugins of each control plane. Every accepted change becomes a new validated
//! config version ([`config`], [`hub`]) that is pushed live to the data planes connected to
//! that control plane: `gateway`s over wasmgate's sync protocol ([`sync`]) and stock Envoy
//! over ADS with the plugins in ECDS ([`xds`]). Both data plane endpoints require a pinned
//! client certificate ([`pki`]); what each data plane runs, or why not, is in [`nodes`].
//! [`provision`] runs and supervises local `gateway` processes for Konnect's cloud gateway
//! API; [`custom_domains`] issues (through [`acme`]), pushes and renews the certificates of
//! their custom domains.

pub mod acme;
pub mod api;
pub mod config;
pub mod custom_domains;
pub mod hub;
pub mod modules;
pub mod nodes;
pub mod pki;
pub mod provision;
pub mod store;
pub mod sync;
pub mod trust;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::{ConfigVersion, Hub};
use crate::modules::Modules;
use crate::nodes::Nodes;
use crate::pki::ServerIdentity;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct Options {
    /// The REST API.
    pub listen: SocketAddr,
    /// Where `gateway` data planes connect (mTLS, wasmgate's sync protocol).
    pub cluster_listen: SocketAddr,
    /// Where Envoy data planes connect (mTLS, ADS over gRPC).
    pub xds_listen: SocketAddr,
    /// The SQLite database, the cluster certificates, provisioned data planes' files.
    pub data_dir: PathBuf,
    /// The API's bearer token; without one, the stored one is kept, or one is made on
    /// first start.
    pub token: Option<String>,
    /// wasmgate's plugin modules, handed to data planes.
    pub modules_dir: PathBuf,
    /// The `gateway` binary provisioned data planes run.
    pub gateway_bin: Option<PathBuf>,
    /// How often data planes are expected to ping; a node silent for 1.5× this is
    /// disconnected (Kong: 30 s and 45 s).
    pub ping_interval: Duration,
    /// Let provisioned data planes reach services on this host and on private and link-local
    /// networks. Off by default: a tenant's service `http://127.0.0.1:<port>` would reach the
    /// platform's own services and the other tenants' through the tenant's proxy. For a
    /// platform whose tenants' backends are local (development, tests).
    pub allow_private_upstreams: bool,
    /// The Redis through which a serverless data plane group of 2 or more replicas shares
    /// its 100 requests per second (`policy: redis`). Without one, such a group is refused:
    /// each replica counting alone would admit 100 a second each.
    pub redis: Option<config::Redis>,
    /// Where custom domains' certificates come from: an ACME server, else the control
    /// plane's own CA.
    pub certificates: acme::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 8100)),
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 8005)),
            xds_listen: SocketAddr::from(([127, 0, 0, 1], 18000)),
            data_dir: PathBuf::from("control-plane-data"),
            token: None,
            modules_dir: model::plugins::default_modules_dir(),
            gateway_bin: None,
            ping_interval: Duration::from_secs(30),
            allow_private_upstreams: false,
            redis: None,
            certificates: acme::Settings::default(),
        }
    }
}

/// Where each endpoint actually listens (ports 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub api: SocketAddr,
    pub cluster: SocketAddr,
    pub xds: SocketAddr,
}

/// Everything the API and the data plane endpoints share.
pub struct State {
    pub options: Options,
    pub endpoints: Endpoints,
    pub store: Arc<Store>,
    pub hub: Hub,
    pub nodes: Nodes,
    pub modules: Modules,
    pub identity: ServerIdentity,
    /// SHA-256 (hex) of the API token.
    pub token_sha256: String,
    pub provisioner: provision::Provisioner,
    pub domains: custom_domains::Domains,
}

/// A running control plane; dropping it stops everything it started but the provisioned
/// data planes, which keep serving (the next start adopts them).
pub struct ControlPlane {
    state: Arc<State>,
    /// The token made on first start, to print once; `None` when one was given or stored.
    generated_token: Option<String>,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

const TOKEN_SETTING: &str = "api_token_sha256";

fn bind(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener, String> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("{what} listener on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{what} listener: {e}"))?;
    Ok(listener)
}

fn random_token() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 40];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("random token: {e}"))?;
    let token: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    Ok(format!("kpat_{token}"))
}

impl ControlPlane {
    /// Opens the data directory, restores every control plane's latest version, binds the
    /// three listeners and starts serving (on a runtime of its own).
    pub fn start(options: Options) -> Result<ControlPlane, String> {
        // Its user's alone: the database holds every plugin's configuration (secrets
        // included), the folders below the data planes' keys.
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&options.data_dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &options.data_dir,
                        std::fs::Permissions::from_mode(0o700),
                    )
                })
                .map_err(|e| format!("data directory {}: {e}", options.data_dir.display()))?;
        }
        let store = Arc::new(Store::open(&options.data_dir)?);
        let identity = ServerIdentity::load_or_create(&options.data_dir)?;
        let modules = Modules::load(&options.modules_dir)?;
        let nodes = Nodes::load(Arc::clone(&store))?;
        let hub = Hub::default();
        // Challenges a stopped control plane was validating: the validations died with it
        // (the domains still `initializing` start over below), so the data planes stop
        // answering them, as of the versions assembled next.
        store
            .transaction(store::custom_domains::clear_challenges)
            .map_err(|e| format!("clearing ACME challenges: {e}"))?;
        let issuer = acme::Issuer::new(&options.certificates, &options.data_dir)?;
        let assigned = api::assign_tls_ports(&store)?;
        if assigned > 0 {
            log::info!("{assigned} provisioned gateways stored without a TLS port got one");
        }
        for (id, version, text, created_at) in store.latest_versions()? {
            // After an upgrade the stored text may no longer be what the entities make, or
            // no longer valid: the entities are the source, so their assembly wins.
            let current = match config::reassemble(&store, &id, nodes::now()) {
                Ok(Some(assembled)) => {
                    log::warn!(
                        "control plane {id}: version {} assembled again from its entities \
                         (the stored version {version} is not what they make any more)",
                        assembled.version
                    );
                    Ok(assembled)
                }
                Ok(None) => ConfigVersion::new(&id, version, text, created_at)
                    .map(Arc::new)
                    .map_err(|e| e.to_string()),
                Err(e) => {
                    log::error!(
                        "control plane {id}: its entities make no valid configuration: {e:?}"
                    );
                    ConfigVersion::new(&id, version, text, created_at)
                        .map(Arc::new)
                        .map_err(|e| e.to_string())
                }
            };
            match current {
                Ok(v) => hub.publish(v),
                Err(e) => {
                    log::error!("control plane {id}: stored version {version} is invalid: {e}")
                }
            }
        }
        let (token_sha256, generated_token) = match &options.token {
            Some(token) => {
                let sha = hub::sha256_hex(token.as_bytes());
                store.set_setting(TOKEN_SETTING, &sha)?;
                (sha, None)
            }
            None => match store.setting(TOKEN_SETTING)? {
                Some(sha) => (sha, None),
                None => {
                    let token = random_token()?;
                    let sha = hub::sha256_hex(token.as_bytes());
                    store.set_setting(TOKEN_SETTING, &sha)?;
                    (sha, Some(token))
                }
            },
        };
        let api = bind(options.listen, "API")?;
        let cluster = bind(options.cluster_listen, "cluster")?;
        let xds = bind(options.xds_listen, "xDS")?;
        let endpoints = Endpoints {
            api: api.local_addr().map_err(|e| e.to_string())?,
            cluster: cluster.local_addr().map_err(|e| e.to_string())?,
            xds: xds.local_addr().map_err(|e| e.to_string())?,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasmgate-control-plane")
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let provisioner = provision::Provisioner::new(&options);
        let state = Arc::new(State {
            options,
            endpoints,
            store,
            hub,
            nodes,
            modules,
            identity,
            token_sha256,
            provisioner,
            domains: custom_domains::Domains::new(issuer),
        });
        let (shutdown, _) = watch::channel(false);
        {
            let _guard = runtime.enter();
            let listener = |l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string());
            let (api, cluster, xds) = (listener(api)?, listener(cluster)?, listener(xds)?);
            runtime.spawn(api::serve(api, Arc::clone(&state), shutdown.subscribe()));
            runtime.spawn(sync::serve(
                cluster,
                Arc::clone(&state),
                shutdown.subscribe(),
            ));
            runtime.spawn(xds::serve(xds, Arc::clone(&state), shutdown.subscribe()));
            runtime.spawn(provision::restore(Arc::clone(&state)));
            runtime.spawn(custom_domains::resume(Arc::clone(&state)));
        }
        Ok(ControlPlane {
            state,
            generated_token,
            shutdown,
            runtime: Some(runtime),
        })
    }

    pub fn endpoints(&self) -> Endpoints {
        self.state.endpoints
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The token made on first start (shown once); `None` when one was given or stored.
    pub fn generated_token(&self) -> Option<&str> {
        self.generated_token.as_deref()
    }

    /// Stops serving; provisioned data planes keep serving their configuration and
    /// reconnect to the next control plane on this data directory, which adopts them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(runtime) = self.runtime.take() {
            // On a thread of its own: the owner may be async code, where a runtime can be
            // neither blocked on nor dropped.
            let state = Arc::clone(&self.state);
            let stopping = std::thread::spawn(move || {
                runtime.block_on(state.provisioner.detach_all());
                runtime.shutdown_timeout(Duration::from_secs(2));
            });
            let _ = stopping.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
