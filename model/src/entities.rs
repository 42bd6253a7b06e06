//! The entities, after validation: references are resolved to indexes and defaults applied.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    /// HTTP/2 without TLS (prior knowledge), as Kong's `grpc`.
    Grpc,
    /// HTTP/2 over TLS, as Kong's `grpcs`.
    Grpcs,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::Grpcs => "grpcs",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Http => 80,
            Protocol::Https | Protocol::Grpcs => 443,
            Protocol::Grpc => 80,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Grpcs)
    }

    /// Whether the upstream speaks HTTP/2 only.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::Grpcs)
    }
}

/// An upstream service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    /// The path prefixed to every proxied request, if any.
    pub path: Option<String>,
    pub retries: u32,
    pub connect_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Verify the upstream's certificate (Kong's default: no).
    pub tls_verify: bool,
    pub enabled: bool,
    pub tags: Vec<String>,
}

impl Service {
    /// `host` or `host:port` when the port is not the protocol's default, as Kong sends it in
    /// the upstream Host header.
    pub fn authority(&self) -> String {
        if self.port == self.protocol.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One path of a route: a plain prefix or a Kong regex (`~` prefix, stored without it).
#[derive(Clone, Debug, PartialEq)]
pub enum RoutePath {
    Prefix(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub name: String,
    /// Index into [`Config::services`].
    pub service: Option<usize>,
    pub paths: Vec<RoutePath>,
    /// Lower-cased; may hold one leading or trailing `*` label.
    pub hosts: Vec<String>,
    /// Upper-cased.
    pub methods: Vec<String>,
    /// Lower-cased header name → accepted values.
    pub headers: BTreeMap<String, Vec<String>>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub regex_priority: i64,
    /// The route's `protocols` leave out `http`: Kong refuses it cleartext requests, with
    /// [`Route::https_redirect_status_code`].
    pub https_only: bool,
    /// Kong's answer to a cleartext request on an `https_only` route: 426 with
    /// `Upgrade: TLS/1.2, HTTP/1.1`, or a redirect (301, 302, 307, 308) to the https URL.
    pub https_redirect_status_code: u16,
    pub tags: Vec<String>,
}

/// Kong's `https_redirect_status_code` values; the first is its default.
pub const HTTPS_REDIRECT_STATUS_CODES: [u16; 5] = [426, 301, 302, 307, 308];

/// Where a plugin or filter chain applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Service(usize),
    Route(usize),
    RouteAndService { route: usize, service: usize },
}

impl Scope {
    /// Kong's precedence among instances of one plugin: the most specific wins.
    pub fn specificity(self) -> u8 {
        match self {
            Scope::RouteAndService { .. } => 3,
            Scope::Route(_) => 2,
            Scope::Service(_) => 1,
            Scope::Global => 0,
        }
    }

    /// Whether this scope covers a request matched to `route` (of service `service`).
    pub fn covers(self, route: Option<usize>, service: Option<usize>) -> bool {
        match self {
            Scope::Global => true,
            Scope::Service(s) => service == Some(s),
            Scope::Route(r) => route == Some(r),
            Scope::RouteAndService {
                route: r,
                service: s,
            } => route == Some(r) && service == Some(s),
        }
    }
}

/// What a data plane does with a stream when a plugin's module fails it (a trap, a spent
/// budget, the memory cap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The stream is answered 503 (Envoy's FAIL_CLOSED and FAIL_RELOAD).
    #[default]
    FailClosed,
    /// The stream goes on without the filter (Envoy's FAIL_OPEN).
    FailOpen,
}

/// The memory cap of an instance when its entity sets none (the host's default).
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 128;

/// How a data plane runs a plugin's or a filter's module: the entity's `wasmgate` block,
/// wasmgate's own (Kong has no such field). It is not part of the `config`: that one is
/// handed to the module as it is (a filter's is an opaque string), while these are settings
/// of the data plane around the module. `None`: the data plane's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleSettings {
    pub failure_policy: FailurePolicy,
    /// The CPU time one callback may take, in milliseconds.
    pub callback_budget_ms: Option<u64>,
    /// The CPU time an instance's start (`_initialize`, `on_vm_start`, `on_configure`) may
    /// take, in milliseconds.
    pub startup_budget_ms: Option<u64>,
    /// The linear memory cap of an instance, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Past this much linear memory (MiB), an instance is replaced between streams.
    pub memory_soft_limit_mb: Option<u64>,
}

