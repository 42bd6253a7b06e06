//! The data planes of every control plane: who connected, what they run, and why not when
//! they do not run the expected version. Kept in memory; every change of state (not every
//! ping) is saved by a writer thread in batches, so `/nodes` survives a restart while the
//! async workers never wait for the disk, and a data plane repeating itself costs at most
//! one write per interval. Bounded per control plane, and purged as Kong purges them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

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

pub use model::sync::{check_reported, MAX_ERROR_MESSAGE, MAX_HOSTNAME, MAX_NODE_ID, MAX_VERSION};

/// What a data plane says about itself when it connects.
#[derive(Clone, Debug)]
pub struct Hello {
    pub id: String,
    pub kind: NodeKind,
    pub hostname: String,
    pub version: String,
    pub ip: Option<String>,
}

/// The most data planes one control plane keeps records of. A new one beyond it takes the
/// place of the one disconnected longest; with every one connected, it is refused.
pub const MAX_NODES: usize = 1024;

/// Kong's `cluster_data_plane_purge_delay` default: a data plane disconnected this long (in
/// seconds) is forgotten.
pub const PURGE_DELAY: i64 = 14 * 24 * 3600;

/// How often the writer saves what changed: node states are soft state, and a data plane
/// that repeats a report (a NACK loop, a reconnect loop) costs one write per interval.
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

pub struct Nodes {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    store: Arc<Store>,
    registry: Mutex<Registry>,
    changed: Condvar,
    /// One batch at a time: a later state is never overwritten by an earlier batch.
    writing: Mutex<()>,
}

#[derive(Default)]
struct Registry {
    /// control plane id → node id → node.
    nodes: BTreeMap<String, BTreeMap<String, Node>>,
    /// Changed since the writer last saved them (a removed node is deleted by it).
    dirty: BTreeSet<(String, String)>,
    closing: bool,
}

