//! The Envoy translation: the same services, routes and plugins as an Envoy bootstrap, or as
//! the resources of an xDS server ([`discovered_listener`], [`route_configuration`],
//! [`clusters`], [`extension_configs`]); both share every piece below.
//!
//! Routes are emitted in [`Router`]'s order inside one catch-all virtual host, with hosts,
//! methods and headers as header matchers, so Envoy picks the same route the gateway does.
//! Every wasm filter is in a chain, disabled there (`disabled: true`), and enabled per route
//! (`typed_per_filter_config`: a `FilterConfig` with an empty `config`, Envoy's explicit
//! enable) where Kong's precedence picks that plugin instance. A route runs only the filters
//! it names, so a plugin on one service never touches another, also where a listener and the
//! routes come from different versions: connections still on a draining listener's filters
//! take the new routes (one route configuration by RDS), and a filter those routes do not name
//! stays off. Filters are named by plugin instance ([`Config::plugin_instance_name`]), never
//! by position, so a name means the same plugin in every version. Per-route enabling is keyed
//! by filter name, so it works the same for filters whose config comes by ECDS, and for
//! upstream filters (tests/envoy checks both on Envoy 1.40).
//!
//! Two chains: the listener's (downstream, before routing) and the router's
//! `upstream_http_filters` (after routing, once per upstream attempt). The request-transformer
//! runs upstream ([`runs_upstream`]): Kong's `replace.uri` is the whole upstream path and a
//! replaced `host` the upstream Host, while in the downstream chain every request-header
//! change of a proxy-wasm 0.2.1 filter clears Envoy's route cache, so the router would match
//! the rewritten `:path`/`:authority` again (another route, or `no-route`) and apply that
//! route's `regex_rewrite`/`host_rewrite_literal` on top. Upstream, the route is settled and
//! its rewrites are done: what the filter sets is what the service gets. The translation
//! configures no retries and Envoy ignores a client's `x-envoy-retry-on` (no client address is
//! internal), so it runs once per request; a retry would run it again on the headers it had
//! already changed. Secrets reach modules through
//! `vm_config.environment_variables.host_env_keys`: they are read from Envoy's own environment
//! and never written into the bootstrap.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::entities::{Certificate, Config, FailurePolicy, ACME_CHALLENGE_PREFIX};
use crate::plugins;
use crate::router::{Candidate, Router};

pub const V8: &str = "envoy.wasm.runtime.v8";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
/// The type of every wasm filter's config (also ECDS's `type_urls`).
pub const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The terminal filter of the router's upstream filters.
pub const UPSTREAM_CODEC: &str =
    "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec";
/// The gateway listener's name, also the name of its route configuration.
pub const LISTENER: &str = "wasmgate";
/// The TLS listener's name (custom domains: Kong's `certificates` and their `snis`).
pub const TLS_LISTENER: &str = "wasmgate.tls";
const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const DOWNSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// What the TLS listener offers in ALPN, as `gateway`'s: HTTP/2 first.
const ALPN: [&str; 2] = ["h2", "http/1.1"];
pub use crate::plugins::CLIENT_HOST_HEADER;

/// The CA bundle Envoy checks the certificates of `tls_verify` services against when the
/// options name none ([`EnvoyOptions::upstream_ca_file`]): the system's, where Debian and
/// Ubuntu (Envoy's images) and Alpine keep it. Envoy 1.40 has no working "system trust store"
/// setting: `CertificateValidationContext.system_root_certs` is parsed but is
/// `[#not-implemented-hide:]` (it is gRPC's), and a validation context with only it checks
/// nothing, so the bundle is named as `trusted_ca`. (A missing file fails Envoy's start-up or
/// the cluster's update, never opens the check.)
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Kong's answer when no route matches.
pub const NO_ROUTE_BODY: &str = r#"{"message":"no Route matched with those values"}"#;

#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where wasmgate's plugin modules are.
    pub modules_dir: PathBuf,
    /// Where filter_chains modules are (`<name>.wasm`).
    pub filters_dir: Option<PathBuf>,
    pub runtime: String,
    /// Names of Envoy's environment variables the modules may read (secrets).
    pub env_allow: Vec<String>,
    /// Values written into the bootstrap itself (tests; prefer `env_allow` for secrets).
    pub env_values: Vec<(String, String)>,
    /// The CA certificates (PEM, on Envoy's host) that must have signed the certificate of a
    /// `tls_verify` service; `None`: the system bundle, [`SYSTEM_CA_FILE`].
    pub upstream_ca_file: Option<PathBuf>,
}

