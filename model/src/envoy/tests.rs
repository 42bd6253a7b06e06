//! The Envoy translation, pinned: the exact configuration each kind of service, route, plugin
//! and filter chain becomes. (Real Envoy runs these in `tests/envoy`; here every field is
//! checked, so a change to any of them is a decision.)

use super::*;
use crate::parse_declarative;

/// Fixed addresses and folders, and two secrets the data plane may hand out.
fn options() -> EnvoyOptions {
    EnvoyOptions {
        listen: ([127, 0, 0, 1], 8000).into(),
        admin: ([127, 0, 0, 1], 8001).into(),
        modules_dir: PathBuf::from("/wasm"),
        filters_dir: Some(PathBuf::from("/filters")),
        runtime: V8.into(),
        env_allow: vec!["BACKEND_TOKEN".into(), "OTHER_SECRET".into()],
        env_values: vec![
            ("BACKEND_TOKEN".into(), "t0k3n".into()),
            ("OTHER_SECRET".into(), "x".into()),
        ],
        upstream_ca_file: None,
    }
}

fn config(text: &str) -> Config {
    parse_declarative(text).unwrap_or_else(|e| panic!("{e}"))
}

/// Equal JSON, or both shown in full.
#[track_caller]
fn assert_json(actual: &Value, expected: &Value) {
    assert!(
        actual == expected,
        "actual:\n{}\nexpected:\n{}",
        serde_json::to_string_pretty(actual).unwrap(),
        serde_json::to_string_pretty(expected).unwrap()
    );
}

/// The routes of a route configuration.
fn routes(route_configuration: &Value) -> &Vec<Value> {
    route_configuration["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("one virtual host with routes")
}

/// One service, one route, one global plugin: the smallest whole bootstrap.
const ONE_ROUTE: &str = r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://127.0.0.1:8080
    routes:
      - name: r
        paths: [/r]
plugins:
  - name: rate-limiting
    config: {second: 100}
"#;

/// The three plugins, declared against their priority order, the transformer referencing a
/// secret, and a disabled instance (which has no filter at all).
const PLUGINS: &str = r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://echo.test
    routes:
      - name: r
        paths: [/r]
plugins:
  - name: request-transformer
    config: {add: {headers: ["x-token:{vault://env/backend-token}"]}}
  - name: rate-limiting
    config: {second: 100}
  - name: request-size-limiting
    config: {allowed_payload_size: 10}
  - name: request-size-limiting
    route: r
    enabled: false
    config: {allowed_payload_size: 1}
"#;

/// Every kind of service: named or not, IPv4, IPv6 or DNS, each protocol, Kong's timeouts.
const SERVICES: &str = r#"
_format_version: "3.0"
services:
  - name: ip
    url: http://127.0.0.1:8080
    connect_timeout: 1500
  - url: https://secure.test
  - name: g
    url: grpc://grpc.test:9000
    connect_timeout: 1
  - name: gs
    url: grpcs://grpcs.test
  - name: v6
    url: http://[::1]:8081/p
"#;

/// Routes of every shape: stripped or kept prefixes and regexes, a service path with and
/// without its trailing slash or only `/`, preserve_host, hosts (exact, wildcards, a port),
/// methods, headers, and routes without a service.
const ROUTING: &str = r#"
_format_version: "3.0"
services:
  - name: based
    url: http://api.test:8080/base/
    routes:
      - name: strip-prefix
        paths: [/a.b]
      - name: strip-regex
        paths: ["~/v(?<n>\\d+)$"]
      - name: keep
        strip_path: false
        preserve_host: true
        paths: [/keep, "~/k/\\d+"]
      - name: any-path
        hosts: [based.test]
  - url: https://secure.test/base
    read_timeout: 250
    routes:
      - name: hosted
        hosts: [exact.test, "*.wild.test", "pre.*", "port.test:8443"]
        methods: [GET, POST]
        headers: {x-version: ["v1", "a.b"]}
      - name: root
        paths: [/root, "~/re"]
  - name: slash
    url: http://slash.test/
    routes:
      - name: s
        paths: [/s]
        methods: [PUT]
routes:
  - name: lonely
    paths: [/lonely, "~/lone/\\d+"]
  - name: hostonly
    hosts: [only.test]
    methods: [DELETE]
    headers: {x-a: [b]}
"#;

/// Plugins and filter chains on different scopes: a route's transformer, a service's rate
/// limit, a disabled route instance, a route chain declared before its service's chain, a
/// disabled chain and filter, a third-party filter whose root id is the transformer's.
const SCOPES: &str = r#"
_format_version: "3.0"
services:
  - name: a
    url: http://a.test
    routes:
      - name: a1
        paths: [/a1]
        strip_path: false
        plugins:
          - name: request-transformer
            config: {add: {headers: ["x-a1:1"]}}
      - name: a2
        paths: [/a2]
        strip_path: false
    plugins:
      - name: rate-limiting
        config: {second: 1}
    filter_chains:
      - filters:
          - name: service-filter
            config: {"k": "{vault://env/other-secret}"}
          - name: off
            enabled: false
  - name: b
    url: http://b.test
    routes:
      - name: b1
        paths: [/b1]
        strip_path: false
        filter_chains:
          - filters:
              - name: sdk
                root_id: request-transformer
                plugin_name: lookalike
                config: plain text
routes:
  - name: orphan
    hosts: [orphan.test]
plugins:
  - name: request-size-limiting
    config: {allowed_payload_size: 1}
  - name: rate-limiting
    route: a2
    enabled: false
    config: {second: 2}
filter_chains:
  - route: a1
    filters:
      - name: route-filter
  - route: a2
    enabled: false
    filters:
      - name: disabled-chain
"#;

/// The whole static bootstrap: the admin address, one listener with the connection manager
/// (its routes inline, the plugin's wasm filter, the router), and one cluster per service.
#[test]
fn the_bootstrap_is_the_admin_one_listener_and_the_clusters() {
    let config = config(ONE_ROUTE);
    let rate_limiting = json!({
        "name": "wasmgate.plugin.rate-limiting@global",
        "disabled": true,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": "{\"second\":100}"
                },
                "failure_policy": "FAIL_RELOAD",
                "name": "wasmgate.plugin.rate-limiting@global",
                "root_id": "rate-limiting",
                "vm_config": {
                    "code": {"local": {"filename": "/wasm/rate_limiting.wasm"}},
                    "environment_variables": {"host_env_keys": [], "key_values": {}},
                    "runtime": "envoy.wasm.runtime.v8",
                    "vm_id": "wasmgate.rate-limiting"
                }
            }
        }
    });
    let routes = json!([
        {
            "match": {"path": "/r"},
            "name": "r",
            "route": {
                "cluster": "service.echo",
                "host_rewrite_literal": "127.0.0.1:8080",
                "idle_timeout": "60s",
                "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/"},
                "timeout": "0s"
            },
            "typed_per_filter_config": {
                "wasmgate.plugin.rate-limiting@global": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                }
            }
        },
        {
            "match": {"prefix": "/r"},
            "name": "r",
            "route": {
                "cluster": "service.echo",
                "host_rewrite_literal": "127.0.0.1:8080",
                "idle_timeout": "60s",
                "regex_rewrite": {"pattern": {"regex": "^/r/?"}, "substitution": "/"},
                "timeout": "0s"
            },
            "typed_per_filter_config": {
                "wasmgate.plugin.rate-limiting@global": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                }
            }
        },
        {
            "direct_response": {
                "body": {
                    "inline_string": "{\"message\":\"no Route matched with those values\"}"
                },
                "status": 404
            },
            "match": {"prefix": "/"},
            "name": "no-route",
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/json; charset=utf-8"}}
            ],
            "typed_per_filter_config": {}
        }
    ]);
    let expected = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8001}}},
        "static_resources": {
            "listeners": [{
                "name": "wasmgate",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "wasmgate",
                        "codec_type": "AUTO",
                        "use_remote_address": true,
                        "proxy_100_continue": true,
                        "normalize_path": true,
                        "merge_slashes": true,
                        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                        "request_headers_timeout": "60s",
                        "common_http_protocol_options": {"idle_timeout": "60s", "max_headers_count": 100},
                        "http_protocol_options": {"enable_trailers": true},
                        "http2_protocol_options": {"connection_keepalive": {"interval": "60s", "timeout": "20s"}},
                        "upgrade_configs": [{"upgrade_type": "websocket"}],
                        "always_set_request_id_in_response": true,
                        "http_filters": [
                            rate_limiting,
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                }
                            }
                        ],
                        "route_config": {
                            "name": "wasmgate",
                            "virtual_hosts": [{"name": "wasmgate", "domains": ["*"], "routes": routes}]
                        }
                    }
                }]}]
            }],
            "clusters": [{
                "name": "service.echo",
                "type": "STATIC",
                "connect_timeout": "60s",
                "load_assignment": {
                    "cluster_name": "service.echo",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1",
                        "port_value": 8080
                    }}}}]}]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                    }
                }
            }]
        }
    });
    let options = options();
    assert_json(&bootstrap(&config, &options), &expected);
    assert_json(
        &http_connection_manager(&config, &options),
        &expected["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"],
    );
    assert_json(
        &socket_address(([10, 0, 0, 1], 9).into()),
        &json!({"socket_address": {"address": "10.0.0.1", "port_value": 9}}),
    );
}

