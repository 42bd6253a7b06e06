//! Schema versions, applied in order and recorded in `PRAGMA user_version`. Append only:
//! a released migration never changes.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: control planes, their entities, pinned certificates, config versions, nodes, cloud
    // gateway configurations.
    "CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE control_planes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        doc TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE entities (
        control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT,
        plugin TEXT,
        service_id TEXT,
        route_id TEXT,
        doc TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (control_plane_id, kind, id)
    );
    CREATE UNIQUE INDEX entities_name ON entities (control_plane_id, kind, name)
        WHERE name IS NOT NULL;
    CREATE UNIQUE INDEX plugins_scope ON entities
        (control_plane_id, plugin, ifnull(service_id, ''), ifnull(route_id, ''))
        WHERE kind = 'plugins';
    CREATE INDEX entities_service ON entities (control_plane_id, service_id);
    CREATE INDEX entities_route ON entities (control_plane_id, route_id);
    CREATE TABLE dp_client_certificates (
        id TEXT PRIMARY KEY,
        control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
        cert TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX dp_client_certificates_fingerprint ON dp_client_certificates (fingerprint);
    CREATE TABLE config_versions (
        control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        document TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (control_plane_id, version)
    );
    CREATE TABLE nodes (
        control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (control_plane_id, id)
    );
    CREATE TABLE cloud_gateways (
        id TEXT PRIMARY KEY,
        control_plane_id TEXT NOT NULL UNIQUE REFERENCES control_planes (id) ON DELETE CASCADE,
        doc TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
];

pub fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    let applied: usize = connection.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = connection.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}
