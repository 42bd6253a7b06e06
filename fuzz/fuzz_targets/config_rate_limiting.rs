//! `rate_limiting::Config::parse` on any bytes: total; an accepted config holds Kong's
//! invariants (at least one limit, each finite and positive, longer periods never lower,
//! `header_name` / `path` present when `limit_by` needs them, bounded `max_identifiers`);
//! a refused one names fields under `config`; an accepted config written back as JSON parses
//! to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rate_limiting::config::MAX_MAX_IDENTIFIERS;
use rate_limiting::{Config, LimitBy, WindowType};
use serde_json::{json, Map, Value};

fn limit_by_name(l: LimitBy) -> &'static str {
    match l {
        LimitBy::Consumer => "consumer",
        LimitBy::Credential => "credential",
        LimitBy::Ip => "ip",
        LimitBy::Service => "service",
        LimitBy::Header => "header",
        LimitBy::Path => "path",
    }
}

fn write_back(config: &Config) -> Vec<u8> {
    let mut map = Map::new();
    for (period, limit) in &config.limits {
        map.insert(period.name().into(), json!(limit));
    }
    map.insert("limit_by".into(), json!(limit_by_name(config.limit_by)));
    if let Some(h) = &config.header_name {
        map.insert("header_name".into(), json!(h));
    }
    if let Some(p) = &config.path {
        map.insert("path".into(), json!(p));
    }
    map.insert("policy".into(), json!("local"));
    map.insert("fault_tolerant".into(), json!(config.fault_tolerant));
    map.insert(
        "hide_client_headers".into(),
        json!(config.hide_client_headers),
    );
    map.insert("error_code".into(), json!(config.error_code));
    map.insert("error_message".into(), json!(config.error_message));
    map.insert(
        "window_type".into(),
        json!(match config.window_type {
            WindowType::Fixed => "fixed",
            WindowType::Sliding => "sliding",
        }),
    );
    map.insert("max_identifiers".into(), json!(config.max_identifiers));
    Value::Object(map).to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let config = match Config::parse(data) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.fields.is_empty(), "an error names a field");
            for field in &error.fields {
                // Kong's entity checks report at `@entity`, everything else under `config`.
                assert!(
                    field.path.starts_with("config") || field.path == "@entity",
                    "{}",
                    field.path
                );
            }
            let _ = error.to_kong_fields();
            return;
        }
    };
    assert!(!config.limits.is_empty());
    for pair in config.limits.windows(2) {
        assert!(pair[0].0 < pair[1].0, "periods in order, once each");
        assert!(pair[0].1 <= pair[1].1, "a longer period is never lower");
    }
    for (_, limit) in &config.limits {
        assert!(limit.is_finite() && *limit > 0.0);
    }
    match config.limit_by {
        LimitBy::Header => assert!(config.header_name.is_some()),
        LimitBy::Path => assert!(config.path.is_some()),
        _ => {}
    }
    if let Some(h) = &config.header_name {
        assert!(!h.is_empty());
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    if let Some(p) = &config.path {
        assert!(p.starts_with('/') && !p.contains("//"), "{p:?}");
    }
    assert!(config.error_code > 0.0);
    assert!(!config.error_message.is_empty());
    assert!((1..=MAX_MAX_IDENTIFIERS).contains(&config.max_identifiers));
    if let Some(status) = config.rejection_status() {
        assert!((400..=599).contains(&status));
    }

    // Numbers are read correctly rounded, as Kong's cjson (strtod) reads them (finding 4 of
    // docs/FUZZING.md), and serde_json writes the shortest text that reads back to the same
    // double: the round trip is exact.
    let again = Config::parse(&write_back(&config)).expect("an accepted config round-trips");
    assert_eq!(again, config);
});
