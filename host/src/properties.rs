//! Properties (`proxy_get_property`) with Envoy's names and encodings: strings and bytes as
//! they are, integers as 8 little-endian bytes, booleans as one byte, timestamps and
//! durations as nanoseconds. A path is its segments joined with `\0`.

use crate::clock::unix_nanos;
use crate::filter_chain::StreamData;
use crate::plugin_config::PluginConfig;

fn int(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
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
        ["request", "headers", name] => header(name),
        ["response", "headers", name] => s
            .response_headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(<[u8]>::to_vec),
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
