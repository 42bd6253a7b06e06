//! Upstream connections: per worker, a pooled client per kind of upstream (HTTP/1.1 or
//! HTTP/2, certificate checked or not, connect timeout), and Kong's timeouts with nginx's
//! meaning: `write_timeout` between two successive writes of the request (the upstream not
//! taking what it is sent), `read_timeout` from the end of the request to the response head
//! and then between two successive reads of the response body. A slow upload is no timeout;
//! an upstream that stalls mid-body breaks the client's response off.
//!
//! `https`/`grpcs` services use rustls. Like Kong, the upstream certificate is only verified
//! when the service says `tls_verify: true`: against the Web PKI roots and the operator's own
//! CAs (`--upstream-ca-file`, Kong's `lua_ssl_trusted_certificate`). Every connection passes
//! the egress policy ([`super::egress`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::body::{BodyTimeout, BoxError, IdleTimeout, ProxyBody};
use super::egress::{EgressPolicy, Guarded};
use super::errors::ProxyError;
use model::Service;

type UpstreamClient = Client<HttpsConnector<Guarded<HttpConnector>>, Sending>;

/// What every worker's upstream connections obey.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Networks no upstream connection may reach.
    pub egress: Arc<EgressPolicy>,
    /// CA certificates trusted for `tls_verify` services besides the Web PKI roots.
    pub trusted_cas: Vec<CertificateDer<'static>>,
    /// Envoy's circuit breakers, per service for the whole process: requests in flight
    /// (`max_requests`; on HTTP/1.1 each holds a connection, so this bounds the connections in
    /// use) and requests waiting for one to end (`max_pending_requests`). Past both, 503.
    pub max_requests: usize,
    pub max_pending: usize,
    /// Idle connections kept per upstream host by each worker (Kong's
    /// `upstream_keepalive_pool_size`); more are closed once their request ends.
    pub keepalive_pool_size: usize,
    /// Every service's circuit, shared by the workers.
    pub circuits: Arc<Circuits>,
}

/// The defaults of [`UpstreamOptions::max_requests`] and `max_pending` (Envoy's) and of
/// [`UpstreamOptions::keepalive_pool_size`] (Kong's).
pub const MAX_REQUESTS: usize = 1024;
pub const MAX_PENDING: usize = 1024;
pub const KEEPALIVE_POOL_SIZE: usize = 512;

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            egress: Arc::default(),
            trusted_cas: Vec::new(),
            max_requests: MAX_REQUESTS,
            max_pending: MAX_PENDING,
            keepalive_pool_size: KEEPALIVE_POOL_SIZE,
            circuits: Arc::default(),
        }
    }
}

/// Each service's requests in flight and waiting, by service name. A worker looks a service
/// up here once and then in its own [`Upstreams`]: the lock is not taken per request.
#[derive(Debug, Default)]
pub struct Circuits(Mutex<HashMap<String, Arc<Circuit>>>);

#[derive(Debug)]
struct Circuit {
    in_flight: Arc<tokio::sync::Semaphore>,
    pending: std::sync::atomic::AtomicUsize,
}

/// A request's place in its service's circuit, held until its response body is done.
pub struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Circuits {
    /// The service's circuit, made on first use.
    fn get(&self, service: &str, max_requests: usize) -> Arc<Circuit> {
        let mut circuits = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(circuit) = circuits.get(service) {
            return Arc::clone(circuit);
        }
        let circuit = Arc::new(Circuit {
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_requests.max(1))),
            pending: std::sync::atomic::AtomicUsize::new(0),
        });
        circuits.insert(service.to_owned(), Arc::clone(&circuit));
        circuit
    }
}

impl Circuit {
    /// A place at once, while fewer than `max_requests` are in flight.
    fn try_admit(&self) -> Option<Admitted> {
        Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .ok()
            .map(|permit| Admitted { _permit: permit })
    }

    /// A place after waiting among at most `max_pending`; past that, 503 at once.
    async fn wait(
        &self,
        service: &str,
        max_requests: usize,
        max_pending: usize,
    ) -> Result<Admitted, ProxyError> {
        use std::sync::atomic::Ordering;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::Overloaded(format!(
                "{service}: {max_requests} requests in flight and {max_pending} waiting"
            )));
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit
            .map(|permit| Admitted { _permit: permit })
            .map_err(|e| ProxyError::Overloaded(format!("{service}: {e}")))
    }
}

