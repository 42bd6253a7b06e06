//! The proxy-wasm side every plugin shares (wasm only).

use proxy_wasm::traits::{HttpContext, RootContext};

use crate::{schema::ConfigError, LocalResponse};

/// Reads and parses the plugin configuration in `on_configure`. On failure the error is logged
/// with the plugin's name and every invalid field, and `None` tells the adapter to return
/// `false`, so the host refuses the configuration (Envoy fails start-up or NACKs).
pub fn configure<T>(
    root: &dyn RootContext,
    plugin: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    let bytes = root.get_plugin_configuration().unwrap_or_default();
    match parse(&bytes) {
        Ok(config) => Some(config),
        Err(err) => {
            proxy_wasm::hostcalls::log(
                proxy_wasm::types::LogLevel::Error,
                &format!("{plugin}: invalid configuration: {err}"),
            )
            .ok();
            None
        }
    }
}

/// Answers the stream with a local response (the filter then returns `Action::Pause`).
pub fn send(ctx: &dyn HttpContext, response: &LocalResponse) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ctx.send_http_response(u32::from(response.status), headers, Some(&response.body));
}
