//! The proxy-wasm side every plugin shares (wasm only).

use proxy_wasm::traits::RootContext;

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
///
/// Through the raw hostcall: the SDK's wrapper traps when the host refuses (a response that
/// has already started), and a refusal must only be logged.
pub fn send(response: &LocalResponse) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(status) = proxy_wasm::hostcalls::send_http_response(
        u32::from(response.status),
        headers,
        Some(&response.body),
    ) {
        proxy_wasm::hostcalls::log(
            proxy_wasm::types::LogLevel::Error,
            &format!("local response {} refused: {status:?}", response.status),
        )
        .ok();
    }
}

/// A property of the stream or the plugin (`["request", "protocol"]`), as the host's bytes;
/// `None` when the host does not know it or refuses.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    proxy_wasm::hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
}