/// One wasm filter instance in the chain.
struct FilterSlot {
    /// The HTTP filter's name in the chain, unique there (per-route configs refer to it).
    name: String,
    /// The Wasm plugin's name (PluginConfig `name`, the `plugin_name` property).
    plugin_name: String,
    root_id: String,
    vm_id: String,
    module: PathBuf,
    configuration: String,
    /// Envoy's `allow_on_headers_stop_iteration`: wasmgate's plugins are written for it (the
    /// request-transformer's `hold_headers` needs it, the others only stop to answer);
    /// third-party filters get Envoy's default.
    allow_on_headers_stop_iteration: bool,
    /// In the router's upstream filters rather than the listener's chain ([`runs_upstream`]).
    upstream: bool,
    failure_policy: FailurePolicy,
}

/// Envoy's `failure_policy` for the entity's. Closed is FAIL_RELOAD, not FAIL_CLOSED: both
/// answer the failing stream 503, but FAIL_CLOSED then answers 503 on that worker for good,
/// while FAIL_RELOAD starts a fresh VM, as the gateway does. Open is FAIL_OPEN, which in
/// Envoy 1.40 still answers 503 to the stream whose callback failed, then skips the filter on
/// that worker until the next configuration (no fresh VM); the gateway lets the failing
/// stream go on without the filter and starts a fresh instance (tests/envoy/failure_policy.rs).
/// The budgets and memory limits of the block have no Envoy equivalent and are not
/// translated.
fn envoy_failure_policy(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::FailClosed => "FAIL_RELOAD",
        FailurePolicy::FailOpen => "FAIL_OPEN",
    }
}

/// Whether a wasmgate plugin runs as an upstream filter of the router: the
/// request-transformer, whose `:path` and Host changes must be final (Kong's `set_path` and
/// `upstream_host`: no second routing, no second strip_path or service path). Upstream, it
/// still sees `xds.route_name` (its `uri_captures` routes), the request headers as the router
/// sends them (after the route's path and Host rewrites) and the body, and it can answer
/// locally; the other plugins decide without rewriting the request and stay downstream, before
/// the router (Kong runs them before the transformer too).
pub fn runs_upstream(plugin: &str) -> bool {
    plugin == plugins::REQUEST_TRANSFORMER.name
}

/// The VM of a wasmgate plugin: one per module, so all instances of a plugin share its
/// shared data (each keeps its state under its own instance name).
pub fn plugin_vm_id(plugin: &str) -> String {
    format!("wasmgate.{plugin}")
}

fn filter_slots(
    config: &Config,
    options: &EnvoyOptions,
) -> (Vec<FilterSlot>, Vec<Option<usize>>, Vec<Vec<usize>>) {
    // Plugins in Kong's execution order; plugin index → slot.
    let mut order: Vec<usize> = (0..config.plugins.len())
        .filter(|&i| config.plugins[i].enabled)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plugins::priority(&config.plugins[i].name)));
    let mut slots = Vec::new();
    let mut plugin_slot = vec![None; config.plugins.len()];
    for i in order {
        let plugin = &config.plugins[i];
        let file = plugins::find(&plugin.name)
            .map_or_else(|| format!("{}.wasm", plugin.name), |p| p.module_file());
        plugin_slot[i] = Some(slots.len());
        let name = config.plugin_instance_name(plugin);
        slots.push(FilterSlot {
            plugin_name: name.clone(),
            name,
            root_id: plugin.name.clone(),
            // One VM per plugin module per worker; each instance has its own root context
            // (Envoy keys them by root id and configuration).
            vm_id: plugin_vm_id(&plugin.name),
            module: options.modules_dir.join(file),
            configuration: plugins::configuration(config, plugin),
            allow_on_headers_stop_iteration: true,
            upstream: runs_upstream(&plugin.name),
            failure_policy: plugin.wasmgate.failure_policy,
        });
    }
    let filters_dir = options
        .filters_dir
        .clone()
        .unwrap_or_else(|| options.modules_dir.clone());
    // Chains in the gateway's order on every route ([`Config::filters_for`]): service chains,
    // then route chains, each in declaration order; chain index → its filters' slots.
    let mut chains: Vec<usize> = (0..config.filter_chains.len()).collect();
    chains.sort_by_key(|&c| config.filter_chains[c].scope.specificity());
    let mut chain_slots = vec![Vec::new(); config.filter_chains.len()];
    for c in chains {
        let chain = &config.filter_chains[c];
        for (f, filter) in chain.filters.iter().enumerate() {
            chain_slots[c].push(slots.len());
            slots.push(FilterSlot {
                name: format!("wasmgate.chain.{c}.{f}.{}", filter.name),
                plugin_name: filter.plugin_name.clone(),
                root_id: filter.root_id.clone(),
                vm_id: format!("wasmgate.chain.{c}.{f}"),
                module: filters_dir.join(format!("{}.wasm", filter.name)),
                configuration: filter.config.clone().unwrap_or_default(),
                allow_on_headers_stop_iteration: filter.allow_on_headers_stop_iteration,
                upstream: false,
                failure_policy: filter.wasmgate.failure_policy,
            });
        }
    }
    (slots, plugin_slot, chain_slots)
}

