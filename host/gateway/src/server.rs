//! Workers and listeners: thread-per-core like Envoy. Each worker owns a single-threaded tokio
//! runtime, its own listening socket on the shared port (`SO_REUSEPORT`, so the kernel spreads
//! connections), its own upstream pools and, later, its own module instances. The
//! configuration snapshot is shared and swapped atomically.

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
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::sync::watch;

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
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8001))),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            drain_timeout: Duration::from_secs(30),
            access_log: true,
            config_path: None,
        }
    }
}

/// What every worker and the admin listener share.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub options: GatewayOptions,
}

impl Shared {
    pub fn access_log(&self, log: &crate::access_log::AccessLog) {
        if self.options.access_log {
            println!("{}", log.to_json());
        }
    }

    /// Validates new declarative text and, when it is valid as a whole, swaps it in; the old
    /// configuration keeps serving otherwise. Returns the new hash.
    pub fn apply(&self, text: &str) -> Result<String, ConfigError> {
        let snapshot = Snapshot::from_declarative(text)?;
        let hash = snapshot.hash.clone();
        self.snapshot.store(Arc::new(snapshot));
        Ok(hash)
    }
}

/// One worker's state, shared by the connections it serves.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub upstreams: Upstreams,
    pub index: usize,
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
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
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
    /// Binds every listener, then starts the workers and the admin listener.
    pub fn start(options: GatewayOptions, snapshot: Snapshot) -> std::io::Result<Gateway> {
        let workers = options.workers.max(1);
        let first = reuseport_listener(options.listen)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(reuseport_listener(addr)?);
        }
        let admin = match options.admin_listen {
            Some(admin) => {
                let listener = std::net::TcpListener::bind(admin)?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: Metrics::default(),
            options,
        });
        let (shutdown, _) = watch::channel(false);
        let mut threads = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let stop = shutdown.subscribe();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wasmgate-worker-{index}"))
                    .spawn(move || run_worker(index, listener, shared, stop))?,
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
            admin_addr,
            shutdown,
            threads,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
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
    local.block_on(&runtime, serve(index, listener, shared, stop));
}

async fn serve(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("wasmgate: worker {index}: listener: {e}");
            return;
        }
    };
    let drain_timeout = shared.options.drain_timeout;
    let worker = Rc::new(Worker {
        shared,
        upstreams: Upstreams::default(),
        index,
    });
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                let downstream = Downstream { peer, local, tls: false };
                let worker = Rc::clone(&worker);
                let service = service_fn(move |request| {
                    let worker = Rc::clone(&worker);
                    async move { Ok::<_, Infallible>(proxy::handle(worker, downstream, request).await) }
                });
                let mut builder = auto::Builder::new(LocalExec);
                builder.http1().max_buf_size(64 * 1024);
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::task::spawn_local(async move {
                    // Client resets and protocol errors end only their own connection.
                    let _ = connection.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain_timeout) => {}
    }
}
