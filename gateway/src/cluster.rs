//! The data plane side of wasmgate's sync protocol (docs/SYNC.md, frames in [`model::sync`]):
//! a WebSocket over mutual TLS to the control plane's `/v1/outlet`, Kong hybrid style.
//!
//! The gateway introduces itself (`basic_info`: node id, hostname, version, the modules it
//! has), receives every new config version with the modules it lacks, checks each module's
//! SHA-256, applies the version atomically (the same swap as a reload: in-flight requests
//! finish on the old snapshot) and reports `applied` or its `error`, and pings with the hash it
//! runs. The last applied version and its modules are cached on disk, so a gateway started
//! while the control plane is unreachable serves what it served before; a lost connection is
//! retried with a jittered backoff capped at 2 s, and the running configuration keeps serving
//! meanwhile. A control plane that stops answering pings for 1.5 intervals counts as lost.
//!
//! The cache holds each version whole, in a folder of its own (`versions/<name>/`: its
//! `config.json` and every module it loads, in `modules/`), and `current` names the one that
//! serves. A version is written beside the running one, loaded from there, and made current
//! only once it is running: a refused version, or a crash at any point, leaves the cached
//! configuration and its modules as they were, together.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use model::sync::{Inbound, ModuleData, ModuleInfo, Outbound, PluginInfo, PATH};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::server::Shared;

/// What `gateway run --control-plane ...` says.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `host:port` of the control plane's cluster endpoint.
    pub control_plane: String,
    /// Needed only when the certificate is pinned for several control planes.
    pub control_plane_id: Option<String>,
    /// Default: made once and kept in the cache directory.
    pub node_id: Option<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The control plane's CA (PEM).
    pub ca: PathBuf,
    pub cache_dir: PathBuf,
    pub ping_interval: Duration,
}

/// A configured, not yet connected, cluster client.
pub struct Cluster {
    options: ClusterOptions,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    node_id: String,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The waits between attempts to reach the control plane: about 100 ms after a session the
/// control plane accepted, twice the previous one after each failed attempt, never more than
/// [`MAX_BACKOFF`]. Each wait is drawn from its upper half, so the gateways a control plane
/// restart disconnected together do not come back together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The wait before the next attempt, in `[ceiling / 2, ceiling]`; the ceiling doubles
    /// after it, up to the cap.
    fn next(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (ceiling * 2).min(MAX_BACKOFF);
        ceiling / 2 + jitter(ceiling / 2)
    }

    /// The control plane accepted the session (its first frame arrived): the next wait is
    /// the first one again. A control plane that refuses the node after its `basic_info` is
    /// not retried every 100 ms.
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The control plane refused this data plane (its certificate, or the control plane it
    /// named): a retry succeeds only after an operator acts, so it waits the longest.
    fn refused(&mut self) {
        self.next = MAX_BACKOFF;
    }
}

/// A uniform wait in `[0, max]`: std's per-process random hash keys, over a counter.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(hasher.finish() % nanos.saturating_add(1))
}

/// Why a session ended.
enum SessionEnd {
    /// Closed, lost or unreadable: retried after the usual backoff.
    Lost(String),
    /// The control plane refused this data plane.
    Refused(String),
}

/// The configuration a gateway runs before it has one: no routes (Kong's 404 `no Route
/// matched`), and the very text a new control plane starts with, so both hash alike.
pub const EMPTY_CONFIG: &str = r#"{"_format_version":"3.0"}"#;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache's layout (see the module's comment).
const VERSIONS: &str = "versions";
const CURRENT: &str = "current";
const CONFIG: &str = "config.json";
const MODULES: &str = "modules";

/// Makes a folder's new entries durable (their names, not only their bytes).
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes a file whole or not at all: a crash mid-write leaves the previous one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // This user's only: a configuration holds its certificates' private keys.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

