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
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::hub::ConfigVersion;
use crate::nodes::{Hello, NodeKind};
use crate::{pki, State};

/// TLS handshake, WebSocket upgrade and `basic_info`, each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Data planes only send small frames (basic_info lists a few modules).
const MAX_INBOUND_FRAME: usize = 1 << 20;

type Socket = WebSocketStream<TlsStream<TcpStream>>;

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
    mut shutdown: watch::Receiver<bool>,
) {
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
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(
                        stream,
                        peer,
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
    let planes = match pki::peer_control_planes(&state.store, tls.get_ref().1.peer_certificates()) {
        Ok(planes) => planes,
        Err(e) => {
            log::warn!("data plane {peer}: {e}");
            return;
        }
    };
    let config = WebSocketConfig::default()
        // Thousands of idle connections: small eager buffers, frames written at once.
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INBOUND_FRAME))
        .max_frame_size(Some(MAX_INBOUND_FRAME));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tls, outlet_path, Some(config));
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
    let session = match introduce(&mut socket, peer, &planes).await {
        Ok(session) => session,
        Err(e) => {
            log::warn!("data plane {peer}: {e}");
            close(&mut socket, CloseCode::Policy, &e).await;
            return;
        }
    };
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
    let (reason, code) = session
        .run(&mut socket, &state, &outlet, shutdown)
        .await
        .map_or_else(|e| (e, CloseCode::Error), |why| (why, CloseCode::Away));
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

async fn close(socket: &mut Socket, code: CloseCode, reason: &str) {
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
async fn next_text(socket: &mut Socket) -> Result<Option<Utf8Bytes>, String> {
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
}

/// Reads `basic_info`, picks the control plane and registers the node.
async fn introduce(
    socket: &mut Socket,
    peer: SocketAddr,
    planes: &[String],
) -> Result<Session, String> {
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, next_text(socket)).await {
        Ok(Ok(Some(text))) => text,
        Ok(Ok(None)) => return Err("closed before basic_info".into()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no basic_info within 10 s".into()),
    };
    let Ok(Inbound::BasicInfo {
        node_id,
        hostname,
        version,
        control_plane_id,
        modules,
        config_hash,
        plugins: _,
    }) = serde_json::from_str::<Inbound>(&first)
    else {
        return Err("the first frame must be basic_info".into());
    };
    if node_id.is_empty() {
        return Err("basic_info without a node_id".into());
    }
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
    })
}

impl Session {
    /// Serves the connection until it ends; `Ok` says why it ended normally.
    async fn run(
        mut self,
        socket: &mut Socket,
        state: &State,
        outlet: &Outlet,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<String, String> {
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
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Ok("control plane deleted".into());
                    }
                    let current = versions.borrow_and_update().clone();
                    match current {
                        Some(version) => self.push(socket, outlet, state, &version).await?,
                        None => return Ok("control plane deleted".into()),
                    }
                }
                frame = socket.next() => {
                    deadline.as_mut().reset(Instant::now() + silence);
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return Ok("disconnected".into()),
                        Some(Ok(Message::Text(text))) => self.receive(socket, state, &text).await?,
                        Some(Ok(Message::Binary(_))) => {
                            return Err("binary frames are not part of the protocol".into())
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("reading: {e}")),
                    }
                }
                () = &mut deadline => {
                    return Ok(format!("silent for {} ms, disconnected", silence.as_millis()));
                }
                () = stopping(&mut shutdown) => return Ok("control plane stopping".into()),
            }
        }
    }

    /// Sends `version` unless the data plane runs it or already has it.
    async fn push(
        &mut self,
        socket: &mut Socket,
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
        socket
            .send(Message::Text(frame))
            .await
            .map_err(|e| format!("sending version {}: {e}", version.version))?;
        self.sent = Some(version.hash.clone());
        Ok(())
    }

    async fn receive(
        &mut self,
        socket: &mut Socket,
        state: &State,
        text: &str,
    ) -> Result<(), String> {
        let cp = &self.control_plane_id;
        let id = &self.node_id;
        match serde_json::from_str::<Inbound>(text) {
            Ok(Inbound::Applied {
                config_version,
                config_hash,
            }) => {
                state.nodes.applied(cp, id, config_version, &config_hash);
                self.running = Some(config_hash);
            }
            Ok(Inbound::Error {
                config_version,
                config_hash,
                message,
            }) => {
                log::warn!("data plane {id} refused version {config_version}: {message}");
                state
                    .nodes
                    .rejected(cp, id, config_version, &config_hash, &message);
                for file in self.last_sent_modules.drain(..) {
                    self.modules.remove(&file);
                }
            }
            Ok(Inbound::Ping { config_hash }) => {
                state.nodes.pinged(cp, id, config_hash.as_deref());
                if config_hash.is_some() {
                    self.running = config_hash;
                }
                let pong = serde_json::to_string(&Outbound::Pong).map_err(|e| e.to_string())?;
                socket
                    .send(Message::text(pong))
                    .await
                    .map_err(|e| format!("sending pong: {e}"))?;
            }
            Ok(Inbound::BasicInfo { .. }) => return Err("basic_info sent twice".into()),
            Err(e) => return Err(format!("unreadable frame: {e}")),
        }
        Ok(())
    }
}
