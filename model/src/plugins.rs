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
/// plane, and the [`data_plane_defaults`].
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
    data_plane_defaults(&plugin.name, &mut value);
    if let Some(wasmgate) = value
        .get_mut("wasmgate")
        .and_then(serde_json::Value::as_object_mut)
    {
        wasmgate.insert("route_paths".into(), serde_json::Value::Object(route_paths));
    }
    value.to_string()
}

/// The settings every wasmgate data plane gives a plugin where its config is silent: the
/// request-transformer gets `wasmgate.hold_headers: true`, since these data planes let a
/// plugin hold the headers (Envoy: `allow_on_headers_stop_iteration`). Held headers go
/// upstream with the edited body, as in Kong. In Envoy they are also what keeps a body the
/// filter buffers from going upstream unedited: the router's upstream filter chain resumes
/// when the upstream connection becomes ready, and sends on what a filter holds if the
/// headers had gone on (envoyproxy/envoy#37087).
pub fn data_plane_defaults(plugin: &str, config: &mut serde_json::Value) {
    if plugin != request_transformer::PLUGIN_NAME {
        return;
    }
    if let Some(object) = config.as_object_mut() {
        let wasmgate = object
            .entry("wasmgate")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(wasmgate) = wasmgate.as_object_mut() {
            wasmgate
                .entry("hold_headers")
                .or_insert(serde_json::Value::Bool(true));
        }
    }
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
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"),
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

    #[test]
    fn the_data_planes_hand_the_transformer_its_routes_and_held_headers() {
        let config = crate::parse_declarative(
            r#"
_format_version: "3.0"
services:
  - name: api
    url: http://127.0.0.1:9
    routes:
      - {name: users, paths: ["~/users/(?<id>\\d+)", /plain]}
      - {name: other, paths: [/other]}
plugins:
  - {name: request-transformer, route: users, config: {add: {body: ["p:v"]}}}
  - {name: request-transformer, route: other,
     config: {add: {body: ["p:v"]}, wasmgate: {hold_headers: false}}}
  - {name: rate-limiting, config: {second: 5}}
"#,
        )
        .unwrap();
        let sent = |index: usize| -> serde_json::Value {
            serde_json::from_str(&configuration(&config, &config.plugins[index])).unwrap()
        };
        assert_eq!(
            sent(0)["wasmgate"],
            serde_json::json!({"route_paths": {"users": ["/users/(?<id>\\d+)"]},
                               "hold_headers": true})
        );
        assert_eq!(sent(0)["add"]["body"], serde_json::json!(["p:v"]));
        // The user's choice stands.
        assert_eq!(sent(1)["wasmgate"]["hold_headers"], false);
        // Other plugins get their config as it is.
        assert_eq!(
            configuration(&config, &config.plugins[2]),
            config.plugins[2].config.to_string()
        );
    }

    #[test]
    fn each_plugin_has_its_kong_priority_and_module_file() {
        let table: Vec<_> = PLUGINS
            .iter()
            .map(|p| (p.name, priority(p.name), p.module_file()))
            .collect();
        assert_eq!(
            table,
            [
                (
                    "request-size-limiting",
                    951,
                    "request_size_limiting.wasm".to_owned()
                ),
                ("rate-limiting", 910, "rate_limiting.wasm".to_owned()),
                (
                    "request-transformer",
                    801,
                    "request_transformer.wasm".to_owned()
                ),
            ]
        );
        assert_eq!(priority("key-auth"), 0);
    }

    /// The transformer's config is checked by its own parser, with stand-ins for secrets.
    #[test]
    fn the_transformer_is_validated_by_its_core_with_secrets_stood_in() {
        let validate =
            |config: serde_json::Value| find("request-transformer").unwrap().validate(&config);
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

    /// `WASMGATE_WASM_DIR` wins; without it, `wasm/` beside the binary when there is one
    /// (there is none beside a test binary), else the workspace's build folder.
    #[test]
    fn the_modules_dir_defaults_to_the_build_folder_without_an_install() {
        if std::env::var_os("WASMGATE_WASM_DIR").is_some() {
            assert_eq!(
                default_modules_dir(),
                PathBuf::from(std::env::var_os("WASMGATE_WASM_DIR").unwrap())
            );
        } else {
            assert!(default_modules_dir().ends_with("target/wasm32-wasip1/wasm"));
        }
    }
}