/// Kong's priority order (request-size-limiting 951, rate-limiting 910), whatever the
/// declaration order; the request-transformer (801) runs as an upstream filter of the router,
/// before the upstream codec. Each module gets only the secrets its own configuration names,
/// and the transformer gets the data plane's defaults and its routes' regex paths. A disabled
/// instance has no filter.
#[test]
fn plugins_run_in_kong_priority_order_and_the_transformer_after_routing() {
    assert!(runs_upstream("request-transformer"));
    assert!(!runs_upstream("rate-limiting"));
    assert!(!runs_upstream("request-size-limiting"));
    assert_eq!(plugin_vm_id("rate-limiting"), "wasmgate.rate-limiting");
    let filters = http_filters(&config(PLUGINS), &options());
    assert_json(
        &json!(filters),
        &json!([
            {
                "name": "wasmgate.plugin.request-size-limiting@global",
                "disabled": true,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "allow_on_headers_stop_iteration": true,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": "{\"allowed_payload_size\":10}"
                        },
                        "failure_policy": "FAIL_RELOAD",
                        "name": "wasmgate.plugin.request-size-limiting@global",
                        "root_id": "request-size-limiting",
                        "vm_config": {
                            "code": {"local": {"filename": "/wasm/request_size_limiting.wasm"}},
                            "environment_variables": {"host_env_keys": [], "key_values": {}},
                            "runtime": "envoy.wasm.runtime.v8",
                            "vm_id": "wasmgate.request-size-limiting"
                        }
                    }
                }
            },
            {
                "name": "wasmgate.plugin.rate-limiting@global",
                "disabled": true,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "allow_on_headers_stop_iteration": true,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": "{\"second\":100}"
                        },
                        "failure_policy": "FAIL_RELOAD",
                        "name": "wasmgate.plugin.rate-limiting@global",
                        "root_id": "rate-limiting",
                        "vm_config": {
                            "code": {"local": {"filename": "/wasm/rate_limiting.wasm"}},
                            "environment_variables": {"host_env_keys": [], "key_values": {}},
                            "runtime": "envoy.wasm.runtime.v8",
                            "vm_id": "wasmgate.rate-limiting"
                        }
                    }
                }
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "upstream_http_filters": [
                        {
                            "name": "wasmgate.plugin.request-transformer@global",
                            "disabled": true,
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "allow_on_headers_stop_iteration": true,
                                    "configuration": {
                                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": "{\"add\":{\"headers\":[\"x-token:{vault://env/backend-token}\"]},\"wasmgate\":{\"hold_headers\":true,\"route_paths\":{\"r\":[]}}}"
                                    },
                                    "failure_policy": "FAIL_RELOAD",
                                    "name": "wasmgate.plugin.request-transformer@global",
                                    "root_id": "request-transformer",
                                    "vm_config": {
                                        "code": {
                                            "local": {
                                                "filename": "/wasm/request_transformer.wasm"
                                            }
                                        },
                                        "environment_variables": {
                                            "host_env_keys": ["BACKEND_TOKEN"],
                                            "key_values": {"BACKEND_TOKEN": "t0k3n"}
                                        },
                                        "runtime": "envoy.wasm.runtime.v8",
                                        "vm_id": "wasmgate.request-transformer"
                                    }
                                }
                            }
                        },
                        {
                            "name": "envoy.filters.http.upstream_codec",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                            }
                        }
                    ]
                }
            }
        ]),
    );
}

