//! The request path: route, forward, answer.
//!
//! Phases in order, like Pingora's `ProxyHttp`: normalise and route the request; build the
//! upstream request (Kong's forwarding headers, Host, path); send it with the service's
//! timeouts; relay the response; log. Errors become Kong's JSON answers (404 no route, 502,
//! 503, 504).

pub mod acme;
pub mod body;
pub mod channel;
pub mod egress;
pub mod errors;
pub mod filtered;
pub mod grpc_call;
pub mod headers;
pub mod path;
mod protocols;
pub mod real_ip;
pub mod upgrade;
pub mod upstream;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::server::Worker;
use body::ProxyBody;
use errors::ProxyError;

/// What the proxy knows about the downstream connection of a request.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted proxy names ([`real_ip`]). Filters see
    /// it as `source.address`, the upstream as `X-Real-IP`.
    pub client: SocketAddr,
    /// Whether the peer is a trusted proxy, whose `X-Forwarded-*` headers go on.
    pub trusted_peer: bool,
    pub local: SocketAddr,
    pub tls: bool,
    /// The SNI a TLS client sent.
    pub server_name: Option<std::sync::Arc<str>>,
    /// Unique among this process's connections (Envoy's `connection.id` property).
    pub id: u64,
}

impl Downstream {
    /// A connection just accepted, with the next connection id.
    pub fn accepted(peer: SocketAddr, local: SocketAddr, tls: bool) -> Downstream {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Downstream {
            peer,
            client: peer,
            trusted_peer: false,
            local,
            tls,
            server_name: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The scheme the client spoke to the gateway.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// What a trusted proxy says in its `X-Forwarded-*` header `name` (its first line), else
    /// `own`, the gateway's own view: an untrusted client's is never taken.
    pub fn forwarded<'a>(
        &self,
        headers: &'a http::HeaderMap,
        name: impl http::header::AsHeaderName,
        own: &'a [u8],
    ) -> &'a [u8] {
        if !self.trusted_peer {
            return own;
        }
        headers.get(name).map_or(own, |value| value.as_bytes())
    }
}