/// An instance of one of wasmgate's Kong plugins.
#[derive(Clone, Debug, PartialEq)]
pub struct Plugin {
    /// Kong's `id`, when the document gives one (a control plane's always does).
    pub id: Option<String>,
    pub name: String,
    pub instance_name: Option<String>,
    /// The validated config, as the user wrote it (the module applies defaults itself).
    pub config: Value,
    pub enabled: bool,
    pub scope: Scope,
    pub tags: Vec<String>,
    pub wasmgate: ModuleSettings,
}

/// One filter of a filter chain: any proxy-wasm module from the filters directory.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterEntry {
    /// The module: `<name>.wasm` in the filters directory.
    pub name: String,
    /// Which root context of the module serves this filter (Envoy's PluginConfig `root_id`,
    /// the `plugin_root_id` property); the filter's name unless set.
    pub root_id: String,
    /// The plugin's name (Envoy's PluginConfig `name`, the `plugin_name` property); the
    /// filter's name unless set.
    pub plugin_name: String,
    /// Envoy's PluginConfig `allow_on_headers_stop_iteration`: a pause from the module's
    /// headers callback holds only the headers, and its body callbacks still run. Off by
    /// default, as in Envoy.
    pub allow_on_headers_stop_iteration: bool,
    /// Passed to the module as-is (a string config) or as JSON text.
    pub config: Option<String>,
    pub enabled: bool,
    pub wasmgate: ModuleSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FilterChain {
    pub name: Option<String>,
    pub scope: Scope,
    pub enabled: bool,
    pub filters: Vec<FilterEntry>,
    pub tags: Vec<String>,
}

/// Kong's `certificates` entity with its `snis`: a PEM chain and key that the data plane's
/// TLS listener presents to clients asking for one of `snis` (Envoy: a filter chain matched
/// on those server names, its secret by SDS).
#[derive(Clone, PartialEq)]
pub struct Certificate {
    /// Kong's id; also the certificate's secret name on Envoy, `wasmgate.certificate.<id>`.
    pub id: String,
    /// PEM: the leaf first, then its intermediates.
    pub cert: String,
    /// PEM: the leaf's private key.
    pub key: String,
    /// Lowercase host names, or `*.`-prefixed wildcards; each belongs to one certificate.
    pub snis: Vec<String>,
    pub tags: Vec<String>,
}

// The private key never reaches a log line or an error message.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id)
            .field("snis", &self.snis)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// An ACME HTTP-01 challenge the data plane answers (RFC 8555, section 8.3): a `GET` of
/// `/.well-known/acme-challenge/<token>` gets `key_authorization` as `text/plain`, before
/// routing and plugins. Pushed by the control plane while it validates a custom domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeChallenge {
    /// base64url characters only, so it is a single path segment.
    pub token: String,
    /// `<token>.<base64url account key thumbprint>`.
    pub key_authorization: String,
}

/// The path prefix of RFC 8555's HTTP-01 challenges.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The route and cluster name a data plane's platform plugins see on every stream (the
/// host's stream identity): the platform layer applies to every route and service alike, so
/// what its plugins key by route or service (rate-limiting's `limit_by: service`) is one key
/// for the whole data plane.
pub const PLATFORM_STREAM: &str = "wasmgate.platform";

/// A platform plugin instance's name on the data plane (its `plugin_name`):
/// `wasmgate.platform.<instance_name>`, else `wasmgate.platform.<name>`. It is never a name
/// the configuration's own plugins get (`wasmgate.plugin.…`), so what a platform instance
/// keeps (rate-limit counters) is its own, and it is the same on every run and reload.
pub fn platform_instance_name(plugin: &Plugin) -> String {
    format!(
        "wasmgate.platform.{}",
        plugin.instance_name.as_deref().unwrap_or(&plugin.name)
    )
}

/// A whole, valid gateway configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub plugins: Vec<Plugin>,
    pub filter_chains: Vec<FilterChain>,
    pub certificates: Vec<Certificate>,
    pub acme_challenges: Vec<AcmeChallenge>,
}

impl Config {
    /// The name a route has on every data plane (Envoy's route name, the `xds.route_name`
    /// property): its Kong name, or `route.<index>` for an unnamed one.
    pub fn route_name(&self, route: usize) -> String {
        match self.routes.get(route) {
            Some(r) if !r.name.is_empty() => r.name.clone(),
            _ => format!("route.{route}"),
        }
    }

    fn service_name(&self, service: usize) -> String {
        match self.services.get(service) {
            Some(s) if !s.name.is_empty() => s.name.clone(),
            _ => format!("service.{service}"),
        }
    }

