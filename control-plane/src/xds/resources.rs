//! One config version as the typed resources of one Envoy node: the model's Envoy JSON
//! (proto3 JSON, `@type` in every `Any`) turned into protobuf bytes through Envoy's
//! descriptors. The same translation as a static bootstrap, so what a node runs over xDS is
//! what `model::envoy::bootstrap` would have started it with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::{json, Value};
use xds_api::pb::google::protobuf::Any;

use tokio::sync::OnceCell;

use crate::hub::{sha256_hex, ConfigVersion};
use crate::modules::Modules;

const PREFIX: &str = "type.googleapis.com/";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Every type served, in the order a new version is pushed: clusters first (the others wait
/// until the node has acknowledged them, so they are warm before anything names them), then
/// the listeners before the certificates, filter configs and routes they subscribe to.
pub const TYPES: [&str; 5] = [CLUSTER, LISTENER, SECRET, EXTENSION_CONFIG, ROUTE];

/// Types Envoy subscribes to as a whole (an empty or `*` name list means every resource).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// What a node tells about itself in its bootstrap's `node.metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeParams {
    /// Where its gateway listener listens.
    pub listen: SocketAddr,
    /// Where its TLS listener listens, if it has one (`node.metadata.tls_listen`): custom
    /// domains' certificates, chosen by SNI, each by SDS.
    pub tls_listen: Option<SocketAddr>,
    /// Envoy environment variables its plugins may read (`{vault://env/NAME}`).
    pub env_allow: Vec<String>,
    /// Where the `wasmgate-ratelimit` of rate-limiting's `policy: redis` serves this node
    /// (`node.metadata.ratelimit`).
    pub ratelimit: Option<SocketAddr>,
}

/// The clusters the rate-limiting plugins of `config` with `policy: redis` call, to the
/// node's rate-limit service; an error when they need one and the node names none.
pub fn ratelimit_clusters(
    config: &model::Config,
    node: &NodeParams,
) -> Result<Vec<serde_json::Value>, String> {
    let configs = config
        .plugins
        .iter()
        .filter(|p| p.enabled && p.name == "rate-limiting")
        .map(|p| &p.config);
    ratelimit::target::envoy_clusters(configs, node.ratelimit)
        .map_err(|e| format!("{e} (node.metadata.ratelimit)"))
}

/// One resource: its protobuf form, and the SHA-256 of the JSON it came from (whose text, with
/// sorted keys, identifies its content: protobuf encodings of maps are not stable).
pub struct Resource {
    pub any: Any,
    pub digest: String,
}

/// Resources by type URL, then by name.
pub type Resources = BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>;

/// (control plane, config version, node parameters): what a translation depends on.
type TranslationKey = (String, u64, NodeParams);

/// One translation, done once for every stream that needs it.
type Translation = Arc<OnceCell<Result<Arc<Resources>, String>>>;

pub struct Translator {
    pool: DescriptorPool,
    /// Translations by what they depend on: streams of nodes with the same parameters share
    /// one (the inline modules make each several hundred kilobytes).
    translations: Mutex<HashMap<TranslationKey, Translation>>,
}

impl Translator {
    pub fn new() -> Result<Translator, String> {
        Ok(Translator {
            pool: super::descriptors::pool()?,
            translations: Mutex::default(),
        })
    }

    /// `version`'s resources for nodes with `params`: translated by `translate` on a blocking
    /// thread (the async workers never encode modules), once however many streams ask at
    /// once, and shared while any stream holds them.
    pub async fn shared(
        &self,
        version: &ConfigVersion,
        params: &NodeParams,
        translate: impl FnOnce() -> Result<Resources, String> + Send + 'static,
    ) -> Result<Arc<Resources>, String> {
        let key = (
            version.control_plane_id.clone(),
            version.version,
            params.clone(),
        );
        let translation = {
            let mut translations = self.translations.lock().unwrap_or_else(|e| e.into_inner());
            // What no stream holds any more goes (a failure too: a later stream tries again).
            translations.retain(|k, t| {
                *k == key
                    || match t.get() {
                        Some(Ok(resources)) => Arc::strong_count(resources) > 1,
                        Some(Err(_)) => false,
                        None => true,
                    }
            });
            Arc::clone(translations.entry(key).or_default())
        };
        translation
            .get_or_init(async || {
                tokio::task::spawn_blocking(translate)
                    .await
                    .map_err(|e| format!("the translation stopped: {e}"))
                    .and_then(|translated| translated.map(Arc::new))
            })
            .await
            .clone()
    }