/// The `envoy.extensions.filters.http.wasm.v3.Wasm` config of one filter slot; `code` is its
/// `vm_config.code` (a file for a static bootstrap, inline bytes over xDS).
fn wasm_config(slot: &FilterSlot, options: &EnvoyOptions, code: Value) -> Value {
    let wanted = plugins::secret_variables(&slot.configuration);
    json!({
        "@type": WASM,
        "config": {
            "name": slot.plugin_name,
            "root_id": slot.root_id,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": slot.configuration,
            },
            "failure_policy": envoy_failure_policy(slot.failure_policy),
            "allow_on_headers_stop_iteration": slot.allow_on_headers_stop_iteration,
            "vm_config": {
                "vm_id": slot.vm_id,
                "runtime": options.runtime,
                "code": code,
                // Only the secrets this filter's own configuration references.
                "environment_variables": {
                    "host_env_keys": options
                        .env_allow
                        .iter()
                        .filter(|name| wanted.contains(name))
                        .collect::<Vec<_>>(),
                    "key_values": options
                        .env_values
                        .iter()
                        .filter(|(k, _)| wanted.contains(k))
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect::<Map<String, Value>>(),
                },
            },
        },
    })
}

/// The router, with `upstream` as its upstream HTTP filters (then the upstream codec, which
/// must be last). They apply to every cluster, as no cluster sets its own
/// `HttpProtocolOptions.http_filters`.
fn router_filter(upstream: Vec<Value>) -> Value {
    let mut router =
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"});
    if !upstream.is_empty() {
        let mut filters = upstream;
        filters.push(json!({
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {"@type": UPSTREAM_CODEC},
        }));
        router["upstream_http_filters"] = Value::Array(filters);
    }
    json!({"name": "envoy.filters.http.router", "typed_config": router})
}

/// The listener's chain: the downstream filters, then the router with the upstream ones;
/// every wasm filter off unless a route enables it ([`enabled_filters`]).
fn chain(slots: &[FilterSlot], filter: impl Fn(&FilterSlot) -> Value) -> Vec<Value> {
    let off = |slot: &FilterSlot| {
        let mut filter = filter(slot);
        filter["disabled"] = json!(true);
        filter
    };
    let (upstream, downstream): (Vec<&FilterSlot>, Vec<&FilterSlot>) =
        slots.iter().partition(|slot| slot.upstream);
    let mut filters: Vec<Value> = downstream.into_iter().map(off).collect();
    filters.push(router_filter(upstream.into_iter().map(off).collect()));
    filters
}

/// The HTTP filters: every downstream wasm filter, then the router with the upstream ones.
pub fn http_filters(config: &Config, options: &EnvoyOptions) -> Vec<Value> {
    let (slots, _, _) = filter_slots(config, options);
    chain(&slots, |slot| {
        let code = json!({"local": {"filename": slot.module.to_string_lossy()}});
        json!({"name": slot.name, "typed_config": wasm_config(slot, options, code)})
    })
}

/// The HTTP filters for xDS: as [`http_filters`], every wasm filter (downstream or upstream)
/// by extension config discovery (ECDS, over the same ADS stream; the resource name is the
/// filter name). Envoy keeps the listener warming until each filter's config has arrived.
pub fn discovered_http_filters(config: &Config, options: &EnvoyOptions) -> Vec<Value> {
    let (slots, _, _) = filter_slots(config, options);
    chain(&slots, |slot| {
        json!({
            "name": slot.name,
            "config_discovery": {
                "config_source": {"ads": {}, "resource_api_version": "V3"},
                "type_urls": [WASM],
            },
        })
    })
}

/// One wasm module an ECDS resource needs: the file a static bootstrap would load.
pub struct WasmModule<'a> {
    /// The filter (and ECDS resource) name.
    pub filter: &'a str,
    pub path: &'a Path,
}

/// The ECDS resources (`envoy.config.core.v3.TypedExtensionConfig`, named like their filter)
/// for [`discovered_http_filters`]; `code` gives each module's `vm_config.code` (over xDS:
/// `{"local": {"inline_bytes": ...}}`), or an error naming what is missing.
pub fn extension_configs<E>(
    config: &Config,
    options: &EnvoyOptions,
    mut code: impl FnMut(&WasmModule) -> Result<Value, E>,
) -> Result<Vec<Value>, E> {
    let (slots, _, _) = filter_slots(config, options);
    slots
        .iter()
        .map(|slot| {
            let code = code(&WasmModule {
                filter: &slot.name,
                path: &slot.module,
            })?;
            Ok(json!({"name": slot.name, "typed_config": wasm_config(slot, options, code)}))
        })
        .collect()
}

