//! Which Redis a `rate-limiting` plugin with `policy: redis` counts in, read from its Kong
//! `config`, and the name of the gRPC cluster its module calls for it.
//!
//! The module reads the same fields with the same reader and derives the same cluster name
//! (`kit::redis`), so a data plane only has to serve each distinct Redis under its name:
//! `gateway` in-process, Envoy through a cluster `gateway envoy-bootstrap` adds.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

pub use kit::redis::{CLUSTER_PREFIX, DEFAULT_PORT, DEFAULT_TIMEOUT_MS};

/// One Redis, as a plugin's `config.redis` (or the legacy `config.redis_*`) names it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub server_name: Option<String>,
    /// Kong's `timeout`: connecting, sending and reading, in milliseconds.
    pub timeout_ms: u32,
    /// With `ssl_verify`: the CAs (PEM) that sign Redis's certificate, instead of the Web PKI
    /// roots: the data plane's (`gateway --upstream-ca-file`, as Kong's
    /// `lua_ssl_trusted_certificate`), not the plugin's.
    pub ca_pem: Option<Vec<u8>>,
}

// The password never reaches a log line.
impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("ssl", &self.ssl)
            .field("ssl_verify", &self.ssl_verify)
            .field("server_name", &self.server_name)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl RedisTarget {
    /// A Redis on `host:port`, database 0, without credentials.
    pub fn new(host: &str, port: u16) -> RedisTarget {
        RedisTarget {
            host: host.to_owned(),
            port,
            database: 0,
            username: None,
            password: None,
            ssl: false,
            ssl_verify: false,
            server_name: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ca_pem: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms.max(1)))
    }

    /// The Redis of a rate-limiting `config` whose policy is `redis` (Kong's `config.redis`,
    /// or its legacy `redis_*` fields, which win where set); `None` for any other policy or a
    /// config the module refuses.
    pub fn from_kong_config(config: &Value) -> Option<RedisTarget> {
        kit::redis::RedisConfig::from_plugin_config(config).map(|redis| RedisTarget {
            host: redis.host,
            port: redis.port,
            database: redis.database,
            username: redis.username,
            password: redis.password,
            ssl: redis.ssl,
            ssl_verify: redis.ssl_verify,
            server_name: redis.server_name,
            timeout_ms: redis.timeout_ms,
            ca_pem: None,
        })
    }

    /// The gRPC cluster the module calls for this Redis (`kit::redis::cluster_name`). Two
    /// plugins on one Redis share one service, so their passwords must agree ([`targets`]
    /// refuses them otherwise).
    pub fn cluster_name(&self) -> String {
        kit::redis::cluster_name(
            &self.host,
            self.port,
            self.database,
            self.username.as_deref(),
            self.ssl,
            self.ssl_verify,
            self.server_name.as_deref(),
        )
    }

    /// Whether two targets are served by one service: the same cluster and password.
    pub fn same_service(&self, other: &RedisTarget) -> bool {
        self.cluster_name() == other.cluster_name() && self.password == other.password
    }
}

/// Every distinct Redis the rate-limiting plugins of a Kong configuration name, from their
/// `config`s; an error names the first two plugins that name one Redis with different
/// passwords.
pub fn targets<'a>(
    configs: impl IntoIterator<Item = &'a Value>,
) -> Result<Vec<RedisTarget>, String> {
    let mut out: Vec<RedisTarget> = Vec::new();
    for config in configs {
        let Some(target) = RedisTarget::from_kong_config(config) else {
            continue;
        };
        match out
            .iter()
            .find(|t| t.cluster_name() == target.cluster_name())
        {
            Some(known) if known.password != target.password => {
                return Err(format!(
                    "config.redis.password: two rate-limiting plugins use redis {}:{} (database \
                     {}) with different passwords; one Redis is one rate-limit service",
                    target.host, target.port, target.database
                ));
            }
            Some(_) => {}
            None => out.push(target),
        }
    }
    Ok(out)
}

