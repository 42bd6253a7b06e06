//! Header rules of a reverse proxy, as Kong applies them.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use super::errors::ProxyError;
use super::Downstream;

/// The largest request head: names and values together, as Envoy counts its
/// `max_request_headers_kb` (60 by default). hyper bounds the number of headers (100, as
/// Envoy's `max_headers_count`) but its read buffer is no exact bound on their size.
pub const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;

/// 501 for a request with a transfer coding besides chunked (hyper has already refused one
/// whose last coding is not chunked), or with chunked more than once (RFC 9112 §6.1: a sender
/// must not apply it twice; hyper would remove one layer only): Envoy implements only chunked,
/// once, and forwarding the body without its coding would hand the upstream bytes it would read
/// as something else.
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), ProxyError> {
    let values = headers.get_all(header::TRANSFER_ENCODING);
    let mut codings = values
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    let only_chunked = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(coding), None) => coding.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    };
    if only_chunked {
        return Ok(());
    }
    let joined: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    Err(ProxyError::NotImplemented(joined.join(", ")))
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
/// With `Transfer-Encoding`, which hyper sets itself for what it sends.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup for each.
    if !has_hop_by_hop(headers) {
        return;
    }
    // Byte-wise: one value with an obs-text byte elsewhere still names its other headers.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
}

/// Whether a message has any hop-by-hop header (a header its Connection names comes with a
/// Connection).
fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| HOP_BY_HOP.contains(name))
}

/// A request's headers as filters see them: without the connection-specific ones (Envoy
/// removes them before its filters: a filter never sees `transfer-encoding`, `connection` or
/// what it names), but with a `te: trailers` that goes on upstream.
pub fn for_filters(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    // TE, an upgrade's Connection and Upgrade are hop-by-hop headers too.
    if !has_hop_by_hop(headers) {
        return Cow::Borrowed(headers);
    }
    let mut kept = headers.clone();
    strip_hop_by_hop(&mut kept);
    if te_is_trailers(headers) {
        kept.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // Envoy keeps an upgrade's Connection and Upgrade for its filters, and sends them on.
    if super::upgrade::is_websocket(headers) {
        super::upgrade::set_websocket_headers(&mut kept);
    }
    Cow::Owned(kept)
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

/// The upstream request's headers: the client's (`received`, taken over) minus hop-by-hop
/// ones, then Kong's forwarding headers and the Host the route asks for. `prefix` is what
/// strip_path took off the path (Kong's `X-Forwarded-Prefix`).
pub fn forward_request_headers(
    received: HeaderMap,
    out: &mut HeaderMap,
    downstream: &Downstream,
    host: &str,
    path: &str,
    prefix: Option<&str>,
    upstream_host: String,
) {
    // Everything read from what the client sent is read before the map is taken over.
    let te_trailers = te_is_trailers(&received);
    let websocket = super::upgrade::is_websocket(&received);
    let client_ip = ip_text(downstream.client.ip());
    // Kong's X-Forwarded-For: every line the client sent, in order and joined with ", ",
    // then the peer (nginx's $realip_remote_addr); without any, the client.
    let mut lines = received
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .peekable();
    let forwarded_for = if lines.peek().is_none() {
        HeaderValue::from_bytes(client_ip.as_bytes()).ok()
    } else {
        let peer_ip = ip_text(downstream.peer.ip());
        let mut joined: Vec<&[u8]> = lines.collect();
        joined.push(peer_ip.as_bytes());
        HeaderValue::from_bytes(&joined.join(&b", "[..])).ok()
    };
    let port = downstream.local.port().to_string();
    // What a trusted proxy says of the scheme, host, port and path goes on; anyone else's is
    // replaced by the gateway's own view (never left in place, should that not be a value).
    let view = |name: &'static HeaderName, own: &[u8]| {
        (
            name,
            HeaderValue::from_bytes(downstream.forwarded(&received, name, own)).ok(),
        )
    };
    let views = [
        view(&X_FORWARDED_PROTO, downstream.scheme().as_bytes()),
        view(
            &X_FORWARDED_HOST,
            model::router::host_without_port(host).as_bytes(),
        ),
        view(&X_FORWARDED_PORT, port.as_bytes()),
        view(&X_FORWARDED_PATH, path.as_bytes()),
    ];
    // Kong sets it only for a stripped prefix other than `/`; there is no own view otherwise,
    // and an untrusted client's is dropped.
    let theirs = downstream
        .trusted_peer
        .then(|| received.get(&X_FORWARDED_PREFIX).cloned())
        .flatten();
    let own = prefix
        .filter(|p| *p != "/")
        .and_then(|p| HeaderValue::from_str(p).ok());

    *out = received;
    // Room for the headers set below, grown once.
    out.reserve(FORWARDING_HEADERS);
    strip_hop_by_hop(out);
    if te_trailers {
        out.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if websocket {
        super::upgrade::set_websocket_headers(out);
    }
    // Names made once: a `&str` name is parsed again on every insert.
    let mut set = |name: &HeaderName, value: Option<HeaderValue>| {
        match value {
            Some(value) => out.insert(name.clone(), value),
            None => out.remove(name),
        };
    };
    for (name, value) in views {
        set(name, value);
    }
    set(&X_FORWARDED_PREFIX, theirs.or(own));
    set(
        &X_REAL_IP,
        HeaderValue::from_bytes(client_ip.as_bytes()).ok(),
    );
    set(&X_FORWARDED_FOR, forwarded_for);
    set(
        &header::HOST,
        HeaderValue::from_bytes(upstream_host.as_bytes()).ok(),
    );
}

/// How many headers [`forward_request_headers`] adds at most.
pub const FORWARDING_HEADERS: usize = 8;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PATH: HeaderName = HeaderName::from_static("x-forwarded-path");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An address as text, as `Display` writes it. IPv4 (nearly every peer) is written by hand:
/// `Display` goes through the formatter's padding machinery, over a microsecond per request
/// for the two addresses Kong's headers carry.
fn ip_text(ip: std::net::IpAddr) -> IpText {
    let std::net::IpAddr::V4(v4) = ip else {
        return IpText::Other(ip.to_string());
    };
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            buf[len] = b'0' + digit;
            len += 1;
        }
    }
    IpText::V4 { buf, len }
}