impl UpstreamOptions {
    /// The certificates of a PEM file, for [`UpstreamOptions::trusted_cas`].
    pub fn read_cas(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject;
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        Ok(certificates)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout_ms: u64,
    http2: bool,
    tls_verify: bool,
}

/// This worker's connection pools.
#[derive(Default)]
pub struct Upstreams {
    options: UpstreamOptions,
    clients: RefCell<rustc_hash::FxHashMap<PoolKey, UpstreamClient>>,
    /// The circuits of the services this worker has sent to, from [`UpstreamOptions::circuits`].
    circuits: RefCell<rustc_hash::FxHashMap<String, Arc<Circuit>>>,
}

/// What every request to one service shares, made once per configuration
/// ([`crate::Snapshot::targets`]) instead of formatted and parsed on every request.
pub struct Target {
    /// The upstream URI's scheme and authority, or why the service's host and port make none.
    base: Result<(Scheme, Authority), String>,
    /// The Host Kong sends the service without `preserve_host` ([`Service::authority`]).
    pub host: String,
    /// The service as Envoy's cluster, as filters read `cluster_name`.
    pub cluster_name: String,
}

impl Target {
    pub fn new(config: &model::Config, index: usize) -> Target {
        let service = &config.services[index];
        let host = if service.host.contains(':') && !service.host.starts_with('[') {
            format!("[{}]", service.host)
        } else {
            service.host.clone()
        };
        let authority = format!("{host}:{}", service.port);
        let scheme = if service.protocol.is_tls() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        Target {
            base: Authority::try_from(authority.as_str())
                .map(|parsed| (scheme, parsed))
                .map_err(|e| format!("upstream authority {authority}: {e}")),
            host: service.authority(),
            cluster_name: model::envoy::cluster_name(config, index),
        }
    }
}

/// The upstream URI: the service's scheme and authority with the computed path and the
/// client's query.
pub fn uri(target: &Target, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let (scheme, authority) = target
        .base
        .as_ref()
        .map_err(|e| ProxyError::BadRequest(e.clone()))?;
    // As a URI's text would be read: an empty path is `/`.
    let path = if path.is_empty() { "/" } else { path };
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(text))
        .map_err(|e| ProxyError::BadRequest(format!("upstream path {path}: {e}")))?;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(format!("upstream URI: {e}")))
}

