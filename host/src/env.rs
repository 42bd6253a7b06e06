//! What every plugin of one process shares: shared data, shared queues, metrics, the clock
//! and foreign functions. The gateway makes one; each test harness makes its own.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::queues::SharedQueues;
use crate::shared_data::SharedData;

/// A host function a module can call with `proxy_call_foreign_function`.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, u32> + Send + Sync>;

pub struct HostEnv {
    pub shared_data: SharedData,
    pub queues: SharedQueues,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub foreign: HashMap<String, ForeignFunction>,
}

impl HostEnv {
    pub fn new(clock: Arc<dyn Clock>) -> HostEnv {
        HostEnv {
            shared_data: SharedData::default(),
            queues: SharedQueues::default(),
            metrics: Metrics::default(),
            clock,
            foreign: HashMap::new(),
        }
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
