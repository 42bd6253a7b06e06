//! Upstream connections: a pooled HTTP client per service endpoint and connect timeout, per
//! worker, and Kong's timeouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::body::ProxyBody;
use super::errors::ProxyError;
use model::Service;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout_ms: u64,
    http2: bool,
}

/// This worker's connection pools.
#[derive(Default)]
pub struct Upstreams {
    clients: RefCell<HashMap<PoolKey, Client<HttpConnector, ProxyBody>>>,
}

/// The upstream URI: the service's scheme and authority with the computed path and the
/// client's query.
pub fn uri(service: &Service, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let host = if service.host.contains(':') && !service.host.starts_with('[') {
        format!("[{}]", service.host)
    } else {
        service.host.clone()
    };
    let text = match query {
        Some(q) => format!("http://{host}:{}{path}?{q}", service.port),
        None => format!("http://{host}:{}{path}", service.port),
    };
    text.parse()
        .map_err(|e| ProxyError::BadRequest(format!("upstream URI {text}: {e}")))
}

impl Upstreams {
    fn client(&self, service: &Service) -> Client<HttpConnector, ProxyBody> {
        let key = PoolKey {
            connect_timeout_ms: service.connect_timeout_ms,
            http2: false,
        };
        self.clients
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector
                    .set_connect_timeout(Some(Duration::from_millis(service.connect_timeout_ms)));
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector)
            })
            .clone()
    }

    /// Sends the request; waits at most the service's read timeout for the response head.
    pub async fn send(
        &self,
        service: &Service,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let client = self.client(service);
        let read_timeout = Duration::from_millis(service.read_timeout_ms);
        match tokio::time::timeout(read_timeout, client.request(request)).await {
            Err(_) => Err(ProxyError::Timeout(format!(
                "no response within {read_timeout:?}"
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error)),
        }
    }
}

fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_connect() {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("timed out") || lower.contains("timeout") {
            return ProxyError::Timeout(detail);
        }
        if lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup") {
            return ProxyError::Unavailable(detail);
        }
    }
    ProxyError::BadGateway(detail)
}
