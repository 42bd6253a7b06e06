//! Metrics modules define with `proxy_define_metric`: counters, gauges and histograms in one
//! process-wide registry (a Prometheus export reads [`Metrics::snapshot`] later). Defining the
//! same name and kind twice returns the same id, as in Envoy.

use std::collections::HashMap;
use std::sync::Mutex;

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

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<(String, MetricKind), u32>,
    metrics: Vec<MetricValue>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn define(&self, kind: MetricKind, name: &str) -> u32 {
        let mut inner = self.lock();
        if let Some(&id) = inner.by_name.get(&(name.to_owned(), kind)) {
            return id;
        }
        // Ids start at 1 so that 0 is never a valid metric.
        let id = inner.metrics.len() as u32 + 1;
        inner.metrics.push(MetricValue {
            name: name.to_owned(),
            kind,
            value: 0,
            count: 0,
            sum: 0,
        });
        inner.by_name.insert((name.to_owned(), kind), id);
        id
    }

    fn with<R>(
        &self,
        id: u32,
        f: impl FnOnce(&mut MetricValue) -> Result<R, MetricError>,
    ) -> Result<R, MetricError> {
        let mut inner = self.lock();
        let index = (id as usize).checked_sub(1).ok_or(MetricError::NotFound)?;
        let metric = inner.metrics.get_mut(index).ok_or(MetricError::NotFound)?;
        f(metric)
    }

    pub fn increment(&self, id: u32, offset: i64) -> Result<(), MetricError> {
        self.with(id, |m| match m.kind {
            MetricKind::Counter if offset < 0 => Err(MetricError::BadArgument),
            MetricKind::Counter | MetricKind::Gauge => {
                m.value = m.value.saturating_add(offset);
                Ok(())
            }
            MetricKind::Histogram => Err(MetricError::BadArgument),
        })
    }

    pub fn record(&self, id: u32, value: u64) -> Result<(), MetricError> {
        self.with(id, |m| {
            match m.kind {
                MetricKind::Counter => m.value = m.value.saturating_add(value as i64),
                MetricKind::Gauge => m.value = value as i64,
                MetricKind::Histogram => {
                    m.count += 1;
                    m.sum = m.sum.saturating_add(value);
                }
            }
            Ok(())
        })
    }

    pub fn get(&self, id: u32) -> Result<u64, MetricError> {
        self.with(id, |m| match m.kind {
            MetricKind::Counter | MetricKind::Gauge => Ok(m.value as u64),
            MetricKind::Histogram => Err(MetricError::BadArgument),
        })
    }

    /// A metric by name (any kind).
    pub fn by_name(&self, name: &str) -> Option<MetricValue> {
        self.lock().metrics.iter().find(|m| m.name == name).cloned()
    }

    pub fn snapshot(&self) -> Vec<MetricValue> {
        self.lock().metrics.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn define_increment_record_get() {
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
        assert_eq!(metrics.get(h), Err(MetricError::BadArgument));
        assert_eq!(metrics.get(999), Err(MetricError::NotFound));
        assert_eq!(metrics.get(0), Err(MetricError::NotFound));
    }
}