/// Over xDS the listener takes its routes by RDS and every wasm filter, downstream or
/// upstream, by ECDS; each ECDS resource is the filter's static config with the code the
/// caller gives, and the first missing module is the error.
#[test]
fn over_xds_routes_come_by_rds_and_filters_by_ecds() {
    let config = config(PLUGINS);
    let options = options();
    assert_json(
        &discovered_listener(&config, &options),
        &json!({
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "always_set_request_id_in_response": true,
                                "codec_type": "AUTO",
                                "http_filters": [
                                    {
                                        "config_discovery": {
                                            "config_source": {
                                                "ads": {},
                                                "resource_api_version": "V3"
                                            },
                                            "type_urls": [
                                                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
                                            ]
                                        },
                                        "name": "wasmgate.plugin.request-size-limiting@global",
                                        "disabled": true
                                    },
                                    {
                                        "config_discovery": {
                                            "config_source": {
                                                "ads": {},
                                                "resource_api_version": "V3"
                                            },
                                            "type_urls": [
                                                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
                                            ]
                                        },
                                        "name": "wasmgate.plugin.rate-limiting@global",
                                        "disabled": true
                                    },
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typed_config": {
                                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                                            "upstream_http_filters": [
                                                {
                                                    "config_discovery": {
                                                        "config_source": {
                                                            "ads": {},
                                                            "resource_api_version": "V3"
                                                        },
                                                        "type_urls": [
                                                            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
                                                        ]
                                                    },
                                                    "name": "wasmgate.plugin.request-transformer@global",
                                                    "disabled": true
                                                },
                                                {
                                                    "name": "envoy.filters.http.upstream_codec",
                                                    "typed_config": {
                                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                                                    }
                                                }
                                            ]
                                        }
                                    }
                                ],
                                "common_http_protocol_options": {"idle_timeout": "60s", "max_headers_count": 100},
                                "http_protocol_options": {"enable_trailers": true},
                                "http2_protocol_options": {"connection_keepalive": {"interval": "60s", "timeout": "20s"}},
                                "merge_slashes": true,
                                "normalize_path": true,
                                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                                "proxy_100_continue": true,
                                "request_headers_timeout": "60s",
                                "upgrade_configs": [{"upgrade_type": "websocket"}],
                                "rds": {
                                    "config_source": {"ads": {}, "resource_api_version": "V3"},
                                    "route_config_name": "wasmgate"
                                },
                                "stat_prefix": "wasmgate",
                                "use_remote_address": true
                            }
                        }
                    ]
                }
            ],
            "name": "wasmgate"
        }),
    );
    assert_json(
        &route_configuration(&config, &options, LISTENER)["name"],
        &json!("wasmgate"),
    );

    let mut asked = Vec::new();
    let resources = extension_configs(&config, &options, |module| {
        asked.push((module.filter.to_owned(), module.path.to_owned()));
        Ok::<_, String>(json!({"local": {"inline_bytes": module.filter}}))
    })
    .unwrap();
    assert_eq!(
        asked,
        [
            (
                "wasmgate.plugin.request-size-limiting@global".to_owned(),
                PathBuf::from("/wasm/request_size_limiting.wasm")
            ),
            (
                "wasmgate.plugin.rate-limiting@global".to_owned(),
                PathBuf::from("/wasm/rate_limiting.wasm")
            ),
            (
                "wasmgate.plugin.request-transformer@global".to_owned(),
                PathBuf::from("/wasm/request_transformer.wasm")
            ),
        ]
    );
    // The static filters, with the inline code in place of the file.
    let mut expected: Vec<Value> = http_filters(&config, &options);
    let router = expected.pop().unwrap();
    expected.extend(
        router["typed_config"]["upstream_http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["name"] != "envoy.filters.http.upstream_codec")
            .cloned(),
    );
    for filter in &mut expected {
        let name = filter["name"].clone();
        filter["typed_config"]["config"]["vm_config"]["code"] =
            json!({"local": {"inline_bytes": name}});
        // Off in the chain is the listener's business; the config itself has no such field.
        assert_eq!(
            filter.as_object_mut().unwrap().remove("disabled"),
            Some(json!(true))
        );
    }
    assert_eq!(expected.len(), 3);
    assert_json(&json!(resources), &json!(expected));

    let mut calls = 0;
    let missing = extension_configs(&config, &options, |module| {
        calls += 1;
        if module.filter.contains("rate-limiting") {
            Err(format!("no {}", module.path.display()))
        } else {
            Ok(json!({}))
        }
    });
    assert_eq!(missing, Err("no /wasm/rate_limiting.wasm".to_owned()));
    assert_eq!(calls, 2, "nothing is asked after the first error");
}