/// The cluster name of a service.
pub fn cluster_name(config: &Config, service: usize) -> String {
    match config.services.get(service) {
        Some(s) if !s.name.is_empty() => format!("service.{}", s.name),
        _ => format!("service.{service}"),
    }
}

pub fn clusters(config: &Config, options: &EnvoyOptions) -> Vec<Value> {
    config
        .services
        .iter()
        .enumerate()
        .map(|(i, service)| {
            // An IPv6 literal is kept in brackets (`[::1]`, as in a URL and a Host header);
            // Envoy's socket address is the bare address.
            let address = service
                .host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(&service.host);
            let ip = address.parse::<IpAddr>().ok();
            let name = cluster_name(config, i);
            let mut cluster = json!({
                "name": name,
                "type": if ip.is_some() { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": format!("{}s", service.connect_timeout_ms as f64 / 1000.0),
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": address,
                        "port_value": service.port,
                    }}}}]}],
                },
            });
            // HTTP/1.1 upstreams get trailers as in `gateway` (see `connection_manager`).
            let http_config = if service.protocol.is_http2() {
                json!({"http2_protocol_options": {}})
            } else {
                json!({"http_protocol_options": {"enable_trailers": true}})
            };
            cluster["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": http_config,
                },
            });
            if service.protocol.is_tls() {
                cluster["transport_socket"] = json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": upstream_tls_context(service, ip, options),
                });
            }
            cluster
        })
        .collect()
}

/// The TLS of an `https`/`grpcs` service, as the gateway's rustls client does it. SNI is the
/// host only when it is a DNS name: RFC 6066 §3 forbids IP literals there, and Kong and rustls
/// send none. With `tls_verify` (Kong's default is off: no validation context, any certificate
/// is accepted), the certificate must chain to the trusted CAs and name the host: a DNS SAN
/// matching the name (Envoy's DNS matching takes the certificate's wildcards), or an IP SAN
/// equal to the address. (The host is fixed per cluster, so the names are written out rather
/// than left to `auto_sni_san_validation`, which has no SNI to check an IP address against.)
fn upstream_tls_context(
    service: &crate::entities::Service,
    ip: Option<IpAddr>,
    options: &EnvoyOptions,
) -> Value {
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    });
    if ip.is_none() {
        context["sni"] = json!(service.host);
    }
    if service.tls_verify {
        let trusted = options
            .upstream_ca_file
            .as_deref()
            .unwrap_or(Path::new(SYSTEM_CA_FILE));
        let san = match ip {
            Some(ip) => json!({"san_type": "IP_ADDRESS", "matcher": {"exact": ip.to_string()}}),
            None => json!({
                "san_type": "DNS",
                "matcher": {"exact": service.host, "ignore_case": true},
            }),
        };
        context["common_tls_context"] = json!({"validation_context": {
            "trusted_ca": {"filename": trusted.to_string_lossy()},
            "match_typed_subject_alt_names": [san],
        }});
    }
    context
}

fn regex_escape(text: &str) -> String {
    regex::escape(text)
}

/// A Kong (PCRE) regex in RE2 syntax: named groups as `(?P<name>...)`.
fn to_re2(kong: &str) -> String {
    kong.replace("(?<", "(?P<")
        .replace("(?P<=", "(?<=")
        .replace("(?P<!", "(?<!")
}

fn host_regex(hosts: &[String]) -> String {
    let alternatives: Vec<String> = hosts
        .iter()
        .map(|h| {
            let port = if h.contains(':') { "" } else { "(:[0-9]+)?" };
            if let Some(suffix) = h.strip_prefix('*') {
                format!("[^:/]+{}{port}", regex_escape(suffix))
            } else if let Some(prefix) = h.strip_suffix('*') {
                format!("{}[^:/]+{port}", regex_escape(prefix))
            } else {
                format!("{}{port}", regex_escape(h))
            }
        })
        .collect();
    format!("(?i)({})", alternatives.join("|"))
}

fn header_matchers(candidate: &Candidate) -> Vec<Value> {
    let mut matchers = Vec::new();
    if !candidate.hosts().is_empty() {
        matchers.push(json!({
            "name": ":authority",
            "string_match": {"safe_regex": {"regex": host_regex(candidate.hosts())}},
        }));
    }
    if !candidate.methods().is_empty() {
        let methods: Vec<String> = candidate
            .methods()
            .iter()
            .map(|m| regex_escape(m))
            .collect();
        matchers.push(json!({
            "name": ":method",
            "string_match": {"safe_regex": {"regex": methods.join("|")}},
        }));
    }
    for (name, values) in candidate.headers() {
        let values: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
        matchers.push(json!({
            "name": name,
            "string_match": {"safe_regex": {"regex": format!("(?i)({})", values.join("|"))}},
        }));
    }
    matchers
}

