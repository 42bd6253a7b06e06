//! The native schema check of wasmgate's Kong plugins ([`check`], a `model::plugins::PluginCheck`):
//! each plugin's config is validated by the plugin's own core, the very code its module runs,
//! compiled natively. The control plane validates with it (and answers Kong's field errors);
//! the gateway never links it: it validates with the modules themselves.
//!
//! `model::parse_declarative_checked(text, &schemas::check)` validates a whole declarative file.

use kit::secrets::secret_references;
use kit::ConfigError;
use serde_json::Value;

/// Validates `config` of the plugin `name` with the plugin's core: every invalid field, with
/// its path from `config`. A plugin this crate does not know is accepted (the model refuses
/// unknown plugin names itself).
pub fn check(name: &str, config: &Value) -> Result<(), ConfigError> {
    let bytes = config.to_string().into_bytes();
    match name {
        request_size_limiting::PLUGIN_NAME => {
            request_size_limiting::Config::parse(&bytes).map(drop)
        }
        rate_limiting::PLUGIN_NAME => rate_limiting::Config::parse(&bytes).map(drop),
        request_transformer::PLUGIN_NAME => validate_transformer(config),
        _ => Ok(()),
    }
}

/// Validates a request-transformer config without the data plane's secrets: they are resolved
/// there, from its own environment, so here every `{vault://env/NAME[/key]}` reference gets a
/// stand-in value of the right shape (a JSON object when a key is asked for).
///
/// The data planes add the routes' regex paths (`model::plugins::configuration`); a config is
/// checked as they will send it, with that map present.
fn validate_transformer(config: &Value) -> Result<(), ConfigError> {
    let mut value = config.clone();
    if let Some(object) = value.as_object_mut() {
        let wasmgate = object
            .entry("wasmgate")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(wasmgate) = wasmgate.as_object_mut() {
            wasmgate
                .entry("route_paths")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
    }
    let text = value.to_string();
    let mut stand_ins: std::collections::HashMap<String, serde_json::Map<String, Value>> =
        std::collections::HashMap::new();
    for reference in secret_references(&text) {
        let keys = stand_ins.entry(reference.variable).or_default();
        if let Some(key) = reference.key {
            keys.insert(key, Value::String("secret".into()));
        }
    }
    let lookup = |variable: &str| {
        stand_ins.get(variable).map(|keys| {
            if keys.is_empty() {
                "secret".to_owned()
            } else {
                Value::Object(keys.clone()).to_string()
            }
        })
    };
    request_transformer::Config::parse(text.as_bytes(), &lookup).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transformer's config is checked by its own parser, with stand-ins for secrets.
    #[test]
    fn the_transformer_is_validated_by_its_core_with_secrets_stood_in() {
        let validate = |config: Value| check("request-transformer", &config);
        validate(
            serde_json::json!({"add": {"headers": ["authorization:Bearer {vault://env/TOKEN}"]}}),
        )
        .unwrap();
        validate(serde_json::json!({"add": {"headers": ["x:{vault://env/DB/user}"]}})).unwrap();
        let refused = validate(serde_json::json!({"add": {"headers": ["no-colon"]}})).unwrap_err();
        assert!(
            refused.to_string().contains("config.add.headers"),
            "{refused}"
        );
        let refused = validate(serde_json::json!({"http_method": "get me"})).unwrap_err();
        assert!(
            refused.to_string().contains("config.http_method"),
            "{refused}"
        );
    }

    #[test]
    fn each_plugin_is_validated_by_its_own_core() {
        let refused = check("rate-limiting", &serde_json::json!({"second": "x"})).unwrap_err();
        assert_eq!(refused.to_string(), "config.second: expected a number");
        let refused = check(
            "request-size-limiting",
            &serde_json::json!({"size_unit": "tons"}),
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "config.size_unit: expected one of: megabytes, kilobytes, bytes"
        );
        check("rate-limiting", &serde_json::json!({"second": 5})).unwrap();
    }
}
