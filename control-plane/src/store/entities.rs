//! Kong's core entities of a control plane (services, routes, plugins) as JSON documents,
//! with the columns that keep names and plugin scopes unique and let references be followed.
//! Every function takes the caller's transaction: a change, the config version it produces
//! and its validation commit together or not at all.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    Services,
    Routes,
    Plugins,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Services => "services",
            EntityKind::Routes => "routes",
            EntityKind::Plugins => "plugins",
        }
    }

    /// The column that is unique per control plane (plugins: `instance_name`).
    fn unique_field(self) -> &'static str {
        match self {
            EntityKind::Plugins => "instance_name",
            _ => "name",
        }
    }
}

/// One stored entity: its id and its Kong document (id, timestamps and references included).
#[derive(Clone, Debug)]
pub struct StoredEntity {
    pub id: String,
    pub doc: Value,
}

/// The `{"id": ...}` reference of a document's field, if any.
pub fn reference(doc: &Value, field: &str) -> Option<String> {
    doc.get(field)?.get("id")?.as_str().map(str::to_owned)
}

fn columns(
    kind: EntityKind,
    doc: &Value,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    let text = |field: &str| doc.get(field).and_then(Value::as_str).map(str::to_owned);
    (
        text(kind.unique_field()),
        (kind == EntityKind::Plugins)
            .then(|| text("name"))
            .flatten(),
        reference(doc, "service"),
        reference(doc, "route"),
    )
}

/// Kong's text for a unique violation: the fields and values that collide.
fn unique_violation(kind: EntityKind, doc: &Value, message: &str) -> StoreError {
    // The primary key (control plane, kind, id): a client-chosen id that is taken.
    if message.contains("entities.id") {
        let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        return StoreError::Unique(format!("{{id=\"{id}\"}}"));
    }
    if message.contains("plugins_scope")
        || (kind == EntityKind::Plugins && message.contains(".plugin"))
    {
        let reference = |field: &str| match super::entities::reference(doc, field) {
            Some(id) => format!("{{id=\"{id}\"}}"),
            None => "null".to_owned(),
        };
        let name = doc.get("name").and_then(Value::as_str).unwrap_or_default();
        return StoreError::Unique(format!(
            "{{consumer=null, name=\"{name}\", route={}, service={}}}",
            reference("route"),
            reference("service")
        ));
    }
    let field = kind.unique_field();
    let value = doc.get(field).and_then(Value::as_str).unwrap_or_default();
    StoreError::Unique(format!("{{{field}=\"{value}\"}}"))
}

fn write_error(kind: EntityKind, doc: &Value, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, Some(message))
            if f.code == rusqlite::ErrorCode::ConstraintViolation && message.contains("UNIQUE") =>
        {
            unique_violation(kind, doc, message)
        }
        _ => e.into(),
    }
}

pub fn insert(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
    doc: &Value,
) -> Result<(), StoreError> {
    let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
    let (name, plugin, service_id, route_id) = columns(kind, doc);
    let created = doc
        .get("created_at")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    let updated = doc
        .get("updated_at")
        .and_then(Value::as_i64)
        .unwrap_or(created);
    tx.execute(
        "INSERT INTO entities (control_plane_id, kind, id, name, plugin, service_id, route_id,
                               doc, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            control_plane_id,
            kind.as_str(),
            id,
            name,
            plugin,
            service_id,
            route_id,
            doc.to_string(),
            created,
            updated
        ],
    )
    .map_err(|e| write_error(kind, doc, e))?;
    Ok(())
}

