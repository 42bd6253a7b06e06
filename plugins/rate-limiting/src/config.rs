//! The plugin's configuration, with Kong OSS 3.9's fields, defaults and messages, plus
//! `window_type` (from Kong's rate-limiting-advanced) and `max_identifiers` (wasmgate's memory
//! bound).

use kit::redis::{RedisConfig, RedisFields};
use kit::schema::{self, ConfigError, Record};

use crate::number::one_decimal;
use crate::Period;

/// Whose requests share a budget (`limit_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header,
    Path,
}

impl LimitBy {
    /// Kong OSS's `one_of` (`consumer-group` is Kong Enterprise's).
    const CHOICES: [(&'static str, LimitBy); 6] = [
        ("consumer", LimitBy::Consumer),
        ("credential", LimitBy::Credential),
        ("ip", LimitBy::Ip),
        ("service", LimitBy::Service),
        ("header", LimitBy::Header),
        ("path", LimitBy::Path),
    ];
}

/// How a window counts (`window_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowType {
    /// Kong OSS: the count of the current calendar window.
    Fixed,
    /// Kong rate-limiting-advanced: the current count plus the previous window's count weighted
    /// by how much of the previous window still overlaps the last window length.
    Sliding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Local,
    Cluster,
    Redis,
}

pub const DEFAULT_ERROR_MESSAGE: &str = "API rate limit exceeded";
/// Distinct identifiers that get a counter of their own, per plugin instance.
pub const DEFAULT_MAX_IDENTIFIERS: u64 = 10_000;
/// The largest `max_identifiers`: 125,000 bucket keys, at most 175 MB of shared data with all
/// six windows configured (see `store`); beyond that a typo would be an out-of-memory.
pub const MAX_MAX_IDENTIFIERS: u64 = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The configured limits, shortest period first.
    pub limits: Vec<(Period, f64)>,
    pub limit_by: LimitBy,
    pub header_name: Option<String>,
    pub path: Option<String>,
    pub fault_tolerant: bool,
    pub hide_client_headers: bool,
    /// Kong's `number`, `gt = 0`: only [`Config::rejection_status`] tells whether it can be
    /// answered.
    pub error_code: f64,
    pub error_message: String,
    pub window_type: WindowType,
    pub max_identifiers: u64,
    /// `policy: redis`: the Redis the rate-limit service counts in. `None`: `policy: local`.
    pub redis: Option<RedisConfig>,
}

impl Config {
    /// A config with these limits and every other field at its default.
    pub fn with_limits(limits: &[(Period, f64)]) -> Config {
        Config {
            limits: limits.to_vec(),
            limit_by: LimitBy::Consumer,
            header_name: None,
            path: None,
            fault_tolerant: true,
            hide_client_headers: false,
            error_code: 429.0,
            error_message: DEFAULT_ERROR_MESSAGE.to_owned(),
            window_type: WindowType::Fixed,
            max_identifiers: DEFAULT_MAX_IDENTIFIERS,
            redis: None,
        }
    }

    /// The limit of a period, when configured.
    pub fn limit(&self, period: Period) -> Option<f64> {
        self.limits
            .iter()
            .find(|(p, _)| *p == period)
            .map(|(_, l)| *l)
    }

    /// The status of a rejection: `kong.response.error` accepts 400 to 599 and nginx
    /// truncates a fractional status. `None`: Kong's runloop answers 500 instead.
    pub fn rejection_status(&self) -> Option<u16> {
        (400.0..=599.0)
            .contains(&self.error_code)
            .then_some(self.error_code as u16)
    }

    /// Parses Kong's JSON `config`.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let document = schema::parse_document(bytes)?;
        schema::read_config(&document, read)
    }
}