/// Handles one request from start to response head.
pub async fn handle(
    worker: Rc<Worker>,
    mut downstream: Downstream,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let real_ip = &worker.shared.options.real_ip;
    downstream.client = real_ip.client(downstream.peer, request.headers());
    downstream.trusted_peer = real_ip.trusts(downstream.peer.ip());
    let snapshot = worker.shared.snapshot.load_full();
    let accept = request
        .headers()
        .get(http::header::ACCEPT)
        .map(|v| v.as_bytes().to_vec());
    // Envoy's edge behaviour: every request gets a fresh id, whatever the client sent (an
    // id chosen by a client would let it forge the correlation of logs and error reports).
    // Filters read it as `request.id`, the upstream gets it, and so does the client.
    let request_id = request_id();
    request.headers_mut().insert(REQUEST_ID, request_id.clone());
    let mut log = AccessLog::new(&downstream, &request);
    let websocket = upgrade::is_websocket(request.headers());
    let client_upgrade = websocket
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let slot = websocket
        .then(|| {
            request
                .extensions()
                .get::<upgrade::ConnectionSlot>()
                .cloned()
        })
        .flatten();

    let mut response = match forward(&worker, &snapshot, downstream, request, &mut log).await {
        Ok(mut response) => {
            upgrade::switch(&mut response, client_upgrade, slot);
            response
        }
        Err(error) => {
            log.error = Some(error.to_string());
            // As Envoy after a refused upgrade: whatever the client sends next on this
            // connection could be the refused protocol's bytes, never read as a request.
            let close = matches!(error, ProxyError::UpgradeRefused(_));
            let mut response = error.into_response(accept.as_deref(), request_id.as_bytes());
            if close {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    log.status = response.status().as_u16();
    log.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    worker.log(&log);
    response
}

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A random (version 4) UUID, the form of Envoy's `x-request-id`.
fn request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn forward(
    worker: &Rc<Worker>,
    snapshot: &std::sync::Arc<crate::Snapshot>,
    downstream: Downstream,
    request: Request<Incoming>,
    log: &mut AccessLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let body = body::IdleTimeout::new(
        body,
        "the client's request",
        worker.shared.options.client_body_timeout,
    );
    headers::check_request_head_size(&parts.headers)?;
    headers::check_transfer_encoding(&parts.headers)?;
    // Before routing: no route can take CONNECT or another protocol, and the connection is
    // closed after the refusal whether a route matched or not.
    upgrade::check(&parts.method, &parts.headers)?;
    if let Some(answer) = acme::answer(&snapshot.config, &parts.method, parts.uri.path()) {
        return Ok(answer);
    }
    let host = headers::request_host(&parts);
    let path = path::normalize(parts.uri.path());
    let route_match = snapshot
        .router
        .find(parts.method.as_str(), &host, &path, |name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        })
        .ok_or(ProxyError::NoRoute)?;
    let route = &snapshot.config.routes[route_match.route];
    log.route = Some(route.name.clone());
    if let Some(refusal) = protocols::refusal(route, &downstream, &parts, &host) {
        return Ok(refusal);
    }
    let service_index = route.service.ok_or(ProxyError::NoService)?;
    let service = &snapshot.config.services[service_index];
    let tunnel_idle =
        upgrade::TunnelIdle(std::time::Duration::from_millis(service.read_timeout_ms));
    log.service = Some(service.name.clone());

    let filters = &snapshot.filters.routes[route_match.route];
    if !filters.is_empty() {
        let instances = worker_instances(worker, snapshot, filters)?;
        let matched = filtered::Matched {
            snapshot,
            route: route_match.route,
            service: service_index,
            matched: &route_match.matched,
            host: &host,
            path: &path,
        };
        let mut response =
            filtered::forward(worker, matched, downstream, parts, body, instances, log).await?;
        response.extensions_mut().insert(tunnel_idle);
        return Ok(response);
    }

    let upstream_path = model::router::upstream_path(
        service.path.as_deref(),
        &route_match.matched,
        route.strip_path,
        &path,
    );
    let target = &snapshot.targets[service_index];
    let upstream_uri = upstream::uri(target, &upstream_path, parts.uri.query())?;
    log.upstream = Some(upstream_uri.clone());
    let body_follows = !http_body::Body::is_end_stream(&body);
    let mut upstream_request = Request::builder()
        .method(parts.method.clone())
        .uri(upstream_uri)
        .body(ProxyBody::streaming(body))
        .map_err(|e| ProxyError::BadRequest(format!("building the upstream request: {e}")))?;
    let upstream_host = if route.preserve_host {
        host_header(&parts)
    } else {
        target.host.clone()
    };
    headers::forward_request_headers(
        parts.headers,
        upstream_request.headers_mut(),
        &downstream,
        &host,
        &path,
        route.strip_path.then_some(route_match.matched.as_str()),
        upstream_host,
    );
    headers::frame_body_of_unknown_length(upstream_request.headers_mut(), body_follows);

    let upstream_started = Instant::now();
    let response = worker.upstreams.send(service, upstream_request).await?;
    log.upstream_latency_ms = Some(upstream_started.elapsed().as_secs_f64() * 1000.0);
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        "via",
        HeaderValue::from_static(concat!("1.1 wasmgate/", env!("CARGO_PKG_VERSION"))),
    );
    parts.extensions.insert(tunnel_idle);
    Ok(Response::from_parts(parts, ProxyBody::streaming(body)))
}

/// The Host as the client sent it (or the HTTP/2 authority), port included.
fn host_header(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// This worker's instances of the route's filters, started for the current snapshot.
fn worker_instances(
    worker: &Worker,
    snapshot: &crate::Snapshot,
    filters: &[crate::filters::FilterRef],
) -> Result<Vec<host::WorkerPlugin>, ProxyError> {
    let mut current = worker.filters.borrow_mut();
    current.advance(snapshot.generation, &snapshot.filters);
    filters
        .iter()
        .map(|filter| {
            current
                .instance(&snapshot.filters, *filter)
                .ok_or_else(|| ProxyError::FilterUnavailable(format!("{filter:?}")))
        })
        .collect()
}
