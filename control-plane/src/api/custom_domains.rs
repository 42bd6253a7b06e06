//! `/v2/cloud-gateways/custom-domains`: Konnect's custom domains. A domain is created
//! `initializing`; its certificate is issued in the background ([`crate::custom_domains`])
//! and the domain becomes `ready` (the certificate on every data plane of its control plane)
//! or `error` (`state_metadata` says why; nothing was pushed).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::control_planes;
use super::errors::{self, invalid_parameters, problem, problem_not_found, ApiError};
use super::{blocking, json_object, now, rfc3339, Shared};
use crate::acme::Issuer;
use crate::store::custom_domains::{self as rows, DomainRow};
use crate::store::StoreError;
use crate::State;

const REQUEST_FIELDS: [&str; 3] = ["control_plane_id", "control_plane_geo", "domain"];
/// The longest DNS name (RFC 1035, in its text form without the root's dot).
const MAX_DOMAIN: usize = 253;

/// A domain name a certificate can be issued for over HTTP-01: lowercased; two labels or
/// more of letters, digits and inner hyphens (1 to 63 each), the last not numeric; no
/// trailing dot, no wildcard (HTTP-01 cannot validate one), no IP address.
pub fn domain_name(given: &str) -> Result<String, String> {
    let domain = given.to_ascii_lowercase();
    if domain.is_empty() {
        return Err("must be a domain name".into());
    }
    if domain.len() > MAX_DOMAIN {
        return Err(format!("must be at most {MAX_DOMAIN} bytes long"));
    }
    if domain.parse::<std::net::IpAddr>().is_ok()
        || domain
            .trim_matches(['[', ']'])
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    {
        return Err("must be a domain name, not an IP address".into());
    }
    if domain.contains('*') {
        return Err(
            "must not be a wildcard: certificates are validated over HTTP-01, which cannot \
             validate one"
                .into(),
        );
    }
    if domain.ends_with('.') {
        return Err("must be given without a trailing dot".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("must be a fully qualified domain name (two labels or more)".into());
    }
    for label in &labels {
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "'{label}' is not a DNS label (1 to 63 letters, digits or inner hyphens)"
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must be a domain name, not an IP address".into());
    }
    Ok(domain)
}

/// A `POST` body (Konnect's CreateCustomDomainRequest, `additionalProperties: false`).
fn read_request(body: &Value) -> Result<(String, String, String), ApiError> {
    let mut invalid = errors::unknown_properties(body, &REQUEST_FIELDS, "a custom domain");
    let (control_plane_id, geo) = super::cloud_gateways::control_plane_of(body, &mut invalid);
    let domain = match body.get("domain") {
        Some(Value::String(domain)) => match domain_name(domain) {
            Ok(domain) => domain,
            Err(reason) => {
                invalid.push(errors::invalid("domain", "is_domain", reason));
                String::new()
            }
        },
        None => {
            invalid.push(errors::invalid("domain", "required", "is a required field"));
            String::new()
        }
        Some(_) => {
            invalid.push(errors::invalid("domain", "is_string", "must be a string"));
            String::new()
        }
    };
    if !invalid.is_empty() {
        return Err(errors::invalid_list(invalid));
    }
    Ok((control_plane_id, geo, domain))
}

/// Who issues (or issued) the domain's certificate, wasmgate's field beside Konnect's:
/// `acme` with the directory, or `control-plane-ca`, the embedded default, a CA of this
/// control plane's own that no client trusts unless told to (its certificate is here).
fn certificate_authority(state: &State, row: &DomainRow) -> Value {
    let issuer = state.domains.issuer();
    let kind = row
        .authority
        .as_deref()
        .unwrap_or_else(|| issuer.authority());
    if kind == crate::acme::AcmeIssuer::AUTHORITY {
        let directory = row.acme_directory.clone().or_else(|| {
            state
                .options
                .certificates
                .acme
                .as_ref()
                .map(|a| a.directory.clone())
        });
        return json!({ "kind": kind, "acme_directory": directory });
    }
    let mut authority = json!({
        "kind": kind,
        "description": "the control plane's own CA, the embedded default when no ACME \
                        directory is configured (control-plane serve --acme-directory); not \
                        publicly trusted: clients must trust ca_cert",
    });
    if let Issuer::ControlPlaneCa(ca) = issuer {
        authority["ca_cert"] = json!(ca.ca_pem());
    }
    authority
}

/// Konnect's CustomDomain, with wasmgate's `certificate_authority`, `not_after` and
/// `renew_at` (the certificate's, once issued).
fn to_json(state: &State, row: &DomainRow) -> Value {
    let mut metadata = json!({});
    if let Some(status) = &row.reported_status {
        metadata["reported_status"] = json!(status);
    }
    if let Some(reason) = &row.reason {
        metadata["reason"] = json!(reason);
    }
    json!({
        "id": row.id,
        "control_plane_id": row.control_plane_id,
        "control_plane_geo": row.control_plane_geo,
        "domain": row.domain,
        "certificate_id": row.certificate_id,
        "sni_id": row.sni_id,
        "state": row.state,
        "state_metadata": metadata,
        "entity_version": row.entity_version,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
        "certificate_authority": certificate_authority(state, row),
        "not_after": row.not_after.map(rfc3339),
        "renew_at": row.renew_at.map(rfc3339),
    })
}

/// Any existing control plane takes custom domains. Konnect offers them for cloud gateway
/// control planes only; here a self-managed control plane's data planes serve them too, as
/// Envoy joins self-managed control planes only and gets its certificates over SDS.
pub async fn create(state: Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_object(&body)?;
    let (control_plane_id, geo, domain) = read_request(&body)?;
    let store = Arc::clone(&state.store);
    let row = blocking(move || {
        store.transaction(|tx| {
            if control_planes::load(tx, &control_plane_id)?.is_none() {
                return Err(invalid_parameters(&[(
                    "control_plane_id",
                    "missing_reference",
                    format!("no control plane with id {control_plane_id}"),
                )]));
            }
            if let Some(taken) = rows::by_domain(tx, &domain)? {
                let whose = if taken.control_plane_id == control_plane_id {
                    format!(
                        "this control plane already has it (custom domain {})",
                        taken.id
                    )
                } else {
                    "another control plane uses it".to_owned()
                };
                return Err(problem(
                    StatusCode::CONFLICT,
                    format!("custom domain {domain} already exists: {whose}"),
                ));
            }
            let new_id = || uuid::Uuid::new_v4().to_string();
            let row = DomainRow::initializing(
                (new_id(), new_id(), new_id()),
                &control_plane_id,
                &geo,
                &domain,
                now(),
            );
            rows::insert(tx, &row).map_err(|e| match e {
                StoreError::Unique(_) => problem(
                    StatusCode::CONFLICT,
                    format!("custom domain {domain} already exists"),
                ),
                other => other.into(),
            })?;
            Ok(row)
        })
    })
    .await?;
    crate::custom_domains::begin(&state, row.clone());
    Ok((StatusCode::CREATED, Json(to_json(&state, &row))))
}

/// The value of `filter[<field>]` or `filter[<field>][eq]`.
fn filter<'a>(query: &'a HashMap<String, String>, field: &str) -> Option<&'a str> {
    query
        .get(&format!("filter[{field}]"))
        .or_else(|| query.get(&format!("filter[{field}][eq]")))
        .map(String::as_str)
}