fn read(r: &mut Record<'_>) -> Config {
    let mut limits = Vec::new();
    for period in Period::ALL {
        if let Some(limit) = r.number(period.name()) {
            if limit > 0.0 && limit.is_finite() {
                limits.push((period, limit));
            } else {
                r.error(period.name(), "value must be greater than 0");
            }
        }
    }
    let limit_by = r.one_of("limit_by", &LimitBy::CHOICES, LimitBy::Consumer);
    let header_name = kong_string(r, "header_name", validate_header_name);
    let path = kong_string(r, "path", validate_path);
    let policy = r.one_of(
        "policy",
        &[
            ("local", Policy::Local),
            ("cluster", Policy::Cluster),
            ("redis", Policy::Redis),
        ],
        Policy::Local,
    );
    let fault_tolerant = r.boolean("fault_tolerant", true);
    let hide_client_headers = r.boolean("hide_client_headers", false);
    let error_code = match r.number("error_code") {
        None => 429.0,
        Some(code) if code > 0.0 => code,
        Some(_) => {
            r.error("error_code", "value must be greater than 0");
            429.0
        }
    };
    let error_message = kong_string(r, "error_message", |_| Ok(()))
        .unwrap_or_else(|| DEFAULT_ERROR_MESSAGE.to_owned());
    let sync_rate = r.number("sync_rate").unwrap_or(-1.0);
    // Kong exports every field with its default, the Redis settings included: they are checked
    // whatever the policy, and only used by the redis policy.
    let redis = RedisFields::read(r);
    let window_type = r.one_of(
        "window_type",
        &[
            ("fixed", WindowType::Fixed),
            ("sliding", WindowType::Sliding),
        ],
        WindowType::Fixed,
    );
    let max_identifiers = match r.integer("max_identifiers") {
        None => DEFAULT_MAX_IDENTIFIERS,
        Some(n) if (1..=MAX_MAX_IDENTIFIERS as i64).contains(&n) => n as u64,
        Some(_) => {
            r.error(
                "max_identifiers",
                format!("value should be between 1 and {MAX_MAX_IDENTIFIERS}"),
            );
            DEFAULT_MAX_IDENTIFIERS
        }
    };

    let redis = match policy {
        Policy::Local => None,
        Policy::Cluster => {
            r.error(
                "policy",
                "policy 'cluster' is not supported by wasmgate: there is no Kong database; use \
                 'redis' to share counters between data planes, or 'local'",
            );
            None
        }
        Policy::Redis => redis.into_config(r),
    };
    // Kong's entity checks and custom validator, in Kong's order.
    if limits.is_empty() && !r.has_errors() {
        r.error_at(
            "@entity".to_owned(),
            "at least one of these fields must be non-empty: 'config.second', \
             'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'",
        );
    }
    if limit_by == LimitBy::Header && header_name.is_none() {
        r.error("header_name", "required field missing");
    }
    if limit_by == LimitBy::Path && path.is_none() {
        r.error("path", "required field missing");
    }
    if !r.has_errors() {
        if let Some(message) = periods_order_error(&limits) {
            r.error_at(r.path().to_owned(), message);
        } else if sync_rate != -1.0 && policy != Policy::Redis {
            r.error_at(
                r.path().to_owned(),
                "sync_rate can only be used with the redis policy",
            );
        }
    }

    Config {
        limits,
        limit_by,
        header_name,
        path,
        fault_tolerant,
        hide_client_headers,
        error_code,
        error_message,
        window_type,
        max_identifiers,
        redis,
    }
}

/// A Kong `string` field: empty strings are refused (`len_min` is 1 unless a field says
/// otherwise, `kong/db/schema/init.lua`) before the field's own validator runs.
fn kong_string<'a>(
    r: &mut Record<'a>,
    key: &'a str,
    validate: impl FnOnce(&str) -> Result<(), String>,
) -> Option<String> {
    let value = r.string(key)?;
    let checked = if value.is_empty() {
        Err("length must be at least 1".to_owned())
    } else {
        validate(value)
    };
    if let Err(message) = checked {
        r.error(key, message);
    }
    Some(value.to_owned())
}

