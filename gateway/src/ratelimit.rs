//! The rate-limit service for `policy: redis`, in-process: a module's gRPC call to a cluster
//! named `wasmgate_ratelimit_<hash>` (`ratelimit::RedisTarget::cluster_name`) is answered by
//! the service for that Redis, without a network hop, so `gateway` needs nothing but a
//! reachable Redis. One service per distinct Redis of the running configuration, on a thread
//! of its own (`ratelimit::Services`), started by the first call.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::OnceLock;

use host::callout::GrpcCallout;
use ratelimit::{Failure, RedisTarget, Services};
use rustls_pki_types::CertificateDer;

use crate::snapshot::Snapshot;

static SERVICES: OnceLock<Result<Services, String>> = OnceLock::new();

/// Whether a module's call goes to the in-process service.
pub fn is_service(upstream: &str) -> bool {
    upstream.starts_with(ratelimit::target::CLUSTER_PREFIX)
}

/// Refuses a configuration two of whose rate-limiting plugins name one Redis with different
/// passwords (one Redis is one service, under one cluster name): the error names the second
/// plugin's `config.redis.password` where the file has it, with the modules' own errors.
pub fn check_config(
    text: &str,
    config: &model::Config,
    check: &dyn Fn(&str, &serde_json::Value) -> Result<(), model::ConfigError>,
) -> Result<(), model::ConfigError> {
    if config_targets(config).is_ok() {
        return Ok(());
    }
    let seen: RefCell<Vec<RedisTarget>> = RefCell::new(Vec::new());
    let shared = |name: &str, plugin: &serde_json::Value| {
        check(name, plugin)?;
        let Some(target) =
            RedisTarget::from_kong_config(plugin).filter(|_| name == "rate-limiting")
        else {
            return Ok(());
        };
        let mut seen = seen.borrow_mut();
        match seen
            .iter()
            .find(|t| t.cluster_name() == target.cluster_name())
        {
            Some(known) if known.password != target.password => Err(model::ConfigError::single(
                "config.redis.password",
                format!(
                    "another rate-limiting plugin uses redis {}:{} (database {}) with another \
                     password; one Redis is one rate-limit service",
                    target.host, target.port, target.database
                ),
            )),
            Some(_) => Ok(()),
            None => {
                seen.push(target);
                Ok(())
            }
        }
    };
    // Ok: only disabled plugins disagree, and the running configuration never calls them.
    model::parse_declarative_checked(text, &shared).map(|_| ())
}

/// The Redis targets of a configuration's enabled rate-limiting plugins with `policy: redis`.
fn config_targets(config: &model::Config) -> Result<Vec<RedisTarget>, String> {
    let configs = config
        .plugins
        .iter()
        .filter(|p| p.enabled && p.name == "rate-limiting")
        .map(|p| &p.config);
    ratelimit::target::targets(configs)
}

/// PEM of DER certificates.
fn pem(certificates: &[CertificateDer<'static>]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certificates {
        let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// The Redis targets a snapshot's modules call: its configuration's and the operator's
/// platform plugins' (`--platform-plugins`, read here from the configuration their module got).
/// With `ssl_verify`, Redis's certificate is checked against `--upstream-ca-file`'s CAs when
/// given (Kong's `lua_ssl_trusted_certificate`), else the Web PKI roots.
fn targets(snapshot: &Snapshot, trusted_cas: &[CertificateDer<'static>]) -> Vec<RedisTarget> {
    let platform: Vec<serde_json::Value> = snapshot
        .filters
        .platform
        .iter()
        .map(host::Plugin::config)
        .filter(|c| c.root_id == "rate-limiting")
        .filter_map(|c| serde_json::from_slice(&c.configuration).ok())
        .collect();
    let configs = snapshot
        .config
        .plugins
        .iter()
        .filter(|p| p.enabled && p.name == "rate-limiting")
        .map(|p| &p.config)
        .chain(&platform);
    let mut targets = ratelimit::target::targets(configs).unwrap_or_else(|e| {
        log::error!("rate-limiting: {e}");
        Vec::new()
    });
    if !trusted_cas.is_empty() {
        for target in targets.iter_mut().filter(|t| t.ssl && t.ssl_verify) {
            target.ca_pem = Some(pem(trusted_cas));
        }
    }
    targets
}

/// `gateway envoy-bootstrap`: the clusters the configuration's `policy: redis` plugins call
/// (`ratelimit::target::envoy_clusters`), to the `wasmgate-ratelimit` at `address`.
pub fn add_envoy_clusters(
    bootstrap: &mut serde_json::Value,
    config: &model::Config,
    address: Option<SocketAddr>,
) -> Result<(), String> {
    let configs = config
        .plugins
        .iter()
        .filter(|p| p.enabled && p.name == "rate-limiting")
        .map(|p| &p.config);
    let clusters = ratelimit::target::envoy_clusters(configs, address)
        .map_err(|e| format!("{e} (--ratelimit-address)"))?;
    if clusters.is_empty() {
        return Ok(());
    }
    match bootstrap
        .pointer_mut("/static_resources/clusters")
        .and_then(serde_json::Value::as_array_mut)
    {
        Some(all) => {
            all.extend(clusters);
            Ok(())
        }
        None => Err("the bootstrap has no static clusters".to_owned()),
    }
}

/// Answers a module's unary call to the service: the encoded response, or a gRPC status.
pub async fn answer(
    snapshot: &Snapshot,
    trusted_cas: &[CertificateDer<'static>],
    call: &GrpcCallout,
) -> Result<Vec<u8>, Failure> {
    let unavailable = |message: String| Failure {
        code: ratelimit::service::UNAVAILABLE,
        message,
    };
    let services = SERVICES
        .get_or_init(|| Services::start().map_err(|e| format!("starting its thread: {e}")))
        .as_ref()
        .map_err(|e| unavailable(format!("the rate-limit service: {e}")))?;
    let Some(message) = call.message.clone() else {
        return Err(Failure {
            code: ratelimit::service::UNIMPLEMENTED,
            message: "the rate-limit service takes unary calls".to_owned(),
        });
    };
    let service = services
        .find(snapshot.generation, &call.upstream, || {
            targets(snapshot, trusted_cas)
        })
        .ok_or_else(|| {
            unavailable(format!(
                "no rate-limiting plugin of this configuration uses the Redis of {}",
                call.upstream
            ))
        })?;
    services.call(service, message).await
}
