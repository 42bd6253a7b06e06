//! The admin API: `/status`, `/metrics`, and Kong DB-less `/config` (`GET` the current
//! declarative text, `POST` a new one). On loopback by default, on a UNIX socket (`unix:PATH`,
//! as Envoy's admin is commonly run), or off.
//!
//! Who is answered: with a token (`--admin-token-file`, `WASMGATE_ADMIN_TOKEN`), a request
//! that presents it, as `Authorization: Bearer` or Kong Enterprise's `Kong-Admin-Token`.
//! Without one, the listener must be loopback or a UNIX socket, a request must come from the
//! client itself, not through a proxy (a route to the admin port would open it to the proxy's
//! clients), and a TCP request must name a loopback host (after DNS rebinding, a web page's
//! requests name the page's). Never a
//! browser: a page's request carries `Origin` or `Sec-Fetch-Site`, and `POST /config` needs a
//! JSON or YAML type, which a CORS "simple request" (no preflight) cannot send. A gateway
//! that follows a control plane takes no configuration here, as a Kong hybrid-mode data plane.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::server::Shared;
use crate::snapshot::declarative_error_body;

/// The largest declarative document `POST /config` takes.
const MAX_CONFIG_BYTES: usize = 16 << 20;

/// The environment variable that may hold the admin API's token.
pub const TOKEN_ENV: &str = "WASMGATE_ADMIN_TOKEN";

/// The `Content-Type`s `POST /config` takes (with any parameters): Kong's declarative format
/// in JSON or YAML.
const DECLARATIVE_TYPES: [&str; 5] = [
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// Where the admin API listens: `HOST:PORT`, `unix:PATH` or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Off,
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<AdminListen, String> {
        if value == "off" {
            return Ok(AdminListen::Off);
        }
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs the socket's path (unix:/run/wasmgate/admin.sock)".into());
            }
            return Ok(AdminListen::Unix(PathBuf::from(path)));
        }
        value
            .parse()
            .map(AdminListen::Tcp)
            .map_err(|e| format!("{value:?}: {e}; expected HOST:PORT, unix:PATH or off"))
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Tcp(addr) => write!(f, "{addr}"),
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
            AdminListen::Off => f.write_str("off"),
        }
    }
}

/// The admin API's settings beside its TCP address (`GatewayOptions::admin_listen`).
#[derive(Clone, Debug, Default)]
pub struct AdminOptions {
    /// Serve on this UNIX socket (mode 0600) instead of a TCP address.
    pub unix_socket: Option<PathBuf>,
    /// When set, every request must present it.
    pub token: Option<AdminToken>,
    /// The configuration comes from a control plane: `POST /config` is refused.
    pub read_only: bool,
}

