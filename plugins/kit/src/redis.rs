//! Kong's Redis settings of rate-limiting's `policy: redis`: the `config.redis` record and the
//! legacy `config.redis_*` shorthands, read with Kong's checks. The module reads them to know
//! which rate-limit service to call, and the service (`wasmgate-ratelimit`, linked by data
//! planes that never link a plugin) to know which Redis to count in: one reader, so the two
//! cannot disagree on a default or on which field wins.

use serde_json::Value;

use crate::schema::{self, Record};

/// Kong's defaults (`kong/tools/redis/schema.lua`).
pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_TIMEOUT_MS: u32 = 2_000;
/// Kong's `typedefs.timeout`.
const MAX_TIMEOUT_MS: i64 = 2_147_483_646;

/// Every cluster name of a rate-limit service starts so: a name the data plane serves itself,
/// never a Kong service. It starts with `w`, which no serialized `GrpcService` does, so Envoy
/// takes it as a cluster name.
pub const CLUSTER_PREFIX: &str = "wasmgate_ratelimit_";

/// Kong's `config.redis` (with the legacy `config.redis_*` fields applied): where the
/// counters live with `policy: redis`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub server_name: Option<String>,
    /// Milliseconds: the module's deadline for the rate-limit service's answer, and the
    /// service's for Redis's.
    pub timeout_ms: u32,
}

// The password never reaches a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// The gRPC cluster of the rate-limit service for this Redis: see [`cluster_name`].
    pub fn cluster_name(&self) -> String {
        cluster_name(
            &self.host,
            self.port,
            self.database,
            self.username.as_deref(),
            self.ssl,
            self.ssl_verify,
            self.server_name.as_deref(),
        )
    }

    /// The Redis of a rate-limiting `config` whose policy is `redis`; `None` for any other
    /// policy, or for a config the module would refuse. For data planes, which have the
    /// config as JSON and check it with the module before they run it; what is not Redis
    /// settings in it is the module's to read.
    pub fn from_plugin_config(config: &Value) -> Option<RedisConfig> {
        if config.get("policy").and_then(Value::as_str) != Some("redis") {
            return None;
        }
        schema::read_config(config, |r| {
            let redis = RedisFields::read(r).into_config(r);
            let rest: Vec<&str> = r.keys().collect();
            for key in rest {
                r.value(key);
            }
            redis
        })
        .ok()
        .flatten()
    }
}

/// [`CLUSTER_PREFIX`] and 16 hex digits of FNV-1a over what identifies the connection: host,
/// port, database, username, ssl, ssl_verify and server_name joined by NUL bytes (no field
/// holds one: Kong refuses them in hosts and names). Not the password or the timeout: a
/// name is visible in Envoy's stats, and two plugins on one Redis share one service.
pub fn cluster_name(
    host: &str,
    port: u16,
    database: i64,
    username: Option<&str>,
    ssl: bool,
    ssl_verify: bool,
    server_name: Option<&str>,
) -> String {
    let port = port.to_string();
    let database = database.to_string();
    let parts: [&[u8]; 7] = [
        host.as_bytes(),
        port.as_bytes(),
        database.as_bytes(),
        username.unwrap_or("").as_bytes(),
        if ssl { b"1" } else { b"0" },
        if ssl_verify { b"1" } else { b"0" },
        server_name.unwrap_or("").as_bytes(),
    ];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            feed(0);
        }
        part.iter().for_each(|&b| feed(b));
    }
    format!("{CLUSTER_PREFIX}{hash:016x}")
}

/// The Redis fields of `config.redis` or the legacy `config.redis_*`, as given.
#[derive(Default)]
pub struct RedisFields {
    host: Option<String>,
    port: Option<u16>,
    timeout: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    database: Option<i64>,
    ssl: Option<bool>,
    ssl_verify: Option<bool>,
    server_name: Option<String>,
}

