//! Metrics: the host's own (per-plugin failure counters) and those modules define with
//! `proxy_define_metric`, in one process-wide registry (a Prometheus export reads
//! [`Metrics::snapshot`]).
//!
//! As in Envoy, a name is one metric for every plugin that defines it (Envoy's `wasmcustom`
//! scope), while the ids a module uses are its plugin's own: Envoy keeps them per Wasm
//! (`wasm()->counters_`), so a module cannot reach a metric it did not define by guessing
//! small integers. The host's metrics are apart from the modules' ones, and names under
//! [`HOST_PREFIX`] are the host's: a module cannot define (and so record into) the host's
//! failure counters. Each plugin may define [`MAX_METRICS_PER_PLUGIN`] metrics, names of at
//! most [`MAX_NAME`] bytes. Values are atomics: recording takes a shared lock only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_abi(value: u32) -> Option<MetricKind> {
        match value {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

/// Names modules may not define.
pub const HOST_PREFIX: &str = "wasmgate.plugin.";
/// Distinct metrics one plugin may define.
pub const MAX_METRICS_PER_PLUGIN: usize = 1000;
/// Longest metric name, in bytes.
pub const MAX_NAME: usize = 1024;

/// One metric's current state.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue {
    pub name: String,
    pub kind: MetricKind,
    /// Counter total or gauge value (a gauge is signed).
    pub value: i64,
    /// Histogram samples: count and sum.
    pub count: u64,
    pub sum: u64,
}

/// Why a metric operation failed (ABI: NOT_FOUND / BAD_ARGUMENT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricError {
    NotFound,
    BadArgument,
}

