//! rate-limiting's counter store end to end, in the real host: `max_identifiers` (the fixed
//! table of buckets, eviction of the least recently counted identifier) and `fault_tolerant`
//! (a store that refuses a write: here, shared data at its byte cap).

use host::testing::{Harness, TestRequest};
use host::PluginConfig;

const VM_ID: &str = "rate-limiting";

fn harness(config: &str, shared_data_limit: Option<usize>) -> Harness {
    let mut h = Harness::new().expect("harness");
    if let Some(bytes) = shared_data_limit {
        h.set_shared_data_limit(bytes);
    }
    h.load_file(
        &wasmgate_tests::paths::plugin_module("rate-limiting"),
        PluginConfig::new("rate-limiting", config.to_owned()).vm_id(VM_ID),
    )
    .expect("rate-limiting loads");
    h
}

fn from(id: &str) -> TestRequest {
    TestRequest::get("/").header("x-id", id)
}

fn evictions(h: &Harness) -> i64 {
    h.metric("wasmgate_rate_limiting_evictions_total")
        .map_or(0, |m| m.value)
}

/// The bytes (keys and values) the vm_id keeps in shared data.
fn stored_bytes(h: &Harness) -> usize {
    h.env()
        .shared_data
        .snapshot(VM_ID)
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// Eight identifiers make one bucket. A ninth evicts the least recently counted one, whose
/// count is lost; the others keep theirs, and nobody's first request is refused.
#[test]
fn max_identifiers_evicts_the_least_recently_counted_identifier() {
    let mut h = harness(
        r#"{"minute": 1, "limit_by": "header", "header_name": "x-id", "max_identifiers": 8}"#,
        None,
    );
    let ids: Vec<String> = (0..9).map(|i| format!("client-{i}")).collect();
    for id in &ids[..8] {
        assert_eq!(
            h.send(from(id)).response.status,
            200,
            "{id}'s first request"
        );
    }
    for id in &ids[..8] {
        assert_eq!(h.send(from(id)).response.status, 429, "{id} is counted");
    }
    assert_eq!(evictions(&h), 0);

    // The table is full of live identifiers: the ninth takes client-0's place.
    assert_eq!(h.send(from(&ids[8])).response.status, 200);
    assert_eq!(evictions(&h), 1);
    assert!(h.log_text().contains("evict"), "{}", h.log_text());
    // client-0 starts over (and evicts client-1, now the least recently counted).
    assert_eq!(h.send(from(&ids[0])).response.status, 200);
    assert_eq!(evictions(&h), 2);
    for id in &ids[2..] {
        assert_eq!(h.send(from(id)).response.status, 429, "{id} kept its count");
    }
    assert_eq!(evictions(&h), 2);
}

/// `max_identifiers` sizes the table: `ceil(max_identifiers / 8)` keys, each holding an even
/// share, so the table holds `max_identifiers` rounded up by less than one per key (17: three
/// keys of six identifiers).
#[test]
fn the_table_holds_max_identifiers_live_identifiers_in_ceil_max_over_8_keys() {
    let mut h = harness(
        r#"{"minute": 1000, "limit_by": "header", "header_name": "x-id", "max_identifiers": 17}"#,
        None,
    );
    for i in 0..200 {
        assert_eq!(h.send(from(&format!("c{i}"))).response.status, 200);
    }
    let buckets: Vec<String> = h
        .env()
        .shared_data
        .snapshot(VM_ID)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("rate-limiting|rate-limiting|"))
        .collect();
    assert_eq!(
        buckets,
        [
            "rate-limiting|rate-limiting|0",
            "rate-limiting|rate-limiting|1",
            "rate-limiting|rate-limiting|2"
        ],
        "{buckets:?}"
    );
    // 200 identifiers in 18 places: the rest were evicted.
    assert_eq!(evictions(&h), 200 - 18);
}

/// What one counted identifier takes in shared data: the process's hash key and one bucket
/// holding one identifier.
fn one_identifier_bytes(config: &str) -> usize {
    let mut h = harness(config, None);
    assert_eq!(h.send(from("first")).response.status, 200);
    stored_bytes(&h)
}

/// Shared data capped at exactly one identifier's bytes: a write that would grow the store
/// fails, and the request follows `fault_tolerant`, as in Kong when the store is unreachable.
#[test]
fn a_store_that_refuses_writes_follows_fault_tolerant() {
    const LIMITS: &str =
        r#""second": 100, "limit_by": "header", "header_name": "x-id", "max_identifiers": 16"#;
    for fault_tolerant in [true, false] {
        let config = format!(r#"{{{LIMITS}, "fault_tolerant": {fault_tolerant}}}"#);
        let cap = one_identifier_bytes(&config);
        let mut h = harness(&config, Some(cap));

        let first = h.send(from("first"));
        assert_eq!(first.response.status, 200);
        assert_eq!(
            first.response.header("x-ratelimit-remaining-second"),
            Some("99")
        );
        assert_eq!(stored_bytes(&h), cap);

        // Any other identifier needs more room: in "first"'s bucket or in a new key.
        let second = h.send(from("second"));
        if fault_tolerant {
            assert_eq!(second.response.status, 200, "{}", second.response.text());
            assert!(second.upstream.is_some());
            assert_eq!(second.response.header("x-ratelimit-limit-second"), None);
        } else {
            assert_eq!(second.response.status, 500);
            assert!(second.upstream.is_none());
            let body: serde_json::Value = serde_json::from_slice(&second.response.body).unwrap();
            assert_eq!(body["message"], "An unexpected error occurred", "{body}");
        }
        assert!(
            h.log_text().contains("failed to get usage"),
            "fault_tolerant {fault_tolerant}: {}",
            h.log_text()
        );
        assert_eq!(stored_bytes(&h), cap);

        // A write that keeps the size still works: "first" goes on being counted.
        let again = h.send(from("first"));
        assert_eq!(again.response.status, 200);
        assert_eq!(
            again.response.header("x-ratelimit-remaining-second"),
            Some("98")
        );
    }
}

/// No room at all, not even for the process's hash key: every request follows
/// `fault_tolerant`.
#[test]
fn a_store_with_no_room_refuses_every_request_unless_fault_tolerant() {
    let mut tolerant = harness(r#"{"second": 1, "fault_tolerant": true}"#, Some(0));
    let mut strict = harness(r#"{"second": 1, "fault_tolerant": false}"#, Some(0));
    for _ in 0..3 {
        assert_eq!(tolerant.send(TestRequest::get("/")).response.status, 200);
        assert_eq!(strict.send(TestRequest::get("/")).response.status, 500);
    }
}
