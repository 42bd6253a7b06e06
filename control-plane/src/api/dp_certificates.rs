//! `/v2/control-planes/{id}/dp-client-certificates`: the data plane certificates pinned for
//! a control plane (`pinned_client_certs`). A data plane endpoint handshake succeeds only
//! with one of them; pinning and unpinning apply to the next handshake, and unpinning (or
//! replacing a pin's certificate) cuts the sessions that used it. As in Konnect's spec for
//! these endpoints, errors have the legacy `{"message": ...}` shape, not problem+json.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{self, invalid_parameters, problem, problem_not_found, ApiError};
use super::{blocking, json_object, now, Shared};
use crate::pki;
use crate::store::StoreError;

type Row = (String, String, i64, i64, Option<String>);

const COLUMNS: &str = "id, cert, created_at, updated_at, title";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn item(row: Row) -> Value {
    let (id, cert, created_at, updated_at, title) = row;
    let mut item = json!({
        "id": id,
        "cert": cert,
        // Konnect's DataPlaneClientCertificate timestamps are Unix seconds.
        "created_at": created_at,
        "updated_at": updated_at,
    });
    if let Some(title) = title {
        item["title"] = json!(title);
    }
    item
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

/// A pin request (Konnect's DataPlaneClientCertificateRequest): `cert` (PEM, required) and
/// `title`; returns the PEM, its fingerprint and the title.
fn read_request(body: &Bytes) -> Result<(String, String, Option<String>), ApiError> {
    let body = json_object(body)?;
    let mut invalid: Vec<(&str, &str, String)> = Vec::new();
    for key in body.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !["cert", "title"].contains(&key.as_str()) {
            invalid.push((
                "body",
                "unknown_property",
                format!("'{key}' is not a property of a certificate (cert, title)"),
            ));
        }
    }
    let title = match body.get("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(title)) => Some(title.clone()),
        Some(_) => {
            invalid.push(("title", "is_string", "must be a string".into()));
            None
        }
    };
    let cert = match body.get("cert") {
        Some(Value::String(pem)) => Some(pem.clone()),
        Some(_) => {
            invalid.push(("cert", "is_string", "must be a string".into()));
            None
        }
        None => {
            invalid.push(("cert", "required", "is a required field".into()));
            None
        }
    };
    if !invalid.is_empty() {
        return Err(invalid_parameters(&invalid));
    }
    let cert = cert.unwrap_or_default();
    let der = pki::parse_certificate(&cert)
        .map_err(|reason| invalid_parameters(&[("cert", "invalid", reason)]))?;
    let fingerprint = pki::fingerprint(&der);
    Ok((cert, fingerprint, title))
}

/// A certificate is pinned once per control plane: another pin of it (other than `except`)
/// is refused. Transactions are serialised, so the check and the write that follows it
/// cannot interleave with another pin's.
fn not_pinned_yet(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    fingerprint: &str,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM dp_client_certificates
             WHERE control_plane_id = ?1 AND fingerprint = ?2 AND id IS NOT ?3
             ORDER BY created_at, rowid LIMIT 1",
            params![control_plane_id, fingerprint, except],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    match existing {
        Some(id) => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("this certificate is already pinned for this control plane (id {id})"),
        )),
        None => Ok(()),
    }
}

fn load_one(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    certificate_id: &str,
) -> Result<Row, ApiError> {
    tx.query_row(
        &format!(
            "SELECT {COLUMNS} FROM dp_client_certificates WHERE control_plane_id = ?1 AND id = ?2"
        ),
        [control_plane_id, certificate_id],
        read_row,
    )
    .optional()
    .map_err(StoreError::from)?
    .ok_or_else(|| problem_not_found("certificate"))
}

pub async fn create(
    state: Shared,
    Path(control_plane_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (cert, fingerprint, title) = read_request(&body).map_err(errors::legacy)?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now();
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            no_self_managed_data_planes(tx, &control_plane_id)?;
            not_pinned_yet(tx, &control_plane_id, &fingerprint, None)?;
            crate::store::pin_certificate(tx, &id, &control_plane_id, &cert, &fingerprint, now)?;
            tx.execute(
                "UPDATE dp_client_certificates SET title = ?2 WHERE id = ?1",
                params![id, title],
            )
            .map_err(StoreError::from)?;
            load_one(tx, &control_plane_id, &id)
        })
    })
    .await
    .map_err(errors::legacy)?;
    Ok((StatusCode::CREATED, Json(json!({ "item": item(row) }))))
}

