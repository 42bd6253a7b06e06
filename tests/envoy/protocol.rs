//! The protocol of both data planes side by side: `gateway` and a real Envoy 1.40 started from
//! the translation of the same declarative file (`gateway envoy-bootstrap`), over real
//! sockets: HTTP/1.1 request trailers, `TE`, gRPC with its statuses in the trailers through a
//! route's plugins, and WebSocket upgrades.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wasmgate_tests::client::raw_exchange;
use wasmgate_tests::{grpc_tonic, websocket, EchoReport, EchoUpstream, Envoy};

/// Both data planes for one declarative file: (name, listener).
struct Planes {
    addrs: Vec<(&'static str, SocketAddr)>,
    _gateway: gateway::Gateway,
    envoy: Envoy,
}

async fn planes(declarative: &str) -> Planes {
    let gateway = wasmgate_tests::gateway::start(declarative);
    let config = model::parse_declarative(declarative).unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = model::envoy::bootstrap(&config, &wasmgate_tests::envoy::translation_options());
    let envoy = Envoy::start_bootstrap(&bootstrap, 2)
        .await
        .unwrap_or_else(|e| panic!("Envoy refused the translation: {e}"));
    Planes {
        addrs: vec![
            ("gateway", gateway.addr()),
            ("Envoy", envoy.listener("wasmgate")),
        ],
        _gateway: gateway,
        envoy,
    }
}

fn config(echo: SocketAddr, grpc: SocketAddr, ws: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{echo}
    routes:
      - name: plain
        paths: [/plain]
  - name: grpc
    url: grpc://{grpc}
    routes:
      - name: grpc
        paths: [/svc.Echo]
        strip_path: false
        plugins:
          - name: request-transformer
            config: {{add: {{headers: ["x-backend-token:{token}"]}}}}
  - name: ws
    url: http://{ws}
    routes:
      - name: ws
        paths: [/ws]
        plugins:
          - {{name: rate-limiting, config: {{minute: 1000, policy: local}}}}
"#,
        token = grpc_tonic::TOKEN,
    )
}

/// The echo report in a raw HTTP/1.1 answer with a Content-Length body.
fn report_in(plane: &str, answer: &str) -> EchoReport {
    assert!(answer.starts_with("HTTP/1.1 200"), "{plane}: {answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{plane}: not a report ({e}): {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_te_grpc_and_websocket_cross_both_data_planes() {
    let echo = EchoUpstream::start().await.unwrap();
    let grpc = grpc_tonic::grpc_server().await;
    let (ws, seen) = websocket::websocket_server().await;
    let planes = planes(&config(echo.addr(), grpc, ws)).await;
    let log = || planes.envoy.log();

    for (plane, addr) in planes.addrs.iter().copied() {
        // An HTTP/1.1 request trailer, announced, reaches an HTTP/1.1 upstream.
        let answer = raw_exchange(
            addr,
            "POST /plain/t HTTP/1.1\r\nhost: planes.test\r\nconnection: close\r\n\
             transfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
             5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
        )
        .await;
        let seen = report_in(plane, &answer);
        assert_eq!(seen.body.as_deref(), Some("hello"), "{plane}");
        assert_eq!(
            seen.trailers,
            [("x-checksum".to_owned(), "abc".to_owned())],
            "{plane}: {}",
            log()
        );

        // TE goes on only as `trailers`.
        for (te, expected) in [("trailers", vec!["trailers"]), ("gzip", vec![])] {
            let answer = raw_exchange(
                addr,
                format!(
                    "GET /plain/te HTTP/1.1\r\nhost: planes.test\r\nconnection: close, te\r\n\
                     te: {te}\r\n\r\n"
                ),
            )
            .await;
            let seen = report_in(plane, &answer);
            assert_eq!(seen.header_values("te"), expected, "{plane}: te: {te}");
        }

        // gRPC through the route's plugin: unary and streaming, statuses in the trailers.
        grpc_tonic::calls(addr, false).await;

        // WebSocket: the handshake through the route's plugin, then frames both ways.
        let mut socket = websocket::connect(addr, "/ws/chat")
            .await
            .unwrap_or_else(|e| panic!("{plane}: the handshake failed: {e}\n{}", log()));
        socket.send(Message::text("hello")).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("{plane}: no WebSocket answer within 10 s"));
        assert_eq!(
            answer.unwrap().unwrap(),
            Message::text("echo:hello"),
            "{plane}"
        );
        socket.close(None).await.unwrap();
    }
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(paths, ["/chat", "/chat"]);
}

/// A WebSocket tunnel nothing crosses for the service's `read_timeout` is closed by both
/// planes (Envoy: the route's idle timeout, which the translation sets from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_by_both_data_planes() {
    let (ws, _) = websocket::websocket_server().await;
    let planes = planes(&format!(
        r#"
_format_version: "3.0"
services:
  - name: ws
    url: http://{ws}
    read_timeout: 500
    routes:
      - name: ws
        paths: [/ws]
"#
    ))
    .await;
    for (plane, addr) in planes.addrs.iter().copied() {
        let mut socket = websocket::connect(addr, "/ws")
            .await
            .unwrap_or_else(|e| panic!("{plane}: the handshake failed: {e}"));
        socket.send(Message::text("hi")).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text("echo:hi"),
            "{plane}"
        );
        let started = std::time::Instant::now();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next()).await;
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "{plane}: the idle tunnel is still open after 5 s: {end:?}"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= std::time::Duration::from_millis(400),
            "{plane}: closed after {elapsed:?}"
        );
    }
}
