//! The plugin modules the control plane hands to data planes: Envoy gets them inline in
//! ECDS, gateways download the ones they lack (by SHA-256).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::hub::sha256_hex;

pub struct Module {
    /// Kong's plugin name (also the module's root id).
    pub plugin: &'static str,
    /// File name in a build folder (`rate_limiting.wasm`).
    pub file: String,
    pub bytes: Arc<Vec<u8>>,
    pub sha256: String,
}

#[derive(Default)]
pub struct Modules {
    by_plugin: BTreeMap<&'static str, Module>,
}

impl Modules {
    /// Reads every known plugin's module from `dir`; a missing one is an error naming it.
    pub fn load(dir: &Path) -> Result<Modules, String> {
        let mut by_plugin = BTreeMap::new();
        for plugin in model::plugins::PLUGINS {
            let file = plugin.module_file();
            let path = dir.join(&file);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "plugin module {} ({e}); build them with `cargo xtask build` or set --modules-dir",
                    path.display()
                )
            })?;
            by_plugin.insert(
                plugin.name,
                Module {
                    plugin: plugin.name,
                    file,
                    sha256: sha256_hex(&bytes),
                    bytes: Arc::new(bytes),
                },
            );
        }
        Ok(Modules { by_plugin })
    }

    pub fn get(&self, plugin: &str) -> Option<&Module> {
        self.by_plugin.get(plugin)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Module> {
        self.by_plugin.values()
    }
}