    /// Where an entity applies, in words: `global`, `service:<name>`, `route:<name>`,
    /// `route:<name>+service:<name>`.
    pub fn scope_label(&self, scope: Scope) -> String {
        match scope {
            Scope::Global => "global".into(),
            Scope::Service(s) => format!("service:{}", self.service_name(s)),
            Scope::Route(r) => format!("route:{}", self.route_name(r)),
            Scope::RouteAndService {
                route: r,
                service: s,
            } => format!(
                "route:{}+service:{}",
                self.route_name(r),
                self.service_name(s)
            ),
        }
    }

    /// The plugin instance's name on every data plane (Envoy's filter name and
    /// `plugin_name`): its Kong `id` when the document has one, else its `instance_name`,
    /// else its plugin name and scope. Each is unique in a configuration, and it survives
    /// edits of the instance's config and of other entities: what a plugin keeps per instance
    /// (rate-limit counters) survives them too, as Kong's counters keyed by route and service
    /// do. The id also survives renaming the plugin's route or service, so Envoy's routes,
    /// which enable filters by name, still enable it on connections a draining listener
    /// serves.
    pub fn plugin_instance_name(&self, plugin: &Plugin) -> String {
        match (&plugin.id, &plugin.instance_name) {
            (Some(id), _) => format!("wasmgate.plugin.{id}"),
            (None, Some(name)) => format!("wasmgate.plugin.{name}"),
            (None, None) => format!(
                "wasmgate.plugin.{}@{}",
                plugin.name,
                self.scope_label(plugin.scope)
            ),
        }
    }

    /// The plugins that run for a request matched to `route` (or none matched), one instance
    /// per plugin name by Kong's precedence, in Kong's execution order (priority, highest
    /// first).
    pub fn plugins_for(&self, route: Option<usize>) -> Vec<&Plugin> {
        let service = route
            .and_then(|r| self.routes.get(r))
            .and_then(|r| r.service);
        let mut chosen: Vec<&Plugin> = Vec::new();
        for plugin in self
            .plugins
            .iter()
            .filter(|p| p.scope.covers(route, service))
        {
            match chosen.iter_mut().find(|c| c.name == plugin.name) {
                Some(current) if plugin.scope.specificity() > current.scope.specificity() => {
                    *current = plugin
                }
                Some(_) => {}
                None => chosen.push(plugin),
            }
        }
        chosen.retain(|p| p.enabled);
        chosen.sort_by_key(|p| std::cmp::Reverse(crate::plugins::priority(&p.name)));
        chosen
    }