impl RedisFields {
    /// Reads `config.redis` and the legacy `config.redis_*` of the config record `r`, with
    /// Kong's checks. Kong exports every field with its default, so they are checked whatever
    /// the policy.
    pub fn read(r: &mut Record<'_>) -> RedisFields {
        let mut fields = r.record("redis", |r| RedisFields::read_prefixed(r, ""));
        fields.apply(RedisFields::read_prefixed(r, "redis_"));
        fields
    }

    /// Reads the fields named `<prefix><field>` of `r`, with Kong's checks.
    fn read_prefixed<'a>(r: &mut Record<'a>, prefix: &str) -> RedisFields {
        // Field names are 'static: the prefix is one of two.
        let name = |field: &'static str| -> &'static str {
            if prefix.is_empty() {
                field
            } else {
                match field {
                    "host" => "redis_host",
                    "port" => "redis_port",
                    "timeout" => "redis_timeout",
                    "username" => "redis_username",
                    "password" => "redis_password",
                    "database" => "redis_database",
                    "ssl" => "redis_ssl",
                    "ssl_verify" => "redis_ssl_verify",
                    _ => "redis_server_name",
                }
            }
        };
        let string = |r: &mut Record<'a>, field: &'static str| {
            let key = name(field);
            let value = r.string(key)?;
            if value.is_empty() {
                r.error(key, "length must be at least 1");
            }
            Some(value.to_owned())
        };
        let host = string(r, "host");
        let username = string(r, "username");
        let password = string(r, "password");
        let server_name = string(r, "server_name");
        let port = r.integer(name("port")).and_then(|p| {
            let port = u16::try_from(p).ok();
            if port.is_none() {
                r.error(name("port"), "value should be between 0 and 65535");
            }
            port
        });
        let timeout = r.integer(name("timeout")).and_then(|t| {
            if (0..=MAX_TIMEOUT_MS).contains(&t) {
                u32::try_from(t).ok()
            } else {
                r.error(
                    name("timeout"),
                    format!("value should be between 0 and {MAX_TIMEOUT_MS}"),
                );
                None
            }
        });
        let database = r.integer(name("database"));
        let boolean = |r: &mut Record<'a>, field: &'static str| {
            r.value(name(field))?;
            Some(r.boolean(name(field), false))
        };
        let ssl = boolean(r, "ssl");
        let ssl_verify = boolean(r, "ssl_verify");
        RedisFields {
            host,
            port,
            timeout,
            username,
            password,
            database,
            ssl,
            ssl_verify,
            server_name,
        }
    }

    /// Kong's shorthand fields: a legacy field that is set replaces the record's.
    fn apply(&mut self, legacy: RedisFields) {
        fn over<T>(field: &mut Option<T>, legacy: Option<T>) {
            if legacy.is_some() {
                *field = legacy;
            }
        }
        over(&mut self.host, legacy.host);
        over(&mut self.port, legacy.port);
        over(&mut self.timeout, legacy.timeout);
        over(&mut self.username, legacy.username);
        over(&mut self.password, legacy.password);
        over(&mut self.database, legacy.database);
        over(&mut self.ssl, legacy.ssl);
        over(&mut self.ssl_verify, legacy.ssl_verify);
        over(&mut self.server_name, legacy.server_name);
    }

    /// The configuration of `policy: redis`, with Kong's entity check (`config.redis.host`
    /// is required).
    pub fn into_config(self, r: &mut Record<'_>) -> Option<RedisConfig> {
        let redis = r.path_of("redis");
        let Some(host) = self.host else {
            // Kong's entity checks run only on fields that passed their own.
            if !r.has_errors() {
                r.error_at(format!("{redis}.host"), "required field missing");
            }
            return None;
        };
        let ssl = self.ssl.unwrap_or(false);
        Some(RedisConfig {
            port: self.port.unwrap_or(DEFAULT_PORT),
            database: self.database.unwrap_or(0),
            username: self.username,
            password: self.password,
            ssl,
            ssl_verify: self.ssl_verify.unwrap_or(false),
            server_name: self.server_name,
            timeout_ms: self.timeout.unwrap_or(DEFAULT_TIMEOUT_MS),
            host,
        })
    }
}
