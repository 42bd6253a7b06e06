//! Each bound the host puts on what a module makes it hold (review 29, 30; #13 item 7),
//! reached through the ABI by tests/wat/limits.wat: at the bound a call still succeeds, one
//! past it is refused with the status the tests name and a log line saying which bound, or,
//! for a full queue, succeeds by dropping the oldest item.

use std::time::Duration;

use host::testing::{Harness, TestRequest};
use host::{HttpCallResult, Limits, PluginConfig};

const OK: u32 = 0;
const BAD_ARGUMENT: u32 = 2;
const INTERNAL_FAILURE: u32 = 10;

/// The module's memory cap, which is also what the host holds on its behalf.
const MEMORY: usize = 4 << 20;

fn harness() -> Harness {
    let wasm =
        wat::parse_file(wasmgate_tests::paths::workspace_root().join("tests/wat/limits.wat"))
            .expect("limits.wat compiles");
    let mut h = Harness::new().unwrap();
    let limits = Limits {
        memory_bytes: MEMORY,
        // Thousands of host calls in one callback: a bound against a hang only.
        callback_deadline: Duration::from_secs(5),
        ..Limits::default()
    };
    h.load_bytes(&wasm, PluginConfig::new("limits", "").limits(limits))
        .unwrap();
    h.on_http_call(|_| HttpCallResult::Failed);
    h
}

/// (successes, status of the refused call, extra) for loop `op`.
fn run(h: &mut Harness, op: &str) -> (u32, u32, u32) {
    let req = if op == "b" {
        TestRequest::post("/", b"x".to_vec())
    } else {
        TestRequest::get("/")
    };
    let out = h.send(req.header("x-op", op));
    assert_eq!(out.response.status, 200, "{op}: {}", h.log_text());
    let b = &out.response.body;
    assert_eq!(b.len(), 12, "{op}: {b:?}");
    let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    (word(0), word(4), word(8))
}

#[test]
fn a_body_grows_up_to_the_memory_cap_and_not_a_byte_past_it() {
    let mut h = harness();
    // 64 appends of 64 KiB make exactly 4 MiB; the 65th, or one byte more, is refused.
    assert_eq!(
        run(&mut h, "b"),
        ((MEMORY / 65536) as u32, BAD_ARGUMENT, BAD_ARGUMENT)
    );
    assert!(
        h.log_text()
            .contains("a body of 4194305 bytes is past the 4194304-byte limit"),
        "{}",
        h.log_text()
    );
}

#[test]
fn a_header_map_grows_to_1024_entries_and_1_mib_and_no_further() {
    let mut h = harness();
    assert_eq!(run(&mut h, "h"), (1024, BAD_ARGUMENT, 0));
    assert!(
        h.log_text().contains("past 1024 entries or 1 MiB"),
        "{}",
        h.log_text()
    );
    // A value that makes the map exactly 1 MiB: fine, and replacing it with as much again;
    // any addition: refused.
    assert_eq!(run(&mut h, "H"), (OK, BAD_ARGUMENT, OK));
}

#[test]
fn a_callback_makes_at_most_128_calls_and_its_memory_cap_in_bytes() {
    let mut h = harness();
    assert_eq!(run(&mut h, "c"), (128, INTERNAL_FAILURE, 0));
    assert!(h.log_text().contains("past 128 calls"), "{}", h.log_text());
    // 64 KiB bodies and 27 bytes of headers: 63 fit in 4 MiB, a 64th does not.
    let one = 65536 + 27;
    assert!(63 * one <= MEMORY && 64 * one > MEMORY);
    assert_eq!(run(&mut h, "C"), (63, INTERNAL_FAILURE, 0));
}

#[test]
fn a_stream_keeps_at_most_1024_set_properties() {
    let mut h = harness();
    assert_eq!(run(&mut h, "p"), (1024, BAD_ARGUMENT, 0));
    assert!(
        h.log_text().contains("past 1024 values"),
        "{}",
        h.log_text()
    );
}

#[test]
fn a_full_queue_drops_its_oldest_item_and_the_enqueue_succeeds() {
    let mut h = harness();
    // 10,001 enqueues on a queue of 10,000: all OK; item 0 was dropped for item 10,000.
    assert_eq!(run(&mut h, "q"), (10_001, OK, 1));
    assert!(
        h.log_text().contains("full: dropped 1 oldest item(s)"),
        "{}",
        h.log_text()
    );
}

#[test]
fn a_vm_id_registers_at_most_1024_queues_with_names_of_1_kib() {
    let mut h = harness();
    assert_eq!(run(&mut h, "r"), (1024, INTERNAL_FAILURE, 0));
    assert!(h.log_text().contains("queues already"), "{}", h.log_text());
    assert_eq!(run(&mut h, "R"), (0, BAD_ARGUMENT, 0));
}

#[test]
fn a_plugin_defines_at_most_1000_metrics_with_names_of_1_kib() {
    let mut h = harness();
    assert_eq!(run(&mut h, "m"), (1000, BAD_ARGUMENT, 0));
    assert_eq!(run(&mut h, "M"), (0, BAD_ARGUMENT, 0));
}
