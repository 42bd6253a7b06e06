//! Kong's `request-size-limiting` plugin: refuses request bodies above a configured size.
//!
//! [`config`] and [`limiter`] are the pure core; `filter` is the proxy-wasm adapter.

pub mod config;
pub mod limiter;

#[cfg(target_arch = "wasm32")]
mod filter;

pub use config::{Config, SizeUnit};
pub use limiter::{passes_without_body, BodyCounter, RequestHead, Verdict};

/// Kong's plugin name, also the proxy-wasm root id.
pub const PLUGIN_NAME: &str = "request-size-limiting";
/// Kong's plugin priority: higher runs first.
pub const PRIORITY: u32 = 951;

#[cfg(test)]
mod tests {
    /// The model (which never links this crate) has this plugin's name and priority.
    #[test]
    fn the_models_plugin_table_says_what_this_crate_says() {
        let known = model::plugins::REQUEST_SIZE_LIMITING;
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