    fn encode(&self, type_url: &str, json: Value) -> Result<Resource, String> {
        let message_name = type_url.strip_prefix(PREFIX).unwrap_or(type_url);
        let descriptor = self
            .pool
            .get_message_by_name(message_name)
            .ok_or_else(|| format!("no descriptor for {message_name}"))?;
        let digest = sha256_hex(json.to_string().as_bytes());
        let message =
            DynamicMessage::deserialize_with_options(descriptor, json, &DeserializeOptions::new())
                .map_err(|e| format!("{message_name}: {e}"))?;
        Ok(Resource {
            any: Any {
                type_url: type_url.to_owned(),
                value: message.encode_to_vec(),
            },
            digest,
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
        let mut listeners = vec![model::envoy::discovered_listener(config, &options)];
        // A node without a TLS listener never asks for the certificates: none are sent to it
        // (its version would never be complete), and no key leaves the control plane for it.
        let tls = node
            .tls_listen
            .and_then(|address| model::envoy::discovered_tls_listener(config, &options, address));
        let secrets = match tls {
            Some(tls) => {
                listeners.push(tls);
                model::envoy::secrets(config)
            }
            None => Vec::new(),
        };
        let routes = model::envoy::route_configuration(config, &options, model::envoy::LISTENER);
        let mut clusters = model::envoy::clusters(config, &options);
        clusters.extend(ratelimit_clusters(config, node)?);
        let by_type = [
            (CLUSTER, clusters),
            (LISTENER, listeners),
            (SECRET, secrets),
            (EXTENSION_CONFIG, extension_configs),
            (ROUTE, vec![routes]),
        ];
        let mut resources = Resources::new();
        for (type_url, values) in by_type {
            let of_type = resources.entry(type_url).or_default();
            for value in values {
                let name = value["name"].as_str().unwrap_or_default().to_owned();
                of_type.insert(name, Arc::new(self.encode(type_url, value)?));
            }
        }
        Ok(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: u64) -> ConfigVersion {
        ConfigVersion {
            control_plane_id: "cp".into(),
            version: number,
            hash: format!("h{number}"),
            text: String::new(),
            config: model::Config::default(),
            created_at: 0,
        }
    }

    fn params(port: u16) -> NodeParams {
        NodeParams {
            listen: ([127, 0, 0, 1], port).into(),
            tls_listen: None,
            env_allow: Vec::new(),
            ratelimit: None,
        }
    }

    /// A node gets a cluster for each Redis its configuration's `policy: redis` plugins count
    /// in, to the rate-limit service it names, named as the module calls it, and valid as
    /// Envoy's Cluster; without a service it gets none and the version is refused for it.
    #[test]
    fn policy_redis_gets_its_cluster_to_the_nodes_rate_limit_service() {
        let text = r#"
_format_version: "3.0"
services: [{name: s, url: "http://127.0.0.1:9", routes: [{name: r, paths: [/]}]}]
plugins:
  - name: rate-limiting
    config: {second: 5, policy: redis, redis: {host: 10.0.0.5}}
"#;
        let config = model::parse_declarative(text).unwrap();
        let mut node = params(1);
        let refused = ratelimit_clusters(&config, &node).unwrap_err();
        assert!(refused.contains("node.metadata.ratelimit"), "{refused}");
        node.ratelimit = Some(([127, 0, 0, 1], 8081).into());
        let clusters = ratelimit_clusters(&config, &node).unwrap();
        assert_eq!(clusters.len(), 1);
        let target = ratelimit::RedisTarget::from_kong_config(&config.plugins[0].config).unwrap();
        assert_eq!(clusters[0]["name"], target.cluster_name().as_str());
        let translator = Translator::new().unwrap();
        let encoded = translator.encode(CLUSTER, clusters[0].clone()).unwrap();
        let cluster =
            xds_api::pb::envoy::config::cluster::v3::Cluster::decode(encoded.any.value.as_slice())
                .unwrap();
        assert_eq!(cluster.name, target.cluster_name());
        assert!(ratelimit_clusters(&model::Config::default(), &params(1))
            .unwrap()
            .is_empty());
    }

    /// Streams of nodes with the same parameters share one translation of a version, done
    /// once however many ask at the same time; another node's parameters get their own; what
    /// no stream holds any more is let go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_translation_per_version_and_node_parameters() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let translator = Translator::new().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let translate = |done: &Arc<AtomicUsize>| {
            let done = Arc::clone(done);
            move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                done.fetch_add(1, Ordering::SeqCst);
                Ok(Resources::new())
            }
        };
        let (v1, v2, port1) = (version(1), version(2), params(1));
        let (first, second) = tokio::join!(
            translator.shared(&v1, &port1, translate(&done)),
            translator.shared(&v1, &port1, translate(&done)),
        );
        let (first, second) = (first.unwrap(), second.unwrap());
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(done.load(Ordering::SeqCst), 1);
        let other = translator
            .shared(&v1, &params(2), translate(&done))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(done.load(Ordering::SeqCst), 2);

        drop((first, second));
        let next = translator
            .shared(&v2, &params(1), translate(&done))
            .await
            .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 3);
        let kept: Vec<(u64, u16)> = {
            let translations = translator.translations.lock().unwrap();
            let mut kept: Vec<_> = translations
                .keys()
                .map(|(_, number, params)| (*number, params.listen.port()))
                .collect();
            kept.sort();
            kept
        };
        assert_eq!(
            kept,
            [(1, 2), (2, 1)],
            "version 1 for port 1 is held by no one"
        );
        drop((other, next));

