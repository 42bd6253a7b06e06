//! `/v2/control-planes/{id}/core-entities/{services,routes,plugins}`: Kong's Admin API for
//! one control plane, nested `services/{id}/routes`, `services/{id}/plugins` and
//! `routes/{id}/plugins` included, plus declarative export and import. Every accepted write
//! produces a new config version that data planes receive; a rejected one changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::Transaction;
use serde_json::{json, Value};

use super::control_planes::{self, ControlPlaneRow};
use super::errors::{self, ApiError};
use super::{blocking, change, json_object, now, Shared};
use crate::config::{self, Entities, Rejection};
use crate::store::entities::{self, EntityKind, ListFilter};
use crate::store::StoreError;

fn kind(segment: &str) -> Result<EntityKind, ApiError> {
    match segment {
        "services" => Ok(EntityKind::Services),
        "routes" => Ok(EntityKind::Routes),
        "plugins" => Ok(EntityKind::Plugins),
        _ => Err(errors::not_found()),
    }
}

/// The nested collections Kong has: what they list, and the reference they set.
fn nested(parent: EntityKind, child: &str) -> Result<(EntityKind, &'static str), ApiError> {
    match (parent, child) {
        (EntityKind::Services, "routes") => Ok((EntityKind::Routes, "service")),
        (EntityKind::Services, "plugins") => Ok((EntityKind::Plugins, "service")),
        (EntityKind::Routes, "plugins") => Ok((EntityKind::Plugins, "route")),
        _ => Err(errors::not_found()),
    }
}

fn schema(path: &str, message: impl Into<String>) -> Rejection {
    Rejection::Schema(model::ConfigError::single(path, message))
}

/// Resolves `service`/`route` references (`{"id"}` or `{"name"}`) to ids, refuses what this
/// control plane does not take, and validates the entity with the model. Any plugin is the
/// user's to configure on a serverless control plane too: its limits are the provisioned
/// data planes' platform plugins, which no entity replaces (`config::platform_plugins`).
fn prepare(
    tx: &Transaction<'_>,
    row: &ControlPlaneRow,
    kind: EntityKind,
    doc: &mut Value,
) -> Result<(), Rejection> {
    let references: &[(&'static str, EntityKind)] = match kind {
        EntityKind::Services => &[],
        EntityKind::Routes => &[("service", EntityKind::Services)],
        EntityKind::Plugins => &[
            ("service", EntityKind::Services),
            ("route", EntityKind::Routes),
        ],
    };
    for (field, target) in references {
        let key = match doc.get(*field) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(map)) => map
                .get("id")
                .or_else(|| map.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            Some(_) => None,
        };
        let Some(key) = key else {
            return Err(schema(field, "expected a reference: {\"id\": ...}"));
        };
        match entities::get(tx, &row.id, *target, &key)? {
            Some(found) => doc[*field] = json!({ "id": found.id }),
            None => {
                return Err(Rejection::ForeignKey {
                    field,
                    id: key,
                    kind: target.as_str(),
                })
            }
        }
    }
    if kind == EntityKind::Plugins && doc.get("consumer").is_some_and(|c| !c.is_null()) {
        return Err(schema(
            "consumer",
            "consumers are not supported by wasmgate",
        ));
    }
    config::validate_entity(kind, doc).map_err(Rejection::Schema)
}

/// A new entity's document: Kong's defaults, then the body; a given id must be a UUID.
fn new_entity(kind: EntityKind, body: &Value) -> Result<Value, Rejection> {
    let mut doc = config::defaults(kind);
    config::merge(&mut doc, body);
    let id = match body.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => s.to_lowercase(),
        Some(_) => return Err(schema("id", "expected a valid UUID")),
    };
    let now = now();
    doc["id"] = json!(id);
    doc["created_at"] = json!(now);
    doc["updated_at"] = json!(now);
    Ok(doc)
}