impl Cluster {
    /// Reads the certificates and prepares the cache directory; every error names its file.
    pub fn new(options: ClusterOptions) -> Result<Cluster, String> {
        std::fs::create_dir_all(options.cache_dir.join(VERSIONS))
            .map_err(|e| format!("{}: {e}", options.cache_dir.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read(&options.ca)?) {
            let cert = cert.map_err(|e| format!("{}: {e}", options.ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", options.ca.display()))?;
        }
        if roots.is_empty() {
            // It would trust nothing: every connection would fail its handshake.
            return Err(format!(
                "{}: no PEM certificate in it",
                options.ca.display()
            ));
        }
        let certs = CertificateDer::pem_slice_iter(&read(&options.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", options.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&options.key)?)
            .map_err(|e| format!("{}: {e}", options.key.display()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("{}: {e}", options.cert.display()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = options
            .control_plane
            .rsplit_once(':')
            .map_or(options.control_plane.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host)
            .map_err(|e| format!("--control-plane {}: {e}", options.control_plane))?;
        let node_id = match &options.node_id {
            Some(id) => id.clone(),
            None => stable_node_id(&options.cache_dir)?,
        };
        let cluster = Cluster {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            node_id,
            options,
        };
        // What a crash left half-written.
        cluster.forget_versions_but_current();
        Ok(cluster)
    }

    /// The folder of the version that serves, if one was applied.
    fn current(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.options.cache_dir.join(CURRENT)).ok()?;
        let dir = self.options.cache_dir.join(VERSIONS).join(name.trim());
        dir.join(CONFIG).is_file().then_some(dir)
    }

    /// The modules of the version that serves: the runtime loads plugin modules from here.
    pub fn modules_dir(&self) -> Option<PathBuf> {
        self.current().map(|dir| dir.join(MODULES))
    }

    /// The last configuration applied from the control plane, if any.
    pub fn cached_config(&self) -> Option<String> {
        std::fs::read_to_string(self.current()?.join(CONFIG)).ok()
    }

    /// Removes every version folder but the current one's (errors only leave disk used).
    fn forget_versions_but_current(&self) {
        let current = self.current();
        let Ok(entries) = std::fs::read_dir(self.options.cache_dir.join(VERSIONS)) else {
            return;
        };
        for entry in entries.flatten() {
            if Some(entry.path()) != current {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Follows the control plane on a thread of its own until the gateway is gone.
    pub fn spawn(self, shared: Arc<Shared>) -> Result<(), String> {
        std::thread::Builder::new()
            .name("wasmgate-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        log::error!("control plane client: runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(self.follow(shared));
            })
            .map(|_| ())
            .map_err(|e| format!("control plane client thread: {e}"))
    }

    fn status(&self, shared: &Shared, connected: bool, error: Option<&str>) {
        if let Ok(mut status) = shared.cluster.lock() {
            *status = Some(json!({
                "address": self.options.control_plane,
                "node_id": self.node_id,
                "connected": connected,
                "last_error": error,
            }));
        }
    }

    async fn follow(self, shared: Arc<Shared>) {
        let mut backoff = Backoff::new();
        self.status(&shared, false, None);
        // The gateway holds the other reference while it runs.
        while Arc::strong_count(&shared) > 1 {
            let error = match self.session(&shared, &mut backoff).await {
                SessionEnd::Lost(error) => error,
                SessionEnd::Refused(error) => {
                    backoff.refused();
                    error
                }
            };
            let wait = backoff.next();
            log::warn!(
                "control plane {}: {error}; retrying in {} ms with the running configuration",
                self.options.control_plane,
                wait.as_millis()
            );
            self.status(&shared, false, Some(&error));
            tokio::time::sleep(wait).await;
        }
    }

    fn basic_info(&self, shared: &Shared) -> Inbound {
        let mut modules = Vec::new();
        if let Some(Ok(entries)) = self.modules_dir().map(std::fs::read_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".wasm") {
                    continue;
                }
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    modules.push(ModuleInfo {
                        file: name,
                        sha256: sha256_hex(&bytes),
                    });
                }
            }
        }
        Inbound::BasicInfo {
            node_id: self.node_id.clone(),
            hostname: hostname(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            control_plane_id: self.options.control_plane_id.clone(),
            plugins: model::plugins::PLUGINS
                .iter()
                .map(|p| PluginInfo {
                    name: p.name.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .collect(),
            modules,
            config_hash: Some(shared.snapshot.load().hash.clone()),
        }
    }

    /// One connection, until it fails.
    async fn session(&self, shared: &Shared, backoff: &mut Backoff) -> SessionEnd {
        match self.connect_and_follow(shared, backoff).await {
            Ok(()) => SessionEnd::Lost("the control plane closed the connection".to_owned()),
            Err(end) => end,
        }
    }

    async fn connect_and_follow(
        &self,
        shared: &Shared,
        backoff: &mut Backoff,
    ) -> Result<(), SessionEnd> {
        let lost = SessionEnd::Lost;
        let addr = &self.options.control_plane;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| lost("connect timed out".to_owned()))?
            .map_err(|e| lost(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| lost("TLS handshake timed out".to_owned()))?
        .map_err(|e| lost(format!("TLS handshake: {e}")))?;
        let url = format!("wss://{addr}{PATH}");
        let (mut socket, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), tls),
        )
        .await
        .map_err(|_| lost("WebSocket upgrade timed out".to_owned()))?
        .map_err(|e| {
            // With TLS 1.3 the server checks the client certificate after the client's side
            // of the handshake is done: a refusal arrives as an alert on the first read.
            if e.to_string().contains("AccessDenied")
                || e.to_string().contains("CertificateUnknown")
            {
                SessionEnd::Refused(format!(
                    "the control plane refused this certificate (not pinned?): {e}"
                ))
            } else {
                lost(format!("WebSocket upgrade: {e}"))
            }
        })?;
        send(&mut socket, &self.basic_info(shared))
            .await
            .map_err(lost)?;
        self.status(shared, true, None);
        log::info!("connected to control plane {addr} as node {}", self.node_id);
        let mut ping = tokio::time::interval(self.options.ping_interval);
        ping.tick().await;
        // The control plane answers every ping: silence for 1.5 intervals is a control plane
        // gone without a word (its host lost, a partition), which TCP alone notices only
        // after minutes of retransmissions.
        let silence = self.options.ping_interval.mul_f64(1.5);
        let deadline = tokio::time::sleep(silence);
        tokio::pin!(deadline);
        let mut accepted = false;
        loop {
            tokio::select! {
                frame = socket.next() => {
                    deadline.as_mut().reset(tokio::time::Instant::now() + silence);
                    match frame {
                        None => return Ok(()),
                        Some(Ok(Message::Close(close))) => {
                            return match close {
                                Some(frame) if frame.code == CloseCode::Policy => {
                                    Err(SessionEnd::Refused(format!(
                                        "the control plane refused this data plane: {}",
                                        frame.reason
                                    )))
                                }
                                _ => Ok(()),
                            };
                        }
                        Some(Ok(Message::Text(text))) => {
                            if !accepted {
                                accepted = true;
                                backoff.reset();
                            }
                            let reply = match serde_json::from_str::<Outbound>(&text) {
                                Ok(Outbound::Reconfigure { config_version, config_hash, config, modules }) => {
                                    Some(self.reconfigure(shared, config_version, config_hash, &config, modules))
                                }
                                Ok(Outbound::Pong) => None,
                                Err(e) => return Err(lost(format!("unreadable frame from the control plane: {e}"))),
                            };
                            if let Some(reply) = reply {
                                send(&mut socket, &reply).await.map_err(lost)?;
                                // Applying may have taken a while (modules compile): the
                                // control plane's pong may be waiting behind it.
                                deadline.as_mut().reset(tokio::time::Instant::now() + silence);
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(lost(format!("reading: {e}"))),
                    }
                },
                _ = ping.tick() => {
                    let hash = shared.snapshot.load().hash.clone();
                    send(&mut socket, &Inbound::Ping { config_hash: Some(hash) })
                        .await
                        .map_err(lost)?;
                }
                () = &mut deadline => {
                    return Err(lost(format!(
                        "nothing from the control plane for {} ms, not even a pong",
                        silence.as_millis()
                    )));
                }
            }
        }
    }

    /// Applies one version and says how it went.
    fn reconfigure(
        &self,
        shared: &Shared,
        config_version: u64,
        config_hash: String,
        config: &str,
        modules: Vec<ModuleData>,
    ) -> Inbound {
        match self.apply(shared, &config_hash, config, modules) {
            Ok(()) => {
                log::info!("applied config version {config_version} ({config_hash})");
                Inbound::Applied {
                    config_version,
                    config_hash,
                }
            }
            Err(message) => {
                log::warn!(
                    "refused config version {config_version}, keeping the running one: {message}"
                );
                Inbound::Error {
                    config_version,
                    config_hash,
                    message,
                }
            }
        }
    }

    fn apply(
        &self,
        shared: &Shared,
        hash: &str,
        config: &str,
        modules: Vec<ModuleData>,
    ) -> Result<(), String> {
        if sha256_hex(config.as_bytes()) != hash {
            return Err("the configuration does not match its hash".into());
        }
        let mut received = Vec::with_capacity(modules.len());
        for module in modules {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(module.data.as_bytes())
                .map_err(|e| format!("module {}: {e}", module.file))?;
            if sha256_hex(&bytes) != module.sha256 {
                return Err(format!("module {}: SHA-256 mismatch", module.file));
            }
            let safe = Path::new(&module.file)
                .file_name()
                .is_some_and(|n| n == module.file.as_str())
                && module.file.ends_with(".wasm");
            if !safe {
                return Err(format!(
                    "module {}: not a plain .wasm file name",
                    module.file
                ));
            }
            received.push((module.file, bytes));
        }
        let version = self.stage(hash, &received)?;
        if let Err(e) = shared.apply_with_modules(config, Some(&version.join(MODULES))) {
            let _ = std::fs::remove_dir_all(&version);
            return Err(e.to_string());
        }
        // It runs: the cache follows, config and modules at once (a crash before the
        // switch of `current` leaves the previous version cached, whole).
        let name = version
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        write_atomically(&version.join(CONFIG), config.as_bytes())
            .and_then(|()| sync_dir(&version))
            .and_then(|()| {
                write_atomically(
                    &self.options.cache_dir.join(CURRENT),
                    name.unwrap_or_default().as_bytes(),
                )
            })
            .and_then(|()| sync_dir(&self.options.cache_dir))?;
        self.forget_versions_but_current();
        Ok(())
    }

    /// A new version's folder: the running version's modules, then the received ones (which
    /// replace those of the same name).
    fn stage(&self, hash: &str, received: &[(String, Vec<u8>)]) -> Result<PathBuf, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // The hash is checked hex; the time keeps a version re-applied apart from itself.
        let version = (self.options.cache_dir.join(VERSIONS)).join(format!("{hash}.{nanos}"));
        let modules = version.join(MODULES);
        std::fs::create_dir_all(&modules).map_err(|e| format!("{}: {e}", modules.display()))?;
        if let Some(Ok(entries)) = self.modules_dir().map(std::fs::read_dir) {
            for entry in entries.flatten() {
                let to = modules.join(entry.file_name());
                // A hard link costs nothing; a copy where links are not allowed.
                std::fs::hard_link(entry.path(), &to)
                    .or_else(|_| std::fs::copy(entry.path(), &to).map(drop))
                    .map_err(|e| format!("{}: {e}", to.display()))?;
            }
        }
        for (file, bytes) in received {
            write_atomically(&modules.join(file), bytes)?;
        }
        sync_dir(&modules)?;
        Ok(version)
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn send(socket: &mut Socket, frame: &Inbound) -> Result<(), String> {
    let text = serde_json::to_string(frame).map_err(|e| e.to_string())?;
    // A control plane that stopped reading would hold the session here for ever.
    tokio::time::timeout(CONNECT_TIMEOUT, socket.send(Message::text(text)))
        .await
        .map_err(|_| "sending: timed out".to_owned())?
        .map_err(|e| format!("sending: {e}"))
}

/// A node id made once and kept with the cache, so a restarted gateway is the same node.
fn stable_node_id(cache_dir: &Path) -> Result<String, String> {
    let path = cache_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    write_atomically(&path, id.as_bytes())?;
    Ok(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use base64::Engine as _;
    use model::sync::{Inbound, ModuleData, ModuleInfo};
    use rustls_pki_types::ServerName;

    use super::*;
    use crate::filters::{Runtime, RuntimeOptions};
    use crate::server::{GatewayOptions, Shared};
    use crate::snapshot::Snapshot;

    /// A self-signed P-256 certificate and its key, made for tests only (openssl req -x509
    /// -newkey ec; the key as PKCS#8). `proxy::upstream`'s tests use it too.
    pub(crate) const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgzCCASmgAwIBAgIUcmu7W1hLlwy9taA56PTaY2I5ul4wCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLd2FzbWdhdGUtZHAwIBcNMjYxMjAzMDQyOTQwWhgPMjEyNjEx
MDkwNDI5NDBaMBYxFDASBgNVBAMMC3dhc21nYXRlLWRwMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEJSZ0gOO84FS0OGNXBL88SFI94h4XN73wOTQ6+FMf9LgT1iKo
xoYTpHyQiVaX8+E1S3ZnivZEPMDZScQKgVi2JaNTMFEwHQYDVR0OBBYEFGkfzHph
FFMRP2YrJL/7Rka5YLlfMB8GA1UdIwQYMBaAFGkfzHphFFMRP2YrJL/7Rka5YLlf
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAMGkmuwFaN1015nV
ly+5SRRgJohTRt3B9+jODQUisvQ8AiAcIvVTKAoLGkyaculSO4mE1EAv7VBwL/Ru
B66avmeMsA==
-----END CERTIFICATE-----
";
    pub(crate) const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkU1kAgdpVeV5Fi1V
OL6f8e47gOxN0jaEOdylFwuqiRmhRANCAAQlJnSA47zgVLQ4Y1cEvzxIUj3iHhc3
vfA5NDr4Ux/0uBPWIqjGhhOkfJCJVpfz4TVLdmeK9kQ8wNlJxAqBWLYl
-----END PRIVATE KEY-----
";

    fn options(dir: &Path, control_plane: &str, node_id: Option<&str>) -> ClusterOptions {
        for (name, text) in [("ca.pem", CERT), ("dp.pem", CERT), ("dp.key", KEY)] {
            if !dir.join(name).exists() {
                std::fs::write(dir.join(name), text).unwrap();
            }
        }
        ClusterOptions {
            control_plane: control_plane.into(),
            control_plane_id: None,
            node_id: node_id.map(str::to_owned),
            cert: dir.join("dp.pem"),
            key: dir.join("dp.key"),
            ca: dir.join("ca.pem"),
            cache_dir: dir.join("cache"),
            ping_interval: Duration::from_secs(30),
        }
    }

    pub(crate) fn shared() -> Shared {
        let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
        let snapshot = Snapshot::build(EMPTY_CONFIG, &runtime, Path::new("modules"), None).unwrap();
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: Default::default(),
            options: GatewayOptions::default(),
            runtime,
            cluster: std::sync::Mutex::new(None),
            applying: std::sync::Mutex::new(()),
            warming: Default::default(),
        }
    }

    fn module(file: &str, bytes: &[u8], sha256: &str) -> ModuleData {
        ModuleData {
            plugin: "a-plugin".into(),
            file: file.into(),
            sha256: sha256.into(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sha256_hex_is_lower_case_hex_of_the_digest() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn write_atomically_replaces_the_file_whole_and_names_it_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"2nd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"2nd");
        // What is cached holds private keys: no one else may read it.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(files(dir.path()), ["config.json"], "no temporary file left");
        let missing = dir.path().join("no/such/dir/config.json");
        let err = write_atomically(&missing, b"x").unwrap_err();
        assert!(
            err.starts_with(&format!("writing {}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn the_node_id_is_made_once_and_kept_with_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let id = stable_node_id(dir.path()).unwrap();
        // A version 4 UUID, lower-case hex.
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(
            id.char_indices()
                .filter(|&(_, c)| c == '-')
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node-id")).unwrap(),
            id
        );
        assert_eq!(stable_node_id(dir.path()).unwrap(), id);
        // One written by hand is used as it is, without surrounding white space.
        std::fs::write(dir.path().join("node-id"), " node-7\n").unwrap();
        assert_eq!(stable_node_id(dir.path()).unwrap(), "node-7");
        // An empty one is replaced by a new id.
        std::fs::write(dir.path().join("node-id"), "\n").unwrap();
        let new = stable_node_id(dir.path()).unwrap();
        assert_eq!(new.len(), 36);
        assert_ne!(new, id);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node-id")).unwrap(),
            new
        );
    }

    #[test]
    fn the_control_planes_name_for_tls_is_its_address_without_the_port() {
        let dir = tempfile::tempdir().unwrap();
        for (address, name) in [
            (
                "cp.example:8005",
                ServerName::try_from("cp.example").unwrap(),
            ),
            ("127.0.0.1:8005", ServerName::try_from("127.0.0.1").unwrap()),
            ("[::1]:8005", ServerName::try_from("::1").unwrap()),
            ("cp.example", ServerName::try_from("cp.example").unwrap()),
        ] {
            let cluster = Cluster::new(options(dir.path(), address, Some("n1"))).unwrap();
            assert_eq!(cluster.server_name, name, "{address}");
            assert_eq!(cluster.node_id, "n1");
        }
        let err = Cluster::new(options(dir.path(), "not a name:8005", None))
            .err()
            .unwrap();
        assert!(
            err.starts_with("--control-plane not a name:8005: "),
            "{err}"
        );
    }

    #[test]
    fn a_new_cluster_client_prepares_its_cache_and_names_the_file_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(options(dir.path(), "cp.example:8005", None)).unwrap();
        let cache = dir.path().join("cache");
        assert_eq!(cluster.modules_dir(), None);
        assert!(cache.join("versions").is_dir());
        // Without --node-id: the id kept in the cache.
        assert_eq!(
            std::fs::read_to_string(cache.join("node-id")).unwrap(),
            cluster.node_id
        );
        assert_eq!(cluster.cached_config(), None);

        let attempt = |change: &dyn Fn(&mut ClusterOptions)| -> String {
            let mut options = options(dir.path(), "cp.example:8005", None);
            change(&mut options);
            Cluster::new(options).err().unwrap()
        };
        let ca = dir.path().join("missing.pem");
        let err = attempt(&|o| o.ca = ca.clone());
        assert!(err.starts_with(&format!("{}: ", ca.display())), "{err}");
        // A CA file without a certificate would trust nothing: refused at start.
        let ca = dir.path().join("no-cert.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = attempt(&|o| o.ca = ca.clone());
        assert_eq!(err, format!("{}: no PEM certificate in it", ca.display()));
        // A key that does not parse.
        let key = dir.path().join("bad.key");
        std::fs::write(&key, "garbage").unwrap();
        let err = attempt(&|o| o.key = key.clone());
        assert!(err.starts_with(&format!("{}: ", key.display())), "{err}");
    }

    #[test]
    fn a_configuration_is_applied_only_when_it_and_every_module_match_their_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(options(dir.path(), "cp.example:8005", Some("n1"))).unwrap();
        let shared = shared();
        let running = shared.snapshot.load().hash.clone();
        assert_eq!(running, sha256_hex(EMPTY_CONFIG.as_bytes()));
        let config = "{\"_format_version\": \"3.0\"}";
        let hash = sha256_hex(config.as_bytes());
        let wasm = b"\0asm\x01\0\0\0";
        let wasm_sha = sha256_hex(wasm);
        let refused = |modules: Vec<ModuleData>, config_hash: &str| -> String {
            match cluster.reconfigure(&shared, 3, config_hash.into(), config, modules) {
                Inbound::Error {
                    config_version,
                    config_hash: reported,
                    message,
                } => {
                    assert_eq!((config_version, reported.as_str()), (3, config_hash));
                    message
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            refused(vec![], &sha256_hex(b"other")),
            "the configuration does not match its hash"
        );
        assert_eq!(
            refused(vec![module("a.wasm", wasm, &sha256_hex(b"x"))], &hash),
            "module a.wasm: SHA-256 mismatch"
        );
        // (An absolute name inside the test's own directory: a regression writes nowhere else.)
        let absolute = dir.path().join("a.wasm").display().to_string();
        for name in ["../a.wasm", "sub/a.wasm", "a.txt", absolute.as_str(), ".."] {
            assert_eq!(
                refused(vec![module(name, wasm, &wasm_sha)], &hash),
                format!("module {name}: not a plain .wasm file name")
            );
        }
        let mut bad = module("a.wasm", wasm, &wasm_sha);
        bad.data = "***".into();
        assert!(refused(vec![bad], &hash).starts_with("module a.wasm: "));
        // Nothing was written, and the running configuration is the same.
        assert_eq!(cluster.modules_dir(), None);
        assert_eq!(
            files(&dir.path().join("cache/versions")),
            Vec::<String>::new()
        );
        assert_eq!(files(dir.path()), ["ca.pem", "cache", "dp.key", "dp.pem"]);
        assert_eq!(shared.snapshot.load().hash, running);
        assert_eq!(cluster.cached_config(), None);

        // A configuration that matches its hash but is invalid: refused, nothing changes.
        let invalid = "{\"_format_version\": \"3.0\", \"services\": 5}";
        let invalid_hash = sha256_hex(invalid.as_bytes());
        match cluster.reconfigure(&shared, 4, invalid_hash, invalid, vec![]) {
            Inbound::Error { message, .. } => assert!(!message.is_empty()),
            other => panic!("{other:?}"),
        }
        // A certificate whose key is another's: the Error frame names it.
        let one = rcgen::generate_simple_self_signed(vec!["one.test".to_owned()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["two.test".to_owned()]).unwrap();
        let mismatched = serde_json::json!({
            "_format_version": "3.0",
            "certificates": [{
                "cert": one.cert.pem(),
                "key": two.signing_key.serialize_pem(),
                "snis": ["one.test"],
            }],
        })
        .to_string();
        let mismatched_hash = sha256_hex(mismatched.as_bytes());
        match cluster.reconfigure(&shared, 4, mismatched_hash, &mismatched, vec![]) {
            Inbound::Error { message, .. } => {
                assert_eq!(message, "certificates.1: certificate does not match key")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(shared.snapshot.load().hash, running);
        assert_eq!(cluster.cached_config(), None);

        let applied = cluster.reconfigure(
            &shared,
            5,
            hash.clone(),
            config,
            vec![module("a.wasm", wasm, &wasm_sha)],
        );
        assert_eq!(
            applied,
            Inbound::Applied {
                config_version: 5,
                config_hash: hash.clone()
            }
        );
        assert_eq!(shared.snapshot.load().hash, hash);
        assert_eq!(cluster.cached_config().as_deref(), Some(config));
        assert_eq!(
            std::fs::read(cluster.modules_dir().unwrap().join("a.wasm")).unwrap(),
            wasm
        );
        match cluster.basic_info(&shared) {
            Inbound::BasicInfo {
                node_id,
                modules,
                config_hash,
                ..
            } => {
                assert_eq!(node_id, "n1");
                assert_eq!(
                    modules,
                    [ModuleInfo {
                        file: "a.wasm".into(),
                        sha256: wasm_sha
                    }]
                );
                assert_eq!(config_hash, Some(hash));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A proxy-wasm module that answers `on_configure` with `accepts` (0: refused).
    fn plugin_module(accepts: u32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const {accepts})))"#
        ))
        .unwrap()
    }

    /// Review finding 33: a version the gateway refuses leaves the cache as it was, its
    /// configuration and its modules together, and a restart loads that pair; a later version
    /// that brings no modules runs on the running version's. (Before, the refused version's
    /// module overwrote the running one's in the cache.)
    #[test]
    fn a_refused_version_leaves_the_cached_configuration_and_its_modules_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(options(dir.path(), "cp.example:8005", Some("n1"))).unwrap();
        let shared = shared();
        let file = "request_size_limiting.wasm";
        let (accepts, refuses) = (plugin_module(1), plugin_module(0));
        let version = |size: u32| {
            let text = format!(
                r#"{{"_format_version":"3.0","plugins":[{{"name":"request-size-limiting","config":{{"allowed_payload_size":{size}}}}}]}}"#
            );
            let hash = sha256_hex(text.as_bytes());
            (text, hash)
        };
        let send = |size: u32, bytes: &[u8]| {
            let (text, hash) = version(size);
            let modules = match bytes {
                [] => vec![],
                bytes => vec![module(file, bytes, &sha256_hex(bytes))],
            };
            cluster.reconfigure(&shared, u64::from(size), hash, &text, modules)
        };
        let cached_module =
            |cluster: &Cluster| std::fs::read(cluster.modules_dir().unwrap().join(file)).unwrap();

        assert!(matches!(send(1, &accepts), Inbound::Applied { .. }));
        let (first, first_hash) = version(1);
        match send(2, &refuses) {
            Inbound::Error { message, .. } => {
                assert!(message.contains("proxy_on_configure"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(shared.snapshot.load().hash, first_hash);
        assert_eq!(cluster.cached_config().as_deref(), Some(first.as_str()));
        assert_eq!(cached_module(&cluster), accepts);
        assert_eq!(files(&dir.path().join("cache/versions")).len(), 1);

        // What a restart finds (a crash mid-apply left a folder of its own: it goes).
        std::fs::create_dir_all(dir.path().join("cache/versions/half-written/modules")).unwrap();
        let restarted = Cluster::new(options(dir.path(), "cp.example:8005", Some("n1"))).unwrap();
        assert_eq!(restarted.cached_config().as_deref(), Some(first.as_str()));
        assert_eq!(cached_module(&restarted), accepts);
        assert_eq!(files(&dir.path().join("cache/versions")).len(), 1);

        // No module sent: the running one goes on into the new version.
        assert!(matches!(send(3, &[]), Inbound::Applied { .. }));
        assert_eq!(cluster.cached_config(), Some(version(3).0));
        assert_eq!(cached_module(&cluster), accepts);
        assert_eq!(files(&dir.path().join("cache/versions")).len(), 1);
    }

    /// The ceilings the waits of `backoff` were drawn under, checking each wait is in the
    /// upper half of its ceiling.
    fn ceilings(backoff: &mut Backoff, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| {
                let ceiling = backoff.next;
                let wait = backoff.next();
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{wait:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
                ceiling.as_millis()
            })
            .collect()
    }

    #[test]
    fn the_backoff_doubles_from_100_ms_to_its_2_s_cap() {
        assert_eq!(MAX_BACKOFF, Duration::from_secs(2), "the README's cap");
        let mut backoff = Backoff::new();
        assert_eq!(
            ceilings(&mut backoff, 9),
            [100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000]
        );
    }

    #[test]
    fn the_waits_are_spread_so_disconnected_gateways_do_not_return_together() {
        let waits: Vec<Duration> = (0..200)
            .map(|_| {
                let mut backoff = Backoff::new();
                backoff.refused();
                backoff.next()
            })
            .collect();
        let (min, max) = (waits.iter().min(), waits.iter().max());
        assert!(
            min < Some(&Duration::from_millis(1200)) && max > Some(&Duration::from_millis(1800)),
            "200 waits between {min:?} and {max:?}"
        );
    }

    #[test]
    fn the_backoff_starts_over_after_an_accepted_session_and_waits_longest_after_a_refusal() {
        let mut backoff = Backoff::new();
        backoff.reset();
        assert_eq!(
            backoff,
            Backoff::new(),
            "a reset before any wait changes nothing"
        );
        ceilings(&mut backoff, 3);
        backoff.reset();
        assert_eq!(ceilings(&mut backoff, 2), [100, 200]);
        // Also once capped.
        ceilings(&mut backoff, 10);
        assert_eq!(ceilings(&mut backoff, 1), [2000]);
        backoff.reset();
        assert_eq!(ceilings(&mut backoff, 1), [100]);
        backoff.refused();
        assert_eq!(ceilings(&mut backoff, 2), [2000, 2000]);
    }
}
