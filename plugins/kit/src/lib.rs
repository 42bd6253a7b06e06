//! What every wasmgate plugin shares.
//!
//! A plugin is a pure core (config parsing and decisions, testable natively) plus a thin
//! proxy-wasm adapter. The core uses [`schema`] to read Kong's JSON `config` with Kong's
//! field-named errors and [`response`] to build Kong's error responses; the adapter makes
//! every host call through `host` (wasm only), which checks each status and reads the ABI's
//! serialisations with [`abi`] (total on any bytes, for fuzzing).

pub mod abi;
pub mod path;
pub mod redis;
pub mod response;
pub mod schema;
pub mod secrets;
pub mod window;

#[cfg(target_arch = "wasm32")]
pub mod host;

pub use response::{kong_error, trim_space, LocalResponse};
pub use schema::{ConfigError, FieldError, Record};