/// An entity's body as Kong's Admin API takes it: JSON (`application/json`, or no
/// Content-Type at all) or a form (`application/x-www-form-urlencoded`, with Kong's nested
/// keys: `config.second=5`, `paths[]=/a`, `service.id=...`, a repeated key as an array), its
/// values typed by the entity's own schema as Kong types them (`5` where a number is
/// expected, `true` for a boolean, one value for an array). Another media type is 415.
/// `base` is the stored entity a PATCH applies to, for the types of its fields.
fn entity_body(
    kind: EntityKind,
    headers: &HeaderMap,
    body: &Bytes,
    base: Option<&Value>,
) -> Result<Value, ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        None | Some("") | Some("application/json") => json_object(body),
        Some(json) if json.starts_with("application/") && json.ends_with("+json") => {
            json_object(body)
        }
        Some("application/x-www-form-urlencoded") => {
            let text = std::str::from_utf8(body)
                .map_err(|_| errors::bad_body("Cannot parse form body: not UTF-8"))?;
            let mut value = form_to_json(text)?;
            type_form_values(kind, &mut value, base);
            Ok(value)
        }
        Some(other) => Err(errors::unsupported_media_type(other)),
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        errors::bad_body(format!("Cannot parse form body: bad escape in '{text}'"))
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| errors::bad_body("Cannot parse form body: not UTF-8"))
}

/// One step of a form key: `a.b` names `b` in `a`; `a[]` (or `a[1]`) appends to the array
/// `a`; `a[b]` names `b` in `a`.
enum Step {
    Key(String),
    Append,
}

fn key_steps(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let (name, mut brackets) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        while let Some(inner) = brackets.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            let index = &inner[..end];
            if index.is_empty() || index.bytes().all(|b| b.is_ascii_digit()) {
                steps.push(Step::Append);
            } else {
                steps.push(Step::Key(index.to_owned()));
            }
            brackets = &inner[end + 1..];
        }
    }
    steps
}

fn set_form_value(target: &mut Value, steps: &[Step], value: Value) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    match step {
        Step::Append => {
            if !target.is_array() {
                *target = json!([]);
            }
            let Some(list) = target.as_array_mut() else {
                return;
            };
            if rest.is_empty() {
                list.push(value);
            } else {
                let mut item = Value::Null;
                set_form_value(&mut item, rest, value);
                list.push(item);
            }
        }
        Step::Key(key) => {
            if !target.is_object() {
                *target = json!({});
            }
            let Some(map) = target.as_object_mut() else {
                return;
            };
            if rest.is_empty() {
                // A key given again is a list of its values, as Kong decodes it.
                match map.get_mut(key) {
                    Some(Value::Array(list)) => list.push(value),
                    Some(existing) => *existing = json!([existing.take(), value]),
                    None => {
                        map.insert(key.clone(), value);
                    }
                }
            } else {
                set_form_value(map.entry(key.clone()).or_insert(Value::Null), rest, value);
            }
        }
    }
}

/// A form body as the JSON object Kong's Admin API makes of it (values still strings).
fn form_to_json(text: &str) -> Result<Value, ApiError> {
    let mut out = json!({});
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(key)?, percent_decode(value)?);
        let steps = key_steps(&key);
        if steps.is_empty() {
            continue;
        }
        set_form_value(&mut out, &steps, json!(value));
    }
    Ok(out)
}

