//! Properties (`proxy_get_property`) with Envoy's names and encodings: strings and bytes as
//! they are, integers as 8 little-endian bytes, booleans as one byte, timestamps and
//! durations as nanoseconds, maps in the header-pairs encoding. A path is its segments joined
//! with `\0`. A header's several values are joined with `,` (`request.headers.<name>`).
//!
//! What filters store with `set_property` never shadows a built-in property: as in Envoy,
//! whose `findValue` answers its well-known top-level names (`request`, `source`, …) and only
//! then looks in the filter state (where `setProperty` stores under `wasm.<path>`), a path
//! that starts with a built-in name is answered by the host alone. Module values are kept
//! under [`module_key`], apart from the data plane's own facts (a route's `uri_captures`),
//! which a module cannot overwrite either.

use std::collections::BTreeMap;

use crate::abi::pairs;
use crate::clock::unix_nanos;
use crate::filter_chain::StreamData;
use crate::headers::Headers;
use crate::plugin_config::PluginConfig;

/// Envoy's top-level property names (`PropertyToken`, plus the CEL `xds` attributes).
const BUILT_IN: &[&str] = &[
    "metadata",
    "request",
    "response",
    "connection",
    "upstream",
    "node",
    "source",
    "destination",
    "listener_direction",
    "listener_metadata",
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "plugin_name",
    "upstream_host_metadata",
    "plugin_root_id",
    "plugin_vm_id",
    "connection_id",
    "filter_state",
    "xds",
];

/// Values one context may keep with `set_property`: entries, and bytes of paths and values.
pub const MAX_SET_ENTRIES: usize = 1024;
pub const MAX_SET_BYTES: usize = 1 << 20;

/// Where a module's `set_property(path)` value is kept in a stream's properties (Envoy's
/// filter-state key for it).
pub fn module_key(path: &str) -> String {
    format!("wasm.{path}")
}

/// Whether `map` may take `key = value` within [`MAX_SET_ENTRIES`] and [`MAX_SET_BYTES`]
/// (replacing a key frees its old value).
pub fn fits(map: &BTreeMap<String, Vec<u8>>, key: &str, value_len: usize) -> bool {
    let old = map.get(key).map(|v| key.len() + v.len());
    let entries = map.len() + usize::from(old.is_none());
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() - old.unwrap_or(0)
        + key.len()
        + value_len;
    entries <= MAX_SET_ENTRIES && bytes <= MAX_SET_BYTES
}

fn int(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Every value of a header, joined with `,` as Envoy answers `request.headers.<name>`.
fn all(headers: &Headers, name: &str) -> Option<Vec<u8>> {
    let values = headers.get_all(name);
    (!values.is_empty()).then(|| values.join(&b","[..]))
}

/// A header map as Envoy serialises a CEL map: each name once, with all its values joined
/// by `,`, in the header-pairs encoding. Envoy's order is its hash set's; here it is the
/// order of first appearance.
fn map(headers: &Headers) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in headers.iter() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let joined = Headers::from(
        names
            .into_iter()
            .filter_map(|n| Some((n.to_owned(), all(headers, n)?)))
            .collect::<Vec<_>>(),
    );
    pairs::encode(&joined)
}

/// Looks a property up. `stream` is the effective stream, when there is one.
pub fn get(
    path: &[&str],
    plugin: &PluginConfig,
    stream: Option<&StreamData>,
    root_properties: &BTreeMap<String, Vec<u8>>,
    now_ns: u64,
) -> Option<Vec<u8>> {
    if path.first().is_some_and(|first| BUILT_IN.contains(first)) {
        return built_in(path, plugin, stream, now_ns);
    }
    let joined = path.join("\0");
    let properties = stream.map(|s| &s.properties);
    properties
        .and_then(|p| p.get(&joined).or_else(|| p.get(&module_key(&joined))))
        .or_else(|| root_properties.get(&joined))
        .cloned()
}

