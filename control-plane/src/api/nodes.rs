//! `/v2/control-planes/{id}/nodes` and `/expected-config-hash`: which data planes are
//! connected, what each runs, and why not when it does not run the expected version.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{problem_not_found, ApiError};
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

/// `id` for a query string: node ids are printable ASCII, where `&`, `#`, `+`, space... would
/// cut or change the cursor.
fn percent_encoded(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Konnect's cursor pages: `page[size]` nodes (100 by default) after the node id
/// `page[after]`; `page.next` is the next page's path while there is one.
pub async fn list(
    state: Shared,
    Path(control_plane_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let size = control_planes::page_param(&query, "page[size]", 100, 1000)?;
    let after = query.get("page[after]").map(String::as_str);
    require_control_plane(&state, &control_plane_id).await?;
    let expected = state.hub.current(&control_plane_id);
    let expected_hash = expected.as_ref().map(|v| v.hash.as_str());
    let (nodes, total) = state.nodes.page(&control_plane_id, after, size + 1);
    let more = nodes.len() > size;
    let nodes = &nodes[..nodes.len().min(size)];
    let mut page = json!({ "total": total });
    if let (true, Some(last)) = (more, nodes.last()) {
        let cursor = percent_encoded(&last.id);
        page["next"] = json!(format!(
            "/v2/control-planes/{control_plane_id}/nodes?page[size]={size}&page[after]={cursor}"
        ));
    }
    let items: Vec<Value> = nodes.iter().map(|n| to_json(n, expected_hash)).collect();
    Ok(Json(json!({ "items": items, "page": page })))
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
    if state.nodes.remove(&control_plane_id, &node_id) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_cursor_survives_the_query_string() {
        assert_eq!(super::percent_encoded("dp-1.a_b~"), "dp-1.a_b~");
        assert_eq!(super::percent_encoded("a&b c+d#e%"), "a%26b%20c%2Bd%23e%25");
    }
}
