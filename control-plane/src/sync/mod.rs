//! The `gateway` data plane endpoint: wasmgate's sync protocol (docs/SYNC.md, frames in
//! [`model::sync`]), a WebSocket at `wss://<cluster_listen>/v1/outlet` over mutual TLS.
//!
//! The TLS handshake only completes for a client certificate pinned for some control plane;
//! the certificate and the data plane's `basic_info` say which one it serves. One task per
//! connection follows that control plane's versions in the [`Hub`](crate::hub::Hub) and pushes
//! each new one (with the modules the data plane lacks) as soon as it is published, and records
//! what the data plane reports in [`Nodes`](crate::nodes::Nodes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use model::sync::{Inbound, ModuleData, Outbound, PATH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::hub::ConfigVersion;
use crate::nodes::{Hello, NodeKind};
use crate::trust::{Hold, MAX_HANDSHAKES};
use crate::{pki, State};

/// TLS handshake, WebSocket upgrade and `basic_info`, each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Data planes only send small frames (basic_info lists a few modules).
const MAX_INBOUND_FRAME: usize = 1 << 20;

/// A data plane's WebSocket: over TLS here, over an in-memory pipe in the unit tests.
type Socket<S> = WebSocketStream<S>;

/// What a WebSocket runs on.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// The limits of every data plane's WebSocket.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Thousands of idle connections: small eager buffers, frames written at once.
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INBOUND_FRAME))
        .max_frame_size(Some(MAX_INBOUND_FRAME))
}

/// What all connections of one listener share.
#[derive(Default)]
struct Outlet {
    /// (control plane, node) → the serial of its newest connection: only that one may mark
    /// the node disconnected when it ends (a node that reconnects before its old connection
    /// times out stays connected).
    latest: Mutex<HashMap<(String, String), u64>>,
    serial: AtomicU64,
    /// Per control plane, the reconfigure frame of its current version without modules (what
    /// almost every data plane gets), serialized once for all connections.
    frames: Mutex<HashMap<String, (u64, Utf8Bytes)>>,
}

impl Outlet {
    fn frame_without_modules(&self, version: &ConfigVersion) -> Result<Utf8Bytes, String> {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, frame)) = frames.get(&version.control_plane_id) {
            if *v == version.version {
                return Ok(frame.clone());
            }
        }
        let frame: Utf8Bytes = reconfigure(version, Vec::new())?.into();
        frames.insert(
            version.control_plane_id.clone(),
            (version.version, frame.clone()),
        );
        Ok(frame)
    }
}

fn reconfigure(version: &ConfigVersion, modules: Vec<ModuleData>) -> Result<String, String> {
    serde_json::to_string(&Outbound::Reconfigure {
        config_version: version.version,
        config_hash: version.hash.clone(),
        config: version.text.clone(),
        modules,
    })
    .map_err(|e| format!("encoding version {}: {e}", version.version))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, state, shutdown, MAX_HANDSHAKES).await;
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    max_handshakes: usize,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    let config = match state
        .identity
        .server_config(Arc::clone(&state.store), &[b"http/1.1"])
    {
        Ok(config) => config,
        Err(e) => {
            log::error!("cluster listener: {e}; gateway data planes cannot connect");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let outlet = Arc::new(Outlet::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                        log::warn!("data plane {peer}: {max_handshakes} handshakes in progress, closed");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(
                        stream,
                        peer,
                        handshake,
                        acceptor.clone(),
                        Arc::clone(&state),
                        Arc::clone(&outlet),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, typically: accepting again at once would spin.
                    log::warn!("cluster listener: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stopping(&mut shutdown) => break,
        }
    }
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    handshake: tokio::sync::OwnedSemaphorePermit,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    outlet: Arc<Outlet>,
    shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Unpinned certificates end here, refused by the verifier.
            log::warn!("data plane {peer}: TLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            log::warn!("data plane {peer}: TLS handshake timed out");
            return;
        }
    };
    drop(handshake);
    let peer_certificate = match pki::peer(&state.store, tls.get_ref().1.peer_certificates()) {
        Ok(peer_certificate) => peer_certificate,
        Err(e) => {
            log::warn!("data plane {peer}: {e}");
            return;
        }
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(tls, outlet_path, Some(websocket_config()));
    let mut socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => {
            log::warn!("data plane {peer}: WebSocket upgrade: {e}");
            return;
        }
        Err(_) => {
            log::warn!("data plane {peer}: WebSocket upgrade timed out");
            return;
        }
    };
    let session = match introduce(&mut socket, peer, &peer_certificate.control_planes).await {
        Ok(session) => session,
        Err(e) => {
            log::warn!("data plane {peer}: {e}");
            close(&mut socket, CloseCode::Policy, &e).await;
            return;
        }
    };
    let Some(pin) = state
        .store
        .trust()
        .hold(&session.control_plane_id, &peer_certificate.fingerprint)
    else {
        let why = "this certificate was unpinned";
        log::warn!("data plane {peer}: {why}");
        close(&mut socket, CloseCode::Policy, why).await;
        return;
    };
    if let Err(e) = state
        .nodes
        .admit(&session.control_plane_id, &session.node_id)
    {
        log::warn!("data plane {peer}: {e}");
        close(&mut socket, CloseCode::Again, &e).await;
        return;
    }
    let key = (session.control_plane_id.clone(), session.node_id.clone());
    let serial = outlet.serial.fetch_add(1, Ordering::Relaxed);
    outlet
        .latest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), serial);
    log::info!(
        "data plane {} ({peer}) connected to control plane {}",
        session.node_id,
        session.control_plane_id
    );
    let (reason, code) = match session
        .run(&mut socket, &state, &outlet, &pin, shutdown)
        .await
    {
        Ok(Ended::Normally(why)) => (why, CloseCode::Away),
        Ok(Ended::Revoked) => (
            "this certificate was unpinned".to_owned(),
            CloseCode::Policy,
        ),
        Err(e) => (e, CloseCode::Error),
    };
    drop(pin);
    log::info!("data plane {} ({peer}): {reason}", key.1);
    close(&mut socket, code, &reason).await;
    let newest = {
        let mut latest = outlet.latest.lock().unwrap_or_else(|e| e.into_inner());
        let newest = latest.get(&key) == Some(&serial);
        if newest {
            latest.remove(&key);
        }
        newest
    };
    if newest {
        state.nodes.disconnected(&key.0, &key.1);
    }
}