/// Konnect's list: `page[size]` (10 by default) and `page[number]`, `filter[...]` on
/// `control_plane_id`, `control_plane_geo`, `domain` and `state` (equality).
pub async fn list(
    state: Shared,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let size = control_planes::page_param(&query, "page[size]", 10, 100)?;
    let number = control_planes::page_param(&query, "page[number]", 1, usize::MAX)?;
    let store = Arc::clone(&state.store);
    let all = blocking(move || store.transaction(|tx| Ok::<_, ApiError>(rows::all(tx)?))).await?;
    let matching: Vec<&DomainRow> = all
        .iter()
        .filter(|row| {
            [
                ("control_plane_id", &row.control_plane_id),
                ("control_plane_geo", &row.control_plane_geo),
                ("domain", &row.domain),
                ("state", &row.state),
            ]
            .iter()
            .all(|(field, value)| filter(&query, field).is_none_or(|wanted| wanted == *value))
        })
        .collect();
    let total = matching.len();
    let data: Vec<Value> = matching
        .into_iter()
        .skip(size.saturating_mul(number - 1))
        .take(size)
        .map(|row| to_json(&state, row))
        .collect();
    Ok(Json(json!({
        "meta": { "page": { "number": number, "size": size, "total": total } },
        "data": data,
    })))
}