/// Accepts any upstream certificate (Kong's default, `tls_verify: false`); signatures are
/// still checked so the handshake is real.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(
    verify: bool,
    trusted_cas: &[CertificateDer<'static>],
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    Ok(if verify {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for ca in trusted_cas {
            roots.add(ca.clone())?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    })
}

impl Upstreams {
    pub fn new(options: UpstreamOptions) -> Upstreams {
        Upstreams {
            options,
            clients: RefCell::default(),
            circuits: RefCell::default(),
        }
    }

    fn client(&self, service: &Service) -> Result<UpstreamClient, ProxyError> {
        let key = PoolKey {
            connect_timeout_ms: service.connect_timeout_ms,
            http2: service.protocol.is_http2(),
            tls_verify: service.tls_verify,
        };
        if let Some(client) = self.clients.borrow().get(&key) {
            return Ok(client.clone());
        }
        let tls = tls_config(key.tls_verify, &self.options.trusted_cas)
            .map_err(|e| ProxyError::BadGateway(format!("TLS client: {e}")))?;
        let client = {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.enforce_http(false);
            http.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(Guarded::new(http, Arc::clone(&self.options.egress)));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(self.options.keepalive_pool_size)
                .http2_only(key.http2)
                .build(connector)
        };
        self.clients.borrow_mut().insert(key, client.clone());
        Ok(client)
    }

    /// A place for one more request to `service`: at once while fewer than `max_requests` are
    /// in flight in the whole process, else after waiting among at most `max_pending`; past
    /// that, 503 at once.
    async fn admit(&self, service: &str) -> Result<Admitted, ProxyError> {
        let waiting = {
            let mut circuits = self.circuits.borrow_mut();
            let known = circuits
                .get(service)
                .map(|circuit| circuit.try_admit().ok_or_else(|| Arc::clone(circuit)));
            match known {
                Some(Ok(admitted)) => return Ok(admitted),
                Some(Err(circuit)) => circuit,
                None => {
                    let circuit = self
                        .options
                        .circuits
                        .get(service, self.options.max_requests);
                    circuits.insert(service.to_owned(), Arc::clone(&circuit));
                    if let Some(admitted) = circuit.try_admit() {
                        return Ok(admitted);
                    }
                    circuit
                }
            }
        };
        waiting
            .wait(service, self.options.max_requests, self.options.max_pending)
            .await
    }

    /// Sends the request with the service's write timeout, waits at most its read timeout
    /// from the end of the request for the response head, and hands back a body that fails
    /// when the upstream is silent for the read timeout.
    pub async fn send(
        &self,
        service: &Service,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let client = self.client(service)?;
        let read_timeout = Duration::from_millis(service.read_timeout_ms);
        let write_timeout = Duration::from_millis(service.write_timeout_ms);
        // Waiting for a place is waiting to connect: bounded by the connect timeout.
        let connect_timeout = Duration::from_millis(service.connect_timeout_ms);
        let admit = self.admit(&service.name);
        let admitted = tokio::time::timeout(connect_timeout, admit)
            .await
            .map_err(|_| {
                ProxyError::Timeout(format!(
                    "no place among the requests in flight to {} within {connect_timeout:?}",
                    service.name
                ))
            })??;
        let progress = Arc::new(Progress::default());
        let request = request.map(|body| Sending::new(body, Arc::clone(&progress)));
        let exchange = client.request(request);
        tokio::pin!(exchange);
        let answered = tokio::select! {
            answered = &mut exchange => Some(answered),
            timed_out = progress.sent(write_timeout) => match timed_out {
                Err(()) => return Err(ProxyError::Timeout(format!(
                    "the upstream took nothing of the request for {write_timeout:?}"
                ))),
                Ok(()) => None,
            },
        };
        let answered = match answered {
            Some(answered) => answered,
            None => match tokio::time::timeout(read_timeout, exchange).await {
                Err(_) => {
                    return Err(ProxyError::Timeout(format!(
                        "no response within {read_timeout:?}"
                    )))
                }
                Ok(answered) => answered,
            },
        };
        match answered {
            Ok(response) => {
                Ok(response.map(|body| UpstreamBody::new(body, read_timeout, admitted)))
            }
            Err(error) => Err(classify(&error)),
        }
    }
}

/// How far hyper has got with a request body, for the write timeout.
#[derive(Default)]
struct Progress {
    state: Mutex<Stage>,
    changed: tokio::sync::Notify,
}

#[derive(Clone, Copy, Default)]
enum Stage {
    /// hyper asked for the next piece; the client has yet to send it.
    #[default]
    Asked,
    /// hyper took a piece at this instant and has not asked for the next: the upstream
    /// connection has not taken it yet.
    Taken(tokio::time::Instant),
    /// The whole body went to hyper (or hyper dropped it).
    Sent,
}

impl Progress {
    fn set(&self, stage: Stage) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
        self.changed.notify_one();
    }

    fn stage(&self) -> Stage {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends once the whole request went to hyper; fails when hyper held a piece for
    /// `write_timeout` without asking for the next (nginx's `proxy_send_timeout`, between two
    /// successive writes). Time spent waiting for the client's next piece does not count.
    async fn sent(&self, write_timeout: Duration) -> Result<(), ()> {
        loop {
            match self.stage() {
                Stage::Sent => return Ok(()),
                Stage::Asked => self.changed.notified().await,
                Stage::Taken(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at + write_timeout) => {
                            if let Stage::Taken(still) = self.stage() {
                                if still == at {
                                    return Err(());
                                }
                            }
                        }
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// The request body on its way upstream, reporting its [`Progress`].
pub struct Sending {
    body: ProxyBody,
    progress: Arc<Progress>,
}

impl Sending {
    fn new(body: ProxyBody, progress: Arc<Progress>) -> Sending {
        if body.is_end_stream() {
            progress.set(Stage::Sent);
        }
        Sending { body, progress }
    }
}

impl Body for Sending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let stage = match &polled {
            Poll::Ready(Some(Ok(_))) if !self.body.is_end_stream() => {
                Stage::Taken(tokio::time::Instant::now())
            }
            Poll::Ready(_) => Stage::Sent,
            Poll::Pending => Stage::Asked,
        };
        self.progress.set(stage);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.progress.set(Stage::Sent);
    }
}

/// An upstream's response body, broken off (an error, so the client's response is too) when
/// the upstream sends nothing for the read timeout while the proxy waits for it: Kong's
/// `read_timeout` between two successive reads. A client that reads slowly stops the proxy
/// from asking, and that time does not count.
pub struct UpstreamBody {
    body: IdleTimeout<Incoming>,
    /// The request's place in its service's circuit, until the body is done.
    _admitted: Admitted,
}

impl UpstreamBody {
    fn new(body: Incoming, read_timeout: Duration, admitted: Admitted) -> UpstreamBody {
        UpstreamBody {
            body: IdleTimeout::new(body, "the upstream's response", read_timeout),
            _admitted: admitted,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What hyper-util's connector (its `ConnectError`, which it does not export) says, and says
/// only, when the resolver fails.
const RESOLVER_FAILED: &str = "dns error";

/// 504 when connecting took too long, 503 when the name did not resolve, else 502. Decided by
/// the causes one by one (an I/O error's kind, the resolver's own message on its own link), not
/// by words anywhere in the joined chain: rustls's "invalid dns name" (a host that resolves but
/// is no TLS server name) and certificate errors naming the host (`dns.example`) are not
/// resolution failures.
fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut detail = error.to_string();
    let mut timed_out = false;
    let mut unresolved = false;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        unresolved |= text == RESOLVER_FAILED;
        detail.push_str(": ");
        detail.push_str(&text);
        // The connector's own deadline (`connect_timeout`) and the system's alike reach us as
        // an I/O error of kind TimedOut (hyper-util wraps tokio's `Elapsed` in one).
        timed_out |= cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        // The request failed because the client's body stopped coming (nginx's
        // `client_body_timeout`): the client's fault, nginx's 408.
        if cause.downcast_ref::<BodyTimeout>().is_some() {
            return ProxyError::ClientTimeout(text);
        }
        source = cause.source();
    }
    if error.is_connect() {
        if timed_out {
            return ProxyError::Timeout(detail);
        }
        if unresolved {
            return ProxyError::Unavailable(detail);
        }
    }
    ProxyError::BadGateway(detail)
}

#[cfg(test)]
mod tests {
    //! Every class of upstream failure, produced for real on loopback (no network needed:
    //! names under `.invalid` never resolve, RFC 6761).

    use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};

    use http::StatusCode;
    use model::Protocol;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Two workers share a service's circuit (Envoy's limits are the process's); once a
    /// worker has sent to the service it admits without the process-wide map's lock.
    #[tokio::test]
    async fn workers_share_a_circuit_and_admit_without_the_process_lock() {
        let options = UpstreamOptions {
            max_requests: 1,
            max_pending: 0,
            ..UpstreamOptions::default()
        };
        let (a, b) = (
            Upstreams::new(options.clone()),
            Upstreams::new(options.clone()),
        );
        let held = a.admit("s").await.unwrap();
        assert!(matches!(b.admit("s").await, Err(ProxyError::Overloaded(_))));
        drop(held);
        drop(b.admit("s").await.unwrap());

        let locked = options.circuits.0.lock().unwrap();
        let (done, admitted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let _ = done.send(runtime.block_on(a.admit("s")).is_ok());
        });
        // Only a worker blocked on the lock would not answer: no timing is judged here.
        assert_eq!(
            admitted.recv_timeout(Duration::from_secs(30)),
            Ok(true),
            "the worker waited for the process-wide lock"
        );
        drop(locked);
    }

    fn service(protocol: Protocol, host: &str, port: u16) -> Service {
        Service {
            name: "upstream".into(),
            protocol,
            host: host.into(),
            port,
            path: None,
            retries: 0,
            connect_timeout_ms: 2_000,
            write_timeout_ms: 2_000,
            read_timeout_ms: 2_000,
            tls_verify: false,
            enabled: true,
            tags: Vec::new(),
        }
    }

    fn target(service: &Service) -> Target {
        let config = model::Config {
            services: vec![service.clone()],
            ..model::Config::default()
        };
        Target::new(&config, 0)
    }

    #[test]
    fn the_upstream_uri_joins_the_services_scheme_and_authority_with_the_path() {
        let cases = [
            (
                service(Protocol::Http, "echo.test", 80),
                "/a b",
                None,
                "http://echo.test:80/a%20b",
            ),
            (
                service(Protocol::Https, "echo.test", 8443),
                "/x",
                Some("q=1&r"),
                "https://echo.test:8443/x?q=1&r",
            ),
            (
                service(Protocol::Http, "::1", 8080),
                "",
                None,
                "http://[::1]:8080/",
            ),
            (
                service(Protocol::Grpcs, "[::1]", 443),
                "/pkg.S/M",
                None,
                "https://[::1]:443/pkg.S/M",
            ),
        ];
        for (service, path, query, expected) in cases {
            let path = path.replace(' ', "%20");
            let made = uri(&target(&service), &path, query).unwrap();
            assert_eq!(made.to_string(), expected);
            assert_eq!(made, expected.parse::<Uri>().unwrap());
        }
        let bad = target(&service(Protocol::Http, "a b", 80));
        assert!(uri(&bad, "/", None).is_err());
        assert_eq!(
            target(&service(Protocol::Https, "echo.test", 443)).host,
            "echo.test"
        );
        assert_eq!(
            target(&service(Protocol::Http, "echo.test", 8080)).cluster_name,
            "service.upstream"
        );
    }

    /// What the gateway makes of one request to `service`.
    async fn failure(service: &Service) -> ProxyError {
        let request = Request::builder()
            .uri(uri(&target(service), "/", None).unwrap())
            .body(ProxyBody::empty())
            .unwrap();
        match Upstreams::default().send(service, request).await {
            Ok(response) => panic!("an answer: {}", response.status()),
            Err(error) => error,
        }
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn listen() -> (TcpListener, u16) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Reads what the client sends until the end of its request head.
    async fn read_head(stream: &mut tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "the client closed before its request head ended");
            head.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_bad_gateway() {
        let error = failure(&service(Protocol::Http, "127.0.0.1", closed_port())).await;
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        // The detail keeps the whole chain, down to the system's words.
        assert!(error.to_string().contains("tcp connect error"), "{error}");
    }

    #[tokio::test]
    async fn a_connection_reset_after_the_request_is_a_bad_gateway() {
        let (listener, port) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            // Closing with a zero linger sends RST instead of FIN.
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        });
        let error = failure(&service(Protocol::Http, "127.0.0.1", port)).await;
        upstream.await.unwrap();
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");
        assert!(
            error.to_string().to_ascii_lowercase().contains("reset"),
            "not a reset: {error}"
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_unavailable() {
        let error = failure(&service(Protocol::Http, "upstream.invalid", 80)).await;
        assert!(matches!(error, ProxyError::Unavailable(_)), "{error:?}");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.message(), "name resolution failed");
        // Over TLS too: the name is resolved before any handshake.
        let error = failure(&service(Protocol::Https, "upstream.invalid", 443)).await;
        assert!(matches!(error, ProxyError::Unavailable(_)), "{error:?}");
    }

    #[tokio::test]
    async fn a_connect_that_does_not_complete_in_the_connect_timeout_is_a_gateway_timeout() {
        // A listener with a backlog of 0 whose queue is full: the kernel drops further SYNs,
        // so a connect hangs until the connector's own deadline.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        let _queued = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let mut service = service(Protocol::Http, "127.0.0.1", port);
        service.connect_timeout_ms = 200;
        let started = std::time::Instant::now();
        let error = failure(&service).await;
        assert!(matches!(error, ProxyError::Timeout(_)), "{error:?}");
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn no_response_head_within_the_read_timeout_is_a_gateway_timeout() {
        let (listener, port) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            // Holds the connection without answering.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let mut service = service(Protocol::Http, "127.0.0.1", port);
        service.read_timeout_ms = 200;
        let error = failure(&service).await;
        upstream.abort();
        assert!(matches!(error, ProxyError::Timeout(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "The upstream server is timing out: no response within 200ms"
        );
    }

    #[tokio::test]
    async fn a_failed_tls_handshake_is_a_bad_gateway() {
        // An upstream that answers in plain HTTP where TLS was expected.
        let (listener, port) = listen().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let error = failure(&service(Protocol::Https, "127.0.0.1", port)).await;
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");

        // With `tls_verify: true`, a certificate the Web PKI roots do not vouch for (a
        // self-signed CA certificate: rustls says `CaUsedAsEndEntity`).
        let certificate =
            CertificateDer::from_pem_slice(crate::cluster::tests::CERT.as_bytes()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(crate::cluster::tests::KEY.as_bytes())
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, port) = listen().await;
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(stream).await;
        });
        let mut verified = service(Protocol::Https, "127.0.0.1", port);
        verified.tls_verify = true;
        let error = failure(&verified).await;
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_server_name_rustls_refuses_is_a_bad_gateway_though_its_error_says_dns() {
        // "2130706433" resolves (inet_aton: 127.0.0.1) but is no valid TLS server name: the
        // connector fails with rustls's "invalid dns name" before connecting. Nothing failed
        // to resolve, so this is not Kong's 503 "name resolution failed".
        let (listener, port) = listen().await;
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        // Over plain HTTP the same name reaches the listener.
        let plain = service(Protocol::Http, "2130706433", port);
        let request = Request::builder()
            .uri(uri(&target(&plain), "/", None).unwrap())
            .body(ProxyBody::empty())
            .unwrap();
        let response = Upstreams::default().send(&plain, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        upstream.await.unwrap();

        let error = failure(&service(Protocol::Https, "2130706433", port)).await;
        assert!(error.to_string().contains("invalid dns name"), "{error}");
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_a_bad_gateway() {
        let (listener, port) = listen().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        });
        let error = failure(&service(Protocol::Http, "127.0.0.1", port)).await;
        assert!(matches!(error, ProxyError::BadGateway(_)), "{error:?}");
        assert_eq!(
            error.message(),
            "An invalid response was received from the upstream server"
        );
    }
}