#[derive(Debug)]
struct Cell {
    name: String,
    kind: MetricKind,
    value: AtomicI64,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Cell {
    fn add(&self, by: i64) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(by))
            });
    }

    /// Envoy's `incrementMetric`: a counter only goes up (0 is BadArgument too), a gauge either
    /// way, a histogram not at all.
    fn increment(&self, offset: i64) -> Result<(), MetricError> {
        match self.kind {
            MetricKind::Counter if offset <= 0 => Err(MetricError::BadArgument),
            MetricKind::Counter | MetricKind::Gauge => {
                self.add(offset);
                Ok(())
            }
            MetricKind::Histogram => Err(MetricError::BadArgument),
        }
    }

    /// Envoy's `recordMetric`: a counter adds, a gauge takes the value, a histogram samples.
    fn record(&self, value: u64) {
        match self.kind {
            MetricKind::Counter => self.add(i64::try_from(value).unwrap_or(i64::MAX)),
            MetricKind::Gauge => self.value.store(value as i64, Ordering::Relaxed),
            MetricKind::Histogram => {
                self.count.fetch_add(1, Ordering::Relaxed);
                let _ = self
                    .sum
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                        Some(s.saturating_add(value))
                    });
            }
        }
    }

    fn get(&self) -> Result<u64, MetricError> {
        match self.kind {
            MetricKind::Counter | MetricKind::Gauge => {
                Ok(self.value.load(Ordering::Relaxed) as u64)
            }
            MetricKind::Histogram => Err(MetricError::BadArgument),
        }
    }

    fn snapshot(&self) -> MetricValue {
        MetricValue {
            name: self.name.clone(),
            kind: self.kind,
            value: self.value.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// Whose a metric is: the host's or the modules'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Space {
    Host,
    Modules,
}

#[derive(Debug, Default)]
struct Inner {
    by_key: HashMap<(Space, String, MetricKind), usize>,
    cells: Vec<Arc<Cell>>,
    /// Per plugin, the cells it defined: its metric id `n` is the `n`-th (from 1).
    plugins: HashMap<String, Vec<usize>>,
}

impl Inner {
    fn cell(&mut self, space: Space, kind: MetricKind, name: &str) -> usize {
        let key = (space, name.to_owned(), kind);
        if let Some(&index) = self.by_key.get(&key) {
            return index;
        }
        let index = self.cells.len();
        self.cells.push(Arc::new(Cell {
            name: name.to_owned(),
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }));
        self.by_key.insert(key, index);
        index
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: RwLock<Inner>,
}

impl Metrics {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A host metric; the id is for [`Metrics::increment`] and the other host methods.
    pub fn define(&self, kind: MetricKind, name: &str) -> u32 {
        let index = self.write().cell(Space::Host, kind, name);
        index as u32 + 1
    }

    fn host_cell(&self, id: u32) -> Result<Arc<Cell>, MetricError> {
        let index = (id as usize).checked_sub(1).ok_or(MetricError::NotFound)?;
        self.read()
            .cells
            .get(index)
            .cloned()
            .ok_or(MetricError::NotFound)
    }

    pub fn increment(&self, id: u32, offset: i64) -> Result<(), MetricError> {
        self.host_cell(id)?.increment(offset)
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), MetricError> {
        self.host_cell(id)?.record(value);
        Ok(())
    }

    pub fn get(&self, id: u32) -> Result<u64, MetricError> {
        self.host_cell(id)?.get()
    }

    /// `proxy_define_metric` for `plugin`: the plugin's id of the modules' metric `name`.
    /// Defining the same name and kind again gives the same id, as in Envoy.
    pub fn define_for(
        &self,
        plugin: &str,
        kind: MetricKind,
        name: &str,
    ) -> Result<u32, MetricError> {
        if name.is_empty() || name.len() > MAX_NAME || name.starts_with(HOST_PREFIX) {
            return Err(MetricError::BadArgument);
        }
        let mut inner = self.write();
        let known = inner
            .by_key
            .get(&(Space::Modules, name.to_owned(), kind))
            .copied();
        let ids = inner.plugins.get(plugin);
        if let (Some(index), Some(ids)) = (known, ids) {
            if let Some(at) = ids.iter().position(|&i| i == index) {
                return Ok(at as u32 + 1);
            }
        }
        if ids.is_some_and(|ids| ids.len() >= MAX_METRICS_PER_PLUGIN) {
            return Err(MetricError::BadArgument);
        }
        let index = inner.cell(Space::Modules, kind, name);
        let ids = inner.plugins.entry(plugin.to_owned()).or_default();
        ids.push(index);
        Ok(ids.len() as u32)
    }

    fn plugin_cell(&self, plugin: &str, id: u32) -> Result<Arc<Cell>, MetricError> {
        let at = (id as usize).checked_sub(1).ok_or(MetricError::NotFound)?;
        let inner = self.read();
        let index = *inner
            .plugins
            .get(plugin)
            .and_then(|ids| ids.get(at))
            .ok_or(MetricError::NotFound)?;
        inner.cells.get(index).cloned().ok_or(MetricError::NotFound)
    }

    pub fn increment_for(&self, plugin: &str, id: u32, offset: i64) -> Result<(), MetricError> {
        self.plugin_cell(plugin, id)?.increment(offset)
    }

    pub fn record_for(&self, plugin: &str, id: u32, value: u64) -> Result<(), MetricError> {
        self.plugin_cell(plugin, id)?.record(value);
        Ok(())
    }

    pub fn get_for(&self, plugin: &str, id: u32) -> Result<u64, MetricError> {
        self.plugin_cell(plugin, id)?.get()
    }

    /// A metric by name (any kind; the host's first).
    pub fn by_name(&self, name: &str) -> Option<MetricValue> {
        self.read()
            .cells
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.snapshot())
    }

    pub fn snapshot(&self) -> Vec<MetricValue> {
        self.read().cells.iter().map(|m| m.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_metrics_define_increment_record_get() {
        let metrics = Metrics::default();
        let c = metrics.define(MetricKind::Counter, "c");
        assert_eq!(metrics.define(MetricKind::Counter, "c"), c);
        metrics.increment(c, 2).unwrap();
        assert_eq!(metrics.increment(c, -1), Err(MetricError::BadArgument));
        metrics.record(c, 3).unwrap();
        assert_eq!(metrics.get(c), Ok(5));
        let g = metrics.define(MetricKind::Gauge, "g");
        metrics.increment(g, -4).unwrap();
        assert_eq!(metrics.get(g), Ok((-4i64) as u64));
        metrics.record(g, 9).unwrap();
        assert_eq!(metrics.get(g), Ok(9));
        let h = metrics.define(MetricKind::Histogram, "h");
        metrics.record(h, 10).unwrap();
        metrics.record(h, 5).unwrap();
        assert_eq!(metrics.get(h), Err(MetricError::BadArgument));
        let hv = metrics.by_name("h").unwrap();
        assert_eq!((hv.count, hv.sum), (2, 15));
        assert_eq!(metrics.get(999), Err(MetricError::NotFound));
        assert_eq!(metrics.get(0), Err(MetricError::NotFound));
    }

    /// Envoy's `incrementMetric`: `offset > 0` for a counter, anything for a gauge, never
    /// for a histogram.
    #[test]
    fn increments_as_envoy_answers_them() {
        let metrics = Metrics::default();
        let c = metrics.define_for("p", MetricKind::Counter, "c").unwrap();
        let g = metrics.define_for("p", MetricKind::Gauge, "g").unwrap();
        let h = metrics.define_for("p", MetricKind::Histogram, "h").unwrap();
        assert_eq!(
            metrics.increment_for("p", c, 0),
            Err(MetricError::BadArgument)
        );
        assert_eq!(
            metrics.increment_for("p", c, -1),
            Err(MetricError::BadArgument)
        );
        assert_eq!(metrics.increment_for("p", c, 1), Ok(()));
        assert_eq!(metrics.increment_for("p", g, 0), Ok(()));
        assert_eq!(metrics.increment_for("p", g, -3), Ok(()));
        assert_eq!(
            metrics.increment_for("p", h, 1),
            Err(MetricError::BadArgument)
        );
        assert_eq!(metrics.get_for("p", c), Ok(1));
        assert_eq!(metrics.get_for("p", g), Ok(-3i64 as u64));
        assert_eq!(metrics.get_for("p", h), Err(MetricError::BadArgument));
        metrics.record_for("p", c, u64::MAX).unwrap();
        assert_eq!(metrics.get_for("p", c), Ok(i64::MAX as u64), "saturates");
    }

    #[test]
    fn ids_are_the_plugins_own_and_names_are_shared() {
        let metrics = Metrics::default();
        let host = metrics.define(MetricKind::Counter, "wasmgate.plugin.a.failures");
        let a1 = metrics
            .define_for("a", MetricKind::Counter, "a.only")
            .unwrap();
        let a2 = metrics
            .define_for("a", MetricKind::Counter, "shared")
            .unwrap();
        assert_eq!((a1, a2), (1, 2));
        // b's first metric is its id 1, whatever a defined before.
        let b1 = metrics
            .define_for("b", MetricKind::Counter, "shared")
            .unwrap();
        assert_eq!(b1, 1);
        assert_eq!(
            metrics.define_for("b", MetricKind::Counter, "shared"),
            Ok(1)
        );
        // b cannot reach a's metrics (or the host's) by their ids.
        assert_eq!(metrics.increment_for("b", 2, 1), Err(MetricError::NotFound));
        assert_eq!(metrics.increment_for("b", host, 1), Ok(()), "b's own id 1");
        assert_eq!(metrics.increment_for("c", 1, 1), Err(MetricError::NotFound));
        assert_eq!(metrics.get_for("a", 0), Err(MetricError::NotFound));
        // One name, one metric for every plugin, as Envoy's wasmcustom scope.
        metrics.increment_for("a", a2, 2).unwrap();
        assert_eq!(metrics.get_for("b", b1), Ok(3));
        assert_eq!(metrics.get(host), Ok(0));
        // The same name with another kind is another metric.
        let g = metrics
            .define_for("a", MetricKind::Gauge, "shared")
            .unwrap();
        assert_eq!(g, 3);
        assert_eq!(metrics.get_for("a", g), Ok(0));
    }

    #[test]
    fn modules_cannot_define_the_hosts_names() {
        let metrics = Metrics::default();
        let host = metrics.define(MetricKind::Counter, "wasmgate.plugin.a.failures");
        assert_eq!(
            metrics.define_for("a", MetricKind::Counter, "wasmgate.plugin.a.failures"),
            Err(MetricError::BadArgument)
        );
        assert_eq!(
            metrics.define_for("a", MetricKind::Gauge, "wasmgate.plugin.x"),
            Err(MetricError::BadArgument)
        );
        assert_eq!(metrics.get(host), Ok(0));
        assert_eq!(metrics.snapshot().len(), 1);
        // Other wasmgate names are the modules' (the plugins' own metrics use them).
        assert!(metrics
            .define_for(
                "a",
                MetricKind::Counter,
                "wasmgate_rate_limiting_evictions_total"
            )
            .is_ok());
    }

    #[test]
    fn names_and_definitions_are_bounded() {
        let metrics = Metrics::default();
        assert_eq!(
            metrics.define_for("p", MetricKind::Counter, ""),
            Err(MetricError::BadArgument)
        );
        assert!(metrics
            .define_for("p", MetricKind::Counter, &"n".repeat(MAX_NAME))
            .is_ok());
        assert_eq!(
            metrics.define_for("p", MetricKind::Counter, &"n".repeat(MAX_NAME + 1)),
            Err(MetricError::BadArgument)
        );
        for i in 1..MAX_METRICS_PER_PLUGIN {
            assert!(metrics
                .define_for("p", MetricKind::Gauge, &format!("m{i}"))
                .is_ok());
        }
        // At the limit: a new name is refused, a known one still answers its id.
        assert_eq!(
            metrics.define_for("p", MetricKind::Gauge, "one-more"),
            Err(MetricError::BadArgument)
        );
        assert_eq!(metrics.define_for("p", MetricKind::Gauge, "m1"), Ok(2));
        // Another plugin has its own allowance, and can share p's names.
        assert_eq!(metrics.define_for("q", MetricKind::Gauge, "m1"), Ok(1));
        assert_eq!(
            metrics.define_for("q", MetricKind::Gauge, "one-more"),
            Ok(2)
        );
    }
}
