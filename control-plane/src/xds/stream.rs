//! One Envoy's ADS stream (state of the world): which node it is, what each of its
//! subscriptions was sent and acknowledged, and the push of every new version.
//!
//! Per type URL the stream remembers the last response (version, nonce, digest of its
//! content). A request carrying that nonce acknowledges it (ACK) or, with `error_detail`,
//! refuses it (NACK); a request with an older nonce is stale and ignored, as the xDS protocol
//! says. A new version's clusters go first, with those of earlier versions it may still route
//! to; the listener and filters follow once the clusters are acknowledged, the routes once
//! the listener is too, and the earlier clusters go once all of those are. Refused content is never sent to that Envoy process
//! again ([`Envoys`]), so the node stays on the version it refused, reported `failed`, until a
//! new version changes what it would receive or a new process takes the node id.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use xds_api::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use xds_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_api::pb::google::protobuf::{value::Kind, Struct};

use super::resources::{NodeParams, Translator, CLUSTER, LISTENER, ROUTE, TYPES};
use super::snapshot::{Clusters, Snapshot, Subscription};
use crate::hub::ConfigVersion;
use crate::nodes::{check_reported, Hello, NodeKind, MAX_NODE_ID, MAX_VERSION};
use crate::State;

/// Who is at the other end of a stream.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub control_plane_id: String,
    pub id: String,
    pub version: String,
    pub params: NodeParams,
}

fn metadata_string(metadata: Option<&Struct>, key: &str) -> Option<String> {
    match metadata?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

impl NodeIdentity {
    /// Checks the node against the control planes its certificate is pinned for.
    #[allow(clippy::result_large_err)]
    pub fn new(node: &Node, pinned_for: &[String]) -> Result<NodeIdentity, Status> {
        if node.id.is_empty() {
            return Err(Status::invalid_argument("node.id is empty"));
        }
        check_reported("node.id", &node.id, MAX_NODE_ID).map_err(Status::invalid_argument)?;
        let control_plane_id = if node.cluster.is_empty() {
            match pinned_for {
                [only] => only.clone(),
                _ => {
                    return Err(Status::permission_denied(format!(
                        "node.cluster is empty and the client certificate is pinned for {} control planes: name one in node.cluster",
                        pinned_for.len()
                    )))
                }
            }
        } else if pinned_for.contains(&node.cluster) {
            node.cluster.clone()
        } else {
            return Err(Status::permission_denied(format!(
                "the client certificate is not pinned for control plane {} (node.cluster)",
                node.cluster
            )));
        };
        let metadata = node.metadata.as_ref();
        let listen = metadata_string(metadata, "listen").ok_or_else(|| {
            Status::invalid_argument(
                "node.metadata.listen (the gateway listener's address, e.g. 127.0.0.1:10000) is missing",
            )
        })?;
        let listen: SocketAddr = listen.parse().map_err(|e| {
            Status::invalid_argument(format!("node.metadata.listen {listen:?}: {e}"))
        })?;
        let optional_address = |key: &str| match metadata_string(metadata, key) {
            None => Ok(None),
            Some(address) => address.parse::<SocketAddr>().map(Some).map_err(|e| {
                Status::invalid_argument(format!("node.metadata.{key} {address:?}: {e}"))
            }),
        };
        let ratelimit = optional_address("ratelimit")?;
        let tls_listen = optional_address("tls_listen")?;
        let env_allow = match metadata
            .and_then(|m| m.fields.get("env_allow"))
            .and_then(|v| v.kind.as_ref())
        {
            None => Vec::new(),
            Some(Kind::ListValue(list)) => list
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Ok(s.clone()),
                    _ => Err(Status::invalid_argument(
                        "node.metadata.env_allow must be a list of environment variable names",
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "node.metadata.env_allow must be a list of environment variable names",
                ))
            }
        };
        let version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentBuildVersion(build)) => build
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_else(|| node.user_agent_name.clone()),
            Some(UserAgentVersionType::UserAgentVersion(v)) if !v.is_empty() => v.clone(),
            _ => node.user_agent_name.clone(),
        };
        check_reported("node.user_agent_version", &version, MAX_VERSION)
            .map_err(Status::invalid_argument)?;
        Ok(NodeIdentity {
            control_plane_id,
            id: node.id.clone(),
            version,
            params: NodeParams {
                listen,
                tls_listen,
                env_allow,
                ratelimit,
            },
        })
    }
}

