//! Workers and listeners: thread-per-core like Envoy. Each worker owns a single-threaded tokio
//! runtime, its own listening socket on the shared port (`SO_REUSEPORT`, so the kernel spreads
//! connections), its own upstream pools and, later, its own module instances. The
//! configuration snapshot is shared and swapped atomically.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::filters::{Runtime, RuntimeOptions, WorkerFilters};
use crate::metrics::Metrics;
use crate::proxy::{self, upstream::Upstreams, Downstream};
use crate::snapshot::Snapshot;
use model::ConfigError;

#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub workers: usize,
    /// How long in-flight requests may take to finish after a shutdown begins.
    pub drain_timeout: Duration,
    /// Print an access log line per request on stdout.
    pub access_log: bool,
    /// The declarative file, for reloads (SIGHUP, the file watcher).
    pub config_path: Option<PathBuf>,
    /// Where TLS clients connect, with the listener's certificates (the operator's files;
    /// each configuration's own are handed to it as it applies).
    pub tls: Option<(SocketAddr, crate::tls::TlsListener)>,
    /// Where plugin modules come from and which secrets they may read.
    pub runtime: RuntimeOptions,
    /// How long a client may take to send a request's headers, from the first byte (or, on
    /// a kept-alive connection, from the end of the previous response) before the connection
    /// is closed: nginx's and Kong's `client_header_timeout`.
    pub client_header_timeout: Duration,
    /// How long a client may send nothing of its request body while the gateway reads it
    /// before the request fails with 408: nginx's and Kong's `client_body_timeout`.
    pub client_body_timeout: Duration,
    /// Connections one worker serves at once (nginx's `worker_connections`); past it, the
    /// worker accepts no more until one closes, and new clients wait in the listen backlog.
    pub worker_connections: usize,
    /// Where upstream connections may go, and which CAs they trust.
    pub upstream: crate::proxy::upstream::UpstreamOptions,
    /// How long a connection with no request in flight stays open after its last response
    /// (nginx's and Kong's `keepalive_timeout`; HTTP/2 included, closed with GOAWAY).
    pub keepalive_timeout: Duration,
    /// How often HTTP/2 connections are pinged (Envoy's `connection_keepalive.interval`), and
    /// how long an answer may take before the connection is closed.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// The admin API's UNIX socket, token and mode (`crate::admin`).
    pub admin: crate::admin::AdminOptions,
    /// Kong's `trusted_ips`, `real_ip_header` and `real_ip_recursive`: which peers may name
    /// the client and forward their `X-Forwarded-*` headers.
    pub real_ip: crate::proxy::real_ip::RealIp,
}

/// The default of [`GatewayOptions::worker_connections`] (Kong's, with its usual file limit).
pub const WORKER_CONNECTIONS: usize = 16384;

/// How long a worker stops accepting after the system refused it a socket (out of file
/// descriptors or memory), as nginx does, instead of retrying in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// The default of [`GatewayOptions::client_body_timeout`], nginx's and Kong's.
pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`GatewayOptions::client_header_timeout`], nginx's and Kong's.
pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`GatewayOptions::keepalive_timeout`], nginx's and Kong's.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The defaults of [`GatewayOptions::http2_keepalive_interval`] and its timeout (hyper's 20 s).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8001))),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            drain_timeout: Duration::from_secs(30),
            access_log: true,
            config_path: None,
            tls: None,
            runtime: RuntimeOptions::default(),
            client_header_timeout: CLIENT_HEADER_TIMEOUT,
            client_body_timeout: CLIENT_BODY_TIMEOUT,
            worker_connections: WORKER_CONNECTIONS,
            upstream: Default::default(),
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            http2_keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            admin: crate::admin::AdminOptions::default(),
            real_ip: crate::proxy::real_ip::RealIp::default(),
        }
    }
}

/// What every worker and the admin listener share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub options: GatewayOptions,
    pub runtime: Runtime,
    /// The control plane connection, when configured by one (shown by `/status`).
    pub cluster: std::sync::Mutex<Option<serde_json::Value>>,
    /// Held from the build of a new snapshot to its swap: the admin API, SIGHUP, the file
    /// watcher and the control plane apply one at a time, so the last to ask is the one that
    /// serves (a slow build of an older text cannot land after a newer one), and each builds
    /// on the snapshot it replaces.
    pub applying: std::sync::Mutex<()>,
    /// Where a new snapshot waits for the workers to start its instances.
    pub warming: crate::warming::Warming,
}

