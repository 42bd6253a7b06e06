//! `gateway` in process for tests, and the two paths a request takes through it: the plain
//! proxy (a route without filters) and the filtered one (every route of the seed's
//! configuration, whose plugins are global). Proxy behaviour is tested on both.

use std::time::Duration;

use gateway::{Gateway, GatewayOptions};

use crate::EchoReport;

/// A gateway on loopback ports chosen by the system, with the admin API, two workers and
/// wasmgate's built plugin modules; no access log unless `WASMGATE_DEBUG_LOG` is set (to see,
/// with `--nocapture`, each request's upstream error while debugging a test).
pub fn options() -> GatewayOptions {
    GatewayOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        workers: 2,
        drain_timeout: Duration::from_secs(5),
        access_log: std::env::var_os("WASMGATE_DEBUG_LOG").is_some(),
        runtime: gateway::filters::RuntimeOptions {
            modules_dir: crate::paths::wasm_dir(),
            ..Default::default()
        },
        ..GatewayOptions::default()
    }
}

/// Starts a gateway with [`options`]; panics with the gateway's error.
pub fn start(declarative: &str) -> Gateway {
    start_with(options(), declarative)
}

pub fn start_with(options: GatewayOptions, declarative: &str) -> Gateway {
    Gateway::start(options, declarative).unwrap_or_else(|e| panic!("the gateway refused: {e}"))
}

/// A gateway with one worker (so a test's requests share one instance of each filter) and
/// `filters_dir` for its `filter_chains`.
pub fn start_with_filters(filters_dir: &std::path::Path, declarative: &str) -> Gateway {
    let mut options = options();
    options.workers = 1;
    options.runtime.filters_dir = Some(filters_dir.to_owned());
    start_with(options, declarative)
}

/// A module metric's value (by its proxy-wasm name) in `gateway`, once a module defined it.
pub fn module_metric(gateway: &Gateway, name: &str) -> Option<i64> {
    (gateway.shared().runtime.env.metrics.snapshot())
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.value)
}

/// The header the filtered path's request-transformer adds, so a test can tell that the
/// request went through the plugins.
pub const PLUGIN_PATH_HEADER: &str = "x-wasmgate-path";

/// Which path requests take through the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyPath {
    /// No plugin anywhere: the plain proxy.
    Plain,
    /// The seed's three plugins, global, with limits no test reaches (2 GiB, a million
    /// requests a second) and a header added on the way up.
    Plugins,
}

impl ProxyPath {
    pub const ALL: [ProxyPath; 2] = [ProxyPath::Plain, ProxyPath::Plugins];

    /// `declarative` (a Kong declarative file without top-level `plugins`) for this path.
    pub fn config(self, declarative: &str) -> String {
        match self {
            ProxyPath::Plain => declarative.to_owned(),
            ProxyPath::Plugins => format!(
                "{declarative}\nplugins:\n  \
                 - {{name: request-size-limiting, config: {{allowed_payload_size: 2048}}}}\n  \
                 - {{name: rate-limiting, config: {{second: 1000000, limit_by: service}}}}\n  \
                 - {{name: request-transformer, config: {{add: {{headers: [\"{PLUGIN_PATH_HEADER}:plugins\"]}}}}}}\n"
            ),
        }
    }

    /// Fails unless the upstream's view shows this path was taken.
    pub fn assert_taken(self, seen: &EchoReport) {
        let expected = match self {
            ProxyPath::Plain => Vec::new(),
            ProxyPath::Plugins => vec!["plugins"],
        };
        assert_eq!(
            seen.header_values(PLUGIN_PATH_HEADER),
            expected,
            "{self:?}: the request did not take this path"
        );
    }

    /// Fails unless a raw upstream's received request head shows this path was taken.
    pub fn assert_taken_raw(self, head: &[u8]) {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let marked = text.contains(&format!("{PLUGIN_PATH_HEADER}: plugins"));
        assert_eq!(
            marked,
            self == ProxyPath::Plugins,
            "{self:?}: the request did not take this path:\n{text}"
        );
    }
}
