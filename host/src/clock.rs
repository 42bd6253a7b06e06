//! Time as the host gives it to modules: `proxy_get_current_time_nanoseconds`, WASI
//! `clock_time_get` and tick scheduling all read one [`Clock`], so a test can move time
//! forward by minutes without waiting ([`ManualClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Wall-clock time (what `SystemTime::now()` in a module returns).
    fn now(&self) -> SystemTime;
    /// Monotonic time since an arbitrary origin.
    fn monotonic(&self) -> Duration;
}

/// The real clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }

    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to. Wall and monotonic time advance together.
#[derive(Debug)]
pub struct ManualClock {
    /// Nanoseconds since the Unix epoch.
    wall_ns: AtomicU64,
    mono_ns: AtomicU64,
}

impl ManualClock {
    /// Starts at `start` (wall clock) and monotonic zero.
    pub fn new(start: SystemTime) -> ManualClock {
        let wall = start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        ManualClock {
            wall_ns: AtomicU64::new(wall),
            mono_ns: AtomicU64::new(0),
        }
    }

    /// Starts at the current wall-clock time.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(SystemTime::now())
    }

    pub fn advance(&self, by: Duration) {
        let ns = by.as_nanos() as u64;
        self.wall_ns.fetch_add(ns, Ordering::SeqCst);
        self.mono_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// Sets the wall-clock time (monotonic time moves forward by the same amount, or stays).
    pub fn set(&self, to: SystemTime) {
        let new = to
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let old = self.wall_ns.swap(new, Ordering::SeqCst);
        if new > old {
            self.mono_ns.fetch_add(new - old, Ordering::SeqCst);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.wall_ns.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst))
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