/// Konnect's `update-dataplane-certificate`: replaces the pin's certificate and title. The
/// old certificate is no longer pinned, so the sessions that used it are cut.
pub async fn update(
    state: Shared,
    Path((control_plane_id, certificate_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (cert, fingerprint, title) = read_request(&body).map_err(errors::legacy)?;
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            no_self_managed_data_planes(tx, &control_plane_id)?;
            load_one(tx, &control_plane_id, &certificate_id)?;
            not_pinned_yet(tx, &control_plane_id, &fingerprint, Some(&certificate_id))?;
            tx.execute(
                "UPDATE dp_client_certificates
                 SET cert = ?2, fingerprint = ?3, title = ?4, updated_at = ?5 WHERE id = ?1",
                params![certificate_id, cert, fingerprint, title, now()],
            )
            .map_err(StoreError::from)?;
            load_one(tx, &control_plane_id, &certificate_id)
        })
    })
    .await
    .map_err(errors::legacy)?;
    Ok(Json(json!({ "item": item(row) })))
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
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM dp_client_certificates
                     WHERE control_plane_id = ?1 ORDER BY created_at, rowid"
                ))
                .map_err(StoreError::from)?;
            let rows = statement
                .query_map([&control_plane_id], read_row)
                .map_err(StoreError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?;
            Ok(rows)
        })
    })
    .await
    .map_err(errors::legacy)?;
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
            load_one(tx, &control_plane_id, &certificate_id)
        })
    })
    .await
    .map_err(errors::legacy)?;
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
    .await
    .map_err(errors::legacy)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State as Extract;

    fn body(value: Value) -> Bytes {
        Bytes::from(value.to_string())
    }

    /// Review D19: a pin has Konnect's `title`; the same certificate cannot be pinned twice
    /// for a control plane; PUT replaces a pin's certificate (the old one is unpinned); errors
    /// are Konnect's legacy `{"message"}`. Before: no title, a second pin of the same
    /// certificate was 201, no PUT, problem+json errors.
    #[tokio::test]
    async fn pins_have_titles_are_unique_and_can_be_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let state = crate::sync::tests::state(&dir, false, std::time::Duration::from_secs(30));
        let (first, _) = pki::client_certificate("first").expect("cert");
        let (second, _) = pki::client_certificate("second").expect("cert");
        let print = |pem: &str| pki::fingerprint(&pki::parse_certificate(pem).expect("der"));
        let (status, Json(created)) = create(
            Extract(Arc::clone(&state)),
            Path("cp".into()),
            body(json!({ "cert": first, "title": "edge" })),
        )
        .await
        .expect("pinned");
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(created["item"]["title"], "edge");
        let id = created["item"]["id"].as_str().expect("id").to_owned();
        let again = create(
            Extract(Arc::clone(&state)),
            Path("cp".into()),
            body(json!({ "cert": first })),
        )
        .await
        .expect_err("pinned twice");
        assert_eq!(
            again.parts(),
            (
                400,
                &json!({ "message": format!(
                    "this certificate is already pinned for this control plane (id {id})"
                ) })
            )
        );
        let Json(replaced) = update(
            Extract(Arc::clone(&state)),
            Path(("cp".into(), id.clone())),
            body(json!({ "cert": second, "title": "renewed" })),
        )
        .await
        .expect("replaced");
        assert_eq!(replaced["item"]["id"], id.as_str());
        assert_eq!(replaced["item"]["title"], "renewed");
        assert_eq!(replaced["item"]["cert"], second.as_str());
        assert!(state.store.pinned_control_planes(&print(&first)).is_empty());
        assert_eq!(state.store.pinned_control_planes(&print(&second)), ["cp"]);
        // The same certificate on its own pin is no duplicate; a PUT without a title has none.
        let Json(same) = update(
            Extract(Arc::clone(&state)),
            Path(("cp".into(), id.clone())),
            body(json!({ "cert": second })),
        )
        .await
        .expect("the same certificate again");
        assert_eq!(same["item"].get("title"), None);
        let missing = update(
            Extract(Arc::clone(&state)),
            Path(("cp".into(), "nothing".into())),
            body(json!({ "cert": first })),
        )
        .await
        .expect_err("no such pin");
        assert_eq!(
            missing.parts(),
            (404, &json!({ "message": "certificate not found" }))
        );
        let invalid = update(
            Extract(Arc::clone(&state)),
            Path(("cp".into(), id)),
            body(json!({ "title": 1 })),
        )
        .await
        .expect_err("invalid");
        assert_eq!(
            invalid.parts(),
            (
                400,
                &json!({ "message": "title: must be a string; cert: is a required field" })
            )
        );
    }
}
