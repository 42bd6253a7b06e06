//! The API's error bodies. Core entities answer like Kong's Admin API (`code`, `name`,
//! `message`, `fields`); the platform endpoints (control planes, certificates, nodes, cloud
//! gateways) answer like Konnect's, in RFC 7807 problem form (`status`, `title`, `detail`,
//! `invalid_parameters`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::config::Rejection;
use crate::store::StoreError;
use model::ConfigError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    problem: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let content_type = if self.problem {
            "application/problem+json"
        } else {
            "application/json; charset=utf-8"
        };
        let mut response = (self.status, self.body.to_string()).into_response();
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            if let Ok(value) = "Bearer".parse() {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

#[cfg(test)]
impl ApiError {
    /// The status and body it answers with, for unit tests.
    pub fn parts(&self) -> (u16, &Value) {
        (self.status.as_u16(), &self.body)
    }
}

fn kong(status: StatusCode, body: Value) -> ApiError {
    ApiError {
        status,
        body,
        problem: false,
    }
}

/// Kong's `schema violation` (code 2): one message per field, nested `fields`.
pub fn schema_violation(error: &ConfigError) -> ApiError {
    let details: Vec<String> = error
        .fields
        .iter()
        .map(|f| format!("{}: {}", f.path, f.message))
        .collect();
    let message = match details.len() {
        1 => format!("schema violation ({})", details[0]),
        n => format!("{n} schema violations ({})", details.join("; ")),
    };
    kong(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 2,
            "name": "schema violation",
            "message": message,
            "fields": error.to_kong_fields(),
        }),
    )
}

/// Kong's `invalid declarative configuration` (code 14).
pub fn invalid_declarative(error: &ConfigError) -> ApiError {
    kong(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 14,
            "name": "invalid declarative configuration",
            "message": format!("declarative config is invalid: {error}"),
            "fields": error.to_kong_fields(),
        }),
    )
}

pub fn bad_body(message: impl Into<String>) -> ApiError {
    kong(
        StatusCode::BAD_REQUEST,
        json!({ "message": message.into() }),
    )
}

pub fn not_found() -> ApiError {
    kong(StatusCode::NOT_FOUND, json!({ "message": "Not found" }))
}

fn foreign_key(field: &str, id: &str, kind: &str) -> ApiError {
    let message = format!(
        "the foreign key '{{id=\"{id}\"}}' does not reference an existing '{kind}' entity."
    );
    kong(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 4,
            "name": "foreign key violation",
            "message": message,
            "fields": { field: message },
        }),
    )
}

pub fn internal(message: impl std::fmt::Display) -> ApiError {
    log::error!("API: {message}");
    kong(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "message": "An unexpected error occurred" }),
    )
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => not_found(),
            StoreError::Unique(what) => kong(
                StatusCode::CONFLICT,
                json!({
                    "code": 5,
                    "name": "unique constraint violation",
                    "message": format!("UNIQUE violation detected on '{what}'"),
                    "fields": {},
                }),
            ),
            StoreError::Referenced(by) => kong(
                StatusCode::BAD_REQUEST,
                json!({
                    "code": 4,
                    "name": "foreign key violation",
                    "message": format!("an existing '{by}' entity references this entity"),
                    "fields": { "@referenced_by": by },
                }),
            ),
            StoreError::Database(e) => internal(e),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Schema(e) => schema_violation(&e),
            Rejection::Declarative(e) => invalid_declarative(&e),
            Rejection::ForeignKey { field, id, kind } => foreign_key(field, &id, kind),
            Rejection::Store(e) => e.into(),
        }
    }
}

/// Konnect's problem body.
pub fn problem(status: StatusCode, detail: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: json!({
            "status": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": detail.into(),
        }),
        problem: true,
    }
}

/// Konnect's 400 with the invalid parameters named.
pub fn invalid_parameters(params: &[(&str, &str, String)]) -> ApiError {
    let list: Vec<Value> = params
        .iter()
        .map(|(field, rule, reason)| json!({ "field": field, "rule": rule, "reason": reason }))
        .collect();
    ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "status": 400,
            "title": "Invalid Request",
            "detail": "Invalid Parameters",
            "invalid_parameters": list,
        }),
        problem: true,
    }
}

pub fn unauthorized() -> ApiError {
    problem(StatusCode::UNAUTHORIZED, "Invalid credentials")
}

pub fn problem_not_found(what: &str) -> ApiError {
    problem(StatusCode::NOT_FOUND, format!("{what} not found"))
}
