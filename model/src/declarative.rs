//! Kong's declarative configuration (DB-less `kong.yml`, `_format_version: "3.0"`), read and
//! validated as a whole: every error names its entity (by name where it has one) and field,
//! with Kong's messages where Kong has them, and nothing is accepted until all of it is valid.

use std::collections::BTreeMap;

use kit::schema::{self, FieldError, Record};
use kit::ConfigError;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::entities::{
    AcmeChallenge, Certificate, Config, FailurePolicy, FilterChain, FilterEntry, ModuleSettings,
    Plugin, Protocol, Route, RoutePath, Scope, Service, DEFAULT_MEMORY_LIMIT_MB,
    HTTPS_REDIRECT_STATUS_CODES,
};
use crate::plugins::{self, PluginCheck};

/// Every problem of a declarative file.
pub type DeclarativeError = ConfigError;

const FORMAT_VERSIONS: [&str; 3] = ["3.0", "2.1", "1.1"];
/// Kong entities this data plane does not run; named so the error says so instead of
/// "unknown field".
const UNSUPPORTED: [&str; 9] = [
    "consumers",
    "consumer_groups",
    "upstreams",
    "targets",
    "ca_certificates",
    "vaults",
    "keys",
    "key_sets",
    "workspaces",
];
const DEFAULT_TIMEOUT_MS: i64 = 60_000;

/// Parses and validates a declarative file (YAML or JSON): its structure, references and
/// Kong's rules, every plugin known with a `config` record; not the plugins' own schemas
/// ([`parse_declarative_checked`]).
pub fn parse_declarative(text: &str) -> Result<Config, DeclarativeError> {
    parse(text, None)
}

/// [`parse_declarative`], also checking every plugin's `config` with `check`; its errors are
/// reported in place, under the plugin's path (`plugins.rate-limiting.config.second: ...`).
pub fn parse_declarative_checked(
    text: &str,
    check: PluginCheck<'_>,
) -> Result<Config, DeclarativeError> {
    parse(text, Some(check))
}

fn parse(text: &str, check: Option<PluginCheck<'_>>) -> Result<Config, DeclarativeError> {
    let document: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::single("declarative", format!("invalid YAML or JSON: {e}")))?;
    read(&document, check)
}

/// An operator's platform plugins (`gateway run --platform-plugins FILE`), YAML or JSON: one
/// key, `plugins`, a list of Kong plugin entities (`name`, `config`, and optionally
/// `instance_name`, `enabled`, `tags`, `wasmgate`) without a scope. Each one runs on every
/// proxied request, ahead of and apart from the configuration's own plugins: no precedence
/// joins the two, so nothing in a configuration replaces or lifts a platform plugin. Each
/// needs a name of its own ([`crate::entities::platform_instance_name`]): two instances of a
/// plugin need `instance_name`s. With `check`, every `config` is checked by it too.
pub fn parse_platform_plugins(
    text: &str,
    check: Option<PluginCheck<'_>>,
) -> Result<Vec<Plugin>, DeclarativeError> {
    let document: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::single("platform", format!("invalid YAML or JSON: {e}")))?;
    let raw = schema::read_record("", &document, |r| {
        if r.value("plugins").is_none() {
            r.error("plugins", "required field missing");
        }
        r.records("plugins", |r| {
            for scope in ["service", "route"] {
                if r.value(scope).is_some() {
                    r.error(
                        scope,
                        "a platform plugin applies to every route and service; it has no scope",
                    );
                }
            }
            read_plugin(r, false, check)
        })
    })?;
    let mut errors = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for plugin in &raw {
        let name = crate::entities::platform_instance_name(&plugin.plugin);
        if names.contains(&name) {
            errors.push(FieldError {
                path: plugin.path.clone(),
                message: format!(
                    "UNIQUE violation detected on '{{name=\"{name}\"}}': give each instance \
                     of a plugin its own instance_name"
                ),
            });
        }
        names.push(name);
    }
    if errors.is_empty() {
        Ok(raw.into_iter().map(|raw| raw.plugin).collect())
    } else {
        Err(ConfigError { fields: errors })
    }
}

/// What replaces a certificate's private key when a configuration is shown.
pub const REDACTED: &str = "<redacted>";

/// A declarative document as it may be shown (the gateway's admin `GET /config`): with any
/// certificate's `key`, the whole document as JSON with each key replaced by [`REDACTED`];
/// else the text as given, comments and all. Text that does not parse is not shown at all.
pub fn redact_private_keys(text: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    // Only the top level holds certificates: a document without the word has no key.
    if !text.contains("certificates") {
        return Cow::Borrowed(text);
    }
    let Ok(mut document) = serde_yaml_ng::from_str::<Value>(text) else {
        return Cow::Borrowed("");
    };
    let mut redacted = false;
    if let Some(certificates) = document
        .get_mut("certificates")
        .and_then(Value::as_array_mut)
    {
        for certificate in certificates {
            if let Some(key) = certificate.get_mut("key") {
                *key = Value::String(REDACTED.into());
                redacted = true;
            }
        }
    }
    if !redacted {
        return Cow::Borrowed(text);
    }
    Cow::Owned(serde_json::to_string_pretty(&document).unwrap_or_default())
}

/// Validates a declarative document already parsed into JSON, as [`parse_declarative`].
pub fn from_value(document: &Value) -> Result<Config, DeclarativeError> {
    read(document, None)
}

/// Validates a declarative document already parsed into JSON, as
/// [`parse_declarative_checked`].
pub fn from_value_checked(
    document: &Value,
    check: PluginCheck<'_>,
) -> Result<Config, DeclarativeError> {
    read(document, Some(check))
}

fn read(document: &Value, check: Option<PluginCheck<'_>>) -> Result<Config, DeclarativeError> {
    let raw = schema::read_record("", document, |r| read_document(r, check))?;
    raw.resolve()
}

struct RawService {
    path: String,
    service: Service,
    routes: Vec<RawRoute>,
    plugins: Vec<RawPlugin>,
    filter_chains: Vec<RawChain>,
}

struct RawRoute {
    path: String,
    route: Route,
    service_ref: Option<String>,
    plugins: Vec<RawPlugin>,
    filter_chains: Vec<RawChain>,
}

struct RawPlugin {
    path: String,
    plugin: Plugin,
    service_ref: Option<String>,
    route_ref: Option<String>,
}

struct RawChain {
    path: String,
    chain: FilterChain,
    service_ref: Option<String>,
    route_ref: Option<String>,
}

struct RawCertificate {
    path: String,
    /// `None` when the document gives none: one is made from the PEM ([`generated_id`]).
    id: Option<String>,
    certificate: Certificate,
    /// Each of `certificate.snis` with the path it was given at.
    sni_paths: Vec<String>,
}

/// A top-level `snis` entity: a name for the certificate it refers to.
struct RawSni {
    path: String,
    name: String,
    certificate_ref: Option<String>,
}

struct RawChallenge {
    path: String,
    challenge: AcmeChallenge,
}

struct RawDocument {
    services: Vec<RawService>,
    routes: Vec<RawRoute>,
    plugins: Vec<RawPlugin>,
    filter_chains: Vec<RawChain>,
    certificates: Vec<RawCertificate>,
    snis: Vec<RawSni>,
    acme_challenges: Vec<RawChallenge>,
}

fn read_document(r: &mut Record<'_>, check: Option<PluginCheck<'_>>) -> RawDocument {
    match r.string("_format_version") {
        None if !r.has_errors() => r.error("_format_version", "required field missing"),
        Some(v) if !FORMAT_VERSIONS.contains(&v) => r.error(
            "_format_version",
            format!("expected one of: {}", FORMAT_VERSIONS.join(", ")),
        ),
        _ => {}
    }
    r.boolean("_transform", true);
    r.string("_comment");
    r.record("_info", |_| {});
    for entity in UNSUPPORTED {
        if r.value(entity)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            r.error(entity, "not supported by wasmgate");
        }
    }
    RawDocument {
        services: r.records("services", |r| read_service(r, check)),
        routes: r.records("routes", |r| read_route(r, true, check)),
        plugins: r.records("plugins", |r| read_plugin(r, true, check)),
        filter_chains: r.records("filter_chains", |r| read_chain(r, true)),
        certificates: bounded_records(r, "certificates", MAX_CERTIFICATES, read_certificate),
        snis: r.records("snis", read_sni),
        acme_challenges: bounded_records(r, "acme_challenges", MAX_ACME_CHALLENGES, read_challenge),
    }
}

/// The most certificates a configuration holds: every one is loaded by every data plane
/// (and on Envoy is a listener filter chain of its own).
pub const MAX_CERTIFICATES: usize = 1000;
/// The most HTTP-01 challenges a configuration holds at once.
pub const MAX_ACME_CHALLENGES: usize = 1000;
/// The most bytes of a certificate chain's or a key's PEM.
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// RFC 1035's limit on a host name's length.
const MAX_SNI_BYTES: usize = 253;
const MAX_TOKEN_BYTES: usize = 128;
const MAX_KEY_AUTHORIZATION_BYTES: usize = 256;

/// [`Record::records`] with a bound on how many: past it, the list is refused as a whole
/// (Kong's `len_max`) and none of it read.
fn bounded_records<'a, T>(
    r: &mut Record<'a>,
    key: &'a str,
    max: usize,
    read: impl FnMut(&mut Record<'a>) -> T,
) -> Vec<T> {
    if r.value(key)
        .and_then(Value::as_array)
        .is_some_and(|items| items.len() > max)
    {
        r.error(key, format!("length must be at most {max}"));
        return Vec::new();
    }
    r.records(key, read)
}