pub fn replace(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
    doc: &Value,
) -> Result<(), StoreError> {
    let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
    let (name, plugin, service_id, route_id) = columns(kind, doc);
    let updated = doc
        .get("updated_at")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    let changed = tx
        .execute(
            "UPDATE entities SET name = ?4, plugin = ?5, service_id = ?6, route_id = ?7, doc = ?8,
                                 updated_at = ?9
             WHERE control_plane_id = ?1 AND kind = ?2 AND id = ?3",
            params![
                control_plane_id,
                kind.as_str(),
                id,
                name,
                plugin,
                service_id,
                route_id,
                doc.to_string(),
                updated
            ],
        )
        .map_err(|e| write_error(kind, doc, e))?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// An entity by id, or by its unique name (Kong accepts either in the URL).
pub fn get(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
    id_or_name: &str,
) -> Result<Option<StoredEntity>, StoreError> {
    let row = tx
        .query_row(
            "SELECT id, doc FROM entities
             WHERE control_plane_id = ?1 AND kind = ?2 AND (id = ?3 OR name = ?3)
             ORDER BY id = ?3 DESC LIMIT 1",
            params![control_plane_id, kind.as_str(), id_or_name],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    row.map(|(id, doc)| parse(id, &doc)).transpose()
}

fn parse(id: String, doc: &str) -> Result<StoredEntity, StoreError> {
    let doc =
        serde_json::from_str(doc).map_err(|e| StoreError::Database(format!("entity {id}: {e}")))?;
    Ok(StoredEntity { id, doc })
}

/// Deletes an entity. A service still used by routes is refused, as Kong does; the plugins
/// scoped to a deleted service or route go with it.
pub fn delete(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
    id: &str,
) -> Result<(), StoreError> {
    if kind == EntityKind::Services {
        let routes: i64 = tx.query_row(
            "SELECT COUNT(*) FROM entities
             WHERE control_plane_id = ?1 AND kind = 'routes' AND service_id = ?2",
            [control_plane_id, id],
            |r| r.get(0),
        )?;
        if routes > 0 {
            return Err(StoreError::Referenced("routes"));
        }
    }
    let column = match kind {
        EntityKind::Services => Some("service_id"),
        EntityKind::Routes => Some("route_id"),
        EntityKind::Plugins => None,
    };
    if let Some(column) = column {
        tx.execute(
            &format!(
                "DELETE FROM entities
                 WHERE control_plane_id = ?1 AND kind = 'plugins' AND {column} = ?2"
            ),
            [control_plane_id, id],
        )?;
    }
    let deleted = tx.execute(
        "DELETE FROM entities WHERE control_plane_id = ?1 AND kind = ?2 AND id = ?3",
        [control_plane_id, kind.as_str(), id],
    )?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Which entities a list shows.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub service_id: Option<String>,
    pub route_id: Option<String>,
    /// Kong's `tags=a,b` (all of them) or `tags=a/b` (any of them).
    pub tags: Vec<String>,
    pub any_tag: bool,
    /// The opaque offset of the previous page.
    pub after: Option<i64>,
    pub size: usize,
}

/// One page of entities in creation order, with the offset of the next page.
pub fn list(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
    filter: &ListFilter,
) -> Result<(Vec<Value>, Option<i64>), StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT rowid, doc FROM entities
         WHERE control_plane_id = ?1 AND kind = ?2
           AND (?3 IS NULL OR service_id = ?3) AND (?4 IS NULL OR route_id = ?4)
           AND rowid > ?5
         ORDER BY rowid",
    )?;
    let mut rows = statement.query(params![
        control_plane_id,
        kind.as_str(),
        filter.service_id,
        filter.route_id,
        filter.after.unwrap_or(0)
    ])?;
    let mut page = Vec::new();
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let doc: Value = serde_json::from_str(&row.get::<_, String>(1)?)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        if !tags_match(&doc, filter) {
            continue;
        }
        if page.len() == filter.size {
            // There is at least one more: the next page starts after this page's last row.
            let next = page.last().map(|(r, _)| *r);
            return Ok((page.into_iter().map(|(_, d)| d).collect(), next));
        }
        page.push((rowid, doc));
    }
    Ok((page.into_iter().map(|(_, d)| d).collect(), None))
}

fn tags_match(doc: &Value, filter: &ListFilter) -> bool {
    if filter.tags.is_empty() {
        return true;
    }
    let tags: Vec<&str> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |t: &String| tags.contains(&t.as_str());
    if filter.any_tag {
        filter.tags.iter().any(has)
    } else {
        filter.tags.iter().all(has)
    }
}