impl Shared {
    /// Validates new declarative text and, when it is valid as a whole, swaps it in; the old
    /// configuration keeps serving otherwise. Returns the new hash.
    pub fn apply(&self, text: &str) -> Result<String, ConfigError> {
        self.apply_with_modules(text, None)
    }

    /// [`Shared::apply`] with wasmgate's modules from `modules_dir` (else from where the
    /// running configuration's came from).
    pub fn apply_with_modules(
        &self,
        text: &str,
        modules_dir: Option<&std::path::Path>,
    ) -> Result<String, ConfigError> {
        let _applying = self
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.snapshot.load();
        let modules_dir = modules_dir.unwrap_or(&previous.modules_dir);
        let snapshot = Arc::new(Snapshot::build(
            text,
            &self.runtime,
            modules_dir,
            Some(&previous),
        )?);
        let hash = snapshot.hash.clone();
        self.warming.warm(&snapshot);
        if let Some((_, tls)) = &self.options.tls {
            tls.serve(Arc::clone(&snapshot.certificates));
        }
        self.snapshot.store(snapshot);
        Ok(hash)
    }
}

/// One worker's state, shared by the connections it serves.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub upstreams: Upstreams,
    pub index: usize,
    /// This worker's plugin instances for the current snapshot.
    pub filters: std::cell::RefCell<WorkerFilters>,
    /// Its filtered streams, for what modules ask from elsewhere.
    pub live_streams: std::cell::RefCell<crate::proxy::filtered::LiveStreams>,
    /// Its modules' gRPC calls under way.
    pub grpc_calls: std::cell::RefCell<crate::proxy::filtered::GrpcCalls>,
    /// Its own counters ([`crate::metrics`]).
    pub metrics: crate::metrics::WorkerMetrics,
    /// Its end of the access log's queue, when there is an access log.
    pub access_log: Option<crate::access_log::LineSender>,
}

impl Worker {
    /// Counts an answered request and queues its access log line.
    pub fn log(&self, log: &crate::access_log::AccessLog) {
        self.metrics.observe(log);
        if let Some(access_log) = &self.access_log {
            access_log.send(log.line());
        }
    }
}

