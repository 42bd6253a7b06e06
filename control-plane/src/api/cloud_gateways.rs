//! `/v3/cloud-gateways/configurations`: Konnect's hosted data planes, provisioned here as
//! local `gateway` processes (see [`crate::provision`]). A PUT creates or replaces the one
//! configuration of a control plane; each data plane group gets a gateway with its own
//! pinned client certificate and a fixed proxy port.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{self, invalid_parameters, problem_not_found, ApiError};
use super::{blocking, json_object, now, rfc3339, Shared};
use crate::pki;
use crate::provision::{self, DataPlaneSpec};
use crate::store::{Store, StoreError};
use crate::State;

/// Serverless kinds and the control plane type each needs.
const KINDS: [(&str, &str); 2] = [
    ("serverless.v0", "CLUSTER_TYPE_SERVERLESS"),
    ("serverless.v1", "CLUSTER_TYPE_SERVERLESS_V1"),
];
const MAX_GROUPS: usize = 5;

fn stored(tx: &Transaction<'_>, sql_where: &str, key: &str) -> Result<Option<Value>, StoreError> {
    let doc: Option<String> = tx
        .query_row(
            &format!("SELECT doc FROM cloud_gateways WHERE {sql_where} = ?1"),
            [key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(doc.and_then(|d| serde_json::from_str(&d).ok()))
}

fn specs_of(data_dir: &std::path::Path, doc: &Value) -> Vec<DataPlaneSpec> {
    let control_plane_id = doc["control_plane_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    doc["dataplane_groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| {
                    let group_id = g["id"].as_str()?.to_owned();
                    let port = u16::try_from(g["proxy_port"].as_u64()?).ok()?;
                    Some(DataPlaneSpec {
                        control_plane_id: control_plane_id.clone(),
                        dir: data_dir.join("cloud-gateways").join(&group_id),
                        group_id,
                        proxy: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The data planes of every stored configuration, or of one control plane's, as committed.
pub fn cloud_gateway_specs(
    store: &Store,
    control_plane_id: Option<&str>,
) -> Result<Vec<(String, Vec<DataPlaneSpec>)>, String> {
    let data_dir = store.data_dir().to_path_buf();
    store
        .transaction(|tx| -> Result<_, StoreError> {
            let mut statement = tx.prepare(
                "SELECT control_plane_id, doc FROM cloud_gateways
                 WHERE ?1 IS NULL OR control_plane_id = ?1",
            )?;
            let rows = statement
                .query_map([control_plane_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(cp, doc)| {
                    let doc: Value = serde_json::from_str(&doc).ok()?;
                    Some((cp, specs_of(&data_dir, &doc)))
                })
                .collect())
        })
        .map_err(|e| e.to_string())
}

/// Issues the data plane group of `spec` a new client certificate, pins it in place of its
/// old one and writes it to the group's folder (before the commit): for a group whose key a
/// crash lost.
pub fn reissue_credentials(
    store: &Store,
    ca_pem: &str,
    spec: &DataPlaneSpec,
) -> Result<(), String> {
    store
        .transaction(|tx| -> Result<(), StoreError> {
            let cp = &spec.control_plane_id;
            let Some(mut doc) = stored(tx, "control_plane_id", cp)? else {
                return Ok(());
            };
            let Some(group) = doc["dataplane_groups"].as_array_mut().and_then(|groups| {
                groups
                    .iter_mut()
                    .find(|g| g["id"] == spec.group_id.as_str())
            }) else {
                return Ok(());
            };
            tx.execute(
                "DELETE FROM dp_client_certificates WHERE id = ?1",
                [group["certificate_id"].as_str().unwrap_or_default()],
            )
            .map_err(StoreError::from)?;
            let certificate_id = issue(tx, cp, &spec.group_id, &spec.dir, ca_pem, now())?;
            group["certificate_id"] = json!(certificate_id);
            tx.execute(
                "UPDATE cloud_gateways SET doc = ?1 WHERE control_plane_id = ?2",
                params![doc.to_string(), cp],
            )
            .map_err(StoreError::from)?;
            Ok(())
        })
        .map_err(|e| format!("reissuing the credentials of group {}: {e}", spec.group_id))
}

/// Makes a client certificate for group `group_id`, pins it for control plane `cp` and
/// writes it with its key and the CA into `dir`, durably, inside the caller's transaction;
/// returns the pin's id.
fn issue(
    tx: &Transaction<'_>,
    cp: &str,
    group_id: &str,
    dir: &std::path::Path,
    ca_pem: &str,
    now: i64,
) -> Result<String, StoreError> {
    let (cert, key) =
        pki::client_certificate(&format!("dp-{group_id}")).map_err(StoreError::Database)?;
    let der = pki::parse_certificate(&cert).map_err(StoreError::Database)?;
    let certificate_id = uuid::Uuid::new_v4().to_string();
    crate::store::pin_certificate(tx, &certificate_id, cp, &cert, &pki::fingerprint(&der), now)?;
    provision::write_credentials(dir, &cert, &key, ca_pem).map_err(StoreError::Database)?;
    Ok(certificate_id)
}

/// A loopback port for a new group that no stored group has: a port stored for a gateway
/// that is down at this moment (restarting, or its control plane's host rebooting) is free
/// to bind, and would otherwise be handed out twice.
fn allocate_port(tx: &Transaction<'_>, also_taken: &[u16]) -> Result<u16, ApiError> {
    let mut statement = tx
        .prepare("SELECT doc FROM cloud_gateways")
        .map_err(StoreError::from)?;
    let docs = statement
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(StoreError::from)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from)?;
    let mut taken: std::collections::HashSet<u16> = also_taken.iter().copied().collect();
    for doc in docs
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
    {
        for group in doc["dataplane_groups"].as_array().into_iter().flatten() {
            if let Some(port) = group["proxy_port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
            {
                taken.insert(port);
            }
        }
    }
    for _ in 0..32 {
        let port = provision::free_port().map_err(errors::internal)?.port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(errors::internal(
        "no free loopback port that no data plane group has",
    ))
}

/// Konnect's view of a configuration, with each group's live state and proxy URL.
fn to_json(state: &State, doc: &Value) -> Value {
    let mut out = doc.clone();
    let control_plane_id = doc["control_plane_id"].as_str().unwrap_or_default();
    let expected = state.hub.current(control_plane_id);
    if let Some(groups) = out["dataplane_groups"].as_array_mut() {
        for group in groups {
            let id = group["id"].as_str().unwrap_or_default().to_owned();
            let port = group["proxy_port"].as_u64().unwrap_or_default();
            let node = state.nodes.get(control_plane_id, &id);
            let in_sync = node.as_ref().is_some_and(|n| {
                n.sync_status(expected.as_ref().map(|v| v.hash.as_str())) == "in_sync"
            });
            let (running, restarts, last_exit) = state
                .provisioner
                .health(control_plane_id, &id)
                .unwrap_or((false, 0, None));
            let status = match (running, in_sync) {
                (true, true) => "ready",
                (true, false) => "initializing",
                (false, _) if restarts > 0 => "failed",
                (false, _) => "initializing",
            };
            group["state"] = json!(status);
            group["proxy_url"] = json!(format!("http://127.0.0.1:{port}"));
            group["restarts"] = json!(restarts);
            group["last_exit"] = json!(last_exit);
            group["egress_ip_addresses"] = json!(["127.0.0.1"]);
            group["private_ip_addresses"] = json!(["127.0.0.1"]);
            if let Some(map) = group.as_object_mut() {
                map.remove("certificate_id");
            }
        }
    }
    for field in ["created_at", "updated_at"] {
        out[field] = json!(rfc3339(doc[field].as_i64().unwrap_or_default()));
    }
    out
}

fn read_groups(body: &Value) -> Result<Vec<Value>, ApiError> {
    let Some(groups) = body.get("dataplane_groups").and_then(Value::as_array) else {
        return Err(invalid_parameters(&[(
            "dataplane_groups",
            "required",
            "is a required array of data plane groups".into(),
        )]));
    };
    if groups.is_empty() || groups.len() > MAX_GROUPS {
        return Err(invalid_parameters(&[(
            "dataplane_groups",
            "range",
            format!("must have between 1 and {MAX_GROUPS} groups"),
        )]));
    }
    let mut out = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let region = group.get("region").and_then(Value::as_str);
        let Some(region) = region else {
            return Err(invalid_parameters(&[(
                "dataplane_groups.region",
                "required",
                format!("group {} needs a region", i + 1),
            )]));
        };
        out.push(json!({
            "provider": group.get("provider").and_then(Value::as_str).unwrap_or("aws"),
            "region": region,
            "autoscale": group.get("autoscale").cloned().unwrap_or(json!({"kind": "static", "requested_instances": 1})),
            "environment": group.get("environment").cloned().unwrap_or(json!([])),
        }));
    }
    Ok(out)
}

pub async fn put(state: Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_object(&body)?;
    let control_plane_id = match body.get("control_plane_id").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            return Err(invalid_parameters(&[(
                "control_plane_id",
                "required",
                "is a required field".into(),
            )]))
        }
    };
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some((_, cluster_type)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err(invalid_parameters(&[(
            "kind",
            "enum",
            "must be one of: serverless.v0, serverless.v1 (dedicated cloud gateways are not provisioned by wasmgate)".into(),
        )]));
    };
    let groups = read_groups(&body)?;
    let geo = body
        .get("control_plane_geo")
        .and_then(Value::as_str)
        .unwrap_or("us")
        .to_owned();
    let version = body.get("version").cloned().unwrap_or(Value::Null);
    let store = Arc::clone(&state.store);
    let ca_pem = state.identity.ca_pem.clone();
    let data_dir = state.options.data_dir.clone();
    let cluster_type = (*cluster_type).to_owned();
    let cp = control_plane_id.clone();
    let (doc, created) = blocking(move || {
        store.transaction(|tx| {
            let row = control_planes::load(tx, &cp)?.ok_or_else(|| {
                invalid_parameters(&[("control_plane_id", "exists", format!("no control plane with id {cp}"))])
            })?;
            if row.cluster_type() != cluster_type {
                return Err(invalid_parameters(&[(
                    "kind",
                    "match",
                    format!("{kind} needs a control plane of cluster_type {cluster_type}; this one is {}", row.cluster_type()),
                )]));
            }
            let previous = stored(tx, "control_plane_id", &cp)?;
            let now = now();
            let old_groups = previous
                .as_ref()
                .and_then(|p| p["dataplane_groups"].as_array().cloned())
                .unwrap_or_default();
            let mut new_groups = Vec::new();
            for (i, mut group) in groups.into_iter().enumerate() {
                let reuse = old_groups.get(i).filter(|old| {
                    old["region"] == group["region"] && old["provider"] == group["provider"]
                });
                match reuse {
                    Some(old) => {
                        for field in ["id", "proxy_port", "certificate_id"] {
                            group[field] = old[field].clone();
                        }
                    }
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        let ports: Vec<u16> = new_groups.iter().filter_map(|g: &Value| g["proxy_port"].as_u64()).filter_map(|p| u16::try_from(p).ok()).collect();
                        let port = allocate_port(tx, &ports)?;
                        let dir = data_dir.join("cloud-gateways").join(&id);
                        let certificate_id = issue(tx, &cp, &id, &dir, &ca_pem, now)?;
                        group["id"] = json!(id);
                        group["proxy_port"] = json!(port);
                        group["certificate_id"] = json!(certificate_id);
                    }
                }
                new_groups.push(group);
            }
            // Groups no longer wanted lose their pinned certificate.
            for old in &old_groups {
                if !new_groups.iter().any(|g| g["id"] == old["id"]) {
                    tx.execute(
                        "DELETE FROM dp_client_certificates WHERE id = ?1",
                        [old["certificate_id"].as_str().unwrap_or_default()],
                    )
                    .map_err(StoreError::from)?;
                }
            }
            let doc = json!({
                "id": previous.as_ref().and_then(|p| p["id"].as_str().map(str::to_owned)).unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                "control_plane_id": cp,
                "control_plane_geo": geo,
                "kind": kind,
                "version": version,
                "api_access": "public",
                "dataplane_groups": new_groups,
                "entity_version": previous.as_ref().and_then(|p| p["entity_version"].as_u64()).unwrap_or(0) + 1,
                "created_at": previous.as_ref().and_then(|p| p["created_at"].as_i64()).unwrap_or(now),
                "updated_at": now,
            });
            tx.execute(
                "INSERT INTO cloud_gateways (id, control_plane_id, doc, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (control_plane_id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
                params![doc["id"].as_str().unwrap_or_default(), cp, doc.to_string(), now],
            )
            .map_err(StoreError::from)?;
            Ok((doc, previous.is_none()))
        })
    })
    .await?;
    provision_committed(&state, control_plane_id).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_json(&state, &doc))))
}

pub async fn list(state: Shared) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let docs: Vec<Value> = blocking(move || {
        store.transaction(|tx| -> Result<_, ApiError> {
            let mut statement = tx
                .prepare("SELECT doc FROM cloud_gateways ORDER BY created_at, rowid")
                .map_err(StoreError::from)?;
            let docs = statement
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(StoreError::from)?
                .filter_map(|d| d.ok().and_then(|d| serde_json::from_str(&d).ok()))
                .collect();
            Ok(docs)
        })
    })
    .await?;
    let data: Vec<Value> = docs.iter().map(|d| to_json(&state, d)).collect();
    let total = data.len();
    Ok(Json(
        json!({ "data": data, "meta": { "page": { "number": 1, "size": total, "total": total } } }),
    ))
}

