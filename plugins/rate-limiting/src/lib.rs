//! Kong's `rate-limiting` plugin: fixed calendar windows (or sliding ones, as Kong's
//! rate-limiting-advanced). `policy: local` counts in proxy-wasm shared data, so that the limit
//! holds across every worker thread of one proxy; `policy: redis` asks wasmgate's rate-limit
//! service ([`remote`]; the `wasmgate-ratelimit` crate) over gRPC, which counts in Redis, so
//! that the limit holds across every proxy sharing that Redis.
//!
//! [`config`], [`window`], [`counters`], [`store`] (with its keyed hash, [`siphash`]) and
//! [`limiter`] are the pure core, tested natively, including multi-threaded runs against a
//! store with Envoy's semantics; `filter` is the proxy-wasm adapter. The store's codec
//! ([`store::Bucket::encode`] / [`store::Bucket::decode`]) is total, for fuzzing.

pub mod config;
pub mod counters;
pub mod limiter;
mod number;
pub mod remote;
pub mod siphash;
pub mod store;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod filter;

pub use config::{Config, LimitBy, WindowType};
pub use kit::redis::RedisConfig;
pub use limiter::{Limiter, RequestInfo, Verdict};
pub use store::{SetError, Store};
pub use window::Period;

/// Kong's plugin name, also the proxy-wasm root id.
pub const PLUGIN_NAME: &str = "rate-limiting";
/// Kong's plugin priority: higher runs first.
pub const PRIORITY: u32 = 910;
/// Counter metric (proxy-wasm `proxy_define_metric`, process-wide): live identifiers evicted
/// from a full bucket to make room for a new one; each lost its count.
pub const EVICTIONS_METRIC: &str = "wasmgate_rate_limiting_evictions_total";
/// Counter metric: requests that passed without being counted because every write of their
/// bucket lost its race against other workers.
pub const UNCOUNTED_METRIC: &str = "wasmgate_rate_limiting_uncounted_total";

#[cfg(test)]
mod tests {
    /// The model (which never links this crate) has this plugin's name and priority.
    #[test]
    fn the_models_plugin_table_says_what_this_crate_says() {
        let known = model::plugins::RATE_LIMITING;
        assert_eq!(
            (known.name, known.priority),
            (super::PLUGIN_NAME, super::PRIORITY)
        );
        assert_eq!(
            model::plugins::find(super::PLUGIN_NAME).map(|p| p.priority),
            Some(super::PRIORITY)
        );
    }
}
