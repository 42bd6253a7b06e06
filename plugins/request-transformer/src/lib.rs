//! Kong's `request-transformer` plugin: rewrites the request on its way to the upstream
//! (method, path, headers, query string, JSON / form / multipart body), with values from Kong's
//! `$(...)` templates and secrets referenced as `{vault://env/NAME}`, resolved from the data
//! plane's environment when the configuration is loaded.
//!
//! The pure core: [`config`] (Kong's schema and messages, secret references, route paths),
//! [`template`], [`captures`], the codecs [`urlencoded`], [`json`] and [`multipart`], and
//! [`transform`] (the decisions per request); [`stream`] is one request's life against a
//! host interface, and `filter` the proxy-wasm adapter on `kit::host`.
//!
//! Entry points that parse untrusted bytes, each total (no panic on any input) and bounded
//! (linear, or n·log n, in its input): [`json::Object::parse`], [`urlencoded::Params::parse`],
//! [`multipart::Multipart::parse`], [`multipart::boundary`], [`multipart::parameters`],
//! [`multipart::disposition_name`], [`template::Template::parse`] (configured text),
//! [`template::Template::render`], [`transform::on_headers`], [`transform::BodyJob::finish`]
//! and [`Config::parse`] (and the kit's [`kit::abi::decode_map`] for the host's header maps).

pub mod captures;
pub mod config;
pub mod json;
pub mod multipart;
pub mod plan;
mod steps;
pub mod stream;
pub mod template;
pub mod transform;
pub mod urlencoded;

#[cfg(target_arch = "wasm32")]
mod filter;

pub use config::Config;
pub use transform::{BodyJob, HeadDecision, HeaderChange, RequestHead};

/// Kong's plugin name, also the proxy-wasm root id.
pub const PLUGIN_NAME: &str = "request-transformer";
/// The client's Host, as the data plane hands it to the plugin when `:authority` already holds
/// the route's rewritten Host (Envoy runs the plugin after the router's `host_rewrite`; the
/// translation sets this header on the plugin's routes, overwriting any client's copy). The
/// plugin reads `$(headers.host)` from it and never forwards it.
pub const CLIENT_HOST_HEADER: &str = "x-wasmgate-client-host";
/// Kong's plugin priority: higher runs first.
pub const PRIORITY: u32 = 801;

#[cfg(test)]
mod tests {
    /// The model (which never links this crate) has this plugin's name, priority and the
    /// header the data planes hand it the client's Host in.
    #[test]
    fn the_models_plugin_table_says_what_this_crate_says() {
        let known = model::plugins::REQUEST_TRANSFORMER;
        assert_eq!(
            (known.name, known.priority),
            (super::PLUGIN_NAME, super::PRIORITY)
        );
        assert_eq!(
            model::plugins::find(super::PLUGIN_NAME).map(|p| p.priority),
            Some(super::PRIORITY)
        );
        assert_eq!(
            model::plugins::CLIENT_HOST_HEADER,
            super::CLIENT_HOST_HEADER
        );
        assert_eq!(model::envoy::CLIENT_HOST_HEADER, super::CLIENT_HOST_HEADER);
    }
}