/// A required PEM text of at most [`MAX_PEM_BYTES`].
fn pem_field<'a>(r: &mut Record<'a>, key: &'a str) -> Option<&'a str> {
    match r.string(key) {
        None if r.value(key).is_none() => {
            r.error(key, "required field missing");
            None
        }
        None => None,
        Some(pem) if pem.len() > MAX_PEM_BYTES => {
            r.error(key, format!("length must be at most {MAX_PEM_BYTES}"));
            None
        }
        Some(pem) => Some(pem),
    }
}

/// Kong's `certificates` entity: `cert` (the chain, leaf first) and `key` in PEM, with the
/// names (`snis`) it serves, given as strings or `{name: ...}` records.
fn read_certificate(r: &mut Record<'_>) -> RawCertificate {
    let (id, tags) = read_common_without_name(r);
    if let Some(id) = &id {
        if !valid_name(id) || id.len() > 128 {
            r.error(
                "id",
                "invalid value: at most 128 of the ascii alphanumerics and ., -, _, ~",
            );
        }
    }
    for unsupported in ["cert_alt", "key_alt"] {
        if r.value(unsupported).is_some() {
            r.error(unsupported, "not supported by wasmgate");
        }
    }
    let cert = pem_field(r, "cert").unwrap_or_default().to_owned();
    // A key pasted in with its chain would be shown and sent wherever certificates go (the
    // admin API, Envoy's listener): refused, whatever its kind.
    if cert.contains("PRIVATE KEY-----") {
        r.error(
            "cert",
            "invalid certificate: it holds a private key, which belongs in key",
        );
    } else if !cert.is_empty() {
        match rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(chain) if chain.is_empty() => r.error(
                "cert",
                "invalid certificate: no PEM CERTIFICATE block in it",
            ),
            Ok(_) => {}
            Err(e) => r.error("cert", format!("invalid certificate: {e}")),
        }
    }
    let key = pem_field(r, "key").unwrap_or_default().to_owned();
    if !key.is_empty() {
        if let Err(e) = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()) {
            // PKCS#8, PKCS#1 (RSA) or SEC1 (EC); the message never quotes the key.
            r.error("key", format!("invalid key: {e}"));
        }
    }
    let mut snis = Vec::new();
    let mut sni_paths = Vec::new();
    match r.value("snis") {
        None => {}
        Some(Value::Array(items)) => {
            let base = r.path_of("snis");
            for (i, item) in items.iter().enumerate() {
                let path = format!("{base}.{}", i + 1);
                let name = match item {
                    Value::String(name) => Some(name.as_str()),
                    Value::Object(map) => sni_record_name(r, &path, map),
                    _ => {
                        r.error_at(path.clone(), "expected a string or a record with a name");
                        None
                    }
                };
                if let Some(name) = name {
                    match normalize_sni(name) {
                        Ok(name) => {
                            snis.push(name);
                            sni_paths.push(path);
                        }
                        Err(e) => r.error_at(path, e),
                    }
                }
            }
        }
        Some(_) => r.error("snis", "expected an array"),
    }
    RawCertificate {
        path: r.path().to_owned(),
        certificate: Certificate {
            id: id.clone().unwrap_or_default(),
            cert,
            key,
            snis,
            tags,
        },
        id,
        sni_paths,
    }
}

/// The name of a nested `{name: ...}` SNI record; its other fields are Kong's bookkeeping.
fn sni_record_name<'a>(
    r: &Record<'_>,
    path: &str,
    map: &'a serde_json::Map<String, Value>,
) -> Option<&'a str> {
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "name" | "id" | "tags" | "created_at" | "updated_at"
        ) {
            r.error_at(format!("{path}.{key}"), "unknown field");
        }
    }
    match map.get("name") {
        Some(Value::String(name)) => Some(name),
        None | Some(Value::Null) => {
            r.error_at(format!("{path}.name"), "required field missing");
            None
        }
        Some(_) => {
            r.error_at(format!("{path}.name"), "expected a string");
            None
        }
    }
}

