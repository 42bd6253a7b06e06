//! From stored entities to a config version, and back: the Kong declarative document a
//! control plane's data planes run, Kong's defaults and validation for single entities
//! (done by the model, the same code the gateway runs), and declarative import.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction};
use serde_json::{json, Map, Value};

use crate::hub::ConfigVersion;
use crate::store::entities::{self, reference, EntityKind};
use crate::store::StoreError;
use model::ConfigError;

/// Config versions kept per control plane (the latest is what data planes get; older ones
/// are history for `nodes` that still run them).
const VERSIONS_KEPT: i64 = 50;

/// The fields of each entity the model reads; everything else of Kong's documents (and
/// `null`s) stays out of the declarative document.
const SERVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "tags",
    "protocol",
    "host",
    "port",
    "path",
    "retries",
    "connect_timeout",
    "write_timeout",
    "read_timeout",
    "enabled",
    "tls_verify",
    "client_certificate",
    "ca_certificates",
    "tls_verify_depth",
];
const ROUTE_FIELDS: &[&str] = &[
    "id",
    "name",
    "tags",
    "protocols",
    "paths",
    "hosts",
    "methods",
    "headers",
    "strip_path",
    "preserve_host",
    "regex_priority",
    "path_handling",
    "https_redirect_status_code",
    "request_buffering",
    "response_buffering",
    "snis",
    "sources",
    "destinations",
];
const PLUGIN_FIELDS: &[&str] = &[
    "id",
    "name",
    "instance_name",
    "config",
    "enabled",
    "protocols",
    "tags",
    "ordering",
    "consumer",
];

/// Why a change was not accepted.
#[derive(Debug)]
pub enum Rejection {
    /// Kong's schema violation: field paths relative to the entity.
    Schema(ConfigError),
    /// The configuration as a whole is invalid (paths name entities).
    Declarative(ConfigError),
    /// A reference to an entity that does not exist.
    ForeignKey {
        field: &'static str,
        id: String,
        kind: &'static str,
    },
    Store(StoreError),
}

impl From<StoreError> for Rejection {
    fn from(e: StoreError) -> Self {
        Rejection::Store(e)
    }
}

fn pick(doc: &Value, fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|f| {
            let v = doc.get(*f)?;
            (!v.is_null()).then(|| ((*f).to_owned(), v.clone()))
        })
        .collect()
}

