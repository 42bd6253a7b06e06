//! The gateway's own metrics, exported in Prometheus' text format.
//!
//! Each worker counts into its own [`WorkerMetrics`]: a request looks its series up in maps
//! only its thread touches (label strings interned to numbers, so nothing is allocated once a
//! series exists) and bumps counters only that worker writes. No lock, and no cache line
//! another core writes, is on the request path. A scrape ([`Metrics::render`]) reads every
//! worker's series and adds them up; a worker takes its registry's lock only to publish a
//! series it sees for the first time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::access_log::AccessLog;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A count one worker writes and a scrape reads. Its only writer adds with a load and a
/// store (no read-modify-write instruction): [`WorkerMetrics`] is not `Sync`, so two threads
/// never add to one counter.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A worker's latency histogram, written as [`Counter`]s are.
#[derive(Debug, Default)]
struct HistogramCells {
    /// Per bucket, the observations it is the first to take (the scrape makes them
    /// cumulative): one counter per observation instead of one per bucket.
    first: [Counter; BUCKETS.len()],
    count: Counter,
    /// The sum's `f64` bits.
    sum: AtomicU64,
}

impl HistogramCells {
    fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.first[i].add(1);
        }
        self.count.add(1);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + seconds;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// Histograms of every worker added up, for rendering.
#[derive(Default)]
struct Histogram {
    first: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn add(&mut self, cells: &HistogramCells) {
        for (total, first) in self.first.iter_mut().zip(&cells.first) {
            *total += first.get();
        }
        self.count += cells.count.get();
        self.sum += f64::from_bits(cells.sum.load(Ordering::Relaxed));
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, first) in BUCKETS.iter().zip(&self.first) {
            cumulative += first;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
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

/// One series of one worker, with its labels, as the scrape sees it.
enum Series {
    Requests {
        route: String,
        service: String,
        status: u16,
        count: Arc<Counter>,
    },
    Latency {
        service: String,
        cells: Arc<HistogramCells>,
    },
    UpstreamLatency {
        service: String,
        cells: Arc<HistogramCells>,
    },
    FilterOutcome {
        filter: String,
        outcome: String,
        count: Arc<Counter>,
    },
}

/// What one worker has published.
#[derive(Default)]
struct Registry {
    series: Mutex<Vec<Series>>,
}

impl Registry {
    fn publish(&self, series: Series) {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(series);
    }
}

/// Every worker's registry, and what is counted outside the workers.
#[derive(Default)]
pub struct Metrics {
    /// Taken when a worker starts and by a scrape, never per request.
    workers: Mutex<Vec<Arc<Registry>>>,
    /// Access log lines dropped: the queue was full or its writer gone. Written only when a
    /// line is dropped.
    access_log_dropped: Arc<AtomicU64>,
}

/// A label interned by one worker.
type Label = usize;

/// One worker's metrics: its own series, found without a lock or an allocation.
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    local: std::cell::RefCell<Local>,
}

#[derive(Default)]
struct Local {
    labels: FxHashMap<String, Label>,
    requests: FxHashMap<(Label, Label, u16), Arc<Counter>>,
    latency: FxHashMap<Label, Arc<HistogramCells>>,
    upstream_latency: FxHashMap<Label, Arc<HistogramCells>>,
    filter_outcomes: FxHashMap<(Label, Label), Arc<Counter>>,
}

impl Local {
    fn label(&mut self, value: &str) -> Label {
        if let Some(label) = self.labels.get(value) {
            return *label;
        }
        let label = self.labels.len();
        self.labels.insert(value.to_owned(), label);
        label
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl WorkerMetrics {
    pub fn observe(&self, log: &AccessLog) {
        let Ok(mut local) = self.local.try_borrow_mut() else {
            return;
        };
        let local = &mut *local;
        let route = log.route.as_deref().unwrap_or_default();
        let service = log.service.as_deref().unwrap_or_default();
        let (route_label, service_label) = (local.label(route), local.label(service));
        local
            .requests
            .entry((route_label, service_label, log.status))
            .or_insert_with(|| {
                let count = Arc::<Counter>::default();
                self.registry.publish(Series::Requests {
                    route: route.to_owned(),
                    service: service.to_owned(),
                    status: log.status,
                    count: Arc::clone(&count),
                });
                count
            })
            .add(1);
        local
            .latency
            .entry(service_label)
            .or_insert_with(|| {
                let cells = Arc::<HistogramCells>::default();
                self.registry.publish(Series::Latency {
                    service: service.to_owned(),
                    cells: Arc::clone(&cells),
                });
                cells
            })
            .observe(log.latency_ms / 1000.0);
        if let Some(ms) = log.upstream_latency_ms {
            local
                .upstream_latency
                .entry(service_label)
                .or_insert_with(|| {
                    let cells = Arc::<HistogramCells>::default();
                    self.registry.publish(Series::UpstreamLatency {
                        service: service.to_owned(),
                        cells: Arc::clone(&cells),
                    });
                    cells
                })
                .observe(ms / 1000.0);
        }
        for (filter, outcome) in &log.filters {
            let key = (local.label(filter), local.label(outcome));
            local
                .filter_outcomes
                .entry(key)
                .or_insert_with(|| {
                    let count = Arc::<Counter>::default();
                    self.registry.publish(Series::FilterOutcome {
                        filter: filter.clone(),
                        outcome: outcome.to_string(),
                        count: Arc::clone(&count),
                    });
                    count
                })
                .add(1);
        }
    }
}

impl Metrics {
    /// A new worker's metrics, counted in every scrape from now on (and after the worker
    /// ends).
    pub fn worker(&self) -> WorkerMetrics {
        let registry = Arc::<Registry>::default();
        self.workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&registry));
        WorkerMetrics {
            registry,
            local: Default::default(),
        }
    }

