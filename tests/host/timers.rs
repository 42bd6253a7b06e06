//! A module's timer as Envoy runs it (review finding 31), on the host's manual clock: a tick
//! is due one period after the previous one ran, so a worker that was busy for many periods
//! runs one tick when it is free, not one per period it missed.

use std::time::Duration;

use host::testing::Harness;
use host::PluginConfig;

/// tests/wat/ticker.wat: ticks every 10 ms, counting its ticks in the counter `ticks`.
fn ticker() -> Vec<u8> {
    let path = wasmgate_tests::paths::workspace_root().join("tests/wat/ticker.wat");
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ticks(h: &Harness) -> i64 {
    (h.env().metrics.snapshot().into_iter())
        .find(|m| m.name == "ticks")
        .map_or(0, |m| m.value)
}

/// Before, the host fired every missed period back to back (up to 1000 per poll): a
/// second's stall of this 10 ms ticker made 100 ticks in a row.
#[test]
fn a_stalled_worker_runs_one_tick_not_one_per_missed_period() {
    let mut h = Harness::new().expect("harness");
    h.load_bytes(&ticker(), PluginConfig::new("ticker", ""))
        .expect("module loads");
    h.advance(Duration::from_millis(9));
    assert_eq!(ticks(&h), 0, "not yet due");
    h.advance(Duration::from_millis(1));
    assert_eq!(ticks(&h), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(ticks(&h), 2, "one tick after a second's stall");
    // The next is due a period after that one ran.
    h.advance(Duration::from_millis(9));
    assert_eq!(ticks(&h), 2);
    h.advance(Duration::from_millis(1));
    assert_eq!(ticks(&h), 3);
}