fn name_of(doc: &Value) -> Value {
    doc.get("name")
        .filter(|v| !v.is_null())
        .or_else(|| doc.get("id"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Every entity of a control plane.
pub struct Entities {
    pub services: Vec<Value>,
    pub routes: Vec<Value>,
    pub plugins: Vec<Value>,
}

impl Entities {
    pub fn load(tx: &Transaction<'_>, control_plane_id: &str) -> Result<Entities, StoreError> {
        Ok(Entities {
            services: entities::all(tx, control_plane_id, EntityKind::Services)?,
            routes: entities::all(tx, control_plane_id, EntityKind::Routes)?,
            plugins: entities::all(tx, control_plane_id, EntityKind::Plugins)?,
        })
    }

    /// The Kong declarative document (`_format_version: "3.0"`): routes nested in their
    /// service, plugins nested in their route or service, entities named by name or id. It
    /// holds the user's entities only: a serverless control plane's limits are its
    /// provisioned data planes' platform plugins ([`platform_plugins`]), not part of it.
    pub fn declarative(&self) -> Value {
        let id = |doc: &Value| doc.get("id").and_then(Value::as_str).map(str::to_owned);
        let plugin = |doc: &Value| {
            let mut p = pick(doc, PLUGIN_FIELDS);
            p.remove("consumer");
            Value::Object(p)
        };
        let plugins_of = |service: Option<&str>, route: Option<&str>| -> Vec<Value> {
            self.plugins
                .iter()
                .filter(|p| {
                    reference(p, "service").as_deref() == service
                        && reference(p, "route").as_deref() == route
                })
                .map(plugin)
                .collect()
        };
        let route = |doc: &Value| {
            let mut r = pick(doc, ROUTE_FIELDS);
            r.insert("name".into(), name_of(doc));
            let plugins = plugins_of(None, id(doc).as_deref());
            if !plugins.is_empty() {
                r.insert("plugins".into(), Value::Array(plugins));
            }
            Value::Object(r)
        };
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|doc| {
                let service_id = id(doc);
                let mut s = pick(doc, SERVICE_FIELDS);
                s.insert("name".into(), name_of(doc));
                let routes: Vec<Value> = self
                    .routes
                    .iter()
                    .filter(|r| reference(r, "service") == service_id)
                    .map(route)
                    .collect();
                if !routes.is_empty() {
                    s.insert("routes".into(), Value::Array(routes));
                }
                let plugins = plugins_of(service_id.as_deref(), None);
                if !plugins.is_empty() {
                    s.insert("plugins".into(), Value::Array(plugins));
                }
                Value::Object(s)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .filter(|r| reference(r, "service").is_none())
            .map(route)
            .collect();
        let find_name = |list: &[Value], wanted: &str| {
            list.iter()
                .find(|d| id(d).as_deref() == Some(wanted))
                .map(name_of)
                .unwrap_or_else(|| Value::String(wanted.to_owned()))
        };
        let mut plugins = plugins_of(None, None);
        for p in &self.plugins {
            let scope: (Option<String>, Option<String>) =
                (reference(p, "service"), reference(p, "route"));
            if let (Some(service_id), Some(route_id)) = scope {
                let mut doc = plugin(p);
                if let Value::Object(map) = &mut doc {
                    map.insert(
                        "service".into(),
                        find_name(&self.services, service_id.as_str()),
                    );
                    map.insert("route".into(), find_name(&self.routes, route_id.as_str()));
                }
                plugins.push(doc);
            }
        }
        let mut document = Map::new();
        document.insert("_format_version".into(), json!("3.0"));
        for (key, list) in [
            ("services", services),
            ("routes", routes),
            ("plugins", plugins),
        ] {
            if !list.is_empty() {
                document.insert(key.into(), Value::Array(list));
            }
        }
        Value::Object(document)
    }
}

/// The document a control plane's data planes get: its entities' declarative document
/// ([`Entities::declarative`], which the API shows and exports) and, for the data planes
/// only, its custom domains' certificates with their private keys (Kong's `certificates`,
/// the domain as SNI) and the ACME HTTP-01 challenges being validated (`acme_challenges`).
/// No API view is made from it: it holds keys.
pub fn data_plane_document(
    tx: &Transaction<'_>,
    control_plane_id: &str,
) -> Result<Value, StoreError> {
    let mut document = Entities::load(tx, control_plane_id)?.declarative();
    let (certificates, challenges) =
        crate::store::custom_domains::tls_entities(tx, control_plane_id)?;
    if let Value::Object(map) = &mut document {
        for (key, list) in [
            ("certificates", certificates),
            ("acme_challenges", challenges),
        ] {
            if !list.is_empty() {
                map.insert(key.into(), Value::Array(list));
            }
        }
    }
    Ok(document)
}

/// Turns the control plane's entities into its next config version, validated as a whole by
/// the model and stored in the same transaction. The caller publishes it after the commit.
pub fn next_version(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    now: i64,
) -> Result<Arc<ConfigVersion>, Rejection> {
    let text = data_plane_document(tx, control_plane_id)?.to_string();
    let version: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM config_versions WHERE control_plane_id = ?1",
            [control_plane_id],
            |r| r.get(0),
        )
        .map_err(StoreError::from)?;
    let config = ConfigVersion::new(control_plane_id, version as u64, text, now)
        .map_err(Rejection::Declarative)?;
    tx.execute(
        "INSERT INTO config_versions (control_plane_id, version, hash, document, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![control_plane_id, version, config.hash, config.text, now],
    )
    .map_err(StoreError::from)?;
    tx.execute(
        "DELETE FROM config_versions WHERE control_plane_id = ?1 AND version <= ?2",
        rusqlite::params![control_plane_id, version - VERSIONS_KEPT],
    )
    .map_err(StoreError::from)?;
    Ok(Arc::new(config))
}

/// At start: the control plane's configuration assembled again from its entities, stored
/// as a new version when its text differs from the latest stored one (an upgrade changed the
/// model or the assembly, so the stored text is no longer what these entities make, or no
/// longer valid). `None` when the stored version is still what the entities make.
pub fn reassemble(
    store: &crate::store::Store,
    control_plane_id: &str,
    now: i64,
) -> Result<Option<Arc<ConfigVersion>>, Rejection> {
    store.transaction(|tx| next_version_if_changed(tx, control_plane_id, now))
}

/// [`next_version`] when the data planes' document is not the latest version's text (a
/// custom domain's state changed without changing what the data planes run, say); `None`
/// when it is.
pub fn next_version_if_changed(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    now: i64,
) -> Result<Option<Arc<ConfigVersion>>, Rejection> {
    let text = data_plane_document(tx, control_plane_id)?.to_string();
    let latest: Option<String> = tx
        .query_row(
            "SELECT document FROM config_versions WHERE control_plane_id = ?1
             ORDER BY version DESC LIMIT 1",
            [control_plane_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)?;
    if latest.as_deref() == Some(text.as_str()) {
        return Ok(None);
    }
    next_version(tx, control_plane_id, now).map(Some)
}

/// A Redis the control plane's serverless groups of 2 or more replicas count their
/// requests in (`control-plane serve --redis HOST:PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redis {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Redis {
    type Err = String;

    fn from_str(text: &str) -> Result<Redis, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text}: expected HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text}: expected HOST:PORT"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{text}: the port must be a number from 0 to 65535"))?;
        Ok(Redis {
            host: host.to_owned(),
            port,
        })
    }
}

