//! `/v2/control-planes/{id}/dp-client-certificates`: the data plane certificates pinned for
//! a control plane (`pinned_client_certs`). A data plane endpoint handshake succeeds only
//! with one of them; pinning and unpinning apply to the next handshake.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use rusqlite::{OptionalExtension, Transaction};
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{invalid_parameters, problem, problem_not_found, ApiError};
use super::{blocking, json_object, now, Shared};
use crate::pki;
use crate::store::StoreError;

fn item(row: (String, String, i64, i64)) -> Value {
    let (id, cert, created_at, updated_at) = row;
    json!({
        "id": id,
        "cert": cert,
        // Konnect's DataPlaneClientCertificate timestamps are Unix seconds.
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

/// Konnect's rule: "Control planes that use Serverless Gateways can't mix types of data
/// planes." A serverless control plane's data planes are its cloud gateways, whose
/// certificates the provisioner pins itself; a certificate a user pins, or an Envoy, would be
/// a self-managed data plane beside them, without the platform's limits.
pub(super) fn no_self_managed_data_planes(
    tx: &Transaction<'_>,
    control_plane_id: &str,
) -> Result<(), ApiError> {
    let row = control_planes::load(tx, control_plane_id)?
        .ok_or_else(|| problem_not_found("control plane"))?;
    if row.platform_limits() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Control planes that use Serverless Gateways can't mix types of data planes: this \
             serverless control plane's data planes are its cloud gateways \
             (/v3/cloud-gateways/configurations), not self-managed gateways or Envoys",
        ));
    }
    Ok(())
}

fn require_control_plane(tx: &Transaction<'_>, id: &str) -> Result<(), ApiError> {
    control_planes::load(tx, id)?
        .map(|_| ())
        .ok_or_else(|| problem_not_found("control plane"))
}

pub async fn create(
    state: Shared,
    Path(control_plane_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_object(&body)?;
    let cert = match body.get("cert") {
        Some(Value::String(pem)) => pem.clone(),
        Some(_) => {
            return Err(invalid_parameters(&[(
                "cert",
                "type",
                "must be a string".into(),
            )]))
        }
        None => {
            return Err(invalid_parameters(&[(
                "cert",
                "required",
                "is a required field".into(),
            )]))
        }
    };
    let der = pki::parse_certificate(&cert)
        .map_err(|reason| invalid_parameters(&[("cert", "format", reason)]))?;
    let fingerprint = pki::fingerprint(&der);
    let id = uuid::Uuid::new_v4().to_string();
    let now = now();
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            no_self_managed_data_planes(tx, &control_plane_id)?;
            crate::store::pin_certificate(tx, &id, &control_plane_id, &cert, &fingerprint, now)?;
            Ok((id, cert, now, now))
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "item": item(row) }))))
}

pub async fn list(
    state: Shared,
    Path(control_plane_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let rows = blocking(move || {
        store.transaction(|tx| {
            require_control_plane(tx, &control_plane_id)?;
            let mut statement = tx
                .prepare(
                    "SELECT id, cert, created_at, updated_at FROM dp_client_certificates
                     WHERE control_plane_id = ?1 ORDER BY created_at, rowid",
                )
                .map_err(StoreError::from)?;
            let rows = statement
                .query_map([&control_plane_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(StoreError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?;
            Ok(rows)
        })
    })
    .await?;
    let total = rows.len();
    let items: Vec<Value> = rows.into_iter().map(item).collect();
    Ok(Json(json!({ "items": items, "page": { "total": total } })))
}

pub async fn get(
    state: Shared,
    Path((control_plane_id, certificate_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            require_control_plane(tx, &control_plane_id)?;
            tx.query_row(
                "SELECT id, cert, created_at, updated_at FROM dp_client_certificates
                 WHERE control_plane_id = ?1 AND id = ?2",
                [&control_plane_id, &certificate_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(StoreError::from)?
            .ok_or_else(|| problem_not_found("certificate"))
        })
    })
    .await?;
    Ok(Json(json!({ "item": item(row) })))
}

pub async fn delete(
    state: Shared,
    Path((control_plane_id, certificate_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let store = Arc::clone(&state.store);
    blocking(move || {
        store.transaction(|tx| {
            require_control_plane(tx, &control_plane_id)?;
            let deleted = tx
                .execute(
                    "DELETE FROM dp_client_certificates WHERE control_plane_id = ?1 AND id = ?2",
                    [&control_plane_id, &certificate_id],
                )
                .map_err(StoreError::from)?;
            if deleted == 0 {
                return Err(problem_not_found("certificate"));
            }
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
