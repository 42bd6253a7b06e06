//! wasmgate's one model of what a gateway runs: Kong's services, routes, plugins and
//! filter_chains.
//!
//! [`declarative`] reads Kong's declarative format (`_format_version: "3.0"`) and validates it
//! as a whole, naming the entity and field of every error; plugin configs are validated by
//! a [`plugins::PluginCheck`] the caller supplies ([`parse_declarative_checked`]): the
//! plugins' cores compiled natively (`wasmgate-plugin-schemas`), or the modules themselves
//! (the gateway). The model never links a plugin crate; [`plugins`] holds their table as data.
//! [`router`] matches requests with Kong's precedence, and [`envoy`] translates the same model
//! into an Envoy bootstrap whose routes follow that same order. The gateway, the Envoy translation and
//! the control plane all use this crate; [`sync`] holds the frames of wasmgate's own
//! control plane ↔ gateway protocol.

pub mod declarative;
pub mod entities;
pub mod envoy;
pub mod plugins;
pub mod router;
pub mod sync;

pub use declarative::{
    parse_declarative, parse_declarative_checked, parse_platform_plugins, DeclarativeError,
};
pub use entities::{
    platform_instance_name, AcmeChallenge, Certificate, Config, FailurePolicy, FilterChain,
    FilterEntry, ModuleSettings, Plugin, Protocol, Route, Scope, Service, ACME_CHALLENGE_PREFIX,
    PLATFORM_STREAM,
};
pub use kit::ConfigError;
pub use router::{Captures, RouteMatch, Router};