/// One data plane group's budget, shared by its replicas: the Redis it is counted in, and
/// the group it belongs to (each group has a budget of its own in that Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBudget {
    pub redis: Redis,
    pub group_id: String,
}

/// The seed's Serverless Gateway limits, 10 MB per request and 100 requests per second per
/// gateway, as the platform plugins (`gateway run --platform-plugins`) of every data plane
/// the control plane provisions: they run before the user's plugins and apart from them, so
/// nothing a user configures (an instance of the same plugin on any scope, by any API)
/// replaces or lifts them, while a stricter plugin of the user's own applies too. The rate
/// limit counts by `service`, which a platform plugin sees as the platform's own stream
/// identity: one count for the whole gateway, whatever its services. It hides its headers,
/// so that a user's own rate-limiting answers with its own; its 429 is Kong's
/// rate-limiting answer for that config.
///
/// A group of several replicas is one gateway to its users, so its replicas count in one
/// Redis (`shared`): `policy: redis`, under an instance name of the group's own, as Redis
/// keys belong to the plugin instance's name and every group of every control plane would
/// otherwise share one budget there.
pub fn platform_plugins(shared: Option<&SharedBudget>) -> Value {
    let mut rate_limiting = json!({
        "name": "rate-limiting",
        "config": {
            "second": 100,
            "limit_by": "service",
            "policy": "local",
            "hide_client_headers": true,
        },
    });
    if let Some(shared) = shared {
        rate_limiting["instance_name"] = json!(format!("rate-limiting-{}", shared.group_id));
        rate_limiting["config"]["policy"] = json!("redis");
        rate_limiting["config"]["redis"] =
            json!({ "host": shared.redis.host, "port": shared.redis.port });
    }
    json!({
        "plugins": [
            {
                "name": "request-size-limiting",
                "config": { "allowed_payload_size": 10, "size_unit": "megabytes" },
            },
            rate_limiting,
        ],
    })
}

/// The platform plugins' file in a provisioned data plane's folder.
pub const PLATFORM_PLUGINS_FILE: &str = "platform-plugins.json";

