//! The API's error bodies. Core entities answer like Kong's Admin API (`code`, `name`,
//! `message`, `fields`); the platform endpoints (control planes, nodes, cloud gateways)
//! answer like Konnect's, in RFC 7807 problem form (`status`, `title`, `type`, `instance`,
//! `detail`, `invalid_parameters`); the DP certificate endpoints with Konnect's legacy
//! `{"message"}`.

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

/// A body of a media type the Admin API does not read: 415, Kong's `{"message"}`.
pub fn unsupported_media_type(media: &str) -> ApiError {
    kong(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        json!({ "message": format!(
            "Unsupported Content-Type '{media}': send application/json or \
             application/x-www-form-urlencoded"
        ) }),
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

/// The fields of Kong's unique key text (`{name="echo"}`, `{consumer=null, name="x",
/// route={id="..."}, service=null}`), Penlight's pretty-printed Lua table, as JSON: Kong's
/// 409 lists them in `fields`.
fn lua_table(text: &str) -> Option<Value> {
    fn value(s: &str) -> Option<(Value, &str)> {
        let s = s.trim_start();
        if let Some(rest) = s.strip_prefix('"') {
            let end = rest.find('"')?;
            return Some((json!(&rest[..end]), &rest[end + 1..]));
        }
        if let Some(rest) = s.strip_prefix("null") {
            return Some((Value::Null, rest));
        }
        if s.starts_with('{') {
            return table(s);
        }
        let end = s.find([',', '}']).unwrap_or(s.len());
        let number: serde_json::Number = s[..end].trim().parse().ok()?;
        Some((Value::Number(number), &s[end..]))
    }
    fn table(s: &str) -> Option<(Value, &str)> {
        let mut rest = s.trim_start().strip_prefix('{')?;
        let mut map = serde_json::Map::new();
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                return Some((Value::Object(map), after));
            }
            let (key, after) = rest.split_once('=')?;
            let (item, after) = value(after)?;
            map.insert(key.trim().to_owned(), item);
            rest = after.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    match table(text)? {
        (value, rest) if rest.trim().is_empty() => Some(value),
        _ => None,
    }
}

/// Kong's 409 (code 5): the message names the unique key and `fields` holds it.
pub fn unique_violation(what: &str) -> ApiError {
    kong(
        StatusCode::CONFLICT,
        json!({
            "code": 5,
            "name": "unique constraint violation",
            "message": format!("UNIQUE violation detected on '{what}'"),
            "fields": lua_table(what).unwrap_or_else(|| json!({})),
        }),
    )
}

/// Kong's refusal to delete an entity others reference (code 4): "an existing 'routes'
/// entity references this 'services' entity".
pub fn referenced(by: &str, kind: &str) -> ApiError {
    kong(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 4,
            "name": "foreign key violation",
            "message": format!("an existing '{by}' entity references this '{kind}' entity"),
            "fields": { "@referenced_by": by },
        }),
    )
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => not_found(),
            StoreError::Unique(what) => unique_violation(&what),
            // Of the entities here, only a route restricts a deletion (its service's).
            StoreError::Referenced(by) => referenced(
                by,
                match by {
                    "routes" => "services",
                    _ => "referenced",
                },
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

/// Konnect's problem body (its `BaseError`): `status`, `title`, `type` (the status's page, as
/// Konnect's examples name it), `instance` (a trace id in Konnect's `kong:trace:<id>` form,
/// also logged, so a user's report can be found) and `detail`.
pub fn problem(status: StatusCode, detail: impl Into<String>) -> ApiError {
    problem_body(
        status,
        status.canonical_reason().unwrap_or("Error"),
        detail.into(),
        None,
    )
}

fn problem_body(
    status: StatusCode,
    title: &str,
    detail: String,
    invalid: Option<Vec<Value>>,
) -> ApiError {
    let instance = format!("kong:trace:{}", uuid::Uuid::new_v4().as_u64_pair().0);
    log::debug!("API {} {instance}: {detail}", status.as_u16());
    let mut body = json!({
        "status": status.as_u16(),
        "title": title,
        "type": format!("https://httpstatuses.com/{}", status.as_u16()),
        "instance": instance,
        "detail": detail,
    });
    if let Some(list) = invalid {
        body["invalid_parameters"] = Value::Array(list);
    }
    ApiError {
        status,
        body,
        problem: true,
    }
}

/// One of Konnect's `invalid_parameters`: the field, the rule it breaks, why.
pub fn invalid(field: impl Into<String>, rule: &str, reason: impl Into<String>) -> Value {
    json!({ "field": field.into(), "rule": rule, "reason": reason.into() })
}

/// An `unknown_property` item for each key of `body` that is not among `allowed`
/// (`additionalProperties: false`); `what` names the object (`a custom domain`).
pub fn unknown_properties(body: &Value, allowed: &[&str], what: &str) -> Vec<Value> {
    body.as_object()
        .into_iter()
        .flatten()
        .map(|(key, _)| key)
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| {
            invalid(
                key.as_str(),
                "unknown_property",
                format!("'{key}' is not a property of {what}"),
            )
        })
        .collect()
}

/// Konnect's `enum` item, which lists the `choices`.
pub fn invalid_choice(field: impl Into<String>, choices: &[&str]) -> Value {
    json!({
        "field": field.into(),
        "rule": "enum",
        "reason": format!("must be one of: {}", choices.join(", ")),
        "choices": choices,
    })
}

/// Konnect's 400 naming every invalid parameter.
pub fn invalid_list(list: Vec<Value>) -> ApiError {
    problem_body(
        StatusCode::BAD_REQUEST,
        "Invalid Request",
        "Invalid Parameters".into(),
        Some(list),
    )
}

/// Konnect's 400 with the invalid parameters named.
pub fn invalid_parameters(params: &[(&str, &str, String)]) -> ApiError {
    invalid_list(
        params
            .iter()
            .map(|(field, rule, reason)| invalid(*field, rule, reason.clone()))
            .collect(),
    )
}

/// The legacy shape of Konnect's older endpoints (DP certificates): `{"message": ...}` as
/// `application/json`, whatever the error; a problem's detail (and its invalid parameters,
/// `field: reason`) becomes the message.
pub fn legacy(error: ApiError) -> ApiError {
    if !error.problem {
        return error;
    }
    let detail = error.body["detail"].as_str().unwrap_or_default();
    let message = match error.body["invalid_parameters"].as_array() {
        Some(list) => list
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p["field"].as_str().unwrap_or_default(),
                    p["reason"].as_str().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        None => detail.to_owned(),
    };
    kong(error.status, json!({ "message": message }))
}

pub fn unauthorized() -> ApiError {
    problem(StatusCode::UNAUTHORIZED, "Invalid credentials")
}

pub fn problem_not_found(what: &str) -> ApiError {
    problem(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// The invalid parameters of a refusal as (field, rule) pairs: what the API's unit tests
/// compare.
#[cfg(test)]
pub(crate) fn field_rules(list: &[Value]) -> Vec<(String, String)> {
    list.iter()
        .map(|p| {
            (
                p["field"].as_str().unwrap_or_default().to_owned(),
                p["rule"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A (field, rule) pair, as [`field_rules`] gives them.
#[cfg(test)]
pub(crate) fn pair(field: &str, rule: &str) -> (String, String) {
    (field.to_owned(), rule.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review D23: Kong's 409 lists the colliding fields (was `{}`).
    #[test]
    fn a_unique_violation_lists_its_fields() {
        let error = unique_violation(r#"{name="echo"}"#);
        assert_eq!(
            error.parts(),
            (
                409,
                &json!({
                    "code": 5,
                    "name": "unique constraint violation",
                    "message": r#"UNIQUE violation detected on '{name="echo"}'"#,
                    "fields": { "name": "echo" },
                })
            )
        );
        let plugin = r#"{consumer=null, name="rate-limiting", route={id="r1"}, service=null}"#;
        assert_eq!(
            unique_violation(plugin).parts().1["fields"],
            json!({ "consumer": null, "name": "rate-limiting", "route": { "id": "r1" },
                    "service": null })
        );
        assert_eq!(lua_table("{n=5, m={}}"), Some(json!({ "n": 5, "m": {} })));
        assert_eq!(lua_table("not a table"), None);
        assert_eq!(lua_table(r#"{name="a"} trailing"#), None);
    }

    /// Review D23: Kong names the referenced entity: "this 'services' entity" (was "this
    /// entity").
    #[test]
    fn a_referenced_entity_is_named() {
        let error: ApiError = StoreError::Referenced("routes").into();
        assert_eq!(
            error.parts(),
            (
                400,
                &json!({
                    "code": 4,
                    "name": "foreign key violation",
                    "message": "an existing 'routes' entity references this 'services' entity",
                    "fields": { "@referenced_by": "routes" },
                })
            )
        );
    }
}
