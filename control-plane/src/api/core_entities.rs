//! `/v2/control-planes/{id}/core-entities/{services,routes,plugins}`: Kong's Admin API for
//! one control plane, nested `services/{id}/routes`, `services/{id}/plugins` and
//! `routes/{id}/plugins` included, plus declarative export and import. Every accepted write
//! produces a new config version that data planes receive; a rejected one changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
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
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = kind(&segment)?;
    let body = json_object(&body)?;
    Ok(created(
        insert(&state, &control_plane_id, kind, body).await?,
    ))
}

pub async fn create_nested(
    state: Shared,
    Path((control_plane_id, parent, parent_id, child)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let parent = kind(&parent)?;
    let (kind, field) = nested(parent, &child)?;
    let mut body = json_object(&body)?;
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
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    let body = json_object(&body)?;
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
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let kind = kind(&segment)?;
    let body = json_object(&body)?;
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

async fn page(
    state: &Arc<State>,
    control_plane_id: String,
    kind: EntityKind,
    filter: ListFilter,
    path: String,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let (data, next) = blocking(move || {
        store.transaction(|tx| {
            control_planes::load(tx, &control_plane_id)?.ok_or_else(errors::not_found)?;
            Ok::<_, ApiError>(entities::list(tx, &control_plane_id, kind, &filter)?)
        })
    })
    .await?;
    let next_link = next.map(|o| format!("{path}?offset={o}"));
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
    page(&state, control_plane_id, kind, filter, path).await
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
    page(&state, control_plane_id, kind, filter, path).await
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
