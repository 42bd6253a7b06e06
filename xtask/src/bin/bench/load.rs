//! The load generator: keep-alive HTTP/1.1 connections on a single-threaded runtime pinned to
//! its own core.
//!
//! Closed loop: N connections each send the next request as soon as the last answer arrived
//! (throughput at fixed concurrency). Open loop: requests are due on a fixed schedule and each
//! latency is measured from when it was due, not from when it was sent, so a stalled server
//! is charged for every request it delayed (coordinated omission corrected).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Clone, Debug)]
pub struct Workload {
    pub method: &'static str,
    pub path: String,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Workload {
    pub fn get(path: &str) -> Workload {
        Workload {
            method: "GET",
            path: path.to_owned(),
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub fn post(path: &str, size: usize) -> Workload {
        Workload {
            method: "POST",
            path: path.to_owned(),
            body: Bytes::from(vec![b'x'; size]),
            headers: Vec::new(),
        }
    }

    fn request(&self) -> hyper::Request<Full<Bytes>> {
        let mut builder = hyper::Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header("host", "bench.test");
        if !self.body.is_empty() || self.method != "GET" {
            builder = builder
                .header("content-length", self.body.len().to_string())
                .header("content-type", "application/json");
        }
        for (k, v) in &self.headers {
            builder = builder.header(*k, v.as_str());
        }
        builder
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    /// Count of answers by status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(send)
}

/// One exchange; `Some(status)` when a full response arrived.
async fn exchange(send: &mut SendRequest<Full<Bytes>>, workload: &Workload) -> Option<u16> {
    send.ready().await.ok()?;
    let response = send.send_request(workload.request()).await.ok()?;
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .expect("1 µs to 60 s at 3 significant digits is a valid histogram")
}

/// Runs `future` on a fresh single-threaded runtime on this thread, pinned to `core`.
fn on_core<T>(core: Option<usize>, future: impl std::future::Future<Output = T>) -> T {
    if let Some(core) = core {
        crate::pin_current_thread(core);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime starts");
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

impl Outcome {
    fn empty() -> Outcome {
        Outcome {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            statuses: Default::default(),
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += n;
        }
    }
}

/// One client connection and what it measured; reconnects after an error.
struct Client {
    addr: SocketAddr,
    send: Option<SendRequest<Full<Bytes>>>,
    outcome: Outcome,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        Client {
            addr,
            send: connect(addr).await,
            outcome: Outcome::empty(),
        }
    }

    /// One request; its latency counts from `since` (when it was sent, or when it was due).
    async fn request(&mut self, workload: &Workload, since: impl FnOnce() -> Instant) {
        let Some(send) = self.send.as_mut() else {
            self.outcome.errors += 1;
            self.send = connect(self.addr).await;
            return;
        };
        let since = since();
        match exchange(send, workload).await {
            Some(status) => {
                self.outcome.ok += 1;
                *self.outcome.statuses.entry(status).or_insert(0) += 1;
                let _ = self
                    .outcome
                    .latency
                    .record(since.elapsed().as_micros() as u64);
            }
            None => {
                self.outcome.errors += 1;
                self.send = connect(self.addr).await;
            }
        }
    }
}

/// Runs one task per connection and merges what they measured.
async fn run_clients<F>(connections: usize, task: impl Fn(usize) -> F) -> Outcome
where
    F: std::future::Future<Output = Outcome> + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| tokio::task::spawn_local(task(c)))
        .collect();
    let mut outcome = Outcome::empty();
    for task in tasks {
        if let Ok(measured) = task.await {
            outcome.merge(measured);
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Closed loop: `connections` at once for `duration`.
pub fn closed_loop(
    addr: SocketAddr,
    workload: &Workload,
    connections: usize,
    duration: Duration,
    core: Option<usize>,
) -> Outcome {
    let deadline = Instant::now() + duration;
    on_core(
        core,
        run_clients(connections, |_| {
            let workload = workload.clone();
            async move {
                let mut client = Client::open(addr).await;
                while Instant::now() < deadline {
                    client.request(&workload, Instant::now).await;
                }
                client.outcome
            }
        }),
    )
}

/// Open loop: `rate` requests per second spread over `connections` for `duration`.
pub fn open_loop(
    addr: SocketAddr,
    workload: &Workload,
    rate: f64,
    connections: usize,
    duration: Duration,
    core: Option<usize>,
) -> Outcome {
    let interval = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
    let per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
    let started = Instant::now();
    on_core(
        core,
        run_clients(connections, |c| {
            let workload = workload.clone();
            // Stagger the connections' schedules across one interval.
            let first = started + interval.mul_f64(c as f64 / connections as f64);
            async move {
                let mut client = Client::open(addr).await;
                for n in 0..per_connection {
                    let due = first + interval.mul_f64(n as f64);
                    tokio::time::sleep_until(due.into()).await;
                    // From when it was due: a late send counts against the server.
                    client.request(&workload, || due).await;
                }
                client.outcome
            }
        }),
    )
}
