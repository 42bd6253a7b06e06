//! `gateway`: wasmgate's own data plane.
//!
//! A reverse proxy on hyper: one worker thread per core, each with its own tokio runtime and
//! listener socket (`SO_REUSEPORT`), sharing one atomically swapped configuration
//! [`snapshot`]. Requests are routed with Kong's precedence ([`model::Router`]), forwarded by
//! [`proxy`] with Kong's header and timeout behaviour, and logged ([`access_log`]); the
//! [`admin`] listener serves status, Prometheus metrics and DB-less `POST /config`; with a
//! control plane, [`cluster`] keeps the configuration in sync with it.

pub mod access_log;
pub mod admin;
pub mod cluster;
pub mod filters;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod warming;

pub use server::{Gateway, GatewayOptions};
pub use snapshot::Snapshot;