/// A service is a cluster named after it (or its index): STATIC for an IP address (an IPv6
/// literal without its brackets), STRICT_DNS for a name; HTTP/2 for grpc(s), TLS with the
/// host as SNI for https and grpcs; Kong's connect_timeout in seconds.
#[test]
fn clusters_follow_each_services_protocol_address_and_timeouts() {
    let config = config(SERVICES);
    assert_json(
        &json!(clusters(&config, &options())),
        &json!([
            {
                "connect_timeout": "1.5s",
                "load_assignment": {
                    "cluster_name": "service.ip",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": 8080
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ]
                },
                "name": "service.ip",
                "type": "STATIC",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                    }
                }
            },
            {
                "connect_timeout": "60s",
                "load_assignment": {
                    "cluster_name": "service.1",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "secure.test",
                                                "port_value": 443
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ]
                },
                "name": "service.1",
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": "secure.test"
                    }
                },
                "type": "STRICT_DNS",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                    }
                }
            },
            {
                "connect_timeout": "0.001s",
                "load_assignment": {
                    "cluster_name": "service.g",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "grpc.test",
                                                "port_value": 9000
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ]
                },
                "name": "service.g",
                "type": "STRICT_DNS",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                }
            },
            {
                "connect_timeout": "60s",
                "load_assignment": {
                    "cluster_name": "service.gs",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "grpcs.test",
                                                "port_value": 443
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ]
                },
                "name": "service.gs",
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": "grpcs.test"
                    }
                },
                "type": "STRICT_DNS",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                }
            },
            {
                "connect_timeout": "60s",
                "load_assignment": {
                    "cluster_name": "service.v6",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "::1",
                                                "port_value": 8081
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ]
                },
                "name": "service.v6",
                "type": "STATIC",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}}
                    }
                }
            }
        ]),
    );
    assert_eq!(cluster_name(&config, 0), "service.ip");
    assert_eq!(cluster_name(&config, 1), "service.1");
    assert_eq!(cluster_name(&config, 9), "service.9");
}

/// TLS services of every kind of host, verified or not (Kong's default is not).
const TLS_SERVICES: &str = r#"
_format_version: "3.0"
services:
  - name: dns
    url: https://api.test:8443
    tls_verify: true
  - name: v4
    url: https://127.0.0.1:8443
    tls_verify: true
  - name: v6
    url: grpcs://[0:0::1]:8443
    tls_verify: true
  - name: dns-unverified
    url: https://api.test
  - name: v4-unverified
    url: grpcs://127.0.0.1
    tls_verify: false
  - name: v6-unverified
    url: https://[::1]
  - name: plain
    url: http://api.test
    tls_verify: true
"#;

/// The `transport_socket` of each cluster (`null` without TLS).
fn transport_sockets(config: &Config, options: &EnvoyOptions) -> Value {
    clusters(config, options)
        .iter()
        .map(|c| json!([c["name"], c["transport_socket"]]))
        .collect()
}

fn tls(context: Value) -> Value {
    let mut typed_config = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    });
    typed_config
        .as_object_mut()
        .unwrap()
        .extend(context.as_object().unwrap().clone());
    json!({"name": "envoy.transport_sockets.tls", "typed_config": typed_config})
}

/// Upstream TLS as the gateway's rustls client does it. SNI only for a DNS name: RFC 6066
/// forbids IP literals there (Kong and rustls send none). With `tls_verify`, a validation
/// context: the certificate must chain to the system bundle, or to the operator's CA file when
/// one is given, and name the host: a DNS SAN (in any case) for a name, an IP SAN for an
/// address (IPv6 in its canonical text, as Envoy prints the certificate's). Without it, or
/// without TLS, nothing is checked.
#[test]
fn tls_verify_checks_the_upstream_certificate_against_the_trusted_cas_and_the_host() {
    let config = config(TLS_SERVICES);
    let expected = |ca: &str| {
        let verified = |sni: Option<&str>, san: Value| {
            let mut context = json!({"common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": ca},
                "match_typed_subject_alt_names": [san],
            }}});
            if let Some(sni) = sni {
                context["sni"] = json!(sni);
            }
            tls(context)
        };
        json!([
            [
                "service.dns",
                verified(
                    Some("api.test"),
                    json!({"san_type": "DNS", "matcher": {"exact": "api.test", "ignore_case": true}})
                )
            ],
            [
                "service.v4",
                verified(
                    None,
                    json!({"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}})
                )
            ],
            [
                "service.v6",
                verified(
                    None,
                    json!({"san_type": "IP_ADDRESS", "matcher": {"exact": "::1"}})
                )
            ],
            ["service.dns-unverified", tls(json!({"sni": "api.test"}))],
            ["service.v4-unverified", tls(json!({}))],
            ["service.v6-unverified", tls(json!({}))],
            ["service.plain", null],
        ])
    };
    assert_json(
        &transport_sockets(&config, &options()),
        &expected("/etc/ssl/certs/ca-certificates.crt"),
    );
    let with_ca = EnvoyOptions {
        upstream_ca_file: Some(PathBuf::from("/etc/wasmgate/upstream-ca.pem")),
        ..options()
    };
    assert_json(
        &transport_sockets(&config, &with_ca),
        &expected("/etc/wasmgate/upstream-ca.pem"),
    );
    // The bootstrap's clusters are these.
    assert_json(
        &bootstrap(&config, &with_ca)["static_resources"]["clusters"],
        &json!(clusters(&config, &with_ca)),
    );
}

