//! What every plugin of one process shares: shared data, shared queues, metrics, the clock
//! and foreign functions. The gateway makes one; each test harness makes its own.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::queues::SharedQueues;
use crate::shared_data::SharedData;

/// A host function a module can call with `proxy_call_foreign_function`.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, u32> + Send + Sync>;

/// Whether an upstream (cluster) name exists now.
pub type UpstreamCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct HostEnv {
    pub shared_data: SharedData,
    pub queues: SharedQueues,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub foreign: HashMap<String, ForeignFunction>,
    /// Set by whoever performs calls: `proxy_http_call` to a name it says does not exist is
    /// BAD_ARGUMENT at once, as Envoy answers for an unknown cluster. Unset, every non-empty
    /// name is accepted and an unknown one fails later, as a failed call.
    upstreams: RwLock<Option<UpstreamCheck>>,
}

impl HostEnv {
    pub fn new(clock: Arc<dyn Clock>) -> HostEnv {
        HostEnv {
            shared_data: SharedData::default(),
            queues: SharedQueues::default(),
            metrics: Metrics::default(),
            clock,
            foreign: HashMap::new(),
            upstreams: RwLock::new(None),
        }
    }

    /// Installs (or replaces) the check of upstream names; a data plane whose upstreams
    /// change with its configuration reads its current one in `check`.
    pub fn set_upstream_check(&self, check: UpstreamCheck) {
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = Some(check);
    }

    /// Whether `name` may be called: unknown only when a check is installed and says so.
    pub fn upstream_known(&self, name: &str) -> bool {
        let check = self
            .upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        check.is_none_or(|known| known(name))
    }

    /// With the real clock.
    pub fn shared() -> Arc<HostEnv> {
        Arc::new(HostEnv::new(SystemClock::shared()))
    }

    /// Caps the bytes (keys and values) each vm_id may keep in shared data; a `set` past
    /// it fails, and the module sees that as a failing store.
    pub fn with_shared_data_limit(mut self, max_bytes_per_vm: usize) -> HostEnv {
        self.shared_data = SharedData::new(max_bytes_per_vm);
        self
    }
}

impl std::fmt::Debug for HostEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEnv")
            .field("foreign", &self.foreign.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