/// What the control plane keeps of each node's Envoy processes, by (control plane, node id):
/// how many of its streams are open (it is `connected` while any is: a hot restart or a quick
/// reconnection overlaps two), and what the process behind them refused.
#[derive(Default)]
pub struct Envoys {
    by_node: Mutex<ByNode>,
}

#[derive(Default)]
struct ByNode {
    nodes: HashMap<NodeKey, NodeStreams>,
    /// How many nodes there may be before those gone from the registry are looked for (twice
    /// what was left the last time: each stream start costs O(1) on average, also when every
    /// node reconnects at once).
    prune_at: usize,
}

struct NodeStreams {
    open: usize,
    /// What the Envoy process that opened the latest fresh stream refused.
    refusals: Arc<Refusals>,
    /// The clusters that process was sent by the stream that ended last: after a
    /// reconnection it still routes to them until it has the new routes.
    clusters: Clusters,
}

/// (control plane, node id).
type NodeKey = (String, String);
/// (type URL, content digest).
type ContentKey = (String, String);

/// Content one Envoy process refused, and its reason. That process remembers the hash of a
/// config it refused and would ACK the same one without applying it (the loop of
/// go-control-plane #962), so it never gets it again, across its reconnections too; a new
/// process (a restart, or the new one of a hot restart) has no such memory and gets all of
/// it, as the refusal may have been passing (a port still taken, memory short).
#[derive(Default)]
struct Refusals {
    by_content: Mutex<BTreeMap<ContentKey, String>>,
}

impl Refusals {
    fn add(&self, type_url: &str, digest: &str, message: &str) {
        let mut by_content = self.by_content.lock().unwrap_or_else(|e| e.into_inner());
        by_content.insert((type_url.to_owned(), digest.to_owned()), message.to_owned());
    }

    /// Why the process refused this content, if it did.
    fn reason(&self, type_url: &str, digest: &str) -> Option<String> {
        let by_content = self.by_content.lock().unwrap_or_else(|e| e.into_inner());
        by_content
            .get(&(type_url.to_owned(), digest.to_owned()))
            .cloned()
    }
}

impl Envoys {
    /// A stream of `node` opens. `fresh`: its first request has no version, as a new Envoy
    /// process asks (a reconnecting one says which version it has), so what the node refused
    /// before is not this process's refusal. Now and then forgets what it kept of nodes
    /// without an open stream that the registry no longer has (deleted nodes and control
    /// planes).
    fn open(self: &Arc<Self>, state: &Arc<State>, node: &NodeIdentity, fresh: bool) -> OpenStream {
        let key = (node.control_plane_id.clone(), node.id.clone());
        let mut by_node = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if by_node.nodes.len() >= by_node.prune_at {
            by_node
                .nodes
                .retain(|(cp, id), streams| streams.open > 0 || state.nodes.get(cp, id).is_some());
            by_node.prune_at = (2 * by_node.nodes.len()).max(64);
        }
        let streams = by_node
            .nodes
            .entry(key.clone())
            .or_insert_with(|| NodeStreams {
                open: 0,
                refusals: Arc::default(),
                clusters: Clusters::new(),
            });
        if fresh {
            streams.refusals = Arc::default();
            streams.clusters.clear();
        }
        streams.open += 1;
        OpenStream {
            envoys: Arc::clone(self),
            state: Arc::clone(state),
            refusals: Arc::clone(&streams.refusals),
            earlier_clusters: streams.clusters.clone(),
            key,
        }
    }
}

/// One open stream's hold on its node, released however the stream ends (Envoy left, the
/// control plane stopped or cut it): the node is disconnected when its last stream ends, not
/// when an older one of an Envoy that came back ends after the new one began.
struct OpenStream {
    envoys: Arc<Envoys>,
    state: Arc<State>,
    key: NodeKey,
    refusals: Arc<Refusals>,
    /// What the process was sent before this stream, if it is not a new one.
    earlier_clusters: Clusters,
}

impl OpenStream {
    /// The clusters this stream leaves the process with.
    fn leaves(&self, clusters: Clusters) {
        let mut by_node = self
            .envoys
            .by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(streams) = by_node.nodes.get_mut(&self.key) {
            streams.clusters = clusters;
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut by_node = self
            .envoys
            .by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(streams) = by_node.nodes.get_mut(&self.key) else {
            return;
        };
        streams.open = streams.open.saturating_sub(1);
        if streams.open == 0 {
            // Under the lock: a stream of the node opening now is counted before it says
            // hello, so its `connected` lands after this.
            self.state.nodes.disconnected(&self.key.0, &self.key.1);
        }
    }
}

/// The last response of one type.
struct Sent {
    nonce: String,
    version: Arc<ConfigVersion>,
    digest: String,
}

#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    sent: Option<Sent>,
    /// Digest of the content Envoy acknowledged last.
    acked: Option<String>,
}

