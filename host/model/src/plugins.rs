//! wasmgate's Kong plugins: name, priority, module, and config validation by the plugin's own
//! core (the same code the module runs, compiled natively).

use std::path::PathBuf;

use kit::ConfigError;

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

/// Validates a request-transformer config without the data plane's secrets: they are resolved
/// there, from its own environment, so here every `{vault://env/NAME[/key]}` reference gets a
/// stand-in value of the right shape (a JSON object when a key is asked for).
fn validate_transformer(bytes: &[u8]) -> Result<(), ConfigError> {
    let text = String::from_utf8_lossy(bytes);
    let mut stand_ins: std::collections::HashMap<
        String,
        serde_json::Map<String, serde_json::Value>,
    > = std::collections::HashMap::new();
    for reference in text.split("vault://env/").skip(1) {
        let reference = reference.split(['}', '?', '"']).next().unwrap_or_default();
        let (name, key) = match reference.split_once('/') {
            Some((name, key)) => (name, Some(key)),
            None => (reference, None),
        };
        let keys = stand_ins
            .entry(name.to_ascii_uppercase().replace('-', "_"))
            .or_default();
        if let Some(key) = key {
            keys.insert(key.to_owned(), serde_json::Value::String("secret".into()));
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
