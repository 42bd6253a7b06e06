//! The data planes of every control plane: who connected, what they run, and why not when
//! they do not run the expected version. Kept in memory and written through to the store on
//! every change of state (not on every ping), so `/nodes` survives a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::Store;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Gateway,
    Envoy,
}

/// Why a data plane does not run a version: what it said when it refused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    pub config_version: u64,
    pub config_hash: String,
    pub message: String,
    pub at: i64,
}

/// One data plane as `GET /v2/control-planes/{id}/nodes` shows it (Konnect's fields plus
/// `kind`, `sync_status` and `last_error`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    pub hostname: String,
    pub version: String,
    pub ip: Option<String>,
    pub connected: bool,
    /// Unix seconds of the last message from it.
    pub last_ping: i64,
    /// The hash of the configuration it runs (gateway: what it reports; Envoy: the version it
    /// acknowledged).
    pub config_hash: Option<String>,
    pub config_version: Option<u64>,
    pub last_error: Option<NodeError>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Node {
    /// Konnect-style sync state against the version the control plane expects.
    pub fn sync_status(&self, expected_hash: Option<&str>) -> &'static str {
        match (expected_hash, self.config_hash.as_deref()) {
            _ if !self.connected => "disconnected",
            (Some(expected), Some(running)) if expected == running => "in_sync",
            (Some(expected), _)
                if self
                    .last_error
                    .as_ref()
                    .is_some_and(|e| e.config_hash == expected) =>
            {
                "failed"
            }
            _ => "pending",
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The longest node id a data plane may give itself.
pub const MAX_NODE_ID: usize = 128;
/// The longest hostname: a DNS name's longest text form.
pub const MAX_HOSTNAME: usize = 253;
/// The longest version text.
pub const MAX_VERSION: usize = 64;

/// Checks what a data plane says of itself before it is stored and listed by `/nodes`: at
/// most `max` bytes of printable ASCII, so that no data plane can grow the store or the
/// listing at will, or put control bytes in front of an operator. The error names `field`.
pub fn check_reported(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        ));
    }
    match value.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
        Some(b) => Err(format!(
            "{field} has the byte 0x{b:02x}; only printable ASCII is accepted"
        )),
        None => Ok(()),
    }
}

/// What a data plane says about itself when it connects.
#[derive(Clone, Debug)]
pub struct Hello {
    pub id: String,
    pub kind: NodeKind,
    pub hostname: String,
    pub version: String,
    pub ip: Option<String>,
}

pub struct Nodes {
    store: Arc<Store>,
    /// control plane id → node id → node.
    nodes: Mutex<BTreeMap<String, BTreeMap<String, Node>>>,
}

impl Nodes {
    /// Loads what the store remembers; every node starts disconnected until it comes back.
    pub fn load(store: Arc<Store>) -> Result<Nodes, String> {
        let mut nodes: BTreeMap<String, BTreeMap<String, Node>> = BTreeMap::new();
        for (control_plane_id, mut node) in store.load_nodes()? {
            node.connected = false;
            nodes
                .entry(control_plane_id)
                .or_default()
                .insert(node.id.clone(), node);
        }
        Ok(Nodes {
            store,
            nodes: Mutex::new(nodes),
        })
    }

    fn update(&self, control_plane_id: &str, id: &str, persist: bool, f: impl FnOnce(&mut Node)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = nodes.get_mut(control_plane_id).and_then(|n| n.get_mut(id)) else {
            return;
        };
        f(node);
        node.last_ping = now();
        if persist {
            node.updated_at = node.last_ping;
            if let Err(e) = self.store.save_node(control_plane_id, node) {
                log::warn!("saving node {id} of control plane {control_plane_id}: {e}");
            }
        }
    }

