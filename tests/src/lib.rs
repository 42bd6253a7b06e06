//! wasmgate's integration harness.
//!
//! Every data plane is tested the same way: a real [`echo`] upstream that reports what reached
//! it, a real [`client`] speaking HTTP/1.1 or h2c over loopback, and the shared [`cases`] files
//! that describe config → request → expected response and upstream view. [`envoy`] runs those
//! against a real Envoy; the in-process host runs the very same files.

pub mod cases;
pub mod client;
pub mod control_plane;
pub mod echo;
pub mod envoy;
pub mod gateway;
pub mod gateway_cases;
pub mod paths;

pub use client::{Protocol, Request, RequestBody, Response};
pub use echo::{EchoReport, EchoUpstream};
pub use envoy::{Envoy, EnvoyConfig, WasmFilter};
