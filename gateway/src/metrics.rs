//! The gateway's own metrics, exported in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::access_log::AccessLog;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (route, service, status) → count
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    upstream_latency: BTreeMap<String, Histogram>,
    /// (filter, outcome) → count
    filter_outcomes: BTreeMap<(String, String), u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn observe(&self, log: &AccessLog) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let route = log.route.clone().unwrap_or_default();
        let service = log.service.clone().unwrap_or_default();
        *inner
            .requests
            .entry((route, service.clone(), log.status))
            .or_default() += 1;
        inner
            .latency
            .entry(service.clone())
            .or_default()
            .observe(log.latency_ms / 1000.0);
        if let Some(ms) = log.upstream_latency_ms {
            inner
                .upstream_latency
                .entry(service)
                .or_default()
                .observe(ms / 1000.0);
        }
        for (filter, outcome) in &log.filters {
            *inner
                .filter_outcomes
                .entry((filter.clone(), outcome.clone()))
                .or_default() += 1;
        }
    }

    /// Everything in Prometheus' text exposition format; `extra` is appended (module metrics).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str(
            "# HELP wasmgate_requests_total Requests answered, by route, service and status.\n",
        );
        out.push_str("# TYPE wasmgate_requests_total counter\n");
        for ((route, service, status), count) in &inner.requests {
            let _ = writeln!(
                out,
                "wasmgate_requests_total{{route=\"{}\",service=\"{}\",status=\"{status}\"}} {count}",
                escape(route),
                escape(service)
            );
        }
        out.push_str(
            "# HELP wasmgate_request_latency_seconds Time from request to response head.\n",
        );
        out.push_str("# TYPE wasmgate_request_latency_seconds histogram\n");
        for (service, histogram) in &inner.latency {
            histogram.render(
                &mut out,
                "wasmgate_request_latency_seconds",
                &format!("service=\"{}\"", escape(service)),
            );
        }
        out.push_str(
            "# HELP wasmgate_upstream_latency_seconds Time the upstream took to answer.\n",
        );
        out.push_str("# TYPE wasmgate_upstream_latency_seconds histogram\n");
        for (service, histogram) in &inner.upstream_latency {
            histogram.render(
                &mut out,
                "wasmgate_upstream_latency_seconds",
                &format!("service=\"{}\"", escape(service)),
            );
        }
        out.push_str(
            "# HELP wasmgate_filter_outcomes_total What filters did, by filter and outcome.\n",
        );
        out.push_str("# TYPE wasmgate_filter_outcomes_total counter\n");
        for ((filter, outcome), count) in &inner.filter_outcomes {
            let _ = writeln!(
                out,
                "wasmgate_filter_outcomes_total{{filter=\"{}\",outcome=\"{}\"}} {count}",
                escape(filter),
                escape(outcome)
            );
        }
        out.push_str(extra);
        out
    }
}
