//! One structured (JSON) line per request.

use std::time::SystemTime;

use http::Request;
use serde_json::json;

use crate::proxy::Downstream;

#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    pub client: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub status: u16,
    pub route: Option<String>,
    pub service: Option<String>,
    pub upstream: Option<String>,
    /// From the request's arrival to the response head.
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    /// What each filter did (`plugin: outcome`), in order.
    pub filters: Vec<(String, String)>,
    pub error: Option<String>,
}

impl AccessLog {
    pub fn new<B>(downstream: &Downstream, request: &Request<B>) -> AccessLog {
        AccessLog {
            client: downstream.client.ip().to_string(),
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            protocol: format!("{:?}", request.version()),
            ..AccessLog::default()
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let filters: serde_json::Map<String, serde_json::Value> = self
            .filters
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        json!({
            "time": time,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "status": self.status,
            "route": self.route,
            "service": self.service,
            "upstream": self.upstream,
            "latency_ms": self.latency_ms,
            "upstream_latency_ms": self.upstream_latency_ms,
            "filters": filters,
            "error": self.error,
        })
    }
}