/// Routes in the router's order (more kinds of criteria, then regexes, then longer
/// prefixes), each path of a route its own Envoy route; hosts, methods and headers are
/// header matchers (hosts without a port of their own take any port, wildcards a label or
/// more, header values any of those listed, case-insensitively); Kong's 404 last.
#[test]
fn routes_follow_kongs_order_and_match_hosts_methods_and_headers() {
    let config = config(ROUTING);
    let route_configuration = route_configuration(&config, &options(), "routes");
    assert_eq!(route_configuration["name"], "routes");
    assert_eq!(route_configuration["virtual_hosts"][0]["name"], "wasmgate");
    assert_eq!(
        route_configuration["virtual_hosts"][0]["domains"],
        json!(["*"])
    );
    let matches: Vec<Value> = routes(&route_configuration)
        .iter()
        .map(|route| json!([route["name"], route["match"]]))
        .collect();
    assert_json(
        &json!(matches),
        &json!([
            [
                "hostonly",
                {
                    "headers": [
                        {
                            "name": ":authority",
                            "string_match": {
                                "safe_regex": {"regex": "(?i)(only\\.test(:[0-9]+)?)"}
                            }
                        },
                        {"name": ":method", "string_match": {"safe_regex": {"regex": "DELETE"}}},
                        {"name": "x-a", "string_match": {"safe_regex": {"regex": "(?i)(b)"}}}
                    ],
                    "prefix": "/"
                }
            ],
            [
                "hosted",
                {
                    "headers": [
                        {
                            "name": ":authority",
                            "string_match": {
                                "safe_regex": {
                                    "regex": "(?i)(exact\\.test(:[0-9]+)?|[^:/]+\\.wild\\.test(:[0-9]+)?|pre\\.[^:/]+(:[0-9]+)?|port\\.test:8443)"
                                }
                            }
                        },
                        {
                            "name": ":method",
                            "string_match": {"safe_regex": {"regex": "GET|POST"}}
                        },
                        {
                            "name": "x-version",
                            "string_match": {"safe_regex": {"regex": "(?i)(v1|a\\.b)"}}
                        }
                    ],
                    "prefix": "/"
                }
            ],
            [
                "s",
                {
                    "headers": [
                        {"name": ":method", "string_match": {"safe_regex": {"regex": "PUT"}}}
                    ],
                    "path": "/s"
                }
            ],
            [
                "s",
                {
                    "headers": [
                        {"name": ":method", "string_match": {"safe_regex": {"regex": "PUT"}}}
                    ],
                    "prefix": "/s"
                }
            ],
            ["strip-regex", {"safe_regex": {"regex": "(?:^(?:/v(?P<n>\\d+)$))"}}],
            ["strip-regex", {"safe_regex": {"regex": "(?:^(?:/v(?P<n>\\d+)$)).*"}}],
            ["keep", {"safe_regex": {"regex": "(?:^(?:/k/\\d+)).*"}}],
            ["root", {"safe_regex": {"regex": "(?:^(?:/re))"}}],
            ["root", {"safe_regex": {"regex": "(?:^(?:/re)).*"}}],
            ["lonely", {"safe_regex": {"regex": "(?:^(?:/lone/\\d+)).*"}}],
            ["lonely", {"prefix": "/lonely"}],
            ["keep", {"prefix": "/keep"}],
            ["root", {"path": "/root"}],
            ["root", {"prefix": "/root"}],
            ["strip-prefix", {"path": "/a.b"}],
            ["strip-prefix", {"prefix": "/a.b"}],
            [
                "any-path",
                {
                    "headers": [
                        {
                            "name": ":authority",
                            "string_match": {
                                "safe_regex": {"regex": "(?i)(based\\.test(:[0-9]+)?)"}
                            }
                        }
                    ],
                    "prefix": "/"
                }
            ],
            ["no-route", {"prefix": "/"}]
        ]),
    );
}