/// The route configuration: one virtual host, the ACME challenges' answers
/// ([`acme_challenge_routes`]), routes in Kong's order, then Kong's 404.
pub fn route_configuration(config: &Config, options: &EnvoyOptions, name: &str) -> Value {
    let (slots, plugin_slot, chain_slots) = filter_slots(config, options);
    let router = Router::new(config);
    let mut routes = acme_challenge_routes(config);
    for candidate in router.candidates() {
        let route = &config.routes[candidate.route];
        let route_name = config.route_name(candidate.route);
        // Which filters run here: the plugin instances Kong would pick, then the chains; every
        // other filter stays off on this route.
        let mut enabled = vec![false; slots.len()];
        for plugin in config.plugins_for(Some(candidate.route)) {
            let index = config.plugins.iter().position(|p| std::ptr::eq(p, plugin));
            if let Some(slot) = index.and_then(|i| plugin_slot[i]) {
                enabled[slot] = true;
            }
        }
        for (c, chain) in config.filter_chains.iter().enumerate() {
            if chain.enabled && chain.scope.covers(Some(candidate.route), route.service) {
                for (f, filter) in chain.filters.iter().enumerate() {
                    enabled[chain_slots[c][f]] = filter.enabled;
                }
            }
        }
        let per_filter = enabled_filters(&slots, &enabled);
        // The transformer runs after the router's Host rewrite: the client's Host reaches it
        // in a header the router sets before rewriting (a client's own copy is overwritten).
        let hands_over_host = slots.iter().zip(&enabled).any(|(slot, on)| {
            *on && slot.upstream && slot.root_id == plugins::REQUEST_TRANSFORMER.name
        });
        // An https-only route takes only what came over TLS: on this cleartext listener, what
        // a trusted proxy says it ended TLS for (Envoy sets `x-forwarded-proto` to the
        // connection's scheme for everyone else, before routing).
        let matcher = |path: Value| {
            let mut matcher = with_header_matchers(path, candidate);
            if route.https_only {
                let headers = matcher
                    .as_object_mut()
                    .map(|m| m.entry("headers").or_insert_with(|| json!([])));
                if let Some(Value::Array(headers)) = headers {
                    headers.push(json!({
                        "name": "x-forwarded-proto",
                        "string_match": {"exact": "https"},
                    }));
                }
            }
            matcher
        };
        let refusal = route.https_only.then(|| {
            https_refusal(
                &route_name,
                with_header_matchers(path_match(candidate), candidate),
                route.https_redirect_status_code,
            )
        });
        let Some(service_index) = route.service else {
            // Kong answers a route without a service with 503, once the route has matched:
            // on its hosts, methods and headers too.
            routes.push(json!({
                "name": route_name,
                "match": matcher(path_match(candidate)),
                "direct_response": {"status": 503, "body": {"inline_string": r#"{"message":"no Service found with those values"}"#}},
                "typed_per_filter_config": per_filter,
            }));
            routes.extend(refusal);
            continue;
        };
        let service = &config.services[service_index];
        let mut action = json!({
            "cluster": cluster_name(config, service_index),
            "timeout": "0s",
            "idle_timeout": format!("{}s", service.read_timeout_ms as f64 / 1000.0),
        });
        if !route.preserve_host {
            action["host_rewrite_literal"] = json!(service.authority());
        }
        let base = service.path.as_deref().filter(|p| *p != "/");
        let joined = base.map_or("/".to_owned(), |b| format!("{}/", b.trim_end_matches('/')));
        let rewrite = |action: &mut Value, pattern: String, substitution: String| {
            action["regex_rewrite"] =
                json!({"pattern": {"regex": pattern}, "substitution": substitution});
        };
        let mut variants = Vec::new();
        match (route.strip_path, candidate.prefix(), candidate.regex()) {
            (true, Some(prefix), _) => {
                // The exact prefix maps to the service path itself; longer paths keep their rest.
                let mut exact = action.clone();
                rewrite(&mut exact, "^.*$".into(), base.unwrap_or("/").to_owned());
                variants.push((json!({"path": prefix}), exact));
                let mut longer = action.clone();
                rewrite(
                    &mut longer,
                    format!("^{}/?", regex_escape(prefix)),
                    joined.clone(),
                );
                variants.push((json!({"prefix": prefix}), longer));
            }
            (true, None, Some(regex)) => {
                // As for prefixes: a match that is the whole path leaves nothing to join, so
                // the upstream path is the service path itself (`/base`, not `/base/`).
                // (RE2 matches the whole path if any alternative can; Kong's PCRE takes the
                // first that matches. They differ only for a regex whose earlier alternative
                // is a prefix of a later one.)
                let mut exact = action.clone();
                rewrite(&mut exact, "^.*$".into(), base.unwrap_or("/").to_owned());
                variants.push((
                    json!({"safe_regex": {"regex": format!("(?:{})", to_re2(regex))}}),
                    exact,
                ));
                let mut stripped = action.clone();
                rewrite(
                    &mut stripped,
                    format!("^(?:{})/?", to_re2(regex)),
                    joined.clone(),
                );
                variants.push((path_match(candidate), stripped));
            }
            _ => {
                if base.is_some() {
                    rewrite(&mut action, "^/".into(), joined.clone());
                }
                variants.push((path_match(candidate), action));
            }
        }
        for (path, action) in variants {
            let mut entry = json!({
                "name": route_name,
                "match": matcher(path),
                "route": action,
                "typed_per_filter_config": per_filter,
            });
            if hands_over_host {
                entry["request_headers_to_add"] = json!([{
                    "header": {
                        "key": CLIENT_HOST_HEADER,
                        "value": "%REQ(:AUTHORITY)%",
                    },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }]);
            }
            routes.push(entry);
        }
        routes.extend(refusal);
    }
    routes.push(json!({
        "name": "no-route",
        "match": {"prefix": "/"},
        "typed_per_filter_config": {},
        "direct_response": {"status": 404, "body": {"inline_string": NO_ROUTE_BODY}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json; charset=utf-8"}}],
    }));
    // Route-less answers are Kong's JSON too.
    for route in routes.iter_mut() {
        if route.get("direct_response").is_some() && route.get("response_headers_to_add").is_none()
        {
            route["response_headers_to_add"] = json!([{"header": {"key": "content-type", "value": "application/json; charset=utf-8"}}]);
        }
    }
    json!({
        "name": name,
        "virtual_hosts": [{"name": "wasmgate", "domains": ["*"], "routes": routes}],
    })
}

/// RFC 8555's HTTP-01 answers, ahead of every route: a `GET` or `HEAD` of exactly
/// `/.well-known/acme-challenge/<token>` gets the key authorization, whatever the Host, on
/// the plain and the TLS listener (one route configuration). A `path` match is the path
/// without its query string, as the ACME server's request may carry none but a client's may.
/// No filter is enabled on these routes, so no plugin (a rate limit) stands between the ACME
/// server and the answer; an unknown token or another method falls through to the routes.
fn acme_challenge_routes(config: &Config) -> Vec<Value> {
    config
        .acme_challenges
        .iter()
        .map(|challenge| {
            json!({
                "name": "acme-challenge",
                "match": {
                    "path": format!("{ACME_CHALLENGE_PREFIX}{}", challenge.token),
                    "headers": [{
                        "name": ":method",
                        "string_match": {"safe_regex": {"regex": "GET|HEAD"}},
                    }],
                },
                "direct_response": {
                    "status": 200,
                    "body": {"inline_string": challenge.key_authorization},
                },
                // Overwritten, not added: Envoy's local replies carry their own content type.
                "response_headers_to_add": [{
                    "header": {"key": "content-type", "value": "text/plain"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }],
                "typed_per_filter_config": {},
            })
        })
        .collect()
}

/// Kong's answer to a cleartext request on an https-only route, before any plugin: 426 with
/// an `Upgrade` to TLS, or a redirect to the same URL over https.
fn https_refusal(route_name: &str, matcher: Value, status: u16) -> Value {
    let mut entry = json!({
        "name": route_name,
        "match": matcher,
        "typed_per_filter_config": {},
    });
    let redirect = match status {
        301 => Some("MOVED_PERMANENTLY"),
        302 => Some("FOUND"),
        307 => Some("TEMPORARY_REDIRECT"),
        308 => Some("PERMANENT_REDIRECT"),
        _ => None,
    };
    match redirect {
        Some(code) => {
            // Kong's Location has no port (nginx's `$host`); Envoy's keeps the request's unless
            // told one, and writes the one it is told: https's own is the same URL.
            entry["redirect"] =
                json!({"https_redirect": true, "port_redirect": 443, "response_code": code});
        }
        None => {
            entry["direct_response"] = json!({
                "status": 426,
                "body": {"inline_string": r#"{"message":"Please use HTTPS protocol"}"#},
            });
            // Kong's `Upgrade: TLS/1.2, HTTP/1.1` cannot go along: Envoy's codecs drop
            // `upgrade` and `connection` from any response but a 101.
            entry["response_headers_to_add"] = json!([
                {"header": {"key": "content-type", "value": "application/json; charset=utf-8"}},
            ]);
        }
    }
    entry
}

/// A route's `typed_per_filter_config`: the filters it runs, each enabled by a `FilterConfig`
/// whose `config` is present and empty (Envoy's explicit enable; a `FilterConfig` without
/// `config` is refused, and one with a typed config needs per-route support the Wasm filter
/// does not have).
fn enabled_filters(slots: &[FilterSlot], enabled: &[bool]) -> Map<String, Value> {
    slots
        .iter()
        .zip(enabled)
        .filter(|(_, on)| **on)
        .map(|(slot, _)| {
            (
                slot.name.clone(),
                json!({"@type": FILTER_CONFIG, "config": {}}),
            )
        })
        .collect()
}

/// A route's `match`: its path matcher, and the candidate's hosts, methods and headers.
fn with_header_matchers(mut matcher: Value, candidate: &Candidate) -> Value {
    let headers = header_matchers(candidate);
    if !headers.is_empty() {
        matcher["headers"] = json!(headers);
    }
    matcher
}

fn path_match(candidate: &Candidate) -> Value {
    match (candidate.prefix(), candidate.regex()) {
        (Some(prefix), _) => json!({"prefix": prefix}),
        (None, Some(regex)) => json!({"safe_regex": {"regex": format!("(?:{}).*", to_re2(regex))}}),
        _ => json!({"prefix": "/"}),
    }
}

fn connection_manager(routes: (&str, Value), http_filters: Vec<Value>) -> Value {
    let mut manager = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "wasmgate",
        "codec_type": "AUTO",
        "use_remote_address": true,
        "proxy_100_continue": true,
        // Kong (and `gateway`) route on the normalised path and send it upstream: dot
        // segments resolved, unreserved escapes decoded, slashes merged.
        "normalize_path": true,
        "merge_slashes": true,
        // An escaped slash (%2F) is no separator for routing and goes upstream as sent: in
        // `gateway` only unreserved escapes are decoded (proxy/path.rs), as in Kong.
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        // `gateway --client-header-timeout`'s default (nginx's and Kong's
        // `client_header_timeout`).
        "request_headers_timeout": "60s",
        // `gateway --keepalive-timeout`'s default (nginx's and Kong's `keepalive_timeout`;
        // Envoy's own is an hour), and the 100 headers `gateway` takes (Envoy's default,
        // stated).
        "common_http_protocol_options": {"idle_timeout": "60s", "max_headers_count": 100},
        // HTTP/1.1 trailers reach the upstream and come back, as in `gateway` (Envoy's
        // HTTP/1.1 codec drops them unless told otherwise; HTTP/2 always carries them).
        "http_protocol_options": {"enable_trailers": true},
        // `gateway --http2-keepalive-interval/-timeout`'s defaults: a client gone without a
        // FIN is found by an unanswered PING.
        "http2_protocol_options": {"connection_keepalive": {"interval": "60s", "timeout": "20s"}},
        // `gateway` proxies WebSocket handshakes and refuses other upgrades with 403, as
        // Envoy does for upgrade types it has no config for.
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        // The request id of Kong's error bodies (`request.id`), on every response too, as
        // `gateway` does: a client can quote it.
        "always_set_request_id_in_response": true,
        "http_filters": http_filters,
    });
    manager[routes.0] = routes.1;
    manager
}

/// The HTTP connection manager of the gateway listener.
pub fn http_connection_manager(config: &Config, options: &EnvoyOptions) -> Value {
    connection_manager(
        (
            "route_config",
            route_configuration(config, options, LISTENER),
        ),
        http_filters(config, options),
    )
}

fn listener(options: &EnvoyOptions, manager: Value) -> Value {
    json!({
        "name": LISTENER,
        "address": socket_address(options.listen),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": manager,
        }]}],
    })
}

