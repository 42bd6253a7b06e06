//! A proxy-wasm module compiled once per engine, linked once ([`wasmtime::InstancePre`]):
//! every instance of every worker is made from it.

use std::path::Path;

use wasmtime::{ExternType, InstancePre, Linker, Val, ValType};

use crate::abi::{hostcalls, AbiVersion};
use crate::engine::Engine;
use crate::error::{describe, Error};
use crate::state::HostState;
use crate::wasi;

/// A compiled, linked module.
pub struct PluginModule {
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) abi: AbiVersion,
    /// Imports nobody implements: they trap when called.
    pub unknown_imports: Vec<String>,
    pub(crate) engine: Engine,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("abi", &self.abi)
            .field("unknown_imports", &self.unknown_imports)
            .finish()
    }
}

impl PluginModule {
    pub fn from_file(engine: &Engine, path: &Path) -> Result<PluginModule, Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("reading {}: {e}", path.display())))?;
        PluginModule::new(engine, &bytes)
            .map_err(|e| Error::Module(format!("{}: {e}", path.display())))
    }

    pub fn new(engine: &Engine, bytes: &[u8]) -> Result<PluginModule, Error> {
        let module = engine.compile(bytes)?;
        let has = |name: &str| module.exports().any(|e| e.name() == name);
        let abi = if has("proxy_abi_version_0_2_1") {
            AbiVersion::V0_2_1
        } else if has("proxy_abi_version_0_2_0") {
            AbiVersion::V0_2_0
        } else if has("proxy_abi_version_0_1_0") {
            return Err(Error::Module(
                "proxy-wasm ABI 0.1.0 is not supported".into(),
            ));
        } else {
            return Err(Error::Module(
                "not a proxy-wasm module (no proxy_abi_version_* export)".into(),
            ));
        };
        let mut linker: Linker<HostState> = Linker::new(engine.wasmtime());
        hostcalls::register(&mut linker).map_err(|e| Error::Module(describe(&e)))?;
        wasi::register(&mut linker).map_err(|e| Error::Module(describe(&e)))?;
        let mut unknown_imports = Vec::new();
        for import in module.imports() {
            let ExternType::Func(ty) = import.ty() else {
                continue;
            };
            let (m, name) = (import.module().to_owned(), import.name().to_owned());
            let is_wasi = wasi::MODULES.contains(&m.as_str());
            let answers_errno = is_wasi
                && ty.results().len() == 1
                && matches!(ty.results().next(), Some(ValType::I32))
                && m != "env";
            let full = format!("{m}.{name}");
            let defined = if answers_errno {
                linker.func_new(&m, &name, ty.clone(), |_c, _params, results| {
                    if let Some(r) = results.get_mut(0) {
                        *r = Val::I32(wasi::ENOSYS);
                    }
                    Ok(())
                })
            } else {
                let message = format!("unimplemented host function {full}");
                linker.func_new(&m, &name, ty.clone(), move |c, _params, _results| {
                    c.data().logs.log(crate::logs::LogLevel::Error, &message);
                    Err(wasmtime::Error::msg(message.clone()))
                })
            };
            // An error means the name is already defined: implemented.
            if defined.is_ok() {
                unknown_imports.push(full);
            }
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| Error::Module(describe(&e)))?;
        Ok(PluginModule {
            pre,
            abi,
            unknown_imports,
            engine: engine.clone(),
        })
    }

    pub fn abi(&self) -> AbiVersion {
        self.abi
    }
}