impl Nodes {
    /// Loads what the store remembers, forgetting nodes past the purge delay; every node
    /// starts disconnected until it comes back. A writer thread saves changes from then on,
    /// so no state change waits for the disk on the async workers.
    pub fn load(store: Arc<Store>) -> Result<Nodes, String> {
        let mut registry = Registry::default();
        for (control_plane_id, mut node) in store.load_nodes()? {
            node.connected = false;
            registry
                .nodes
                .entry(control_plane_id)
                .or_default()
                .insert(node.id.clone(), node);
        }
        registry.purge(now() - PURGE_DELAY);
        let shared = Arc::new(Shared {
            store,
            registry: Mutex::new(registry),
            changed: Condvar::new(),
            writing: Mutex::new(()),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("node-writer".into())
                .spawn(move || shared.write_until_closed())
                .map_err(|e| format!("starting the node writer: {e}"))?
        };
        Ok(Nodes {
            shared,
            writer: Some(writer),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.shared.registry()
    }

    /// Whether a data plane may connect as `id`: a known node always may; a new one while
    /// the control plane has [`MAX_NODES`] takes the place of the one disconnected longest,
    /// or is refused when every one is connected.
    pub fn admit(&self, control_plane_id: &str, id: &str) -> Result<(), String> {
        let mut registry = self.registry();
        let Some(nodes) = registry.nodes.get_mut(control_plane_id) else {
            return Ok(());
        };
        if nodes.contains_key(id) || nodes.len() < MAX_NODES {
            return Ok(());
        }
        let oldest = nodes
            .values()
            .filter(|n| !n.connected)
            .min_by_key(|n| n.last_ping)
            .map(|n| n.id.clone());
        let Some(oldest) = oldest else {
            return Err(format!(
                "control plane {control_plane_id} has {MAX_NODES} connected data planes, its limit"
            ));
        };
        nodes.remove(&oldest);
        registry.mark((control_plane_id, &oldest));
        self.shared.changed.notify_one();
        Ok(())
    }

    fn update(&self, control_plane_id: &str, id: &str, persist: bool, f: impl FnOnce(&mut Node)) {
        let mut registry = self.registry();
        let Some(node) = registry
            .nodes
            .get_mut(control_plane_id)
            .and_then(|n| n.get_mut(id))
        else {
            return;
        };
        f(node);
        node.last_ping = now();
        if persist {
            node.updated_at = node.last_ping;
            registry.mark((control_plane_id, id));
            self.shared.changed.notify_one();
        }
    }

    /// A data plane connected (or reconnected) and introduced itself.
    pub fn connected(&self, control_plane_id: &str, hello: Hello) {
        let now = now();
        {
            let mut registry = self.registry();
            let entry = registry
                .nodes
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

    /// The data plane refused `version` and keeps running what it ran before. Its message is
    /// the data plane's own text: kept to [`MAX_ERROR_MESSAGE`] bytes, and logged escaped,
    /// once per version (a data plane repeating its refusal writes no more lines).
    pub fn rejected(
        &self,
        control_plane_id: &str,
        id: &str,
        version: u64,
        hash: &str,
        message: &str,
    ) {
        let mut end = message.len().min(MAX_ERROR_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let mut repeated = false;
        self.update(control_plane_id, id, true, |node| {
            repeated = node
                .last_error
                .as_ref()
                .is_some_and(|e| e.config_hash == hash && e.message == message);
            node.last_error = Some(NodeError {
                config_version: version,
                config_hash: hash.to_owned(),
                message: message.to_owned(),
                at: now(),
            });
        });
        if !repeated {
            log::warn!(
                "data plane {id} of control plane {control_plane_id} refused version {version}: {}",
                message.escape_debug()
            );
        }
    }

    pub fn disconnected(&self, control_plane_id: &str, id: &str) {
        self.update(control_plane_id, id, true, |node| node.connected = false);
    }

    /// Up to `size` nodes in id order, after the id `after`; and how many there are in all.
    pub fn page(
        &self,
        control_plane_id: &str,
        after: Option<&str>,
        size: usize,
    ) -> (Vec<Node>, usize) {
        let registry = self.registry();
        let Some(nodes) = registry.nodes.get(control_plane_id) else {
            return (Vec::new(), 0);
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Unbounded,
        };
        let page = nodes
            .range((from, std::ops::Bound::Unbounded))
            .take(size)
            .map(|(_, node)| node.clone())
            .collect();
        (page, nodes.len())
    }

    pub fn get(&self, control_plane_id: &str, id: &str) -> Option<Node> {
        self.registry()
            .nodes
            .get(control_plane_id)?
            .get(id)
            .cloned()
    }

    /// Forgets a node (`DELETE .../nodes/{id}`); it reappears if it connects again.
    pub fn remove(&self, control_plane_id: &str, id: &str) -> bool {
        let mut registry = self.registry();
        let removed = registry
            .nodes
            .get_mut(control_plane_id)
            .and_then(|n| n.remove(id))
            .is_some();
        registry.mark((control_plane_id, id));
        self.shared.changed.notify_one();
        removed
    }

    /// Forgets every node of a deleted control plane (the store cascades on its own).
    pub fn remove_control_plane(&self, control_plane_id: &str) {
        let mut registry = self.registry();
        registry.nodes.remove(control_plane_id);
        registry.dirty.retain(|(cp, _)| cp != control_plane_id);
    }

    /// Saves every change made so far, now.
    pub fn flush(&self) {
        self.shared.write_changes();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.registry().closing = true;
        self.shared.changed.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Registry {
    fn mark(&mut self, (control_plane_id, id): (&str, &str)) {
        self.dirty
            .insert((control_plane_id.to_owned(), id.to_owned()));
    }

    /// Forgets the nodes disconnected since before `cutoff` (Unix seconds).
    fn purge(&mut self, cutoff: i64) {
        let mut purged = Vec::new();
        for (control_plane_id, nodes) in &mut self.nodes {
            nodes.retain(|id, node| {
                let keep = node.connected || node.last_ping >= cutoff;
                if !keep {
                    purged.push((control_plane_id.clone(), id.clone()));
                }
                keep
            });
        }
        self.dirty.extend(purged);
    }
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_until_closed(&self) {
        let mut purged_at = now();
        loop {
            {
                let mut registry = self.registry();
                while registry.dirty.is_empty() && !registry.closing {
                    let (next, _) = self
                        .changed
                        .wait_timeout(registry, std::time::Duration::from_secs(60))
                        .unwrap_or_else(|e| e.into_inner());
                    registry = next;
                    if now() - purged_at >= 60 {
                        purged_at = now();
                        registry.purge(purged_at - PURGE_DELAY);
                    }
                }
                if registry.closing && registry.dirty.is_empty() {
                    return;
                }
            }
            self.write_changes();
            std::thread::sleep(WRITE_INTERVAL);
        }
    }

    /// Writes the changed nodes (deleting the removed ones) in one transaction, off the
    /// registry's lock.
    fn write_changes(&self) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch: Vec<(String, String, Option<Node>)> = {
            let mut registry = self.registry();
            let dirty = std::mem::take(&mut registry.dirty);
            dirty
                .into_iter()
                .map(|(cp, id)| {
                    let node = registry.nodes.get(&cp).and_then(|n| n.get(&id)).cloned();
                    (cp, id, node)
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_nodes(&batch) {
            log::warn!("saving {} data plane states: {e}", batch.len());
        }
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
        assert_eq!(
            nodes.page("cp", None, usize::MAX).1,
            1,
            "only nodes that said hello"
        );
        assert!(nodes.page("other", None, usize::MAX).0.is_empty());

        // Still connected when the process stops: loaded again, it is disconnected, with
        // what it last reported.
        nodes.flush();
        let again = Nodes::load(Arc::clone(&store)).expect("reload");
        let restored = again.get("cp", "n1").expect("restored");
        assert!(!restored.connected);
        assert_eq!(restored.hostname, "renamed");
        assert_eq!(restored.config_version, Some(3));
        assert_eq!(restored.last_error, n1.last_error);
        assert_eq!(restored.sync_status(Some("h3")), "disconnected");

        nodes.disconnected("cp", "n1");
        assert!(!nodes.get("cp", "n1").expect("n1").connected);
        assert!(nodes.remove("cp", "n1"));
        assert!(!nodes.remove("cp", "n1"));
        nodes.flush();
        assert!(Nodes::load(Arc::clone(&store))
            .expect("load")
            .get("cp", "n1")
            .is_none());

        // The writer saves on its own, without a flush.
        nodes.connected("cp", hello("n2", "later"));
        let saved = wait_for(|| store.load_nodes().expect("nodes").len() == 1);
        assert!(saved, "the writer saved n2");
    }

    fn wait_for(mut check: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    fn store_with_control_plane(dir: &tempfile::TempDir) -> Arc<Store> {
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        store.insert_test_control_plane("cp");
        store
    }

    #[test]
    fn a_control_plane_keeps_at_most_max_nodes_replacing_the_longest_disconnected() {
        let dir = tempfile::tempdir().expect("dir");
        let nodes = Nodes::load(store_with_control_plane(&dir)).expect("load");
        for i in 0..MAX_NODES {
            let id = format!("n{i:04}");
            nodes.admit("cp", &id).expect("room");
            nodes.connected("cp", hello(&id, "h"));
        }
        assert_eq!(
            nodes.admit("cp", "one-more"),
            Err(format!(
                "control plane cp has {MAX_NODES} connected data planes, its limit"
            ))
        );
        nodes
            .admit("cp", "n0007")
            .expect("a known node always comes back");
        nodes.disconnected("cp", "n0003");
        nodes.disconnected("cp", "n0005");
        {
            let mut registry = nodes.registry();
            if let Some(n) = registry
                .nodes
                .get_mut("cp")
                .and_then(|n| n.get_mut("n0005"))
            {
                n.last_ping = 1;
            }
        }
        nodes.admit("cp", "one-more").expect("room made");
        nodes.connected("cp", hello("one-more", "h"));
        assert!(
            nodes.get("cp", "n0005").is_none(),
            "the longest disconnected went"
        );
        assert!(nodes.get("cp", "n0003").is_some());
        assert_eq!(nodes.page("cp", None, usize::MAX).1, MAX_NODES);
    }

    #[test]
    fn nodes_disconnected_past_the_purge_delay_are_forgotten_and_pages_follow_ids() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with_control_plane(&dir);
        let nodes = Nodes::load(Arc::clone(&store)).expect("load");
        for id in ["a", "b", "c", "d"] {
            nodes.connected("cp", hello(id, "h"));
        }
        let (page, total) = nodes.page("cp", None, 3);
        assert_eq!(total, 4);
        assert_eq!(
            page.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let (page, _) = nodes.page("cp", Some("c"), 3);
        assert_eq!(
            page.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["d"]
        );
        assert!(nodes.page("cp", Some("d"), 3).0.is_empty());

        nodes.disconnected("cp", "a");
        nodes.disconnected("cp", "b");
        {
            let mut registry = nodes.registry();
            let cp = registry.nodes.get_mut("cp").expect("cp");
            cp.get_mut("a").expect("a").last_ping = now() - PURGE_DELAY - 1;
            cp.get_mut("b").expect("b").last_ping = now() - PURGE_DELAY + 60;
            registry.dirty.insert(("cp".into(), "a".into()));
            registry.dirty.insert(("cp".into(), "b".into()));
        }
        nodes.flush();
        drop(nodes);
        let again = Nodes::load(store).expect("reload");
        assert!(again.get("cp", "a").is_none(), "purged");
        assert!(again.get("cp", "b").is_some(), "within the delay");
        assert!(again.get("cp", "c").is_some());
    }

    #[test]
    fn a_refusal_is_kept_to_its_limit_on_a_character_boundary() {
        let dir = tempfile::tempdir().expect("dir");
        let nodes = Nodes::load(store_with_control_plane(&dir)).expect("load");
        nodes.connected("cp", hello("n", "h"));
        let long = format!("a{}", "é".repeat(MAX_ERROR_MESSAGE));
        nodes.rejected("cp", "n", 1, "h1", &long);
        let kept = nodes
            .get("cp", "n")
            .expect("n")
            .last_error
            .expect("error")
            .message;
        assert_eq!(kept.len(), MAX_ERROR_MESSAGE - 1);
        assert!(long.starts_with(&kept));
    }
}