/// The gateway listener for xDS: its routes by RDS (`route_configuration(.., LISTENER)`) and
/// its wasm filters by ECDS ([`extension_configs`]), both over ADS.
pub fn discovered_listener(config: &Config, options: &EnvoyOptions) -> Value {
    let rds = json!({
        "config_source": {"ads": {}, "resource_api_version": "V3"},
        "route_config_name": LISTENER,
    });
    listener(
        options,
        connection_manager(("rds", rds), discovered_http_filters(config, options)),
    )
}

/// The secret of a certificate: its name in a filter chain's SDS config and as an SDS
/// resource, the same across renewals (a new chain and key under the same id), so that a
/// renewal changes the secret and never the listener.
pub fn secret_name(certificate: &Certificate) -> String {
    format!("wasmgate.certificate.{}", certificate.id)
}

/// A certificate as Envoy's `TlsCertificate`, inline.
fn tls_certificate(certificate: &Certificate) -> Value {
    json!({
        "certificate_chain": {"inline_string": certificate.cert},
        "private_key": {"inline_string": certificate.key},
    })
}

/// The certificates a TLS listener presents: those with at least one SNI (a filter chain
/// without `server_names` would take every connection, and `gateway` reaches a certificate
/// only by its snis too).
fn served_certificates(config: &Config) -> impl Iterator<Item = &Certificate> {
    config.certificates.iter().filter(|c| !c.snis.is_empty())
}

