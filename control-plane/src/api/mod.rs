//! The REST API, on the paths a Konnect user already scripts against: control planes, their
//! core entities (services, routes, plugins), pinned data plane certificates, nodes, the
//! expected config hash, declarative import/export, cloud gateway provisioning and their
//! custom domains. Every request needs `Authorization: Bearer <token>`;
//! `GET /v2/openapi.json` describes it all.

mod cloud_gateways;
mod control_planes;
mod core_entities;
mod custom_domains;
mod dp_certificates;
mod envoy_bootstrap;
mod errors;
mod nodes;
pub mod openapi;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State as Extract};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tokio::sync::watch;

pub use cloud_gateways::{assign_tls_ports, cloud_gateway_specs, reissue_credentials};
pub use errors::ApiError;

use crate::config::{self, Rejection};
use crate::State;

type Shared = Extract<Arc<State>>;

/// Every route of the API; tests/control_plane/api.rs checks each operation of the OpenAPI
/// document against it.
pub fn router(state: Arc<State>) -> Router {
    let cp = "/v2/control-planes/:control_plane_id";
    let entities = format!("{cp}/core-entities");
    Router::new()
        .route("/v2/openapi.json", get(openapi::document))
        .route(
            "/v2/control-planes",
            get(control_planes::list).post(control_planes::create),
        )
        .route(
            cp,
            get(control_planes::get)
                .patch(control_planes::update)
                .delete(control_planes::delete),
        )
        .route(
            &format!("{entities}/:kind"),
            get(core_entities::list).post(core_entities::create),
        )
        .route(
            &format!("{entities}/:kind/:id"),
            get(core_entities::get)
                .put(core_entities::upsert)
                .patch(core_entities::update)
                .delete(core_entities::delete),
        )
        .route(
            &format!("{entities}/:kind/:id/:nested"),
            get(core_entities::list_nested).post(core_entities::create_nested),
        )
        .route(
            &format!("{cp}/dp-client-certificates"),
            get(dp_certificates::list).post(dp_certificates::create),
        )
        .route(
            &format!("{cp}/dp-client-certificates/:certificate_id"),
            get(dp_certificates::get)
                .put(dp_certificates::update)
                .delete(dp_certificates::delete),
        )
        .route(
            &format!("{cp}/envoy-bootstrap"),
            axum::routing::post(envoy_bootstrap::create),
        )
        .route(&format!("{cp}/nodes"), get(nodes::list))
        .route(
            &format!("{cp}/nodes/:node_id"),
            get(nodes::get).delete(nodes::delete),
        )
        .route(
            &format!("{cp}/expected-config-hash"),
            get(nodes::expected_config_hash),
        )
        .route(
            &format!("{cp}/declarative-config"),
            get(core_entities::export).post(core_entities::import),
        )
        .route(
            "/v3/cloud-gateways/configurations",
            get(cloud_gateways::list).put(cloud_gateways::put),
        )
        .route(
            "/v3/cloud-gateways/configurations/:configuration_id",
            get(cloud_gateways::get).delete(cloud_gateways::delete),
        )
        .route(
            "/v2/cloud-gateways/custom-domains",
            get(custom_domains::list).post(custom_domains::create),
        )
        .route(
            "/v2/cloud-gateways/custom-domains/:custom_domain_id",
            get(custom_domains::get).delete(custom_domains::delete),
        )
        .route(
            "/v2/cloud-gateways/custom-domains/:custom_domain_id/online-status",
            get(custom_domains::online_status),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .with_state(state)
}

/// No such route: named as such, so a client (and the OpenAPI check) can tell it from an
/// entity that does not exist.
async fn fallback(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    errors::problem(
        axum::http::StatusCode::NOT_FOUND,
        format!("no API route for {method} {}", uri.path()),
    )
}

/// A route that exists, with a method it does not take: Kong's Admin API answer.
async fn method_not_allowed() -> (axum::http::StatusCode, axum::Json<Value>) {
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({ "message": "Method not allowed" })),
    )
}

async fn authenticate(state: Shared, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match token {
        Some(token)
            if same_digest(
                &crate::hub::sha256_hex(token.as_bytes()),
                &state.token_sha256,
            ) =>
        {
            next.run(request).await
        }
        _ => errors::unauthorized().into_response(),
    }
}

/// The credentials of an `Authorization: Bearer ...` header; the scheme is case-insensitive
/// (RFC 9110, 11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares two digests in a time that depends on their length only, so a client timing
/// refusals learns nothing of the stored digest.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |differ, (x, y)| differ | (x ^ y))
            == 0
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Before routing, as a layer on the router would run after it.
    let app = tower::ServiceExt::<Request>::map_request(router(state), trim_trailing_slash);
    let result = axum::serve(listener, axum::ServiceExt::into_make_service(app))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = result {
        log::error!("API listener: {e}");
    }
}

