//! Plugins and translations in a real Envoy 1.40, one test binary: every binary links
//! wasmtime, hyper and tonic, so one per file would cost a CI disk gigabytes. The tests whose
//! timing or load must not meet other tests' keep binaries of their own: rate-limiting's
//! accuracy under load, request-size-limiting's gigabyte streams, the callback traces, and the
//! shared case files (`envoy_cases`, whose steps account for every request head upstream).

mod abi;
#[path = "../host/abi_probe.rs"]
mod abi_probe;
mod declarative;
mod differential;
mod downstream_tls;
mod examples;
mod failure_policy;
mod hostile_headers;
mod protocol;
mod request_transformer;
mod request_transformer_routes;
mod upstream_tls;
