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
    // 2: a pinned certificate's title (Konnect's DataPlaneClientCertificate has one); the
    // rows pinned before have none.
    "ALTER TABLE dp_client_certificates ADD COLUMN title TEXT;",
    // 3: custom domains (Konnect's /v2/cloud-gateways/custom-domains) with their certificate
    // and key once issued, and the HTTP-01 challenges being answered for them. A domain is
    // one control plane's (unique across all); its challenges go with it.
    "CREATE TABLE custom_domains (
        id TEXT PRIMARY KEY,
        control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
        control_plane_geo TEXT NOT NULL,
        domain TEXT NOT NULL UNIQUE,
        certificate_id TEXT NOT NULL,
        sni_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reported_status TEXT,
        reason TEXT,
        cert TEXT,
        key TEXT,
        not_after INTEGER,
        renew_at INTEGER,
        renew_failures INTEGER NOT NULL DEFAULT 0,
        authority TEXT,
        acme_directory TEXT,
        entity_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX custom_domains_control_plane ON custom_domains (control_plane_id);
    CREATE TABLE acme_challenges (
        token TEXT PRIMARY KEY,
        custom_domain_id TEXT NOT NULL REFERENCES custom_domains (id) ON DELETE CASCADE,
        control_plane_id TEXT NOT NULL,
        key_authorization TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX acme_challenges_control_plane ON acme_challenges (control_plane_id);",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of schema 1 with a pinned certificate migrates: the pin stays, without a
    /// title, and a new one can have one.
    #[test]
    fn a_pin_made_before_titles_migrates_without_one() {
        let mut connection = Connection::open_in_memory().expect("db");
        let tx = connection.transaction().expect("tx");
        tx.execute_batch(MIGRATIONS[0]).expect("schema 1");
        tx.pragma_update(None, "user_version", 1).expect("version");
        tx.execute_batch(
            "INSERT INTO control_planes VALUES ('cp', 'cp', '{}', 0, 0);
             INSERT INTO dp_client_certificates VALUES ('old', 'cp', 'PEM', 'f1', 1, 1);",
        )
        .expect("a pin");
        tx.commit().expect("commit");
        migrate(&mut connection).expect("migrate");
        let version: usize = connection
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len());
        connection
            .execute(
                "INSERT INTO dp_client_certificates VALUES ('new', 'cp', 'PEM2', 'f2', 2, 2, 't')",
                [],
            )
            .expect("a pin with a title");
        let rows: Vec<(String, Option<String>)> = connection
            .prepare("SELECT id, title FROM dp_client_certificates ORDER BY id")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [
                ("new".to_owned(), Some("t".to_owned())),
                ("old".to_owned(), None)
            ]
        );
    }
}
