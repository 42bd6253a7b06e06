//! `POST /v2/control-planes/{id}/envoy-bootstrap`: everything a stock Envoy needs to become a
//! data plane of this control plane, in one call: a fresh client certificate, pinned for the
//! control plane, and a bootstrap that carries it (inline) with the ADS endpoint, the CA and
//! the node's identity (with `tls_listen`, the address of its TLS listener for custom
//! domains). `envoy -c bootstrap.json` is then the whole setup. Not for a
//! serverless control plane, whose data planes are its cloud gateways only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::dp_certificates::no_self_managed_data_planes;
use super::errors::{invalid_parameters, ApiError};
use super::{blocking, json_object, now, Shared};
use crate::pki;
use crate::xds::{bootstrap, BootstrapOptions};

fn address(
    body: &Value,
    field: &'static str,
    default: Option<&str>,
) -> Result<SocketAddr, ApiError> {
    let text = match body.get(field).and_then(Value::as_str).or(default) {
        Some(text) => text,
        None => {
            return Err(invalid_parameters(&[(
                field,
                "required",
                "is a required field (host:port)".into(),
            )]))
        }
    };
    text.parse().map_err(|_| {
        invalid_parameters(&[(
            field,
            "format",
            format!("'{text}' is not an address (host:port)"),
        )])
    })
}

pub async fn create(
    state: Shared,
    Path(control_plane_id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_object(&body)?;
    let listen = address(&body, "listen", None)?;
    let admin = address(&body, "admin", Some("127.0.0.1:0"))?;
    let node_id = match body.get("node_id") {
        None | Some(Value::Null) => format!("envoy-{}", &uuid::Uuid::new_v4().to_string()[..8]),
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(_) => {
            return Err(invalid_parameters(&[(
                "node_id",
                "type",
                "must be a non-empty string".into(),
            )]))
        }
    };
    let env_allow: Vec<String> = match body.get("env_allow") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(names)) if names.iter().all(Value::is_string) => names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(invalid_parameters(&[(
                "env_allow",
                "type",
                "must be an array of names".into(),
            )]))
        }
    };
    let optional_address = |field: &'static str| match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => address(&body, field, None).map(Some),
    };
    let ratelimit = optional_address("ratelimit")?;
    // Custom domains: the TLS listener's address; none, no TLS listener.
    let tls_listen = optional_address("tls_listen")?;
    let (cert_pem, key_pem) = pki::client_certificate(&node_id).map_err(super::errors::internal)?;
    let der = pki::parse_certificate(&cert_pem).map_err(super::errors::internal)?;
    let store = Arc::clone(&state.store);
    let (cp, cert) = (control_plane_id.clone(), cert_pem.clone());
    blocking(move || {
        store.transaction(|tx| {
            no_self_managed_data_planes(tx, &cp)?;
            let now = now();
            let id = uuid::Uuid::new_v4().to_string();
            crate::store::pin_certificate(tx, &id, &cp, &cert, &pki::fingerprint(&der), now)?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    let options = BootstrapOptions {
        node_id,
        control_plane_id,
        xds: state.endpoints.xds,
        cert_pem,
        key_pem,
        ca_pem: state.identity.ca_pem.clone(),
        listen,
        admin,
        env_allow,
        ratelimit,
        tls_listen,
    };
    let document = bootstrap(&options);
    Ok((StatusCode::CREATED, Json(document)))
}