/// An SNI as the data planes match it: lowercase, a host name (no port, no address), with at
/// most a leading `*.` label as a wildcard.
fn normalize_sni(name: &str) -> Result<String, String> {
    if name.len() > MAX_SNI_BYTES {
        return Err(format!("length must be at most {MAX_SNI_BYTES}"));
    }
    let name = name.to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    if bare.contains('*') {
        return Err("invalid wildcard: must be placed at leftmost label".into());
    }
    if bare.parse::<std::net::IpAddr>().is_ok() || bare.starts_with('[') {
        return Err(format!("invalid value '{name}': must not be an IP address"));
    }
    if bare.contains(':') {
        return Err(format!("invalid value '{name}': must not have a port"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !bare.split('.').all(label_ok) {
        return Err(format!("invalid hostname: {name}"));
    }
    Ok(name)
}

/// Kong's top-level `snis` entity: `name` and `certificate`, by id (`{id: ...}` or a string).
fn read_sni(r: &mut Record<'_>) -> RawSni {
    let (_, _) = read_common_without_name(r);
    let name = match r.string("name") {
        Some(name) => match normalize_sni(name) {
            Ok(name) => name,
            Err(e) => {
                r.error("name", e);
                String::new()
            }
        },
        None => {
            if r.value("name").is_none() {
                r.error("name", "required field missing");
            }
            String::new()
        }
    };
    let certificate_ref = read_ref(r, "certificate");
    if certificate_ref.is_none() && r.value("certificate").is_none() {
        r.error("certificate", "required field missing");
    }
    RawSni {
        path: r.path().to_owned(),
        name,
        certificate_ref,
    }
}

/// base64url's alphabet (RFC 4648 section 5), without padding: what ACME tokens and
/// thumbprints are made of.
fn base64url(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// wasmgate's `acme_challenges`: an HTTP-01 token and the key authorization its
/// `/.well-known/acme-challenge/<token>` answers.
fn read_challenge(r: &mut Record<'_>) -> RawChallenge {
    let token = match r.string("token") {
        None => {
            if r.value("token").is_none() {
                r.error("token", "required field missing");
            }
            String::new()
        }
        Some(token) if token.len() > MAX_TOKEN_BYTES => {
            r.error("token", format!("length must be at most {MAX_TOKEN_BYTES}"));
            String::new()
        }
        Some(token) if !base64url(token) => {
            r.error(
                "token",
                "invalid value: base64url characters only (A-Z, a-z, 0-9, - and _)",
            );
            String::new()
        }
        Some(token) => token.to_owned(),
    };
    let key_authorization = match r.string("key_authorization") {
        None => {
            if r.value("key_authorization").is_none() {
                r.error("key_authorization", "required field missing");
            }
            String::new()
        }
        Some(text) if text.len() > MAX_KEY_AUTHORIZATION_BYTES => {
            r.error(
                "key_authorization",
                format!("length must be at most {MAX_KEY_AUTHORIZATION_BYTES}"),
            );
            String::new()
        }
        Some(text) => {
            let thumbprint = text.split_once('.').filter(|(of, _)| *of == token);
            if !token.is_empty() && !thumbprint.is_some_and(|(_, t)| base64url(t)) {
                r.error(
                    "key_authorization",
                    "invalid value: must be the token, '.', and the account key's base64url \
                     thumbprint",
                );
            }
            text.to_owned()
        }
    };
    RawChallenge {
        path: r.path().to_owned(),
        challenge: AcmeChallenge {
            token,
            key_authorization,
        },
    }
}

/// A certificate's id when the document gives none: the digest of its PEM, shaped as a UUID,
/// so the same certificate keeps its id (and its secret on Envoy) across pushes.
fn generated_id(cert: &str) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(cert.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn read_common(r: &mut Record<'_>) -> (Option<String>, Vec<String>) {
    r.string("id");
    r.integer("created_at");
    r.integer("updated_at");
    let name = r.string("name").map(str::to_owned);
    if let Some(name) = &name {
        if !valid_name(name) {
            r.error(
                "name",
                format!(
                    "invalid value '{name}': the only accepted ascii characters are \
                     alphanumerics or ., -, _, and ~"
                ),
            );
        }
    }
    let tags = r
        .string_array("tags")
        .into_iter()
        .map(str::to_owned)
        .collect();
    (name, tags)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'))
}

fn between(r: &Record<'_>, key: &str, value: i64, min: i64, max: i64) -> i64 {
    if value < min || value > max {
        r.error(key, format!("value should be between {min} and {max}"));
        return min.max(value.min(max));
    }
    value
}

/// Splits a service `url` into protocol, host, port and path.
fn parse_url(url: &str) -> Result<(Protocol, String, Option<u16>, Option<String>), String> {
    let (scheme, rest) = url.split_once("://").ok_or("missing scheme in url")?;
    let protocol = match scheme.to_ascii_lowercase().as_str() {
        "http" => Protocol::Http,
        "https" => Protocol::Https,
        "grpc" => Protocol::Grpc,
        "grpcs" => Protocol::Grpcs,
        other => {
            return Err(format!(
                "unsupported scheme '{other}' in url: expected http or https"
            ))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    // An IPv6 literal's colons are inside its brackets: only a colon after `]` starts a port.
    let (host, port) = if authority.starts_with('[') {
        match authority.split_once("]:") {
            Some((address, port)) => (&authority[..address.len() + 1], Some(port)),
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .map_err(|_| format!("invalid port '{port}' in url"))
        })
        .transpose()?;
    if host.is_empty() {
        return Err("missing host in url".into());
    }
    Ok((protocol, host.to_owned(), port, path))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
}

fn read_service(r: &mut Record<'_>, check: Option<PluginCheck<'_>>) -> RawService {
    let (name, tags) = read_common(r);
    let mut protocol = r.one_of(
        "protocol",
        &[
            ("http", Protocol::Http),
            ("https", Protocol::Https),
            ("grpc", Protocol::Grpc),
            ("grpcs", Protocol::Grpcs),
        ],
        Protocol::Http,
    );
    let mut host = r.string("host").map(str::to_owned);
    let mut port = r.integer("port");
    let mut path = r.string("path").map(str::to_owned);
    if let Some(url) = r.string("url") {
        match parse_url(url) {
            Ok((p, h, pt, pa)) => {
                protocol = p;
                host = Some(h);
                port = pt.map(i64::from).or(port);
                path = pa.or(path);
            }
            Err(e) => r.error("url", e),
        }
    }
    let host = match host {
        Some(h) if valid_host(&h) => h.to_ascii_lowercase(),
        Some(h) => {
            r.error("host", format!("invalid hostname: {h}"));
            String::new()
        }
        None => {
            r.error("host", "required field missing");
            String::new()
        }
    };
    let port = between(
        r,
        "port",
        port.unwrap_or(i64::from(protocol.default_port())),
        0,
        65535,
    ) as u16;
    if let Some(p) = &path {
        if !p.starts_with('/') {
            r.error("path", "should start with: /");
        }
    }
    let retries = r.integer("retries").unwrap_or(5);
    let retries = between(r, "retries", retries, 0, 32767) as u32;
    let mut timeout = |key: &'static str| {
        let v = r.integer(key).unwrap_or(DEFAULT_TIMEOUT_MS);
        between(r, key, v, 1, 2_147_483_646) as u64
    };
    let connect_timeout_ms = timeout("connect_timeout");
    let write_timeout_ms = timeout("write_timeout");
    let read_timeout_ms = timeout("read_timeout");
    let enabled = r.boolean("enabled", true);
    let tls_verify = r.boolean("tls_verify", false);
    let service = Service {
        name: name.unwrap_or_default(),
        protocol,
        host,
        port,
        path,
        retries,
        connect_timeout_ms,
        write_timeout_ms,
        read_timeout_ms,
        tls_verify,
        enabled,
        tags,
    };
    RawService {
        path: r.path().to_owned(),
        service,
        routes: r.records("routes", |r| read_route(r, false, check)),
        plugins: r.records("plugins", |r| read_plugin(r, false, check)),
        filter_chains: r.records("filter_chains", |r| read_chain(r, false)),
    }
}

/// A reference to another entity: its name, or `{name: ...}` / `{id: ...}`.
fn read_ref(r: &mut Record<'_>, key: &'static str) -> Option<String> {
    match r.value(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => match map
            .get("name")
            .or_else(|| map.get("id"))
            .and_then(Value::as_str)
        {
            Some(s) => Some(s.to_owned()),
            None => {
                r.error(key, "expected a reference by name or id");
                None
            }
        },
        _ => {
            r.error(key, "expected a reference by name or id");
            None
        }
    }
}

fn validate_wildcard(host: &str) -> Result<(), &'static str> {
    let stars = host.matches('*').count();
    if stars > 1 {
        return Err("invalid wildcard: must have at most one wildcard");
    }
    if stars == 1 && !(host.starts_with("*.") || host.ends_with(".*")) {
        return Err("invalid wildcard: must be placed at leftmost or rightmost label");
    }
    Ok(())
}

fn read_route(r: &mut Record<'_>, top_level: bool, check: Option<PluginCheck<'_>>) -> RawRoute {
    let (name, tags) = read_common(r);
    let service_ref = if top_level {
        read_ref(r, "service")
    } else {
        None
    };
    let protocols = r.string_array("protocols");
    for (i, p) in protocols.iter().enumerate() {
        if !matches!(*p, "http" | "https") {
            r.error_at(
                format!("{}.{}", r.path_of("protocols"), i + 1),
                "expected one of: http, https",
            );
        }
    }
    // Kong's default is both; an empty set is no protocol at all (Kong: `len_min = 1`).
    if r.value("protocols").is_some() && protocols.is_empty() {
        r.error("protocols", "length must be at least 1");
    }
    let https_only = protocols.contains(&"https") && !protocols.contains(&"http");
    let mut paths = Vec::new();
    for (i, p) in r.string_array("paths").into_iter().enumerate() {
        let at = format!("{}.{}", r.path_of("paths"), i + 1);
        if let Some(re) = p.strip_prefix('~') {
            match regex::Regex::new(re) {
                Ok(_) => paths.push(RoutePath::Regex(re.to_owned())),
                Err(e) => r.error_at(at, format!("invalid regex: '{re}' ({e})")),
            }
        } else if p.starts_with('/') {
            paths.push(RoutePath::Prefix(p.to_owned()));
        } else {
            r.error_at(at, "should start with: / (fixed path) or ~/ (regex path)");
        }
    }
    let mut hosts = Vec::new();
    for (i, h) in r.string_array("hosts").into_iter().enumerate() {
        match validate_wildcard(h) {
            Ok(()) => hosts.push(h.to_ascii_lowercase()),
            Err(e) => r.error_at(format!("{}.{}", r.path_of("hosts"), i + 1), e),
        }
    }
    let mut methods = Vec::new();
    for (i, m) in r.string_array("methods").into_iter().enumerate() {
        if !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase()) {
            methods.push(m.to_owned());
        } else {
            r.error_at(
                format!("{}.{}", r.path_of("methods"), i + 1),
                format!("invalid value: {m}"),
            );
        }
    }
    let headers = r.record("headers", read_route_headers);
    let strip_path = r.boolean("strip_path", true);
    let preserve_host = r.boolean("preserve_host", false);
    let regex_priority = r.integer("regex_priority").unwrap_or(0);
    // Kong 3's routers (`traditional_compatible`, its default, and `expressions`) join every
    // route's upstream path the v0 way, whatever `path_handling` says (v1 is deprecated):
    // accepted, and joined as v0 here too.
    r.one_of("path_handling", &[("v0", ()), ("v1", ())], ());
    let https_redirect_status_code = match r.integer("https_redirect_status_code") {
        None => HTTPS_REDIRECT_STATUS_CODES[0],
        Some(code) => match HTTPS_REDIRECT_STATUS_CODES
            .into_iter()
            .find(|known| i64::from(*known) == code)
        {
            Some(known) => known,
            None => {
                let known: Vec<String> = HTTPS_REDIRECT_STATUS_CODES
                    .iter()
                    .map(u16::to_string)
                    .collect();
                r.error(
                    "https_redirect_status_code",
                    format!("expected one of: {}", known.join(", ")),
                );
                HTTPS_REDIRECT_STATUS_CODES[0]
            }
        },
    };
    r.boolean("request_buffering", true);
    r.boolean("response_buffering", true);
    if paths.is_empty()
        && hosts.is_empty()
        && methods.is_empty()
        && headers.is_empty()
        && !r.has_errors()
    {
        r.error_at(
            r.path().to_owned(),
            "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'",
        );
    }
    let route = Route {
        name: name.unwrap_or_default(),
        service: None,
        paths,
        hosts,
        methods,
        headers,
        strip_path,
        preserve_host,
        regex_priority,
        https_only,
        https_redirect_status_code,
        tags,
    };
    RawRoute {
        path: r.path().to_owned(),
        route,
        service_ref,
        plugins: r.records("plugins", |r| read_plugin(r, false, check)),
        filter_chains: r.records("filter_chains", |r| read_chain(r, false)),
    }
}

/// Kong's route `headers`: a map of header name to accepted values (`Host` excluded).
fn read_route_headers<'a>(r: &mut Record<'a>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let keys: Vec<&'a str> = r.keys().collect();
    for key in keys {
        let values: Vec<String> = r.string_array(key).into_iter().map(str::to_owned).collect();
        if key.eq_ignore_ascii_case("host") {
            r.error(
                key,
                "cannot contain 'host' header, which must be specified in the 'hosts' attribute",
            );
            continue;
        }
        out.insert(key.to_ascii_lowercase(), values);
    }
    out
}

fn read_plugin(r: &mut Record<'_>, top_level: bool, check: Option<PluginCheck<'_>>) -> RawPlugin {
    let (id, tags) = read_common_without_name(r);
    let name = match r.string("name") {
        Some(name) => name.to_owned(),
        None => {
            r.error("name", "required field missing");
            String::new()
        }
    };
    let instance_name = r.string("instance_name").map(str::to_owned);
    let config = r
        .value("config")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let enabled = r.boolean("enabled", true);
    r.string_array("protocols");
    if r.value("consumer").is_some() {
        r.error("consumer", "consumers are not supported by wasmgate");
    }
    r.value("ordering");
    let wasmgate = read_module_settings(r);
    let (service_ref, route_ref) = if top_level {
        (read_ref(r, "service"), read_ref(r, "route"))
    } else {
        (None, None)
    };
    let path = r.path().to_owned();
    if !name.is_empty() {
        match plugins::find(&name) {
            None => r.error(
                "name",
                format!(
                    "plugin '{name}' not enabled; add it to the 'plugins' configuration property"
                ),
            ),
            Some(_) if !config.is_object() => r.error("config", "expected a record"),
            Some(_) => {
                if let Some(Err(e)) = check.map(|check| check(&name, &config)) {
                    for field in e.fields {
                        let at = if field.path.is_empty() {
                            path.clone()
                        } else {
                            format!("{path}.{}", field.path)
                        };
                        r.error_at(at, field.message);
                    }
                }
            }
        }
    }
    RawPlugin {
        path,
        plugin: Plugin {
            id,
            name,
            instance_name,
            config,
            enabled,
            scope: Scope::Global,
            tags,
            wasmgate,
        },
        service_ref,
        route_ref,
    }
}

/// The most a budget may be: a callback holds its worker (every connection on it) for as
/// long as its budget, so a larger one is a configuration mistake rather than a need.
const MAX_CALLBACK_BUDGET_MS: i64 = 10_000;
const MAX_STARTUP_BUDGET_MS: i64 = 60_000;
/// wasm32's whole address space.
const MAX_MEMORY_MB: i64 = 4096;

/// A plugin's or a filter's `wasmgate` block ([`ModuleSettings`]).
fn read_module_settings(r: &mut Record<'_>) -> ModuleSettings {
    r.record("wasmgate", |w| {
        let failure_policy = w.one_of(
            "failure_policy",
            &[
                ("fail_closed", FailurePolicy::FailClosed),
                ("fail_open", FailurePolicy::FailOpen),
            ],
            FailurePolicy::FailClosed,
        );
        let mut bounded = |key: &'static str, max: i64| {
            let value = w.integer(key)?;
            Some(between(w, key, value, 1, max) as u64)
        };
        let callback_budget_ms = bounded("callback_budget_ms", MAX_CALLBACK_BUDGET_MS);
        let startup_budget_ms = bounded("startup_budget_ms", MAX_STARTUP_BUDGET_MS);
        let memory_limit_mb = bounded("memory_limit_mb", MAX_MEMORY_MB);
        let memory_soft_limit_mb = bounded("memory_soft_limit_mb", MAX_MEMORY_MB);
        let limit = memory_limit_mb.unwrap_or(DEFAULT_MEMORY_LIMIT_MB);
        if memory_soft_limit_mb.is_some_and(|soft| soft >= limit) {
            // At or past the cap a callback fails before the soft limit could be acted on.
            w.error(
                "memory_soft_limit_mb",
                format!("must be less than memory_limit_mb ({limit})"),
            );
        }
        ModuleSettings {
            failure_policy,
            callback_budget_ms,
            startup_budget_ms,
            memory_limit_mb,
            memory_soft_limit_mb,
        }
    })
}

fn read_common_without_name(r: &mut Record<'_>) -> (Option<String>, Vec<String>) {
    let id = r.string("id").map(str::to_owned);
    r.integer("created_at");
    r.integer("updated_at");
    (
        id,
        r.string_array("tags")
            .into_iter()
            .map(str::to_owned)
            .collect(),
    )
}

fn read_chain(r: &mut Record<'_>, top_level: bool) -> RawChain {
    let (name, tags) = read_common(r);
    let enabled = r.boolean("enabled", true);
    let (service_ref, route_ref) = if top_level {
        (read_ref(r, "service"), read_ref(r, "route"))
    } else {
        (None, None)
    };
    let filters = r.records("filters", |f| {
        let name = match f.string("name") {
            Some(n) => n.to_owned(),
            None => {
                f.error("name", "required field missing");
                String::new()
            }
        };
        let config = match f.value("config") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let enabled = f.boolean("enabled", true);
        let mut named = |key| match f.string(key) {
            Some("") => {
                f.error(key, "length must be at least 1");
                name.clone()
            }
            Some(value) => value.to_owned(),
            None => name.clone(),
        };
        let root_id = named("root_id");
        let plugin_name = named("plugin_name");
        let allow_on_headers_stop_iteration = f.boolean("allow_on_headers_stop_iteration", false);
        let wasmgate = read_module_settings(f);
        FilterEntry {
            name,
            root_id,
            plugin_name,
            allow_on_headers_stop_iteration,
            config,
            enabled,
            wasmgate,
        }
    });
    if filters.is_empty() && !r.has_errors() {
        r.error("filters", "required field missing");
    }
    RawChain {
        path: r.path().to_owned(),
        chain: FilterChain {
            name,
            scope: Scope::Global,
            enabled,
            filters,
            tags,
        },
        service_ref,
        route_ref,
    }
}

impl RawDocument {
    /// Resolves references, applies nesting as scope and checks uniqueness.
    fn resolve(self) -> Result<Config, DeclarativeError> {
        let mut errors: Vec<FieldError> = Vec::new();
        let mut error = |path: &str, message: String| {
            errors.push(FieldError {
                path: path.to_owned(),
                message,
            })
        };
        let mut config = Config::default();
        let mut plugins: Vec<RawPlugin> = self.plugins;
        let mut chains: Vec<RawChain> = self.filter_chains;
        let mut routes: Vec<(Option<usize>, RawRoute)> = Vec::new();

        for raw in self.services {
            let index = config.services.len();
            if !raw.service.name.is_empty()
                && config.services.iter().any(|s| s.name == raw.service.name)
            {
                error(
                    &raw.path,
                    format!(
                        "UNIQUE violation detected on '{{name=\"{}\"}}'",
                        raw.service.name
                    ),
                );
            }
            for mut p in raw.plugins {
                p.plugin.scope = Scope::Service(index);
                plugins.push(p);
            }
            for mut c in raw.filter_chains {
                c.chain.scope = Scope::Service(index);
                chains.push(c);
            }
            routes.extend(raw.routes.into_iter().map(|r| (Some(index), r)));
            config.services.push(raw.service);
        }
        routes.extend(self.routes.into_iter().map(|r| (None, r)));
        for (parent, mut raw) in routes {
            let index = config.routes.len();
            raw.route.service = match (parent, &raw.service_ref) {
                (Some(p), _) => Some(p),
                (None, Some(reference)) => match service_index(&config, reference) {
                    Some(s) => Some(s),
                    None => {
                        error(
                            &format!("{}.service", raw.path),
                            format!("no service named '{reference}'"),
                        );
                        None
                    }
                },
                (None, None) => None,
            };
            if !raw.route.name.is_empty() && config.routes.iter().any(|r| r.name == raw.route.name)
            {
                error(
                    &raw.path,
                    format!(
                        "UNIQUE violation detected on '{{name=\"{}\"}}'",
                        raw.route.name
                    ),
                );
            }
            for mut p in raw.plugins {
                p.plugin.scope = Scope::Route(index);
                p.route_ref = None;
                p.service_ref = None;
                plugins.push(p);
            }
            for mut c in raw.filter_chains {
                c.chain.scope = Scope::Route(index);
                c.route_ref = None;
                c.service_ref = None;
                chains.push(c);
            }
            config.routes.push(raw.route);
        }

        for mut raw in plugins {
            raw.plugin.scope = resolve_scope(
                &config,
                &raw.path,
                raw.plugin.scope,
                &raw.service_ref,
                &raw.route_ref,
                &mut errors,
            );
            // Kong's two unique keys of a plugin: its name in its scope (whatever its
            // instance_name: Kong runs one instance per name, so a second one would silently
            // take or lose the first's place), and its instance_name.
            let duplicate = config
                .plugins
                .iter()
                .any(|p| p.name == raw.plugin.name && p.scope == raw.plugin.scope);
            if let Some(id) = &raw.plugin.id {
                // The id names the instance on the data planes: two with one id would be one.
                if config.plugins.iter().any(|p| p.id.as_ref() == Some(id)) {
                    errors.push(FieldError {
                        path: raw.path.clone(),
                        message: format!(
                            "uniqueness violation: 'plugins' entity with primary key set to \
                             '{id}' already declared"
                        ),
                    });
                }
            }
            if let Some(instance_name) = &raw.plugin.instance_name {
                if config
                    .plugins
                    .iter()
                    .any(|p| p.instance_name.as_ref() == Some(instance_name))
                {
                    errors.push(FieldError {
                        path: raw.path.clone(),
                        message: format!(
                            "UNIQUE violation detected on '{{instance_name=\"{instance_name}\"}}'"
                        ),
                    });
                }
            }
            if duplicate {
                errors.push(FieldError {
                    path: raw.path.clone(),
                    message: format!(
                        "UNIQUE violation detected on '{{name=\"{}\", {}}}'",
                        raw.plugin.name,
                        describe_scope(&config, raw.plugin.scope)
                    ),
                });
            }
            config.plugins.push(raw.plugin);
        }
        for mut raw in chains {
            raw.chain.scope = resolve_scope(
                &config,
                &raw.path,
                raw.chain.scope,
                &raw.service_ref,
                &raw.route_ref,
                &mut errors,
            );
            if raw.chain.scope == Scope::Global {
                errors.push(FieldError {
                    path: raw.path.clone(),
                    message: "a filter chain must be attached to a service or a route".into(),
                });
            }
            config.filter_chains.push(raw.chain);
        }
        resolve_certificates(
            &mut config,
            self.certificates,
            self.snis,
            self.acme_challenges,
            &mut errors,
        );
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { fields: errors })
        }
    }
}