/// The TLS listener on `address`: the `tls_inspector` reads the ClientHello's SNI, and one
/// filter chain per certificate matches its `snis` (Envoy takes an exact name before a
/// `*.` wildcard, as `gateway` does) and ends TLS with it, then runs `manager`, the plain
/// listener's HTTP connection manager (the same routes and filters). A connection whose SNI
/// no chain names, or that has none, matches no chain and Envoy closes it: the handshake
/// fails. `tls` gives a chain's `common_tls_context` its certificate.
///
/// No certificate, no listener: Envoy refuses a listener without filter chains, and a
/// placeholder chain would need a certificate of its own to refuse a handshake with. The
/// port is bound from the first certificate on.
fn tls_listener(
    config: &Config,
    address: SocketAddr,
    manager: &Value,
    tls: impl Fn(&Certificate) -> (&'static str, Value),
) -> Option<Value> {
    let chains: Vec<Value> = served_certificates(config)
        .map(|certificate| {
            let mut common = json!({"alpn_protocols": ALPN});
            let (field, value) = tls(certificate);
            common[field] = value;
            json!({
                "name": secret_name(certificate),
                "filter_chain_match": {"server_names": certificate.snis},
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": manager,
                }],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": DOWNSTREAM_TLS_CONTEXT,
                        "common_tls_context": common,
                    },
                },
            })
        })
        .collect();
    if chains.is_empty() {
        return None;
    }
    Some(json!({
        "name": TLS_LISTENER,
        "address": socket_address(address),
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": TLS_INSPECTOR},
        }],
        "filter_chains": chains,
    }))
}

