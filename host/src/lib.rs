//! wasmgate's proxy-wasm host: modules built for ABI 0.2.1 (and 0.2.0) run on wasmtime with
//! a CPU deadline and a memory cap per callback, Envoy's lifecycle and semantics, and a
//! filter-chain API ([`filter_chain`]) that the gateway drives from the network.
//!
//! - [`engine`]: the shared wasmtime engine (epoch ticker, pooling allocator).
//! - [`module_cache`]: compiled modules kept on disk between runs, checked before use.
//! - [`module`]: a module compiled and linked once ([`module::PluginModule`]).
//! - [`plugin`]: a configured plugin, its per-worker instance and its per-stream filter.
//! - [`vm`]: one instance and its proxy-wasm context lifecycle.
//! - [`abi`], [`wasi`]: the host functions.
//! - [`shared_data`], [`queues`], [`metrics`]: process-wide state ([`env::HostEnv`]).
//! - [`properties`]: Envoy's property names and encodings.
//! - [`testing`]: an in-process harness to drive plugins from tests.

pub mod abi;
pub mod callout;
pub mod clock;
pub mod engine;
pub mod env;
pub mod error;
pub mod filter_chain;
pub mod headers;
pub mod logs;
pub mod metrics;
pub mod module;
pub mod module_cache;
pub mod plugin;
pub mod plugin_config;
pub mod properties;
pub mod queues;
pub mod shared_data;
pub mod state;
pub mod testing;
pub mod vm;
pub mod wasi;

pub use callout::{HttpCallResponse, HttpCallResult, HttpCallout};
pub use engine::{Engine, EngineConfig};
pub use env::HostEnv;
pub use error::Error;
pub use filter_chain::{
    FilterChain, FilterStatus, HttpFilter, HttpStream, LocalResponse, Output, StreamData,
    StreamInfo,
};
pub use headers::Headers;
pub use module::PluginModule;
pub use plugin::{Plugin, WasmFilter, WorkerPlugin};
pub use plugin_config::{FailurePolicy, Limits, PluginConfig};