/// Runs hyper's connection tasks on the worker's own thread (they need not be `Send`).
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Written to the end once the workers are gone.
    access_log: Option<crate::access_log::Writer>,
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl Gateway {
    /// Validates the declarative configuration (plugins included), binds every listener,
    /// then starts the workers and the admin listener.
    pub fn start(options: GatewayOptions, declarative: &str) -> Result<Gateway, String> {
        let runtime = Runtime::new(options.runtime.clone())?;
        let snapshot = Snapshot::build(declarative, &runtime, &options.runtime.modules_dir, None)
            .map_err(|e| format!("invalid configuration: {e}"))?;
        Gateway::listen(options, runtime, snapshot).map_err(|e| format!("listening: {e}"))
    }

    fn listen(
        options: GatewayOptions,
        runtime: Runtime,
        snapshot: Snapshot,
    ) -> std::io::Result<Gateway> {
        let workers = options.workers.max(1);
        let (addr, listeners) = bind_all(options.listen, workers)?;
        let (tls_addr, tls_listeners) = match &options.tls {
            Some((listen, _)) => {
                let (addr, listeners) = bind_all(*listen, workers)?;
                (Some(addr), listeners.into_iter().map(Some).collect())
            }
            None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
        };
        if let Some((_, tls)) = &options.tls {
            tls.serve(Arc::clone(&snapshot.certificates));
        }
        let admin = crate::admin::bind(options.admin_listen, &options.admin)?;
        let admin_addr = match &admin {
            Some(listener) => listener.tcp_addr()?,
            None => None,
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: Metrics::default(),
            options,
            runtime,
            cluster: std::sync::Mutex::new(None),
            applying: std::sync::Mutex::new(()),
            warming: Default::default(),
        });
        // A module's call to an upstream the current configuration does not have fails at
        // once (BAD_ARGUMENT), as in Envoy for an unknown cluster.
        let weak = Arc::downgrade(&shared);
        shared
            .runtime
            .env
            .set_upstream_check(Arc::new(move |name: &str| {
                weak.upgrade().is_none_or(|shared| {
                    crate::proxy::filtered::callout_service(&shared.snapshot.load().config, name)
                        .is_some()
                })
            }));
        let (shutdown, _) = watch::channel(false);
        let (access_log, line_sender) = if shared.options.access_log {
            let (writer, sender) = crate::access_log::Writer::start(
                Box::new(std::io::stdout()),
                crate::access_log::QUEUE_LINES,
                crate::access_log::QUEUE_BYTES,
                shared.metrics.access_log_dropped(),
            )?;
            (Some(writer), Some(sender))
        } else {
            (None, None)
        };
        let mut threads = Vec::new();
        for (index, (listener, tls_listener)) in
            listeners.into_iter().zip(tls_listeners).enumerate()
        {
            let shared = Arc::clone(&shared);
            let stop = shutdown.subscribe();
            let access_log = line_sender.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wasmgate-worker-{index}"))
                    .spawn(move || {
                        run_worker(index, listener, tls_listener, shared, access_log, stop)
                    })?,
            );
        }
        if let Some(listener) = admin {
            let shared = Arc::clone(&shared);
            let stop = shutdown.subscribe();
            threads.push(
                std::thread::Builder::new()
                    .name("wasmgate-admin".into())
                    .spawn(move || crate::admin::run(listener, shared, stop))?,
            );
        }
        Ok(Gateway {
            shared,
            addr,
            tls_addr,
            admin_addr,
            shutdown,
            threads,
            access_log,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TLS listener's address, when TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), and joins
    /// every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(access_log) = self.access_log.take() {
            access_log.finish();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fails when anything already listens on `addr`, another gateway included. The workers'
/// sockets share their port with `SO_REUSEPORT`, which would as readily share it with another
/// process of the same user: two gateways would then split the connections between their
/// configurations, silently. A socket bound without it is refused by any listener there.
fn ensure_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Connections of an earlier process left in TIME_WAIT are no listener.
    socket.set_reuse_address(true)?;
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            format!("{addr}: another process already listens there"),
        )),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
        Ok(()) => Ok(()),
    }
}

/// One listening socket per worker on the same address; port 0 is resolved by the first.
fn bind_all(
    listen: SocketAddr,
    workers: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if listen.port() != 0 {
        ensure_port_free(listen)?;
    }
    let first = reuseport_listener(listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(reuseport_listener(addr)?);
    }
    Ok((addr, listeners))
}

fn run_worker(
    index: usize,
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    access_log: Option<crate::access_log::LineSender>,
    stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wasmgate: worker {index}: cannot start its runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &runtime,
        serve(index, listener, tls_listener, shared, access_log, stop),
    );
}

/// What a connection is doing, for its idle timeout: requests in flight (a response's body
/// counts until it is sent or dropped), and since when there has been none.
struct Activity {
    in_flight: Cell<usize>,
    idle_since: Cell<tokio::time::Instant>,
    served: Cell<bool>,
    /// Wakes the connection's task to work its deadline out again.
    changed: tokio::sync::Notify,
}

impl Activity {
    /// When the connection is idle for good if nothing starts: `first` after the accept (the
    /// first request's head has that long, as nginx's `client_header_timeout`, including a
    /// client that sends nothing at all), `keepalive` after the last response; never with a
    /// request in flight.
    fn deadline(&self, first: Duration, keepalive: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.get() > 0 {
            None
        } else if self.served.get() {
            Some(self.idle_since.get() + keepalive)
        } else {
            Some(self.idle_since.get() + first)
        }
    }
}

/// Holds its connection's [`Activity`] busy while it lives.
struct InFlight(Rc<Activity>);