/// Gives every certificate its id, joins the top-level `snis` to theirs, and checks that ids,
/// names and challenge tokens are each unique.
fn resolve_certificates(
    config: &mut Config,
    certificates: Vec<RawCertificate>,
    snis: Vec<RawSni>,
    challenges: Vec<RawChallenge>,
    errors: &mut Vec<FieldError>,
) {
    let mut error = |path: &str, message: String| {
        errors.push(FieldError {
            path: path.to_owned(),
            message,
        })
    };
    // Each name with the id of the certificate it was first given to.
    let mut names: Vec<(String, String)> = Vec::new();
    let mut claim = |name: &str, id: &str, path: &str, error: &mut dyn FnMut(&str, String)| {
        if let Some((_, owner)) = names.iter().find(|(taken, _)| taken == name) {
            error(
                path,
                format!("{name} already associated with existing certificate '{owner}'"),
            );
            false
        } else {
            names.push((name.to_owned(), id.to_owned()));
            true
        }
    };
    for raw in certificates {
        let mut certificate = raw.certificate;
        certificate.id = raw.id.unwrap_or_else(|| generated_id(&certificate.cert));
        if config.certificates.iter().any(|c| c.id == certificate.id) {
            error(
                &raw.path,
                format!(
                    "uniqueness violation: 'certificates' entity with primary key set to \
                     '{}' already declared",
                    certificate.id
                ),
            );
        }
        let mut kept = Vec::with_capacity(certificate.snis.len());
        for (name, path) in certificate.snis.into_iter().zip(&raw.sni_paths) {
            if claim(&name, &certificate.id, path, &mut error) {
                kept.push(name);
            }
        }
        certificate.snis = kept;
        config.certificates.push(certificate);
    }
    for raw in snis {
        let Some(reference) = raw.certificate_ref else {
            continue;
        };
        let Some(index) = config.certificates.iter().position(|c| c.id == reference) else {
            error(
                &format!("{}.certificate", raw.path),
                format!("no certificate with id '{reference}'"),
            );
            continue;
        };
        if raw.name.is_empty() {
            continue;
        }
        let id = config.certificates[index].id.clone();
        if claim(&raw.name, &id, &raw.path, &mut error) {
            config.certificates[index].snis.push(raw.name);
        }
    }
    for raw in challenges {
        let token = &raw.challenge.token;
        if !token.is_empty() && config.acme_challenges.iter().any(|c| &c.token == token) {
            error(
                &raw.path,
                format!("UNIQUE violation detected on '{{token=\"{token}\"}}'"),
            );
        }
        config.acme_challenges.push(raw.challenge);
    }
}