pub struct AdsStream {
    state: Arc<State>,
    translator: Arc<Translator>,
    envoys: Arc<Envoys>,
    /// Set when the stream starts.
    open: Option<OpenStream>,
    node: NodeIdentity,
    hello: Hello,
    types: BTreeMap<String, TypeState>,
    snapshot: Option<Snapshot>,
    applied: Option<u64>,
    nonces: u64,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Drop for AdsStream {
    fn drop(&mut self) {
        // However the stream ends: a stream of the same process after it knows what it had.
        if let (Some(open), Some(snapshot)) = (&self.open, &self.snapshot) {
            open.leaves(snapshot.clusters());
        }
    }
}

impl AdsStream {
    pub fn new(
        state: Arc<State>,
        translator: Arc<Translator>,
        envoys: Arc<Envoys>,
        node: NodeIdentity,
        responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> AdsStream {
        let hello = Hello {
            id: node.id.clone(),
            kind: NodeKind::Envoy,
            hostname: node.id.clone(),
            version: node.version.clone(),
            ip: None,
        };
        AdsStream {
            state,
            translator,
            envoys,
            open: None,
            node,
            hello,
            types: BTreeMap::new(),
            snapshot: None,
            applied: None,
            nonces: 0,
            responses,
        }
    }

    /// Serves the stream until Envoy leaves, the control plane is deleted or shuts down.
    pub async fn run(
        mut self,
        first: DiscoveryRequest,
        mut requests: Streaming<DiscoveryRequest>,
        ip: Option<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let cp = self.node.control_plane_id.clone();
        let id = self.node.id.clone();
        self.hello.ip = ip;
        self.open = Some(
            self.envoys
                .open(&self.state, &self.node, first.version_info.is_empty()),
        );
        self.state.nodes.connected(&cp, self.hello.clone());
        let mut versions = self.state.hub.subscribe(&cp);
        let current = versions.borrow_and_update().clone();
        let ended = async {
            match current {
                Some(version) => self.new_version(version).await?,
                None => return Err(Status::not_found(format!("control plane {cp} has no configuration"))),
            }
            self.request(first).await?;
            loop {
                tokio::select! {
                    message = requests.message() => match message {
                        Ok(Some(request)) => self.request(request).await?,
                        Ok(None) => return Ok(()),
                        Err(status) => {
                            log::info!("xDS node {id} of {cp}: {status}");
                            return Ok(());
                        }
                    },
                    changed = versions.changed() => {
                        let next = versions.borrow_and_update().clone();
                        match (changed, next) {
                            (Ok(()), Some(version)) => self.new_version(version).await?,
                            _ => return Err(Status::not_found(format!("control plane {cp} was deleted"))),
                        }
                    }
                    () = super::stopping(&mut shutdown) => {
                        return Err(Status::unavailable("the control plane is shutting down"));
                    }
                }
            }
        }
        .await;
        if let Err(status) = ended {
            let _ = self.responses.send(Err(status)).await;
        }
    }

    async fn request(&mut self, request: DiscoveryRequest) -> Result<(), Status> {
        let type_url = request.type_url.clone();
        if !TYPES.contains(&type_url.as_str()) {
            log::debug!("xDS node {}: {type_url} is not served", self.node.id);
            return Ok(());
        }
        let (cp, id) = (&self.node.control_plane_id, &self.node.id);
        if self.state.nodes.get(cp, id).is_some_and(|n| !n.connected) {
            // It streams, whatever the end of another session of its id said.
            self.state.nodes.connected(cp, self.hello.clone());
        }
        self.state.nodes.pinged(cp, id, None);
        let entry = self.types.entry(type_url.clone()).or_default();
        if let Some(sent) = &entry.sent {
            if request.response_nonce != sent.nonce {
                // Stale: Envoy answers a response it has not seen the successor of yet.
                return Ok(());
            }
            match &request.error_detail {
                Some(error) => {
                    if let Some(open) = &self.open {
                        open.refusals.add(&type_url, &sent.digest, &error.message);
                    }
                    // Logged by the registry, escaped and once per repeat.
                    self.state.nodes.rejected(
                        cp,
                        id,
                        sent.version.version,
                        &sent.version.hash,
                        &error.message,
                    );
                }
                None => entry.acked = Some(sent.digest.clone()),
            }
        }
        entry.subscription = Subscription::new(&type_url, &request.resource_names);
        self.push(&type_url).await?;
        if type_url == CLUSTER || type_url == LISTENER {
            // What waited for these may go now.
            self.push_all().await?;
        }
        self.settle().await?;
        self.check_applied();
        Ok(())
    }

    /// Pushes every subscribed type, in [`TYPES`]' order.
    async fn push_all(&mut self) -> Result<(), Status> {
        for type_url in TYPES {
            if self.types.contains_key(type_url) {
                self.push(type_url).await?;
            }
        }
        Ok(())
    }

    /// Whether the node has every type but the clusters of the current version, as a whole,
    /// acknowledged: nothing it runs names an earlier version's cluster any more.
    fn routing_acked(&self) -> bool {
        let Some(snapshot) = &self.snapshot else {
            return false;
        };
        TYPES
            .iter()
            .filter(|type_url| **type_url != CLUSTER)
            .all(|type_url| self.acked(snapshot, type_url))
    }

    /// Whether the node has acknowledged exactly the current content of a type, all of it (or
    /// neither subscribes to nor needs any).
    fn acked(&self, snapshot: &Snapshot, type_url: &str) -> bool {
        match self.types.get(type_url) {
            None => !snapshot.has(type_url),
            Some(entry) => {
                let selection = snapshot.select(type_url, &entry.subscription);
                selection.complete && entry.acked.as_deref() == Some(selection.digest.as_str())
            }
        }
    }

    /// Once the current routing is acknowledged, the clusters of earlier versions go.
    async fn settle(&mut self) -> Result<(), Status> {
        if !self.routing_acked() {
            return Ok(());
        }
        if self.snapshot.as_mut().is_some_and(Snapshot::drop_lingering) {
            self.push(CLUSTER).await?;
        }
        Ok(())
    }

    /// Whether what `type_url` depends on was sent and is not acknowledged (yet, or refused):
    /// until it is, nothing of `type_url` is sent. Everything names clusters, so they are warm
    /// first; the routes enable the listener's filters by name, so a listener the node refused
    /// keeps the routes that go with it.
    fn awaiting(&self, type_url: &str) -> bool {
        let prerequisites: &[&str] = match type_url {
            CLUSTER => &[],
            ROUTE => &[CLUSTER, LISTENER],
            _ => &[CLUSTER],
        };
        prerequisites.iter().any(|prerequisite| {
            self.types.get(*prerequisite).is_some_and(|entry| {
                entry
                    .sent
                    .as_ref()
                    .is_some_and(|sent| entry.acked.as_deref() != Some(sent.digest.as_str()))
            })
        })
    }

    async fn new_version(&mut self, version: Arc<ConfigVersion>) -> Result<(), Status> {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.version.version >= version.version)
        {
            return Ok(());
        }
        let translate = {
            let (translator, state) = (Arc::clone(&self.translator), Arc::clone(&self.state));
            let (version, params) = (Arc::clone(&version), self.node.params.clone());
            move || {
                translator.translate(
                    &version,
                    &params,
                    &state.modules,
                    &state.options.modules_dir,
                )
            }
        };
        let translated = self
            .translator
            .shared(&version, &self.node.params, translate)
            .await;
        match translated {
            Ok(resources) => {
                let earlier = match (&self.snapshot, &self.open) {
                    (Some(previous), _) => previous.clusters(),
                    // The Envoy process may be back with clusters an earlier stream sent it.
                    (None, Some(open)) => open.earlier_clusters.clone(),
                    (None, None) => Clusters::new(),
                };
                let snapshot = Snapshot::new(version, resources, earlier);
                self.snapshot = Some(snapshot);
                if self.routing_acked() {
                    // Nothing the node routes by changes: no cluster needs to linger.
                    if let Some(snapshot) = self.snapshot.as_mut() {
                        snapshot.drop_lingering();
                    }
                }
            }
            Err(e) => {
                // Nothing of this version can reach the node; it keeps what it runs.
                let message =
                    format!("the control plane cannot translate this version for Envoy: {e}");
                log::error!("xDS node {}: {message}", self.node.id);
                self.state.nodes.rejected(
                    &self.node.control_plane_id,
                    &self.node.id,
                    version.version,
                    &version.hash,
                    &message,
                );
                return Ok(());
            }
        }
        self.push_all().await?;
        self.check_applied();
        Ok(())
    }

