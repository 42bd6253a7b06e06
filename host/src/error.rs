//! Errors of loading, configuring and starting plugins. Each carries what it is about.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The engine could not be built.
    Engine(String),
    /// The bytes are not a valid module, or not a proxy-wasm module we support.
    Module(String),
    /// Instantiation or a start-up function failed (trap, deadline, missing import).
    Start {
        plugin: String,
        reason: String,
    },
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false; `reason` is what the module
    /// logged meanwhile.
    ConfigRefused {
        plugin: String,
        reason: String,
    },
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine(e) => write!(f, "wasm engine: {e}"),
            Error::Module(e) => write!(f, "wasm module: {e}"),
            Error::Start { plugin, reason } => write!(f, "{plugin}: failed to start: {reason}"),
            Error::ConfigRefused { plugin, reason } => {
                write!(f, "{plugin}: configuration refused: {reason}")
            }
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// A wasmtime error with its whole chain of causes on one line.
pub fn describe(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}
