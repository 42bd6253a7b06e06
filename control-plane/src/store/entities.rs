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