/// Types a form's string values by the entity's schema: each value the model finds of the
/// wrong type (`expected a number`, `an integer`, `a boolean`, `an array`) is converted
/// when it can be, then the entity is checked again, as Kong's Admin API converts form
/// arguments by the schema. What cannot be converted is left for the validation to refuse.
fn type_form_values(kind: EntityKind, body: &mut Value, base: Option<&Value>) {
    for _ in 0..64 {
        let mut doc = base.cloned().unwrap_or_else(|| config::defaults(kind));
        config::merge(&mut doc, body);
        let Err(error) = config::validate_entity(kind, &mut doc) else {
            return;
        };
        let mut changed = false;
        for field in &error.fields {
            let mut leaf = Some(&mut *body);
            for step in field.path.split('.') {
                leaf = leaf.and_then(|v| match v {
                    Value::Object(map) => map.get_mut(step),
                    Value::Array(list) => step.parse::<usize>().ok().and_then(|i| list.get_mut(i)),
                    _ => None,
                });
            }
            let Some(leaf) = leaf else { continue };
            let Value::String(text) = &*leaf else {
                continue;
            };
            let typed = match field.message.as_str() {
                "expected an integer" => text.parse::<i64>().ok().map(Value::from),
                "expected a number" => text.parse::<serde_json::Number>().ok().map(Value::Number),
                "expected a boolean" => match text.as_str() {
                    "true" => Some(json!(true)),
                    "false" => Some(json!(false)),
                    _ => None,
                },
                "expected an array" if text.is_empty() => Some(json!([])),
                "expected an array" => Some(json!([text])),
                _ => None,
            };
            if let Some(typed) = typed {
                *leaf = typed;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

fn created(doc: Value) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(doc))
}

async fn insert(
    state: &Arc<State>,
    control_plane_id: &str,
    kind: EntityKind,
    body: Value,
) -> Result<Value, ApiError> {
    change(state, control_plane_id, move |tx, row| {
        let mut doc = new_entity(kind, &body)?;
        prepare(tx, row, kind, &mut doc)?;
        entities::insert(tx, &row.id, kind, &doc)?;
        Ok(doc)
    })
    .await
}

use crate::State;

pub async fn create(
    state: Shared,
    Path((control_plane_id, segment)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = kind(&segment)?;
    let body = entity_body(kind, &headers, &body, None)?;
    Ok(created(
        insert(&state, &control_plane_id, kind, body).await?,
    ))
}

pub async fn create_nested(
    state: Shared,
    Path((control_plane_id, parent, parent_id, child)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let parent = kind(&parent)?;
    let (kind, field) = nested(parent, &child)?;
    let mut body = entity_body(kind, &headers, &body, None)?;
    let found = lookup(&state, &control_plane_id, parent, &parent_id).await?;
    body[field] = json!({ "id": found["id"] });
    Ok(created(
        insert(&state, &control_plane_id, kind, body).await?,
    ))
}

async fn lookup(
    state: &Arc<State>,
    control_plane_id: &str,
    kind: EntityKind,
    id_or_name: &str,
) -> Result<Value, ApiError> {
    let store = Arc::clone(&state.store);
    let (cp, key) = (control_plane_id.to_owned(), id_or_name.to_owned());
    blocking(move || {
        store.transaction(|tx| {
            control_planes::load(tx, &cp)?.ok_or_else(errors::not_found)?;
            entities::get(tx, &cp, kind, &key)?
                .map(|e| e.doc)
                .ok_or_else(errors::not_found)
        })
    })
    .await
}

pub async fn get(
    state: Shared,
    Path((control_plane_id, segment, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    Ok(Json(lookup(&state, &control_plane_id, kind, &id).await?))
}

/// PATCH: the body over the stored entity (`config` merged key by key), validated again.
pub async fn update(
    state: Shared,
    Path((control_plane_id, segment, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    let body = if is_form(&headers) {
        // The stored entity gives the form's values their types (a plugin's config).
        let stored = lookup(&state, &control_plane_id, kind, &id).await?;
        entity_body(kind, &headers, &body, Some(&stored))?
    } else {
        entity_body(kind, &headers, &body, None)?
    };
    let doc = change(&state, &control_plane_id, move |tx, row| {
        let stored = entities::get(tx, &row.id, kind, &id)?.ok_or(StoreError::NotFound)?;
        let mut doc = stored.doc;
        let mut body = body;
        if let Value::Object(map) = &mut body {
            for fixed in ["id", "created_at", "updated_at"] {
                map.remove(fixed);
            }
        }
        config::merge(&mut doc, &body);
        doc["updated_at"] = json!(now());
        prepare(tx, row, kind, &mut doc)?;
        entities::replace(tx, &row.id, kind, &doc)?;
        Ok(doc)
    })
    .await?;
    Ok(Json(doc))
}

/// PUT: creates or replaces the entity with that id (or name), as Kong's upsert.
pub async fn upsert(
    state: Shared,
    Path((control_plane_id, segment, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    let body = entity_body(kind, &headers, &body, None)?;
    let doc = change(&state, &control_plane_id, move |tx, row| {
        let stored = entities::get(tx, &row.id, kind, &key)?;
        let mut body = body;
        match &stored {
            Some(stored) => body["id"] = json!(stored.id),
            None if uuid::Uuid::parse_str(&key).is_ok() => body["id"] = json!(key),
            None => {
                let field = if kind == EntityKind::Plugins {
                    "instance_name"
                } else {
                    "name"
                };
                body[field] = json!(key);
            }
        }
        let mut doc = new_entity(kind, &body)?;
        if let Some(stored) = &stored {
            doc["created_at"] = stored.doc["created_at"].clone();
        }
        prepare(tx, row, kind, &mut doc)?;
        if stored.is_some() {
            entities::replace(tx, &row.id, kind, &doc)?;
        } else {
            entities::insert(tx, &row.id, kind, &doc)?;
        }
        Ok(doc)
    })
    .await?;
    Ok(Json(doc))
}

pub async fn delete(
    state: Shared,
    Path((control_plane_id, segment, key)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let kind = kind(&segment)?;
    change(&state, &control_plane_id, move |tx, row| {
        let stored = entities::get(tx, &row.id, kind, &key)?.ok_or(StoreError::NotFound)?;
        entities::delete(tx, &row.id, kind, &stored.id)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn list_filter(query: &HashMap<String, String>) -> Result<ListFilter, ApiError> {
    let size = match query.get("size") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(errors::schema_violation(&model::ConfigError::single(
                    "size",
                    "must be a number between 1 and 1000",
                )))
            }
        },
    };
    let after = match query.get("offset") {
        None => None,
        Some(o) => Some(o.parse::<i64>().map_err(|_| {
            errors::bad_body(format!("invalid offset: '{o}' is not a valid offset"))
        })?),
    };
    let (tags, any_tag) = match query.get("tags") {
        None => (Vec::new(), false),
        Some(t) if t.contains('/') => (t.split('/').map(str::to_owned).collect(), true),
        Some(t) => (t.split(',').map(str::to_owned).collect(), false),
    };
    Ok(ListFilter {
        service_id: None,
        route_id: None,
        tags,
        any_tag,
        after,
        size,
    })
}

/// Percent-encodes a query value (RFC 3986's unreserved characters stay).
fn escape_uri(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Kong's `next`: the same collection from `offset`, with the `tags` filter and the `size`
/// the client asked for (Kong keeps both), so that following it changes neither.
fn next_link(path: &str, offset: i64, query: &HashMap<String, String>) -> String {
    let mut link = format!("{path}?offset={offset}");
    if let Some(tags) = query.get("tags") {
        link.push_str(&format!("&tags={}", escape_uri(tags)));
    }
    if let Some(size) = query.get("size") {
        link.push_str(&format!("&size={}", escape_uri(size)));
    }
    link
}

async fn page(
    state: &Arc<State>,
    control_plane_id: String,
    kind: EntityKind,
    filter: ListFilter,
    path: String,
    query: HashMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let (data, next) = blocking(move || {
        store.transaction(|tx| {
            control_planes::load(tx, &control_plane_id)?.ok_or_else(errors::not_found)?;
            Ok::<_, ApiError>(entities::list(tx, &control_plane_id, kind, &filter)?)
        })
    })
    .await?;
    let next_link = next.map(|o| next_link(&path, o, &query));
    Ok(Json(json!({
        "data": data,
        "offset": next.map(|o| o.to_string()),
        "next": next_link,
    })))
}

pub async fn list(
    state: Shared,
    Path((control_plane_id, segment)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    let filter = list_filter(&query)?;
    let path = format!("/v2/control-planes/{control_plane_id}/core-entities/{segment}");
    page(&state, control_plane_id, kind, filter, path, query).await
}

pub async fn list_nested(
    state: Shared,
    Path((control_plane_id, parent, parent_id, child)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let parent_kind = kind(&parent)?;
    let (kind, field) = nested(parent_kind, &child)?;
    let found = lookup(&state, &control_plane_id, parent_kind, &parent_id).await?;
    let id = found["id"].as_str().map(str::to_owned);
    let mut filter = list_filter(&query)?;
    if field == "service" {
        filter.service_id = id;
    } else {
        filter.route_id = id;
    }
    let path =
        format!("/v2/control-planes/{control_plane_id}/core-entities/{parent}/{parent_id}/{child}");
    page(&state, control_plane_id, kind, filter, path, query).await
}

/// The control plane's configuration as a Kong declarative file (JSON, or YAML with
/// `?format=yaml`), as its data planes receive it.
pub async fn export(
    state: Shared,
    Path(control_plane_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let store = Arc::clone(&state.store);
    let document = blocking(move || {
        store.transaction(|tx| {
            let row = control_planes::load(tx, &control_plane_id)?.ok_or_else(errors::not_found)?;
            Ok::<_, ApiError>(Entities::load(tx, &row.id)?.declarative())
        })
    })
    .await?;
    if query.get("format").map(String::as_str) == Some("yaml") {
        let text = serde_yaml_ng::to_string(&document).map_err(errors::internal)?;
        return Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response());
    }
    Ok(Json(document).into_response())
}

/// Every `id` of a declarative file's services, routes and plugins (nested ones included)
/// must be a UUID, as `POST` requires of one (Kong's `expected a valid UUID`): an id that is
/// not would also read as a name in `GET .../services/{id or name}`. Each is named as the
/// model names entities, by name (or instance name) else position.
fn non_uuid_ids(document: &Value) -> Result<(), model::ConfigError> {
    fn walk(list: Option<&Value>, at: &str, error: &mut model::ConfigError) {
        for (i, entity) in list
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let label = entity
                .get("name")
                .or_else(|| entity.get("instance_name"))
                .and_then(Value::as_str)
                .map_or_else(|| i.to_string(), str::to_owned);
            let path = format!("{at}.{label}");
            if let Some(id) = entity.get("id").filter(|id| !id.is_null()) {
                if id
                    .as_str()
                    .is_none_or(|s| uuid::Uuid::parse_str(s).is_err())
                {
                    error.fields.extend(
                        model::ConfigError::single(format!("{path}.id"), "expected a valid UUID")
                            .fields,
                    );
                }
            }
            for nested in ["routes", "plugins"] {
                walk(entity.get(nested), &format!("{path}.{nested}"), error);
            }
        }
    }
    let mut error = model::ConfigError { fields: Vec::new() };
    for kind in ["services", "routes", "plugins"] {
        walk(document.get(kind), kind, &mut error);
    }
    if error.fields.is_empty() {
        Ok(())
    } else {
        Err(error)
    }
}

/// Replaces every entity with those of a Kong declarative file (JSON or YAML), validated as
/// a whole first (Kong's code 14 error otherwise).
pub async fn import(
    state: Shared,
    Path(control_plane_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let text =
        String::from_utf8(body.to_vec()).map_err(|_| errors::bad_body("body is not UTF-8"))?;
    let document: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        errors::invalid_declarative(&model::ConfigError::single(
            "declarative",
            format!("invalid YAML or JSON: {e}"),
        ))
    })?;
    model::declarative::from_value_checked(&document, &schemas::check)
        .map_err(|e| errors::invalid_declarative(&e))?;
    if document.get("filter_chains").is_some_and(|f| !f.is_null()) {
        return Err(errors::invalid_declarative(&model::ConfigError::single(
            "filter_chains",
            "not supported by the control plane: it hands out wasmgate's plugin modules only",
        )));
    }
    non_uuid_ids(&document).map_err(|e| errors::invalid_declarative(&e))?;
    change(&state, &control_plane_id, move |tx, row| {
        config::import(tx, &row.id, &document, now())
    })
    .await?;
    let current = state
        .hub
        .current(&control_plane_id)
        .ok_or_else(|| errors::internal("no config version after import"))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "config_hash": current.hash,
            "config_version": current.version,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review D23: a form body reads as Kong's Admin API reads it: nested keys, arrays,
    /// repeated keys, escapes.
    #[test]
    fn a_form_reads_as_kongs_admin_api_reads_it() {
        let form = form_to_json(
            "name=a+b&config.second=5&config%2Eminute=6&paths[]=%2Fa&paths[]=/b&tags=x&tags=y\
             &service.id=s1&headers[x-a][]=1&empty=",
        )
        .expect("form");
        assert_eq!(
            form,
            json!({
                "name": "a b",
                "config": { "second": "5", "minute": "6" },
                "paths": ["/a", "/b"],
                "tags": ["x", "y"],
                "service": { "id": "s1" },
                "headers": { "x-a": ["1"] },
                "empty": "",
            })
        );
        assert!(form_to_json("name=%zz").is_err());
    }

    /// The form's strings take the types the entity's schema has (Kong converts form
    /// arguments by the schema); a string field keeps a value that looks like a number.
    #[test]
    fn form_values_take_the_schemas_types() {
        let mut service = json!({ "name": "123", "host": "h", "port": "8080", "retries": "2",
                                  "tags": "one" });
        type_form_values(EntityKind::Services, &mut service, None);
        assert_eq!(
            service,
            json!({ "name": "123", "host": "h", "port": 8080, "retries": 2, "tags": ["one"] })
        );
        let mut route = json!({ "paths": "/a", "strip_path": "false", "regex_priority": "3" });
        type_form_values(EntityKind::Routes, &mut route, None);
        assert_eq!(
            route,
            json!({ "paths": ["/a"], "strip_path": false, "regex_priority": 3 })
        );
        let mut plugin = json!({ "name": "rate-limiting", "config": { "second": "5",
                                 "hide_client_headers": "true" } });
        type_form_values(EntityKind::Plugins, &mut plugin, None);
        assert_eq!(
            plugin,
            json!({ "name": "rate-limiting", "config": { "second": 5,
                    "hide_client_headers": true } })
        );
        // A PATCH of a stored plugin: the stored entity names the schema.
        let stored = json!({ "name": "rate-limiting", "config": { "second": 5 } });
        let mut patch = json!({ "config": { "minute": "60" } });
        type_form_values(EntityKind::Plugins, &mut patch, Some(&stored));
        assert_eq!(patch, json!({ "config": { "minute": 60 } }));
        // What cannot be converted is left for the validation to refuse.
        let mut bad = json!({ "host": "h", "port": "eighty" });
        type_form_values(EntityKind::Services, &mut bad, None);
        assert_eq!(bad["port"], "eighty");
    }

    /// Review D23: `next` keeps `tags` and `size` (Kong's), so following it changes neither.
    #[test]
    fn the_next_link_keeps_tags_and_size() {
        let query: HashMap<String, String> = [("size", "2"), ("tags", "a b/c"), ("offset", "1")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(
            next_link("/v2/x/services", 7, &query),
            "/v2/x/services?offset=7&tags=a%20b%2Fc&size=2"
        );
        assert_eq!(
            next_link("/v2/x/services", 7, &HashMap::new()),
            "/v2/x/services?offset=7"
        );
    }

    /// Review D23: an import refuses ids that are not UUIDs, as POST does, naming each.
    #[test]
    fn an_import_refuses_ids_that_are_not_uuids() {
        let uuid = "0b9b6b53-0000-4000-8000-000000000001";
        let document = json!({
            "services": [{ "name": "a", "id": "a-name", "routes": [{ "id": 5 }],
                           "plugins": [{ "name": "rate-limiting", "id": uuid }] }],
            "plugins": [{ "name": "request-transformer", "id": "x" }],
        });
        let error = non_uuid_ids(&document).expect_err("refused");
        let fields: Vec<(String, String)> = error
            .fields
            .iter()
            .map(|f| (f.path.clone(), f.message.clone()))
            .collect();
        let field = |p: &str| (p.to_owned(), "expected a valid UUID".to_owned());
        assert_eq!(
            fields,
            [
                field("services.a.id"),
                field("services.a.routes.0.id"),
                field("plugins.request-transformer.id"),
            ]
        );
        assert!(non_uuid_ids(&json!({ "services": [{ "name": "a", "id": uuid }] })).is_ok());
    }
}
