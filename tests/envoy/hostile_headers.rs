//! Header bytes a hostile client can send, through every plugin, in a real Envoy 1.40 and in
//! `gateway` side by side: values outside UTF-8 (obs-text) never make a module trap (Envoy
//! answers 503 for a trap) and reach the upstream byte for byte; `limit_by: path` counts
//! Kong's normalised path, however the client spells it.

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{Gateway, GatewayOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy, EnvoyConfig, WasmFilter};

/// What came back for a raw request: status, headers (lower-case names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn report(&self) -> EchoReport {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not an echo report ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request written byte for byte from the loopback address `from`.
async fn raw(plane: &str, to: SocketAddr, from: [u8; 4], head: &[u8]) -> Raw {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("binding 127.x: {e}"));
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .unwrap_or_else(|_| panic!("{plane} did not answer (and close) within 10 s"))
        .unwrap();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&bytes)));
    let mut lines = bytes[..end].split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            Some((
                String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                line[colon + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect::<Vec<_>>();
    let mut body = bytes[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&bytes[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&bytes[start..start + size]);
        bytes = &bytes[start + size + 2..];
    }
    out
}

fn get(path: &str, extra: &[u8]) -> Vec<u8> {
    let mut head =
        format!("GET {path} HTTP/1.1\r\nhost: hostile.test\r\nconnection: close\r\n").into_bytes();
    head.extend_from_slice(extra);
    head.extend_from_slice(b"\r\n");
    head
}

/// The data planes under test, each with one plugin on every request.
struct Planes {
    _echo: EchoUpstream,
    _envoy: Envoy,
    _gateway: Gateway,
    addrs: Vec<(&'static str, SocketAddr)>,
}

async fn planes(plugin: &str, config: Value) -> Planes {
    let echo = EchoUpstream::start().await.unwrap();
    let envoy_config = EnvoyConfig::new(echo.addr())
        .listener("hostile", vec![WasmFilter::plugin(plugin, config.clone())]);
    let envoy = Envoy::start(&envoy_config).await.unwrap();
    let declarative = json!({
        "_format_version": "3.0",
        "services": [{
            "name": "echo",
            "url": format!("http://{}", echo.addr()),
            "routes": [{"name": "all", "paths": ["/"], "strip_path": false}],
            "plugins": [{"name": plugin, "config": config}],
        }],
    });
    let gateway = Gateway::start(
        GatewayOptions {
            admin_listen: None,
            ..wasmgate_tests::gateway::options()
        },
        &declarative.to_string(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addrs = vec![
        ("envoy", envoy.listener("hostile")),
        ("gateway", gateway.addr()),
    ];
    Planes {
        _echo: echo,
        _envoy: envoy,
        _gateway: gateway,
        addrs,
    }
}

const OBS_TEXT: &[u8] = b"\xff\x80 caf\xe9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_text_in_the_headers_the_size_limiter_reads_is_not_a_trap() {
    let planes = planes(
        "request-size-limiting",
        json!({"allowed_payload_size": 1, "size_unit": "kilobytes"}),
    )
    .await;
    for (plane, addr) in &planes.addrs {
        let mut extra = Vec::new();
        for name in ["accept", "expect", "x-client"] {
            extra.extend_from_slice(format!("{name}: ").as_bytes());
            extra.extend_from_slice(OBS_TEXT);
            extra.extend_from_slice(b"\r\n");
        }
        let response = raw(plane, *addr, [127, 0, 0, 1], &get("/", &extra)).await;
        assert_eq!(
            response.status,
            200,
            "{plane}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let report = response.report();
        let received: Vec<&[u8]> = report
            .raw_headers
            .iter()
            .filter(|(k, _)| k == "x-client")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(
            received,
            vec![OBS_TEXT],
            "{plane}: the value reached the upstream as sent"
        );

        // The rejection still follows the (unusable) Accept: Kong's default, JSON.
        let mut over =
            b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2048\r\naccept: "
                .to_vec();
        over.extend_from_slice(OBS_TEXT);
        over.extend_from_slice(b"\r\n\r\n");
        let response = raw(plane, *addr, [127, 0, 0, 1], &over).await;
        assert_eq!(response.status, 413, "{plane}");
        let id = request_id(plane, &response);
        assert_eq!(
            serde_json::from_slice::<Value>(&response.body).ok(),
            Some(json!({"message": "Request size limit exceeded", "request_id": id})),
            "{plane}"
        );
    }
}

/// The response's `x-request-id`, which must be a request id the data plane made: a
/// lower-case hyphenated UUID, as Envoy's.
fn request_id(plane: &str, response: &Raw) -> String {
    let id = response
        .header("x-request-id")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_else(|| panic!("{plane}: no x-request-id on the response"));
    let groups: Vec<&str> = id.split('-').collect();
    assert!(
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && id
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{plane}: {id:?} is not a UUID"
    );
    id.to_owned()
}

/// Kong's error bodies carry `kong.request.get_id()`. A client's `x-request-id` is never
/// taken for it: the data plane's own id is what the error body, the upstream and the
/// client see, a fresh one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_is_the_data_planes_own() {
    let planes = planes(
        "request-size-limiting",
        json!({"allowed_payload_size": 4, "size_unit": "bytes"}),
    )
    .await;
    for (plane, addr) in &planes.addrs {
        let chosen = b"x-request-id: chosen-by-the-client\r\n";
        let passed = raw(plane, *addr, [127, 0, 0, 1], &get("/", chosen)).await;
        assert_eq!(passed.status, 200, "{plane}");
        let id = request_id(plane, &passed);
        let report = passed.report();
        let upstream: Vec<&[u8]> = report
            .raw_headers
            .iter()
            .filter(|(k, _)| k == "x-request-id")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(
            upstream,
            vec![id.as_bytes()],
            "{plane}: the upstream gets the same, single id"
        );

        let mut over =
            b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\n".to_vec();
        over.extend_from_slice(chosen);
        over.extend_from_slice(b"accept: text/plain\r\n\r\nabcde");
        let refused = raw(plane, *addr, [127, 0, 0, 1], &over).await;
        assert_eq!(refused.status, 413, "{plane}");
        let refused_id = request_id(plane, &refused);
        assert_ne!(refused_id, id, "{plane}: one id per request");
        assert_eq!(
            String::from_utf8_lossy(&refused.body),
            format!("Request size limit exceeded\nrequest_id: {refused_id}\n"),
            "{plane}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_text_as_the_rate_limit_identifier_is_a_budget_of_its_own() {
    let planes = planes(
        "rate-limiting",
        json!({"minute": 2, "limit_by": "header", "header_name": "x-key"}),
    )
    .await;
    for (plane, addr) in &planes.addrs {
        let key = |value: &[u8]| {
            let mut extra = b"accept: ".to_vec();
            extra.extend_from_slice(OBS_TEXT);
            extra.extend_from_slice(b"\r\nx-key: ");
            extra.extend_from_slice(value);
            extra.extend_from_slice(b"\r\n");
            get("/", &extra)
        };
        let plane_key = |suffix: &[u8]| [plane.as_bytes(), b"\xe9", suffix].concat();
        for n in 0..2 {
            let response = raw(plane, *addr, [127, 0, 0, 1], &key(&plane_key(b"\xfe"))).await;
            assert_eq!(response.status, 200, "{plane} request {n}");
            assert_eq!(
                response.header("x-ratelimit-limit-minute"),
                Some(b"2".as_slice())
            );
        }
        let third = raw(plane, *addr, [127, 0, 0, 1], &key(&plane_key(b"\xfe"))).await;
        assert_eq!(
            third.status, 429,
            "{plane}: the same bytes are the same identifier"
        );
        // A lossy conversion would make both of these U+FFFD: they are different clients.
        let other = raw(plane, *addr, [127, 0, 0, 1], &key(&plane_key(b"\xfd"))).await;
        assert_eq!(
            other.status, 200,
            "{plane}: other bytes, another identifier"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_by_path_counts_kongs_normalised_path() {
    let planes = planes(
        "rate-limiting",
        json!({"minute": 2, "limit_by": "path", "path": "/v1/items"}),
    )
    .await;
    for (i, (plane, addr)) in planes.addrs.iter().enumerate() {
        // Three clients (the fallback identifier is the client IP), three spellings of one path:
        // one budget of 2.
        let spellings = ["/v1/items", "/v1//items", "/v1/%69tems"];
        let mut statuses = Vec::new();
        for (n, path) in spellings.iter().enumerate() {
            let from = [127, 0, 1 + i as u8, 2 + n as u8];
            statuses.push(raw(plane, *addr, from, &get(path, b"")).await.status);
        }
        assert_eq!(statuses, vec![200, 200, 429], "{plane}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transformer_forwards_obs_text_untouched() {
    let planes = planes(
        "request-transformer",
        json!({"add": {"headers": ["x-added:1", "x-copy:$(headers.x_client)"]}}),
    )
    .await;
    for (plane, addr) in &planes.addrs {
        let mut extra = b"accept: ".to_vec();
        extra.extend_from_slice(OBS_TEXT);
        extra.extend_from_slice(b"\r\nx-client: ");
        extra.extend_from_slice(OBS_TEXT);
        extra.extend_from_slice(b"\r\n");
        let response = raw(plane, *addr, [127, 0, 0, 1], &get("/", &extra)).await;
        assert_eq!(
            response.status,
            200,
            "{plane}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let report = response.report();
        let value = |name: &str| {
            report
                .raw_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value("x-client").as_deref(), Some(OBS_TEXT), "{plane}");
        assert_eq!(
            value("x-copy").as_deref(),
            Some(OBS_TEXT),
            "{plane}: a template copies bytes"
        );
        assert_eq!(
            value("x-added").as_deref(),
            Some(b"1".as_slice()),
            "{plane}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_value_never_survives_a_replaced_header() {
    // The documented secret-injection pattern (replace + add) on a custom header the client
    // sends twice: only the injected value may reach the upstream.
    let planes = planes(
        "request-transformer",
        json!({
            "replace": {"headers": ["x-api-key:injected"]},
            "add": {"headers": ["x-api-key:injected"]},
        }),
    )
    .await;
    for (plane, addr) in &planes.addrs {
        let response = raw(
            plane,
            *addr,
            [127, 0, 0, 1],
            &get("/", b"x-api-key: a\r\nx-api-key: evil\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "{plane}");
        let report = response.report();
        let values: Vec<&[u8]> = report
            .raw_headers
            .iter()
            .filter(|(k, _)| k == "x-api-key")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(values, vec![b"injected".as_slice()], "{plane}");
    }
}