        let failed = translator
            .shared(&v2, &params(3), || Err("no module".to_owned()))
            .await;
        assert_eq!(failed.err().as_deref(), Some("no module"));
    }

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

    fn certificate(id: &str, cert: &str) -> model::Certificate {
        model::Certificate {
            id: id.into(),
            cert: cert.into(),
            key: format!("key of {cert}"),
            snis: vec![format!("{id}.example.test")],
            tags: Vec::new(),
        }
    }

    /// A node with a TLS listener gets it, with a chain per certificate that names its secret,
    /// and the secrets (`Secret` with the PEM inline), each with a descriptor for every field
    /// the translation writes; a renewal (same id, new PEM) changes that secret only, never
    /// the listener (Envoy would drain its connections). A node without a TLS listener gets
    /// neither.
    #[test]
    fn a_tls_node_gets_its_certificates_as_secrets_and_a_renewal_changes_only_them() {
        use xds_api::pb::envoy::config::listener::v3::Listener;
        use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
        let translator = Translator::new().unwrap();
        let mut config = model::Config {
            certificates: vec![certificate("a", "A1"), certificate("b", "B1")],
            ..model::Config::default()
        };
        let mut node = params(1);
        node.tls_listen = Some(([127, 0, 0, 1], 8443).into());
        let translate = |config: &model::Config, node: &NodeParams| {
            let mut version = version(1);
            version.config = config.clone();
            translator
                .translate(
                    &version,
                    node,
                    &Modules::default(),
                    std::path::Path::new("/wasm"),
                )
                .unwrap()
        };
        let before = translate(&config, &node);
        let listeners = &before[LISTENER];
        assert_eq!(
            listeners.keys().collect::<Vec<_>>(),
            ["wasmgate", "wasmgate.tls"]
        );
        let tls = Listener::decode(listeners["wasmgate.tls"].any.value.as_slice()).unwrap();
        assert_eq!(tls.filter_chains.len(), 2);
        assert_eq!(tls.listener_filters.len(), 1);
        let pool = &translator.pool;
        let downstream = pool
            .get_message_by_name("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
            .unwrap();
        let socket = tls.filter_chains[0].transport_socket.as_ref().unwrap();
        let Some(xds_api::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
            any,
        )) = &socket.config_type
        else {
            panic!("no typed config: {socket:?}");
        };
        let context = DynamicMessage::decode(downstream, any.value.as_slice()).unwrap();
        let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
        let context = context
            .serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap();
        assert_eq!(
            context,
            json!({"common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [{
                    "name": "wasmgate.certificate.a",
                    "sds_config": {"ads": {}, "resource_api_version": "V3"},
                }],
            }})
        );
        let secrets = &before[SECRET];
        assert_eq!(
            secrets.keys().collect::<Vec<_>>(),
            ["wasmgate.certificate.a", "wasmgate.certificate.b"]
        );
        let secret =
            Secret::decode(secrets["wasmgate.certificate.a"].any.value.as_slice()).unwrap();
        let Some(secret::Type::TlsCertificate(tls_certificate)) = secret.r#type else {
            panic!("not a TLS certificate: {secret:?}");
        };
        let inline = |source: Option<xds_api::pb::envoy::config::core::v3::DataSource>| match source
            .and_then(|s| s.specifier)
        {
            Some(xds_api::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                text,
            )) => text,
            other => panic!("not inline: {other:?}"),
        };
        assert_eq!(inline(tls_certificate.certificate_chain), "A1");
        assert_eq!(inline(tls_certificate.private_key), "key of A1");

        config.certificates[0] = certificate("a", "A2");
        let after = translate(&config, &node);
        for type_url in TYPES {
            let digests = |resources: &Resources| {
                resources
                    .get(type_url)
                    .into_iter()
                    .flatten()
                    .map(|(name, r)| (name.clone(), r.digest.clone()))
                    .collect::<Vec<_>>()
            };
            let (old, new) = (digests(&before), digests(&after));
            if type_url == SECRET {
                assert_ne!(old[0], new[0], "the renewed secret");
                assert_eq!(old[1], new[1], "the other secret");
            } else {
                assert_eq!(old, new, "{type_url} changed with a renewal");
            }
        }

        let plain = translate(&config, &params(1));
        assert_eq!(plain[LISTENER].keys().collect::<Vec<_>>(), ["wasmgate"]);
        assert!(plain.get(SECRET).is_none_or(BTreeMap::is_empty));
    }
}