enum IpText {
    V4 { buf: [u8; 15], len: usize },
    Other(String),
}

impl IpText {
    fn as_bytes(&self) -> &[u8] {
        match self {
            IpText::V4 { buf, len } => &buf[..*len],
            IpText::Other(text) => text.as_bytes(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;

    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use http::request::Parts;

    use super::*;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        let mut addresses: Vec<std::net::IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.9.99",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for octet in 0..=255u8 {
            addresses.push(std::net::Ipv4Addr::new(octet, 255 - octet, octet / 3, 100).into());
        }
        for address in addresses {
            assert_eq!(ip_text(address).as_bytes(), address.to_string().as_bytes());
        }
    }

    /// A map of `pairs`, in order.
    pub(in crate::proxy) fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (name, value) in pairs {
            m.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        m
    }

    /// Every (name, value) in order, values as bytes.
    fn pairs(m: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        m.iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn values<'a>(m: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        m.get_all(name).iter().map(HeaderValue::as_bytes).collect()
    }

    fn te(values: &[&[u8]]) -> Result<(), String> {
        let pairs: Vec<(&str, &[u8])> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
        match check_transfer_encoding(&map(&pairs)) {
            Ok(()) => Ok(()),
            Err(ProxyError::NotImplemented(value)) => Err(value),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_single_chunked_coding_passes() {
        assert_eq!(te(&[]), Ok(()));
        assert_eq!(te(&[b"chunked"]), Ok(()));
        assert_eq!(te(&[b"Chunked"]), Ok(()));
        assert_eq!(te(&[b" CHUNKED\t"]), Ok(()));
        assert_eq!(te(&[b"gzip, chunked"]), Err("gzip, chunked".into()));
        assert_eq!(te(&[b"GZIP,CHUNKED"]), Err("GZIP,CHUNKED".into()));
        assert_eq!(te(&[b"gzip", b"chunked"]), Err("gzip, chunked".into()));
        // Chunked twice (RFC 9112 §6.1), on one line or two; an empty list element.
        assert_eq!(te(&[b"chunked, chunked"]), Err("chunked, chunked".into()));
        assert_eq!(
            te(&[b"chunked", b"chunked"]),
            Err("chunked, chunked".into())
        );
        assert_eq!(te(&[b"chunked,"]), Err("chunked,".into()));
        assert_eq!(te(&[b""]), Err("".into()));
        // A byte outside UTF-8 is named as well as it can be.
        assert_eq!(te(&[b"x\xffy, chunked"]), Err("x\u{fffd}y, chunked".into()));
    }

    #[test]
    fn the_request_head_may_be_exactly_60_kib_and_not_one_byte_more() {
        assert_eq!(MAX_REQUEST_HEADERS_BYTES, 61_440);
        // Names and values count, as bytes: 5 + 1 + (61_440 - 6 - 100) + 100.
        let obs_text = vec![0xe9u8; 100];
        let filler = vec![b'v'; 61_440 - 6 - 100];
        let at = map(&[("x-big", &filler), ("x", &obs_text)]);
        assert!(check_request_head_size(&at).is_ok());
        let mut past = filler.clone();
        past.push(b'v');
        let past = map(&[("x-big", &past), ("x", &obs_text)]);
        match check_request_head_size(&past) {
            Err(ProxyError::HeadersTooLarge(size)) => assert_eq!(size, 61_441),
            other => panic!("{other:?}"),
        }
        // Every value of a repeated name counts.
        let half = vec![b'v'; 30_720 - 2];
        assert!(check_request_head_size(&map(&[("ab", &half), ("ab", &half)])).is_ok());
        let over = map(&[("ab", &half), ("ab", &half), ("c", b"")]);
        assert!(matches!(
            check_request_head_size(&over),
            Err(ProxyError::HeadersTooLarge(61_441))
        ));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut m = map(&[
            ("connection", b"keep-alive, X-Private,\tx-other"),
            ("keep-alive", b"timeout=5"),
            ("proxy-connection", b"keep-alive"),
            ("proxy-authenticate", b"Basic"),
            ("proxy-authorization", b"Basic eA=="),
            ("te", b"trailers"),
            ("upgrade", b"h2c"),
            ("transfer-encoding", b"chunked"),
            ("x-private", b"1"),
            ("x-other", b"2"),
            ("trailer", b"x-checksum"),
            ("x-kept", b"caf\xe9"),
            ("x-kept", b"second"),
        ]);
        strip_hop_by_hop(&mut m);
        assert_eq!(
            pairs(&m),
            [
                ("trailer".to_owned(), b"x-checksum".to_vec()),
                ("x-kept".to_owned(), b"caf\xe9".to_vec()),
                ("x-kept".to_owned(), b"second".to_vec()),
            ]
        );
    }

    /// A Connection value with a byte outside ASCII still names its other headers.
    #[test]
    fn a_connection_value_with_obs_text_still_removes_the_headers_it_names() {
        let mut m = map(&[
            ("connection", b"x-secret, caf\xe9"),
            ("connection", b"X-Second"),
            ("x-secret", b"s"),
            ("x-second", b"s"),
            ("x-kept", b"k"),
        ]);
        strip_hop_by_hop(&mut m);
        assert_eq!(pairs(&m), [("x-kept".to_owned(), b"k".to_vec())]);
    }

    #[test]
    fn te_is_trailers_only_for_a_single_trailers_value() {
        let is = |values: &[&[u8]]| {
            let pairs: Vec<(&str, &[u8])> = values.iter().map(|v| ("te", *v)).collect();
            te_is_trailers(&map(&pairs))
        };
        assert!(is(&[b"trailers"]));
        assert!(is(&[b" Trailers "]));
        assert!(!is(&[]));
        // (`trailers, deflate` and two `trailers` lines are left out: Envoy's
        // sanitizeTEHeader may keep `TE: trailers` for them, wasmgate drops TE; see #20.)
        assert!(!is(&[b"gzip"]));
        assert!(!is(&[b"trailers\xff"]));
    }

    #[test]
    fn a_body_of_unknown_length_is_framed_chunked() {
        let mut m = map(&[("x", b"1")]);
        frame_body_of_unknown_length(&mut m, true);
        assert_eq!(
            pairs(&m),
            [
                ("x".to_owned(), b"1".to_vec()),
                ("transfer-encoding".to_owned(), b"chunked".to_vec())
            ]
        );
        let mut sized = map(&[("content-length", b"5")]);
        frame_body_of_unknown_length(&mut sized, true);
        assert_eq!(
            pairs(&sized),
            [("content-length".to_owned(), b"5".to_vec())]
        );
        let mut none = map(&[("x", b"1")]);
        frame_body_of_unknown_length(&mut none, false);
        assert_eq!(pairs(&none), [("x".to_owned(), b"1".to_vec())]);
    }

    fn parts(uri: &str, headers: &[(&str, &[u8])]) -> Parts {
        let mut request = http::Request::builder().uri(uri).body(()).unwrap();
        *request.headers_mut() = map(headers);
        request.into_parts().0
    }

    #[test]
    fn the_request_host_is_the_targets_authority_else_the_host_header_lower_cased() {
        assert_eq!(
            request_host(&parts("/x", &[("host", b"API.Example.com:8443")])),
            "api.example.com:8443"
        );
        // An absolute-form target wins over the Host header (RFC 9112 §3.2.2).
        assert_eq!(
            request_host(&parts(
                "http://Target.Example/x",
                &[("host", b"other.example")]
            )),
            "target.example"
        );
        assert_eq!(request_host(&parts("/x", &[])), "");
        // A Host outside UTF-8 is no host.
        assert_eq!(
            request_host(&parts("/x", &[("host", b"caf\xe9.example")])),
            ""
        );
    }

    #[test]
    fn forwarded_headers_are_the_clients_minus_hop_by_hop_plus_kongs() {
        let p = parts(
            "/api/x?q=1",
            &[
                ("host", b"gw.example:8000"),
                ("connection", b"x-hop"),
                ("x-hop", b"1"),
                ("te", b"Trailers"),
                ("x-forwarded-for", b"1.1.1.1"),
                ("x-forwarded-for", b" 2.2.2.2, 3.3.3.3 "),
                ("x-forwarded-for", b""),
                // A client's own values are replaced, never trusted.
                ("x-real-ip", b"6.6.6.6"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"evil.example"),
                ("x-forwarded-port", b"1"),
                ("x-forwarded-path", b"/evil"),
                ("x-bytes", b"caf\xe9"),
            ],
        );
        let downstream = Downstream {
            peer: "10.0.0.9:51000".parse::<SocketAddr>().unwrap(),
            client: "10.0.0.9:51000".parse::<SocketAddr>().unwrap(),
            trusted_peer: false,
            local: "127.0.0.1:8000".parse::<SocketAddr>().unwrap(),
            tls: false,
            server_name: None,
            id: 1,
        };
        let mut out = HeaderMap::new();
        out.insert("x-stale", HeaderValue::from_static("1"));
        forward_request_headers(
            p.headers.clone(),
            &mut out,
            &downstream,
            "gw.example:8000",
            "/api/x",
            None,
            "backend.internal:9000".into(),
        );
        assert!(values(&out, "x-stale").is_empty(), "the map is replaced");
        assert!(values(&out, "connection").is_empty());
        assert!(values(&out, "x-hop").is_empty());
        assert_eq!(values(&out, "te"), [b"trailers"]);
        assert_eq!(values(&out, "host"), [b"backend.internal:9000"]);
        assert_eq!(values(&out, "x-real-ip"), [b"10.0.0.9"]);
        assert_eq!(
            values(&out, "x-forwarded-for"),
            [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]
        );
        assert_eq!(values(&out, "x-forwarded-proto"), [b"http"]);
        assert_eq!(values(&out, "x-forwarded-host"), [b"gw.example"]);
        assert_eq!(values(&out, "x-forwarded-port"), [b"8000"]);
        assert_eq!(values(&out, "x-forwarded-path"), [b"/api/x"]);
        assert_eq!(values(&out, "x-bytes"), [b"caf\xe9"]);
        assert_eq!(out.len(), 9, "{out:?}");

        // Over TLS, from IPv6, without TE or X-Forwarded-For.
        let p = parts("/", &[("te", b"gzip")]);
        let downstream = Downstream {
            peer: "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
            client: "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
            trusted_peer: false,
            local: "[::1]:8443".parse::<SocketAddr>().unwrap(),
            tls: true,
            server_name: None,
            id: 1,
        };
        forward_request_headers(
            p.headers.clone(),
            &mut out,
            &downstream,
            "[::1]:8443",
            "/",
            None,
            "u".into(),
        );
        assert!(values(&out, "te").is_empty());
        assert_eq!(values(&out, "x-forwarded-for"), [b"2001:db8::7"]);
        assert_eq!(values(&out, "x-real-ip"), [b"2001:db8::7"]);
        assert_eq!(values(&out, "x-forwarded-proto"), [b"https"]);
        assert_eq!(values(&out, "x-forwarded-host"), [b"[::1]"]);
        assert_eq!(values(&out, "x-forwarded-port"), [b"8443"]);
    }

    #[test]
    fn a_trusted_peers_forwarding_headers_go_on_and_name_the_client() {
        let p = parts(
            "/api/x",
            &[
                ("x-forwarded-for", b"203.0.113.9"),
                ("x-real-ip", b"203.0.113.9"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"public.example"),
                ("x-forwarded-port", b"443"),
                ("x-forwarded-path", b"/outer/api/x"),
                ("x-forwarded-prefix", b"/outer"),
            ],
        );
        let trusted = Downstream {
            peer: "10.0.0.2:51000".parse::<SocketAddr>().unwrap(),
            client: "203.0.113.9:0".parse::<SocketAddr>().unwrap(),
            trusted_peer: true,
            local: "127.0.0.1:8000".parse::<SocketAddr>().unwrap(),
            tls: false,
            server_name: None,
            id: 1,
        };
        let mut out = HeaderMap::new();
        forward_request_headers(
            p.headers.clone(),
            &mut out,
            &trusted,
            "gw:8000",
            "/api/x",
            Some("/api"),
            "u".into(),
        );
        assert_eq!(values(&out, "x-real-ip"), [b"203.0.113.9"]);
        assert_eq!(values(&out, "x-forwarded-for"), [b"203.0.113.9, 10.0.0.2"]);
        assert_eq!(values(&out, "x-forwarded-proto"), [b"https"]);
        assert_eq!(values(&out, "x-forwarded-host"), [b"public.example"]);
        assert_eq!(values(&out, "x-forwarded-port"), [b"443"]);
        assert_eq!(values(&out, "x-forwarded-path"), [b"/outer/api/x"]);
        assert_eq!(values(&out, "x-forwarded-prefix"), [b"/outer"]);

        // The same headers from a peer nobody trusts are replaced.
        let untrusted = Downstream {
            client: "10.0.0.2:51000".parse::<SocketAddr>().unwrap(),
            trusted_peer: false,
            ..trusted.clone()
        };
        forward_request_headers(
            p.headers.clone(),
            &mut out,
            &untrusted,
            "gw:8000",
            "/api/x",
            Some("/api"),
            "u".into(),
        );
        assert_eq!(values(&out, "x-real-ip"), [b"10.0.0.2"]);
        assert_eq!(values(&out, "x-forwarded-for"), [b"203.0.113.9, 10.0.0.2"]);
        assert_eq!(values(&out, "x-forwarded-proto"), [b"http"]);
        assert_eq!(values(&out, "x-forwarded-host"), [b"gw"]);
        assert_eq!(values(&out, "x-forwarded-port"), [b"8000"]);
        assert_eq!(values(&out, "x-forwarded-path"), [b"/api/x"]);
        assert_eq!(values(&out, "x-forwarded-prefix"), [b"/api"]);

        // A trusted proxy that names the client in X-Real-IP alone: X-Forwarded-For is the
        // client (nginx's $remote_addr), as Kong sends it.
        let p = parts("/", &[("x-real-ip", b"203.0.113.9")]);
        forward_request_headers(
            p.headers.clone(),
            &mut out,
            &trusted,
            "gw:8000",
            "/",
            None,
            "u".into(),
        );
        assert_eq!(values(&out, "x-forwarded-for"), [b"203.0.113.9"]);
    }
}
