//! A real HTTP client over loopback: HTTP/1.1 or h2c (prior knowledge), one connection per
//! request unless a [`Connection`] is kept, with bodies that can stream gigabytes from a
//! pattern without holding them.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};

/// How long one exchange may take before the test fails instead of hanging.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];
}

#[derive(Clone, Debug)]
pub enum RequestBody {
    Empty,
    /// Sent with its Content-Length.
    Bytes(Vec<u8>),
    /// Sent without a Content-Length: chunked on HTTP/1.1, plain DATA frames on HTTP/2.
    Chunks(Vec<Vec<u8>>),
    /// `len` bytes of [`filler`] content in 64 KiB chunks, generated while sending.
    Filler {
        len: u64,
        with_length: bool,
    },
    /// Sent like `Chunks`, with a pause before each chunk after the first: a proxy gets them
    /// one by one instead of reading a fast upload in one go.
    Paced {
        chunks: Vec<Vec<u8>>,
        pause: Duration,
    },
    /// Sent like `Chunks`: the first chunk at once, the others once `gate` holds `true`.
    Gated {
        chunks: Vec<Vec<u8>>,
        gate: tokio::sync::watch::Receiver<bool>,
    },
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/a?b=c`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: RequestBody,
}

impl Request {
    pub fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: RequestBody::Empty,
        }
    }

    pub fn post(path: &str, body: RequestBody) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Request body bytes the connection had taken from the client when the response ended:
    /// a proxy that answers early (a size limit) bounds it, whatever the clock says.
    pub body_sent: u64,
}

impl Response {
    /// The echo upstream's report of what reached it; panics, with the response, when the
    /// answer is not one (a local reply, another upstream).
    pub fn echo_report(&self) -> crate::echo::EchoReport {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo report ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Kong's JSON error body for `message` with the request id this response carries in
    /// `x-request-id` (every data plane sends it), to compare with [`Response::json`].
    pub fn kong_error_json(&self, message: &str) -> serde_json::Value {
        let id = self.header("x-request-id").unwrap_or("(no x-request-id)");
        assert!(!id.is_empty(), "an empty x-request-id");
        serde_json::json!({"message": message, "request_id": id})
    }
}

/// Writes `request` on a fresh connection to `addr` as it is, and returns what comes back
/// until the server closes the connection (lossy text; bounded at 30 s against a hang): for
/// requests no client library would send.
pub async fn raw_exchange(addr: SocketAddr, request: impl AsRef<[u8]>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(request.as_ref())
        .await
        .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    let mut answer = Vec::new();
    // A reset after the answer still leaves the answer.
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        read.is_ok(),
        "{addr} did not close the connection within 30 s; it answered: {answer:?}"
    );
    answer
}

/// One chunk of the filler pattern.
pub fn filler_chunk(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

const FILLER_CHUNK: usize = 64 * 1024;

/// The request body as hyper sends it.
pub struct OutBody {
    chunks: VecDeque<Bytes>,
    pause: Option<Duration>,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    /// What must happen before the next chunk goes.
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    filler: Bytes,
    filler_left: u64,
    exact_len: Option<u64>,
    sent: Arc<AtomicU64>,
}

impl OutBody {
    fn new(body: &RequestBody) -> OutBody {
        let mut out = OutBody {
            chunks: VecDeque::new(),
            pause: None,
            gate: None,
            wait: None,
            filler: Bytes::new(),
            filler_left: 0,
            exact_len: None,
            sent: Arc::new(AtomicU64::new(0)),
        };
        match body {
            RequestBody::Empty => out.exact_len = Some(0),
            RequestBody::Bytes(bytes) => {
                out.exact_len = Some(bytes.len() as u64);
                if !bytes.is_empty() {
                    out.chunks.push_back(Bytes::from(bytes.clone()));
                }
            }
            RequestBody::Chunks(chunks) => {
                out.chunks = chunks.iter().map(|c| Bytes::from(c.clone())).collect();
            }
            RequestBody::Filler { len, with_length } => {
                out.filler = Bytes::from(filler_chunk(FILLER_CHUNK));
                out.filler_left = *len;
                out.exact_len = with_length.then_some(*len);
            }
            RequestBody::Paced { chunks, pause } => {
                out.chunks = chunks.iter().map(|c| Bytes::from(c.clone())).collect();
                out.pause = Some(*pause);
            }
            RequestBody::Gated { chunks, gate } => {
                out.chunks = chunks.iter().map(|c| Bytes::from(c.clone())).collect();
                out.gate = Some(gate.clone());
            }
        }
        out
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        if let Some(chunk) = self.chunks.pop_front() {
            if let Some(pause) = self.pause.filter(|_| !self.chunks.is_empty()) {
                self.wait = Some(Box::pin(tokio::time::sleep(pause)));
            }
            if let Some(mut gate) = self.gate.take() {
                self.wait = Some(Box::pin(async move {
                    // A dropped sender opens the gate too: the body never hangs the test.
                    let _ = gate.wait_for(|open| *open).await;
                }));
            }
            self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.filler_left > 0 {
            let n = self.filler_left.min(self.filler.len() as u64) as usize;
            self.filler_left -= n as u64;
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(self.filler.slice(..n)))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.filler_left == 0
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

/// A kept connection, for many requests (and load) over one socket.
pub enum Connection {
    Http1(hyper::client::conn::http1::SendRequest<OutBody>),
    Http2(hyper::client::conn::http2::SendRequest<OutBody>),
}

impl Connection {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Self::handshake(stream, addr, protocol).await
    }

    /// A connection from `source` (another loopback address, such as 127.0.0.2, for a second
    /// client IP).
    pub async fn open_from(
        source: IpAddr,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<Connection, String> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr} from {source}: {e}"))?;
        Self::handshake(stream, addr, protocol).await
    }

    async fn handshake(
        stream: TcpStream,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<Connection, String> {
        stream.set_nodelay(true).ok();
        let io = TokioIo::new(stream);
        match protocol {
            Protocol::Http1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
                tokio::spawn(conn);
                Ok(Connection::Http1(send))
            }
            Protocol::Http2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2c handshake with {addr}: {e}"))?;
                tokio::spawn(conn);
                Ok(Connection::Http2(send))
            }
        }
    }

    pub async fn send(&mut self, request: &Request) -> Result<Response, String> {
        let mut builder = hyper::Request::builder()
            .method(request.method.as_str())
            .uri(request.path.as_str());
        let has_host = request
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if !has_host {
            builder = builder.header("host", "wasmgate.test");
        }
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = OutBody::new(&request.body);
        let sent = Arc::clone(&body.sent);
        if let Some(len) = body.exact_len {
            let explicit = request
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
            if !explicit && (len > 0 || request.method != "GET") {
                builder = builder.header("content-length", len.to_string());
            }
        }
        let req = builder
            .body(body)
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = match self {
                Connection::Http1(send) => {
                    send.ready().await.map_err(|e| format!("connection: {e}"))?;
                    send.send_request(req).await
                }
                Connection::Http2(send) => {
                    send.ready().await.map_err(|e| format!("connection: {e}"))?;
                    send.send_request(req).await
                }
            }
            .map_err(|e| format!("{} {}: {e}", request.method, request.path))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the response body: {e}"))?
                .to_bytes();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
                body_sent: sent.load(Ordering::Relaxed),
            })
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!(
                    "{} {}: no response within {EXCHANGE_TIMEOUT:?}",
                    request.method, request.path
                )
            })?
    }
}

/// Sends one request on a new connection.
pub async fn send(
    addr: SocketAddr,
    protocol: Protocol,
    request: &Request,
) -> Result<Response, String> {
    Connection::open(addr, protocol).await?.send(request).await
}

/// Sends one request on a new connection from `source`.
pub async fn send_from(
    source: IpAddr,
    addr: SocketAddr,
    protocol: Protocol,
    request: &Request,
) -> Result<Response, String> {
    Connection::open_from(source, addr, protocol)
        .await?
        .send(request)
        .await
}
