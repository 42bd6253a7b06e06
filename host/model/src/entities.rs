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
    pub tags: Vec<String>,
}

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

/// An instance of one of wasmgate's Kong plugins.
#[derive(Clone, Debug, PartialEq)]
pub struct Plugin {
    pub name: String,
    pub instance_name: Option<String>,
    /// The validated config, as the user wrote it (the module applies defaults itself).
    pub config: Value,
    pub enabled: bool,
    pub scope: Scope,
    pub tags: Vec<String>,
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
    /// Passed to the module as-is (a string config) or as JSON text.
    pub config: Option<String>,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FilterChain {
    pub name: Option<String>,
    pub scope: Scope,
    pub enabled: bool,
    pub filters: Vec<FilterEntry>,
    pub tags: Vec<String>,
}

/// A whole, valid gateway configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub plugins: Vec<Plugin>,
    pub filter_chains: Vec<FilterChain>,
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

    /// The plugin instance's name on every data plane (Envoy's `plugin_name`): its Kong
    /// `instance_name`, else its plugin name and scope. Kong allows one instance of a plugin
    /// per scope, so the name is unique, and it survives edits of the instance's config and
    /// of other entities: what a plugin keeps per instance (rate-limit counters) survives
    /// them too, as Kong's counters keyed by route and service do.
    pub fn plugin_instance_name(&self, plugin: &Plugin) -> String {
        match &plugin.instance_name {
            Some(name) => format!("wasmgate.plugin.{name}"),
            None => format!(
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
