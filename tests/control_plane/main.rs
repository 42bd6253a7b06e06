//! A real control plane (SQLite on disk, HTTP, sync and xDS on loopback) with real `gateway`
//! and Envoy data planes, one test binary (see tests/envoy/main.rs for why).

mod acme_issuer;
mod admin;
mod api;
mod custom_domains;
mod custom_domains_api;
mod egress;
mod lifecycle;
mod replicas;
mod seed;
mod sync;
mod upgrade;
mod xds;
