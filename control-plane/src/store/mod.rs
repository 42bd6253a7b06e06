//! Embedded storage: one SQLite file in the data directory (WAL, `synchronous=FULL`, so an
//! answer with a 2xx means the change is on disk), schema migrations by `user_version`.
//!
//! Entities are stored as their JSON documents with the columns the API filters, joins and
//! keeps unique on (names, references, the plugin's scope).

pub mod custom_domains;
pub mod entities;
mod migrations;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

pub use entities::{EntityKind, StoredEntity};

use crate::nodes::Node;
use crate::trust::{Pins, Trust};

const PINS_TABLE: &str = "dp_client_certificates";

/// Pins a data plane certificate (PEM, with its fingerprint) for a control plane, under `id`.
pub fn pin_certificate(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    control_plane_id: &str,
    cert_pem: &str,
    fingerprint: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO dp_client_certificates
         (id, control_plane_id, cert, fingerprint, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, control_plane_id, cert_pem, fingerprint, now],
    )?;
    Ok(())
}

/// Errors the API turns into Kong's error bodies.
#[derive(Debug)]
pub enum StoreError {
    NotFound,
    /// A unique constraint; the text names the fields, as Kong's message does.
    Unique(String),
    /// Something still references the entity (Kong's "foreign key violation").
    Referenced(&'static str),
    Database(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Unique(what) => write!(f, "UNIQUE violation detected on '{what}'"),
            StoreError::Referenced(by) => write!(f, "an existing '{by}' entity references it"),
            StoreError::Database(e) => write!(f, "database: {e}"),
        }
    }
}

fn read_pins(connection: &Connection) -> rusqlite::Result<Pins> {
    let mut statement = connection
        .prepare_cached("SELECT fingerprint, control_plane_id FROM dp_client_certificates")?;
    let mut pins = Pins::new();
    for row in statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
        let (fingerprint, control_plane_id) = row?;
        pins.entry(fingerprint)
            .or_default()
            .insert(control_plane_id);
    }
    Ok(pins)
}

/// The database file, created 0600 before SQLite opens it (SQLite gives its WAL and shared
/// memory files the database's mode), or made 0600 if an earlier version made it readable.
fn make_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    for file in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{file}", path.display()));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("making {} private: {e}", file.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