/// What reaches the service: its cluster, its Host unless preserve_host (with the port when
/// it is not the protocol's), the path stripped of the matched prefix or regex and joined to
/// the service path as Kong's `path_handling: v0` joins it (a whole-path match becomes the
/// service path itself), Kong's read_timeout as the idle timeout, no overall timeout, no
/// retries.
#[test]
fn strip_path_preserve_host_and_the_service_path_rewrite_like_kong() {
    let config = config(ROUTING);
    let route_configuration = route_configuration(&config, &options(), "routes");
    let actions: Vec<Value> = routes(&route_configuration)
        .iter()
        .filter(|route| route.get("route").is_some())
        .map(|route| json!([route["name"], route["route"]]))
        .collect();
    assert_json(
        &json!(actions),
        &json!([
            [
                "hosted",
                {
                    "cluster": "service.1",
                    "host_rewrite_literal": "secure.test",
                    "idle_timeout": "0.25s",
                    "regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ],
            [
                "s",
                {
                    "cluster": "service.slash",
                    "host_rewrite_literal": "slash.test",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/"},
                    "timeout": "0s"
                }
            ],
            [
                "s",
                {
                    "cluster": "service.slash",
                    "host_rewrite_literal": "slash.test",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^/s/?"}, "substitution": "/"},
                    "timeout": "0s"
                }
            ],
            [
                "strip-regex",
                {
                    "cluster": "service.based",
                    "host_rewrite_literal": "api.test:8080",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ],
            [
                "strip-regex",
                {
                    "cluster": "service.based",
                    "host_rewrite_literal": "api.test:8080",
                    "idle_timeout": "60s",
                    "regex_rewrite": {
                        "pattern": {"regex": "^(?:^(?:/v(?P<n>\\d+)$))/?"},
                        "substitution": "/base/"
                    },
                    "timeout": "0s"
                }
            ],
            [
                "keep",
                {
                    "cluster": "service.based",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ],
            [
                "root",
                {
                    "cluster": "service.1",
                    "host_rewrite_literal": "secure.test",
                    "idle_timeout": "0.25s",
                    "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/base"},
                    "timeout": "0s"
                }
            ],
            [
                "root",
                {
                    "cluster": "service.1",
                    "host_rewrite_literal": "secure.test",
                    "idle_timeout": "0.25s",
                    "regex_rewrite": {
                        "pattern": {"regex": "^(?:^(?:/re))/?"},
                        "substitution": "/base/"
                    },
                    "timeout": "0s"
                }
            ],
            [
                "keep",
                {
                    "cluster": "service.based",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ],
            [
                "root",
                {
                    "cluster": "service.1",
                    "host_rewrite_literal": "secure.test",
                    "idle_timeout": "0.25s",
                    "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/base"},
                    "timeout": "0s"
                }
            ],
            [
                "root",
                {
                    "cluster": "service.1",
                    "host_rewrite_literal": "secure.test",
                    "idle_timeout": "0.25s",
                    "regex_rewrite": {
                        "pattern": {"regex": "^/root/?"},
                        "substitution": "/base/"
                    },
                    "timeout": "0s"
                }
            ],
            [
                "strip-prefix",
                {
                    "cluster": "service.based",
                    "host_rewrite_literal": "api.test:8080",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ],
            [
                "strip-prefix",
                {
                    "cluster": "service.based",
                    "host_rewrite_literal": "api.test:8080",
                    "idle_timeout": "60s",
                    "regex_rewrite": {
                        "pattern": {"regex": "^/a\\.b/?"},
                        "substitution": "/base/"
                    },
                    "timeout": "0s"
                }
            ],
            [
                "any-path",
                {
                    "cluster": "service.based",
                    "host_rewrite_literal": "api.test:8080",
                    "idle_timeout": "60s",
                    "regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": "/base/"},
                    "timeout": "0s"
                }
            ]
        ]),
    );
    for route in routes(&route_configuration) {
        if route.get("route").is_some() {
            let keys: Vec<&String> = route.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["match", "name", "route", "typed_per_filter_config"],
                "{route}"
            );
        }
    }
}

/// A route without a service answers Kong's 503 (as JSON), but only where it matches: its
/// hosts, methods and headers count as for any route. (They were left out: a service-less
/// route with hosts answered every request that reached it.)
#[test]
fn a_route_without_a_service_answers_503_where_it_matches() {
    let config = config(ROUTING);
    let route_configuration = route_configuration(&config, &options(), "routes");
    let orphans: Vec<&Value> = routes(&route_configuration)
        .iter()
        .filter(|route| route["name"] == "hostonly" || route["name"] == "lonely")
        .collect();
    assert_json(
        &json!(orphans),
        &json!([
            {
                "direct_response": {
                    "body": {
                        "inline_string": "{\"message\":\"no Service found with those values\"}"
                    },
                    "status": 503
                },
                "match": {
                    "headers": [
                        {
                            "name": ":authority",
                            "string_match": {
                                "safe_regex": {"regex": "(?i)(only\\.test(:[0-9]+)?)"}
                            }
                        },
                        {"name": ":method", "string_match": {"safe_regex": {"regex": "DELETE"}}},
                        {"name": "x-a", "string_match": {"safe_regex": {"regex": "(?i)(b)"}}}
                    ],
                    "prefix": "/"
                },
                "name": "hostonly",
                "response_headers_to_add": [
                    {
                        "header": {
                            "key": "content-type",
                            "value": "application/json; charset=utf-8"
                        }
                    }
                ],
                "typed_per_filter_config": {}
            },
            {
                "direct_response": {
                    "body": {
                        "inline_string": "{\"message\":\"no Service found with those values\"}"
                    },
                    "status": 503
                },
                "match": {"safe_regex": {"regex": "(?:^(?:/lone/\\d+)).*"}},
                "name": "lonely",
                "response_headers_to_add": [
                    {
                        "header": {
                            "key": "content-type",
                            "value": "application/json; charset=utf-8"
                        }
                    }
                ],
                "typed_per_filter_config": {}
            },
            {
                "direct_response": {
                    "body": {
                        "inline_string": "{\"message\":\"no Service found with those values\"}"
                    },
                    "status": 503
                },
                "match": {"prefix": "/lonely"},
                "name": "lonely",
                "response_headers_to_add": [
                    {
                        "header": {
                            "key": "content-type",
                            "value": "application/json; charset=utf-8"
                        }
                    }
                ],
                "typed_per_filter_config": {}
            }
        ]),
    );
}

/// Each route enables only the filters Kong runs there: not other scopes' plugin instances,
/// nor instances a more specific disabled one overrides, nor other routes' and services'
/// chains, disabled chains and filters; Kong's 404 runs none. The routes the transformer
/// runs on hand it the client's Host in a header of their own (a third-party filter with the
/// transformer's root id does not count).
#[test]
fn each_route_enables_only_the_filters_kong_runs_there() {
    let config = config(SCOPES);
    let route_configuration = route_configuration(&config, &options(), "scopes");
    let routes = routes(&route_configuration);
    let enabled: Vec<Value> = routes
        .iter()
        .map(|route| {
            let per_filter = route["typed_per_filter_config"].as_object().unwrap();
            for config in per_filter.values() {
                assert_json(
                    config,
                    &json!({
                        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                        "config": {}
                    }),
                );
            }
            json!([route["name"], per_filter.keys().collect::<Vec<_>>()])
        })
        .collect();
    assert_json(
        &json!(enabled),
        &json!([
            [
                "a1",
                [
                    "wasmgate.chain.0.0.route-filter",
                    "wasmgate.chain.2.0.service-filter",
                    "wasmgate.plugin.rate-limiting@service:a",
                    "wasmgate.plugin.request-size-limiting@global",
                    "wasmgate.plugin.request-transformer@route:a1"
                ]
            ],
            [
                "a2",
                [
                    "wasmgate.chain.2.0.service-filter",
                    "wasmgate.plugin.request-size-limiting@global"
                ]
            ],
            [
                "b1",
                [
                    "wasmgate.chain.3.0.sdk",
                    "wasmgate.plugin.request-size-limiting@global"
                ]
            ],
            ["orphan", ["wasmgate.plugin.request-size-limiting@global"]],
            ["no-route", []]
        ]),
    );
    // Every filter in the chain is off until a route enables it.
    for filter in http_filters(&config, &options()) {
        let name = filter["name"].as_str().unwrap();
        if name.starts_with("wasmgate.") {
            assert_eq!(filter["disabled"], true, "{name}");
        }
    }
    let handing_over: Vec<&Value> = routes
        .iter()
        .filter(|route| route.get("request_headers_to_add").is_some())
        .map(|route| &route["name"])
        .collect();
    assert_eq!(handing_over, ["a1"]);
    let a1 = routes.iter().find(|route| route["name"] == "a1").unwrap();
    assert_json(
        a1,
        &json!({
            "match": {"prefix": "/a1"},
            "name": "a1",
            "request_headers_to_add": [
                {
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    "header": {"key": "x-wasmgate-client-host", "value": "%REQ(:AUTHORITY)%"}
                }
            ],
            "route": {
                "cluster": "service.a",
                "host_rewrite_literal": "a.test",
                "idle_timeout": "60s",
                "timeout": "0s"
            },
            "typed_per_filter_config": {
                "wasmgate.chain.0.0.route-filter": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                },
                "wasmgate.chain.2.0.service-filter": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                },
                "wasmgate.plugin.rate-limiting@service:a": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                },
                "wasmgate.plugin.request-size-limiting@global": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                },
                "wasmgate.plugin.request-transformer@route:a1": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {}
                }
            }
        }),
    );
}