async fn load(state: &Arc<State>, id: String) -> Result<DomainRow, ApiError> {
    let store = Arc::clone(&state.store);
    blocking(move || store.transaction(|tx| Ok::<_, ApiError>(rows::get(tx, &id)?)))
        .await?
        .ok_or_else(|| problem_not_found("custom domain"))
}

pub async fn get(state: Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let row = load(&state, id).await?;
    Ok(Json(to_json(&state, &row)))
}

/// Konnect's online status: `ssl` is verified while the domain is `ready` (its certificate run
/// by its data planes) and the certificate valid; `cname` (where the domain's DNS points) is
/// verified once the ACME server reached the data planes through it, which the control
/// plane's own CA never checks.
pub async fn online_status(state: Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let row = load(&state, id).await?;
    let valid = row.state == rows::READY
        && row.cert.is_some()
        && row.not_after.is_some_and(|at| at > now());
    let verified = |yes: bool| if yes { "verified" } else { "unverified" };
    let validated = valid && row.authority.as_deref() == Some(crate::acme::AcmeIssuer::AUTHORITY);
    Ok(Json(json!({
        "cname": verified(validated),
        "ssl": verified(valid),
    })))
}

/// Removes the domain; its certificate leaves every data plane's configuration first (the
/// answer waits, a while, for the connected data planes to run the version without it).
pub async fn delete(state: Shared, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    match crate::custom_domains::delete(&state, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(problem_not_found("custom domain")),
        Err(e) => Err(errors::internal(format!(
            "deleting custom domain {id}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::errors::pair;

    #[test]
    fn domain_names_are_dns_names_lowercased() {
        for (given, expected) in [
            ("api.example.test", "api.example.test"),
            ("API.Example.TEST", "api.example.test"),
            ("a-1.b2.example", "a-1.b2.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(domain_name(given).as_deref(), Ok(expected), "{given}");
        }
        let long = format!("{}.example", vec!["a".repeat(63); 4].join("."));
        assert!(long.len() > MAX_DOMAIN);
        for bad in [
            "",
            "localhost",
            "api.example.test.",
            "*.example.test",
            "127.0.0.1",
            "::1",
            "[::1]",
            "10.0.0.300",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "api.example.test:443",
            "ex ample.test",
            long.as_str(),
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(domain_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(domain_name("1.2.3.4")
            .expect_err("an IP")
            .contains("IP address"));
    }

    #[test]
    fn requests_are_refused_by_field() {
        let refusals = |body: Value| -> Vec<(String, String)> {
            let error = read_request(&body).expect_err("refused");
            let (status, body) = error.parts();
            assert_eq!(status, 400);
            crate::api::errors::field_rules(
                body["invalid_parameters"]
                    .as_array()
                    .expect("invalid_parameters"),
            )
        };
        assert_eq!(
            refusals(json!({})),
            [
                pair("control_plane_id", "required"),
                pair("control_plane_geo", "required"),
                pair("domain", "required"),
            ]
        );
        let cp = "0b9b6b53-0000-4000-8000-000000000000";
        assert_eq!(
            refusals(
                json!({ "control_plane_id": "cp", "control_plane_geo": "mars",
                             "domain": "10.0.0.1", "kind": "x" })
            ),
            [
                pair("kind", "unknown_property"),
                pair("control_plane_id", "is_uuid"),
                pair("control_plane_geo", "enum"),
                pair("domain", "is_domain"),
            ]
        );
        assert_eq!(
            read_request(&json!({ "control_plane_id": cp, "control_plane_geo": "eu",
                                  "domain": "Shop.Example.Test" }))
            .expect("valid"),
            (
                cp.to_owned(),
                "eu".to_owned(),
                "shop.example.test".to_owned()
            )
        );
    }
}
