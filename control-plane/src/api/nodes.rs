//! `/v2/control-planes/{id}/nodes` and `/expected-config-hash`: which data planes are
//! connected, what each runs, and why not when it does not run the expected version.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{self, problem_not_found, ApiError};
use super::{blocking, Shared};
use crate::nodes::Node;
use crate::State;

async fn require_control_plane(state: &Arc<State>, id: &str) -> Result<(), ApiError> {
    let store = Arc::clone(&state.store);
    let id = id.to_owned();
    blocking(move || {
        store.transaction(|tx| {
            control_planes::load(tx, &id)?
                .map(|_| ())
                .ok_or_else(|| problem_not_found("control plane"))
        })
    })
    .await
}

fn to_json(node: &Node, expected_hash: Option<&str>) -> Value {
    let sync_status = node.sync_status(expected_hash);
    json!({
        "id": node.id,
        "kind": node.kind,
        "type": match node.kind {
            crate::nodes::NodeKind::Gateway => "wasmgate-gateway",
            crate::nodes::NodeKind::Envoy => "envoy",
        },
        "hostname": node.hostname,
        "version": node.version,
        "ip": node.ip,
        "connected": node.connected,
        "last_ping": node.last_ping,
        "config_hash": node.config_hash,
        "config_version": node.config_version,
        "sync_status": sync_status,
        "last_error": node.last_error,
        "compatibility_status": {
            "state": if sync_status == "failed" {
                "COMPATIBILITY_STATE_INCOMPATIBLE"
            } else {
                "COMPATIBILITY_STATE_FULLY_COMPATIBLE"
            },
        },
        // Konnect's node timestamps are Unix seconds.
        "created_at": node.created_at,
        "updated_at": node.updated_at,
    })
}

pub async fn list(
    state: Shared,
    Path(control_plane_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_control_plane(&state, &control_plane_id).await?;
    let expected = state.hub.current(&control_plane_id);
    let expected_hash = expected.as_ref().map(|v| v.hash.as_str());
    let items: Vec<Value> = state
        .nodes
        .list(&control_plane_id)
        .iter()
        .map(|n| to_json(n, expected_hash))
        .collect();
    let total = items.len();
    Ok(Json(json!({ "items": items, "page": { "total": total } })))
}

pub async fn get(
    state: Shared,
    Path((control_plane_id, node_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_control_plane(&state, &control_plane_id).await?;
    let expected = state.hub.current(&control_plane_id);
    let node = state
        .nodes
        .get(&control_plane_id, &node_id)
        .ok_or_else(|| problem_not_found("node"))?;
    Ok(Json(
        json!({ "item": to_json(&node, expected.as_ref().map(|v| v.hash.as_str())) }),
    ))
}

pub async fn delete(
    state: Shared,
    Path((control_plane_id, node_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_control_plane(&state, &control_plane_id).await?;
    let nodes = Arc::clone(&state);
    let removed = blocking(move || {
        nodes
            .nodes
            .remove(&control_plane_id, &node_id)
            .map_err(errors::internal)
    })
    .await?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(problem_not_found("node"))
    }
}

pub async fn expected_config_hash(
    state: Shared,
    Path(control_plane_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_control_plane(&state, &control_plane_id).await?;
    let current = state
        .hub
        .current(&control_plane_id)
        .ok_or_else(|| problem_not_found("config version"))?;
    Ok(Json(json!({
        "expected_hash": current.hash,
        "config_version": current.version,
        // Unix seconds, as Konnect's; a version is never updated, only followed by another.
        "created_at": current.created_at,
        "updated_at": current.created_at,
    })))
}