/// The admin API's token. Only its SHA-256 is kept: `Debug` output, logs and core dumps of
/// the options do not carry it.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The token in `text` (surrounding whitespace, such as a file's last line end, goes);
    /// `source` names where it came from in errors.
    pub fn new(text: &str, source: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{source}: the admin token is empty"));
        }
        // It travels as a header value, where anything else could not be matched.
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "{source}: the admin token has {c:?}; a token is printable ASCII without spaces"
            ));
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// The token from `--admin-token-file` or from [`TOKEN_ENV`]'s value; none when neither
    /// is given. Both at once is an error rather than a silent choice.
    pub fn configured(
        file: Option<&Path>,
        env: Option<OsString>,
    ) -> Result<Option<AdminToken>, String> {
        match (file, env) {
            (Some(file), Some(_)) => Err(format!(
                "the admin token is given twice, by --admin-token-file {} and by {TOKEN_ENV}; \
                 give one",
                file.display()
            )),
            (Some(file), None) => {
                let source = format!("--admin-token-file {}", file.display());
                let text = std::fs::read_to_string(file).map_err(|e| format!("{source}: {e}"))?;
                AdminToken::new(&text, &source).map(Some)
            }
            (None, Some(value)) => {
                let text = value
                    .into_string()
                    .map_err(|_| format!("{TOKEN_ENV}: the admin token is not UTF-8"))?;
                AdminToken::new(&text, TOKEN_ENV).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// Compares digests, every byte of them: how long it takes says nothing of how much of a
    /// guess was right.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        presented
            .iter()
            .zip(&self.digest)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
    }
}

/// A bound admin listener.
pub enum Listener {
    Tcp(std::net::TcpListener),
    /// Its socket file goes when the admin API stops.
    Unix {
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    /// The TCP address, when on TCP.
    pub fn tcp_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(Some),
            Listener::Unix { .. } => Ok(None),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Binds the admin listener: `tcp` or `options.unix_socket`, or none. An address off
/// loopback needs a token: without one, anyone who reaches it could replace the
/// configuration.
pub fn bind(tcp: Option<SocketAddr>, options: &AdminOptions) -> io::Result<Option<Listener>> {
    match (tcp, &options.unix_socket) {
        (Some(addr), Some(path)) => Err(invalid(format!(
            "the admin API is given both {addr} and unix:{}; give one",
            path.display()
        ))),
        (Some(addr), None) => {
            if options.token.is_none() && !addr.ip().to_canonical().is_loopback() {
                return Err(invalid(format!(
                    "the admin API on {addr} would answer anyone who reaches it: give it a \
                     token (--admin-token-file or {TOKEN_ENV}), or listen on loopback or on a \
                     unix: socket"
                )));
            }
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|e| io::Error::new(e.kind(), format!("admin API on {addr}: {e}")))?;
            Ok(Some(Listener::Tcp(listener)))
        }
        (None, Some(path)) => bind_unix(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn bind_unix(path: &Path) -> io::Result<Listener> {
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("admin API on unix:{}: {e}", path.display()),
        )
    };
    // A socket left by a gateway that did not stop cleanly goes; one that still answers is
    // another gateway's.
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(context(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(context(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process serves this socket",
            )));
        }
        std::fs::remove_file(path).map_err(context)?;
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(context)?;
    socket
        .bind(&socket2::SockAddr::unix(path).map_err(context)?)
        .map_err(context)?;
    // Owner only, set before listen(): until then no one can connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(context)?;
    socket.listen(128).map_err(context)?;
    socket.set_nonblocking(true).map_err(context)?;
    Ok(Listener::Unix {
        listener: socket.into(),
        path: path.to_owned(),
    })
}

/// How a request reached the admin API: over TCP, host names matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Unix,
}

pub fn run(listener: Listener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wasmgate: admin: cannot start its runtime: {e}");
            return;
        }
    };
    let socket_file = match &listener {
        Listener::Unix { path, .. } => Some(path.clone()),
        Listener::Tcp(_) => None,
    };
    runtime.block_on(serve(listener, shared, stop));
    if let Some(path) = socket_file {
        let _ = std::fs::remove_file(path);
    }
}

enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Accepting {
    fn new(listener: Listener) -> io::Result<Accepting> {
        match listener {
            Listener::Tcp(listener) => {
                tokio::net::TcpListener::from_std(listener).map(Accepting::Tcp)
            }
            Listener::Unix { listener, .. } => {
                tokio::net::UnixListener::from_std(listener).map(Accepting::Unix)
            }
        }
    }

    /// Accepts one connection and serves it on a task of its own.
    async fn next(&self, shared: &Arc<Shared>) -> io::Result<()> {
        match self {
            Accepting::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                spawn_connection(stream, Transport::Tcp, shared);
            }
            Accepting::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                spawn_connection(stream, Transport::Unix, shared);
            }
        }
        Ok(())
    }
}

fn spawn_connection<I>(io: I, transport: Transport, shared: &Arc<Shared>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, transport, request).await) }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), service)
            .await;
    });
}