/// Writes [`platform_plugins`] to `path` (mode 0600, replaced whole): the platform's own
/// file, written before every start of the data plane, so that it is always this control
/// plane's.
pub fn write_platform_plugins(path: &Path, shared: Option<&SharedBudget>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("json.partial");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| {
            file.write_all(platform_plugins(shared).to_string().as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Kong's defaults for a new entity; what the client sent goes over them.
pub fn defaults(kind: EntityKind) -> Value {
    match kind {
        EntityKind::Services => json!({
            "name": null, "protocol": "http", "host": null, "port": 80, "path": null,
            "retries": 5, "connect_timeout": 60000, "write_timeout": 60000,
            "read_timeout": 60000, "tags": null, "client_certificate": null,
            "tls_verify": null, "tls_verify_depth": null, "ca_certificates": null,
            "enabled": true,
        }),
        EntityKind::Routes => json!({
            "name": null, "protocols": ["http", "https"], "methods": null, "hosts": null,
            "paths": null, "headers": null, "https_redirect_status_code": 426,
            "regex_priority": 0, "strip_path": true, "path_handling": "v0",
            "preserve_host": false, "request_buffering": true, "response_buffering": true,
            "tags": null, "service": null, "snis": null, "sources": null,
            "destinations": null,
        }),
        EntityKind::Plugins => json!({
            "name": null, "instance_name": null, "config": {}, "enabled": true,
            "protocols": ["grpc", "grpcs", "http", "https"], "service": null, "route": null,
            "consumer": null, "tags": null, "ordering": null,
        }),
    }
}

/// Merges a PATCH body into a stored document: fields replace fields, except `config`,
/// which is merged key by key as Kong merges a plugin's configuration record.
pub fn merge(target: &mut Value, patch: &Value) {
    let (Value::Object(target), Value::Object(patch)) = (target, patch) else {
        return;
    };
    for (key, value) in patch {
        match (key.as_str(), target.get_mut(key), value) {
            ("config", Some(existing @ Value::Object(_)), Value::Object(_)) => {
                merge_deep(existing, value)
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_deep(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (key, value) in p {
                match t.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_deep(existing, value)
                    }
                    _ => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Validates one entity on its own with the model, reporting paths relative to the entity
/// (`config.second`, `port`, `@entity`), and normalises a service (`url` expanded,
/// host lower-cased) the way the model reads it.
pub fn validate_entity(kind: EntityKind, doc: &mut Value) -> Result<(), ConfigError> {
    let fields = match kind {
        EntityKind::Services => [SERVICE_FIELDS, &["url"]].concat(),
        EntityKind::Routes => ROUTE_FIELDS.to_vec(),
        EntityKind::Plugins => PLUGIN_FIELDS.to_vec(),
    };
    let unknown: Vec<String> = doc
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| {
                    !fields.contains(&k.as_str())
                        && !v.is_null()
                        && !matches!(
                            k.as_str(),
                            "service" | "route" | "created_at" | "updated_at"
                        )
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    if !unknown.is_empty() {
        return Err(ConfigError {
            fields: unknown
                .into_iter()
                .map(|k| kit::schema::FieldError {
                    path: k,
                    message: "unknown field".into(),
                })
                .collect(),
        });
    }
    // A `url` stands for protocol, host, port and path: Kong's defaults must not mix in.
    let has_url = doc.get("url").is_some_and(|u| !u.is_null());
    if let (EntityKind::Services, true, Value::Object(map)) = (kind, has_url, &mut *doc) {
        for field in ["protocol", "host", "port", "path"] {
            map.remove(field);
        }
    }
    let mut alone = pick(doc, &fields);
    // Checked against the store instead: the one-entity document has nothing to refer to.
    alone.remove("id");
    let key = alone.get("name").cloned();
    let document = json!({ "_format_version": "3.0", kind.as_str(): [Value::Object(alone)] });
    let config = match model::declarative::from_value_checked(&document, &schemas::check) {
        Ok(config) => config,
        Err(e) => return Err(relative(kind, key.as_ref().and_then(Value::as_str), e)),
    };
    if let (EntityKind::Services, Some(service), Value::Object(map)) =
        (kind, config.services.first(), doc)
    {
        map.remove("url");
        map.insert("protocol".into(), json!(service.protocol.as_str()));
        map.insert("host".into(), json!(service.host));
        map.insert("port".into(), json!(service.port));
        map.insert("path".into(), json!(service.path));
    }
    Ok(())
}

/// `services.echo.port` → `port`; an error on the entity itself → `@entity` (Kong's name for
/// entity-level checks).
fn relative(kind: EntityKind, name: Option<&str>, error: ConfigError) -> ConfigError {
    let mut prefixes = vec![
        format!("{}.1", kind.as_str()),
        format!("{}.0", kind.as_str()),
    ];
    if let Some(name) = name {
        prefixes.insert(0, format!("{}.{name}", kind.as_str()));
    }
    ConfigError {
        fields: error
            .fields
            .into_iter()
            .map(|mut f| {
                for prefix in &prefixes {
                    if f.path == *prefix {
                        f.path = "@entity".into();
                        break;
                    }
                    if let Some(rest) = f.path.strip_prefix(&format!("{prefix}.")) {
                        f.path = rest.to_owned();
                        break;
                    }
                }
                f
            })
            .collect(),
    }
}

/// Replaces every entity of a control plane with those of a declarative document (already
/// validated as a whole): nested routes and plugins are flattened, references resolved to
/// ids, Kong's defaults filled in; given ids are kept.
pub fn import(
    tx: &Transaction<'_>,
    control_plane_id: &str,
    document: &Value,
    now: i64,
) -> Result<(), Rejection> {
    entities::clear(tx, control_plane_id)?;
    let mut services: HashMap<String, String> = HashMap::new();
    let mut routes: HashMap<String, String> = HashMap::new();
    let mut pending_plugins: Vec<(Value, Option<String>, Option<String>)> = Vec::new();
    let new_doc = |kind: EntityKind, given: &Value| -> Value {
        let mut doc = defaults(kind);
        let mut given = given.clone();
        if let Value::Object(map) = &mut given {
            for nested in ["routes", "plugins", "service", "route"] {
                map.remove(nested);
            }
        }
        merge(&mut doc, &given);
        if let Value::Object(map) = &mut doc {
            let id = given
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            map.insert("id".into(), json!(id));
            map.insert("created_at".into(), json!(now));
            map.insert("updated_at".into(), json!(now));
        }
        doc
    };
    let id_of = |doc: &Value| {
        doc.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let list = |doc: &Value, key: &str| {
        doc.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let ref_name = |v: &Value, key: &str| -> Option<String> {
        match v.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => m
                .get("name")
                .or_else(|| m.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    };
    let insert_route = |tx: &Transaction<'_>,
                        given: &Value,
                        service: Option<&str>,
                        routes: &mut HashMap<String, String>,
                        pending: &mut Vec<(Value, Option<String>, Option<String>)>|
     -> Result<(), Rejection> {
        let mut doc = new_doc(EntityKind::Routes, given);
        if let (Some(service), Value::Object(map)) = (service, &mut doc) {
            map.insert("service".into(), json!({ "id": service }));
        }
        let id = id_of(&doc);
        for key in [
            doc.get("name").and_then(Value::as_str).map(str::to_owned),
            Some(id.clone()),
        ]
        .into_iter()
        .flatten()
        {
            routes.insert(key, id.clone());
        }
        entities::insert(tx, control_plane_id, EntityKind::Routes, &doc)?;
        for plugin in list(given, "plugins") {
            pending.push((plugin, None, Some(id.clone())));
        }
        Ok(())
    };
    for given in list(document, "services") {
        let mut doc = new_doc(EntityKind::Services, &given);
        validate_entity(EntityKind::Services, &mut doc).map_err(Rejection::Schema)?;
        let id = id_of(&doc);
        for key in [
            doc.get("name").and_then(Value::as_str).map(str::to_owned),
            Some(id.clone()),
        ]
        .into_iter()
        .flatten()
        {
            services.insert(key, id.clone());
        }
        entities::insert(tx, control_plane_id, EntityKind::Services, &doc)?;
        for route in list(&given, "routes") {
            insert_route(tx, &route, Some(&id), &mut routes, &mut pending_plugins)?;
        }
        for plugin in list(&given, "plugins") {
            pending_plugins.push((plugin, Some(id.clone()), None));
        }
    }
    for given in list(document, "routes") {
        let service = ref_name(&given, "service").and_then(|s| services.get(&s).cloned());
        insert_route(
            tx,
            &given,
            service.as_deref(),
            &mut routes,
            &mut pending_plugins,
        )?;
    }
    for given in list(document, "plugins") {
        let service = ref_name(&given, "service").and_then(|s| services.get(&s).cloned());
        let route = ref_name(&given, "route").and_then(|r| routes.get(&r).cloned());
        pending_plugins.push((given, service, route));
    }
    for (given, service, route) in pending_plugins {
        let mut doc = new_doc(EntityKind::Plugins, &given);
        if let Value::Object(map) = &mut doc {
            if let Some(service) = service {
                map.insert("service".into(), json!({ "id": service }));
            }
            if let Some(route) = route {
                map.insert("route".into(), json!({ "id": route }));
            }
        }
        entities::insert(tx, control_plane_id, EntityKind::Plugins, &doc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_replaces_fields_and_merges_config_key_by_key() {
        let mut stored = json!({
            "name": "rate-limiting",
            "enabled": true,
            "service": { "id": "s1" },
            "tags": ["a", "b"],
            "config": {
                "second": 5,
                "policy": "local",
                "add": { "headers": ["x:1"], "querystring": ["q:1"] },
            },
        });
        merge(
            &mut stored,
            &json!({
                "enabled": false,
                "service": { "name": "other" },
                "tags": ["c"],
                "config": {
                    "second": 7,
                    "minute": null,
                    "add": { "headers": ["y:2"] },
                },
            }),
        );
        assert_eq!(
            stored,
            json!({
                "name": "rate-limiting",
                "enabled": false,
                // Not config: replaced whole, not merged.
                "service": { "name": "other" },
                "tags": ["c"],
                "config": {
                    "second": 7,
                    "policy": "local",
                    "minute": null,
                    // Nested records merge too; arrays are replaced.
                    "add": { "headers": ["y:2"], "querystring": ["q:1"] },
                },
            })
        );
        // A config that was not an object, or a patch that is not one, is replaced.
        let mut scalar = json!({ "config": null });
        merge(&mut scalar, &json!({ "config": { "a": 1 } }));
        assert_eq!(scalar, json!({ "config": { "a": 1 } }));
        let mut object = json!({ "config": { "a": 1 } });
        merge(&mut object, &json!({ "config": null }));
        assert_eq!(object, json!({ "config": null }));
        // Only objects merge.
        let mut kept = json!({ "a": 1 });
        merge(&mut kept, &json!([1]));
        assert_eq!(kept, json!({ "a": 1 }));
    }

    /// The README's limits, in a file the gateway reads as its platform plugins (the
    /// model's reading of it; the modules check the configs when the gateway starts).
    #[test]
    fn the_platform_limits_are_the_readmes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(PLATFORM_PLUGINS_FILE);
        write_platform_plugins(&path, None).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let plugins = model::parse_platform_plugins(&text, Some(&schemas::check))
            .unwrap_or_else(|e| panic!("{e}"));
        let limits: Vec<(String, Value)> = plugins
            .into_iter()
            .map(|p| (model::platform_instance_name(&p), p.config))
            .collect();
        assert_eq!(
            limits,
            [
                (
                    "wasmgate.platform.request-size-limiting".to_owned(),
                    json!({ "allowed_payload_size": 10, "size_unit": "megabytes" })
                ),
                (
                    "wasmgate.platform.rate-limiting".to_owned(),
                    json!({ "second": 100, "limit_by": "service", "policy": "local",
                            "hide_client_headers": true })
                ),
            ]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A group of replicas: one budget in Redis, the group's own (its instance name).
        let shared = SharedBudget {
            redis: "redis.internal:6380".parse().expect("address"),
            group_id: "g1".into(),
        };
        write_platform_plugins(&path, Some(&shared)).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let plugins = model::parse_platform_plugins(&text, Some(&schemas::check))
            .unwrap_or_else(|e| panic!("{e}"));
        let rate_limiting = plugins
            .into_iter()
            .map(|p| (model::platform_instance_name(&p), p.config))
            .nth(1)
            .expect("rate-limiting");
        assert_eq!(
            rate_limiting,
            (
                "wasmgate.platform.rate-limiting-g1".to_owned(),
                json!({ "second": 100, "limit_by": "service", "policy": "redis",
                        "redis": { "host": "redis.internal", "port": 6380 },
                        "hide_client_headers": true })
            )
        );
    }

    #[test]
    fn a_redis_address_is_host_and_port() {
        let redis: Redis = "127.0.0.1:6379".parse().expect("address");
        assert_eq!((redis.host.as_str(), redis.port), ("127.0.0.1", 6379));
        let redis: Redis = "[::1]:7000".parse().expect("address");
        assert_eq!((redis.host.as_str(), redis.port), ("::1", 7000));
        for bad in ["redis", ":6379", "redis:port", "redis:70000"] {
            assert!(bad.parse::<Redis>().is_err(), "{bad}");
        }
    }

    #[test]
    fn new_entities_start_from_kongs_defaults() {
        let service = defaults(EntityKind::Services);
        assert_eq!(
            (&service["protocol"], &service["port"], &service["retries"]),
            (&json!("http"), &json!(80), &json!(5))
        );
        for timeout in ["connect_timeout", "write_timeout", "read_timeout"] {
            assert_eq!(service[timeout], 60000, "{timeout}");
        }
        let route = defaults(EntityKind::Routes);
        assert_eq!(route["protocols"], json!(["http", "https"]));
        assert_eq!(route["strip_path"], true);
        assert_eq!(route["preserve_host"], false);
        assert_eq!(route["regex_priority"], 0);
        assert_eq!(route["https_redirect_status_code"], 426);
        let plugin = defaults(EntityKind::Plugins);
        assert_eq!(plugin["enabled"], true);
        assert_eq!(plugin["config"], json!({}));
        assert_eq!(
            plugin["protocols"],
            json!(["grpc", "grpcs", "http", "https"])
        );
        assert_eq!(plugin["consumer"], Value::Null);
    }
}