impl InFlight {
    fn start(activity: &Rc<Activity>) -> InFlight {
        activity.in_flight.set(activity.in_flight.get() + 1);
        activity.served.set(true);
        activity.changed.notify_one();
        InFlight(Rc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.in_flight.get().saturating_sub(1);
        self.0.in_flight.set(left);
        if left == 0 {
            self.0.idle_since.set(tokio::time::Instant::now());
            self.0.changed.notify_one();
        }
    }
}

/// A response body, with its request's [`InFlight`] until it is sent or dropped.
struct Served {
    body: proxy::body::ProxyBody,
    _in_flight: InFlight,
}

impl hyper::body::Body for Served {
    type Data = bytes::Bytes;
    type Error = proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one accepted connection (plain or TLS) until it ends, it idles out, or the drain
/// ends it; the connection holds its `slot` of the worker's
/// [`GatewayOptions::worker_connections`] until then.
///
/// Idle is no request in flight: past [`GatewayOptions::keepalive_timeout`] after the last
/// response (or [`GatewayOptions::client_header_timeout`] after the accept, before the first
/// request), the connection is shut down gracefully (HTTP/2: GOAWAY), as nginx's
/// `keepalive_timeout` and Envoy's `idle_timeout` do. On HTTP/1.1 hyper's header timer also
/// runs from the end of a response, so a kept-alive connection waits the shorter of the two.
fn serve_connection<I>(
    io: I,
    socket: Connected,
    downstream: Downstream,
    worker: &Rc<Worker>,
    mut stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Shared with the connection's requests: a WebSocket tunnel keeps it (`proxy::upgrade`).
    let slot = proxy::upgrade::ConnectionSlot(Arc::new(slot));
    let options = &worker.shared.options;
    let (first, keepalive) = (options.client_header_timeout, options.keepalive_timeout);
    let activity = Rc::new(Activity {
        in_flight: Cell::new(0),
        idle_since: Cell::new(tokio::time::Instant::now()),
        served: Cell::new(false),
        changed: tokio::sync::Notify::new(),
    });
    let mut builder = auto::Builder::new(LocalExec);
    // The read buffer holds a request head while it is parsed: room for the largest one
    // (`headers::MAX_REQUEST_HEADERS_BYTES`, checked exactly by the proxy) and its framing.
    builder
        .http1()
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(first);
    // Pings find a peer that went away under open streams (no FIN, no RST): unanswered
    // within the timeout, the connection closes and its streams with it.
    builder
        .http2()
        .max_header_list_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(options.http2_keepalive_interval)
        .keep_alive_timeout(options.http2_keepalive_timeout);
    let lingered = Lingered::default();
    // Set once a response switched protocols: hyper then hands the socket to the WebSocket
    // tunnel (`proxy::upgrade`), and a linger on it would read the tunnel's bytes and keep the
    // socket open after the tunnel closed it.
    let upgraded = Rc::new(Cell::new(false));
    let service = {
        let worker = Rc::clone(worker);
        let activity = Rc::clone(&activity);
        let lingered = lingered.clone();
        let upgraded = Rc::clone(&upgraded);
        let slot = slot.clone();
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(lingered.clone());
            request.extensions_mut().insert(slot.clone());
            let in_flight = InFlight::start(&activity);
            let worker = Rc::clone(&worker);
            let downstream = downstream.clone();
            let upgraded = Rc::clone(&upgraded);
            async move {
                let response = proxy::handle(worker, downstream, request).await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    upgraded.set(true);
                }
                Ok::<_, Infallible>(response.map(|body| Served {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let connection = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::task::spawn_local(async move {
        tokio::pin!(connection);
        // A TLS handshake can end after the drain began.
        let mut closing = *stop.borrow_and_update();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            let idle = activity.deadline(first, keepalive);
            tokio::select! {
                // Client resets and protocol errors end only their own connection.
                _ = connection.as_mut() => break,
                () = activity.changed.notified() => {}
                () = sleep_until(idle), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stop.changed(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        if !closing && !upgraded.get() {
            socket.linger(&lingered).await;
        }
        drop(slot);
    });
}

/// A connection's socket, shared by hyper (through TLS or not) and the connection's task, which
/// lingers on it once hyper is done with it.
#[derive(Clone)]
struct Connected(Arc<tokio::net::TcpStream>);

/// nginx's lingering close: after the last response of a connection the gateway ends (an
/// answer before the request body was read, a refused `Expect: 100-continue`), what the
/// client still sends is read and dropped (`lingering_timeout` 5 s without data,
/// `lingering_time` 30 s in all), so the client reads the answer and a clean end instead of a
/// reset, and a client that reuses the connection meanwhile (curl retrying after a 417) sees
/// it end without an answer and retries on a fresh one.
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(5);
pub(crate) const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// nginx lingers by time alone; at loopback speed 30 s is the whole of any upload. This bound,
/// per connection, keeps a refused client from making the gateway read gigabytes it drops.
const LINGER_BYTES: usize = 64 << 20;

/// What a connection has read and dropped while lingering: by the request body's linger after
/// a local reply (`proxy::filtered`, through hyper, so the connection can go on) and then by
/// the socket's, once hyper is done. [`LINGER_BYTES`] bounds both together.
#[derive(Clone, Default)]
pub struct Lingered(Arc<std::sync::atomic::AtomicUsize>);

impl Lingered {
    /// Counts `bytes` more dropped; false once the bound is reached.
    pub fn dropped(&self, bytes: usize) -> bool {
        let before = self
            .0
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        before.saturating_add(bytes) < LINGER_BYTES
    }
}

impl Connected {
    async fn linger(&self, lingered: &Lingered) {
        let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
        let mut buf = vec![0u8; 16 * 1024];
        while lingered.dropped(0) {
            let idle = (tokio::time::Instant::now() + LINGER_IDLE).min(deadline);
            match tokio::time::timeout_at(idle, self.0.readable()).await {
                Ok(Ok(())) => match self.0.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        lingered.dropped(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                },
                _ => return,
            }
        }
    }
}

impl tokio::io::AsyncRead for Connected {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            // Into the buffer's spare capacity as it is: `initialize_unfilled` would zero all
            // of hyper's read buffer on every read (9 k instructions of memset a request).
            match self.0.try_read_buf(buf) {
                Ok(_) => return std::task::Poll::Ready(Ok(())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for Connected {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                written => return std::task::Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                written => return std::task::Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// The write side only (FIN): the read side stays open for [`Socket::linger`].
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let shut = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        std::task::Poll::Ready(match shut {
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

/// Sleeps until `deadline`, or for good without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether a failed accept means the system is out of a resource, rather than one client's
/// connection failing (ECONNABORTED and the like, which the next accept does not repeat).
fn out_of_resources(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// After a failed accept: waits out [`ACCEPT_BACKOFF`] when the system is out of resources.
async fn after_accept_error(index: usize, error: &std::io::Error) {
    if out_of_resources(error) {
        log::warn!("worker {index}: accept: {error}; accepting again in {ACCEPT_BACKOFF:?}");
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

async fn accept_on(
    listener: &Option<tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    index: usize,
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    access_log: Option<crate::access_log::LineSender>,
    mut stop: watch::Receiver<bool>,
) {
    let listeners = tokio::net::TcpListener::from_std(listener).and_then(|plain| {
        let tls = tls_listener
            .map(tokio::net::TcpListener::from_std)
            .transpose()?;
        Ok((plain, tls))
    });
    let (listener, tls_listener) = match listeners {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("wasmgate: worker {index}: listener: {e}");
            return;
        }
    };
    let acceptor = shared
        .options
        .tls
        .as_ref()
        .map(|(_, tls)| tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config)));
    let drain_timeout = shared.options.drain_timeout;
    let upstream = shared.options.upstream.clone();
    let worker = Rc::new(Worker {
        metrics: shared.metrics.worker(),
        shared,
        upstreams: Upstreams::new(upstream),
        index,
        filters: std::cell::RefCell::new(WorkerFilters::new(0)),
        live_streams: std::cell::RefCell::default(),
        grpc_calls: std::cell::RefCell::default(),
        access_log,
    });
    // Module queues and timers (on_tick) run on the worker that owns the instance: queues
    // are looked at every POLL, and a tick runs when it is due (to the millisecond, as
    // Envoy's timers).
    let ticker = Rc::clone(&worker);
    worker.shared.warming.worker_started();
    tokio::task::spawn_local(async move {
        const POLL: Duration = Duration::from_millis(50);
        loop {
            let now = ticker.shared.runtime.env.clock.monotonic();
            let wait = (ticker.filters.try_borrow().ok())
                .and_then(|filters| filters.next_tick())
                .map_or(POLL, |due| due.saturating_sub(now).min(POLL));
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                () = ticker.shared.warming.wake.notified() => {}
            }
            if let Ok(mut filters) = ticker.filters.try_borrow_mut() {
                // A configuration about to serve: its instances start here, before it does.
                if let Some(next) = ticker.shared.warming.pending() {
                    if filters.prepare(next.generation, &next.filters) {
                        ticker.shared.warming.ready(next.generation);
                    }
                }
                let snapshot = ticker.shared.snapshot.load();
                filters.advance(snapshot.generation, &snapshot.filters);
                filters.warm(&snapshot.filters);
                filters.poll();
            }
            // Calls and resumes the modules asked for from on_tick or on_queue_ready.
            crate::proxy::filtered::module_work(&ticker);
        }
    });
    let capacity = worker.shared.options.worker_connections.max(1);
    let slots = Arc::new(Semaphore::new(capacity));
    loop {
        // A free connection slot first: at the limit, nothing is accepted.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        after_accept_error(index, &e).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                let downstream = Downstream::accepted(peer, local, false);
                let socket = Connected(Arc::new(stream));
                serve_connection(TokioIo::new(socket.clone()), socket, downstream, &worker, stop.clone(), slot);
            }
            accepted = accept_on(&tls_listener) => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        after_accept_error(index, &e).await;
                        continue;
                    }
                };
                let Some(acceptor) = acceptor.clone() else { continue };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                let mut downstream = Downstream::accepted(peer, local, true);
                let worker = Rc::clone(&worker);
                let stop = stop.clone();
                tokio::task::spawn_local(async move {
                    // A failed handshake only ends this connection.
                    let socket = Connected(Arc::new(stream));
                    if let Ok(Ok(tls)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(socket.clone())).await {
                        downstream.server_name = tls.get_ref().1.server_name().map(std::sync::Arc::from);
                        serve_connection(TokioIo::new(tls), socket, downstream, &worker, stop, slot);
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    drop(tls_listener);
    worker.shared.warming.worker_stopped();
    // Every connection holds a slot until it ends: all of them back means all drained.
    let drained = u32::try_from(capacity).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(drain_timeout, slots.acquire_many(drained)).await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::cluster::tests::shared;

    /// A plugin module whose `on_configure` takes `ms` milliseconds of wall time.
    fn slow_module(ms: u64) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $until i64)
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
    (local.set $until (i64.add (i64.load (i32.const 0)) (i64.const {})))
    (loop $wait
      (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 0)))
      (br_if $wait (i64.lt_u (i64.load (i32.const 0)) (local.get $until))))
    (i32.const 1)))"#,
            ms * 1_000_000
        ))
        .unwrap()
    }

    /// Review finding 34: two applies at once land in the order they were asked for. The
    /// first one's build takes 300 ms (its module's `on_configure`); the second, asked for
    /// 50 ms later and quick to build, must be the one that serves. (Unserialised, the slow
    /// build's swap came last and the older text served.)
    #[test]
    fn concurrent_applies_land_in_the_order_they_were_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("request_size_limiting.wasm"),
            slow_module(300),
        )
        .unwrap();
        let shared = std::sync::Arc::new(shared());
        let older = r#"{"_format_version":"3.0","plugins":[{"name":"request-size-limiting"}]}"#;
        let newer = r#"{"_format_version":"3.0","services":[]}"#;
        let started = Instant::now();
        let slow = {
            let shared = std::sync::Arc::clone(&shared);
            let modules = dir.path().to_owned();
            std::thread::spawn(move || shared.apply_with_modules(older, Some(&modules)).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let newer_hash = shared.apply(newer).unwrap();
        let older_hash = slow.join().unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        assert_ne!(older_hash, newer_hash);
        assert_eq!(shared.snapshot.load().hash, newer_hash);
    }
}
