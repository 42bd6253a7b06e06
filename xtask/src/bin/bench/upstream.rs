//! The benchmark upstream: answers every request with a two-byte body after reading the
//! request body, on a single-threaded runtime pinned to the client's core. Its own ceiling is
//! measured and reported, so no proxy figure is mistaken for a proxy limit when it is this
//! server's.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Requests that reached the upstream, by aligned UTC second of arrival: the windows a
/// rate limit promises to hold.
pub type PerSecond = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Starts the upstream on its own thread; returns its address.
pub fn start(core: Option<usize>) -> SocketAddr {
    serve(core, None)
}

/// An upstream that also counts arrivals per second. Kept apart from the throughput upstream
/// so that the lock it takes per request never weighs on the throughput figures.
pub fn start_counting(core: Option<usize>) -> (SocketAddr, PerSecond) {
    let counts = PerSecond::default();
    (serve(core, Some(Arc::clone(&counts))), counts)
}

fn serve(core: Option<usize>, counts: Option<PerSecond>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound socket has an address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    std::thread::spawn(move || {
        if let Some(core) = core {
            crate::pin_current_thread(core);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a single-threaded tokio runtime starts");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counts = counts.clone();
                tokio::task::spawn_local(async move {
                    let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| {
                        if let Some(counts) = &counts {
                            count(counts);
                        }
                        async move {
                            let _ = request.into_body().collect().await;
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

fn count(counts: &PerSecond) {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Ok(mut counts) = counts.lock() {
        *counts.entry(second).or_insert(0) += 1;
    }
}
