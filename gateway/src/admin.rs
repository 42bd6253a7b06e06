//! The admin listener (loopback by default): `/status`, `/metrics`, and Kong DB-less
//! `/config` (`GET` the current declarative text, `POST` a new one).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::watch;

use crate::server::Shared;
use crate::snapshot::declarative_error_body;

/// The largest declarative document `POST /config` takes.
const MAX_CONFIG_BYTES: usize = 16 << 20;

pub fn run(listener: std::net::TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
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
    runtime.block_on(serve(listener, shared, stop));
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
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
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
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
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/config") => {
            let snapshot = shared.snapshot.load();
            let mut response = Response::new(Full::new(Bytes::from(snapshot.source.clone())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/yaml"),
            );
            response
        }
        (&Method::POST, "/config") => {
            let body = match Limited::new(request.into_body(), MAX_CONFIG_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return json_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json!({"message": format!("reading the configuration: {e}")}),
                    )
                }
            };
            let text = match std::str::from_utf8(&body) {
                Ok(text) => text,
                Err(_) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"message": "the configuration is not UTF-8"}),
                    )
                }
            };
            match shared.apply(text) {
                Ok(hash) => json_response(StatusCode::CREATED, json!({"config_hash": hash})),
                Err(error) => {
                    json_response(StatusCode::BAD_REQUEST, declarative_error_body(&error))
                }
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "Not found"})),
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
