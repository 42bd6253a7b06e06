//! A real upstream that answers every request with a JSON report of what reached it.
//!
//! Bodies are hashed and counted as they stream, never held whole (a 1 GB upload costs no
//! memory); the report carries the body text only when it is small enough to compare.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The header the echo puts on its responses, so a client can tell them from local replies.
pub const ECHO_HEADER: &str = "x-wasmgate-echo";
/// Bodies up to this size are returned in the report's `body`.
pub const REPORTED_BODY_LIMIT: u64 = 1 << 20;

/// What the upstream received.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EchoReport {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    /// In arrival order, names lower-cased, duplicates kept (values as text, lossy).
    pub headers: Vec<(String, String)>,
    /// The same headers with their values' exact bytes.
    #[serde(default)]
    pub raw_headers: Vec<(String, Vec<u8>)>,
    /// The body as text (lossy UTF-8), when at most [`REPORTED_BODY_LIMIT`] bytes.
    pub body: Option<String>,
    pub body_len: u64,
    pub body_sha256: String,
    /// The request's trailers, in order (values as text, lossy).
    #[serde(default)]
    pub trailers: Vec<(String, String)>,
}

impl EchoReport {
    /// The report the echo upstream would send for a request, built without a network (the
    /// in-process host's case runner uses it). `path` may carry a query.
    pub fn from_parts(
        method: &str,
        path: &str,
        version: &str,
        raw_headers: Vec<(String, Vec<u8>)>,
        body: &[u8],
    ) -> EchoReport {
        let raw_headers: Vec<(String, Vec<u8>)> = raw_headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        let len = body.len() as u64;
        EchoReport {
            method: method.to_owned(),
            path,
            query,
            version: version.to_owned(),
            headers: raw_headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            raw_headers,
            body: (len <= REPORTED_BODY_LIMIT).then(|| String::from_utf8_lossy(body).into_owned()),
            body_len: len,
            body_sha256: hex(&Sha256::digest(body)),
            trailers: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A request head that reached the upstream, recorded as it arrives, before any of its body is
/// read: a data plane that forwards the head of a request it then refuses is caught.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When the head arrived (for rate accounting: the plugins decide at the head).
    pub at: SystemTime,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Body bytes received so far.
    pub body_bytes: u64,
    /// The whole body arrived.
    pub complete: bool,
}

/// Counts of what an upstream received: request heads, and requests whose body arrived whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRecord {
    pub heads: usize,
    pub whole: usize,
}

impl std::ops::Sub for UpstreamRecord {
    type Output = UpstreamRecord;

    fn sub(self, earlier: UpstreamRecord) -> UpstreamRecord {
        UpstreamRecord {
            heads: self.heads.saturating_sub(earlier.heads),
            whole: self.whole.saturating_sub(earlier.whole),
        }
    }
}

/// A running echo upstream on loopback; stops when dropped.
pub struct EchoUpstream {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<EchoUpstream> {
        Self::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<EchoUpstream> {
        Self::serve_on(TcpListener::bind(addr).await?)
    }

    /// Serves on a listener the test set up itself (say, one whose accept queue it filled, so
    /// that connecting waits until this starts accepting).
    pub fn serve_on(listener: TcpListener) -> std::io::Result<EchoUpstream> {
        let addr = listener.local_addr()?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&arrivals),
            Arc::clone(&accepted),
        ));
        Ok(EchoUpstream {
            addr,
            arrivals,
            accepted,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every request head received so far, complete or not, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// How many requests whose header `name` is `value` have arrived so far: heads, and
    /// bodies that arrived whole.
    pub fn record_tagged(&self, name: &str, value: &str) -> UpstreamRecord {
        self.arrivals
            .lock()
            .map(|arrivals| {
                let tagged: Vec<&Arrival> = arrivals
                    .iter()
                    .filter(|a| a.headers.iter().any(|(n, v)| n == name && v == value))
                    .collect();
                UpstreamRecord {
                    heads: tagged.len(),
                    whole: tagged.iter().filter(|a| a.complete).count(),
                }
            })
            .unwrap_or_default()
    }

    /// How many requests have arrived so far: heads, and bodies that arrived whole.
    pub fn record(&self) -> UpstreamRecord {
        self.arrivals
            .lock()
            .map(|a| UpstreamRecord {
                heads: a.len(),
                whole: a.iter().filter(|a| a.complete).count(),
            })
            .unwrap_or_default()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&arrivals)));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A connection the proxy resets mid-body is expected in the size-limit tests.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let index = arrivals
        .lock()
        .map(|mut a| {
            a.push(Arrival {
                at: SystemTime::now(),
                path: parts.uri.path().to_owned(),
                headers: headers.clone(),
                body_bytes: 0,
                complete: false,
            });
            a.len() - 1
        })
        .ok();
    let record = |update: &dyn Fn(&mut Arrival)| {
        if let (Some(index), Ok(mut a)) = (index, arrivals.lock()) {
            if let Some(arrival) = a.get_mut(index) {
                update(arrival);
            }
        }
    };
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut text = Vec::new();
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame?.into_data() {
            Ok(data) => {
                len += data.len() as u64;
                record(&|a| a.body_bytes = len);
                hasher.update(&data);
                if len <= REPORTED_BODY_LIMIT {
                    text.extend_from_slice(&data);
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(map) = frame.into_trailers() {
            trailers.extend(map.iter().map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            }));
        }
    }
    record(&|a| a.complete = true);
    let report = EchoReport {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: format!("{:?}", parts.version),
        headers,
        raw_headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: (len <= REPORTED_BODY_LIMIT).then(|| String::from_utf8_lossy(&text).into_owned()),
        body_len: len,
        body_sha256: hex(&hasher.finalize()),
        trailers,
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(ECHO_HEADER, http::HeaderValue::from_static("1"));
    Ok(response)
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 the echo reports for `len` bytes of [`crate::client::filler`] content.
pub fn filler_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let chunk = crate::client::filler_chunk(64 * 1024);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    hex(&hasher.finalize())
}