pub struct Store {
    connection: Mutex<Connection>,
    data_dir: std::path::PathBuf,
    trust: Arc<Trust>,
    /// Set by SQLite when a statement of the open transaction writes a pin (cascades
    /// included), so the snapshot is replaced after that commit and only then.
    pins_written: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) `control-plane.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        let path = data_dir.join("control-plane.db");
        make_private(&path)?;
        let connection =
            Connection::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(|e| format!("configuring {}: {e}", path.display()))?;
        let mut connection = connection;
        migrations::migrate(&mut connection)
            .map_err(|e| format!("migrating {}: {e}", path.display()))?;
        let pins_written = Arc::new(AtomicBool::new(false));
        let written = Arc::clone(&pins_written);
        connection.update_hook(Some(
            move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
                if table == PINS_TABLE {
                    written.store(true, Ordering::Relaxed);
                }
            },
        ));
        let trust = Arc::new(Trust::default());
        trust.replace(
            read_pins(&connection).map_err(|e| format!("reading {}: {e}", path.display()))?,
        );
        Ok(Store {
            connection: Mutex::new(connection),
            data_dir: data_dir.to_path_buf(),
            trust,
            pins_written,
        })
    }

    /// The pinned certificates, in memory, and the sessions relying on them.
    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `f` in one transaction: all of it is committed, or none of it.
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        self.pins_written.store(false, Ordering::Relaxed);
        let tx = connection
            .transaction()
            .map_err(|e| E::from(StoreError::from(e)))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| E::from(StoreError::from(e)))?;
        if self.pins_written.swap(false, Ordering::Relaxed) {
            // Still under the connection's lock: snapshots are replaced in commit order.
            match read_pins(&connection) {
                Ok(pins) => self.trust.replace(pins),
                // The commit stands; the old snapshot errs on the side of the pins it had,
                // and the next pin change retries.
                Err(e) => log::error!("reloading pinned certificates after a commit: {e}"),
            }
        }
        Ok(value)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            Ok(tx
                .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .map_err(|e| e.to_string())
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )?;
            Ok(())
        })
        .map_err(|e| e.to_string())
    }

    /// The control planes a client certificate (by fingerprint) is pinned for.
    pub fn pinned_control_planes(&self, fingerprint: &str) -> Vec<String> {
        self.trust.control_planes(fingerprint)
    }

    /// Every stored config version's latest per control plane: (id, version, text, created_at).
    pub fn latest_versions(&self) -> Result<Vec<(String, u64, String, i64)>, String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            let mut statement = tx.prepare(
                "SELECT v.control_plane_id, v.version, v.document, v.created_at
                 FROM config_versions v
                 WHERE v.version = (SELECT MAX(version) FROM config_versions
                                    WHERE control_plane_id = v.control_plane_id)",
            )?;
            let rows = statement.query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .map_err(|e| e.to_string())
    }

    pub fn load_nodes(&self) -> Result<Vec<(String, Node)>, String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            let mut statement = tx.prepare("SELECT control_plane_id, doc FROM nodes")?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))?;
            let mut nodes = Vec::new();
            for row in rows {
                let (control_plane_id, doc) = row?;
                match serde_json::from_str(&doc) {
                    Ok(node) => nodes.push((control_plane_id, node)),
                    Err(e) => log::warn!("skipping a stored node that does not parse: {e}"),
                }
            }
            Ok(nodes)
        })
        .map_err(|e| e.to_string())
    }

    /// Saves data plane states in one transaction: `Some` upserts the node, `None` deletes it.
    pub fn save_nodes(&self, batch: &[(String, String, Option<Node>)]) -> Result<(), String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            for (control_plane_id, id, node) in batch {
                match node {
                    // The control plane may have been deleted meanwhile: nothing to remember
                    // then.
                    Some(node) => {
                        let doc = serde_json::to_string(node)
                            .map_err(|e| StoreError::Database(e.to_string()))?;
                        tx.prepare_cached(
                            "INSERT INTO nodes (control_plane_id, id, doc)
                             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM control_planes WHERE id = ?1)
                             ON CONFLICT (control_plane_id, id) DO UPDATE SET doc = excluded.doc",
                        )?
                        .execute(params![control_plane_id, id, doc])?;
                    }
                    None => {
                        tx.prepare_cached(
                            "DELETE FROM nodes WHERE control_plane_id = ?1 AND id = ?2",
                        )?
                        .execute([control_plane_id, id])?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
    }
}

/// A bare control plane row (named by its id), for the tests of what hangs off one.
#[cfg(test)]
impl Store {
    pub(crate) fn insert_test_control_plane(&self, id: &str) {
        self.transaction(|tx| -> Result<(), StoreError> {
            tx.execute(
                "INSERT INTO control_planes (id, name, doc, created_at, updated_at)
                 VALUES (?1, ?1, '{}', 0, 0)",
                [id],
            )?;
            Ok(())
        })
        .expect("control plane");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(store: &Store, control_plane_id: &str, node: Node) -> Result<(), String> {
        store.save_nodes(&[(control_plane_id.to_owned(), node.id.clone(), Some(node))])
    }

    fn delete(store: &Store, control_plane_id: &str, id: &str) -> Result<(), String> {
        store.save_nodes(&[(control_plane_id.to_owned(), id.to_owned(), None)])
    }
    use crate::nodes::NodeKind;
    use serde_json::json;

    fn version(store: &Store, cp: &str, version: i64, document: &str) {
        store
            .transaction(|tx| -> Result<(), StoreError> {
                tx.execute(
                    "INSERT INTO config_versions
                     (control_plane_id, version, hash, document, created_at)
                     VALUES (?1, ?2, 'h', ?3, ?2)",
                    params![cp, version, document],
                )?;
                Ok(())
            })
            .expect("version");
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            kind: NodeKind::Gateway,
            hostname: "host".into(),
            version: "1".into(),
            ip: None,
            connected: true,
            last_ping: 1,
            config_hash: Some("h".into()),
            config_version: Some(1),
            last_error: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn count(store: &Store, sql: &str) -> i64 {
        store
            .transaction(|tx| -> Result<i64, StoreError> {
                Ok(tx.query_row(sql, [], |r| r.get(0))?)
            })
            .expect(sql)
    }

    #[test]
    fn commits_are_durable_and_a_reopened_store_sees_every_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.data_dir(), dir.path());
        let pragma = |store: &Store, name: &str| -> String {
            store
                .transaction(|tx| -> Result<String, StoreError> {
                    Ok(tx.query_row(&format!("PRAGMA {name}"), [], |r| {
                        r.get::<_, rusqlite::types::Value>(0).map(|v| match v {
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                    })?)
                })
                .expect(name)
        };
        // What a 2xx promises: WAL with a sync at every commit (FULL = 2), and the
        // references (control plane deletes cascade) enforced.
        assert_eq!(pragma(&store, "journal_mode"), "wal");
        assert_eq!(pragma(&store, "synchronous"), "2");
        assert_eq!(pragma(&store, "foreign_keys"), "1");
        assert_eq!(pragma(&store, "user_version"), "3");

        store.insert_test_control_plane("cp");
        store
            .transaction(|tx| {
                entities::insert(
                    tx,
                    "cp",
                    EntityKind::Services,
                    &json!({ "id": "s1", "name": "echo", "host": "h" }),
                )
            })
            .expect("service");
        version(&store, "cp", 1, "{}");
        store.set_setting("token", "t").expect("setting");
        save(&store, "cp", node("n1")).expect("node");
        // Not dropped: the first connection is still open, as in a crash.
        let again = Store::open(dir.path()).expect("reopen, migrations not run twice");
        assert_eq!(pragma(&again, "synchronous"), "2", "every connection");
        assert_eq!(pragma(&again, "user_version"), "3");
        let service = again
            .transaction(|tx| entities::get(tx, "cp", EntityKind::Services, "echo"))
            .expect("get")
            .expect("the service");
        assert_eq!(service.id, "s1");
        assert_eq!(again.latest_versions().expect("versions").len(), 1);
        assert_eq!(again.setting("token").expect("token").as_deref(), Some("t"));
        let nodes = again.load_nodes().expect("nodes");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].0, "cp");
        assert_eq!(nodes[0].1.id, "n1");
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_test_control_plane("cp");
        let error = store
            .transaction(|tx| -> Result<(), StoreError> {
                entities::insert(
                    tx,
                    "cp",
                    EntityKind::Services,
                    &json!({ "id": "s1", "name": "a" }),
                )?;
                // The second one collides: the first one must not stay.
                entities::insert(
                    tx,
                    "cp",
                    EntityKind::Services,
                    &json!({ "id": "s2", "name": "a" }),
                )
            })
            .expect_err("a unique violation");
        assert!(matches!(error, StoreError::Unique(_)), "{error:?}");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM entities"), 0);
        // A poisoned lock (a panic inside a transaction) does not stop the store.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.transaction(|_| -> Result<(), StoreError> { panic!("inside") });
        }));
        assert!(panicked.is_err());
        store.set_setting("k", "v").expect("after a panic");
        assert_eq!(store.setting("k").expect("k").as_deref(), Some("v"));
    }

    #[test]
    fn settings_are_upserted() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.setting("k").expect("none"), None);
        store.set_setting("k", "1").expect("set");
        store.set_setting("k", "2").expect("overwrite");
        store.set_setting("j", "3").expect("another");
        assert_eq!(store.setting("k").expect("k").as_deref(), Some("2"));
        assert_eq!(store.setting("j").expect("j").as_deref(), Some("3"));
    }

    #[test]
    fn a_certificate_pinned_twice_lists_each_control_plane_once_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        for cp in ["b", "a", "c"] {
            store.insert_test_control_plane(cp);
        }
        store
            .transaction(|tx| {
                pin_certificate(tx, "1", "b", "PEM", "f1", 0)?;
                pin_certificate(tx, "2", "a", "PEM", "f1", 0)?;
                pin_certificate(tx, "3", "b", "PEM", "f1", 0)?;
                pin_certificate(tx, "4", "c", "PEM", "f2", 0)
            })
            .expect("pins");
        assert_eq!(store.pinned_control_planes("f1"), ["a", "b"]);
        assert_eq!(store.pinned_control_planes("f2"), ["c"]);
        assert!(store.pinned_control_planes("f3").is_empty());
        let unknown = store.transaction(|tx| pin_certificate(tx, "5", "nope", "PEM", "f1", 0));
        assert!(
            matches!(unknown, Err(StoreError::Database(ref m)) if m.contains("FOREIGN KEY")),
            "pinning for no control plane: {unknown:?}"
        );
    }

    #[test]
    fn the_latest_version_of_each_control_plane_is_restored() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_test_control_plane("a");
        store.insert_test_control_plane("b");
        store.insert_test_control_plane("empty");
        version(&store, "a", 1, "a1");
        version(&store, "a", 3, "a3");
        version(&store, "a", 2, "a2");
        version(&store, "b", 7, "b7");
        let mut latest = store.latest_versions().expect("latest");
        latest.sort();
        assert_eq!(
            latest,
            [
                ("a".to_owned(), 3, "a3".to_owned(), 3),
                ("b".to_owned(), 7, "b7".to_owned(), 7)
            ]
        );
    }

    #[test]
    fn nodes_are_upserted_and_only_for_a_control_plane_that_exists() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_test_control_plane("cp");
        save(&store, "cp", node("n1")).expect("save");
        let mut renamed = node("n1");
        renamed.hostname = "renamed".into();
        save(&store, "cp", renamed).expect("update");
        save(&store, "gone", node("n2")).expect("a deleted control plane is not an error");
        let nodes = store.load_nodes().expect("load");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].1.hostname, "renamed");
        // A row that does not parse is skipped, not fatal.
        store
            .transaction(|tx| -> Result<(), StoreError> {
                tx.execute(
                    "INSERT INTO nodes (control_plane_id, id, doc) VALUES ('cp', 'bad', '[')",
                    [],
                )?;
                Ok(())
            })
            .expect("raw");
        assert_eq!(store.load_nodes().expect("load").len(), 1);
        delete(&store, "cp", "n1").expect("delete");
        delete(&store, "cp", "n1").expect("delete again");
        assert!(store
            .load_nodes()
            .expect("load")
            .iter()
            .all(|(_, n)| n.id != "n1"));
    }

    #[test]
    fn deleting_a_control_plane_cascades_to_everything_it_owns() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        store.insert_test_control_plane("cp");
        store.insert_test_control_plane("kept");
        for cp in ["cp", "kept"] {
            store
                .transaction(|tx| {
                    entities::insert(
                        tx,
                        cp,
                        EntityKind::Services,
                        &json!({ "id": "s1", "name": "echo" }),
                    )?;
                    pin_certificate(tx, &format!("pin-{cp}"), cp, "PEM", cp, 0)
                })
                .expect("entities");
            version(&store, cp, 1, "{}");
            save(&store, cp, node("n1")).expect("node");
        }
        assert_eq!(store.pinned_control_planes("cp"), ["cp"]);
        store
            .transaction(|tx| -> Result<(), StoreError> {
                tx.execute(
                    "INSERT INTO cloud_gateways (id, control_plane_id, doc, created_at, updated_at)
                     VALUES ('g', 'cp', '{}', 0, 0)",
                    [],
                )?;
                tx.execute("DELETE FROM control_planes WHERE id = 'cp'", [])?;
                Ok(())
            })
            .expect("delete");
        for table in [
            "entities",
            "dp_client_certificates",
            "config_versions",
            "nodes",
        ] {
            assert_eq!(
                count(
                    &store,
                    &format!("SELECT COUNT(*) FROM {table} WHERE control_plane_id = 'cp'")
                ),
                0,
                "{table}"
            );
            assert_eq!(
                count(
                    &store,
                    &format!("SELECT COUNT(*) FROM {table} WHERE control_plane_id = 'kept'")
                ),
                1,
                "{table}"
            );
        }
        assert_eq!(count(&store, "SELECT COUNT(*) FROM cloud_gateways"), 0);
        assert!(
            store.pinned_control_planes("cp").is_empty(),
            "the cascade reaches the verifier's snapshot"
        );
        assert_eq!(store.pinned_control_planes("kept"), ["kept"]);
    }

    #[test]
    fn store_errors_read_like_kongs_messages() {
        assert_eq!(StoreError::NotFound.to_string(), "not found");
        assert_eq!(
            StoreError::Unique("{name=\"a\"}".into()).to_string(),
            "UNIQUE violation detected on '{name=\"a\"}'"
        );
        assert_eq!(
            StoreError::Referenced("routes").to_string(),
            "an existing 'routes' entity references it"
        );
        assert!(matches!(
            StoreError::from(rusqlite::Error::QueryReturnedNoRows),
            StoreError::NotFound
        ));
    }

    #[test]
    fn a_directory_that_cannot_hold_the_database_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("no").join("such");
        let error = Store::open(&missing).expect_err("no directory");
        assert!(
            error.starts_with(&format!(
                "opening {}: ",
                missing.join("control-plane.db").display()
            )),
            "{error}"
        );
    }
}