/// Every entity of a control plane, in creation order.
pub fn all(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    kind: EntityKind,
) -> Result<Vec<Value>, StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, doc FROM entities WHERE control_plane_id = ?1 AND kind = ?2 ORDER BY rowid",
    )?;
    let rows = statement.query_map([control_plane_id, kind.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, doc) = row?;
        out.push(parse(id, &doc)?.doc);
    }
    Ok(out)
}

/// Removes every entity of a control plane (a declarative import replaces them all).
pub fn clear(tx: &Transaction<'_>, control_plane_id: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM entities WHERE control_plane_id = ?1",
        [control_plane_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    /// A store with two control planes, `cp` and `other`.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        for id in ["cp", "other"] {
            store.insert_test_control_plane(id);
        }
        (dir, store)
    }

    fn run<T>(
        store: &Store,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        store.transaction(f)
    }

    fn add(store: &Store, cp: &str, kind: EntityKind, doc: Value) -> Result<(), StoreError> {
        run(store, |tx| insert(tx, cp, kind, &doc))
    }

    fn service(id: &str, name: &str) -> Value {
        json!({ "id": id, "name": name, "host": "example.com", "created_at": 10 })
    }

    fn route(id: &str, name: &str, service: &str) -> Value {
        json!({ "id": id, "name": name, "paths": ["/"], "service": { "id": service } })
    }

    fn plugin(id: &str, name: &str, service: Option<&str>, route: Option<&str>) -> Value {
        json!({
            "id": id,
            "name": name,
            "service": service.map(|s| json!({ "id": s })),
            "route": route.map(|r| json!({ "id": r })),
        })
    }

    fn fetch(store: &Store, cp: &str, kind: EntityKind, key: &str) -> Option<StoredEntity> {
        run(store, |tx| get(tx, cp, kind, key)).expect("get")
    }

    fn ids(store: &Store, cp: &str, kind: EntityKind) -> Vec<String> {
        run(store, |tx| all(tx, cp, kind))
            .expect("all")
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn an_entity_is_read_back_by_id_or_name_in_its_own_control_plane_and_kind() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "echo")).expect("insert");
        let by_id = fetch(&store, "cp", EntityKind::Services, "s1").expect("by id");
        assert_eq!(by_id.id, "s1");
        assert_eq!(by_id.doc, service("s1", "echo"), "the document as stored");
        let by_name = fetch(&store, "cp", EntityKind::Services, "echo").expect("by name");
        assert_eq!(by_name.id, "s1");
        assert!(fetch(&store, "cp", EntityKind::Services, "nope").is_none());
        assert!(fetch(&store, "other", EntityKind::Services, "s1").is_none());
        assert!(fetch(&store, "cp", EntityKind::Routes, "s1").is_none());

        // A name that is another entity's id: the id wins, as in Kong.
        add(&store, "cp", EntityKind::Services, service("s2", "s1")).expect("insert");
        assert_eq!(
            fetch(&store, "cp", EntityKind::Services, "s1")
                .expect("s1")
                .id,
            "s1"
        );

        // Plugins are named by their instance_name.
        let mut named = plugin("p1", "rate-limiting", None, None);
        named["instance_name"] = json!("limit");
        add(&store, "cp", EntityKind::Plugins, named).expect("plugin");
        assert_eq!(
            fetch(&store, "cp", EntityKind::Plugins, "limit")
                .expect("by instance_name")
                .id,
            "p1"
        );
        assert!(fetch(&store, "cp", EntityKind::Plugins, "rate-limiting").is_none());
    }

    #[test]
    fn names_are_unique_per_control_plane_and_kind_and_the_error_names_the_field() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "echo")).expect("first");
        let duplicate =
            add(&store, "cp", EntityKind::Services, service("s2", "echo")).expect_err("same name");
        assert!(matches!(duplicate, StoreError::Unique(_)), "{duplicate:?}");
        assert_eq!(
            duplicate.to_string(),
            r#"UNIQUE violation detected on '{name="echo"}'"#
        );
        // Another control plane, another kind, or no name at all: no conflict.
        add(&store, "other", EntityKind::Services, service("s1", "echo")).expect("other cp");
        add(&store, "cp", EntityKind::Routes, route("r1", "echo", "s1")).expect("a route");
        for id in ["s3", "s4"] {
            add(
                &store,
                "cp",
                EntityKind::Services,
                json!({ "id": id, "name": null, "host": "h" }),
            )
            .expect("nameless");
        }

        let mut limit = plugin("p1", "rate-limiting", None, None);
        limit["instance_name"] = json!("limit");
        add(&store, "cp", EntityKind::Plugins, limit).expect("plugin");
        let mut again = plugin("p2", "request-size-limiting", None, None);
        again["instance_name"] = json!("limit");
        assert_eq!(
            add(&store, "cp", EntityKind::Plugins, again)
                .expect_err("same instance_name")
                .to_string(),
            r#"UNIQUE violation detected on '{instance_name="limit"}'"#
        );

        // A rename onto a taken name is refused the same way, and changes nothing.
        let mut renamed = service("s2", "other-name");
        add(&store, "cp", EntityKind::Services, renamed.clone()).expect("s2");
        renamed["name"] = json!("echo");
        let error = run(&store, |tx| {
            replace(tx, "cp", EntityKind::Services, &renamed)
        })
        .expect_err("rename onto echo");
        assert_eq!(
            error.to_string(),
            r#"UNIQUE violation detected on '{name="echo"}'"#
        );
        assert_eq!(
            fetch(&store, "cp", EntityKind::Services, "s2")
                .expect("s2")
                .doc["name"],
            "other-name"
        );
    }

    #[test]
    fn a_duplicate_id_is_refused_naming_the_id() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "echo")).expect("first");
        let error =
            add(&store, "cp", EntityKind::Services, service("s1", "second")).expect_err("same id");
        assert_eq!(
            error.to_string(),
            r#"UNIQUE violation detected on '{id="s1"}'"#
        );
        let mut p = plugin("p1", "rate-limiting", None, None);
        add(&store, "cp", EntityKind::Plugins, p.clone()).expect("plugin");
        p["name"] = json!("request-size-limiting");
        assert_eq!(
            add(&store, "cp", EntityKind::Plugins, p)
                .expect_err("same plugin id")
                .to_string(),
            r#"UNIQUE violation detected on '{id="p1"}'"#
        );
        // Ids are per control plane and kind.
        add(&store, "other", EntityKind::Services, service("s1", "echo")).expect("other cp");
        add(&store, "cp", EntityKind::Routes, route("s1", "r", "s1")).expect("a route");
    }

    #[test]
    fn one_plugin_per_name_and_scope_with_kongs_message() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "a")).expect("s1");
        add(&store, "cp", EntityKind::Services, service("s2", "b")).expect("s2");
        add(&store, "cp", EntityKind::Routes, route("r1", "r", "s1")).expect("r1");
        let scopes = [
            (None, None, "route=null, service=null"),
            (Some("s1"), None, r#"route=null, service={id="s1"}"#),
            (None, Some("r1"), r#"route={id="r1"}, service=null"#),
            (
                Some("s1"),
                Some("r1"),
                r#"route={id="r1"}, service={id="s1"}"#,
            ),
        ];
        for (n, (service, route, _)) in scopes.iter().enumerate() {
            add(
                &store,
                "cp",
                EntityKind::Plugins,
                plugin(&format!("p{n}"), "rate-limiting", *service, *route),
            )
            .expect("one per scope");
        }
        for (n, (service, route, text)) in scopes.iter().enumerate() {
            let error = add(
                &store,
                "cp",
                EntityKind::Plugins,
                plugin(&format!("q{n}"), "rate-limiting", *service, *route),
            )
            .expect_err("a second one in the same scope");
            assert_eq!(
                error.to_string(),
                format!(
                    "UNIQUE violation detected on \
                     '{{consumer=null, name=\"rate-limiting\", {text}}}'"
                ),
                "{service:?} {route:?}"
            );
        }
        // Another plugin, another service, another control plane: no conflict.
        add(
            &store,
            "cp",
            EntityKind::Plugins,
            plugin("x1", "request-size-limiting", None, None),
        )
        .expect("another plugin");
        add(
            &store,
            "cp",
            EntityKind::Plugins,
            plugin("x2", "rate-limiting", Some("s2"), None),
        )
        .expect("another service");
        add(
            &store,
            "other",
            EntityKind::Plugins,
            plugin("x3", "rate-limiting", None, None),
        )
        .expect("another control plane");

        // Moving a plugin into a taken scope is refused too.
        let moved = plugin("x2", "rate-limiting", Some("s1"), None);
        let error = run(&store, |tx| replace(tx, "cp", EntityKind::Plugins, &moved))
            .expect_err("into s1's scope");
        assert!(matches!(error, StoreError::Unique(_)), "{error:?}");
    }

    #[test]
    fn replace_keeps_the_row_and_updates_every_column() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "a")).expect("s1");
        add(&store, "cp", EntityKind::Services, service("s2", "b")).expect("s2");
        add(&store, "cp", EntityKind::Routes, route("r1", "r", "s1")).expect("r1");
        let mut moved = route("r1", "renamed", "s2");
        moved["updated_at"] = json!(99);
        run(&store, |tx| replace(tx, "cp", EntityKind::Routes, &moved)).expect("replace");
        assert_eq!(
            fetch(&store, "cp", EntityKind::Routes, "renamed")
                .expect("new name")
                .doc,
            moved
        );
        assert!(
            fetch(&store, "cp", EntityKind::Routes, "r").is_none(),
            "old name"
        );
        let on = |service: &str| {
            let filter = ListFilter {
                service_id: Some(service.into()),
                size: 10,
                ..ListFilter::default()
            };
            run(&store, |tx| list(tx, "cp", EntityKind::Routes, &filter))
                .expect("list")
                .0
                .len()
        };
        assert_eq!((on("s1"), on("s2")), (0, 1), "the reference column follows");
        // s1 has no routes any more: it can go.
        run(&store, |tx| delete(tx, "cp", EntityKind::Services, "s1")).expect("delete s1");

        let missing = run(&store, |tx| {
            replace(tx, "cp", EntityKind::Routes, &route("r9", "x", "s2"))
        })
        .expect_err("no such route");
        assert!(matches!(missing, StoreError::NotFound), "{missing:?}");
        let elsewhere = run(&store, |tx| {
            replace(tx, "other", EntityKind::Routes, &moved)
        })
        .expect_err("another control plane's");
        assert!(matches!(elsewhere, StoreError::NotFound), "{elsewhere:?}");
    }

    #[test]
    fn deletes_refuse_a_used_service_and_take_scoped_plugins_along() {
        let (_dir, store) = store();
        add(&store, "cp", EntityKind::Services, service("s1", "a")).expect("s1");
        add(&store, "cp", EntityKind::Services, service("s2", "b")).expect("s2");
        add(&store, "cp", EntityKind::Routes, route("r1", "r1", "s1")).expect("r1");
        add(&store, "cp", EntityKind::Routes, route("r2", "r2", "s2")).expect("r2");
        for (id, name, service, route) in [
            ("global", "rate-limiting", None, None),
            ("on-s1", "rate-limiting", Some("s1"), None),
            ("on-r1", "rate-limiting", None, Some("r1")),
            ("on-s1-r1", "request-size-limiting", Some("s1"), Some("r1")),
            ("on-r2", "rate-limiting", None, Some("r2")),
        ] {
            add(
                &store,
                "cp",
                EntityKind::Plugins,
                plugin(id, name, service, route),
            )
            .expect(id);
        }
        // The other control plane has entities with the same ids: untouched throughout.
        add(&store, "other", EntityKind::Services, service("s1", "a")).expect("other s1");
        add(
            &store,
            "other",
            EntityKind::Plugins,
            plugin("on-s1", "rate-limiting", Some("s1"), None),
        )
        .expect("other plugin");

        let used = run(&store, |tx| delete(tx, "cp", EntityKind::Services, "s1"))
            .expect_err("s1 has a route");
        assert!(matches!(used, StoreError::Referenced("routes")), "{used:?}");
        assert_eq!(
            used.to_string(),
            "an existing 'routes' entity references it"
        );
        assert_eq!(
            ids(&store, "cp", EntityKind::Plugins).len(),
            5,
            "a refused delete removes nothing"
        );

        run(&store, |tx| delete(tx, "cp", EntityKind::Routes, "r1")).expect("r1");
        assert_eq!(
            ids(&store, "cp", EntityKind::Plugins),
            ["global", "on-s1", "on-r2"],
            "r1's plugins went with it, the service's stayed"
        );
        run(&store, |tx| delete(tx, "cp", EntityKind::Services, "s1")).expect("s1");
        assert_eq!(ids(&store, "cp", EntityKind::Plugins), ["global", "on-r2"]);
        assert_eq!(ids(&store, "cp", EntityKind::Services), ["s2"]);
        run(&store, |tx| delete(tx, "cp", EntityKind::Plugins, "global")).expect("plugin");
        assert_eq!(ids(&store, "cp", EntityKind::Plugins), ["on-r2"]);
        assert_eq!(ids(&store, "other", EntityKind::Services), ["s1"]);
        assert_eq!(ids(&store, "other", EntityKind::Plugins), ["on-s1"]);

        for (kind, id) in [
            (EntityKind::Services, "s1"),
            (EntityKind::Routes, "r1"),
            (EntityKind::Plugins, "global"),
            (EntityKind::Routes, "s2"),
        ] {
            let gone = run(&store, |tx| delete(tx, "cp", kind, id)).expect_err("gone");
            assert!(
                matches!(gone, StoreError::NotFound),
                "{kind:?} {id}: {gone:?}"
            );
        }
    }

    fn tagged(id: &str, tags: &[&str]) -> Value {
        json!({ "id": id, "name": id, "host": "h", "tags": tags })
    }

    fn page(store: &Store, filter: &ListFilter) -> (Vec<String>, Option<i64>) {
        let (docs, next) =
            run(store, |tx| list(tx, "cp", EntityKind::Services, filter)).expect("list");
        let ids = docs
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (ids, next)
    }

    #[test]
    fn lists_page_in_creation_order_with_an_offset_only_when_more_follow() {
        let (_dir, store) = store();
        // Ids that sort against creation order: pages follow creation, not ids.
        for id in ["e", "d", "c", "b", "a"] {
            add(&store, "cp", EntityKind::Services, tagged(id, &[])).expect(id);
        }
        add(&store, "other", EntityKind::Services, tagged("z", &[])).expect("z");
        let mut filter = ListFilter {
            size: 2,
            ..ListFilter::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (ids, next) = page(&store, &filter);
            assert!(!ids.is_empty() && ids.len() <= 2, "{ids:?}");
            seen.extend(ids);
            pages += 1;
            match next {
                Some(after) => filter.after = Some(after),
                None => break,
            }
        }
        assert_eq!(seen, ["e", "d", "c", "b", "a"]);
        assert_eq!(pages, 3);

        // Exactly one page's worth: no offset to an empty page.
        filter = ListFilter {
            size: 5,
            ..ListFilter::default()
        };
        assert_eq!(page(&store, &filter), (seen.clone(), None));
        filter.size = 4;
        let (first, next) = page(&store, &filter);
        assert_eq!((first.len(), next.is_some()), (4, true));
        filter.after = next;
        assert_eq!(page(&store, &filter), (vec!["a".to_owned()], None));

        // An offset past a deleted row still goes on from there.
        filter = ListFilter {
            size: 2,
            ..ListFilter::default()
        };
        let (_, next) = page(&store, &filter);
        run(&store, |tx| delete(tx, "cp", EntityKind::Services, "d")).expect("delete d");
        filter.after = next;
        assert_eq!(page(&store, &filter).0, ["c", "b"]);
    }

    #[test]
    fn lists_filter_by_reference_and_by_all_or_any_tag_before_paging() {
        let (_dir, store) = store();
        for (id, tags) in [
            ("s1", &["a", "b"][..]),
            ("s2", &["a"][..]),
            ("s3", &["b"][..]),
            ("s4", &[][..]),
            ("s5", &["a", "b", "c"][..]),
        ] {
            add(&store, "cp", EntityKind::Services, tagged(id, tags)).expect(id);
        }
        let tags = |tags: &[&str], any_tag: bool, size: usize| ListFilter {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            any_tag,
            size,
            ..ListFilter::default()
        };
        assert_eq!(page(&store, &tags(&["a", "b"], false, 10)).0, ["s1", "s5"]);
        assert_eq!(
            page(&store, &tags(&["a", "b"], true, 10)).0,
            ["s1", "s2", "s3", "s5"]
        );
        assert_eq!(page(&store, &tags(&["c"], true, 10)).0, ["s5"]);
        assert!(page(&store, &tags(&["x"], false, 10)).0.is_empty());
        // Pages count matching entities only.
        let mut filter = tags(&["b"], false, 1);
        let (first, next) = page(&store, &filter);
        assert_eq!(first, ["s1"]);
        filter.after = next;
        let (second, next) = page(&store, &filter);
        assert_eq!(second, ["s3"]);
        filter.after = next;
        assert_eq!(page(&store, &filter), (vec!["s5".to_owned()], None));

        add(&store, "cp", EntityKind::Routes, route("r1", "r1", "s1")).expect("r1");
        add(&store, "cp", EntityKind::Routes, route("r2", "r2", "s2")).expect("r2");
        add(
            &store,
            "cp",
            EntityKind::Plugins,
            plugin("p1", "rate-limiting", Some("s1"), Some("r1")),
        )
        .expect("p1");
        add(
            &store,
            "cp",
            EntityKind::Plugins,
            plugin("p2", "rate-limiting", Some("s1"), None),
        )
        .expect("p2");
        let listed = |kind, service: Option<&str>, route: Option<&str>| -> Vec<Value> {
            let filter = ListFilter {
                service_id: service.map(str::to_owned),
                route_id: route.map(str::to_owned),
                size: 10,
                ..ListFilter::default()
            };
            run(&store, |tx| list(tx, "cp", kind, &filter))
                .expect("list")
                .0
                .iter()
                .map(|d| d["id"].clone())
                .collect()
        };
        assert_eq!(listed(EntityKind::Routes, Some("s2"), None), [json!("r2")]);
        assert_eq!(
            listed(EntityKind::Plugins, Some("s1"), None),
            [json!("p1"), json!("p2")]
        );
        assert_eq!(
            listed(EntityKind::Plugins, Some("s1"), Some("r1")),
            [json!("p1")]
        );
        assert!(listed(EntityKind::Plugins, None, Some("r2")).is_empty());
    }

    #[test]
    fn clear_empties_one_control_plane_and_all_reads_in_creation_order() {
        let (_dir, store) = store();
        for id in ["b", "a", "c"] {
            add(&store, "cp", EntityKind::Services, tagged(id, &[])).expect(id);
        }
        add(&store, "other", EntityKind::Services, tagged("o", &[])).expect("o");
        assert_eq!(ids(&store, "cp", EntityKind::Services), ["b", "a", "c"]);
        run(&store, |tx| clear(tx, "cp")).expect("clear");
        assert!(ids(&store, "cp", EntityKind::Services).is_empty());
        assert_eq!(ids(&store, "other", EntityKind::Services), ["o"]);
        // Names and scopes are free again.
        add(&store, "cp", EntityKind::Services, tagged("b", &[])).expect("again");
    }

    #[test]
    fn an_unreadable_stored_document_is_a_database_error_naming_the_entity() {
        let (_dir, store) = store();
        run(&store, |tx| {
            tx.execute(
                "INSERT INTO entities (control_plane_id, kind, id, doc, created_at, updated_at)
                 VALUES ('cp', 'services', 'broken', '{not json', 0, 0)",
                [],
            )?;
            Ok(())
        })
        .expect("raw row");
        let error =
            run(&store, |tx| get(tx, "cp", EntityKind::Services, "broken")).expect_err("get");
        assert!(
            matches!(&error, StoreError::Database(m) if m.starts_with("entity broken: ")),
            "{error:?}"
        );
        let error = run(&store, |tx| all(tx, "cp", EntityKind::Services)).expect_err("all");
        assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    }
}
