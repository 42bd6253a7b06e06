//! Header rules of a reverse proxy, as Kong applies them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use super::errors::ProxyError;
use super::Downstream;

/// The largest request head: names and values together, as Envoy counts its
/// `max_request_headers_kb` (60 by default). hyper bounds the number of headers (100, as
/// Envoy's `max_headers_count`) but its read buffer is no exact bound on their size.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;

/// 501 for a request with a transfer coding besides chunked (hyper has already refused one
/// whose last coding is not chunked): Envoy implements only chunked, and forwarding the body
/// without its coding would hand the upstream bytes it would read as something else.
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let codings = value.as_bytes().split(|&b| b == b',');
        for coding in codings {
            if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ProxyError::NotImplemented(
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            }
        }
    }
    Ok(())
}

/// 431 for a request head past [`MAX_REQUEST_HEADERS_BYTES`].
pub fn check_request_head_size(headers: &HeaderMap) -> Result<(), ProxyError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_REQUEST_HEADERS_BYTES {
        return Err(ProxyError::HeadersTooLarge(size));
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded. `Trailer` is not one: it
/// announces end-to-end trailers, and hyper sends HTTP/1.1 trailers only when it is there.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// Removes hop-by-hop headers, including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // hyper sets the framing of what it sends itself.
    headers.remove(header::TRANSFER_ENCODING);
}

/// Whether the request's TE is exactly `trailers`: the one TE value a request keeps on its
/// way upstream, since gRPC servers require it and HTTP/2 allows it (RFC 9113 §8.2.2).
fn te_is_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"))
        && values.next().is_none()
}

/// Frames a request body of unknown length as chunked. hyper's client does so by itself only
/// for methods that usually carry a body: for GET, HEAD and CONNECT it assumes there is none
/// and would drop the body a client (or a filter) sent (differential finding F5).
pub fn frame_body_of_unknown_length(headers: &mut HeaderMap, body_follows: bool) {
    if body_follows && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// The host the client asked for, lower-cased: the request target's authority when it has
/// one (HTTP/2's :authority, or an HTTP/1.1 absolute-form target, whose Host header a server
/// must then ignore: RFC 9112 §3.2.2), else the Host header.
pub fn request_host(parts: &Parts) -> String {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    raw.to_ascii_lowercase()
}

/// The upstream request's headers: the client's minus hop-by-hop ones, then Kong's
/// forwarding headers and the Host the route asks for.
pub fn forward_request_headers(
    parts: &Parts,
    out: &mut HeaderMap,
    downstream: &Downstream,
    host: &str,
    path: &str,
    upstream_host: String,
) {
    *out = parts.headers.clone();
    strip_hop_by_hop(out);
    if te_is_trailers(&parts.headers) {
        out.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let client_ip = downstream.peer.ip().to_string();
    // nginx's $proxy_add_x_forwarded_for: every X-Forwarded-For line the client sent, in
    // order and joined with ", ", then the client's address.
    let mut forwarded_for: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    forwarded_for.push(&client_ip);
    let forwarded_for = forwarded_for.join(", ");
    let scheme = if downstream.tls { "https" } else { "http" };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name, value);
        }
    };
    set("x-real-ip", &client_ip);
    set("x-forwarded-for", &forwarded_for);
    set("x-forwarded-proto", scheme);
    set("x-forwarded-host", model::router::host_without_port(host));
    set("x-forwarded-port", &downstream.local.port().to_string());
    set("x-forwarded-path", path);
    set("host", &upstream_host);
}