fn service_index(config: &Config, reference: &str) -> Option<usize> {
    config.services.iter().position(|s| s.name == reference)
}

fn route_index(config: &Config, reference: &str) -> Option<usize> {
    config.routes.iter().position(|r| r.name == reference)
}

/// The scope of a top-level plugin or chain from its `service`/`route` references (nested
/// ones already have theirs).
fn resolve_scope(
    config: &Config,
    path: &str,
    scope: Scope,
    service_ref: &Option<String>,
    route_ref: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> Scope {
    if scope != Scope::Global {
        return scope;
    }
    let mut lookup =
        |field: &str, reference: &Option<String>, find: fn(&Config, &str) -> Option<usize>| {
            let reference = reference.as_ref()?;
            let found = find(config, reference);
            if found.is_none() {
                errors.push(FieldError {
                    path: format!("{path}.{field}"),
                    message: format!("no {field} named '{reference}'"),
                });
            }
            found
        };
    let service = lookup("service", service_ref, service_index);
    let route = lookup("route", route_ref, route_index);
    match (route, service) {
        (Some(route), Some(service)) => Scope::RouteAndService { route, service },
        (Some(route), None) => Scope::Route(route),
        (None, Some(service)) => Scope::Service(service),
        (None, None) => Scope::Global,
    }
}

fn describe_scope(config: &Config, scope: Scope) -> String {
    let service = |i: usize| {
        config
            .services
            .get(i)
            .map_or("?", |s| s.name.as_str())
            .to_owned()
    };
    let route = |i: usize| {
        config
            .routes
            .get(i)
            .map_or("?", |r| r.name.as_str())
            .to_owned()
    };
    match scope {
        Scope::Global => "route=null, service=null".into(),
        Scope::Service(s) => format!("route=null, service=\"{}\"", service(s)),
        Scope::Route(r) => format!("route=\"{}\", service=null", route(r)),
        Scope::RouteAndService {
            route: r,
            service: s,
        } => {
            format!("route=\"{}\", service=\"{}\"", route(r), service(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://127.0.0.1:8080/base
    routes:
      - name: api
        paths: [/api]
    plugins:
      - name: request-size-limiting
        config: {allowed_payload_size: 10}
  - name: other
    host: other.internal
    port: 8443
    protocol: https
routes:
  - name: users
    service: other
    paths: ["~/users/(?<id>\\d+)$"]
    methods: [GET]
plugins:
  - name: request-size-limiting
    route: users
    config: {allowed_payload_size: 1, size_unit: kilobytes}
"#;

    #[test]
    fn a_complete_file_resolves_nesting_and_references() {
        let config = parse_declarative(SEED).unwrap();
        assert_eq!(config.services.len(), 2);
        let echo = &config.services[0];
        assert_eq!(
            (echo.host.as_str(), echo.port, echo.path.as_deref()),
            ("127.0.0.1", 8080, Some("/base"))
        );
        assert_eq!(echo.read_timeout_ms, 60_000);
        assert_eq!(config.services[1].authority(), "other.internal:8443");
        assert_eq!(config.routes[0].service, Some(0));
        assert_eq!(config.routes[1].service, Some(1));
        assert!(config.routes[0].strip_path);
        let scopes: Vec<Scope> = config.plugins.iter().map(|p| p.scope).collect();
        assert_eq!(scopes, vec![Scope::Route(1), Scope::Service(0)]);
        assert_eq!(
            config.plugins_for(Some(0))[0].config["allowed_payload_size"],
            10
        );
        assert_eq!(
            config.plugins_for(Some(1))[0].config["size_unit"],
            "kilobytes"
        );
    }

    /// Every error of `text`, the plugins' configs checked by their cores.
    fn errors(text: &str) -> String {
        crate::parse_declarative_checked(text, &schemas::check)
            .unwrap_err()
            .to_string()
    }

    /// The platform file: Kong plugin entities without a scope, each with a name of its own
    /// apart from the configuration's; its errors name the field, the plugins' own included.
    #[test]
    fn platform_plugins_are_unscoped_named_apart_and_checked() {
        let plugins = parse_platform_plugins(
            r#"
plugins:
  - name: request-size-limiting
    config: {allowed_payload_size: 10, size_unit: megabytes}
  - name: rate-limiting
    config: {second: 100, limit_by: service}
    wasmgate: {failure_policy: fail_closed}
  - name: rate-limiting
    instance_name: per-ip
    enabled: false
    config: {minute: 6000}
"#,
            Some(&schemas::check),
        )
        .unwrap();
        let named: Vec<(String, bool)> = plugins
            .iter()
            .map(|p| (crate::platform_instance_name(p), p.enabled))
            .collect();
        assert_eq!(
            named,
            [
                ("wasmgate.platform.request-size-limiting".into(), true),
                ("wasmgate.platform.rate-limiting".into(), true),
                ("wasmgate.platform.per-ip".into(), false),
            ]
        );
        assert!(plugins.iter().all(|p| p.scope == Scope::Global));
        assert_eq!(plugins[1].config["second"], 100);

        let refused = |text: &str| {
            parse_platform_plugins(text, Some(&schemas::check))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(
                "plugins:\n  - {name: rate-limiting, route: r, config: {second: x}}\n  \
                 - {name: key-auth}\n"
            ),
            "plugins.rate-limiting.route: a platform plugin applies to every route and \
             service; it has no scope; plugins.rate-limiting.config.second: expected a number; \
             plugins.key-auth.name: plugin 'key-auth' not enabled; add it to the 'plugins' \
             configuration property"
        );
        assert_eq!(
            refused(
                "plugins:\n  - {name: rate-limiting, config: {second: 1}}\n  \
                 - {name: rate-limiting, config: {minute: 1}}\n"
            ),
            "plugins.rate-limiting: UNIQUE violation detected on \
             '{name=\"wasmgate.platform.rate-limiting\"}': give each instance of a plugin its \
             own instance_name"
        );
        assert_eq!(
            refused("services: []\n"),
            "plugins: required field missing; services: unknown field"
        );
    }

    /// Without a check, a plugin's config is only required to be a record of a known plugin;
    /// its fields are the plugin's own schema's to judge.
    #[test]
    fn without_a_check_plugin_configs_are_checked_for_structure_only() {
        let text =
            "_format_version: \"3.0\"\nplugins:\n  - {name: rate-limiting, config: {second: x}}\n";
        parse_declarative(text).unwrap();
        assert_eq!(
            errors(text),
            "plugins.rate-limiting.config.second: expected a number"
        );
        let text = "_format_version: \"3.0\"\nplugins:\n  - {name: rate-limiting, config: [1]}\n  - {name: key-auth}\n";
        let expected = "plugins.rate-limiting.config: expected a record; plugins.key-auth.name: plugin 'key-auth' not enabled; add it to the 'plugins' configuration property";
        assert_eq!(parse_declarative(text).unwrap_err().to_string(), expected);
        assert_eq!(errors(text), expected);
    }

    /// Kong refuses cleartext requests on a route whose protocols leave out http: with 426
    /// unless the route names a redirect.
    #[test]
    fn a_route_without_http_is_https_only_with_its_redirect_code() {
        let config = parse_declarative(
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    host: h\n    routes:\n      - {name: both, paths: [/a]}\n      - {name: tls, paths: [/b], protocols: [https]}\n      - {name: moved, paths: [/c], protocols: [https], https_redirect_status_code: 308}\n      - {name: plain, paths: [/d], protocols: [http, https], https_redirect_status_code: 301}\n",
        )
        .unwrap();
        let routes: Vec<(bool, u16)> = config
            .routes
            .iter()
            .map(|r| (r.https_only, r.https_redirect_status_code))
            .collect();
        assert_eq!(
            routes,
            [(false, 426), (true, 426), (true, 308), (false, 301)]
        );
    }

    #[test]
    fn errors_name_the_entity_and_field() {
        let text = r#"
_format_version: "3.0"
services:
  - name: echo
    host: x
    port: 70000
    connect_timeout: 0
    routes:
      - name: bad
        paths: [api, "~/(unclosed"]
        methods: [get]
        hosts: ["a.*.com"]
plugins:
  - name: request-size-limiting
    service: echo
    config: {size_unit: gigabytes, extra: 1}
  - name: key-auth
"#;
        let message = errors(text);
        for expected in [
            "services.echo.port: value should be between 0 and 65535",
            "services.echo.connect_timeout: value should be between 1 and 2147483646",
            "services.echo.routes.bad.paths.1: should start with: / (fixed path) or ~/ (regex path)",
            "services.echo.routes.bad.paths.2: invalid regex",
            "services.echo.routes.bad.methods.1: invalid value: get",
            "services.echo.routes.bad.hosts.1: invalid wildcard: must be placed at leftmost or rightmost label",
            "plugins.request-size-limiting.config.size_unit: expected one of: megabytes, kilobytes, bytes",
            "plugins.request-size-limiting.config.extra: unknown field",
            "plugins.key-auth.name: plugin 'key-auth' not enabled; add it to the 'plugins' configuration property",
        ] {
            assert!(message.contains(expected), "missing {expected:?} in {message}");
        }
    }

    #[test]
    fn a_chain_filter_may_allow_on_headers_stop_iteration() {
        let config = parse_declarative(
            r#"
_format_version: "3.0"
services: [{name: s, host: s.test}]
filter_chains:
  - service: s
    filters:
      - name: plain
      - {name: holder, allow_on_headers_stop_iteration: true}
"#,
        )
        .unwrap();
        let allowed: Vec<bool> = config.filter_chains[0]
            .filters
            .iter()
            .map(|f| f.allow_on_headers_stop_iteration)
            .collect();
        assert_eq!(allowed, [false, true]);
        let message = errors(
            r#"
_format_version: "3.0"
services: [{name: s, host: s.test}]
filter_chains:
  - name: c
    service: s
    filters: [{name: holder, allow_on_headers_stop_iteration: "yes"}]
"#,
        );
        assert!(
            message.contains("filter_chains.c.filters.holder.allow_on_headers_stop_iteration: expected a boolean"),
            "{message}"
        );
    }

    #[test]
    fn a_chain_filter_may_name_its_root_id_and_plugin_name() {
        let config = parse_declarative(
            r#"
_format_version: "3.0"
services: [{name: s, host: s.test}]
filter_chains:
  - service: s
    filters:
      - name: plain
      - {name: sdk, root_id: sdk_root, plugin_name: my-plugin}
"#,
        )
        .unwrap();
        let names: Vec<(&str, &str)> = config.filter_chains[0]
            .filters
            .iter()
            .map(|f| (f.root_id.as_str(), f.plugin_name.as_str()))
            .collect();
        assert_eq!(names, [("plain", "plain"), ("sdk_root", "my-plugin")]);
        let message = errors(
            r#"
_format_version: "3.0"
services: [{name: s, host: s.test}]
filter_chains:
  - name: c
    service: s
    filters: [{name: sdk, root_id: "", plugin_name: 7}]
"#,
        );
        for expected in [
            "filter_chains.c.filters.sdk.root_id: length must be at least 1",
            "filter_chains.c.filters.sdk.plugin_name: expected a string",
        ] {
            assert!(
                message.contains(expected),
                "missing {expected:?} in {message}"
            );
        }
    }

    #[test]
    fn a_plugins_or_filters_wasmgate_block_sets_its_failure_policy_and_budgets() {
        let config = parse_declarative(
            r#"
_format_version: "3.0"
services: [{name: s, host: s.test, routes: [{name: r, paths: [/]}]}]
plugins:
  - name: rate-limiting
    config: {second: 1}
    wasmgate:
      failure_policy: fail_open
      callback_budget_ms: 5
      startup_budget_ms: 1000
      memory_limit_mb: 64
      memory_soft_limit_mb: 32
  - {name: request-size-limiting, route: r}
filter_chains:
  - route: r
    filters:
      - {name: a, wasmgate: {failure_policy: fail_closed, callback_budget_ms: 10000}}
      - {name: b}
"#,
        )
        .unwrap();
        assert_eq!(
            config.plugins[0].wasmgate,
            ModuleSettings {
                failure_policy: FailurePolicy::FailOpen,
                callback_budget_ms: Some(5),
                startup_budget_ms: Some(1000),
                memory_limit_mb: Some(64),
                memory_soft_limit_mb: Some(32),
            }
        );
        // Nothing set: the data plane's defaults, failing closed.
        assert_eq!(config.plugins[1].wasmgate, ModuleSettings::default());
        let filters = &config.filter_chains[0].filters;
        assert_eq!(filters[0].wasmgate.callback_budget_ms, Some(10_000));
        assert_eq!(
            filters[0].wasmgate.failure_policy,
            FailurePolicy::FailClosed
        );
        assert_eq!(filters[1].wasmgate, ModuleSettings::default());
        // The module's config is not touched: the block is the data plane's, not the module's.
        assert_eq!(config.plugins[0].config, serde_json::json!({"second": 1}));
        // A soft limit under the default cap needs no cap of its own.
        let soft = parse_declarative(
            "_format_version: \"3.0\"\nplugins: [{name: rate-limiting, config: {second: 1}, wasmgate: {memory_soft_limit_mb: 127}}]\n",
        )
        .unwrap();
        assert_eq!(soft.plugins[0].wasmgate.memory_soft_limit_mb, Some(127));
    }

    #[test]
    fn a_wasmgate_block_out_of_bounds_is_refused_naming_the_field() {
        let plugin = |block: &str| {
            errors(&format!(
                "_format_version: \"3.0\"\nplugins: [{{name: rate-limiting, config: {{second: 1}}, wasmgate: {block}}}]\n"
            ))
        };
        for (block, expected) in [
            (
                "{failure_policy: fail_reload}",
                "plugins.rate-limiting.wasmgate.failure_policy: expected one of: fail_closed, fail_open",
            ),
            (
                "{callback_budget_ms: 0}",
                "plugins.rate-limiting.wasmgate.callback_budget_ms: value should be between 1 and 10000",
            ),
            (
                "{callback_budget_ms: 10001}",
                "plugins.rate-limiting.wasmgate.callback_budget_ms: value should be between 1 and 10000",
            ),
            (
                "{startup_budget_ms: 60001}",
                "plugins.rate-limiting.wasmgate.startup_budget_ms: value should be between 1 and 60000",
            ),
            (
                "{memory_limit_mb: 4097}",
                "plugins.rate-limiting.wasmgate.memory_limit_mb: value should be between 1 and 4096",
            ),
            (
                "{memory_soft_limit_mb: 0}",
                "plugins.rate-limiting.wasmgate.memory_soft_limit_mb: value should be between 1 and 4096",
            ),
            (
                "{memory_limit_mb: 64, memory_soft_limit_mb: 64}",
                "plugins.rate-limiting.wasmgate.memory_soft_limit_mb: must be less than memory_limit_mb (64)",
            ),
            (
                "{memory_soft_limit_mb: 128}",
                "plugins.rate-limiting.wasmgate.memory_soft_limit_mb: must be less than memory_limit_mb (128)",
            ),
            (
                "{callback_budget_ms: \"5ms\"}",
                "plugins.rate-limiting.wasmgate.callback_budget_ms: expected an integer",
            ),
            (
                "{budget: 5}",
                "plugins.rate-limiting.wasmgate.budget: unknown field",
            ),
            ("fail_open", "plugins.rate-limiting.wasmgate: expected a record"),
        ] {
            let message = plugin(block);
            assert!(message.contains(expected), "{block}: missing {expected:?} in {message}");
        }
        let message = errors(
            "_format_version: \"3.0\"\nfilter_chains: [{name: c, filters: [{name: f, wasmgate: {failure_policy: open}}]}]\n",
        );
        assert!(
            message.contains(
                "filter_chains.c.filters.f.wasmgate.failure_policy: expected one of: fail_closed, fail_open"
            ),
            "{message}"
        );
    }

    #[test]
    fn references_and_uniqueness_are_checked() {
        let message = errors(
            r#"
_format_version: "3.0"
services: [{name: a, host: a}, {name: a, host: b}]
routes: [{name: r, service: nope, paths: [/]}]
plugins:
  - {name: request-size-limiting, route: missing}
  - {name: request-size-limiting, service: a}
  - {name: request-size-limiting, service: a}
  - {name: rate-limiting, instance_name: first, config: {second: 1}}
  - {name: rate-limiting, instance_name: second, config: {second: 1000}}
  - {name: request-transformer, instance_name: first}
  - {name: request-size-limiting, id: 6f2c1b3a-0d4e-4f5a-8b6c-7d8e9f0a1b2c}
  - {name: request-transformer, service: a, id: 6f2c1b3a-0d4e-4f5a-8b6c-7d8e9f0a1b2c}
"#,
        );
        for expected in [
            "plugins.request-transformer: uniqueness violation: 'plugins' entity with primary key set to '6f2c1b3a-0d4e-4f5a-8b6c-7d8e9f0a1b2c' already declared",
            "services.a: UNIQUE violation detected on '{name=\"a\"}'",
            "routes.r.service: no service named 'nope'",
            "plugins.request-size-limiting.route: no route named 'missing'",
            "UNIQUE violation detected on '{name=\"request-size-limiting\", route=null, service=\"a\"}'",
            // Another instance_name makes no second instance of a plugin in one scope (review
            // D1: the first global one would have taken the other's place).
            "plugins.rate-limiting: UNIQUE violation detected on '{name=\"rate-limiting\", route=null, service=null}'",
            "plugins.request-transformer: UNIQUE violation detected on '{instance_name=\"first\"}'",
        ] {
            assert!(message.contains(expected), "missing {expected:?} in {message}");
        }
    }

    #[test]
    fn the_format_version_is_required_and_other_entities_are_refused() {
        assert!(errors("services: []").contains("_format_version: required field missing"));
        assert!(
            errors("_format_version: \"3.0\"\nconsumers: [{username: x}]")
                .contains("consumers: not supported by wasmgate")
        );
        assert!(errors("_format_version: \"3.0\"\nroutes: [{name: r}]")
            .contains("routes.r: must set one of 'methods', 'hosts', 'headers', 'paths'"));
        assert!(errors("{").starts_with("declarative: invalid YAML or JSON"));
    }

    #[test]
    fn the_most_specific_plugin_instance_wins() {
        let config = parse_declarative(
            r#"
_format_version: "3.0"
services:
  - name: s
    host: s
    routes: [{name: r1, paths: [/one]}, {name: r2, paths: [/two]}]
plugins:
  - {name: request-size-limiting, config: {allowed_payload_size: 1}}
  - {name: request-size-limiting, service: s, config: {allowed_payload_size: 2}}
  - {name: request-size-limiting, route: r2, config: {allowed_payload_size: 3}}
  - {name: request-size-limiting, route: r2, service: s, enabled: false, config: {allowed_payload_size: 4}}
"#,
        )
        .unwrap();
        assert_eq!(
            config.plugins_for(None)[0].config["allowed_payload_size"],
            1
        );
        assert_eq!(
            config.plugins_for(Some(0))[0].config["allowed_payload_size"],
            2
        );
        // The route+service instance wins for r2 and is disabled: nothing runs.
        assert!(config.plugins_for(Some(1)).is_empty());
    }

    /// One document per rule, each wrong in one way, and the line that says so.
    #[test]
    fn each_rule_refuses_with_its_own_line() {
        let service = |extra: &str| {
            format!("_format_version: \"3.0\"\nservices:\n  - {{name: s, host: h{extra}}}\n")
        };
        for (text, expected) in [
            (
                "_format_version: \"2.0\"\n".to_owned(),
                "_format_version: expected one of: 3.0, 2.1, 1.1",
            ),
            (
                "services: []\n".to_owned(),
                "_format_version: required field missing",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: \"a b\", host: h}\n".to_owned(),
                "services.a b.name: invalid value 'a b': the only accepted ascii characters are alphanumerics or ., -, _, and ~",
            ),
            (service(", port: -1"), "services.s.port: value should be between 0 and 65535"),
            (service(", port: 65536"), "services.s.port: value should be between 0 and 65535"),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: \"h/x\"}\n".to_owned(),
                "services.s.host: invalid hostname: h/x",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h}\nroutes:\n  - {name: r, service: {name: nope}, paths: [/]}\n".to_owned(),
                "routes.r.service: no service named 'nope'",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, routes: [{name: r, paths: [/], protocols: [http, tcp]}]}\n".to_owned(),
                "services.s.routes.r.protocols.2: expected one of: http, https",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, routes: [{name: r, paths: [/], protocols: []}]}\n".to_owned(),
                "services.s.routes.r.protocols: length must be at least 1",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, routes: [{name: r, paths: [/], https_redirect_status_code: 303}]}\n".to_owned(),
                "services.s.routes.r.https_redirect_status_code: expected one of: 426, 301, 302, 307, 308",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, routes: [{name: r, paths: [/]}]}\nfilter_chains:\n  - {route: r, filters: []}\n".to_owned(),
                "filter_chains.1.filters: required field missing",
            ),
            (
                "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, routes: [{name: r, paths: [/a]}, {name: r, paths: [/b]}]}\n".to_owned(),
                "services.s.routes.r: UNIQUE violation detected on '{name=\"r\"}'",
            ),
        ] {
            let message = errors(&text);
            assert!(message.contains(expected), "{text}: missing {expected:?} in {message}");
        }
        // Tags are kept on every entity that has them, plugins included.
        let tagged = parse_declarative(
            "_format_version: \"3.0\"\nservices:\n  - {name: s, host: h, tags: [a], routes: [{name: r, paths: [/], tags: [b]}]}\nplugins:\n  - {name: rate-limiting, config: {second: 1}, tags: [c, d]}\n",
        )
        .unwrap();
        assert_eq!(tagged.services[0].tags, ["a"]);
        assert_eq!(tagged.routes[0].tags, ["b"]);
        assert_eq!(tagged.plugins[0].tags, ["c", "d"]);
        // A version of the wrong type is one error, not also a missing one.
        let message = errors("_format_version: 3.0\n");
        assert!(!message.contains("required field missing"), "{message}");
        assert!(message.contains("_format_version: "), "{message}");
        // The bounds themselves, an IPv6 url, a reference by {name: ...} and a route's
        // accepted protocols are fine.
        for text in [
            service(", port: 0"),
            service(", port: 65535"),
            "_format_version: \"3.0\"\nservices:\n  - {name: s, url: \"http://[::1]:8080/p\"}\n".to_owned(),
            "_format_version: \"3.0\"\nservices:\n  - {name: s, host: \"a-b.c_d\"}\nroutes:\n  - {name: r, service: {name: s}, paths: [/], protocols: [http, https]}\n".to_owned(),
        ] {
            parse_declarative(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        let v6 = parse_declarative(
            "_format_version: \"3.0\"\nservices:\n  - {name: s, url: \"http://[::1]:8080/p\"}\n",
        )
        .unwrap();
        assert_eq!(
            (v6.services[0].host.as_str(), v6.services[0].port),
            ("[::1]", 8080)
        );
        let bare = parse_declarative(
            "_format_version: \"3.0\"\nservices:\n  - {name: s, url: \"http://[::1]/p\"}\n",
        )
        .unwrap();
        assert_eq!(
            (bare.services[0].host.as_str(), bare.services[0].port),
            ("[::1]", 80)
        );
    }
}

#[cfg(test)]
mod certificate_tests {
    use super::*;

    /// PEM the model takes: it checks the PEM framing and base64, not the DER inside (the
    /// data planes load that, and refuse what their TLS library cannot).
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";

    fn certificate(extra: &str) -> String {
        format!(
            "_format_version: \"3.0\"\ncertificates:\n  - {{id: c1, cert: {CERT:?}, key: {KEY:?}{extra}}}\n"
        )
    }

    fn errors(text: &str) -> String {
        parse_declarative(text).unwrap_err().to_string()
    }

    #[test]
    fn certificates_take_snis_nested_as_strings_or_records_and_at_the_top_level() {
        let config = parse_declarative(&format!(
            "{}  - {{cert: {CERT:?}, key: {KEY:?}, snis: [Other.Example.Test]}}\nsnis:\n  - {{name: top.example.test, certificate: {{id: c1}}}}\n  - {{name: \"*.wild.example.test\", certificate: c1}}\n",
            certificate(", snis: [api.example.test, {name: \"*.Example.Test\"}], tags: [custom-domain]")
        ))
        .unwrap();
        let c = &config.certificates;
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].id.as_str(), c[0].cert.as_str(), c[0].key.as_str()),
            ("c1", CERT, KEY)
        );
        assert_eq!(
            c[0].snis,
            [
                "api.example.test",
                "*.example.test",
                "top.example.test",
                "*.wild.example.test"
            ]
        );
        assert_eq!(c[0].tags, ["custom-domain"]);
        assert_eq!(c[1].snis, ["other.example.test"]);
        // No id given: one from the PEM's digest, the same on every read.
        assert_eq!(c[1].id, generated_id(CERT));
        assert_eq!(c[1].id.len(), 36);
        let again = parse_declarative(&format!(
            "_format_version: \"3.0\"\ncertificates: [{{cert: {CERT:?}, key: {KEY:?}}}]\n"
        ))
        .unwrap();
        assert_eq!(again.certificates[0].id, c[1].id);
        // Kong's other PEM key forms load too.
        for (begin, end) in [
            ("RSA PRIVATE KEY", "RSA PRIVATE KEY"),
            ("EC PRIVATE KEY", "EC PRIVATE KEY"),
        ] {
            let key = format!("-----BEGIN {begin}-----\nMIIBAA==\n-----END {end}-----\n");
            parse_declarative(&format!(
                "_format_version: \"3.0\"\ncertificates: [{{cert: {CERT:?}, key: {key:?}}}]\n"
            ))
            .unwrap_or_else(|e| panic!("{begin}: {e}"));
        }
    }

    #[test]
    fn acme_challenges_are_read() {
        let config = parse_declarative(
            "_format_version: \"3.0\"\nacme_challenges:\n  - {token: LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0, key_authorization: LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI}\n",
        )
        .unwrap();
        assert_eq!(
            config.acme_challenges,
            [AcmeChallenge {
                token: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
                key_authorization: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI".into(),
            }]
        );
    }

    /// One document per rule, each wrong in one way, and the line that names the field.
    #[test]
    fn each_certificate_rule_refuses_with_its_own_line() {
        let long_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            "A".repeat(MAX_PEM_BYTES)
        );
        let challenge = |token: &str, authorization: &str| {
            format!(
                "_format_version: \"3.0\"\nacme_challenges:\n  - {{token: {token:?}, key_authorization: {authorization:?}}}\n"
            )
        };
        let label_63 = "a".repeat(63);
        let sni_254 = format!("{label_63}.{label_63}.{label_63}.{}", "b".repeat(62));
        for (text, expected) in [
            (
                "_format_version: \"3.0\"\ncertificates: [{id: c1}]\n".to_owned(),
                "certificates.1.cert: required field missing; certificates.1.key: required field missing",
            ),
            (
                certificate(", cert_alt: x, key_alt: y"),
                "certificates.1.cert_alt: not supported by wasmgate; certificates.1.key_alt: not supported by wasmgate",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: \"not pem\", key: {KEY:?}}}]\n"),
                "certificates.1.cert: invalid certificate: no PEM CERTIFICATE block in it",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: {KEY:?}, key: {KEY:?}}}]\n"),
                "certificates.1.cert: invalid certificate: it holds a private key, which belongs in key",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: \"-----BEGIN CERTIFICATE-----\\n!!\\n-----END CERTIFICATE-----\\n\", key: {KEY:?}}}]\n"),
                "certificates.1.cert: invalid certificate: ",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: {CERT:?}, key: {CERT:?}}}]\n"),
                "certificates.1.key: invalid key: ",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: {:?}, key: {KEY:?}}}]\n", format!("{CERT}{KEY}")),
                "certificates.1.cert: invalid certificate: it holds a private key, which belongs in key",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: {:?}, key: {KEY:?}}}]\n", format!("{CERT}-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAA==\n-----END ENCRYPTED PRIVATE KEY-----\n")),
                "certificates.1.cert: invalid certificate: it holds a private key, which belongs in key",
            ),
            (
                format!("_format_version: \"3.0\"\ncertificates: [{{cert: {long_pem:?}, key: {KEY:?}}}]\n"),
                "certificates.1.cert: length must be at most 65536",
            ),
            (certificate(", id: \"a b\""), "certificates.1.id: invalid value"),
            (certificate(", snis: [\"api.test:443\"]"), "certificates.1.snis.1: invalid value 'api.test:443': must not have a port"),
            (certificate(", snis: [ok.test, \"a.*.test\"]"), "certificates.1.snis.2: invalid wildcard: must be placed at leftmost label"),
            (certificate(", snis: [\"api.*\"]"), "certificates.1.snis.1: invalid wildcard: must be placed at leftmost label"),
            (certificate(", snis: [\"127.0.0.1\"]"), "certificates.1.snis.1: invalid value '127.0.0.1': must not be an IP address"),
            (certificate(", snis: [\"a..test\"]"), "certificates.1.snis.1: invalid hostname: a..test"),
            (certificate(", snis: [\"-a.test\"]"), "certificates.1.snis.1: invalid hostname: -a.test"),
            (certificate(&format!(", snis: [\"{sni_254}\"]")), "certificates.1.snis.1: length must be at most 253"),
            (certificate(", snis: [{nom: x}]"), "certificates.1.snis.1.nom: unknown field; certificates.1.snis.1.name: required field missing"),
            (certificate(", snis: [7]"), "certificates.1.snis.1: expected a string or a record with a name"),
            (certificate(", snis: a.test"), "certificates.1.snis: expected an array"),
            (
                format!("{}  - {{id: c2, cert: {CERT:?}, key: {KEY:?}, snis: [b.test, A.test]}}\n", certificate(", snis: [a.test]")),
                "certificates.2.snis.2: a.test already associated with existing certificate 'c1'",
            ),
            (
                format!("{}snis: [{{name: a.test, certificate: {{id: c1}}}}]\n", certificate(", snis: [a.test]")),
                "snis.a.test: a.test already associated with existing certificate 'c1'",
            ),
            (
                format!("{}snis: [{{name: b.test, certificate: {{id: c9}}}}]\n", certificate("")),
                "snis.b.test.certificate: no certificate with id 'c9'",
            ),
            (
                format!("{}snis: [{{name: c.test}}]\n", certificate("")),
                "snis.c.test.certificate: required field missing",
            ),
            (
                format!("{}snis: [{{name: \"b.test:8443\", certificate: c1}}]\n", certificate("")),
                "snis.b.test:8443.name: invalid value 'b.test:8443': must not have a port",
            ),
            (
                format!("{}  - {{id: c1, cert: {CERT:?}, key: {KEY:?}}}\n", certificate("")),
                "certificates.2: uniqueness violation: 'certificates' entity with primary key set to 'c1' already declared",
            ),
            (challenge("", "x"), "acme_challenges.1.token: invalid value: base64url characters only"),
            (challenge("a+b", "a+b.x"), "acme_challenges.1.token: invalid value: base64url characters only"),
            (challenge(&"t".repeat(129), "x"), "acme_challenges.1.token: length must be at most 128"),
            (challenge("tok", "other.thumb"), "acme_challenges.1.key_authorization: invalid value: must be the token, '.', and the account key's base64url thumbprint"),
            (challenge("tok", "tok."), "acme_challenges.1.key_authorization: invalid value"),
            (challenge("tok", "tok.a=b"), "acme_challenges.1.key_authorization: invalid value"),
            (challenge("tok", &format!("tok.{}", "x".repeat(253))), "acme_challenges.1.key_authorization: length must be at most 256"),
            (
                "_format_version: \"3.0\"\nacme_challenges: [{token: t, key_authorization: t.x}, {token: t, key_authorization: t.y}]\n".to_owned(),
                "acme_challenges.2: UNIQUE violation detected on '{token=\"t\"}'",
            ),
            (
                "_format_version: \"3.0\"\nacme_challenges: [{key_authorization: t.z, extra: 1}]\n".to_owned(),
                "acme_challenges.1.token: required field missing; acme_challenges.1.extra: unknown field",
            ),
        ] {
            let message = errors(&text);
            assert!(message.contains(expected), "{text}: missing {expected:?} in {message}");
        }
    }

    /// The bounds themselves are taken; one past each is refused.
    #[test]
    fn the_bounds_are_reached_and_not_passed() {
        let label_63 = "a".repeat(63);
        let sni_253 = format!("*.{label_63}.{label_63}.{label_63}.{}", "b".repeat(59));
        assert_eq!(sni_253.len(), 253);
        let pem_max = {
            let head = "-----BEGIN CERTIFICATE-----\n";
            let tail = "\n-----END CERTIFICATE-----\n";
            let body = MAX_PEM_BYTES - head.len() - tail.len();
            format!("{head}{}{tail}", "A".repeat(body / 4 * 4))
        };
        assert!(pem_max.len() <= MAX_PEM_BYTES && pem_max.len() > MAX_PEM_BYTES - 4);
        let token = "t".repeat(128);
        let authorization = format!("{token}.{}", "k".repeat(127));
        assert_eq!(authorization.len(), 256);
        let config = parse_declarative(&format!(
            "_format_version: \"3.0\"\ncertificates: [{{cert: {pem_max:?}, key: {KEY:?}, snis: [\"{sni_253}\"]}}]\nacme_challenges: [{{token: {token}, key_authorization: {authorization}}}]\n"
        ))
        .unwrap();
        assert_eq!(config.certificates[0].snis, [sni_253]);
        assert_eq!(config.acme_challenges[0].key_authorization, authorization);

        let many = |key: &str, n: usize, item: &dyn Fn(usize) -> String| {
            let items: Vec<String> = (0..n).map(item).collect();
            format!(
                "{{\"_format_version\": \"3.0\", \"{key}\": [{}]}}",
                items.join(",")
            )
        };
        let cert = |i: usize| format!("{{\"id\": \"c{i}\", \"cert\": {CERT:?}, \"key\": {KEY:?}}}");
        let challenge =
            |i: usize| format!("{{\"token\": \"t{i}\", \"key_authorization\": \"t{i}.k\"}}");
        let at_bound = parse_declarative(&many("certificates", MAX_CERTIFICATES, &cert)).unwrap();
        assert_eq!(at_bound.certificates.len(), MAX_CERTIFICATES);
        let at_bound =
            parse_declarative(&many("acme_challenges", MAX_ACME_CHALLENGES, &challenge)).unwrap();
        assert_eq!(at_bound.acme_challenges.len(), MAX_ACME_CHALLENGES);
        assert_eq!(
            errors(&many("certificates", MAX_CERTIFICATES + 1, &cert)),
            "certificates: length must be at most 1000"
        );
        assert_eq!(
            errors(&many(
                "acme_challenges",
                MAX_ACME_CHALLENGES + 1,
                &challenge
            )),
            "acme_challenges: length must be at most 1000"
        );
    }

    /// Shown, a document keeps everything but its private keys; without one it is the text.
    #[test]
    fn private_keys_are_redacted_for_showing() {
        let text = format!(
            "# comment\n{}acme_challenges: [{{token: t, key_authorization: t.k}}]\n",
            certificate(", snis: [a.test]")
        );
        let shown = redact_private_keys(&text);
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let shown: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(shown["certificates"][0]["key"], REDACTED);
        assert_eq!(shown["certificates"][0]["cert"], CERT);
        assert_eq!(shown["certificates"][0]["snis"][0], "a.test");
        assert_eq!(shown["acme_challenges"][0]["token"], "t");
        let plain = "# comment\n_format_version: \"3.0\"\nservices: []\n";
        assert_eq!(redact_private_keys(plain), plain);
        let no_key = "_format_version: \"3.0\"\ncertificates: []\n";
        assert_eq!(redact_private_keys(no_key), no_key);
    }

    /// Kong's certificates and snis were refused as unsupported; ca_certificates still are.
    #[test]
    fn ca_certificates_stay_unsupported() {
        assert!(
            errors("_format_version: \"3.0\"\nca_certificates: [{cert: x}]\n")
                .contains("ca_certificates: not supported by wasmgate")
        );
    }
}