/// The TLS listener for xDS ([`tls_listener`]): its routes by RDS and filters by ECDS as the
/// plain listener's, each chain's certificate by SDS over ADS, named [`secret_name`] (the
/// resources are [`secrets`]). A renewal changes the secret only: the listener stays as it
/// is and Envoy drains none of its connections.
pub fn discovered_tls_listener(
    config: &Config,
    options: &EnvoyOptions,
    address: SocketAddr,
) -> Option<Value> {
    let rds = json!({
        "config_source": {"ads": {}, "resource_api_version": "V3"},
        "route_config_name": LISTENER,
    });
    let manager = connection_manager(("rds", rds), discovered_http_filters(config, options));
    tls_listener(config, address, &manager, |certificate| {
        (
            "tls_certificate_sds_secret_configs",
            json!([{
                "name": secret_name(certificate),
                "sds_config": {"ads": {}, "resource_api_version": "V3"},
            }]),
        )
    })
}

/// The SDS resources (`envoy.extensions.transport_sockets.tls.v3.Secret`) the chains of
/// [`discovered_tls_listener`] name.
pub fn secrets(config: &Config) -> Vec<Value> {
    served_certificates(config)
        .map(|certificate| {
            json!({
                "name": secret_name(certificate),
                "tls_certificate": tls_certificate(certificate),
            })
        })
        .collect()
}

pub fn socket_address(address: SocketAddr) -> Value {
    json!({"socket_address": {"address": address.ip().to_string(), "port_value": address.port()}})
}

/// A complete static bootstrap, with no TLS listener.
pub fn bootstrap(config: &Config, options: &EnvoyOptions) -> Value {
    bootstrap_with_tls(config, options, None)
}

/// A complete static bootstrap; with `tls_listen`, the TLS listener there too
/// ([`tls_listener`]), its certificates inline (once there is one).
pub fn bootstrap_with_tls(
    config: &Config,
    options: &EnvoyOptions,
    tls_listen: Option<SocketAddr>,
) -> Value {
    let manager = http_connection_manager(config, options);
    let tls = tls_listen.and_then(|address| {
        tls_listener(config, address, &manager, |certificate| {
            ("tls_certificates", json!([tls_certificate(certificate)]))
        })
    });
    let mut listeners = vec![listener(options, manager)];
    listeners.extend(tls);
    json!({
        "admin": {"address": socket_address(options.admin)},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters(config, options),
        },
    })
}

#[cfg(test)]
mod tests;
