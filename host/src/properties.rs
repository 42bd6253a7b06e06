//! Properties (`proxy_get_property`) with Envoy's names and encodings: strings and bytes as
//! they are, integers as 8 little-endian bytes, booleans as one byte, timestamps and
//! durations as nanoseconds. A path is its segments joined with `\0`. A header's several
//! values are joined with `,` (`request.headers.<name>`).

use crate::clock::unix_nanos;
use crate::filter_chain::StreamData;
use crate::headers::Headers;
use crate::plugin_config::PluginConfig;

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

/// Looks a property up. `stream` is the effective stream, when there is one; values set with
/// `set_property` come first.
pub fn get(
    path: &[&str],
    plugin: &PluginConfig,
    stream: Option<&StreamData>,
    root_properties: &std::collections::BTreeMap<String, Vec<u8>>,
    now_ns: u64,
) -> Option<Vec<u8>> {
    let joined = path.join("\0");
    if let Some(v) = stream.and_then(|s| s.properties.get(&joined)) {
        return Some(v.clone());
    }
    if let Some(v) = root_properties.get(&joined) {
        return Some(v.clone());
    }
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
        ["request", "headers"] | ["response", "headers"] => None,
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
        ["connection", "id"] => Some(int(info.connection_id)),
        ["connection", "mtls"] => Some(vec![0]),
        ["connection", "requested_server_name"] => Some(Vec::new()),
        ["route_name"] | ["xds", "route_name"] => Some(text(&info.route_name)),
        ["cluster_name"] | ["xds", "cluster_name"] => Some(text(&info.cluster_name)),
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
        StreamData {
            info: StreamInfo {
                source: "192.0.2.7:51234".parse().unwrap(),
                destination: "10.0.0.1:8000".parse().unwrap(),
                protocol: "HTTP/2".into(),
                route_name: "orders-route".into(),
                cluster_name: "orders-service".into(),
                request_id: "generated-id".into(),
                connection_id: 42,
                start: UNIX_EPOCH + Duration::from_nanos(START_NS),
            },
            request_headers: Some(Headers::from_pairs([
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "api.example"),
                (":path", "/orders/7?expand=items&x=%20"),
                ("referer", "https://shop.example/"),
                ("user-agent", "curl/8.5"),
                ("x-multi", "a"),
                ("X-Multi", "b, c"),
            ])),
            request_bytes: 11,
            ..StreamData::default()
        }
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
        // The whole map is not served.
        assert_eq!(get_in(&s, "request.headers"), None);

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
        assert_eq!(get_in(&s, "response.headers"), None);
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
        assert_eq!(get_in(&s, "connection.requested_server_name"), text(""));
        assert_eq!(get_in(&s, "xds.route_name"), text("orders-route"));
        assert_eq!(get_in(&s, "route_name"), text("orders-route"));
        assert_eq!(get_in(&s, "xds.cluster_name"), text("orders-service"));
        assert_eq!(get_in(&s, "cluster_name"), text("orders-service"));
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
    fn values_set_by_filters_come_first_the_streams_before_the_roots() {
        let mut root = BTreeMap::new();
        root.insert("plugin_name".to_owned(), b"root-value".to_vec());
        root.insert("my\0key".to_owned(), b"root-only".to_vec());
        root.insert("request\0path".to_owned(), b"/from-root".to_vec());
        let mut s = stream();
        s.properties
            .insert("request\0path".to_owned(), b"/from-stream".to_vec());
        let get = |path: &[&str], stream: Option<&StreamData>| {
            get(path, &plugin(), stream, &root, START_NS)
        };
        assert_eq!(get(&["request", "path"], Some(&s)), text("/from-stream"));
        assert_eq!(get(&["plugin_name"], Some(&s)), text("root-value"));
        assert_eq!(get(&["plugin_name"], None), text("root-value"));
        assert_eq!(get(&["my", "key"], Some(&s)), text("root-only"));
        assert_eq!(get(&["my", "key"], None), text("root-only"));
        // Segments are joined with NUL, not dots.
        assert_eq!(get(&["my.key"], None), None);
        // The root's value stands in for a built-in one only through the joined path.
        assert_eq!(get(&["request", "path"], None), text("/from-root"));
    }
}
