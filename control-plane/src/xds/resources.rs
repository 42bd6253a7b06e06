//! One config version as the typed resources of one Envoy node: the model's Envoy JSON
//! (proto3 JSON, `@type` in every `Any`) turned into protobuf bytes through Envoy's
//! descriptors. The same translation as a static bootstrap, so what a node runs over xDS is
//! what `model::envoy::bootstrap` would have started it with.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::{json, Value};
use xds_api::pb::google::protobuf::Any;

use crate::hub::ConfigVersion;
use crate::modules::Modules;

const PREFIX: &str = "type.googleapis.com/";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Every type served, in the order a new version is pushed: clusters first (the others wait
/// until the node has acknowledged them, so they are warm before anything names them), then
/// the listener before the filter configs and routes it subscribes to.
pub const TYPES: [&str; 4] = [CLUSTER, LISTENER, EXTENSION_CONFIG, ROUTE];

/// Types Envoy subscribes to as a whole (an empty or `*` name list means every resource).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// What a node tells about itself in its bootstrap's `node.metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeParams {
    /// Where its gateway listener listens.
    pub listen: SocketAddr,
    /// Envoy environment variables its plugins may read (`{vault://env/NAME}`).
    pub env_allow: Vec<String>,
}

/// One resource: its protobuf form and the JSON it came from (whose text, with sorted keys,
/// identifies its content: protobuf encodings of maps are not stable).
#[derive(Clone)]
pub struct Resource {
    pub any: Any,
    pub json: String,
}

/// Resources by type URL, then by name.
pub type Resources = BTreeMap<&'static str, BTreeMap<String, Resource>>;

pub struct Translator {
    pool: DescriptorPool,
}

impl Translator {
    pub fn new() -> Result<Translator, String> {
        Ok(Translator {
            pool: super::descriptors::pool()?,
        })
    }

    fn encode(&self, type_url: &str, json: Value) -> Result<Resource, String> {
        let message_name = type_url.strip_prefix(PREFIX).unwrap_or(type_url);
        let descriptor = self
            .pool
            .get_message_by_name(message_name)
            .ok_or_else(|| format!("no descriptor for {message_name}"))?;
        let text = json.to_string();
        let message =
            DynamicMessage::deserialize_with_options(descriptor, json, &DeserializeOptions::new())
                .map_err(|e| format!("{message_name}: {e}"))?;
        Ok(Resource {
            any: Any {
                type_url: type_url.to_owned(),
                value: message.encode_to_vec(),
            },
            json: text,
        })
    }

    /// Every resource of `version` for a node.
    pub fn translate(
        &self,
        version: &ConfigVersion,
        node: &NodeParams,
        modules: &Modules,
        modules_dir: &std::path::Path,
    ) -> Result<Resources, String> {
        let config = &version.config;
        let options = model::envoy::EnvoyOptions {
            listen: node.listen,
            // Envoy's admin address is its bootstrap's, never pushed.
            admin: node.listen,
            modules_dir: modules_dir.to_path_buf(),
            filters_dir: None,
            runtime: model::envoy::V8.to_owned(),
            env_allow: node.env_allow.clone(),
            env_values: Vec::new(),
            // The node's system bundle: the control plane knows no path on the node's host.
            upstream_ca_file: None,
        };
        // Code inline, never `remote`: Envoy 1.40 ACKs a Wasm config with a remote module
        // pushed after start-up but never fetches it, and bypasses the filter silently.
        let extension_configs = model::envoy::extension_configs(config, &options, |module| {
            let file = module
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = modules
                .iter()
                .find(|m| m.file == file)
                .map(|m| &m.bytes)
                .ok_or_else(|| {
                    format!(
                        "filter {}: the control plane has no module {file}",
                        module.filter
                    )
                })?;
            let inline = base64::engine::general_purpose::STANDARD.encode(bytes.as_slice());
            Ok::<_, String>(json!({"local": {"inline_bytes": inline}}))
        })?;
        let listener = model::envoy::discovered_listener(config, &options);
        let routes = model::envoy::route_configuration(config, &options, model::envoy::LISTENER);
        let by_type = [
            (CLUSTER, model::envoy::clusters(config, &options)),
            (LISTENER, vec![listener]),
            (EXTENSION_CONFIG, extension_configs),
            (ROUTE, vec![routes]),
        ];
        let mut resources = Resources::new();
        for (type_url, values) in by_type {
            let of_type = resources.entry(type_url).or_default();
            for value in values {
                let name = value["name"].as_str().unwrap_or_default().to_owned();
                of_type.insert(name, self.encode(type_url, value)?);
            }
        }
        Ok(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route enables a filter with a `FilterConfig` whose `config` is present and empty:
    /// the bytes Envoy reads as "enabled" (no `config` at all is refused by Envoy).
    #[test]
    fn a_route_enables_a_filter_with_an_empty_config() {
        use xds_api::pb::envoy::config::route::v3::{FilterConfig, RouteConfiguration};
        let translator = Translator::new().unwrap();
        let route_configuration = json!({
            "name": "wasmgate",
            "virtual_hosts": [{"name": "wasmgate", "domains": ["*"], "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": 200},
                "typed_per_filter_config": {"wasmgate.plugin.p@global": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {},
                }},
            }]}],
        });
        let resource = translator.encode(ROUTE, route_configuration).unwrap();
        let decoded = RouteConfiguration::decode(resource.any.value.as_slice()).unwrap();
        let per_filter = &decoded.virtual_hosts[0].routes[0].typed_per_filter_config;
        let any = &per_filter["wasmgate.plugin.p@global"];
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.config.route.v3.FilterConfig"
        );
        let config = FilterConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(config.config, Some(Any::default()));
        assert!(!config.disabled);
    }

    /// The upstream TLS of the clusters goes over xDS whole: a `tls_verify` service's
    /// validation context (trusted CA, DNS or IP SAN) has a descriptor for every field, and
    /// decodes back to the JSON the translation wrote.
    #[test]
    fn upstream_tls_contexts_encode_with_their_validation_contexts() {
        let config = model::parse_declarative(
            "_format_version: \"3.0\"\nservices:\n  \
             - {name: dns, url: \"https://api.test\", tls_verify: true}\n  \
             - {name: ip, url: \"https://127.0.0.1:8443\", tls_verify: true}\n  \
             - {name: v6, url: \"grpcs://[::1]:8443\", tls_verify: true}\n  \
             - {name: unverified, url: \"https://api.test\"}\n",
        )
        .unwrap();
        let options = model::envoy::EnvoyOptions {
            listen: ([127, 0, 0, 1], 8000).into(),
            admin: ([127, 0, 0, 1], 8001).into(),
            modules_dir: "/wasm".into(),
            filters_dir: None,
            runtime: model::envoy::V8.to_owned(),
            env_allow: Vec::new(),
            env_values: Vec::new(),
            upstream_ca_file: Some("/etc/wasmgate/ca.pem".into()),
        };
        let translator = Translator::new().unwrap();
        let descriptor = translator
            .pool
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .unwrap();
        let clusters = model::envoy::clusters(&config, &options);
        assert_eq!(clusters.len(), 4);
        for cluster in clusters {
            let written = cluster["transport_socket"].clone();
            assert!(written.is_object(), "{cluster}");
            let resource = translator.encode(CLUSTER, cluster).unwrap();
            let decoded =
                DynamicMessage::decode(descriptor.clone(), resource.any.value.as_slice()).unwrap();
            let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
            let back = decoded
                .serialize_with_options(serde_json::value::Serializer, &options)
                .unwrap();
            assert_eq!(back["transport_socket"], written);
        }
    }
}
