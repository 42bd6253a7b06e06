//! `/v2/control-planes`: Konnect's control plane objects. Creating one also makes its first
//! (empty) config version, so data planes that connect early get a configuration at once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{json, Map, Value};

use super::errors::{self, invalid_parameters, problem_not_found, ApiError};
use super::{blocking, now, rfc3339, Shared};
use crate::config;
use crate::store::StoreError;
use crate::State;

const CLUSTER_TYPES: [&str; 3] = [
    "CLUSTER_TYPE_CONTROL_PLANE",
    "CLUSTER_TYPE_SERVERLESS",
    "CLUSTER_TYPE_SERVERLESS_V1",
];

/// A stored control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneRow {
    pub id: String,
    pub name: String,
    /// description, labels, cluster_type, auth_type, cloud_gateway, proxy_urls.
    pub doc: Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ControlPlaneRow {
    pub fn cluster_type(&self) -> &str {
        self.doc
            .get("cluster_type")
            .and_then(Value::as_str)
            .unwrap_or(CLUSTER_TYPES[0])
    }

    /// Serverless control planes enforce the seed's platform limits on their data planes.
    pub fn platform_limits(&self) -> bool {
        self.cluster_type().starts_with("CLUSTER_TYPE_SERVERLESS")
    }

    /// Konnect's representation, with where data planes connect.
    pub fn to_json(&self, state: &State) -> Value {
        let field = |k: &str| self.doc.get(k).cloned().unwrap_or(Value::Null);
        let proxy_urls = state.provisioner.proxy_urls(&self.id);
        json!({
            "id": self.id,
            "name": self.name,
            "description": field("description"),
            "labels": self.doc.get("labels").cloned().unwrap_or_else(|| json!({})),
            "config": {
                "control_plane_endpoint": format!("wss://{}/v1/outlet", state.endpoints.cluster),
                "telemetry_endpoint": format!("wss://{}", state.endpoints.cluster),
                "xds_endpoint": state.endpoints.xds.to_string(),
                "cluster_ca_cert": state.identity.ca_pem,
                "cluster_type": self.cluster_type(),
                "auth_type": field("auth_type"),
                "cloud_gateway": field("cloud_gateway"),
                "proxy_urls": proxy_urls,
            },
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

pub fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<ControlPlaneRow>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT id, name, doc, created_at, updated_at FROM control_planes WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            },
        )
        .optional()?
        .map(|(id, name, doc, created_at, updated_at)| ControlPlaneRow {
            id,
            name,
            doc: serde_json::from_str(&doc).unwrap_or_else(|_| json!({})),
            created_at,
            updated_at,
        }))
}

fn all(tx: &Transaction<'_>) -> Result<Vec<ControlPlaneRow>, StoreError> {
    let mut statement = tx.prepare("SELECT id FROM control_planes ORDER BY created_at, rowid")?;
    let ids = statement
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for id in ids {
        rows.extend(load(tx, &id)?);
    }
    Ok(rows)
}