/// The wasm filters in one order that is every route's order on the gateway: plugins by
/// priority, then the service's chain, then the route's (a route chain declared first
/// included), each filter-chain filter with its own VM, module from the filters directory,
/// name, root id, config as written and only its own secrets; the transformer after routing.
#[test]
fn every_route_runs_its_filters_in_the_gateways_order() {
    let config = config(SCOPES);
    let options = options();
    let filters = http_filters(&config, &options);
    let names: Vec<&Value> = filters.iter().map(|filter| &filter["name"]).collect();
    assert_eq!(
        names,
        [
            "wasmgate.plugin.request-size-limiting@global",
            "wasmgate.plugin.rate-limiting@service:a",
            "wasmgate.chain.2.0.service-filter",
            "wasmgate.chain.2.1.off",
            "wasmgate.chain.0.0.route-filter",
            "wasmgate.chain.1.0.disabled-chain",
            "wasmgate.chain.3.0.sdk",
            "envoy.filters.http.router",
        ]
    );
    // Per route, the filters left enabled, in the chain's order, are the gateway's.
    let route_configuration = route_configuration(&config, &options, LISTENER);
    for route in routes(&route_configuration) {
        let Some(index) = (0..config.routes.len()).find(|&r| route["name"] == config.route_name(r))
        else {
            continue;
        };
        let per_filter = &route["typed_per_filter_config"];
        let enabled: Vec<String> = filters
            .iter()
            .map(|filter| filter["name"].as_str().unwrap())
            .filter(|name| name.starts_with("wasmgate.") && per_filter.get(*name).is_some())
            .map(|name| name.rsplit('.').next().unwrap().to_owned())
            .collect();
        let mut gateway: Vec<String> = config
            .plugins_for(Some(index))
            .into_iter()
            .filter(|plugin| !runs_upstream(&plugin.name))
            .map(|plugin| config.plugin_instance_name(plugin))
            .map(|name| name.rsplit('.').next().unwrap().to_owned())
            .collect();
        gateway.extend(
            config
                .filters_for(Some(index))
                .into_iter()
                .map(|f| f.name.clone()),
        );
        assert_eq!(enabled, gateway, "route {}", route["name"]);
    }
    let chain_filter = |name: &str| {
        filters
            .iter()
            .find(|filter| filter["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_json(
        chain_filter("wasmgate.chain.2.0.service-filter"),
        &json!({
            "name": "wasmgate.chain.2.0.service-filter",
            "disabled": true,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "allow_on_headers_stop_iteration": false,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": "{\"k\":\"{vault://env/other-secret}\"}"
                    },
                    "failure_policy": "FAIL_RELOAD",
                    "name": "service-filter",
                    "root_id": "service-filter",
                    "vm_config": {
                        "code": {"local": {"filename": "/filters/service-filter.wasm"}},
                        "environment_variables": {
                            "host_env_keys": ["OTHER_SECRET"],
                            "key_values": {"OTHER_SECRET": "x"}
                        },
                        "runtime": "envoy.wasm.runtime.v8",
                        "vm_id": "wasmgate.chain.2.0"
                    }
                }
            }
        }),
    );
    assert_json(
        chain_filter("wasmgate.chain.3.0.sdk"),
        &json!({
            "name": "wasmgate.chain.3.0.sdk",
            "disabled": true,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "allow_on_headers_stop_iteration": false,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": "plain text"
                    },
                    "failure_policy": "FAIL_RELOAD",
                    "name": "lookalike",
                    "root_id": "request-transformer",
                    "vm_config": {
                        "code": {"local": {"filename": "/filters/sdk.wasm"}},
                        "environment_variables": {"host_env_keys": [], "key_values": {}},
                        "runtime": "envoy.wasm.runtime.v8",
                        "vm_id": "wasmgate.chain.3.0"
                    }
                }
            }
        }),
    );
    // Without a filters directory, filter-chain modules are beside the plugins.
    let beside = http_filters(
        &config,
        &EnvoyOptions {
            filters_dir: None,
            ..options
        },
    );
    assert_eq!(
        beside[2]["typed_config"]["config"]["vm_config"]["code"],
        json!({"local": {"filename": "/wasm/service-filter.wasm"}})
    );
}

/// A `wasmgate` block's failure policy becomes Envoy's: closed is FAIL_RELOAD (a 503 for the
/// failing stream and a fresh VM, as the gateway), open is FAIL_OPEN; the budgets and memory
/// limits have no Envoy field and leave the filter as it is without them.
#[test]
fn the_wasmgate_blocks_failure_policy_is_envoys_and_its_budgets_are_not_translated() {
    let text = |block: &str| {
        format!(
            r#"
_format_version: "3.0"
services: [{{name: s, host: s.test, routes: [{{name: r, paths: [/]}}]}}]
plugins:
  - {{name: rate-limiting, config: {{second: 1}}{block}}}
filter_chains:
  - {{route: r, filters: [{{name: f{block}}}]}}
"#
        )
    };
    let policies = |text: &str| -> Vec<Value> {
        http_filters(&config(text), &options())
            .iter()
            .filter(|filter| filter["name"] != "envoy.filters.http.router")
            .map(|filter| filter["typed_config"]["config"]["failure_policy"].clone())
            .collect()
    };
    assert_eq!(policies(&text("")), ["FAIL_RELOAD", "FAIL_RELOAD"]);
    assert_eq!(
        policies(&text(", wasmgate: {failure_policy: fail_closed}")),
        ["FAIL_RELOAD", "FAIL_RELOAD"]
    );
    assert_eq!(
        policies(&text(", wasmgate: {failure_policy: fail_open}")),
        ["FAIL_OPEN", "FAIL_OPEN"]
    );
    let budgets = ", wasmgate: {callback_budget_ms: 5, startup_budget_ms: 100, \
                   memory_limit_mb: 16, memory_soft_limit_mb: 8}";
    assert_json(
        &json!(http_filters(&config(&text(budgets)), &options())),
        &json!(http_filters(&config(&text("")), &options())),
    );
}

