//! modtest: tests any proxy-wasm module (any SDK, ABI 0.2.0/0.2.1) with case files, in the
//! in-process host, in `gateway` and in a real Envoy, and reports where they disagree.
//!
//! The `modtest` command is a thin front over this library, and wasmgate's own tests run the
//! plugins' case files through the very same functions, so the command and the tests share
//! one path. The case-file model and its checks are in [`cases`]; each target runs a file and
//! returns a [`report::CaseResult`] per case: [`in_host`] on the host crate's own filter
//! chain with a manual clock, [`in_gateway`] through the gateway crate's server over real
//! sockets, [`in_envoy`] in a real Envoy 1.40 ([`envoy`] starts it, and installs it when
//! missing); [`diff`] compares what gateway and Envoy answered, step by step. [`client`]
//! and [`echo`] are the real HTTP client and upstream the targets with sockets use.

pub mod capture;
pub mod cases;
pub mod client;
pub mod diff;
pub mod echo;
pub mod envoy;
pub mod in_envoy;
pub mod in_gateway;
pub mod in_host;
pub mod paths;
pub mod planes;
pub mod report;

pub use client::{Protocol, Request, RequestBody, Response};
pub use echo::{EchoReport, EchoUpstream};
pub use envoy::{Envoy, EnvoyConfig, WasmFilter};