async fn serve(listener: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let accepting = match Accepting::new(listener) {
        Ok(accepting) => accepting,
        Err(e) => {
            log::error!("admin: listener: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = accepting.next(&shared) => {
                if let Err(e) = accepted {
                    // Out of descriptors, an accept fails again at once: a pause, not a spin.
                    log::warn!("admin: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ = stop.changed() => break,
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn message(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json_response(status, json!({ "message": message }))
}

/// Why a browser sent this request, if one did: a page's requests carry `Origin` (every
/// cross-origin one, and same-origin ones but GET and HEAD), and today's browsers say in
/// `Sec-Fetch-Site` where any request comes from (`none`: an address the user typed).
fn from_a_browser(headers: &HeaderMap) -> Option<String> {
    if headers.contains_key(http::header::ORIGIN) {
        return Some("it carries Origin".into());
    }
    let site = headers.get("sec-fetch-site")?;
    (site.as_bytes() != b"none").then(|| {
        format!(
            "it carries Sec-Fetch-Site: {}",
            String::from_utf8_lossy(site.as_bytes())
        )
    })
}

/// The token a request presents: `Authorization: Bearer TOKEN` (the scheme in any case, as
/// RFC 9110 says), else Kong's `Kong-Admin-Token: TOKEN`.
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().as_bytes());
    bearer.or_else(|| headers.get("kong-admin-token").map(HeaderValue::as_bytes))
}

/// The host a request names (`:authority`, else `Host`) without its port; `None` when it
/// names none (HTTP/1.0), the header's text when it is no host.
fn requested_host(uri: &Uri, headers: &HeaderMap) -> Option<Result<String, String>> {
    if let Some(authority) = uri.authority() {
        return Some(Ok(authority.host().to_owned()));
    }
    let host = headers.get(http::header::HOST)?;
    Some(
        (host.to_str().ok())
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
            .map(|authority| authority.host().to_owned())
            .ok_or_else(|| String::from_utf8_lossy(host.as_bytes()).into_owned()),
    )
}

/// `localhost` or a loopback address (`[::1]` in brackets, as in a URL).
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || literal
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The answer to a request the admin API does not serve, if this is one: from a browser
/// (403), without the token (401), or, with no token, relayed by a proxy or, over TCP, for a
/// host that is not loopback (403).
fn refusal(
    options: &AdminOptions,
    transport: Transport,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    if let Some(why) = from_a_browser(headers) {
        return Some(message(
            StatusCode::FORBIDDEN,
            format!(
                "the admin API does not answer browsers, and this request came from one: {why}"
            ),
        ));
    }
    match &options.token {
        Some(token) => {
            if presented_token(headers).is_some_and(|presented| token.matches(presented)) {
                return None;
            }
            // Kong Enterprise's RBAC answer, with the challenge RFC 6750 asks for.
            let mut response = message(
                StatusCode::UNAUTHORIZED,
                "Invalid credentials. Token or User credentials required".into(),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wasmgate admin\""),
            );
            Some(response)
        }
        None => {
            if let Some(relayed) = relayed_by(headers) {
                return Some(message(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the admin API has no token, so it answers only direct clients, and a \
                         proxy relayed this request (it carries {relayed}); give it a token \
                         with --admin-token-file or {TOKEN_ENV} to reach it through a proxy"
                    ),
                ));
            }
            if transport == Transport::Unix {
                return None;
            }
            match requested_host(uri, headers) {
                Some(Ok(host)) if is_loopback_name(&host) => None,
                None => None,
                Some(Ok(host) | Err(host)) => Some(message(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the admin API has no token, so it answers only requests for localhost \
                         or a loopback address, not {host:?} (give it a token with \
                         --admin-token-file or {TOKEN_ENV} to use other names)"
                    ),
                )),
            }
        }
    }
}

/// The header by which a proxy says it relayed this request, if there is one. The gateway
/// sets `X-Forwarded-For` and `X-Real-IP` on every request it proxies, whatever its plugins
/// did to the request: a route to the admin port shows.
fn relayed_by(headers: &HeaderMap) -> Option<&'static str> {
    ["X-Forwarded-For", "X-Real-IP", "Forwarded", "Via"]
        .into_iter()
        .find(|name| headers.contains_key(*name))
}

