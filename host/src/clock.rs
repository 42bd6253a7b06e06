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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14T22:13:20.123456789Z.
    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
    }

    #[test]
    fn unix_nanos_counts_from_the_epoch_and_is_zero_before_it() {
        assert_eq!(unix_nanos(UNIX_EPOCH), 0);
        assert_eq!(unix_nanos(UNIX_EPOCH + Duration::from_nanos(1)), 1);
        assert_eq!(unix_nanos(start()), 1_700_000_000_123_456_789);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_manual_clock_stands_still_until_advanced() {
        let clock = ManualClock::new(start());
        assert_eq!(clock.now(), start());
        assert_eq!(clock.monotonic(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), start());
        assert_eq!(clock.monotonic(), Duration::ZERO);

        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), start() + Duration::from_millis(1500));
        assert_eq!(clock.monotonic(), Duration::from_millis(1500));
        // Nanosecond steps add up, on both clocks.
        clock.advance(Duration::from_nanos(1));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(
            clock.now(),
            start() + Duration::from_secs(3600) + Duration::new(1, 500_000_001)
        );
        assert_eq!(
            clock.monotonic(),
            Duration::from_secs(3601) + Duration::from_nanos(500_000_001)
        );
    }

    #[test]
    fn setting_a_manual_clock_moves_monotonic_time_only_forward() {
        let clock = ManualClock::new(start());
        clock.set(start() + Duration::from_secs(60));
        assert_eq!(clock.now(), start() + Duration::from_secs(60));
        assert_eq!(clock.monotonic(), Duration::from_secs(60));
        // Back in time: the wall clock follows, monotonic time stays.
        clock.set(start() - Duration::from_secs(3600));
        assert_eq!(clock.now(), start() - Duration::from_secs(3600));
        assert_eq!(clock.monotonic(), Duration::from_secs(60));
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), start() - Duration::from_secs(3599));
        assert_eq!(clock.monotonic(), Duration::from_secs(61));
        // Moving back past the set point counts only what lies beyond where it was.
        clock.set(start() - Duration::from_secs(3589));
        assert_eq!(clock.monotonic(), Duration::from_secs(71));
        // Before the epoch there is only the epoch.
        clock.set(UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(clock.now(), UNIX_EPOCH);
        assert_eq!(clock.monotonic(), Duration::from_secs(71));
        assert_eq!(
            ManualClock::new(UNIX_EPOCH - Duration::from_secs(5)).now(),
            UNIX_EPOCH
        );
    }

    #[test]
    fn a_manual_clock_starting_now_starts_at_the_wall_clock() {
        let before = SystemTime::now();
        let clock = ManualClock::starting_now();
        let after = SystemTime::now();
        assert!(before <= clock.now() && clock.now() <= after);
        assert_eq!(clock.monotonic(), Duration::ZERO);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock_and_counts_from_its_creation() {
        for clock in [SystemClock::new(), SystemClock::default()] {
            let first = clock.monotonic();
            assert!(first < Duration::from_secs(1), "{first:?}");
            let before = SystemTime::now();
            let now = clock.now();
            let after = SystemTime::now();
            assert!(before <= now && now <= after);
            std::thread::sleep(Duration::from_millis(20));
            let second = clock.monotonic();
            assert!(
                second >= first + Duration::from_millis(20),
                "{first:?} {second:?}"
            );
        }
        let shared = SystemClock::shared();
        let a = shared.monotonic();
        let b = shared.monotonic();
        assert!(b >= a);
        assert!(a < Duration::from_secs(1), "{a:?}");
    }
}