/// Refuses every path but Kong's `/v1/outlet` with a 404.
// The signature is tungstenite's handshake callback.
#[allow(clippy::result_large_err)]
fn outlet_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == PATH {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(format!("no such endpoint; data planes use {PATH}")));
    *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
    Err(refusal)
}

async fn close(socket: &mut Socket<impl Transport>, code: CloseCode, reason: &str) {
    // Close reasons are limited to 123 bytes.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
}

/// Reads the next text frame; `None` when the connection ended.
async fn next_text(socket: &mut Socket<impl Transport>) -> Result<Option<Utf8Bytes>, String> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(text))) => return Ok(Some(text)),
            Some(Ok(Message::Binary(_))) => {
                return Err("binary frames are not part of the protocol".into())
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("reading: {e}")),
        }
    }
}

/// One connected data plane.
struct Session {
    control_plane_id: String,
    node_id: String,
    hello: Hello,
    /// The hash the data plane says it runs.
    running: Option<String>,
    /// The hash last sent (and not refused yet), so one version is sent once.
    sent: Option<String>,
    /// Module file → sha256 the data plane has (said, or sent to it since).
    modules: HashMap<String, String>,
    /// Modules sent with the last reconfigure: forgotten again if it is refused.
    last_sent_modules: Vec<String>,
    /// The data plane said it applied `sent`.
    confirmed: bool,
}

/// Sends one frame, within a ping interval: a data plane that stopped reading (its window
/// closed) must not hold its session, and the frame, for ever.
async fn send(
    socket: &mut Socket<impl Transport>,
    message: Message,
    state: &State,
) -> Result<(), String> {
    let limit = state.options.ping_interval;
    tokio::time::timeout(limit, socket.send(message))
        .await
        .map_err(|_| format!("not read within {} ms", limit.as_millis()))?
        .map_err(|e| e.to_string())
}

/// Reads `basic_info`, picks the control plane and registers the node.
async fn introduce(
    socket: &mut Socket<impl Transport>,
    peer: SocketAddr,
    planes: &[String],
) -> Result<Session, String> {
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, next_text(socket)).await {
        Ok(Ok(Some(text))) => text,
        Ok(Ok(None)) => return Err("closed before basic_info".into()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no basic_info within 10 s".into()),
    };
    let Ok(hello @ Inbound::BasicInfo { .. }) = serde_json::from_str::<Inbound>(&first) else {
        return Err("the first frame must be basic_info".into());
    };
    let Inbound::BasicInfo {
        node_id,
        hostname,
        version,
        control_plane_id,
        modules,
        config_hash,
        plugins: _,
    } = hello.checked()?
    else {
        return Err("the first frame must be basic_info".into());
    };
    let control_plane_id = match (control_plane_id, planes) {
        (Some(id), _) if planes.contains(&id) => id,
        (Some(id), _) => {
            return Err(format!(
                "this certificate is not pinned for control plane {id}"
            ))
        }
        (None, [one]) => one.clone(),
        (None, []) => return Err("this certificate is not pinned for any control plane".into()),
        (None, _) => return Err(
            "this certificate is pinned for several control planes; name one with control_plane_id"
                .into(),
        ),
    };
    Ok(Session {
        control_plane_id,
        hello: Hello {
            id: node_id.clone(),
            kind: NodeKind::Gateway,
            hostname,
            version,
            ip: Some(peer.ip().to_string()),
        },
        node_id,
        running: config_hash,
        sent: None,
        modules: modules.into_iter().map(|m| (m.file, m.sha256)).collect(),
        last_sent_modules: Vec::new(),
        confirmed: false,
    })
}

/// Why a session ended without an error.
enum Ended {
    Normally(String),
    /// Its certificate was unpinned for its control plane: the session is cut at once, not
    /// at its next handshake.
    Revoked,
}

