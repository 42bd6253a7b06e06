//! A new configuration's plugin instances start on every worker before it serves, as Envoy
//! warms a new configuration's workers before the swap: the applying thread hands the
//! snapshot to the workers here, wakes them and waits (bounded) until each has started its
//! instances; their first requests on it pay for no start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::snapshot::Snapshot;

/// How long an apply waits for the workers. A worker that has not started its instances by
/// then starts them on its next poll or request, as before the swap.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Warming {
    state: Mutex<State>,
    ready_changed: Condvar,
    /// Wakes the workers' pollers for a snapshot to warm.
    pub wake: Notify,
    workers: AtomicUsize,
}

#[derive(Default)]
struct State {
    snapshot: Option<Arc<Snapshot>>,
    ready: usize,
}

impl Warming {
    /// A worker runs its poller: applies wait for it.
    pub fn worker_started(&self) {
        self.workers.fetch_add(1, Ordering::SeqCst);
    }

    pub fn worker_stopped(&self) {
        self.workers.fetch_sub(1, Ordering::SeqCst);
        self.ready_changed.notify_all();
    }

    /// Has every running worker start the instances of `snapshot` (see [`Warming::pending`]
    /// and [`Warming::ready`]); returns when they have, or after [`WAIT`].
    pub fn warm(&self, snapshot: &Arc<Snapshot>) {
        if self.workers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = State {
            snapshot: Some(Arc::clone(snapshot)),
            ready: 0,
        };
        self.wake.notify_waiters();
        let deadline = Instant::now() + WAIT;
        while state.ready < self.workers.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "{} of {} workers started the new configuration's instances within {WAIT:?}; \
                     the others start them on their next poll or request",
                    state.ready,
                    self.workers.load(Ordering::SeqCst)
                );
                break;
            }
            state = (self.ready_changed.wait_timeout(state, left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.snapshot = None;
    }

    /// The snapshot the workers are asked to warm, if any.
    pub fn pending(&self) -> Option<Arc<Snapshot>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.snapshot.clone()
    }

    /// A worker started the instances of snapshot `generation`.
    pub fn ready(&self, generation: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .snapshot
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            state.ready += 1;
            self.ready_changed.notify_all();
        }
    }
}