async fn handle(
    shared: &Shared,
    transport: Transport,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(refused) = refusal(
        &shared.options.admin,
        transport,
        request.uri(),
        request.headers(),
    ) {
        return refused;
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/status") => {
            let snapshot = shared.snapshot.load();
            json_response(
                StatusCode::OK,
                json!({
                    "config_hash": snapshot.hash,
                    "workers": shared.options.workers,
                    "services": snapshot.config.services.len(),
                    "routes": snapshot.config.routes.len(),
                    "plugins": snapshot.config.plugins.len(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "control_plane": shared
                        .cluster
                        .lock()
                        .map(|c| c.clone())
                        .unwrap_or_default(),
                }),
            )
        }
        (&Method::GET, "/metrics") => {
            let modules = module_metrics(&shared.runtime.env.metrics.snapshot());
            let mut response =
                Response::new(Full::new(Bytes::from(shared.metrics.render(&modules))));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/config") => {
            // The text as it was given: a plugin's secret is there by its vault reference,
            // resolved only inside the modules that use it. Certificates' private keys are
            // there in full, and are never shown (the document is then JSON, which is YAML).
            let snapshot = shared.snapshot.load();
            let shown = model::declarative::redact_private_keys(&snapshot.source).into_owned();
            let mut response = Response::new(Full::new(Bytes::from(shown)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            response
        }
        (&Method::POST, "/config") if shared.options.admin.read_only => {
            let mut response = message(
                StatusCode::METHOD_NOT_ALLOWED,
                "this gateway follows a control plane, which alone configures it: change the \
                 configuration on the control plane"
                    .into(),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            response
        }
        (&Method::POST, "/config") => post_config(shared, request).await,
        _ => message(StatusCode::NOT_FOUND, "Not found".into()),
    }
}

/// Whether `headers` say the body is a declarative file (JSON or YAML); else what they say.
fn declarative_type(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return Err("none".into());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if DECLARATIVE_TYPES
        .iter()
        .any(|known| media.eq_ignore_ascii_case(known))
    {
        Ok(())
    } else {
        Err(text.into_owned())
    }
}

async fn post_config(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(given) = declarative_type(request.headers()) {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "POST /config takes Content-Type application/yaml or application/json; \
                 this request's is {given}"
            ),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return message(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the configuration: {e}"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return message(
            StatusCode::BAD_REQUEST,
            "the configuration is not UTF-8".into(),
        );
    };
    match shared.apply(text) {
        Ok(hash) => json_response(StatusCode::CREATED, json!({"config_hash": hash})),
        Err(error) => json_response(StatusCode::BAD_REQUEST, declarative_error_body(&error)),
    }
}

/// The modules' own proxy-wasm metrics (and the host's per-plugin failure counters) in
/// Prometheus' text format, names sanitised (`a.b-c` → `wasm_a_b_c`).
fn module_metrics(values: &[host::metrics::MetricValue]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for metric in values {
        let name: String = metric
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let name = format!("wasm_{name}");
        match metric.kind {
            host::metrics::MetricKind::Counter => {
                let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", metric.value);
            }
            host::metrics::MetricKind::Gauge => {
                let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", metric.value);
            }
            host::metrics::MetricKind::Histogram => {
                let _ = writeln!(
                    out,
                    "# TYPE {name} summary\n{name}_count {}\n{name}_sum {}",
                    metric.count, metric.sum
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn admin_listen_is_an_address_a_unix_socket_or_off() {
        assert_eq!(
            "127.0.0.1:8001".parse(),
            Ok(AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8001))))
        );
        assert_eq!(
            "unix:/run/gw/admin.sock".parse(),
            Ok(AdminListen::Unix("/run/gw/admin.sock".into()))
        );
        assert_eq!("off".parse(), Ok(AdminListen::Off));
        for bad in ["unix:", "localhost", "8001", ""] {
            let error = bad.parse::<AdminListen>().unwrap_err();
            assert!(error.contains("unix:"), "{bad}: {error}");
        }
        for listen in ["[::1]:8001", "unix:/a b/admin.sock", "off"] {
            assert_eq!(listen.parse::<AdminListen>().unwrap().to_string(), listen);
        }
    }

    /// Review A.3: an admin API anyone on the network could reach needs a token; the check
    /// comes before any socket is bound.
    #[test]
    fn off_loopback_the_admin_api_needs_a_token() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8001"] {
            let error = bind(Some(addr.parse().unwrap()), &AdminOptions::default())
                .err()
                .unwrap();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains("--admin-token-file"), "{error}");
        }
        let loopback = bind(
            Some("127.0.0.1:0".parse().unwrap()),
            &AdminOptions::default(),
        );
        assert!(loopback.unwrap().unwrap().tcp_addr().unwrap().is_some());
        let both = AdminOptions {
            unix_socket: Some("/tmp/admin.sock".into()),
            ..AdminOptions::default()
        };
        let error = bind(Some("127.0.0.1:0".parse().unwrap()), &both)
            .err()
            .unwrap();
        assert!(error.to_string().contains("give one"), "{error}");
    }

    #[test]
    fn a_token_matches_only_itself() {
        let token = AdminToken::new("abc123\n", "test").unwrap();
        assert!(token.matches(b"abc123"));
        for other in [&b""[..], b"abc12", b"abc1234", b"ABC123", b"abc123\n"] {
            assert!(!token.matches(other), "{other:?}");
        }
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }

    #[test]
    fn a_token_is_printable_ascii_from_one_source() {
        for bad in ["", " \n", "two words", "tab\there", "caf\u{e9}"] {
            let error = AdminToken::new(bad, "test").unwrap_err();
            assert!(error.starts_with("test: the admin token"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let token = AdminToken::configured(Some(&file), None).unwrap().unwrap();
        assert!(token.matches(b"from-file"));
        let token = AdminToken::configured(None, Some("from-env".into()))
            .unwrap()
            .unwrap();
        assert!(token.matches(b"from-env"));
        let error = AdminToken::configured(Some(&file), Some("x".into())).unwrap_err();
        assert!(
            error.contains(TOKEN_ENV) && error.contains("give one"),
            "{error}"
        );
        let missing = dir.path().join("missing");
        let error = AdminToken::configured(Some(&missing), None).unwrap_err();
        assert!(error.contains("--admin-token-file"), "{error}");
        assert!(AdminToken::configured(None, None).unwrap().is_none());
    }

    #[test]
    fn the_token_is_a_bearer_or_kongs_header() {
        let presented = |pairs| presented_token(&headers(pairs)).map(<[u8]>::to_vec);
        assert_eq!(
            presented(&[("authorization", "Bearer t1")]),
            Some(b"t1".to_vec())
        );
        assert_eq!(
            presented(&[("authorization", "bearer  t1")]),
            Some(b"t1".to_vec())
        );
        assert_eq!(
            presented(&[("kong-admin-token", "t2")]),
            Some(b"t2".to_vec())
        );
        assert_eq!(
            presented(&[("authorization", "Basic dDE="), ("kong-admin-token", "t2")]),
            Some(b"t2".to_vec())
        );
        assert_eq!(presented(&[("authorization", "Basic dDE=")]), None);
        assert_eq!(presented(&[]), None);
    }

    #[test]
    fn requests_from_web_pages_are_recognised() {
        for page in [
            headers(&[("origin", "https://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("sec-fetch-site", "same-origin")]),
        ] {
            assert!(from_a_browser(&page).is_some(), "{page:?}");
        }
        for not_a_page in [headers(&[("sec-fetch-site", "none")]), headers(&[])] {
            assert_eq!(from_a_browser(&not_a_page), None);
        }
    }

    #[test]
    fn relayed_requests_are_recognised() {
        for relayed in ["x-forwarded-for", "x-real-ip", "forwarded", "via"] {
            let given = HeaderMap::from_iter([(
                http::HeaderName::from_static(relayed),
                HeaderValue::from_static("1.1 proxy"),
            )]);
            assert!(relayed_by(&given).is_some(), "{relayed}");
        }
        assert_eq!(relayed_by(&headers(&[("host", "localhost")])), None);
    }

    #[test]
    fn loopback_names() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
        ] {
            assert!(is_loopback_name(host), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "[::]",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_name(host), "{host}");
        }
        let uri = Uri::from_static("/config");
        let host = |value| requested_host(&uri, &headers(&[("host", value)]));
        assert_eq!(host("localhost:8001"), Some(Ok("localhost".into())));
        assert_eq!(host("[::1]:8001"), Some(Ok("[::1]".into())));
        assert_eq!(host("a b"), Some(Err("a b".into())));
        assert_eq!(requested_host(&uri, &HeaderMap::new()), None);
        let absolute = Uri::from_static("http://evil.example:8001/config");
        assert_eq!(
            requested_host(&absolute, &headers(&[("host", "localhost")])),
            Some(Ok("evil.example".into()))
        );
    }

    #[test]
    fn post_config_takes_json_and_yaml_only() {
        for known in [
            "application/json",
            "application/yaml; charset=utf-8",
            "TEXT/YAML",
        ] {
            let given = HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(known).unwrap(),
            )]);
            assert_eq!(declarative_type(&given), Ok(()), "{known}");
        }
        assert_eq!(declarative_type(&HeaderMap::new()), Err("none".into()));
        let form = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        assert_eq!(
            declarative_type(&form),
            Err("application/x-www-form-urlencoded".into())
        );
    }

    /// A socket a crashed gateway left is replaced; a live one, or a file that is no socket,
    /// is not touched.
    #[test]
    fn a_unix_socket_is_private_and_replaces_only_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let options = AdminOptions {
            unix_socket: Some(path.clone()),
            ..AdminOptions::default()
        };
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(None, &options).unwrap().unwrap();
        assert!(live.tcp_addr().unwrap().is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let error = bind(None, &options).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        drop(live);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        let error = bind(None, &options).err().unwrap();
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }
}
