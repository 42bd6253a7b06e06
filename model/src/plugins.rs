//! wasmgate's Kong plugins as data: name, priority and module file. The model never links the
//! plugin crates (the gateway runs them as modules); each crate's tests check that its own
//! name and priority are the ones here. A plugin's config is checked against its schema by a
//! [`PluginCheck`] the caller supplies: the plugins' cores compiled natively
//! (`wasmgate-plugin-schemas`), or the modules themselves (the gateway).

use std::path::PathBuf;

use kit::ConfigError;

use crate::entities::{Config, Plugin, RoutePath};

pub use kit::secrets::{secret_references, secret_variables, SecretReference};

pub struct KnownPlugin {
    /// Kong's plugin name, also the module's root id.
    pub name: &'static str,
    /// Kong's priority: higher runs first in the request phase.
    pub priority: u32,
}

impl KnownPlugin {
    /// The module's file name in a build folder.
    pub fn module_file(&self) -> String {
        format!("{}.wasm", self.name.replace('-', "_"))
    }
}

pub const REQUEST_SIZE_LIMITING: KnownPlugin = KnownPlugin {
    name: "request-size-limiting",
    priority: 951,
};
pub const RATE_LIMITING: KnownPlugin = KnownPlugin {
    name: "rate-limiting",
    priority: 910,
};
pub const REQUEST_TRANSFORMER: KnownPlugin = KnownPlugin {
    name: "request-transformer",
    priority: 801,
};

/// The client's Host, as the data plane hands it to the request-transformer when `:authority`
/// already holds the route's rewritten Host (Envoy runs the plugin after the router's
/// `host_rewrite`; the translation sets this header on the plugin's routes, overwriting any
/// client's copy). The plugin reads `$(headers.host)` from it and never forwards it.
pub const CLIENT_HOST_HEADER: &str = "x-wasmgate-client-host";

pub const PLUGINS: &[KnownPlugin] = &[REQUEST_SIZE_LIMITING, RATE_LIMITING, REQUEST_TRANSFORMER];

/// Checks a known plugin's `config` (a JSON object) against the plugin's own schema: `Err`
/// holds every invalid field, with paths from `config` (`config.second`) or `@entity`, as the
/// plugin's core reports them (an empty path: the plugin as a whole). Called only for plugins
/// of [`PLUGINS`], with a `config` that is a JSON object.
pub type PluginCheck<'a> = &'a dyn Fn(&str, &serde_json::Value) -> Result<(), ConfigError>;

pub fn find(name: &str) -> Option<&'static KnownPlugin> {
    PLUGINS.iter().find(|p| p.name == name)
}

pub fn priority(name: &str) -> u32 {
    find(name).map_or(0, |p| p.priority)
}

/// A plugin instance's configuration as every data plane hands it to the module: the user's
/// config, plus what the data plane must tell the module about its routes. The
/// request-transformer gets `wasmgate.route_paths` (each route it runs on → the route's regex
/// paths), from which it computes Kong's `uri_captures` itself, the same way on every data
/// plane, and the [`data_plane_defaults`].
pub fn configuration(config: &Config, plugin: &Plugin) -> String {
    if plugin.name != REQUEST_TRANSFORMER.name {
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
    module_configuration(&plugin.name, &plugin.config, route_paths)
}

/// A plugin's configuration as the data planes hand it to its module ([`configuration`]),
/// given the request-transformer's `route_paths` (none when a config is checked on its own).
pub fn module_configuration(
    name: &str,
    config: &serde_json::Value,
    route_paths: serde_json::Map<String, serde_json::Value>,
) -> String {
    if name != REQUEST_TRANSFORMER.name {
        return config.to_string();
    }
    let mut value = config.clone();
    data_plane_defaults(name, &mut value);
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
    if plugin != REQUEST_TRANSFORMER.name {
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
