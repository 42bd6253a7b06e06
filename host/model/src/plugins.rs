//! wasmgate's Kong plugins: name, priority, module, and config validation by the plugin's own
//! core (the same code the module runs, compiled natively).

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

pub const PLUGINS: &[KnownPlugin] = &[KnownPlugin {
    name: request_size_limiting::PLUGIN_NAME,
    priority: request_size_limiting::PRIORITY,
    validate: |bytes| request_size_limiting::Config::parse(bytes).map(drop),
}];

pub fn find(name: &str) -> Option<&'static KnownPlugin> {
    PLUGINS.iter().find(|p| p.name == name)
}

pub fn priority(name: &str) -> u32 {
    find(name).map_or(0, |p| p.priority)
}
