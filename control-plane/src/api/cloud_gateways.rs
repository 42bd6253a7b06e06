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

/// The most gateways a group may ask for (`autoscale.requested_instances`).
const MAX_REPLICAS: u64 = 10;

/// How many gateways a group runs: `requested_instances` of a `static` autoscale, else one
/// (an `autopilot` group scales by traffic in Konnect; here it runs one gateway).
fn replicas_asked(asked: &Value) -> u64 {
    match asked["autoscale"]["kind"].as_str() {
        Some("static") => asked["autoscale"]["requested_instances"]
            .as_u64()
            .unwrap_or(1)
            .max(1),
        _ => 1,
    }
}

/// A stored group's gateways: its own (`id`, `proxy_port`, `tls_port`), then each of its
/// `replicas`. A gateway stored before gateways had a TLS listener has no `tls_port`.
fn gateways_of(group: &Value) -> Vec<(String, u16, Option<u16>)> {
    let one = |g: &Value| {
        Some((
            g["id"].as_str()?.to_owned(),
            u16::try_from(g["proxy_port"].as_u64()?).ok()?,
            g["tls_port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ))
    };
    one(group)
        .into_iter()
        .chain(
            group["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(one),
        )
        .collect()
}

fn specs_of(
    data_dir: &std::path::Path,
    doc: &Value,
    redis: Option<&crate::config::Redis>,
) -> Vec<DataPlaneSpec> {
    let control_plane_id = doc["control_plane_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let folder = |id: &str| data_dir.join("cloud-gateways").join(id);
    let mut specs = Vec::new();
    for group in doc["dataplane_groups"].as_array().into_iter().flatten() {
        let mut gateways = gateways_of(group);
        let Some((group_id, _, _)) = gateways.first().cloned() else {
            continue;
        };
        let shared = match redis {
            Some(redis) if gateways.len() > 1 => Some(crate::config::SharedBudget {
                redis: redis.clone(),
                group_id: group_id.clone(),
            }),
            Some(_) => None,
            None => {
                if gateways.len() > 1 {
                    // Stored while the control plane had a Redis: its replicas counting
                    // alone would each admit the group's whole limit.
                    log::error!(
                        "data plane group {group_id}: {} replicas asked, but this control \
                         plane runs without --redis; running one gateway",
                        gateways.len()
                    );
                    gateways.truncate(1);
                }
                None
            }
        };
        for (id, port, tls) in gateways {
            specs.push(DataPlaneSpec {
                control_plane_id: control_plane_id.clone(),
                dir: folder(&id),
                credentials: folder(&group_id),
                group_id: id,
                proxy: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                tls: tls.map(|tls| std::net::SocketAddr::from(([127, 0, 0, 1], tls))),
                shared: shared.clone(),
            });
        }
    }
    specs
}

/// The data planes of every stored configuration, or of one control plane's, as committed.
pub fn cloud_gateway_specs(
    store: &Store,
    control_plane_id: Option<&str>,
    redis: Option<&crate::config::Redis>,
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
                    Some((cp, specs_of(&data_dir, &doc, redis)))
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

/// Gives each stored gateway without a TLS port one (configurations stored before gateways
/// had a TLS listener), so that its control plane's custom domains are served after an
/// upgrade without a new `PUT`; its running gateway is then started again with it. Returns
/// how many ports were given.
pub fn assign_tls_ports(store: &Store) -> Result<usize, String> {
    store
        .transaction(|tx| -> Result<usize, ApiError> {
            let mut statement = tx
                .prepare("SELECT control_plane_id, doc FROM cloud_gateways")
                .map_err(StoreError::from)?;
            let rows = statement
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(StoreError::from)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?;
            let mut assigned = 0;
            for (cp, doc) in rows {
                let Ok(mut doc) = serde_json::from_str::<Value>(&doc) else {
                    continue;
                };
                let groups = doc["dataplane_groups"].as_array().map_or(0, Vec::len);
                for g in 0..groups {
                    let replicas = doc["dataplane_groups"][g]["replicas"]
                        .as_array()
                        .map_or(0, Vec::len);
                    // The group's own gateway, then each replica; each port is stored before
                    // the next is chosen, so that allocate_port sees it taken.
                    for r in std::iter::once(None).chain((0..replicas).map(Some)) {
                        let gateway = match r {
                            None => &doc["dataplane_groups"][g],
                            Some(r) => &doc["dataplane_groups"][g]["replicas"][r],
                        };
                        if !gateway["tls_port"].is_null() {
                            continue;
                        }
                        let port = allocate_port(tx, &[])?;
                        match r {
                            None => doc["dataplane_groups"][g]["tls_port"] = json!(port),
                            Some(r) => {
                                doc["dataplane_groups"][g]["replicas"][r]["tls_port"] = json!(port)
                            }
                        }
                        tx.execute(
                            "UPDATE cloud_gateways SET doc = ?1 WHERE control_plane_id = ?2",
                            params![doc.to_string(), cp],
                        )
                        .map_err(StoreError::from)?;
                        assigned += 1;
                    }
                }
            }
            Ok(assigned)
        })
        .map_err(|e| format!("giving stored gateways a TLS port: {e:?}"))
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
            taken.extend(ports_of(group));
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

/// Every port a stored group's gateways listen on (plain and TLS).
fn ports_of(group: &Value) -> Vec<u16> {
    gateways_of(group)
        .into_iter()
        .flat_map(|(_, port, tls)| std::iter::once(port).chain(tls))
        .collect()
}

/// A group's state in Konnect's enum (`created`, `initializing`, `ready`, `terminating`,
/// `terminated`), and `state_metadata` when it is in trouble: its gateway exited and is
/// waiting to be started again (`reported_status` `ERROR`, `reason` how it ended).
fn group_state(
    health: Option<(bool, u32, Option<String>)>,
    in_sync: bool,
) -> (&'static str, Option<Value>) {
    match health {
        // Stored, but not (yet) supervised: nothing runs for it.
        None => ("created", None),
        Some((true, _, _)) if in_sync => ("ready", None),
        Some((true, _, _)) | Some((false, 0, _)) => ("initializing", None),
        Some((false, restarts, last_exit)) => (
            "initializing",
            Some(json!({
                "reported_status": "ERROR",
                "reason": match last_exit {
                    Some(exit) => format!(
                        "the gateway ended ({exit}); starting it again (restart {restarts})"
                    ),
                    None => format!("the gateway ended; starting it again (restart {restarts})"),
                },
            })),
        ),
    }
}

/// What was asked for each group, as Konnect's `dataplane_group_config`; a configuration
/// stored before it was kept has it made from its groups.
fn group_config(doc: &Value) -> Value {
    if let Some(config) = doc.get("dataplane_group_config").filter(|c| c.is_array()) {
        return config.clone();
    }
    let groups = doc["dataplane_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Value::Array(
        groups
            .iter()
            .map(|g| {
                let mut item = json!({ "region": g["region"] });
                if g["provider"].is_string() {
                    item["provider"] = g["provider"].clone();
                }
                item
            })
            .collect(),
    )
}

/// Konnect's view of a configuration (its `ConfigurationManifest`), with each group's live
/// state. Beside Konnect's fields a group has wasmgate's own, which the schema allows and a
/// user needs: `proxy_url` (where the local gateway listens), `restarts` and `last_exit`.
fn to_json(state: &State, doc: &Value) -> Value {
    let control_plane_id = doc["control_plane_id"].as_str().unwrap_or_default();
    let expected = state.hub.current(control_plane_id);
    let created_at = doc["created_at"].as_i64().unwrap_or_default();
    let groups: Vec<Value> = doc["dataplane_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|stored| {
            let id = stored["id"].as_str().unwrap_or_default();
            let port = stored["proxy_port"].as_u64().unwrap_or_default();
            let node = state.nodes.get(control_plane_id, id);
            let in_sync = node.as_ref().is_some_and(|n| {
                n.sync_status(expected.as_ref().map(|v| v.hash.as_str())) == "in_sync"
            });
            let health = state.provisioner.health(control_plane_id, id);
            let (restarts, last_exit) = health
                .as_ref()
                .map(|(_, restarts, last_exit)| (*restarts, last_exit.clone()))
                .unwrap_or((0, None));
            let (group_state, metadata) = group_state(health, in_sync);
            let mut group = json!({ "id": id });
            if stored["provider"].is_string() {
                group["provider"] = stored["provider"].clone();
            }
            group["region"] = stored["region"].clone();
            group["state"] = json!(group_state);
            if let Some(metadata) = metadata {
                group["state_metadata"] = metadata;
            }
            group["egress_ip_addresses"] = json!(["127.0.0.1"]);
            group["private_ip_addresses"] = json!(["127.0.0.1"]);
            for field in ["created_at", "updated_at"] {
                group[field] = json!(rfc3339(stored[field].as_i64().unwrap_or(created_at)));
            }
            group["proxy_url"] = json!(format!("http://127.0.0.1:{port}"));
            // wasmgate's: every gateway of the group (no load balancer fronts them here).
            group["proxy_urls"] = json!(gateways_of(stored)
                .iter()
                .map(|(_, port, _)| format!("http://127.0.0.1:{port}"))
                .collect::<Vec<_>>());
            // wasmgate's: the TLS listeners, where the control plane's custom domains are
            // served by SNI.
            if let Some(tls) = stored["tls_port"].as_u64() {
                group["https_proxy_url"] = json!(format!("https://127.0.0.1:{tls}"));
            }
            group["https_proxy_urls"] = json!(gateways_of(stored)
                .iter()
                .filter_map(|(_, _, tls)| tls.map(|tls| format!("https://127.0.0.1:{tls}")))
                .collect::<Vec<_>>());
            group["restarts"] = json!(restarts);
            group["last_exit"] = json!(last_exit);
            group
        })
        .collect();
    let mut out = json!({
        "id": doc["id"],
        "control_plane_id": doc["control_plane_id"],
        "control_plane_geo": doc["control_plane_geo"],
        "kind": doc["kind"],
        "api_access": "public",
        "dataplane_group_config": group_config(doc),
        "dataplane_groups": groups,
        "entity_version": doc["entity_version"],
        "created_at": rfc3339(created_at),
        "updated_at": rfc3339(doc["updated_at"].as_i64().unwrap_or_default()),
    });
    if doc["version"].is_string() {
        out["version"] = doc["version"].clone();
    }
    out
}

pub(super) const GEOS: [&str; 6] = ["us", "eu", "au", "me", "in", "sg"];
const PROVIDERS: [&str; 3] = ["aws", "azure", "gcp"];
const REQUEST_FIELDS: [&str; 6] = [
    "control_plane_id",
    "control_plane_geo",
    "version",
    "dataplane_groups",
    "kind",
    "api_access",
];
const GROUP_FIELDS: [&str; 5] = [
    "provider",
    "region",
    "cloud_gateway_network_id",
    "autoscale",
    "environment",
];

/// A `PUT /v3/cloud-gateways/configurations` body, checked as Konnect's
/// `CreateConfigurationRequest` (`additionalProperties: false` at both levels).
#[derive(Debug, PartialEq)]
struct Request {
    control_plane_id: String,
    geo: String,
    kind: String,
    version: Option<String>,
    /// Each group as asked (`dataplane_group_config`): provider (when given), region, and
    /// autoscale (when given): a `static` one's `requested_instances` is how many gateways
    /// the group runs, sharing its rate limit through the control plane's Redis; any other
    /// runs one.
    groups: Vec<Value>,
}

fn is_uuid(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|v| uuid::Uuid::parse_str(v).is_ok())
}

fn check_autoscale(field: &str, autoscale: &Value, invalid: &mut Vec<Value>) {
    let count = |key: &str| {
        autoscale
            .get(key)
            .is_some_and(|v| v.as_u64().is_some_and(|n| n >= 1))
    };
    let unknown = |allowed: &[&str]| -> Vec<String> {
        autoscale
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let sizes = ["small", "medium", "large"];
    let extra = match autoscale.get("kind").and_then(Value::as_str) {
        Some("static") => {
            if !autoscale
                .get("instance_type")
                .and_then(Value::as_str)
                .is_some_and(|t| sizes.contains(&t))
            {
                invalid.push(errors::invalid_choice(
                    format!("{field}.instance_type"),
                    &sizes,
                ));
            }
            if !count("requested_instances")
                || autoscale["requested_instances"].as_u64() > Some(MAX_REPLICAS)
            {
                invalid.push(errors::invalid(
                    format!("{field}.requested_instances"),
                    "is_integer",
                    format!("is a required integer from 1 to {MAX_REPLICAS}"),
                ));
            }
            unknown(&["kind", "instance_type", "requested_instances"])
        }
        Some("autopilot") => {
            if !count("base_rps") {
                invalid.push(errors::invalid(
                    format!("{field}.base_rps"),
                    "is_integer",
                    "is a required integer of at least 1",
                ));
            }
            if autoscale.get("max_rps").is_some() && !count("max_rps") {
                invalid.push(errors::invalid(
                    format!("{field}.max_rps"),
                    "is_integer",
                    "must be an integer of at least 1",
                ));
            }
            unknown(&["kind", "base_rps", "max_rps"])
        }
        _ => {
            invalid.push(errors::invalid_choice(
                format!("{field}.kind"),
                &["static", "autopilot"],
            ));
            Vec::new()
        }
    };
    for key in extra {
        invalid.push(errors::invalid(
            format!("{field}.{key}"),
            "unknown_property",
            format!("'{key}' is not a property of this autoscale kind"),
        ));
    }
}

/// Konnect's environment fields (`KONG_` names, values of 1 to 120 characters) are checked as
/// Konnect checks them; a valid one is still refused, as wasmgate's gateways are not Kong and
/// cannot honour it (before, it was accepted and silently ignored).
fn check_environment(field: &str, environment: &Value, invalid: &mut Vec<Value>) {
    let Some(list) = environment.as_array() else {
        invalid.push(errors::invalid(
            field,
            "is_array",
            "must be an array of {name, value}",
        ));
        return;
    };
    for (j, item) in list.iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = item
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kong_name = name.len() <= 120
            && name.strip_prefix("KONG_").is_some_and(|rest| {
                rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !kong_name {
            invalid.push(errors::invalid(
                format!("{field}[{j}].name"),
                "matches_regex",
                "must match ^KONG_[a-zA-Z_]+[a-zA-Z0-9_]*$ (at most 120 characters)",
            ));
        } else if value.is_empty() || value.chars().count() > 120 {
            invalid.push(errors::invalid(
                format!("{field}[{j}].value"),
                "is_string",
                "must be a string of 1 to 120 characters",
            ));
        } else {
            invalid.push(errors::invalid(
                format!("{field}[{j}].name"),
                "invalid",
                format!(
                    "{name}: wasmgate's gateways are not Kong and take no Kong environment \
                     variables; configure them through the control plane's entities"
                ),
            ));
        }
    }
}

fn read_group(i: usize, group: &Value, kind: &str, invalid: &mut Vec<Value>) -> Value {
    let field = |name: &str| format!("dataplane_groups[{i}].{name}");
    let Some(map) = group.as_object() else {
        invalid.push(errors::invalid(
            format!("dataplane_groups[{i}]"),
            "is_object",
            "must be an object",
        ));
        return Value::Null;
    };
    for key in map.keys() {
        if !GROUP_FIELDS.contains(&key.as_str()) {
            invalid.push(errors::invalid(
                field(key),
                "unknown_property",
                format!("'{key}' is not a property of a data plane group"),
            ));
        }
    }
    let mut item = json!({});
    match map.get("provider") {
        Some(Value::String(p)) if PROVIDERS.contains(&p.as_str()) => {
            item["provider"] = json!(p);
        }
        // Konnect's own serverless.v0 call names none (the seed's: `[{region: na}]`).
        None if kind == "serverless.v0" => {}
        None => invalid.push(errors::invalid(
            field("provider"),
            "required",
            "is a required field",
        )),
        Some(_) => invalid.push(errors::invalid_choice(field("provider"), &PROVIDERS)),
    }
    match map.get("region") {
        Some(Value::String(r)) if !r.is_empty() => item["region"] = json!(r),
        None => invalid.push(errors::invalid(
            field("region"),
            "required",
            "is a required field",
        )),
        Some(_) => invalid.push(errors::invalid(
            field("region"),
            "is_string",
            "must be a non-empty string",
        )),
    }
    // Konnect ignores a network for serverless kinds; a malformed one is still refused.
    if map
        .get("cloud_gateway_network_id")
        .is_some_and(|n| !is_uuid(n))
    {
        invalid.push(errors::invalid(
            field("cloud_gateway_network_id"),
            "is_uuid",
            "must be a network id (a UUID)",
        ));
    }
    if let Some(autoscale) = map.get("autoscale") {
        check_autoscale(&field("autoscale"), autoscale, invalid);
        item["autoscale"] = autoscale.clone();
    }
    if let Some(environment) = map.get("environment") {
        check_environment(&field("environment"), environment, invalid);
    }
    item
}

/// The control plane a cloud-gateways body names: `control_plane_id` (a UUID) and
/// `control_plane_geo` (one of [`GEOS`]), both required; what is wrong goes to `invalid`.
pub(super) fn control_plane_of(body: &Value, invalid: &mut Vec<Value>) -> (String, String) {
    let control_plane_id = match body.get("control_plane_id") {
        Some(id) if is_uuid(id) => id.as_str().unwrap_or_default().to_owned(),
        None => {
            invalid.push(errors::invalid(
                "control_plane_id",
                "required",
                "is a required field",
            ));
            String::new()
        }
        Some(_) => {
            invalid.push(errors::invalid(
                "control_plane_id",
                "is_uuid",
                "must be a control plane id (a UUID)",
            ));
            String::new()
        }
    };
    let geo = match body.get("control_plane_geo") {
        Some(Value::String(geo)) if GEOS.contains(&geo.as_str()) => geo.clone(),
        None => {
            invalid.push(errors::invalid(
                "control_plane_geo",
                "required",
                "is a required field",
            ));
            String::new()
        }
        Some(_) => {
            invalid.push(errors::invalid_choice("control_plane_geo", &GEOS));
            String::new()
        }
    };
    (control_plane_id, geo)
}

fn read_request(body: &Value) -> Result<Request, ApiError> {
    let mut invalid =
        errors::unknown_properties(body, &REQUEST_FIELDS, "a cloud gateway configuration");
    let (control_plane_id, geo) = control_plane_of(body, &mut invalid);
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !KINDS.iter().any(|(k, _)| *k == kind) {
        let mut choice = errors::invalid_choice("kind", &["serverless.v0", "serverless.v1"]);
        choice["reason"] = json!(
            "must be one of: serverless.v0, serverless.v1 (dedicated cloud gateways are not \
             provisioned by wasmgate)"
        );
        invalid.push(choice);
    }
    let version = match body.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => {
            invalid.push(errors::invalid("version", "is_string", "must be a string"));
            None
        }
    };
    match body.get("api_access").map(Value::as_str) {
        None | Some(Some("public")) => {}
        Some(Some("private" | "private+public")) => invalid.push(errors::invalid(
            "api_access",
            "invalid",
            "serverless gateways have public networking only: api_access must be public",
        )),
        Some(_) => invalid.push(errors::invalid_choice(
            "api_access",
            &["private", "public", "private+public"],
        )),
    }
    let mut groups = Vec::new();
    match body.get("dataplane_groups").and_then(Value::as_array) {
        None => invalid.push(errors::invalid(
            "dataplane_groups",
            "required",
            "is a required array of data plane groups",
        )),
        Some(list) if list.is_empty() || list.len() > MAX_GROUPS => invalid.push(errors::invalid(
            "dataplane_groups",
            "range",
            format!("must have between 1 and {MAX_GROUPS} groups"),
        )),
        Some(list) => {
            for (i, group) in list.iter().enumerate() {
                groups.push(read_group(i, group, kind, &mut invalid));
            }
        }
    }
    if !invalid.is_empty() {
        return Err(errors::invalid_list(invalid));
    }
    Ok(Request {
        control_plane_id,
        geo,
        kind: kind.to_owned(),
        version,
        groups,
    })
}

/// Whether a stored group is where a requested one asks to be (same region and provider),
/// so that it keeps its gateway. A group stored before providers were optional says `aws`
/// where the request names none.
fn same_place(old: &Value, asked: &Value) -> bool {
    let provider = |g: &Value| g["provider"].as_str().map(str::to_owned);
    old["region"] == asked["region"]
        && (provider(old) == provider(asked)
            || (provider(asked).is_none() && provider(old).as_deref() == Some("aws")))
}

pub async fn put(state: Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = json_object(&body)?;
    let Request {
        control_plane_id,
        geo,
        kind,
        version,
        groups,
    } = read_request(&body)?;
    let cluster_type = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, t)| (*t).to_owned())
        .unwrap_or_default();
    if state.options.redis.is_none() {
        let shared: Vec<Value> = groups
            .iter()
            .enumerate()
            .filter(|(_, asked)| replicas_asked(asked) > 1)
            .map(|(i, asked)| {
                errors::invalid(
                    format!("dataplane_groups[{i}].autoscale.requested_instances"),
                    "invalid",
                    format!(
                        "{} gateways would each admit the group's 100 requests per second: \
                         replicas share it through Redis, and this control plane runs without \
                         one (control-plane serve --redis HOST:PORT); ask for 1",
                        replicas_asked(asked)
                    ),
                )
            })
            .collect();
        if !shared.is_empty() {
            return Err(errors::invalid_list(shared));
        }
    }
    let store = Arc::clone(&state.store);
    let ca_pem = state.identity.ca_pem.clone();
    let data_dir = state.options.data_dir.clone();
    let cp = control_plane_id.clone();
    let (doc, created) = blocking(move || {
        store.transaction(|tx| {
            let row = control_planes::load(tx, &cp)?.ok_or_else(|| {
                invalid_parameters(&[("control_plane_id", "missing_reference", format!("no control plane with id {cp}"))])
            })?;
            if row.cluster_type() != cluster_type {
                return Err(invalid_parameters(&[(
                    "kind",
                    "invalid",
                    format!("{kind} needs a control plane of cluster_type {cluster_type}; this one is {}", row.cluster_type()),
                )]));
            }
            let previous = stored(tx, "control_plane_id", &cp)?;
            let now = now();
            let old_groups = previous
                .as_ref()
                .and_then(|p| p["dataplane_groups"].as_array().cloned())
                .unwrap_or_default();
            let old_created = previous.as_ref().and_then(|p| p["created_at"].as_i64()).unwrap_or(now);
            let mut new_groups = Vec::new();
            for (i, asked) in groups.iter().enumerate() {
                let mut group = json!({});
                if asked["provider"].is_string() {
                    group["provider"] = asked["provider"].clone();
                }
                group["region"] = asked["region"].clone();
                match old_groups.get(i).filter(|old| same_place(old, asked)) {
                    Some(old) => {
                        for field in ["id", "proxy_port", "tls_port", "certificate_id", "replicas"] {
                            if !old[field].is_null() {
                                group[field] = old[field].clone();
                            }
                        }
                        for field in ["created_at", "updated_at"] {
                            group[field] = json!(old[field].as_i64().unwrap_or(old_created));
                        }
                    }
                    None => {
                        let id = uuid::Uuid::new_v4().to_string();
                        let mut ports: Vec<u16> = new_groups.iter().flat_map(ports_of).collect();
                        let port = allocate_port(tx, &ports)?;
                        ports.push(port);
                        let tls_port = allocate_port(tx, &ports)?;
                        let dir = data_dir.join("cloud-gateways").join(&id);
                        let certificate_id = issue(tx, &cp, &id, &dir, &ca_pem, now)?;
                        group["id"] = json!(id);
                        group["proxy_port"] = json!(port);
                        group["tls_port"] = json!(tls_port);
                        group["certificate_id"] = json!(certificate_id);
                        group["created_at"] = json!(now);
                        group["updated_at"] = json!(now);
                    }
                }
                // Replicas beyond the first share the group's certificate; those it keeps
                // keep their ids and ports.
                let wanted = usize::try_from(replicas_asked(asked) - 1).unwrap_or_default();
                let mut replicas = group["replicas"].as_array().cloned().unwrap_or_default();
                replicas.truncate(wanted);
                let taken = |group: &Value, replicas: &[Value]| -> Vec<u16> {
                    let mut ports: Vec<u16> = new_groups
                        .iter()
                        .chain(std::iter::once(group))
                        .flat_map(ports_of)
                        .collect();
                    for replica in replicas {
                        for key in ["proxy_port", "tls_port"] {
                            ports.extend(replica[key].as_u64().and_then(|p| u16::try_from(p).ok()));
                        }
                    }
                    ports
                };
                while replicas.len() < wanted {
                    let mut ports = taken(&group, &replicas);
                    let port = allocate_port(tx, &ports)?;
                    ports.push(port);
                    let tls_port = allocate_port(tx, &ports)?;
                    replicas.push(json!({ "id": uuid::Uuid::new_v4().to_string(), "proxy_port": port, "tls_port": tls_port }));
                }
                // Gateways stored before they had a TLS listener get one now.
                if group["tls_port"].is_null() {
                    let ports = taken(&group, &replicas);
                    group["tls_port"] = json!(allocate_port(tx, &ports)?);
                }
                for i in 0..replicas.len() {
                    if replicas[i]["tls_port"].is_null() {
                        let ports = taken(&group, &replicas);
                        replicas[i]["tls_port"] = json!(allocate_port(tx, &ports)?);
                    }
                }
                if replicas.is_empty() {
                    if let Some(group) = group.as_object_mut() {
                        group.remove("replicas");
                    }
                } else {
                    group["replicas"] = json!(replicas);
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
                "dataplane_group_config": groups,
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
    use crate::api::errors::pair;

    const CP: &str = "0b9b6b53-0000-4000-8000-000000000000";

    fn body(groups: Value) -> Value {
        json!({ "control_plane_id": CP, "control_plane_geo": "us", "kind": "serverless.v1",
                "dataplane_groups": groups })
    }

    /// Every invalid parameter, as (field, rule).
    fn refusals(body: Value) -> Vec<(String, String)> {
        let error = read_request(&body).expect_err("refused");
        let (status, body) = error.parts();
        assert_eq!(status, 400);
        crate::api::errors::field_rules(
            body["invalid_parameters"]
                .as_array()
                .expect("invalid_parameters"),
        )
    }

    #[test]
    fn the_seeds_configurations_are_read_as_asked() {
        // The seed's serverless.v1 call, verbatim.
        let v1 = read_request(&body(json!([{ "region": "us", "provider": "aws" }]))).expect("v1");
        assert_eq!(
            v1,
            Request {
                control_plane_id: CP.into(),
                geo: "us".into(),
                kind: "serverless.v1".into(),
                version: None,
                groups: vec![json!({ "provider": "aws", "region": "us" })],
            }
        );
        // And its serverless.v0 call, which names no provider: none is made up.
        let v0 = read_request(&json!({ "control_plane_id": CP, "control_plane_geo": "us",
            "dataplane_groups": [{ "region": "na" }], "kind": "serverless.v0" }))
        .expect("v0");
        assert_eq!(v0.groups, vec![json!({ "region": "na" })]);
        let full = read_request(&body(json!([{ "region": "eu", "provider": "gcp",
            "autoscale": { "kind": "autopilot", "base_rps": 1 },
            "cloud_gateway_network_id": CP }])))
        .expect("full");
        assert_eq!(
            full.groups,
            vec![json!({ "provider": "gcp", "region": "eu",
                         "autoscale": { "kind": "autopilot", "base_rps": 1 } })]
        );
        let five = vec![json!({ "region": "us", "provider": "aws" }); MAX_GROUPS];
        assert_eq!(
            read_request(&body(json!(five))).expect("five").groups.len(),
            5
        );
    }

    /// Review D19: Konnect's CreateConfigurationRequest refuses what wasmgate accepted (an
    /// unknown property, a provider outside aws|azure|gcp, a missing control_plane_geo) or
    /// silently ignored (environment); each is named. Before: all accepted, provider `aws`,
    /// geo `us`.
    #[test]
    fn configurations_are_refused_by_name() {
        assert_eq!(
            refusals(json!({})),
            [
                pair("control_plane_id", "required"),
                pair("control_plane_geo", "required"),
                pair("kind", "enum"),
                pair("dataplane_groups", "required"),
            ]
        );
        let mut unknown = body(json!([{ "region": "us", "provider": "aws", "size": 2 }]));
        unknown["colour"] = json!("red");
        assert_eq!(
            refusals(unknown),
            [
                pair("colour", "unknown_property"),
                pair("dataplane_groups[0].size", "unknown_property"),
            ]
        );
        let mut geo = body(json!([{ "region": "us", "provider": "aws" }]));
        geo["control_plane_geo"] = json!("mars");
        assert_eq!(refusals(geo), [pair("control_plane_geo", "enum")]);
        assert_eq!(
            refusals(body(
                json!([{ "region": "us", "provider": "ibm" }, { "region": "us" }])
            )),
            [
                pair("dataplane_groups[0].provider", "enum"),
                pair("dataplane_groups[1].provider", "required"),
            ]
        );
        assert_eq!(
            refusals(body(
                json!([{ "provider": "aws" }, { "region": 1, "provider": "aws" }])
            )),
            [
                pair("dataplane_groups[0].region", "required"),
                pair("dataplane_groups[1].region", "is_string"),
            ]
        );
        assert_eq!(
            refusals(body(
                json!([{ "region": "us", "provider": "aws", "environment": [
                { "name": "LOG_LEVEL", "value": "debug" },
                { "name": "KONG_LOG_LEVEL", "value": "" },
                { "name": "KONG_LOG_LEVEL", "value": "debug" },
            ] }])
            )),
            [
                pair("dataplane_groups[0].environment[0].name", "matches_regex"),
                pair("dataplane_groups[0].environment[1].value", "is_string"),
                pair("dataplane_groups[0].environment[2].name", "invalid"),
            ]
        );
        assert_eq!(
            refusals(body(
                json!([{ "region": "us", "provider": "aws", "autoscale":
                { "kind": "static", "requested_instances": 0, "extra": 1 } }])
            )),
            [
                pair("dataplane_groups[0].autoscale.instance_type", "enum"),
                pair(
                    "dataplane_groups[0].autoscale.requested_instances",
                    "is_integer"
                ),
                pair("dataplane_groups[0].autoscale.extra", "unknown_property"),
            ]
        );
        for count in [0, MAX_GROUPS + 1] {
            assert_eq!(
                refusals(body(json!(vec![
                    json!({ "region": "us", "provider": "aws" });
                    count
                ]))),
                [pair("dataplane_groups", "range")],
                "{count} groups"
            );
        }
        let mut private = body(json!([{ "region": "us", "provider": "aws" }]));
        private["api_access"] = json!("private");
        assert_eq!(refusals(private), [pair("api_access", "invalid")]);
        let mut not_uuid = body(json!([{ "region": "us", "provider": "aws" }]));
        not_uuid["control_plane_id"] = json!("cp");
        assert_eq!(refusals(not_uuid), [pair("control_plane_id", "is_uuid")]);
    }

    /// Review D19: a group's state is one of Konnect's (created, initializing, ready,
    /// terminating, terminated); a gateway that ended and waits to be started again is
    /// `initializing` with the reason in `state_metadata`. Before: `failed`.
    #[test]
    fn group_states_are_konnects() {
        assert_eq!(group_state(None, false), ("created", None));
        assert_eq!(group_state(Some((true, 0, None)), true), ("ready", None));
        assert_eq!(
            group_state(Some((true, 3, None)), false),
            ("initializing", None)
        );
        assert_eq!(
            group_state(Some((false, 0, None)), false),
            ("initializing", None)
        );
        let (state, metadata) = group_state(Some((false, 2, Some("exit status: 1".into()))), false);
        assert_eq!(state, "initializing");
        assert_eq!(
            metadata,
            Some(json!({ "reported_status": "ERROR",
                "reason": "the gateway ended (exit status: 1); starting it again (restart 2)" }))
        );
    }

    #[test]
    fn a_group_stays_where_it_is_asked_to_be() {
        let old = json!({ "region": "us", "provider": "aws" });
        assert!(same_place(
            &old,
            &json!({ "region": "us", "provider": "aws" })
        ));
        assert!(
            same_place(&old, &json!({ "region": "us" })),
            "stored before: aws"
        );
        assert!(!same_place(
            &old,
            &json!({ "region": "us", "provider": "gcp" })
        ));
        assert!(!same_place(
            &old,
            &json!({ "region": "eu", "provider": "aws" })
        ));
        assert!(same_place(
            &json!({ "region": "na" }),
            &json!({ "region": "na" })
        ));
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