    /// Where the access log counts the lines it drops.
    pub fn access_log_dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.access_log_dropped)
    }

    /// Everything in Prometheus' text exposition format; `extra` is appended (module metrics).
    pub fn render(&self, extra: &str) -> String {
        let mut requests = BTreeMap::<(String, String, u16), u64>::new();
        let mut latency = BTreeMap::<String, Histogram>::new();
        let mut upstream_latency = BTreeMap::<String, Histogram>::new();
        let mut filter_outcomes = BTreeMap::<(String, String), u64>::new();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for registry in workers {
            let series = registry
                .series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for series in series.iter() {
                match series {
                    Series::Requests {
                        route,
                        service,
                        status,
                        count,
                    } => {
                        *requests
                            .entry((route.clone(), service.clone(), *status))
                            .or_default() += count.get();
                    }
                    Series::Latency { service, cells } => {
                        latency.entry(service.clone()).or_default().add(cells);
                    }
                    Series::UpstreamLatency { service, cells } => {
                        upstream_latency
                            .entry(service.clone())
                            .or_default()
                            .add(cells);
                    }
                    Series::FilterOutcome {
                        filter,
                        outcome,
                        count,
                    } => {
                        *filter_outcomes
                            .entry((filter.clone(), outcome.clone()))
                            .or_default() += count.get();
                    }
                }
            }
        }
        let mut out = String::new();
        out.push_str(
            "# HELP wasmgate_requests_total Requests answered, by route, service and status.\n",
        );
        out.push_str("# TYPE wasmgate_requests_total counter\n");
        for ((route, service, status), count) in &requests {
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
        for (service, histogram) in &latency {
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
        for (service, histogram) in &upstream_latency {
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
        for ((filter, outcome), count) in &filter_outcomes {
            let _ = writeln!(
                out,
                "wasmgate_filter_outcomes_total{{filter=\"{}\",outcome=\"{}\"}} {count}",
                escape(filter),
                escape(outcome)
            );
        }
        out.push_str(
            "# HELP wasmgate_access_log_dropped_total Access log lines dropped because the \
             writer fell behind.\n",
        );
        out.push_str("# TYPE wasmgate_access_log_dropped_total counter\n");
        let _ = writeln!(
            out,
            "wasmgate_access_log_dropped_total {}",
            self.access_log_dropped.load(Ordering::Relaxed)
        );
        out.push_str(extra);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(route: &str, service: &str, status: u16, ms: f64, upstream: Option<f64>) -> AccessLog {
        AccessLog {
            route: (!route.is_empty()).then(|| route.to_owned()),
            service: (!service.is_empty()).then(|| service.to_owned()),
            status,
            latency_ms: ms,
            upstream_latency_ms: upstream,
            filters: vec![
                ("rate-limiting".into(), "ran".into()),
                ("request-transformer".into(), "ran".into()),
            ],
            ..AccessLog::default()
        }
    }

    fn scenario() -> Vec<AccessLog> {
        vec![
            log("a", "s", 200, 0.25, Some(0.125)),
            log("a", "s", 200, 3.0, Some(2.0)),
            log("b\"\n", "s\\", 404, 500.0, None),
            log("", "", 404, 7000.0, None),
            log("a", "s", 503, 0.5, Some(0.5)),
        ]
    }

    /// What the single locked registry rendered for [`scenario`] before the workers got
    /// their own (printed by that code on the same logs), with the access log's new
    /// `wasmgate_access_log_dropped_total` before the modules' metrics.
    const RENDERED: &str = include_str!("metrics_rendered.txt");

    #[test]
    fn one_worker_renders_as_the_single_registry_did() {
        let metrics = Metrics::default();
        let worker = metrics.worker();
        for log in scenario() {
            worker.observe(&log);
        }
        assert_eq!(metrics.render("extra\n"), RENDERED);
    }

    /// Series spread over workers (each on its own thread, some seen by both, some by one)
    /// render as one worker that saw every request.
    #[test]
    fn workers_add_up_to_one_that_saw_everything() {
        let metrics = Metrics::default();
        let logs = scenario();
        std::thread::scope(|scope| {
            for part in [&logs[..2], &logs[1..], &logs[3..]] {
                let worker = metrics.worker();
                scope.spawn(move || {
                    for log in part {
                        worker.observe(log);
                    }
                });
            }
        });
        let alone = Metrics::default();
        let worker = alone.worker();
        for log in logs[..2].iter().chain(&logs[1..]).chain(&logs[3..]) {
            worker.observe(log);
        }
        // A worker that ended still counts.
        drop(worker);
        assert_eq!(metrics.render(""), alone.render(""));
        assert!(metrics
            .render("")
            .contains("wasmgate_requests_total{route=\"a\",service=\"s\",status=\"200\"} 3\n"));
    }

    #[test]
    fn dropped_access_log_lines_are_rendered() {
        let metrics = Metrics::default();
        metrics.access_log_dropped().fetch_add(3, Ordering::Relaxed);
        assert!(metrics
            .render("")
            .contains("\nwasmgate_access_log_dropped_total 3\n"));
    }
}
