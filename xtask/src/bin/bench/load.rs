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

/// Closed loop: `connections` at once for `duration`.
pub fn closed_loop(
    addr: SocketAddr,
    workload: &Workload,
    connections: usize,
    duration: Duration,
    core: Option<usize>,
) -> Outcome {
    on_core(core, async {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let workload = workload.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut latency = histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut statuses = std::collections::BTreeMap::new();
                let mut connection = connect(addr).await;
                while Instant::now() < deadline {
                    let Some(send) = connection.as_mut() else {
                        errors += 1;
                        connection = connect(addr).await;
                        continue;
                    };
                    let sent = Instant::now();
                    match exchange(send, &workload).await {
                        Some(status) => {
                            ok += 1;
                            *statuses.entry(status).or_insert(0u64) += 1;
                            let _ = latency.record(sent.elapsed().as_micros() as u64);
                        }
                        None => {
                            errors += 1;
                            connection = connect(addr).await;
                        }
                    }
                }
                (ok, errors, latency, statuses)
            }));
        }
        let mut outcome = Outcome {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            statuses: Default::default(),
        };
        for task in tasks {
            if let Ok((ok, errors, latency, statuses)) = task.await {
                outcome.ok += ok;
                outcome.errors += errors;
                let _ = outcome.latency.add(&latency);
                for (s, n) in statuses {
                    *outcome.statuses.entry(s).or_insert(0) += n;
                }
            }
        }
        outcome.elapsed = started.elapsed();
        outcome
    })
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
    on_core(core, async {
        let started = Instant::now();
        let interval = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
        let total_per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
        let mut tasks = Vec::new();
        for c in 0..connections {
            let workload = workload.clone();
            // Stagger the connections' schedules across one interval.
            let offset = interval.mul_f64(c as f64 / connections as f64);
            tasks.push(tokio::task::spawn_local(async move {
                let mut latency = histogram();
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut statuses = std::collections::BTreeMap::new();
                let mut connection = connect(addr).await;
                let first = started + offset;
                for n in 0..total_per_connection {
                    let due = first + interval.mul_f64(n as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let Some(send) = connection.as_mut() else {
                        errors += 1;
                        connection = connect(addr).await;
                        continue;
                    };
                    match exchange(send, &workload).await {
                        Some(status) => {
                            ok += 1;
                            *statuses.entry(status).or_insert(0u64) += 1;
                            // From when it was due: a late send counts against the server.
                            let _ = latency.record(due.elapsed().as_micros() as u64);
                        }
                        None => {
                            errors += 1;
                            connection = connect(addr).await;
                        }
                    }
                }
                (ok, errors, latency, statuses)
            }));
        }
        let mut outcome = Outcome {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            statuses: Default::default(),
        };
        for task in tasks {
            if let Ok((ok, errors, latency, statuses)) = task.await {
                outcome.ok += ok;
                outcome.errors += errors;
                let _ = outcome.latency.add(&latency);
                for (s, n) in statuses {
                    *outcome.statuses.entry(s).or_insert(0) += n;
                }
            }
        }
        outcome.elapsed = started.elapsed();
        outcome
    })
}
