//! A real WebSocket server and client (tokio-tungstenite) for upgrades through the data
//! planes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request as Handshake, Response};
use tokio_tungstenite::tungstenite::Message;

/// The handshakes the server accepted: each one's path and headers (values as text).
pub type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A WebSocket server answering each text message `m` with `echo:m` and each binary message
/// with its bytes reversed.
pub async fn websocket_server() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                // The Result is tungstenite's callback type, large error and all.
                #[allow(clippy::result_large_err)]
                let callback = |request: &Handshake, response: Response| {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                            (k.as_str().to_owned(), value)
                        })
                        .collect();
                    let path = request.uri().path().to_owned();
                    record.lock().unwrap().push((path, headers));
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    let answer = match message {
                        Message::Text(text) => Message::text(format!("echo:{}", text.as_str())),
                        Message::Binary(bytes) => {
                            Message::binary(bytes.iter().rev().copied().collect::<Vec<u8>>())
                        }
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A WebSocket client's handshake on a fresh connection to `addr`.
pub async fn connect(
    gateway: SocketAddr,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let url = format!("ws://{gateway}{path}");
    tokio_tungstenite::client_async(url, stream)
        .await
        .map(|(socket, _)| socket)
}