fn built_in(
    path: &[&str],
    plugin: &PluginConfig,
    stream: Option<&StreamData>,
    now_ns: u64,
) -> Option<Vec<u8>> {
    match path {
        ["plugin_name"] => return Some(text(&plugin.name)),
        ["plugin_root_id"] => return Some(text(&plugin.root_id)),
        ["plugin_vm_id"] => return Some(text(&plugin.vm_id)),
        ["listener_direction"] => return Some(int(1)),
        _ => {}
    }
    let s = stream?;
    let info = &s.info;
    let header = |name: &str| {
        s.request_headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(<[u8]>::to_vec)
    };
    let path_header = s
        .request_headers
        .as_ref()
        .and_then(|h| h.get(":path"))
        .unwrap_or_default();
    let query_at = path_header.iter().position(|&b| b == b'?');
    match path {
        ["request", "path"] => Some(path_header.to_vec()),
        ["request", "url_path"] => {
            Some(path_header[..query_at.unwrap_or(path_header.len())].to_vec())
        }
        ["request", "query"] => {
            Some(query_at.map_or_else(Vec::new, |at| path_header[at + 1..].to_vec()))
        }
        ["request", "host"] => header(":authority"),
        ["request", "scheme"] => header(":scheme"),
        ["request", "method"] => header(":method"),
        ["request", "referer"] => header("referer"),
        ["request", "useragent"] => header("user-agent"),
        ["request", "id"] => header("x-request-id").or_else(|| Some(text(&info.request_id))),
        ["request", "protocol"] => Some(text(&info.protocol)),
        ["request", "time"] => Some(int(unix_nanos(info.start))),
        ["request", "duration"] => Some(int(now_ns.saturating_sub(unix_nanos(info.start)))),
        ["request", "size"] => Some(int(s.request_bytes)),
        ["request", "total_size"] => Some(int(s.request_bytes
            + s.request_headers
                .as_ref()
                .map_or(0, |h| h.byte_size() as u64))),
        ["request", "headers"] => s.request_headers.as_ref().map(map),
        ["response", "headers"] => s.response_headers.as_ref().map(map),
        ["request", "headers", name] => s.request_headers.as_ref().and_then(|h| all(h, name)),
        ["response", "headers", name] => s.response_headers.as_ref().and_then(|h| all(h, name)),
        ["response", "code"] => s
            .response_headers
            .as_ref()
            .and_then(|h| h.get_str(":status"))
            .and_then(|v| v.parse::<u64>().ok())
            .map(int),
        ["response", "size"] => Some(int(s.response_bytes)),
        ["source", "address"] => Some(text(&info.source.to_string())),
        ["source", "port"] => Some(int(u64::from(info.source.port()))),
        ["destination", "address"] => Some(text(&info.destination.to_string())),
        ["destination", "port"] => Some(int(u64::from(info.destination.port()))),
        ["connection", "id"] | ["connection_id"] => Some(int(info.connection_id)),
        ["connection", "mtls"] => Some(vec![0]),
        ["connection", "requested_server_name"] => {
            Some(info.requested_server_name.as_bytes().to_vec())
        }
        ["route_name"] | ["xds", "route_name"] => Some(text(
            plugin
                .stream_identity
                .as_deref()
                .unwrap_or(&info.route_name),
        )),
        ["cluster_name"] | ["xds", "cluster_name"] => Some(text(
            plugin
                .stream_identity
                .as_deref()
                .unwrap_or(&info.cluster_name),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::filter_chain::StreamInfo;

    /// 2023-11-14T22:13:20.25Z.
    const START_NS: u64 = 1_700_000_000_250_000_000;

    fn plugin() -> PluginConfig {
        PluginConfig::new("rate-limiting", "{}")
            .root_id("rl-root")
            .vm_id("rl-vm")
    }

    fn stream() -> StreamData {
        let mut stream = StreamData::new(StreamInfo {
            source: "192.0.2.7:51234".parse().unwrap(),
            destination: "10.0.0.1:8000".parse().unwrap(),
            protocol: "HTTP/2".into(),
            route_name: "orders-route".into(),
            cluster_name: "orders-service".into(),
            request_id: "generated-id".into(),
            connection_id: 42,
            requested_server_name: "api.example".into(),
            start: UNIX_EPOCH + Duration::from_nanos(START_NS),
        });
        stream.request_headers = Some(Headers::from_pairs([
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.example"),
            (":path", "/orders/7?expand=items&x=%20"),
            ("referer", "https://shop.example/"),
            ("user-agent", "curl/8.5"),
            ("x-multi", "a"),
            ("X-Multi", "b, c"),
        ]));
        stream.request_bytes = 11;
        stream
    }

    fn get_with(
        path: &str,
        stream: Option<&StreamData>,
        root: &BTreeMap<String, Vec<u8>>,
        now_ns: u64,
    ) -> Option<Vec<u8>> {
        let segments: Vec<&str> = path.split('.').collect();
        get(&segments, &plugin(), stream, root, now_ns)
    }

    fn get_in(stream: &StreamData, path: &str) -> Option<Vec<u8>> {
        get_with(path, Some(stream), &BTreeMap::new(), START_NS)
    }

    fn int(v: u64) -> Option<Vec<u8>> {
        Some(v.to_le_bytes().to_vec())
    }

    fn text(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn the_plugins_own_names_are_there_with_or_without_a_stream() {
        for stream in [None, Some(&stream())] {
            let get = |path| get_with(path, stream, &BTreeMap::new(), 0);
            assert_eq!(get("plugin_name"), text("rate-limiting"));
            assert_eq!(get("plugin_root_id"), text("rl-root"));
            assert_eq!(get("plugin_vm_id"), text("rl-vm"));
            // An int: Envoy's INBOUND.
            assert_eq!(get("listener_direction"), int(1));
        }
    }

    #[test]
    fn without_a_stream_no_stream_property_is_found() {
        for path in [
            "request.path",
            "request.time",
            "request.id",
            "response.code",
            "source.address",
            "connection.id",
            "xds.route_name",
            "route_name",
        ] {
            assert_eq!(
                get_with(path, None, &BTreeMap::new(), START_NS),
                None,
                "{path}"
            );
        }
    }

    #[test]
    fn request_strings_come_from_the_request_head() {
        let s = stream();
        assert_eq!(
            get_in(&s, "request.path"),
            text("/orders/7?expand=items&x=%20")
        );
        assert_eq!(get_in(&s, "request.url_path"), text("/orders/7"));
        assert_eq!(get_in(&s, "request.query"), text("expand=items&x=%20"));
        assert_eq!(get_in(&s, "request.host"), text("api.example"));
        assert_eq!(get_in(&s, "request.scheme"), text("https"));
        assert_eq!(get_in(&s, "request.method"), text("POST"));
        assert_eq!(get_in(&s, "request.referer"), text("https://shop.example/"));
        assert_eq!(get_in(&s, "request.useragent"), text("curl/8.5"));
        assert_eq!(get_in(&s, "request.protocol"), text("HTTP/2"));
        // Without `x-request-id`, the id the data plane made; the header wins when sent.
        assert_eq!(get_in(&s, "request.id"), text("generated-id"));
        let mut with_id = stream();
        with_id
            .request_headers
            .as_mut()
            .unwrap()
            .add("x-request-id", "from-client");
        assert_eq!(get_in(&with_id, "request.id"), text("from-client"));
    }

    #[test]
    fn a_path_without_a_query_has_an_empty_query_and_is_its_own_url_path() {
        let mut s = stream();
        let headers = s.request_headers.as_mut().unwrap();
        headers.replace(":path", "/plain");
        assert_eq!(get_in(&s, "request.url_path"), text("/plain"));
        assert_eq!(get_in(&s, "request.query"), text(""));
        s.request_headers
            .as_mut()
            .unwrap()
            .replace(":path", "/empty?");
        assert_eq!(get_in(&s, "request.url_path"), text("/empty"));
        assert_eq!(get_in(&s, "request.query"), text(""));
        // Only the first `?` separates; a fragment stays, as in Envoy.
        s.request_headers
            .as_mut()
            .unwrap()
            .replace(":path", "/a?b=?c#f");
        assert_eq!(get_in(&s, "request.url_path"), text("/a"));
        assert_eq!(get_in(&s, "request.query"), text("b=?c#f"));
        // Headers not seen yet: the path parts are empty, the rest absent.
        let mut bare = stream();
        bare.request_headers = None;
        assert_eq!(get_in(&bare, "request.path"), text(""));
        assert_eq!(get_in(&bare, "request.url_path"), text(""));
        assert_eq!(get_in(&bare, "request.query"), text(""));
        assert_eq!(get_in(&bare, "request.method"), None);
        assert_eq!(get_in(&bare, "request.headers.x-multi"), None);
    }

    #[test]
    fn a_header_property_joins_every_value_with_a_comma_as_envoy_does() {
        let mut s = stream();
        // Case-insensitive, every value in order.
        assert_eq!(get_in(&s, "request.headers.x-multi"), text("a,b, c"));
        assert_eq!(get_in(&s, "request.headers.X-MULTI"), text("a,b, c"));
        assert_eq!(get_in(&s, "request.headers.user-agent"), text("curl/8.5"));
        assert_eq!(get_in(&s, "request.headers.:method"), text("POST"));
        assert_eq!(get_in(&s, "request.headers.absent"), None);
        // Values are bytes (obs-text stays as sent).
        s.request_headers
            .as_mut()
            .unwrap()
            .add("x-raw", [0xe9, b'!']);
        assert_eq!(get_in(&s, "request.headers.x-raw"), Some(vec![0xe9, b'!']));

        assert_eq!(
            get_in(&s, "response.headers.server"),
            None,
            "no response yet"
        );
        s.response_headers = Some(Headers::from_pairs([
            (":status", "201"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]));
        assert_eq!(get_in(&s, "response.headers.set-cookie"), text("a=1,b=2"));
        assert_eq!(get_in(&s, "response.headers.:status"), text("201"));
        assert_eq!(get_in(&s, "response.headers.absent"), None);
    }

    #[test]
    fn numbers_are_eight_little_endian_bytes() {
        let mut s = stream();
        // Nanoseconds since the epoch.
        assert_eq!(get_in(&s, "request.time"), int(START_NS));
        assert_eq!(
            get_in(&s, "request.time").unwrap(),
            [0x80, 0xb2, 0x10, 0x45, 0xfe, 0x9c, 0x97, 0x17]
        );
        // Since the start, at the time asked; never negative.
        assert_eq!(
            get_with(
                "request.duration",
                Some(&s),
                &BTreeMap::new(),
                START_NS + 1_500_000
            ),
            int(1_500_000)
        );
        assert_eq!(
            get_with("request.duration", Some(&s), &BTreeMap::new(), START_NS - 1),
            int(0)
        );
        assert_eq!(get_in(&s, "request.size"), int(11));
        // The body and the headers' names and values.
        // 142: the names and values of `stream()`'s eight request headers.
        assert_eq!(get_in(&s, "request.total_size"), int(11 + 142));
        s.request_headers = None;
        assert_eq!(get_in(&s, "request.total_size"), int(11));

        assert_eq!(get_in(&s, "response.code"), None, "no response yet");
        assert_eq!(get_in(&s, "response.size"), int(0));
        s.response_headers = Some(Headers::from_pairs([(":status", "503")]));
        s.response_bytes = 1 << 40;
        assert_eq!(get_in(&s, "response.code"), int(503));
        assert_eq!(get_in(&s, "response.size"), int(1 << 40));
        s.response_headers = Some(Headers::from_pairs([(":status", "abc")]));
        assert_eq!(get_in(&s, "response.code"), None);

        assert_eq!(get_in(&s, "connection.id"), int(42));
        assert_eq!(get_in(&s, "connection_id"), int(42));
    }

    #[test]
    fn addresses_are_ip_and_port_text_and_ports_are_ints() {
        let mut s = stream();
        assert_eq!(get_in(&s, "source.address"), text("192.0.2.7:51234"));
        assert_eq!(get_in(&s, "source.port"), int(51234));
        assert_eq!(get_in(&s, "destination.address"), text("10.0.0.1:8000"));
        assert_eq!(get_in(&s, "destination.port"), int(8000));
        s.info.source = "[2001:db8::1]:443".parse::<SocketAddr>().unwrap();
        assert_eq!(get_in(&s, "source.address"), text("[2001:db8::1]:443"));
        assert_eq!(get_in(&s, "source.port"), int(443));
    }

    #[test]
    fn connection_and_configuration_names() {
        let s = stream();
        // A bool is one byte; plain HTTP has neither mTLS nor SNI.
        assert_eq!(get_in(&s, "connection.mtls"), Some(vec![0]));
        assert_eq!(
            get_in(&s, "connection.requested_server_name"),
            text("api.example")
        );
        assert_eq!(get_in(&s, "xds.route_name"), text("orders-route"));
        assert_eq!(get_in(&s, "route_name"), text("orders-route"));
        assert_eq!(get_in(&s, "xds.cluster_name"), text("orders-service"));
        assert_eq!(get_in(&s, "cluster_name"), text("orders-service"));
    }

    /// A plugin with a stream identity of its own (a data plane's platform layer) reads it
    /// as its route and cluster on every stream; the stream's other facts stay the stream's.
    #[test]
    fn a_plugins_own_stream_identity_names_its_route_and_cluster() {
        let s = stream();
        let platform = plugin().stream_identity("wasmgate.platform");
        let read = |path: &str| {
            let segments: Vec<&str> = path.split('.').collect();
            get(&segments, &platform, Some(&s), &BTreeMap::new(), START_NS)
        };
        for path in [
            "xds.route_name",
            "route_name",
            "xds.cluster_name",
            "cluster_name",
        ] {
            assert_eq!(read(path), text("wasmgate.platform"), "{path}");
        }
        assert_eq!(read("source.address"), text("192.0.2.7:51234"));
    }

    #[test]
    fn an_unknown_path_is_not_found() {
        let s = stream();
        for path in [
            "",
            "request",
            "response",
            "source",
            "request.nope",
            "request.path.more",
            "request.headers.x-multi.more",
            "xds",
            "xds.node",
            "upstream.address",
            "metadata",
            "filter_state",
            "plugin_name.more",
            "Plugin_name",
        ] {
            assert_eq!(get_in(&s, path), None, "{path}");
        }
    }

    #[test]
    fn set_values_never_shadow_built_in_properties() {
        let mut root = BTreeMap::new();
        root.insert("plugin_name".to_owned(), b"root-value".to_vec());
        root.insert("my\0key".to_owned(), b"root-only".to_vec());
        root.insert("request\0path".to_owned(), b"/from-root".to_vec());
        let mut s = stream();
        for key in [
            "request\0path",
            "source\0address",
            "plugin_name",
            "xds\0route_name",
        ] {
            s.properties.insert(module_key(key), b"spoofed".to_vec());
        }
        s.properties
            .insert(module_key("my\0key"), b"stream-value".to_vec());
        let get = |path: &[&str], stream: Option<&StreamData>| {
            get(path, &plugin(), stream, &root, START_NS)
        };
        assert_eq!(
            get(&["request", "path"], Some(&s)),
            text("/orders/7?expand=items&x=%20")
        );
        assert_eq!(
            get(&["source", "address"], Some(&s)),
            text("192.0.2.7:51234")
        );
        assert_eq!(get(&["xds", "route_name"], Some(&s)), text("orders-route"));
        assert_eq!(get(&["plugin_name"], Some(&s)), text("rate-limiting"));
        assert_eq!(get(&["plugin_name"], None), text("rate-limiting"));
        // Without a stream a stream property is absent, whatever was set.
        assert_eq!(get(&["request", "path"], None), None);
        // Other names: the stream's value, then the root's.
        assert_eq!(get(&["my", "key"], Some(&s)), text("stream-value"));
        assert_eq!(get(&["my", "key"], None), text("root-only"));
        // Segments are joined with NUL, not dots.
        assert_eq!(get(&["my.key"], None), None);
    }

    #[test]
    fn the_data_planes_facts_come_before_what_modules_set() {
        let mut s = stream();
        s.properties
            .insert("uri_captures".to_owned(), b"from-the-router".to_vec());
        s.properties
            .insert(module_key("uri_captures"), b"spoofed".to_vec());
        assert_eq!(get_in(&s, "uri_captures"), text("from-the-router"));
        s.properties.remove("uri_captures");
        assert_eq!(get_in(&s, "uri_captures"), text("spoofed"));
    }

    #[test]
    fn what_a_context_may_set_is_bounded() {
        let mut map = BTreeMap::new();
        assert!(fits(&map, "k", MAX_SET_BYTES - 1));
        assert!(!fits(&map, "k", MAX_SET_BYTES));
        map.insert("k".to_owned(), vec![0; MAX_SET_BYTES - 1]);
        // Replacing frees the old value.
        assert!(fits(&map, "k", MAX_SET_BYTES - 1));
        assert!(!fits(&map, "j", 0));
        map.clear();
        for i in 0..MAX_SET_ENTRIES - 1 {
            map.insert(i.to_string(), Vec::new());
        }
        assert!(fits(&map, "last", 0));
        map.insert("last".to_owned(), Vec::new());
        assert!(!fits(&map, "one-more", 0));
        assert!(fits(&map, "last", 10));
    }

    #[test]
    fn a_header_map_property_is_each_name_once_in_pairs() {
        let s = stream();
        let bytes = get_in(&s, "request.headers").expect("the map");
        let decoded = pairs::decode(&bytes).expect("the header-pairs encoding");
        assert_eq!(
            decoded,
            Headers::from_pairs([
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "api.example"),
                (":path", "/orders/7?expand=items&x=%20"),
                ("referer", "https://shop.example/"),
                ("user-agent", "curl/8.5"),
                ("x-multi", "a,b, c"),
            ])
        );
        let mut s = stream();
        assert_eq!(get_in(&s, "response.headers"), None, "no response yet");
        s.response_headers = Some(Headers::from_pairs([(":status", "200"), ("a", "")]));
        assert_eq!(
            pairs::decode(&get_in(&s, "response.headers").unwrap()),
            Some(Headers::from_pairs([(":status", "200"), ("a", "")]))
        );
        s.request_headers = None;
        assert_eq!(get_in(&s, "request.headers"), None);
    }
}