impl Session {
    /// Serves the connection until it ends.
    async fn run(
        mut self,
        socket: &mut Socket<impl Transport>,
        state: &State,
        outlet: &Outlet,
        pin: &Hold,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Ended, String> {
        let cp = self.control_plane_id.clone();
        state.nodes.connected(&cp, self.hello.clone());
        if let Some(hash) = &self.running {
            state.nodes.pinged(&cp, &self.node_id, Some(hash));
        }
        let mut versions = state.hub.subscribe(&cp);
        let current = versions.borrow_and_update().clone();
        if let Some(version) = current {
            self.push(socket, outlet, state, &version).await?;
        }
        let silence = state.options.ping_interval.mul_f64(1.5);
        let deadline = tokio::time::sleep(silence);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                // Before a new version: a version published after an unpin never reaches the
                // unpinned data plane.
                biased;
                () = pin.revoked() => return Ok(Ended::Revoked),
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Ok(Ended::Normally("control plane deleted".into()));
                    }
                    let current = versions.borrow_and_update().clone();
                    match current {
                        Some(version) => self.push(socket, outlet, state, &version).await?,
                        None => return Ok(Ended::Normally("control plane deleted".into())),
                    }
                }
                frame = socket.next() => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return Ok(Ended::Normally("disconnected".into())),
                        Some(Ok(Message::Text(text))) => self.receive(socket, outlet, state, &text).await?,
                        Some(Ok(Message::Binary(_))) => {
                            return Err("binary frames are not part of the protocol".into())
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("reading: {e}")),
                    }
                }
                () = &mut deadline => {
                    return Ok(Ended::Normally(format!(
                        "silent for {} ms, disconnected",
                        silence.as_millis()
                    )));
                }
                () = stopping(&mut shutdown) => return Ok(Ended::Normally("control plane stopping".into())),
            }
        }
    }

    /// Sends `version` unless the data plane runs it or already has it.
    async fn push(
        &mut self,
        socket: &mut Socket<impl Transport>,
        outlet: &Outlet,
        state: &State,
        version: &ConfigVersion,
    ) -> Result<(), String> {
        // What the data plane will run once it has processed everything sent so far: the last
        // version sent, else what it said it runs. (Comparing with `running` alone would skip
        // A after A→B when B's `applied` is still on its way.)
        let settled = self.sent.as_deref().or(self.running.as_deref());
        if settled == Some(version.hash.as_str()) {
            return Ok(());
        }
        let mut modules = Vec::new();
        self.last_sent_modules.clear();
        let mut names: Vec<&str> = version
            .config
            .plugins
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            // A plugin without a module here is refused by the data plane, with its reason.
            let Some(module) = state.modules.get(name) else {
                continue;
            };
            if self.modules.get(&module.file) == Some(&module.sha256) {
                continue;
            }
            modules.push(ModuleData {
                plugin: module.plugin.to_owned(),
                file: module.file.clone(),
                sha256: module.sha256.clone(),
                data: base64::engine::general_purpose::STANDARD.encode(module.bytes.as_slice()),
            });
            self.modules
                .insert(module.file.clone(), module.sha256.clone());
            self.last_sent_modules.push(module.file.clone());
        }
        let frame = if modules.is_empty() {
            outlet.frame_without_modules(version)?
        } else {
            reconfigure(version, modules)?.into()
        };
        send(socket, Message::Text(frame), state)
            .await
            .map_err(|e| format!("sending version {}: {e}", version.version))?;
        self.sent = Some(version.hash.clone());
        self.confirmed = false;
        Ok(())
    }

    async fn receive(
        &mut self,
        socket: &mut Socket<impl Transport>,
        outlet: &Outlet,
        state: &State,
        text: &str,
    ) -> Result<(), String> {
        let cp = &self.control_plane_id;
        let id = &self.node_id;
        match Inbound::from_frame(text) {
            Ok(Inbound::Applied {
                config_version,
                config_hash,
            }) => {
                state.nodes.applied(cp, id, config_version, &config_hash);
                self.confirmed = self.sent.as_ref() == Some(&config_hash);
                self.running = Some(config_hash);
            }
            Ok(Inbound::Error {
                config_version,
                config_hash,
                message,
            }) => {
                state
                    .nodes
                    .rejected(cp, id, config_version, &config_hash, &message);
                for file in self.last_sent_modules.drain(..) {
                    self.modules.remove(&file);
                }
            }
            Ok(Inbound::Ping { config_hash }) => {
                state.nodes.pinged(cp, id, config_hash.as_deref());
                // It applied what it was sent and now runs something else (a local reload,
                // a restore from a backup): what the control plane sends is what runs.
                let drifted = self.confirmed
                    && config_hash.is_some()
                    && config_hash.as_deref() != self.sent.as_deref();
                if config_hash.is_some() {
                    self.running = config_hash;
                }
                let pong = serde_json::to_string(&Outbound::Pong).map_err(|e| e.to_string())?;
                send(socket, Message::text(pong), state)
                    .await
                    .map_err(|e| format!("sending pong: {e}"))?;
                if drifted {
                    log::warn!("data plane {id} runs another configuration than it applied; sending it again");
                    self.sent = None;
                    self.confirmed = false;
                    if let Some(version) = state.hub.current(cp) {
                        self.push(socket, outlet, state, &version).await?;
                    }
                }
            }
            Ok(Inbound::BasicInfo { .. }) => return Err("basic_info sent twice".into()),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::modules::Modules;
    use crate::nodes::Nodes;
    use crate::pki::ServerIdentity;
    use crate::store::Store;
    use crate::{Endpoints, Options};
    use model::sync::{MAX_HOSTNAME, MAX_NODE_ID, MAX_VERSION};
    use serde_json::{json, Value};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    type Pipe = WebSocketStream<DuplexStream>;

    /// The data planes' certificate, pinned for `cp`.
    const FINGERPRINT: &str = "fp";

    const PEER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
        4000,
    );

    /// A control plane `cp` with its store in `dir`, and modules with made-up bytes when
    /// `modules` is set.
    pub(crate) fn state(
        dir: &tempfile::TempDir,
        modules: bool,
        ping_interval: Duration,
    ) -> Arc<State> {
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        store.insert_test_control_plane("cp");
        store
            .transaction(|tx| crate::store::pin_certificate(tx, "pin", "cp", "PEM", FINGERPRINT, 0))
            .expect("pin");
        let modules = if modules {
            let modules_dir = dir.path().join("modules");
            std::fs::create_dir_all(&modules_dir).expect("modules dir");
            for plugin in model::plugins::PLUGINS {
                std::fs::write(
                    modules_dir.join(plugin.module_file()),
                    format!("module {}", plugin.name),
                )
                .expect("module");
            }
            Modules::load(&modules_dir).expect("modules")
        } else {
            Modules::default()
        };
        let options = Options {
            ping_interval,
            data_dir: dir.path().to_path_buf(),
            ..Options::default()
        };
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        Arc::new(State {
            provisioner: crate::provision::Provisioner::new(&options),
            domains: crate::custom_domains::Domains::new(
                crate::acme::Issuer::new(&options.certificates, dir.path()).expect("issuer"),
            ),
            options,
            endpoints: Endpoints {
                api: unbound,
                cluster: unbound,
                xds: unbound,
            },
            nodes: Nodes::load(Arc::clone(&store)).expect("nodes"),
            store,
            hub: Hub::default(),
            modules,
            identity: ServerIdentity::load_or_create(dir.path()).expect("identity"),
            token_sha256: String::new(),
        })
    }

    /// Version `n` of `cp`; `variant` changes the text (and the hash) but not the meaning.
    fn version(n: u64, variant: usize, plugins: &[&str]) -> Arc<ConfigVersion> {
        let plugins: Vec<Value> = plugins
            .iter()
            .map(|&p| match p {
                "rate-limiting" => json!({ "name": p, "config": { "second": 5 } }),
                _ => json!({ "name": p }),
            })
            .collect();
        let mut text = json!({ "_format_version": "3.0", "plugins": plugins }).to_string();
        text.push_str(&" ".repeat(variant));
        Arc::new(ConfigVersion::new("cp", n, text, 0).expect("a valid version"))
    }

    async fn pipe() -> (Pipe, Pipe) {
        let (server, client) = tokio::io::duplex(1 << 16);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, Some(websocket_config())).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn basic_info(node_id: &str, config_hash: Option<&str>, modules: Value) -> Value {
        json!({
            "type": "basic_info",
            "node_id": node_id,
            "hostname": "dp-host",
            "version": "0.1.0",
            "plugins": [{ "name": "rate-limiting", "version": "1" }],
            "modules": modules,
            "config_hash": config_hash,
        })
    }

    async fn send(client: &mut Pipe, frame: Value) {
        client
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next frame the data plane gets.
    async fn receive(client: &mut Pipe) -> Outbound {
        let frame = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("a frame");
        let Message::Text(text) = frame else {
            panic!("not a text frame: {frame:?}");
        };
        serde_json::from_str(&text).expect("an outbound frame")
    }

    /// Pings and expects the pong as the very next frame: nothing else was sent before it
    /// (and every frame sent before the ping was handled).
    async fn nothing_pending(client: &mut Pipe, running: Option<&str>) {
        send(client, json!({ "type": "ping", "config_hash": running })).await;
        assert_eq!(receive(client).await, Outbound::Pong, "only the pong");
    }

    struct Connected {
        client: Pipe,
        session: tokio::task::JoinHandle<Result<String, String>>,
        stop: watch::Sender<bool>,
    }

    /// A data plane that introduced itself with `hello`, served by a session of its own.
    async fn connect(state: &Arc<State>, outlet: &Arc<Outlet>, hello: Value) -> Connected {
        let (mut server, mut client) = pipe().await;
        send(&mut client, hello).await;
        let (stop, shutdown) = watch::channel(false);
        let state = Arc::clone(state);
        let outlet = Arc::clone(outlet);
        let session = tokio::spawn(async move {
            let session = introduce(&mut server, PEER, &["cp".to_owned()]).await?;
            let pin = state
                .store
                .trust()
                .hold(&session.control_plane_id, FINGERPRINT)
                .ok_or("unpinned before the session")?;
            match session
                .run(&mut server, &state, &outlet, &pin, shutdown)
                .await?
            {
                Ended::Normally(why) => Ok(why),
                Ended::Revoked => Ok("revoked".to_owned()),
            }
        });
        Connected {
            client,
            session,
            stop,
        }
    }

    async fn ended(
        session: tokio::task::JoinHandle<Result<String, String>>,
    ) -> Result<String, String> {
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the session ends")
            .expect("no panic")
    }

    fn reconfigure_of(frame: Outbound) -> (u64, String, String, Vec<ModuleData>) {
        match frame {
            Outbound::Reconfigure {
                config_version,
                config_hash,
                config,
                modules,
            } => (config_version, config_hash, config, modules),
            Outbound::Pong => panic!("a pong, not a reconfigure"),
        }
    }

    /// `introduce` on a pipe where the data plane sent `frames` (then closed when `close`).
    async fn introduced(frames: Vec<Message>, planes: &[&str]) -> Result<Session, String> {
        let (mut server, mut client) = pipe().await;
        if frames.is_empty() {
            // The data plane goes away without a word.
            drop(client);
        } else {
            tokio::spawn(async move {
                for frame in frames {
                    client.send(frame).await.expect("send");
                }
                // Reads what the server sends until it is done.
                while let Some(Ok(_)) = client.next().await {}
            });
        }
        let planes: Vec<String> = planes.iter().map(|p| (*p).to_owned()).collect();
        introduce(&mut server, PEER, &planes).await
    }

    fn text(value: Value) -> Message {
        Message::text(value.to_string())
    }

    #[tokio::test]
    async fn basic_info_names_the_node_and_its_control_plane() {
        let mut hello = basic_info(
            "n1",
            Some("abc"),
            json!([{ "file": "a.wasm", "sha256": "1" }]),
        );
        let session = introduced(vec![text(hello.clone())], &["cp"])
            .await
            .expect("one pinned control plane");
        assert_eq!(session.control_plane_id, "cp");
        assert_eq!(session.node_id, "n1");
        assert_eq!(session.hello.id, "n1");
        assert_eq!(session.hello.kind, NodeKind::Gateway);
        assert_eq!(session.hello.hostname, "dp-host");
        assert_eq!(session.hello.version, "0.1.0");
        assert_eq!(
            session.hello.ip.as_deref(),
            Some("192.0.2.7"),
            "the peer's address"
        );
        assert_eq!(session.running.as_deref(), Some("abc"));
        assert_eq!(session.sent, None);
        assert_eq!(
            session.modules,
            HashMap::from([("a.wasm".to_owned(), "1".to_owned())])
        );

        // Several control planes: the frame names one of them, or it is refused.
        hello["control_plane_id"] = json!("b");
        let session = introduced(vec![text(hello.clone())], &["a", "b"])
            .await
            .expect("named");
        assert_eq!(session.control_plane_id, "b");
        assert_eq!(
            introduced(vec![text(hello.clone())], &["a"]).await.err(),
            Some("this certificate is not pinned for control plane b".to_owned())
        );
        hello["control_plane_id"] = Value::Null;
        assert_eq!(
            introduced(vec![text(hello.clone())], &["a", "b"])
                .await
                .err(),
            Some(
                "this certificate is pinned for several control planes; name one with \
                 control_plane_id"
                    .to_owned()
            )
        );
        assert_eq!(
            introduced(vec![text(hello)], &[]).await.err(),
            Some("this certificate is not pinned for any control plane".to_owned())
        );

        // Only the three identifying fields are required.
        let minimal =
            json!({ "type": "basic_info", "node_id": "n", "hostname": "", "version": "" });
        let session = introduced(vec![text(minimal)], &["cp"])
            .await
            .expect("minimal");
        assert_eq!((session.running, session.modules.len()), (None, 0));
    }

    #[tokio::test]
    async fn anything_but_a_well_formed_basic_info_first_is_refused_with_a_reason() {
        let first = "the first frame must be basic_info";
        let cases: Vec<(Vec<Message>, &str)> = vec![
            (
                vec![],
                "reading: WebSocket protocol error: Connection reset without closing handshake",
            ),
            (vec![Message::Close(None)], "closed before basic_info"),
            (
                vec![Message::binary(b"{}".to_vec())],
                "binary frames are not part of the protocol",
            ),
            (vec![Message::text("")], first),
            (
                vec![Message::text("{\"type\":\"basic_info\",\"node_id\":")],
                first,
            ),
            (vec![Message::text("[1, 2]")], first),
            (vec![Message::text("null")], first),
            (vec![text(json!({ "type": "ping" }))], first),
            (vec![text(json!({ "type": "reconfigure" }))], first),
            (
                vec![text(
                    json!({ "node_id": "n", "hostname": "h", "version": "1" }),
                )],
                first,
            ),
            (
                vec![text(json!({
                    "type": "basic_info", "node_id": 7, "hostname": "h", "version": "1"
                }))],
                first,
            ),
            (
                vec![text(json!({
                    "type": "basic_info", "node_id": "n", "hostname": "h", "version": "1",
                    "modules": [{ "file": "a.wasm" }]
                }))],
                first,
            ),
            (
                vec![text(
                    json!({ "type": "basic_info", "node_id": "n", "hostname": "h" }),
                )],
                first,
            ),
            (
                vec![text(json!({
                    "type": "basic_info", "node_id": "", "hostname": "h", "version": "1"
                }))],
                "basic_info without a node_id",
            ),
        ];
        for (frames, reason) in cases {
            let shown = format!("{frames:?}");
            assert_eq!(
                introduced(frames, &["cp"]).await.err().as_deref(),
                Some(reason),
                "{shown}"
            );
        }
        // Pings and pongs before basic_info are not frames of the protocol: skipped.
        let session = introduced(
            vec![
                Message::Ping(vec![1].into()),
                text(basic_info("n", None, json!([]))),
            ],
            &["cp"],
        )
        .await
        .expect("after a ping");
        assert_eq!(session.node_id, "n");
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_ends_the_connection_with_an_error() {
        let (mut server, mut client) = pipe().await;
        let big = "x".repeat(MAX_INBOUND_FRAME + 1);
        let writer = tokio::spawn(async move {
            let _ = client.send(Message::text(big)).await;
            client
        });
        let error = next_text(&mut server).await.expect_err("too big");
        assert!(error.starts_with("reading: "), "{error}");
        drop(server);
        drop(writer.await);

        // Just under the limit is read.
        let (mut server, mut client) = pipe().await;
        let fits = "y".repeat(MAX_INBOUND_FRAME - 16);
        let writer = tokio::spawn(async move {
            client.send(Message::text(fits)).await.expect("send");
            client
        });
        let read = next_text(&mut server)
            .await
            .expect("read")
            .expect("a frame");
        assert_eq!(read.len(), MAX_INBOUND_FRAME - 16);
        drop(writer.await);
    }

    #[tokio::test]
    async fn the_close_reason_is_cut_to_the_protocol_limit_on_a_character_boundary() {
        for reason in [
            "short".to_owned(),
            "é".repeat(100),
            format!("a{}", "€".repeat(60)),
        ] {
            let (mut server, mut client) = pipe().await;
            let reader = tokio::spawn(async move {
                loop {
                    match client.next().await {
                        Some(Ok(Message::Close(frame))) => return frame,
                        Some(Ok(_)) => continue,
                        other => panic!("no close frame: {other:?}"),
                    }
                }
            });
            close(&mut server, CloseCode::Policy, &reason).await;
            let frame = reader.await.expect("reader").expect("a close frame");
            assert_eq!(frame.code, CloseCode::Policy);
            assert!(frame.reason.len() <= 123, "{}", frame.reason.len());
            assert!(reason.starts_with(frame.reason.as_str()));
            assert!(
                frame.reason.len() + 3 > reason.len().min(120),
                "cut no further"
            );
        }
    }

    #[test]
    fn only_the_outlet_path_upgrades() {
        let request = |uri: &str| Request::builder().uri(uri).body(()).expect("request");
        assert!(outlet_path(&request("/v1/outlet"), Response::new(())).is_ok());
        assert!(outlet_path(&request("/v1/outlet?node_id=x"), Response::new(())).is_ok());
        for path in ["/", "/v1/outlet/", "/v1/outle", "/V1/outlet", "/v2/outlet"] {
            let refused = outlet_path(&request(path), Response::new(())).expect_err(path);
            assert_eq!(refused.status(), 404, "{path}");
            assert_eq!(
                refused.body().as_deref(),
                Some("no such endpoint; data planes use /v1/outlet")
            );
        }
    }

    #[tokio::test]
    async fn the_current_version_is_sent_on_connect_and_each_new_one_once() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let v1 = version(1, 0, &[]);
        state.hub.publish(Arc::clone(&v1));
        let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
        let (n, hash, config, modules) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!(
            (n, hash.as_str(), config.as_str()),
            (1, v1.hash.as_str(), v1.text.as_str())
        );
        assert_eq!(hash, crate::hub::sha256_hex(config.as_bytes()));
        assert!(modules.is_empty());
        let node = state.nodes.get("cp", "n1").expect("registered");
        assert!(node.connected);
        assert_eq!(
            (
                node.hostname.as_str(),
                node.version.as_str(),
                node.ip.as_deref()
            ),
            ("dp-host", "0.1.0", Some("192.0.2.7"))
        );
        nothing_pending(&mut dp.client, None).await;

        let v2 = version(2, 1, &[]);
        state.hub.publish(Arc::clone(&v2));
        let (n, hash, _, _) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!((n, hash), (2, v2.hash.clone()));

        // A new version with the same content (a change that changed nothing): not sent.
        state.hub.publish(version(3, 1, &[]));
        nothing_pending(&mut dp.client, Some(&v1.hash)).await;

        // Back to v1's content while the node still has v2 in flight: sent, though the node
        // said it runs v1's hash.
        let v4 = version(4, 0, &[]);
        state.hub.publish(Arc::clone(&v4));
        let (n, hash, _, _) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!((n, hash.as_str()), (4, v1.hash.as_str()));

        send(
            &mut dp.client,
            json!({ "type": "applied", "config_version": 4, "config_hash": v4.hash }),
        )
        .await;
        nothing_pending(&mut dp.client, Some(&v4.hash)).await;
        let node = state.nodes.get("cp", "n1").expect("node");
        assert_eq!(
            (node.config_version, node.config_hash.as_deref()),
            (Some(4), Some(v4.hash.as_str()))
        );
        assert_eq!(node.sync_status(Some(&v4.hash)), "in_sync");

        dp.client.close(None).await.expect("close");
        assert_eq!(ended(dp.session).await, Ok("disconnected".to_owned()));
        drop(dp.stop);
    }

    #[tokio::test]
    async fn a_node_that_runs_the_current_hash_gets_nothing_on_connect() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let v1 = version(1, 0, &[]);
        state.hub.publish(Arc::clone(&v1));
        let mut dp = connect(&state, &outlet, basic_info("n1", Some(&v1.hash), json!([]))).await;
        nothing_pending(&mut dp.client, Some(&v1.hash)).await;
        let node = state.nodes.get("cp", "n1").expect("node");
        assert_eq!(node.config_hash.as_deref(), Some(v1.hash.as_str()));
        assert_eq!(node.sync_status(Some(&v1.hash)), "in_sync");

        // A control plane without any version yet: nothing either, until the first one.
        let dir = tempfile::tempdir().expect("dir");
        let state = super::tests::state(&dir, false, Duration::from_secs(30));
        let mut dp = connect(&state, &outlet, basic_info("n2", None, json!([]))).await;
        nothing_pending(&mut dp.client, None).await;
        state.hub.publish(Arc::clone(&v1));
        assert_eq!(reconfigure_of(receive(&mut dp.client).await).0, 1);
    }

    #[tokio::test]
    async fn modules_go_only_to_a_node_that_lacks_them_and_again_after_a_refusal() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, true, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let limit = state.modules.get("request-size-limiting").expect("module");
        let rate = state.modules.get("rate-limiting").expect("module");
        state
            .hub
            .publish(version(1, 0, &["request-size-limiting", "rate-limiting"]));
        // It has rate-limiting's module already, and an outdated request-size-limiting one.
        let has = json!([
            { "file": rate.file, "sha256": rate.sha256 },
            { "file": limit.file, "sha256": "0".repeat(64) },
        ]);
        let mut dp = connect(&state, &outlet, basic_info("n1", None, has)).await;
        let (_, _, _, modules) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!(
            modules,
            [ModuleData {
                plugin: "request-size-limiting".into(),
                file: limit.file.clone(),
                sha256: limit.sha256.clone(),
                data: base64::engine::general_purpose::STANDARD
                    .encode(b"module request-size-limiting"),
            }]
        );

        // Sent once: the next version does not carry it again.
        let v2 = version(2, 1, &["request-size-limiting"]);
        state.hub.publish(Arc::clone(&v2));
        let (n, _, _, modules) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!((n, modules.len()), (2, 0));

        // A refused version: the modules sent with it are not assumed to be there.
        let v3 = version(3, 2, &["request-size-limiting", "request-transformer"]);
        state.hub.publish(Arc::clone(&v3));
        let (n, _, _, modules) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!(n, 3);
        assert_eq!(
            modules
                .iter()
                .map(|m| m.plugin.as_str())
                .collect::<Vec<_>>(),
            ["request-transformer"]
        );
        send(
            &mut dp.client,
            json!({
                "type": "error", "config_version": 3, "config_hash": v3.hash,
                "message": "disk full"
            }),
        )
        .await;
        nothing_pending(&mut dp.client, None).await;
        let node = state.nodes.get("cp", "n1").expect("node");
        let error = node.last_error.clone().expect("recorded");
        assert_eq!(
            (
                error.config_version,
                error.config_hash.as_str(),
                error.message.as_str()
            ),
            (3, v3.hash.as_str(), "disk full")
        );
        assert_eq!(node.sync_status(Some(&v3.hash)), "failed");
        state.hub.publish(version(
            4,
            3,
            &["request-size-limiting", "request-transformer"],
        ));
        let (n, _, _, modules) = reconfigure_of(receive(&mut dp.client).await);
        assert_eq!(n, 4);
        assert_eq!(
            modules
                .iter()
                .map(|m| m.plugin.as_str())
                .collect::<Vec<_>>(),
            ["request-transformer"],
            "sent again; request-size-limiting's was applied with version 2"
        );
    }

    #[tokio::test]
    async fn pings_are_answered_and_recorded() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
        send(&mut dp.client, json!({ "type": "ping" })).await;
        assert_eq!(receive(&mut dp.client).await, Outbound::Pong);
        assert_eq!(state.nodes.get("cp", "n1").expect("node").config_hash, None);
        nothing_pending(&mut dp.client, Some("h1")).await;
        assert_eq!(
            state
                .nodes
                .get("cp", "n1")
                .expect("node")
                .config_hash
                .as_deref(),
            Some("h1")
        );
        // The hash a ping reports is what it runs: that version is not sent to it.
        let v1 = version(1, 0, &[]);
        nothing_pending(&mut dp.client, Some(&v1.hash)).await;
        state.hub.publish(v1);
        nothing_pending(&mut dp.client, None).await;
        // WebSocket pings are answered by the library and are no protocol frames.
        dp.client
            .send(Message::Ping(vec![7].into()))
            .await
            .expect("ping");
        match dp.client.next().await {
            Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], &[7u8][..]),
            other => panic!("expected a pong: {other:?}"),
        }
        nothing_pending(&mut dp.client, None).await;
    }

    #[tokio::test]
    async fn a_frame_out_of_protocol_ends_the_session_with_its_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let cases: Vec<(Message, &str)> = vec![
            (
                text(basic_info("n1", None, json!([]))),
                "basic_info sent twice",
            ),
            (
                Message::binary(b"{\"type\":\"ping\"}".to_vec()),
                "binary frames are not part of the protocol",
            ),
            (Message::text("{\"type\":\"ping\""), "unreadable frame: "),
            (Message::text("\"ping\""), "unreadable frame: "),
            (text(json!({ "type": "pong" })), "unreadable frame: "),
            (text(json!({ "type": "reconfigure" })), "unreadable frame: "),
            (
                text(json!({ "type": "applied", "config_version": "1", "config_hash": "h" })),
                "unreadable frame: ",
            ),
            (
                text(json!({ "type": "applied", "config_version": -1, "config_hash": "h" })),
                "unreadable frame: ",
            ),
            (
                text(json!({ "type": "error", "config_version": 1, "config_hash": "h" })),
                "unreadable frame: ",
            ),
            (
                text(json!({ "type": "ping", "config_hash": 5 })),
                "unreadable frame: ",
            ),
            // Within the frame limit, beyond what a data plane may report.
            (
                text(json!({ "type": "ping", "config_hash": "f".repeat(4096) })),
                "ping.config_hash is 4096 bytes long",
            ),
            (
                text(json!({ "type": "applied", "config_version": 1, "config_hash": "\u{1b}[2J" })),
                "applied.config_hash has the byte 0x1b",
            ),
        ];
        for (frame, reason) in cases {
            let shown = format!("{frame:?}");
            let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
            nothing_pending(&mut dp.client, None).await;
            dp.client.send(frame).await.expect("send");
            let error = ended(dp.session).await.expect_err(&shown);
            assert!(error.starts_with(reason), "{shown}: {error}");
        }
    }

    #[tokio::test]
    async fn a_session_ends_on_silence_shutdown_or_a_deleted_control_plane() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_millis(100));
        let outlet = Arc::new(Outlet::default());
        let dp = connect(&state, &outlet, basic_info("silent", None, json!([]))).await;
        assert_eq!(
            ended(dp.session).await,
            Ok("silent for 150 ms, disconnected".to_owned())
        );
        assert!(
            state.nodes.get("cp", "silent").expect("node").connected,
            "marking it disconnected is the connection's job (only its newest one)"
        );

        let dir = tempfile::tempdir().expect("dir");
        let state = super::tests::state(&dir, false, Duration::from_secs(30));
        let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
        nothing_pending(&mut dp.client, None).await;
        dp.stop.send(true).expect("stop");
        assert_eq!(
            ended(dp.session).await,
            Ok("control plane stopping".to_owned())
        );

        let mut dp = connect(&state, &outlet, basic_info("n2", None, json!([]))).await;
        nothing_pending(&mut dp.client, None).await;
        state.hub.remove("cp");
        assert_eq!(
            ended(dp.session).await,
            Ok("control plane deleted".to_owned())
        );
    }

    #[tokio::test]
    async fn unpinning_its_certificate_cuts_a_session_before_the_next_version() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
        state.hub.publish(version(1, 0, &[]));
        assert!(matches!(
            receive(&mut dp.client).await,
            Outbound::Reconfigure {
                config_version: 1,
                ..
            }
        ));
        state
            .store
            .transaction(|tx| -> Result<usize, crate::store::StoreError> {
                Ok(tx.execute("DELETE FROM dp_client_certificates WHERE id = 'pin'", [])?)
            })
            .expect("unpin");
        // Published right after the unpin committed, as a PATCH after a DELETE would be.
        state.hub.publish(version(2, 0, &[]));
        assert_eq!(ended(dp.session).await, Ok("revoked".to_owned()));
        let after = tokio::time::timeout(Duration::from_secs(5), dp.client.next()).await;
        assert!(
            !matches!(after, Ok(Some(Ok(Message::Text(_))))),
            "version 2 never reaches it: {after:?}"
        );
        assert_eq!(state.store.trust().sessions(), 0, "its claim is gone");
    }

    #[tokio::test]
    async fn connections_beyond_the_handshake_limit_are_closed_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(serve_with(listener, state, shutdown, 2));
        crate::trust::assert_the_handshake_limit_holds(addr, 2).await;
    }

    #[tokio::test]
    async fn a_data_plane_that_drifts_from_what_it_applied_gets_it_again() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_secs(30));
        let outlet = Arc::new(Outlet::default());
        let mut dp = connect(&state, &outlet, basic_info("n1", None, json!([]))).await;
        let v1 = version(1, 0, &[]);
        state.hub.publish(Arc::clone(&v1));
        assert!(matches!(
            receive(&mut dp.client).await,
            Outbound::Reconfigure {
                config_version: 1,
                ..
            }
        ));
        // Before it says it applied v1, a ping with what it ran before is no drift.
        nothing_pending(&mut dp.client, Some("before")).await;
        send(
            &mut dp.client,
            json!({ "type": "applied", "config_version": 1, "config_hash": v1.hash }),
        )
        .await;
        nothing_pending(&mut dp.client, Some(&v1.hash)).await;

        send(
            &mut dp.client,
            json!({ "type": "ping", "config_hash": "local" }),
        )
        .await;
        assert_eq!(receive(&mut dp.client).await, Outbound::Pong);
        assert!(
            matches!(
                receive(&mut dp.client).await,
                Outbound::Reconfigure { config_version: 1, ref config_hash, .. } if *config_hash == v1.hash
            ),
            "v1 again"
        );
    }

    #[tokio::test]
    async fn a_data_plane_that_stops_reading_loses_its_session_within_a_ping_interval() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(&dir, false, Duration::from_millis(300));
        let outlet = Arc::new(Outlet::default());
        let dp = connect(&state, &outlet, basic_info("stalled", None, json!([]))).await;
        // Bigger than the pipe's buffer, and the data plane never reads.
        state.hub.publish(version(1, 1 << 20, &[]));
        let ended = ended(dp.session).await;
        assert!(
            ended
                .as_ref()
                .is_err_and(|e| e.contains("not read within 300 ms")),
            "{ended:?}"
        );
        drop(dp.client);
    }

    #[test]
    fn the_shared_frame_is_made_once_per_version() {
        let outlet = Outlet::default();
        let v1 = version(1, 0, &[]);
        let frame = outlet.frame_without_modules(&v1).expect("frame");
        assert_eq!(
            serde_json::from_str::<Outbound>(&frame).expect("frame"),
            Outbound::Reconfigure {
                config_version: 1,
                config_hash: v1.hash.clone(),
                config: v1.text.clone(),
                modules: Vec::new(),
            }
        );
        let again = outlet.frame_without_modules(&v1).expect("again");
        assert_eq!(
            again.as_str().as_ptr(),
            frame.as_str().as_ptr(),
            "the same bytes, not serialized again"
        );
        let v2 = version(2, 1, &[]);
        let next = outlet.frame_without_modules(&v2).expect("next");
        assert_eq!(
            reconfigure_of(serde_json::from_str(&next).expect("next")).0,
            2
        );
    }

    #[tokio::test]
    async fn what_a_node_says_of_itself_is_bounded_at_basic_info() {
        let at = |field: &str, value: String| {
            let mut hello = basic_info("n1", None, json!([]));
            hello[field] = json!(value);
            hello
        };
        // Exactly at each bound: accepted.
        for (field, max) in [
            ("node_id", MAX_NODE_ID),
            ("hostname", MAX_HOSTNAME),
            ("version", MAX_VERSION),
        ] {
            let session = introduced(vec![text(at(field, "x".repeat(max)))], &["cp"]).await;
            assert!(
                session.is_ok(),
                "{field} of {max} bytes: {:?}",
                session.err()
            );
            let refused = introduced(vec![text(at(field, "x".repeat(max + 1)))], &["cp"])
                .await
                .err();
            assert_eq!(
                refused,
                Some(format!(
                    "basic_info.{field} is {} bytes long; at most {max} are accepted",
                    max + 1
                ))
            );
        }
        let refused = introduced(vec![text(at("hostname", "h\u{1b}]0;x".into()))], &["cp"])
            .await
            .err();
        assert_eq!(
            refused.as_deref(),
            Some("basic_info.hostname has the byte 0x1b; only printable ASCII is accepted")
        );
    }
}