/// The Envoy clusters the rate-limiting plugins of `configs` need: one per Redis, named as
/// their module calls it, STATIC, HTTP/2 (gRPC over h2c) to the `wasmgate-ratelimit` at
/// `address`. That binary serves one Redis, so plugins naming two are refused, as is a
/// configuration with `policy: redis` and no address.
pub fn envoy_clusters<'a>(
    configs: impl IntoIterator<Item = &'a Value>,
    address: Option<SocketAddr>,
) -> Result<Vec<Value>, String> {
    let targets = targets(configs)?;
    let Some(first) = targets.first() else {
        return Ok(Vec::new());
    };
    let Some(address) = address else {
        return Err(format!(
            "rate-limiting with policy redis (redis {}:{}) needs the rate-limit service: run \
             wasmgate-ratelimit for that Redis and give its address",
            first.host, first.port
        ));
    };
    if targets.len() > 1 {
        return Err(format!(
            "rate-limiting plugins use {} different Redis servers; wasmgate-ratelimit serves one",
            targets.len()
        ));
    }
    let name = first.cluster_name();
    Ok(vec![json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": format!("{}s", f64::from(first.timeout_ms.max(1)) / 1000.0),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": address.ip().to_string(),
                "port_value": address.port(),
            }}}}]}],
        },
    })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kong_fields_and_legacy_fields_name_the_redis() {
        let t = RedisTarget::from_kong_config(&json!({
            "policy": "redis", "second": 5,
            "redis": {"host": "cache", "port": 6380, "database": 2, "password": "p",
                      "username": null, "timeout": 150, "ssl": false}
        }))
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.database, t.timeout_ms),
            ("cache", 6380, 2, 150)
        );
        assert_eq!(t.password.as_deref(), Some("p"));
        assert_eq!(t.username, None);
        // Kong's export: every legacy field with its default, the record's host null.
        let legacy = RedisTarget::from_kong_config(&json!({
            "policy": "redis", "redis_host": "old", "redis_port": 6379,
            "redis": {"host": null, "port": 6379, "timeout": 2000}
        }))
        .unwrap();
        assert_eq!((legacy.host.as_str(), legacy.port), ("old", 6379));
        assert_eq!(
            RedisTarget::from_kong_config(&json!({"policy": "local", "redis": {"host": "x"}})),
            None
        );
        assert_eq!(
            RedisTarget::from_kong_config(&json!({"policy": "redis"})),
            None
        );
        assert!(!format!("{t:?}").contains("\"p\""));
    }

    #[test]
    fn cluster_names_depend_on_the_connection_but_not_the_password() {
        let a = RedisTarget::new("cache", 6379);
        let mut b = a.clone();
        b.password = Some("secret".into());
        b.timeout_ms = 10;
        assert_eq!(a.cluster_name(), b.cluster_name());
        assert!(!a.same_service(&b));
        for change in [
            |t: &mut RedisTarget| t.port = 6380,
            |t: &mut RedisTarget| t.database = 1,
            |t: &mut RedisTarget| t.host = "cache2".into(),
            |t: &mut RedisTarget| t.username = Some("u".into()),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(a.cluster_name(), c.cluster_name());
        }
        assert!(a.cluster_name().starts_with(CLUSTER_PREFIX));
        assert_eq!(a.cluster_name().len(), CLUSTER_PREFIX.len() + 16);
    }

    #[test]
    fn envoy_gets_one_cluster_per_redis_at_the_services_address() {
        let redis = json!({"policy": "redis", "redis": {"host": "c", "timeout": 250}});
        let local = json!({"second": 5});
        let address: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(envoy_clusters([&local], None).unwrap().len(), 0);
        let clusters = envoy_clusters([&redis, &local, &redis], Some(address)).unwrap();
        assert_eq!(clusters.len(), 1);
        let name = RedisTarget::from_kong_config(&redis)
            .unwrap()
            .cluster_name();
        assert_eq!(clusters[0]["name"], name.as_str());
        assert_eq!(clusters[0]["connect_timeout"], "0.25s");
        let endpoint = &clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(
            endpoint["endpoint"]["address"]["socket_address"]["port_value"],
            8081
        );
        let missing = envoy_clusters([&redis], None).unwrap_err();
        assert!(
            missing.contains("needs the rate-limit service"),
            "{missing}"
        );
        let other = json!({"policy": "redis", "redis": {"host": "d"}});
        assert!(envoy_clusters([&redis, &other], Some(address)).is_err());
    }

    #[test]
    fn one_redis_with_two_passwords_is_refused() {
        let one = json!({"policy": "redis", "redis": {"host": "c", "password": "a"}});
        let two = json!({"policy": "redis", "redis": {"host": "c", "password": "b"}});
        let other = json!({"policy": "redis", "redis": {"host": "d"}});
        assert_eq!(targets([&one, &one, &other]).unwrap().len(), 2);
        let error = targets([&one, &two]).unwrap_err();
        assert!(error.starts_with("config.redis.password: "), "{error}");
    }
}
