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

    /// Konnect's representation, with where data planes connect. `config` adds two fields
    /// Konnect's does not have, which a data plane of this control plane needs and can find
    /// nowhere else: `xds_endpoint` (where Envoy connects) and `cluster_ca_cert` (the CA the
    /// data planes trust, as this control plane is its own). `proxy_urls` are the user's,
    /// then those of the cloud gateways provisioned for it.
    pub fn to_json(&self, state: &State) -> Value {
        let mut proxy_urls: Vec<Value> = self
            .doc
            .get("proxy_urls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for url in state.provisioner.proxy_urls(&self.id) {
            if !proxy_urls.contains(&url) {
                proxy_urls.push(url);
            }
        }
        json!({
            "id": self.id,
            "name": self.name,
            // Required and not nullable in Konnect's ControlPlane: empty when none was given.
            "description": self.doc.get("description").and_then(Value::as_str).unwrap_or_default(),
            "labels": self.doc.get("labels").filter(|l| l.is_object()).cloned().unwrap_or_else(|| json!({})),
            "config": {
                "control_plane_endpoint": format!("wss://{}/v1/outlet", state.endpoints.cluster),
                "telemetry_endpoint": format!("wss://{}", state.endpoints.cluster),
                "xds_endpoint": state.endpoints.xds.to_string(),
                "cluster_ca_cert": state.identity.ca_pem,
                "cluster_type": self.cluster_type(),
                "auth_type": self.doc.get("auth_type").and_then(Value::as_str).unwrap_or("pinned_client_certs"),
                "cloud_gateway": self.doc.get("cloud_gateway").and_then(Value::as_bool).unwrap_or(false),
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

/// The properties of Konnect's `CreateControlPlaneRequest` and `UpdateControlPlaneRequest`
/// (both `additionalProperties: false`): the type and `cloud_gateway` are set at creation.
const CREATE_FIELDS: [&str; 7] = [
    "name",
    "description",
    "cluster_type",
    "auth_type",
    "cloud_gateway",
    "proxy_urls",
    "labels",
];
const UPDATE_FIELDS: [&str; 5] = ["name", "description", "auth_type", "proxy_urls", "labels"];

/// Konnect's label rules: at most 50; keys of 1 to 63 characters not starting with `kong`,
/// `konnect`, `mesh`, `kic` or `_`; values of 1 to 63 letters, digits, `-`, `.` and `_`,
/// starting and ending with a letter or digit.
fn check_labels(labels: &Map<String, Value>, invalid: &mut Vec<Value>) {
    if labels.len() > 50 {
        invalid.push(errors::invalid(
            "labels",
            "max_items",
            "must have at most 50 labels",
        ));
    }
    for (key, value) in labels {
        let field = format!("labels.{key}");
        let lower = key.to_ascii_lowercase();
        if key.is_empty() || key.chars().count() > 63 {
            invalid.push(errors::invalid(
                field.clone(),
                "is_label",
                "a label key must have 1 to 63 characters",
            ));
        } else if let Some(prefix) = ["kong", "konnect", "mesh", "kic", "_"]
            .iter()
            .find(|p| lower.starts_with(*p))
        {
            invalid.push(errors::invalid(
                field.clone(),
                "is_label",
                format!("a label key cannot start with '{prefix}'"),
            ));
        }
        let valid_value = value.as_str().is_some_and(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b))
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        });
        if !valid_value {
            invalid.push(errors::invalid(
                field,
                "is_label",
                "a label value must be a string of 1 to 63 letters, digits, '-', '.' or '_', \
                 starting and ending with a letter or digit",
            ));
        }
    }
}

/// Konnect's `ProxyURLs`: `{host, port, protocol}` objects and nothing else.
fn check_proxy_urls(urls: &Value, invalid: &mut Vec<Value>) {
    let Some(list) = urls.as_array() else {
        invalid.push(errors::invalid(
            "proxy_urls",
            "is_array",
            "must be an array of {host, port, protocol}",
        ));
        return;
    };
    for (i, url) in list.iter().enumerate() {
        let field = |name: &str| format!("proxy_urls[{i}].{name}");
        let Some(map) = url.as_object() else {
            invalid.push(errors::invalid(
                format!("proxy_urls[{i}]"),
                "is_object",
                "must be an object {host, port, protocol}",
            ));
            continue;
        };
        for key in map.keys() {
            if !["host", "port", "protocol"].contains(&key.as_str()) {
                invalid.push(errors::invalid(
                    field(key),
                    "unknown_property",
                    "is not a property of a proxy URL (host, port, protocol)",
                ));
            }
        }
        match map.get("host") {
            Some(Value::String(h)) if !h.is_empty() => {}
            None => invalid.push(errors::invalid(
                field("host"),
                "required",
                "is a required field",
            )),
            Some(_) => invalid.push(errors::invalid(
                field("host"),
                "is_string",
                "must be a non-empty string",
            )),
        }
        match map.get("port") {
            Some(p) if p.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => {}
            None => invalid.push(errors::invalid(
                field("port"),
                "required",
                "is a required field",
            )),
            Some(_) => invalid.push(errors::invalid(
                field("port"),
                "is_integer",
                "must be an integer between 1 and 65535",
            )),
        }
        match map.get("protocol") {
            Some(Value::String(p)) if !p.is_empty() => {}
            None => invalid.push(errors::invalid(
                field("protocol"),
                "required",
                "is a required field",
            )),
            Some(_) => invalid.push(errors::invalid(
                field("protocol"),
                "is_string",
                "must be a non-empty string",
            )),
        }
    }
}

/// Reads and checks the writable fields; `partial` for PATCH (nothing required, and only the
/// fields Konnect lets an update change).
fn read_fields(body: &Value, partial: bool) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut invalid: Vec<Value> = Vec::new();
    let known: &[&str] = if partial {
        &UPDATE_FIELDS
    } else {
        &CREATE_FIELDS
    };
    if let Some(map) = body.as_object() {
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let reason = if partial && CREATE_FIELDS.contains(&key.as_str()) {
                format!("'{key}' is set when the control plane is created and cannot be changed")
            } else {
                format!("'{key}' is not a property of a control plane")
            };
            invalid.push(errors::invalid(key.as_str(), "unknown_property", reason));
        }
    }
    match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.insert("name".into(), json!(s));
        }
        None if partial => {}
        None => invalid.push(errors::invalid("name", "required", "is a required field")),
        Some(_) => invalid.push(errors::invalid(
            "name",
            "type",
            "must be a non-empty string",
        )),
    }
    match body.get("description") {
        None => {}
        Some(v @ Value::String(_)) => {
            out.insert("description".into(), v.clone());
        }
        // Konnect's description is `nullable: false`.
        Some(_) => invalid.push(errors::invalid(
            "description",
            "type",
            "must be a string (not null)",
        )),
    }
    match body.get("cluster_type") {
        _ if partial => {}
        None => {
            out.insert("cluster_type".into(), json!(CLUSTER_TYPES[0]));
        }
        Some(Value::String(s)) if CLUSTER_TYPES.contains(&s.as_str()) => {
            out.insert("cluster_type".into(), json!(s));
        }
        Some(_) => invalid.push(errors::invalid_choice("cluster_type", &CLUSTER_TYPES)),
    }
    match body.get("auth_type") {
        None if partial => {}
        None => {
            out.insert("auth_type".into(), json!("pinned_client_certs"));
        }
        Some(Value::String(s)) if s == "pinned_client_certs" => {
            out.insert("auth_type".into(), json!(s));
        }
        Some(Value::String(s)) if s == "pki_client_certs" => {
            let mut pki = errors::invalid_choice("auth_type", &["pinned_client_certs"]);
            pki["reason"] = json!(
                "pki_client_certs is not supported yet: pin each data plane certificate \
                 (pinned_client_certs)"
            );
            invalid.push(pki);
        }
        Some(_) => invalid.push(errors::invalid_choice(
            "auth_type",
            &["pinned_client_certs", "pki_client_certs"],
        )),
    }
    match body.get("cloud_gateway") {
        _ if partial => {}
        None => {
            out.insert("cloud_gateway".into(), json!(false));
        }
        Some(Value::Bool(b)) => {
            out.insert("cloud_gateway".into(), json!(b));
        }
        Some(_) => invalid.push(errors::invalid(
            "cloud_gateway",
            "is_boolean",
            "must be a boolean",
        )),
    }
    match body.get("labels") {
        None => {}
        Some(Value::Object(map)) => {
            check_labels(map, &mut invalid);
            out.insert("labels".into(), Value::Object(map.clone()));
        }
        Some(Value::Null) => {
            out.insert("labels".into(), json!({}));
        }
        Some(_) => invalid.push(errors::invalid(
            "labels",
            "is_object",
            "must be an object of strings",
        )),
    }
    if let Some(urls) = body.get("proxy_urls") {
        check_proxy_urls(urls, &mut invalid);
        out.insert("proxy_urls".into(), urls.clone());
    }
    if invalid.is_empty() {
        Ok(out)
    } else {
        Err(errors::invalid_list(invalid))
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
    let shared = Arc::clone(&state);
    let cp = id.clone();
    blocking(move || {
        shared.store.transaction(|tx| {
            let deleted = tx
                .execute("DELETE FROM control_planes WHERE id = ?1", [&cp])
                .map_err(StoreError::from)?;
            if deleted == 0 {
                return Err(problem_not_found("control plane"));
            }
            Ok(())
        })?;
        // In the blocking task, which ends even if the client leaves: once the deletion is
        // committed, its data planes' sessions end and its nodes are forgotten.
        shared.hub.remove(&cp);
        shared.nodes.remove_control_plane(&cp);
        Ok(())
    })
    .await?;
    // Its cloud gateway configuration went with it (ON DELETE CASCADE): drain its gateways,
    // on a task of its own (a client that leaves does not cut it short).
    super::cloud_gateways::provision_committed(&state, id.clone()).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::errors::{field_rules as rules, pair};

    #[tokio::test]
    async fn a_deleted_control_plane_is_forgotten_even_when_its_client_leaves() {
        let dir = tempfile::tempdir().expect("dir");
        let state = crate::sync::tests::state(&dir, false, std::time::Duration::from_secs(30));
        state.hub.publish(Arc::new(
            crate::hub::ConfigVersion::new("cp", 1, r#"{"_format_version":"3.0"}"#.into(), 0)
                .expect("version"),
        ));
        state.nodes.connected(
            "cp",
            crate::nodes::Hello {
                id: "n1".into(),
                kind: crate::nodes::NodeKind::Gateway,
                hostname: "h".into(),
                version: "1".into(),
                ip: None,
            },
        );
        // The store is busy (another write holds it) until the client has left.
        let (holding, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                state.store.transaction(|_| {
                    let _ = holding.send(());
                    let _ = released.recv();
                    Ok::<_, crate::store::StoreError>(())
                })
            })
        };
        held.recv().expect("the store is held");
        let request = delete(axum::extract::State(Arc::clone(&state)), Path("cp".into()));
        // Polled once, then dropped as axum drops the handler of a client that disconnected.
        let left = tokio::time::timeout(std::time::Duration::from_millis(50), request).await;
        assert!(left.is_err(), "still running: {left:?}");
        release.send(()).expect("release");
        busy.join().expect("no panic").expect("the other write");
        let forgotten = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while state.hub.current("cp").is_some() || state.nodes.get("cp", "n1").is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            forgotten.is_ok(),
            "the deleted control plane's version and nodes outlived it"
        );
    }

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
        let patch = read_fields(&json!({ "description": "" }), true).expect("patch");
        assert_eq!(Value::Object(patch), json!({ "description": "" }));
        let labels = json!({ "env": "dev", "team-1": "a.b_c-d", "x": "9" });
        let fields = read_fields(&json!({ "labels": labels }), true).expect("labels");
        assert_eq!(fields["labels"], labels);
        let urls = json!([{ "host": "example.com", "port": 443, "protocol": "https" }]);
        let fields = read_fields(&json!({ "proxy_urls": urls }), true).expect("proxy_urls");
        assert_eq!(fields["proxy_urls"], urls);
    }

    #[test]
    fn control_plane_fields_are_refused_by_name() {
        assert_eq!(
            rules(&refused(json!({}), false)),
            [pair("name", "required")]
        );
        assert_eq!(
            rules(&refused(json!({ "name": " " }), false)),
            [pair("name", "type")]
        );
        let unknown = refused(json!({ "name": "cp", "colour": "red" }), false);
        assert_eq!(rules(&unknown), [pair("colour", "unknown_property")]);
        assert_eq!(
            unknown[0]["reason"],
            "'colour' is not a property of a control plane"
        );
        let bad_type = refused(json!({ "name": "cp", "cluster_type": "K8S" }), false);
        assert_eq!(rules(&bad_type), [pair("cluster_type", "enum")]);
        assert_eq!(bad_type[0]["choices"], json!(CLUSTER_TYPES));
        let pki = refused(
            json!({ "name": "cp", "auth_type": "pki_client_certs" }),
            false,
        );
        assert_eq!(rules(&pki), [pair("auth_type", "enum")]);
        assert_eq!(
            pki[0]["reason"],
            "pki_client_certs is not supported yet: pin each data plane certificate \
             (pinned_client_certs)"
        );
        assert_eq!(
            rules(&refused(
                json!({ "name": 1, "cloud_gateway": "yes", "description": 2 }),
                false
            )),
            [
                pair("name", "type"),
                pair("description", "type"),
                pair("cloud_gateway", "is_boolean"),
            ],
            "every invalid field is named at once"
        );
    }

    /// Review D19: Konnect's description is `nullable: false`; an update cannot change the
    /// type or `cloud_gateway` (UpdateControlPlaneRequest has neither, additionalProperties:
    /// false); label keys and values follow Konnect's rules; proxy URLs are `{host, port,
    /// protocol}`. Before: each was accepted.
    #[test]
    fn control_plane_fields_follow_konnects_rules() {
        for partial in [false, true] {
            let null = refused(json!({ "name": "cp", "description": null }), partial);
            assert_eq!(rules(&null), [pair("description", "type")], "{partial}");
        }
        for field in ["cloud_gateway", "cluster_type"] {
            let value = if field == "cloud_gateway" {
                json!(true)
            } else {
                json!("CLUSTER_TYPE_SERVERLESS")
            };
            let patch = refused(json!({ field: value }), true);
            assert_eq!(rules(&patch), [pair(field, "unknown_property")]);
            assert_eq!(
                patch[0]["reason"],
                format!("'{field}' is set when the control plane is created and cannot be changed")
            );
        }
        let long = "k".repeat(64);
        let labels = refused(
            json!({ "name": "cp", "labels": {
                "kong-thing": "a", "Konnect": "a", "mesh": "a", "kic.x": "a", "_x": "a",
                long.clone(): "a", "ok": "-bad", "ok2": "", "ok3": "has space", "ok4": 1,
            } }),
            false,
        );
        let mut got = rules(&labels);
        got.sort();
        let mut want: Vec<_> = [
            "kong-thing",
            "Konnect",
            "mesh",
            "kic.x",
            "_x",
            long.as_str(),
            "ok",
            "ok2",
            "ok3",
            "ok4",
        ]
        .iter()
        .map(|k| pair(&format!("labels.{k}"), "is_label"))
        .collect();
        want.sort();
        assert_eq!(got, want);
        let many: Map<String, Value> = (0..51).map(|i| (format!("l{i}"), json!("v"))).collect();
        assert_eq!(
            rules(&refused(json!({ "labels": many }), true)),
            [pair("labels", "max_items")]
        );
        let urls = refused(
            json!({ "proxy_urls": [
                { "host": "h", "port": 0, "protocol": "https" },
                { "host": "h", "protocol": "https", "path": "/" },
                "h:443",
            ] }),
            true,
        );
        assert_eq!(
            rules(&urls),
            [
                pair("proxy_urls[0].port", "is_integer"),
                pair("proxy_urls[1].path", "unknown_property"),
                pair("proxy_urls[1].port", "required"),
                pair("proxy_urls[2]", "is_object"),
            ]
        );
    }
}