    /// Sends a type's resources unless the node already has (or refused) exactly them, or
    /// while what they depend on is not acknowledged ([`Self::awaiting`]).
    async fn push(&mut self, type_url: &str) -> Result<(), Status> {
        if self.awaiting(type_url) {
            return Ok(());
        }
        let (Some(snapshot), Some(entry)) = (&self.snapshot, self.types.get_mut(type_url)) else {
            return Ok(());
        };
        let selection = snapshot.select(type_url, &entry.subscription);
        let refused = self
            .open
            .as_ref()
            .and_then(|open| open.refusals.reason(type_url, &selection.digest));
        if let Some(reason) = refused {
            // This version still holds what Envoy refused: it fails for the same reason.
            log::warn!(
                "xDS node {}: version {} holds {type_url} content it refused; not sent",
                self.node.id,
                snapshot.version.version
            );
            self.state.nodes.rejected(
                &self.node.control_plane_id,
                &self.node.id,
                snapshot.version.version,
                &snapshot.version.hash,
                &reason,
            );
            return Ok(());
        }
        if entry
            .sent
            .as_ref()
            .is_some_and(|s| s.digest == selection.digest)
        {
            return Ok(());
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let response = DiscoveryResponse {
            version_info: snapshot.version.version.to_string(),
            resources: selection.resources.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        };
        entry.sent = Some(Sent {
            nonce,
            version: Arc::clone(&snapshot.version),
            digest: selection.digest,
        });
        self.responses
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("Envoy left"))
    }