    /// The filter-chain filters that run after the plugins: the service's chain, then the
    /// route's.
    pub fn filters_for(&self, route: Option<usize>) -> Vec<&FilterEntry> {
        let service = route
            .and_then(|r| self.routes.get(r))
            .and_then(|r| r.service);
        let mut chains: Vec<&FilterChain> = self
            .filter_chains
            .iter()
            .filter(|c| c.enabled && c.scope.covers(route, service))
            .collect();
        chains.sort_by_key(|c| c.scope.specificity());
        chains
            .into_iter()
            .flat_map(|c| c.filters.iter().filter(|f| f.enabled))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_declarative;

    #[test]
    fn a_certificate_never_shows_its_key() {
        let certificate = Certificate {
            id: "c1".into(),
            cert: "-----BEGIN CERTIFICATE-----".into(),
            key: "-----BEGIN PRIVATE KEY-----\nsecret".into(),
            snis: vec!["api.example.test".into()],
            tags: vec![],
        };
        let shown = format!("{certificate:?}");
        assert!(shown.contains("api.example.test"), "{shown}");
        assert!(
            !shown.contains("secret") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn protocols_name_their_port_tls_and_http_version() {
        let table: Vec<_> = [
            Protocol::Http,
            Protocol::Https,
            Protocol::Grpc,
            Protocol::Grpcs,
        ]
        .into_iter()
        .map(|p| (p.as_str(), p.default_port(), p.is_tls(), p.is_http2()))
        .collect();
        assert_eq!(
            table,
            [
                ("http", 80, false, false),
                ("https", 443, true, false),
                ("grpc", 80, false, true),
                ("grpcs", 443, true, true),
            ]
        );
    }

    const NAMES: &str = r#"
_format_version: "3.0"
services:
  - name: named-service
    url: http://127.0.0.1:1
    routes:
      - name: named-route
        paths: [/a]
  - url: http://127.0.0.1:2
    routes:
      - paths: [/b]
"#;

    /// Unnamed entities are named by their index, on every data plane alike.
    #[test]
    fn scopes_and_instances_are_named_by_kong_name_or_index() {
        let config = parse_declarative(NAMES).unwrap();
        assert_eq!(config.route_name(0), "named-route");
        assert_eq!(config.route_name(1), "route.1");
        assert_eq!(config.scope_label(Scope::Global), "global");
        assert_eq!(
            config.scope_label(Scope::Service(0)),
            "service:named-service"
        );
        assert_eq!(config.scope_label(Scope::Service(1)), "service:service.1");
        assert_eq!(config.scope_label(Scope::Route(1)), "route:route.1");
        assert_eq!(
            config.scope_label(Scope::RouteAndService {
                route: 0,
                service: 1
            }),
            "route:named-route+service:service.1"
        );
        let plugin = |instance_name: Option<&str>, scope| Plugin {
            id: None,
            name: "rate-limiting".into(),
            instance_name: instance_name.map(str::to_owned),
            scope,
            config: Value::Null,
            enabled: true,
            tags: Vec::new(),
            wasmgate: Default::default(),
        };
        assert_eq!(
            config.plugin_instance_name(&plugin(Some("gold"), Scope::Global)),
            "wasmgate.plugin.gold"
        );
        assert_eq!(
            config.plugin_instance_name(&plugin(None, Scope::Service(0))),
            "wasmgate.plugin.rate-limiting@service:named-service"
        );
        let identified = Plugin {
            id: Some("4e5b2a0c-8f3b-4a3e-9a7e-1c2d3e4f5a6b".into()),
            ..plugin(Some("gold"), Scope::Service(0))
        };
        assert_eq!(
            config.plugin_instance_name(&identified),
            "wasmgate.plugin.4e5b2a0c-8f3b-4a3e-9a7e-1c2d3e4f5a6b",
            "the id, which renaming the service does not change"
        );
    }

    const LAYERED: &str = r#"
_format_version: "3.0"
services:
  - name: s
    url: http://127.0.0.1:1
    routes:
      - name: r
        paths: [/r]
      - name: other
        paths: [/other]
    plugins:
      - name: rate-limiting
        config: {second: 2}
routes:
  - name: lone
    paths: [/lone]
plugins:
  - name: rate-limiting
    config: {second: 1}
  - name: request-size-limiting
    config: {allowed_payload_size: 1}
  - name: rate-limiting
    route: r
    config: {second: 3}
  - name: request-size-limiting
    route: other
    enabled: false
    config: {allowed_payload_size: 2}
filter_chains:
  - route: other
    filters:
      - name: on-other
  - service: s
    filters:
      - name: on-service
      - name: off
        enabled: false
  - route: r
    filters:
      - name: on-r
  - route: r
    enabled: false
    filters:
      - name: chain-off
"#;

    fn second_limit(plugin: &Plugin) -> &Value {
        &plugin.config["second"]
    }

    /// Kong's precedence: the most specific instance of each plugin runs, in priority order
    /// (request-size-limiting 951 before rate-limiting 910); a disabled most specific
    /// instance turns its plugin off there.
    #[test]
    fn the_most_specific_instance_of_each_plugin_runs_in_priority_order() {
        let config = parse_declarative(LAYERED).unwrap();
        let route = |name: &str| (0..config.routes.len()).find(|&i| config.route_name(i) == name);
        let names = |plugins: Vec<&Plugin>| -> Vec<(String, Value)> {
            plugins
                .into_iter()
                .map(|p| (p.name.clone(), second_limit(p).clone()))
                .collect()
        };
        assert_eq!(
            names(config.plugins_for(route("r"))),
            [
                ("request-size-limiting".into(), Value::Null),
                ("rate-limiting".into(), 3.into())
            ]
        );
        assert_eq!(
            names(config.plugins_for(route("other"))),
            [("rate-limiting".into(), 2.into())]
        );
        assert_eq!(
            names(config.plugins_for(route("lone"))),
            [
                ("request-size-limiting".into(), Value::Null),
                ("rate-limiting".into(), 1.into())
            ]
        );
        assert_eq!(
            names(config.plugins_for(None)),
            [
                ("request-size-limiting".into(), Value::Null),
                ("rate-limiting".into(), 1.into())
            ]
        );
    }

    /// The service's chain, then the route's; disabled chains and filters and other routes'
    /// chains are left out.
    #[test]
    fn filters_run_service_chain_then_route_chain() {
        let config = parse_declarative(LAYERED).unwrap();
        let route = |name: &str| (0..config.routes.len()).find(|&i| config.route_name(i) == name);
        let names = |r: Option<usize>| -> Vec<String> {
            config
                .filters_for(r)
                .into_iter()
                .map(|f| f.name.clone())
                .collect()
        };
        assert_eq!(names(route("r")), ["on-service", "on-r"]);
        assert_eq!(names(route("other")), ["on-service", "on-other"]);
        assert!(names(route("lone")).is_empty());
        assert!(names(None).is_empty());
    }
}