/// Kong's `validate_periods_order`: the first longer period whose limit is lower than a
/// shorter one's.
fn periods_order_error(limits: &[(Period, f64)]) -> Option<String> {
    for (i, (lower, v1)) in limits.iter().enumerate() {
        for (upper, v2) in &limits[i + 1..] {
            if v2 < v1 {
                return Some(format!(
                    "The limit for {}({}) cannot be lower than the limit for {}({})",
                    upper.name(),
                    one_decimal(*v2),
                    lower.name(),
                    one_decimal(*v1)
                ));
            }
        }
    }
    None
}

/// Kong's `validate_header_name`.
fn validate_header_name(name: &str) -> Result<(), String> {
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(format!(
            "bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        ))
    }
}

/// Kong's `typedefs.path`: starts with `/`, no empty segment, RFC 3986 characters, valid
/// percent-encoding.
fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("should start with: /".into());
    }
    if path.as_bytes().windows(2).any(|w| w == b"//") {
        return Err("must not have empty segments".into());
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b".-_~/%:@!$&'()*+,;=".contains(&b);
    if !path.bytes().all(allowed) {
        return Err(format!(
            "invalid path: '{path}' (characters outside of the reserved list of RFC 3986 found)"
        ));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let valid = bytes.len() >= i + 3
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !valid {
                // Only ASCII gets here (checked above), so any byte index is a char boundary.
                let end = (i + 3).min(bytes.len());
                return Err(format!(
                    "invalid url-encoded value: '{}'",
                    path.get(i..end).unwrap_or("%")
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(input: &str) -> String {
        Config::parse(input.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_kongs() {
        let config = Config::parse(br#"{"second": 5}"#).unwrap();
        assert_eq!(config, Config::with_limits(&[(Period::Second, 5.0)]));
        assert_eq!(config.limit_by, LimitBy::Consumer);
        assert!(config.fault_tolerant);
        assert!(!config.hide_client_headers);
        assert_eq!(config.error_code, 429.0);
        assert_eq!(config.rejection_status(), Some(429));
        assert_eq!(config.error_message, "API rate limit exceeded");
        assert_eq!(config.window_type, WindowType::Fixed);
        assert_eq!(config.max_identifiers, 10_000);
    }

    #[test]
    fn every_field_is_read() {
        let config = Config::parse(
            br#"{"second": 1.5, "minute": 60, "year": 1e6, "limit_by": "header",
                 "header_name": "X-Api-Key", "policy": "local", "fault_tolerant": false,
                 "hide_client_headers": true, "error_code": 503, "error_message": "slow down",
                 "window_type": "sliding", "max_identifiers": 5, "sync_rate": -1,
                 "redis": {"host": null, "port": 6379, "timeout": 2000}, "redis_port": 6379}"#,
        )
        .unwrap();
        assert_eq!(
            config.limits,
            vec![
                (Period::Second, 1.5),
                (Period::Minute, 60.0),
                (Period::Year, 1e6)
            ]
        );
        assert_eq!(config.limit_by, LimitBy::Header);
        assert_eq!(config.header_name.as_deref(), Some("X-Api-Key"));
        assert!(!config.fault_tolerant);
        assert!(config.hide_client_headers);
        assert_eq!(
            (config.error_code, config.error_message.as_str()),
            (503.0, "slow down")
        );
        assert_eq!(config.window_type, WindowType::Sliding);
        assert_eq!(config.max_identifiers, 5);
        assert_eq!(config.limit(Period::Minute), Some(60.0));
        assert_eq!(config.limit(Period::Hour), None);
    }

    #[test]
    fn at_least_one_limit_is_required() {
        let message = "@entity: at least one of these fields must be non-empty: \
                       'config.second', 'config.minute', 'config.hour', 'config.day', \
                       'config.month', 'config.year'";
        assert_eq!(error("{}"), message);
        assert_eq!(error(""), message);
        assert_eq!(error(r#"{"limit_by": "ip"}"#), message);
    }

    #[test]
    fn longer_windows_may_not_have_lower_limits() {
        assert_eq!(
            error(r#"{"second": 20, "hour": 10}"#),
            "config: The limit for hour(10.0) cannot be lower than the limit for second(20.0)"
        );
        assert_eq!(
            error(
                r#"{"second": 10, "minute": 20, "hour": 30, "day": 40, "month": 60, "year": 50}"#
            ),
            "config: The limit for year(50.0) cannot be lower than the limit for month(60.0)"
        );
        assert_eq!(
            error(r#"{"second": 2, "minute": 1}"#),
            "config: The limit for minute(1.0) cannot be lower than the limit for second(2.0)"
        );
        assert!(Config::parse(br#"{"second": 2, "minute": 2}"#).is_ok());
        assert_eq!(
            error(r#"{"second": 2.26, "minute": 0.06}"#),
            "config: The limit for minute(0.1) cannot be lower than the limit for second(2.3)"
        );
        // Lua's %.1f prints every digit of large limits.
        assert_eq!(
            error(r#"{"second": 1e20, "minute": 1e19}"#),
            "config: The limit for minute(10000000000000000000.0) cannot be lower than the \
             limit for second(100000000000000000000.0)"
        );
    }

    /// Review #17: Kong checks `error_code > 0` only; the 400-599 range is enforced when
    /// answering (see the limiter).
    #[test]
    fn any_positive_error_code_and_every_limit_by_of_kong_oss_are_accepted() {
        for code in ["200", "600", "429.5", "1e9"] {
            let config =
                Config::parse(format!(r#"{{"second": 1, "error_code": {code}}}"#).as_bytes());
            assert!(config.is_ok(), "{code}");
        }
        let status = |code: f64| {
            Config {
                error_code: code,
                ..Config::with_limits(&[(Period::Second, 1.0)])
            }
            .rejection_status()
        };
        assert_eq!(status(400.0), Some(400));
        assert_eq!(status(599.0), Some(599));
        assert_eq!(status(429.5), Some(429));
        assert_eq!(status(399.9), None);
        assert_eq!(status(599.5), None);
        assert_eq!(status(200.0), None);
        for limit_by in ["consumer", "credential", "ip", "service"] {
            let json = format!(r#"{{"second": 1, "limit_by": "{limit_by}"}}"#);
            assert!(Config::parse(json.as_bytes()).is_ok(), "{limit_by}");
        }
        let largest = Config::parse(br#"{"second": 1, "max_identifiers": 1000000}"#).unwrap();
        assert_eq!(largest.max_identifiers, MAX_MAX_IDENTIFIERS);
    }

    #[test]
    fn header_and_path_are_required_for_their_limit_by() {
        assert_eq!(
            error(r#"{"second": 10, "limit_by": "header"}"#),
            "config.header_name: required field missing"
        );
        assert_eq!(
            error(r#"{"second": 10, "limit_by": "path"}"#),
            "config.path: required field missing"
        );
        assert!(
            Config::parse(br#"{"second": 10, "limit_by": "path", "path": "/request"}"#).is_ok()
        );
    }

    #[test]
    fn bad_fields_are_named_with_kongs_messages() {
        let cases = [
            (
                r#"{"second": 0}"#,
                "config.second: value must be greater than 0",
            ),
            (
                r#"{"minute": -1}"#,
                "config.minute: value must be greater than 0",
            ),
            (r#"{"second": "10"}"#, "config.second: expected a number"),
            (
                r#"{"second": 1, "limit_by": "user"}"#,
                "config.limit_by: expected one of: consumer, credential, ip, service, header, \
                 path",
            ),
            (
                r#"{"second": 1, "limit_by": "consumer-group"}"#,
                "config.limit_by: expected one of: consumer, credential, ip, service, header, \
                 path",
            ),
            (
                r#"{"second": 1, "error_code": 0}"#,
                "config.error_code: value must be greater than 0",
            ),
            (
                r#"{"second": 1, "error_code": -429}"#,
                "config.error_code: value must be greater than 0",
            ),
            (
                r#"{"second": 1, "error_code": "429"}"#,
                "config.error_code: expected a number",
            ),
            (
                r#"{"second": 1, "error_message": ""}"#,
                "config.error_message: length must be at least 1",
            ),
            (
                r#"{"second": 1, "limit_by": "header", "header_name": ""}"#,
                "config.header_name: length must be at least 1",
            ),
            (
                r#"{"second": 1, "limit_by": "path", "path": ""}"#,
                "config.path: length must be at least 1",
            ),
            (
                r#"{"second": 1, "limit_by": "header", "header_name": "x api"}"#,
                "config.header_name: bad header name 'x api', allowed characters are A-Z, \
                 a-z, 0-9, '_', and '-'",
            ),
            (
                r#"{"second": 1, "limit_by": "path", "path": "api"}"#,
                "config.path: should start with: /",
            ),
            (
                r#"{"second": 1, "path": "/a//b"}"#,
                "config.path: must not have empty segments",
            ),
            (
                r#"{"second": 1, "path": "/a b"}"#,
                "config.path: invalid path: '/a b' (characters outside of the reserved list \
                 of RFC 3986 found)",
            ),
            (
                r#"{"second": 1, "path": "/a%zz"}"#,
                "config.path: invalid url-encoded value: '%zz'",
            ),
            (
                r#"{"second": 1, "window_type": "rolling"}"#,
                "config.window_type: expected one of: fixed, sliding",
            ),
            (
                r#"{"second": 1, "max_identifiers": 0}"#,
                "config.max_identifiers: value should be between 1 and 1000000",
            ),
            (
                r#"{"second": 1, "max_identifiers": 1000001}"#,
                "config.max_identifiers: value should be between 1 and 1000000",
            ),
            (
                r#"{"second": 1, "sync_rate": 10}"#,
                "config: sync_rate can only be used with the redis policy",
            ),
            (
                r#"{"second": 1, "seconds": 1}"#,
                "config.seconds: unknown field",
            ),
            (
                r#"{"second": 1, "fault_tolerant": "yes"}"#,
                "config.fault_tolerant: expected a boolean",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(error(input), message, "{input}");
        }
    }

    #[test]
    fn the_cluster_policy_is_refused() {
        let message = error(r#"{"second": 1, "policy": "cluster"}"#);
        assert!(
            message.starts_with("config.policy: policy 'cluster' is not supported by wasmgate"),
            "{message}"
        );
        assert!(error(r#"{"second": 1, "policy": "memcached"}"#)
            .starts_with("config.policy: expected one of: local, cluster, redis"));
    }

    #[test]
    fn the_redis_policy_reads_kongs_redis_record_and_the_legacy_fields() {
        let config = Config::parse(
            br#"{"second": 5, "policy": "redis", "sync_rate": -1,
                 "redis": {"host": "cache.internal", "port": 6380, "timeout": 150,
                           "username": "rl", "password": "pw", "database": 3,
                           "ssl": false, "ssl_verify": false, "server_name": null}}"#,
        )
        .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(
            (
                redis.host.as_str(),
                redis.port,
                redis.timeout_ms,
                redis.database
            ),
            ("cache.internal", 6380, 150, 3)
        );
        assert_eq!(
            (redis.username.as_deref(), redis.password.as_deref()),
            (Some("rl"), Some("pw"))
        );
        assert!(!format!("{redis:?}").contains("pw"));
        // Kong's export: the record's host null, the legacy one set; a set legacy field wins.
        let legacy = Config::parse(
            br#"{"second": 5, "policy": "redis", "redis_host": "old", "redis_port": 7000,
                 "redis": {"host": null, "port": 6379, "timeout": 2000}}"#,
        )
        .unwrap()
        .redis
        .unwrap();
        assert_eq!(
            (legacy.host.as_str(), legacy.port, legacy.timeout_ms),
            ("old", 7000, 2000)
        );
        // Defaults: Kong's port and timeout.
        let defaults =
            Config::parse(br#"{"second": 5, "policy": "redis", "redis": {"host": "h"}}"#)
                .unwrap()
                .redis
                .unwrap();
        assert_eq!(
            (defaults.port, defaults.timeout_ms, defaults.database),
            (6379, 2000, 0)
        );
        let tls = Config::parse(
            br#"{"second": 5, "policy": "redis",
                 "redis": {"host": "h", "ssl": true, "ssl_verify": true, "server_name": "h"}}"#,
        )
        .unwrap()
        .redis
        .unwrap();
        assert_eq!(
            (tls.ssl, tls.ssl_verify, tls.server_name.as_deref()),
            (true, true, Some("h"))
        );
        // Kong's SNI for a Redis reached by another name (an address): the connection goes
        // to the host, TLS names the server.
        let named = br#"{"second": 5, "policy": "redis",
                         "redis": {"host": "10.0.0.7", "ssl": true, "server_name": "redis.internal"}}"#;
        assert_eq!(
            Config::parse(named)
                .unwrap()
                .redis
                .unwrap()
                .server_name
                .as_deref(),
            Some("redis.internal")
        );
        let cleartext =
            br#"{"second": 5, "policy": "redis", "redis": {"host": "h", "server_name": "s"}}"#;
        assert!(Config::parse(cleartext).unwrap().redis.is_some());
        assert!(Config::parse(br#"{"second": 5, "redis": {"host": "h"}}"#)
            .unwrap()
            .redis
            .is_none());
    }

    #[test]
    fn bad_redis_settings_are_refused_naming_the_field() {
        for (json, expected) in [
            (
                r#"{"second": 1, "policy": "redis"}"#,
                "config.redis.host: required field missing",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": null}}"#,
                "config.redis.host: required field missing",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": "h", "port": 70000}}"#,
                "config.redis.port: value should be between 0 and 65535",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": "h", "timeout": -1}}"#,
                "config.redis.timeout: value should be between 0 and 2147483646",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": 5}}"#,
                "config.redis.host: expected a string",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": ""}}"#,
                "config.redis.host: length must be at least 1",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": "h", "ssl": "yes"}}"#,
                "config.redis.ssl: expected a boolean",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": {"host": "h", "hots": "x"}}"#,
                "config.redis.hots: unknown field",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis": "h"}"#,
                "config.redis: expected a record",
            ),
            (
                r#"{"second": 1, "policy": "redis", "redis_host": "h", "redis_port": "x"}"#,
                "config.redis_port: expected an integer",
            ),
            (
                r#"{"second": 1, "redis": {"port": 99999}}"#,
                "config.redis.port: value should be between 0 and 65535",
            ),
        ] {
            assert_eq!(error(json), expected, "{json}");
        }
    }

    /// Kong's `typedefs.path`: every well-formed `%XX` triplet is accepted, wherever it
    /// stands; the message names the first malformed one (at most the `%` and two bytes).
    #[test]
    fn paths_accept_percent_triplets_and_name_the_first_bad_one() {
        for path in ["/%41", "/a%41", "/x%2Fy", "/caf%C3%a9", "/q/%7e%7E/r"] {
            let json = format!(r#"{{"second": 1, "limit_by": "path", "path": "{path}"}}"#);
            let config = Config::parse(json.as_bytes());
            assert_eq!(config.unwrap().path.as_deref(), Some(path), "{path}");
        }
        for (path, bad) in [
            ("/a%z1", "%z1"),
            ("/a%1z/b", "%1z"),
            ("/ab%1z3", "%1z"),
            ("/a%41%zzb", "%zz"),
            ("/ab%4", "%4"),
            ("/ab%", "%"),
        ] {
            assert_eq!(
                error(&format!(r#"{{"second": 1, "path": "{path}"}}"#)),
                format!("config.path: invalid url-encoded value: '{bad}'"),
                "{path}"
            );
        }
    }
}
