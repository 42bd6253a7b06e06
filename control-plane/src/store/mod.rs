//! Embedded storage: one SQLite file in the data directory (WAL, `synchronous=FULL`, so an
//! answer with a 2xx means the change is on disk), schema migrations by `user_version`.
//!
//! Entities are stored as their JSON documents with the columns the API filters, joins and
//! keeps unique on (names, references, the plugin's scope).

pub mod entities;
mod migrations;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

pub use entities::{EntityKind, StoredEntity};

use crate::nodes::Node;

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

pub struct Store {
    connection: Mutex<Connection>,
    data_dir: std::path::PathBuf,
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
        Ok(Store {
            connection: Mutex::new(connection),
            data_dir: data_dir.to_path_buf(),
        })
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
        let tx = connection
            .transaction()
            .map_err(|e| E::from(StoreError::from(e)))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| E::from(StoreError::from(e)))?;
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
    pub fn pinned_control_planes(&self, fingerprint: &str) -> Result<Vec<String>, String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            let mut statement = tx.prepare_cached(
                "SELECT DISTINCT control_plane_id FROM dp_client_certificates
                 WHERE fingerprint = ?1 ORDER BY control_plane_id",
            )?;
            let rows = statement.query_map([fingerprint], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .map_err(|e| e.to_string())
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

    pub fn save_node(&self, control_plane_id: &str, node: &Node) -> Result<(), String> {
        let doc = serde_json::to_string(node).map_err(|e| e.to_string())?;
        self.transaction(|tx| -> Result<_, StoreError> {
            // The control plane may have been deleted meanwhile: nothing to remember then.
            tx.execute(
                "INSERT INTO nodes (control_plane_id, id, doc)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM control_planes WHERE id = ?1)
                 ON CONFLICT (control_plane_id, id) DO UPDATE SET doc = excluded.doc",
                params![control_plane_id, node.id, doc],
            )?;
            Ok(())
        })
        .map_err(|e| e.to_string())
    }

    pub fn delete_node(&self, control_plane_id: &str, id: &str) -> Result<(), String> {
        self.transaction(|tx| -> Result<_, StoreError> {
            tx.execute(
                "DELETE FROM nodes WHERE control_plane_id = ?1 AND id = ?2",
                [control_plane_id, id],
            )?;
            Ok(())
        })
        .map_err(|e| e.to_string())
    }
}
