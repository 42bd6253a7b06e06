//! WebSocket through `gateway`: a real client and server (tokio-tungstenite) on loopback. The
//! handshake is routed and runs the route's plugins like any request; once the upstream
//! switches protocols, frames go both ways. Other protocol switches are refused as Envoy
//! refuses them.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wasmgate_tests::client::raw_exchange;
use wasmgate_tests::gateway::{start, ProxyPath, PLUGIN_PATH_HEADER};
use wasmgate_tests::websocket::{connect, websocket_server};

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: chat
    url: http://{upstream}/base
    routes:
      - name: ws
        paths: [/ws]
      - name: limited
        paths: [/limited]
        plugins:
          - name: rate-limiting
            config: {{minute: 1, policy: local}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_go_both_ways_after_the_routes_plugins() {
    for proxy_path in ProxyPath::ALL {
        let (upstream, seen) = websocket_server().await;
        let gateway = start(&proxy_path.config(&config(upstream)));
        let mut socket = connect(gateway.addr(), "/ws/chat")
            .await
            .unwrap_or_else(|e| panic!("{proxy_path:?}: the handshake failed: {e}"));
        socket.send(Message::text("hello")).await.unwrap();
        socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        socket.send(Message::text("again")).await.unwrap();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
                .await
                .unwrap_or_else(|_| panic!("{proxy_path:?}: no answer within 10 s"));
            answers.push(next.unwrap().unwrap());
        }
        assert_eq!(
            answers,
            [
                Message::text("echo:hello"),
                Message::binary(vec![3u8, 2, 1]),
                Message::text("echo:again")
            ],
            "{proxy_path:?}"
        );
        socket.close(None).await.unwrap();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{proxy_path:?}");
        let (path, headers) = &seen[0];
        assert_eq!(path, "/base/chat", "{proxy_path:?}: Kong's upstream path");
        let header = |name: &str| {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("x-forwarded-for"), ["127.0.0.1"], "{proxy_path:?}");
        let marker = match proxy_path {
            ProxyPath::Plain => Vec::new(),
            ProxyPath::Plugins => vec!["plugins"],
        };
        assert_eq!(header(PLUGIN_PATH_HEADER), marker, "{proxy_path:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_refuses_the_handshake_refuses_the_upgrade() {
    let (upstream, seen) = websocket_server().await;
    let gateway = start(&config(upstream));
    let mut first = connect(gateway.addr(), "/limited").await.unwrap();
    first.send(Message::text("one")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("echo:one")
    );
    match connect(gateway.addr(), "/limited").await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the second upgrade went through the rate limit"),
    }
    // The open tunnel is not affected by the refusal.
    first.send(Message::text("two")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("echo:two")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// CONNECT and upgrades to anything but WebSocket get Envoy's 403 and the connection closes;
/// nothing reaches the upstream. h2c is ignored (served as HTTP/1.1), as by Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocol_switches_are_refused() {
    for proxy_path in ProxyPath::ALL {
        let echo = wasmgate_tests::EchoUpstream::start().await.unwrap();
        let gateway = start(&proxy_path.config(&config(echo.addr())));
        // No `connection: close`: the gateway closes by itself.
        let answer = raw_exchange(
            gateway.addr(),
            "GET /ws HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: foo/2\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{proxy_path:?}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        let answer = raw_exchange(
            gateway.addr(),
            "CONNECT gw:443 HTTP/1.1\r\nhost: gw:443\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{proxy_path:?}: {answer}"
        );
        assert_eq!(
            echo.accepted(),
            0,
            "{proxy_path:?}: something went upstream"
        );

        let answer = raw_exchange(
            gateway.addr(),
            "GET /ws HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
             upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{proxy_path:?}: {answer}"
        );
        let report = answer.split_once("\r\n\r\n").unwrap().1;
        assert!(!report.contains("h2c"), "{proxy_path:?}: {report}");
    }
}

/// A tunnel nothing crosses for the service's `read_timeout` is closed, as Kong (nginx's
/// `proxy_read_timeout`) and Envoy (the route's idle timeout, set from the same field) close
/// it; one with traffic stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_read_timeout() {
    for proxy_path in ProxyPath::ALL {
        let (upstream, _) = websocket_server().await;
        let declarative = format!(
            r#"
_format_version: "3.0"
services:
  - name: chat
    url: http://{upstream}
    read_timeout: 400
    routes:
      - name: ws
        paths: [/ws]
"#
        );
        let gateway = start(&proxy_path.config(&declarative));
        let mut busy = connect(gateway.addr(), "/ws").await.unwrap();
        for n in 0..8 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            busy.send(Message::text(format!("{n}"))).await.unwrap();
            let answer = busy.next().await;
            assert!(
                matches!(&answer, Some(Ok(Message::Text(t))) if t.as_str() == format!("echo:{n}")),
                "{proxy_path:?}: a busy tunnel broke after {n} messages: {answer:?}"
            );
        }

        let mut idle = connect(gateway.addr(), "/ws").await.unwrap();
        let started = std::time::Instant::now();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), idle.next()).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(end, Ok(None | Some(Err(_)))),
            "{proxy_path:?}: the idle tunnel is still open after 5 s: {end:?}"
        );
        assert!(
            elapsed >= std::time::Duration::from_millis(350),
            "{elapsed:?}"
        );
    }
}

/// An open tunnel holds its connection's slot of `worker_connections`, as the connection did:
/// past the limit a new client waits until a tunnel closes, so tunnels cannot pile up past
/// the bound nginx and Kong keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_holds_its_connection_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (upstream, _) = websocket_server().await;
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 1;
    options.worker_connections = 1;
    let gateway = wasmgate_tests::gateway::start_with(options, &config(upstream));
    let mut tunnel = connect(gateway.addr(), "/ws").await.unwrap();
    tunnel.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        tunnel.next().await.unwrap().unwrap(),
        Message::text("echo:hi")
    );

    let mut next = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    next.write_all(b"GET /ws HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let early =
        tokio::time::timeout(std::time::Duration::from_secs(1), next.read(&mut first)).await;
    assert!(
        early.is_err(),
        "served while the tunnel holds the only slot: {early:?}"
    );

    tunnel.close(None).await.unwrap();
    drop(tunnel);
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        next.read_to_end(&mut answer),
    )
    .await
    .expect("not served once the tunnel closed")
    .unwrap();
    assert!(!answer.is_empty(), "closed without an answer");
}
