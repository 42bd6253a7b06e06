//! The bootstrap of an Envoy data plane: everything it needs to reach this control plane's
//! ADS over mTLS and to name itself; listeners, routes, clusters and plugins then come by
//! xDS.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// The xDS cluster in an Envoy's bootstrap.
pub const XDS_CLUSTER: &str = "wasmgate_xds";

pub struct BootstrapOptions {
    pub node_id: String,
    pub control_plane_id: String,
    /// The control plane's xDS endpoint.
    pub xds: SocketAddr,
    /// The data plane's client certificate (pinned for the control plane) and key, PEM.
    pub cert_pem: String,
    pub key_pem: String,
    /// The control plane's CA (`cluster_ca_cert`), PEM.
    pub ca_pem: String,
    /// The gateway listener's address.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Envoy environment variables plugins may read (`{vault://env/NAME}`).
    pub env_allow: Vec<String>,
    /// Where `wasmgate-ratelimit` serves this Envoy, for rate-limiting's `policy: redis`
    /// (`node.metadata.ratelimit`).
    pub ratelimit: Option<SocketAddr>,
    /// The TLS listener's address, for custom domains (`node.metadata.tls_listen`): the
    /// listener comes by LDS once the control plane has a certificate, each certificate by
    /// SDS. `None`: no TLS listener.
    pub tls_listen: Option<SocketAddr>,
}

pub fn bootstrap(options: &BootstrapOptions) -> Value {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut metadata = json!({
        "listen": options.listen.to_string(),
        "env_allow": options.env_allow,
    });
    if let Some(ratelimit) = options.ratelimit {
        metadata["ratelimit"] = json!(ratelimit.to_string());
    }
    if let Some(tls_listen) = options.tls_listen {
        metadata["tls_listen"] = json!(tls_listen.to_string());
    }
    json!({
        "node": {
            "id": options.node_id,
            "cluster": options.control_plane_id,
            "metadata": metadata,
        },
        "admin": {"address": model::envoy::socket_address(options.admin)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": true,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {"clusters": [{
            "name": XDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": model::envoy::socket_address(options.xds),
                }}]}],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        // Notices a vanished control plane and reconnects.
                        "connection_keepalive": {"interval": "15s", "timeout": "5s"},
                    }},
                },
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    // The control plane's certificate is for localhost and 127.0.0.1.
                    "sni": "localhost",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [{
                            "certificate_chain": {"inline_string": options.cert_pem},
                            "private_key": {"inline_string": options.key_pem},
                        }],
                        "validation_context": {
                            "trusted_ca": {"inline_string": options.ca_pem},
                            "match_typed_subject_alt_names": [{
                                "san_type": "DNS",
                                "matcher": {"exact": "localhost"},
                            }],
                        },
                    },
                },
            },
        }]},
    })
}