    /// Reports the version once Envoy has acknowledged all of it: every type it has,
    /// subscribed with every name, with exactly that content.
    fn check_applied(&mut self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        if self.applied == Some(snapshot.version.version) {
            return;
        }
        if TYPES.iter().all(|type_url| self.acked(snapshot, type_url)) {
            self.applied = Some(snapshot.version.version);
            self.state.nodes.applied(
                &self.node.control_plane_id,
                &self.node.id,
                snapshot.version.version,
                &snapshot.version.hash,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use xds_api::pb::google::protobuf::Value;

    use super::*;

    fn node(id: String, user_agent_version: String) -> Node {
        let listen = Value {
            kind: Some(Kind::StringValue("127.0.0.1:10000".into())),
        };
        Node {
            id,
            cluster: "cp".into(),
            metadata: Some(Struct {
                fields: [("listen".to_owned(), listen)].into(),
            }),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                user_agent_version,
            )),
            ..Node::default()
        }
    }

    #[test]
    fn an_envoys_node_id_and_version_are_bounded() {
        let pinned = ["cp".to_owned()];
        let identity = NodeIdentity::new(&node("e".repeat(MAX_NODE_ID), "1.40.0".into()), &pinned)
            .expect("a node id of exactly the bound");
        assert_eq!(
            (identity.id.len(), identity.version.as_str()),
            (MAX_NODE_ID, "1.40.0")
        );
        for (node, message) in [
            (
                node("e".repeat(MAX_NODE_ID + 1), "1.40.0".into()),
                "node.id is 129 bytes long; at most 128 are accepted",
            ),
            (
                node("e\n".into(), "1.40.0".into()),
                "node.id has the byte 0x0a; only printable ASCII is accepted",
            ),
            (
                node("e".into(), "v".repeat(MAX_VERSION + 1)),
                "node.user_agent_version is 65 bytes long; at most 64 are accepted",
            ),
        ] {
            let refused = NodeIdentity::new(&node, &pinned).expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert_eq!(refused.message(), message);
        }
    }

    /// `node.metadata.tls_listen` names the node's TLS listener; anything but an address is
    /// refused with the field's name, and without it the node has none.
    #[test]
    fn a_nodes_tls_listener_is_its_metadatas_tls_listen() {
        let pinned = ["cp".to_owned()];
        let with = |value: &str| {
            let mut node = node("e".into(), "1.40.0".into());
            let fields = &mut node.metadata.as_mut().unwrap().fields;
            let value = Value {
                kind: Some(Kind::StringValue(value.into())),
            };
            fields.insert("tls_listen".into(), value);
            NodeIdentity::new(&node, &pinned).map_err(|e| (e.code(), e.message().to_owned()))
        };
        let identity = with("127.0.0.1:8443").unwrap();
        assert_eq!(
            identity.params.tls_listen,
            Some(([127, 0, 0, 1], 8443).into())
        );
        let (code, message) = with("nowhere").expect_err("not an address");
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(
            message.starts_with("node.metadata.tls_listen \"nowhere\""),
            "{message}"
        );
        let plain = NodeIdentity::new(&node("e".into(), "1.40.0".into()), &pinned).unwrap();
        assert_eq!(plain.params.tls_listen, None);
    }
}