/// Konnect takes a path with a trailing slash as the path without it (the seed's own call is
/// `POST /v2/control-planes/`).
fn trim_trailing_slash(mut request: Request) -> Request {
    let uri = request.uri();
    let path = uri.path();
    if path.len() < 2 || !path.ends_with('/') {
        return request;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    let target = match uri.query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = target.parse().ok();
    if let Ok(uri) = axum::http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    request
}

/// Whether control plane `id` exists.
pub fn control_plane_exists(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
) -> Result<bool, crate::store::StoreError> {
    Ok(control_planes::load(tx, id)?.is_some())
}

/// Unix seconds now.
pub fn now() -> i64 {
    crate::nodes::now()
}

/// RFC 3339 (UTC) for Konnect's platform timestamps.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A JSON object body; anything else is Kong's 400.
pub fn json_object(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(errors::bad_body(
            "Cannot parse JSON body: expected an object",
        )),
        Err(e) => Err(errors::bad_body(format!("Cannot parse JSON body: {e}"))),
    }
}

/// Runs blocking store work (SQLite commits wait for the disk) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(errors::internal)?
}

/// Applies a change to a control plane's entities and, in the same transaction, makes and
/// stores the config version it produces; publishes that version once committed. Nothing
/// is committed (or pushed) if the change or the resulting configuration is invalid. The
/// publishing is part of the blocking task, which runs to its end even when the client
/// leaves and the request's future is dropped: a committed version is always pushed.
pub async fn change<T: Send + 'static>(
    state: &Arc<State>,
    control_plane_id: &str,
    f: impl FnOnce(&rusqlite::Transaction<'_>, &control_planes::ControlPlaneRow) -> Result<T, Rejection>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let state = Arc::clone(state);
    let id = control_plane_id.to_owned();
    blocking(move || {
        let (value, version) = state
            .store
            .transaction(|tx| {
                let row = control_planes::load(tx, &id)?
                    .ok_or(Rejection::Store(crate::store::StoreError::NotFound))?;
                let value = f(tx, &row)?;
                let version = config::next_version(tx, &id, now())?;
                Ok::<_, Rejection>((value, version))
            })
            .map_err(ApiError::from)?;
        state.hub.publish(version);
        Ok(value)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_committed_change_is_published_even_when_its_client_leaves() {
        let dir = tempfile::tempdir().expect("dir");
        let state = crate::sync::tests::state(&dir, false, std::time::Duration::from_secs(30));
        assert!(state.hub.current("cp").is_none());
        let committed = Arc::new(std::sync::Barrier::new(2));
        let in_transaction = Arc::clone(&committed);
        let request = change(&state, "cp", move |_, _| {
            // The client is gone before the commit.
            in_transaction.wait();
            Ok(())
        });
        // Polled once (the blocking task starts), then dropped as axum drops the handler of a
        // client that disconnected.
        let left = tokio::time::timeout(std::time::Duration::from_millis(1), request).await;
        assert!(left.is_err(), "still running: {left:?}");
        committed.wait();
        let published = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while state.hub.current("cp").is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            published.is_ok(),
            "the committed version was never published"
        );
        assert_eq!(state.hub.current("cp").map(|v| v.version), Some(1));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_digests_compare_whole() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER  t0k ", " Bearer t0k"] {
            assert_eq!(bearer_token(header), Some("t0k"), "{header:?}");
        }
        for header in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
        assert!(same_digest("abc", "abc"));
        assert!(!same_digest("abc", "abd"));
        assert!(!same_digest("abc", "ab"));
        assert!(!same_digest("", "a"));
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (59, "1970-01-01T00:00:59Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_709_251_200, "2024-03-01T00:00:00Z"),
            (1_735_689_599, "2024-12-31T23:59:59Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (4_107_456_000, "2100-02-28T00:00:00Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(unix), text, "{unix}");
        }
    }

    #[test]
    fn a_body_must_be_a_json_object_or_empty() {
        assert_eq!(json_object(&Bytes::new()).expect("empty"), json!({}));
        assert_eq!(
            json_object(&Bytes::from_static(br#"{"a":[1]}"#)).expect("object"),
            json!({ "a": [1] })
        );
        let not_object = json_object(&Bytes::from_static(b"[1]")).expect_err("array");
        assert_eq!(
            not_object.parts(),
            (
                400,
                &json!({ "message": "Cannot parse JSON body: expected an object" })
            )
        );
        let broken = json_object(&Bytes::from_static(b"{\"a\":")).expect_err("broken");
        let (status, body) = broken.parts();
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Cannot parse JSON body: EOF")),
            "{body}"
        );
    }
}