fn certificate(id: &str, snis: &[&str]) -> Certificate {
    Certificate {
        id: id.into(),
        cert: format!("-----BEGIN CERTIFICATE-----\n{id}\n-----END CERTIFICATE-----\n"),
        key: format!("-----BEGIN PRIVATE KEY-----\n{id}\n-----END PRIVATE KEY-----\n"),
        snis: snis.iter().map(|s| (*s).to_owned()).collect(),
        tags: Vec::new(),
    }
}

/// ONE_ROUTE with two ACME challenges.
fn with_challenges() -> Config {
    let mut config = config(ONE_ROUTE);
    config.acme_challenges = ["t0k-en_1", "t2"]
        .into_iter()
        .map(|token| crate::AcmeChallenge {
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
        })
        .collect();
    config
}

/// Each HTTP-01 challenge is a route ahead of every other: exactly its path (Envoy's `path`
/// leaves the query out), GET or HEAD, answered 200 in text/plain with the key authorization,
/// with no filter enabled (the rate limit of every other route stays off); the routes follow
/// as before.
#[test]
fn acme_challenges_are_answered_first_with_no_filter() {
    let without = route_configuration(&config(ONE_ROUTE), &options(), LISTENER);
    let config = with_challenges();
    let options = options();
    let translated = route_configuration(&config, &options, LISTENER);
    let routes = routes(&translated);
    let answer = |token: &str| {
        json!({
            "name": "acme-challenge",
            "match": {
                "path": format!("/.well-known/acme-challenge/{token}"),
                "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}],
            },
            "direct_response": {"status": 200, "body": {"inline_string": format!("{token}.thumbprint")}},
            "response_headers_to_add": [{
                "header": {"key": "content-type", "value": "text/plain"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
            "typed_per_filter_config": {},
        })
    };
    assert_json(&routes[0], &answer("t0k-en_1"));
    assert_json(&routes[1], &answer("t2"));
    assert_json(&json!(routes[2..]), &without["virtual_hosts"][0]["routes"]);
    // The static bootstrap carries the same route configuration.
    let bootstrap = bootstrap(&config, &options);
    let manager = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    assert_json(&manager["route_config"], &translated);
}

/// The TLS listener: the TLS inspector, then one filter chain per certificate with snis,
/// matched on them, ending TLS (ALPN h2 then http/1.1) and running the plain listener's
/// connection manager. A static bootstrap has the certificates inline; over xDS each chain
/// names its certificate's secret, which comes by SDS over ADS. A certificate without snis
/// gets no chain; without any chain there is no TLS listener at all (Envoy refuses a
/// listener without filter chains).
#[test]
fn the_tls_listener_has_a_filter_chain_per_certificate_matched_on_its_snis() {
    let mut config = with_challenges();
    config.certificates = vec![
        certificate("a", &["api.example.test", "*.example.test"]),
        certificate("unnamed", &[]),
        certificate("b", &["shop.test"]),
    ];
    let options = options();
    let tls_listen: SocketAddr = ([127, 0, 0, 1], 8443).into();
    let chain = |id: &str, snis: &[&str], manager: &Value, certificate: (&str, Value)| {
        let mut common = json!({"alpn_protocols": ["h2", "http/1.1"]});
        common[certificate.0] = certificate.1;
        json!({
            "name": format!("wasmgate.certificate.{id}"),
            "filter_chain_match": {"server_names": snis},
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": common,
                },
            },
        })
    };
    let listener = |chains: Vec<Value>| {
        json!({
            "name": "wasmgate.tls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}},
            "listener_filters": [{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            }],
            "filter_chains": chains,
        })
    };
    let inline = |id: &str| {
        json!([{
            "certificate_chain": {"inline_string": format!("-----BEGIN CERTIFICATE-----\n{id}\n-----END CERTIFICATE-----\n")},
            "private_key": {"inline_string": format!("-----BEGIN PRIVATE KEY-----\n{id}\n-----END PRIVATE KEY-----\n")},
        }])
    };

    // The static bootstrap: the plain listener as without TLS, then the TLS one.
    let with_tls = bootstrap_with_tls(&config, &options, Some(tls_listen));
    let without = bootstrap(&config, &options);
    let listeners = with_tls["static_resources"]["listeners"]
        .as_array()
        .unwrap();
    assert_eq!(listeners.len(), 2);
    assert_json(&listeners[0], &without["static_resources"]["listeners"][0]);
    assert_json(
        &with_tls["static_resources"]["clusters"],
        &without["static_resources"]["clusters"],
    );
    let manager = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_json(
        &listeners[1],
        &listener(vec![
            chain(
                "a",
                &["api.example.test", "*.example.test"],
                manager,
                ("tls_certificates", inline("a")),
            ),
            chain(
                "b",
                &["shop.test"],
                manager,
                ("tls_certificates", inline("b")),
            ),
        ]),
    );

    // Over xDS: the plain listener's connection manager (RDS, ECDS), the certificates by SDS.
    let manager =
        &discovered_listener(&config, &options)["filter_chains"][0]["filters"][0]["typed_config"];
    let sds = |id: &str| {
        json!([{
            "name": format!("wasmgate.certificate.{id}"),
            "sds_config": {"ads": {}, "resource_api_version": "V3"},
        }])
    };
    assert_json(
        &discovered_tls_listener(&config, &options, tls_listen).unwrap(),
        &listener(vec![
            chain(
                "a",
                &["api.example.test", "*.example.test"],
                manager,
                ("tls_certificate_sds_secret_configs", sds("a")),
            ),
            chain(
                "b",
                &["shop.test"],
                manager,
                ("tls_certificate_sds_secret_configs", sds("b")),
            ),
        ]),
    );
    let secret = |id: &str| json!({"name": format!("wasmgate.certificate.{id}"), "tls_certificate": inline(id)[0]});
    assert_json(&json!(secrets(&config)), &json!([secret("a"), secret("b")]));

    // No certificate with an SNI: no TLS listener, no secret.
    config.certificates.retain(|c| c.snis.is_empty());
    assert!(discovered_tls_listener(&config, &options, tls_listen).is_none());
    assert!(secrets(&config).is_empty());
    assert_json(
        &bootstrap_with_tls(&config, &options, Some(tls_listen)),
        &bootstrap(&config, &options),
    );
}