pub async fn get(state: Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let doc =
        blocking(move || store.transaction(|tx| Ok::<_, ApiError>(stored(tx, "id", &id)?))).await?;
    doc.map(|d| Json(to_json(&state, &d)))
        .ok_or_else(|| problem_not_found("configuration"))
}

/// Stops the configuration's data planes and unpins their certificates.
pub async fn delete(state: Shared, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let store = Arc::clone(&state.store);
    let doc = blocking(move || {
        store.transaction(|tx| {
            let doc = stored(tx, "id", &id)?.ok_or_else(|| problem_not_found("configuration"))?;
            for group in doc["dataplane_groups"].as_array().into_iter().flatten() {
                tx.execute(
                    "DELETE FROM dp_client_certificates WHERE id = ?1",
                    [group["certificate_id"].as_str().unwrap_or_default()],
                )
                .map_err(StoreError::from)?;
            }
            tx.execute("DELETE FROM cloud_gateways WHERE id = ?1", [&id])
                .map_err(StoreError::from)?;
            Ok(doc)
        })
    })
    .await?;
    let control_plane_id = doc["control_plane_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    provision_committed(&state, control_plane_id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Brings the control plane's data planes to what was just committed (its gateways
/// started, or drained and removed), on a task of its own: a client that hangs up does not
/// cut it short. The answer waits for it.
pub async fn provision_committed(state: &Arc<State>, control_plane_id: String) {
    let state = Arc::clone(state);
    let provisioning =
        tokio::spawn(async move { provision::reconcile(&state, &control_plane_id).await });
    if let Err(e) = provisioning.await {
        log::error!("provisioning: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: Value) -> Value {
        let error = read_groups(&body).expect_err("refused");
        let (status, body) = error.parts();
        assert_eq!(status, 400);
        body["invalid_parameters"][0].clone()
    }

    #[test]
    fn data_plane_groups_get_konnects_defaults() {
        let groups = read_groups(&json!({ "dataplane_groups": [
            { "region": "us" },
            { "region": "eu", "provider": "azure", "autoscale": { "kind": "autopilot" },
              "environment": [{ "name": "A", "value": "1" }], "ignored": true },
        ] }))
        .expect("groups");
        assert_eq!(
            groups,
            vec![
                json!({ "provider": "aws", "region": "us",
                        "autoscale": { "kind": "static", "requested_instances": 1 },
                        "environment": [] }),
                json!({ "provider": "azure", "region": "eu",
                        "autoscale": { "kind": "autopilot" },
                        "environment": [{ "name": "A", "value": "1" }] }),
            ]
        );
        let five = vec![json!({ "region": "us" }); MAX_GROUPS];
        assert_eq!(
            read_groups(&json!({ "dataplane_groups": five }))
                .expect("five")
                .len(),
            5
        );
    }

    #[test]
    fn data_plane_groups_are_refused_by_name() {
        assert_eq!(
            refusal(json!({})),
            json!({ "field": "dataplane_groups", "rule": "required",
                    "reason": "is a required array of data plane groups" })
        );
        assert_eq!(
            refusal(json!({ "dataplane_groups": { "region": "us" } }))["rule"],
            "required"
        );
        for count in [0, MAX_GROUPS + 1] {
            assert_eq!(
                refusal(json!({ "dataplane_groups": vec![json!({ "region": "us" }); count] })),
                json!({ "field": "dataplane_groups", "rule": "range",
                        "reason": "must have between 1 and 5 groups" }),
                "{count} groups"
            );
        }
        assert_eq!(
            refusal(json!({ "dataplane_groups": [{ "region": "us" }, { "provider": "aws" }] })),
            json!({ "field": "dataplane_groups.region", "rule": "required",
                    "reason": "group 2 needs a region" })
        );
        assert_eq!(
            refusal(json!({ "dataplane_groups": [{ "region": 1 }] }))["reason"],
            "group 1 needs a region"
        );
    }

    #[test]
    fn each_serverless_kind_needs_its_cluster_type() {
        assert_eq!(
            KINDS,
            [
                ("serverless.v0", "CLUSTER_TYPE_SERVERLESS"),
                ("serverless.v1", "CLUSTER_TYPE_SERVERLESS_V1"),
            ]
        );
    }
}
