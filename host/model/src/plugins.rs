//! wasmgate's Kong plugins: name, priority, module, and config validation by the plugin's own
//! core (the same code the module runs, compiled natively).

use std::path::PathBuf;

use kit::ConfigError;

use crate::entities::{Config, Plugin, RoutePath};

pub struct KnownPlugin {
    /// Kong's plugin name, also the module's root id.
    pub name: &'static str,
    /// Kong's priority: higher runs first in the request phase.
    pub priority: u32,
    validate: fn(&[u8]) -> Result<(), ConfigError>,
}

impl KnownPlugin {
    /// The module's file name in a build folder.
    pub fn module_file(&self) -> String {
        format!("{}.wasm", self.name.replace('-', "_"))
    }

    pub fn validate(&self, config: &serde_json::Value) -> Result<(), ConfigError> {
        (self.validate)(config.to_string().as_bytes())
    }
}

/// A secret a configuration references with Kong's env vault: `{vault://env/NAME}` or
/// `{vault://env/NAME/key}` (a string in a JSON object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// The environment variable: Kong's env vault upper-cases the name and reads `-` as `_`.
    pub variable: String,
    pub key: Option<String>,
}

/// Every env-vault reference in a configuration's text. A module is given exactly the
/// variables its own configuration references, nothing else of the data plane's secrets.
pub fn secret_references(config_text: &str) -> Vec<SecretReference> {
    let mut references = Vec::new();
    for reference in config_text.split("vault://env/").skip(1) {
        let reference = reference.split(['}', '?', '"']).next().unwrap_or_default();
        let (name, key) = match reference.split_once('/') {
            Some((name, key)) => (name, Some(key.to_owned())),
            None => (reference, None),
        };
        let variable = name.to_ascii_uppercase().replace('-', "_");
        let found = SecretReference { variable, key };
        if !references.contains(&found) {
            references.push(found);
        }
    }
    references
}

/// The variables of [`secret_references`], each once.
pub fn secret_variables(config_text: &str) -> Vec<String> {
    let mut variables: Vec<String> = Vec::new();
    for reference in secret_references(config_text) {
        if !variables.contains(&reference.variable) {
            variables.push(reference.variable);
        }
    }
    variables
}

/// A plugin instance's configuration as every data plane hands it to the module: the user's
/// config, plus what the data plane must tell the module about its routes. The
/// request-transformer gets `wasmgate.route_paths` (each route it runs on → the route's regex
/// paths), from which it computes Kong's `uri_captures` itself, the same way on every data
/// plane.
pub fn configuration(config: &Config, plugin: &Plugin) -> String {
    if plugin.name != request_transformer::PLUGIN_NAME {
        return plugin.config.to_string();
    }
    let mut route_paths = serde_json::Map::new();
    for (index, route) in config.routes.iter().enumerate() {
        if !config
            .plugins_for(Some(index))
            .into_iter()
            .any(|p| std::ptr::eq(p, plugin))
        {
            continue;
        }
        let regexes = route
            .paths
            .iter()
            .filter_map(|path| match path {
                RoutePath::Regex(regex) => Some(serde_json::Value::String(regex.clone())),
                _ => None,
            })
            .collect();
        route_paths.insert(config.route_name(index), serde_json::Value::Array(regexes));
    }
    let mut value = plugin.config.clone();
    if let Some(object) = value.as_object_mut() {
        let wasmgate = object
            .entry("wasmgate")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(wasmgate) = wasmgate.as_object_mut() {
            wasmgate.insert("route_paths".into(), serde_json::Value::Object(route_paths));
        }
    }
    value.to_string()
}

/// Validates a request-transformer config without the data plane's secrets: they are resolved
/// there, from its own environment, so here every `{vault://env/NAME[/key]}` reference gets a
/// stand-in value of the right shape (a JSON object when a key is asked for).
///
/// The data planes add the routes' regex paths ([`configuration`]); a config is checked as
/// they will send it, with that map present.
fn validate_transformer(bytes: &[u8]) -> Result<(), ConfigError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        let wasmgate = object
            .entry("wasmgate")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(wasmgate) = wasmgate.as_object_mut() {
            wasmgate
                .entry("route_paths")
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        }
    }
    let with_routes = if value.is_object() {
        value.to_string().into_bytes()
    } else {
        bytes.to_vec()
    };
    let bytes = with_routes.as_slice();
    let text = String::from_utf8_lossy(bytes);
    let mut stand_ins: std::collections::HashMap<
        String,
        serde_json::Map<String, serde_json::Value>,
    > = std::collections::HashMap::new();
    for reference in secret_references(&text) {
        let keys = stand_ins.entry(reference.variable).or_default();
        if let Some(key) = reference.key {
            keys.insert(key, serde_json::Value::String("secret".into()));
        }
    }
    let lookup = |variable: &str| {
        stand_ins.get(variable).map(|keys| {
            if keys.is_empty() {
                "secret".to_owned()
            } else {
                serde_json::Value::Object(keys.clone()).to_string()
            }
        })
    };
    request_transformer::Config::parse(bytes, &lookup).map(drop)
}

pub const PLUGINS: &[KnownPlugin] = &[
    KnownPlugin {
        name: request_size_limiting::PLUGIN_NAME,
        priority: request_size_limiting::PRIORITY,
        validate: |bytes| request_size_limiting::Config::parse(bytes).map(drop),
    },
    KnownPlugin {
        name: rate_limiting::PLUGIN_NAME,
        priority: rate_limiting::PRIORITY,
        validate: |bytes| rate_limiting::Config::parse(bytes).map(drop),
    },
    KnownPlugin {
        name: request_transformer::PLUGIN_NAME,
        priority: request_transformer::PRIORITY,
        validate: validate_transformer,
    },
];

pub fn find(name: &str) -> Option<&'static KnownPlugin> {
    PLUGINS.iter().find(|p| p.name == name)
}

pub fn priority(name: &str) -> u32 {
    find(name).map_or(0, |p| p.priority)
}

/// Where wasmgate's plugin modules are: `WASMGATE_WASM_DIR`, else `wasm/` beside the running
/// binary (an installed layout), else the workspace's build folder.
pub fn default_modules_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMGATE_WASM_DIR") {
        return PathBuf::from(dir);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("wasm")));
    match beside {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip1/release"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_follow_kongs_env_vault_names() {
        let text = r#"{"add":{"headers":["a:{vault://env/backend-token}","b:{vault://env/DB/user}",
            "c:{vault://env/BACKEND_TOKEN}","d:{vault://hcv/x}"]}}"#;
        assert_eq!(secret_variables(text), vec!["BACKEND_TOKEN", "DB"]);
        assert_eq!(
            secret_references(text)[1],
            SecretReference {
                variable: "DB".into(),
                key: Some("user".into())
            }
        );
        assert!(secret_variables(r#"{"second":5}"#).is_empty());
    }
}
