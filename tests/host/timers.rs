//! A module's timer as Envoy runs it (review finding 31), on the host's manual clock: a tick
//! is due one period after the previous one ran, so a worker that was busy for many periods
//! runs one tick when it is free, not one per period it missed.

use std::time::Duration;

use host::testing::Harness;
use host::PluginConfig;

/// Ticks every 10 ms and counts its ticks in the counter `ticks`.
const TICKER: &str = r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "ticks")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 200)))
    (drop (call $period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $increment (i32.load (i32.const 200)) (i64.const 1)))))"#;

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
    h.load_bytes(
        &wat::parse_str(TICKER).unwrap(),
        PluginConfig::new("ticker", ""),
    )
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