/// Reads and checks the writable fields; `partial` for PATCH (nothing required).
fn read_fields(body: &Value, partial: bool) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut invalid: Vec<(&str, &str, String)> = Vec::new();
    let known = [
        "name",
        "description",
        "cluster_type",
        "auth_type",
        "cloud_gateway",
        "proxy_urls",
        "labels",
    ];
    if let Some(map) = body.as_object() {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                invalid.push(("body", "unknown", format!("unknown property '{key}'")));
            }
        }
    }
    match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.insert("name".into(), json!(s));
        }
        None if partial => {}
        None => invalid.push(("name", "required", "is a required field".into())),
        Some(_) => invalid.push(("name", "type", "must be a non-empty string".into())),
    }
    match body.get("description") {
        None => {}
        Some(v @ (Value::String(_) | Value::Null)) => {
            out.insert("description".into(), v.clone());
        }
        Some(_) => invalid.push(("description", "type", "must be a string".into())),
    }
    match body.get("cluster_type") {
        None if partial => {}
        None => {
            out.insert("cluster_type".into(), json!(CLUSTER_TYPES[0]));
        }
        Some(Value::String(s)) if CLUSTER_TYPES.contains(&s.as_str()) => {
            if partial {
                invalid.push(("cluster_type", "immutable", "cannot be changed".into()));
            }
            out.insert("cluster_type".into(), json!(s));
        }
        Some(_) => invalid.push((
            "cluster_type",
            "enum",
            format!("must be one of: {}", CLUSTER_TYPES.join(", ")),
        )),
    }
    match body.get("auth_type") {
        None if partial => {}
        None => {
            out.insert("auth_type".into(), json!("pinned_client_certs"));
        }
        Some(Value::String(s)) if s == "pinned_client_certs" => {
            out.insert("auth_type".into(), json!(s));
        }
        Some(Value::String(s)) if s == "pki_client_certs" => invalid.push((
            "auth_type",
            "enum",
            "pki_client_certs is not supported yet: pin each data plane certificate \
             (pinned_client_certs)"
                .into(),
        )),
        Some(_) => invalid.push((
            "auth_type",
            "enum",
            "must be one of: pinned_client_certs, pki_client_certs".into(),
        )),
    }
    match body.get("cloud_gateway") {
        None if partial => {}
        None => {
            out.insert("cloud_gateway".into(), json!(false));
        }
        Some(Value::Bool(b)) => {
            out.insert("cloud_gateway".into(), json!(b));
        }
        Some(_) => invalid.push(("cloud_gateway", "type", "must be a boolean".into())),
    }
    match body.get("labels") {
        None => {}
        Some(Value::Object(map)) if map.values().all(Value::is_string) => {
            out.insert("labels".into(), Value::Object(map.clone()));
        }
        Some(Value::Null) => {
            out.insert("labels".into(), json!({}));
        }
        Some(_) => invalid.push(("labels", "type", "must be an object of strings".into())),
    }
    if let Some(urls) = body.get("proxy_urls") {
        out.insert("proxy_urls".into(), urls.clone());
    }
    if invalid.is_empty() {
        Ok(out)
    } else {
        Err(invalid_parameters(&invalid))
    }
}

fn name_taken(name: &str) -> ApiError {
    errors::problem(
        StatusCode::CONFLICT,
        format!("a control plane named '{name}' already exists"),
    )
}

pub async fn create(state: Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = super::json_object(&body)?;
    let mut fields = read_fields(&body, false)?;
    let name = fields
        .remove("name")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    let now = now();
    let shared = Arc::clone(&state);
    let row = blocking(move || {
        let (row, version) = shared.store.transaction(|tx| {
            let taken: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM control_planes WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(StoreError::from)?;
            if taken {
                return Err(name_taken(&name));
            }
            tx.execute(
                "INSERT INTO control_planes (id, name, doc, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                params![id, name, Value::Object(fields).to_string(), now],
            )
            .map_err(StoreError::from)?;
            let row = load(tx, &id)?.ok_or_else(|| errors::internal("control plane vanished"))?;
            let version = config::next_version(tx, &id, now)?;
            Ok::<_, ApiError>((row, version))
        })?;
        // In the blocking task: a client that leaves does not leave it unpublished.
        shared.hub.publish(version);
        Ok(row)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(row.to_json(&state))))
}

pub async fn list(
    state: Shared,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let size = page_param(&query, "page[size]", 10, 100)?;
    let number = page_param(&query, "page[number]", 1, usize::MAX)?;
    let name_eq = query
        .get("filter[name][eq]")
        .or_else(|| query.get("filter[name]"))
        .cloned();
    let name_contains = query.get("filter[name][contains]").cloned();
    let cluster_type = query.get("filter[cluster_type][eq]").cloned();
    let store = Arc::clone(&state.store);
    let rows = blocking(move || store.transaction(|tx| all(tx).map_err(ApiError::from))).await?;
    let rows: Vec<&ControlPlaneRow> = rows
        .iter()
        .filter(|r| name_eq.as_ref().is_none_or(|n| &r.name == n))
        .filter(|r| {
            name_contains
                .as_ref()
                .is_none_or(|n| r.name.contains(n.as_str()))
        })
        .filter(|r| cluster_type.as_ref().is_none_or(|t| r.cluster_type() == t))
        .collect();
    let total = rows.len();
    let data: Vec<Value> = rows
        .into_iter()
        .skip((number - 1).saturating_mul(size))
        .take(size)
        .map(|r| r.to_json(&state))
        .collect();
    Ok(Json(json!({
        "data": data,
        "meta": { "page": { "number": number, "size": size, "total": total } },
    })))
}

pub(super) fn page_param(
    query: &HashMap<String, String>,
    key: &'static str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 && n <= max => Ok(n),
            _ => Err(invalid_parameters(&[(
                key,
                "range",
                format!("must be an integer between 1 and {max}"),
            )])),
        },
    }
}

pub async fn get(state: Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let row =
        blocking(move || store.transaction(|tx| load(tx, &id).map_err(ApiError::from))).await?;
    match row {
        Some(row) => Ok(Json(row.to_json(&state))),
        None => Err(problem_not_found("control plane")),
    }
}