    /// A data plane connected (or reconnected) and introduced itself.
    pub fn connected(&self, control_plane_id: &str, hello: Hello) {
        let now = now();
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let entry = nodes
                .entry(control_plane_id.to_owned())
                .or_default()
                .entry(hello.id.clone())
                .or_insert_with(|| Node {
                    id: hello.id.clone(),
                    kind: hello.kind,
                    hostname: String::new(),
                    version: String::new(),
                    ip: None,
                    connected: true,
                    last_ping: now,
                    config_hash: None,
                    config_version: None,
                    last_error: None,
                    created_at: now,
                    updated_at: now,
                });
            entry.kind = hello.kind;
            entry.hostname = hello.hostname;
            entry.version = hello.version;
            entry.ip = hello.ip;
            entry.connected = true;
        }
        self.update(control_plane_id, &hello.id, true, |_| {});
    }

    /// A sign of life, with the hash the data plane says it runs (when it says one).
    pub fn pinged(&self, control_plane_id: &str, id: &str, config_hash: Option<&str>) {
        self.update(control_plane_id, id, false, |node| {
            if let Some(hash) = config_hash {
                node.config_hash = Some(hash.to_owned());
            }
        });
    }

    /// The data plane runs `version` now.
    pub fn applied(&self, control_plane_id: &str, id: &str, version: u64, hash: &str) {
        self.update(control_plane_id, id, true, |node| {
            node.config_version = Some(version);
            node.config_hash = Some(hash.to_owned());
        });
    }

    /// The data plane refused `version` and keeps running what it ran before.
    pub fn rejected(
        &self,
        control_plane_id: &str,
        id: &str,
        version: u64,
        hash: &str,
        message: &str,
    ) {
        self.update(control_plane_id, id, true, |node| {
            node.last_error = Some(NodeError {
                config_version: version,
                config_hash: hash.to_owned(),
                message: message.to_owned(),
                at: now(),
            });
        });
    }

    pub fn disconnected(&self, control_plane_id: &str, id: &str) {
        self.update(control_plane_id, id, true, |node| node.connected = false);
    }

    pub fn list(&self, control_plane_id: &str) -> Vec<Node> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(control_plane_id)
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, control_plane_id: &str, id: &str) -> Option<Node> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(control_plane_id)?.get(id).cloned()
    }

    /// Forgets a node (`DELETE .../nodes/{id}`); it reappears if it connects again.
    pub fn remove(&self, control_plane_id: &str, id: &str) -> Result<bool, String> {
        let removed = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes
                .get_mut(control_plane_id)
                .and_then(|n| n.remove(id))
                .is_some()
        };
        self.store.delete_node(control_plane_id, id)?;
        Ok(removed)
    }

    /// Forgets every node of a deleted control plane (the store cascades on its own).
    pub fn remove_control_plane(&self, control_plane_id: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.remove(control_plane_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(connected: bool, running: Option<&str>, error_for: Option<&str>) -> Node {
        Node {
            id: "n".into(),
            kind: NodeKind::Gateway,
            hostname: "h".into(),
            version: "1".into(),
            ip: None,
            connected,
            last_ping: 0,
            config_hash: running.map(str::to_owned),
            config_version: None,
            last_error: error_for.map(|hash| NodeError {
                config_version: 2,
                config_hash: hash.to_owned(),
                message: "refused".into(),
                at: 0,
            }),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn sync_status_against_the_expected_hash() {
        let cases = [
            // (connected, running, last error for, expected) → status
            (true, Some("a"), None, Some("a"), "in_sync"),
            (true, Some("a"), Some("b"), Some("a"), "in_sync"),
            (true, Some("a"), None, Some("b"), "pending"),
            (true, None, None, Some("b"), "pending"),
            (true, Some("a"), Some("old"), Some("b"), "pending"),
            (true, Some("a"), Some("b"), Some("b"), "failed"),
            (true, None, Some("b"), Some("b"), "failed"),
            (true, Some("a"), None, None, "pending"),
            (false, Some("a"), None, Some("a"), "disconnected"),
            (false, Some("a"), Some("b"), Some("b"), "disconnected"),
            (false, None, None, None, "disconnected"),
        ];
        for (connected, running, error_for, expected, status) in cases {
            assert_eq!(
                node(connected, running, error_for).sync_status(expected),
                status,
                "connected {connected}, running {running:?}, error for {error_for:?}, \
                 expected {expected:?}"
            );
        }
    }

    fn hello(id: &str, hostname: &str) -> Hello {
        Hello {
            id: id.into(),
            kind: NodeKind::Envoy,
            hostname: hostname.into(),
            version: "1.40".into(),
            ip: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn nodes_record_each_event_and_survive_a_restart_disconnected() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        store
            .transaction(|tx| {
                tx.execute(
                    "INSERT INTO control_planes (id, name, doc, created_at, updated_at)
                     VALUES ('cp', 'cp', '{}', 0, 0)",
                    [],
                )
                .map(|_| ())
                .map_err(crate::store::StoreError::from)
            })
            .expect("control plane");
        let nodes = Nodes::load(Arc::clone(&store)).expect("load");
        let before = now();
        nodes.connected("cp", hello("n1", "first"));
        nodes.connected("cp", hello("n1", "renamed"));
        nodes.pinged("cp", "n1", Some("h0"));
        nodes.applied("cp", "n1", 3, "h3");
        nodes.rejected("cp", "n1", 4, "h4", "no");
        nodes.pinged("cp", "unknown", Some("x"));
        let n1 = nodes.get("cp", "n1").expect("n1");
        assert_eq!(n1.hostname, "renamed");
        assert_eq!(n1.version, "1.40");
        assert_eq!(n1.kind, NodeKind::Envoy);
        assert!(n1.connected);
        assert_eq!(n1.config_version, Some(3));
        assert_eq!(n1.config_hash.as_deref(), Some("h3"));
        let error = n1.last_error.clone().expect("error");
        assert_eq!(
            (
                error.config_version,
                error.config_hash.as_str(),
                error.message.as_str()
            ),
            (4, "h4", "no")
        );
        assert!(n1.last_ping >= before && n1.created_at >= before);
        assert_eq!(n1.sync_status(Some("h4")), "failed");
        assert_eq!(nodes.list("cp").len(), 1, "only nodes that said hello");
        assert!(nodes.list("other").is_empty());

        // Still connected when the process stops: loaded again, it is disconnected, with
        // what it last reported.
        let again = Nodes::load(Arc::clone(&store)).expect("reload");
        let restored = again.get("cp", "n1").expect("restored");
        assert!(!restored.connected);
        assert_eq!(restored.hostname, "renamed");
        assert_eq!(restored.config_version, Some(3));
        assert_eq!(restored.last_error, n1.last_error);
        assert_eq!(restored.sync_status(Some("h3")), "disconnected");

        nodes.disconnected("cp", "n1");
        assert!(!nodes.get("cp", "n1").expect("n1").connected);
        assert!(nodes.remove("cp", "n1").expect("remove"));
        assert!(!nodes.remove("cp", "n1").expect("remove again"));
        assert!(Nodes::load(store).expect("load").get("cp", "n1").is_none());
    }

    #[test]
    fn what_a_data_plane_reports_is_bounded_printable_ascii() {
        let at_most = "a".repeat(MAX_HOSTNAME);
        assert_eq!(check_reported("hostname", &at_most, MAX_HOSTNAME), Ok(()));
        assert_eq!(check_reported("v", " ~", MAX_VERSION), Ok(()));
        assert_eq!(
            check_reported("hostname", &format!("{at_most}a"), MAX_HOSTNAME),
            Err("hostname is 254 bytes long; at most 253 are accepted".into())
        );
        for (value, byte) in [
            ("a\u{1b}[2J", "0x1b"),
            ("tab\t", "0x09"),
            ("é", "0xc3"),
            ("\u{7f}", "0x7f"),
        ] {
            let refused = check_reported("node_id", value, MAX_NODE_ID).unwrap_err();
            assert_eq!(
                refused,
                format!("node_id has the byte {byte}; only printable ASCII is accepted")
            );
        }
    }
}