pub async fn update(
    state: Shared,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = super::json_object(&body)?;
    let fields = read_fields(&body, true)?;
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            let mut row = load(tx, &id)?.ok_or_else(|| problem_not_found("control plane"))?;
            let mut doc = row.doc.as_object().cloned().unwrap_or_default();
            for (key, value) in fields {
                if key == "name" {
                    let name = value.as_str().unwrap_or_default().to_owned();
                    let taken: bool = tx
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM control_planes WHERE name = ?1 AND id != ?2)",
                            [&name, &id],
                            |r| r.get(0),
                        )
                        .map_err(StoreError::from)?;
                    if taken {
                        return Err(name_taken(&name));
                    }
                    row.name = name;
                } else {
                    doc.insert(key, value);
                }
            }
            row.doc = Value::Object(doc);
            row.updated_at = now();
            tx.execute(
                "UPDATE control_planes SET name = ?2, doc = ?3, updated_at = ?4 WHERE id = ?1",
                params![row.id, row.name, row.doc.to_string(), row.updated_at],
            )
            .map_err(StoreError::from)?;
            Ok(row)
        })
    })
    .await?;
    Ok(Json(row.to_json(&state)))
}

pub async fn delete(state: Shared, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let store = Arc::clone(&state.store);
    let cp = id.clone();
    blocking(move || {
        store.transaction(|tx| {
            let deleted = tx
                .execute("DELETE FROM control_planes WHERE id = ?1", [&cp])
                .map_err(StoreError::from)?;
            if deleted == 0 {
                return Err(problem_not_found("control plane"));
            }
            Ok(())
        })
    })
    .await?;
    // Its cloud gateway configuration went with it (ON DELETE CASCADE): drain its gateways.
    super::cloud_gateways::provision_committed(&state, id.clone()).await;
    state.hub.remove(&id);
    state.nodes.remove_control_plane(&id);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: Value, partial: bool) -> Vec<Value> {
        let error = read_fields(&body, partial).expect_err("refused");
        let (status, body) = error.parts();
        assert_eq!(status, 400);
        body["invalid_parameters"]
            .as_array()
            .expect("invalid_parameters")
            .clone()
    }

    #[test]
    fn a_new_control_plane_gets_konnects_defaults() {
        let fields = read_fields(&json!({ "name": "cp" }), false).expect("fields");
        assert_eq!(
            Value::Object(fields),
            json!({
                "name": "cp",
                "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE",
                "auth_type": "pinned_client_certs",
                "cloud_gateway": false,
            })
        );
        let patch = read_fields(&json!({ "description": null }), true).expect("patch");
        assert_eq!(Value::Object(patch), json!({ "description": null }));
    }

    #[test]
    fn control_plane_fields_are_refused_by_name() {
        let field = |list: &[Value]| -> Vec<(String, String)> {
            list.iter()
                .map(|p| {
                    (
                        p["field"].as_str().unwrap_or_default().to_owned(),
                        p["rule"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        };
        let pair = |f: &str, r: &str| (f.to_owned(), r.to_owned());
        assert_eq!(
            field(&refused(json!({}), false)),
            [pair("name", "required")]
        );
        assert_eq!(
            field(&refused(json!({ "name": " " }), false)),
            [pair("name", "type")]
        );
        assert_eq!(
            field(&refused(json!({ "name": "cp", "colour": "red" }), false)),
            [pair("body", "unknown")]
        );
        assert_eq!(
            field(&refused(
                json!({ "name": "cp", "cluster_type": "K8S" }),
                false
            )),
            [pair("cluster_type", "enum")]
        );
        assert_eq!(
            field(&refused(
                json!({ "cluster_type": "CLUSTER_TYPE_SERVERLESS" }),
                true
            )),
            [pair("cluster_type", "immutable")],
            "a PATCH cannot change the type"
        );
        let pki = refused(
            json!({ "name": "cp", "auth_type": "pki_client_certs" }),
            false,
        );
        assert_eq!(field(&pki), [pair("auth_type", "enum")]);
        assert_eq!(
            pki[0]["reason"],
            "pki_client_certs is not supported yet: pin each data plane certificate \
             (pinned_client_certs)"
        );
        assert_eq!(
            field(&refused(
                json!({ "name": 1, "cloud_gateway": "yes", "description": 2 }),
                false
            )),
            [
                pair("name", "type"),
                pair("description", "type"),
                pair("cloud_gateway", "type"),
            ],
            "every invalid field is named at once"
        );
    }
}
