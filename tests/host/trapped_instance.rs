//! The other streams of an instance that trapped: the trap fails its own stream, the
//! instance is replaced, and every other stream that lived in it fails by its plugin's
//! failure policy at its next callback (a 503 when fail-closed, the filter skipped when
//! fail-open), never a silent loss. Streams started after run on the fresh instance.

use host::testing::Harness;
use host::{FailurePolicy, HttpFilter, PluginConfig, StreamData};

/// Traps in its request headers callback when the headers end the stream; passes otherwise.
const TRAP_ON_EOS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (local.get 2) (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

fn status(stream: &StreamData) -> Option<u16> {
    stream.local_response.as_ref().map(|r| r.status)
}

#[test]
fn the_other_streams_of_a_trapped_instance_fail_by_the_policy_at_their_next_callback() {
    let wasm = wat::parse_str(TRAP_ON_EOS).expect("WAT");
    for (policy, answer) in [
        (FailurePolicy::FailClosed, Some(503)),
        (FailurePolicy::FailOpen, None),
    ] {
        let mut h = Harness::new().expect("harness");
        let worker = h
            .load_bytes(&wasm, PluginConfig::new("trap", "").failure_policy(policy))
            .expect("loads");
        // Two streams in one instance: `bystander` is past its request headers when
        // `trapping` traps.
        let (mut bystander, mut trapping) = (worker.filter(), worker.filter());
        let (mut b, mut t) = (StreamData::default(), StreamData::default());
        bystander.request_headers(&mut b, false);
        assert_eq!(status(&b), None, "{policy:?}");
        trapping.request_headers(&mut t, true);
        assert_eq!(status(&t), answer, "{policy:?}: the stream that trapped");
        assert_eq!(worker.plugin().failures(), 1);
        // The bystander's context died with the instance: its next callback fails it by
        // the policy, without counting as a second failure of the module.
        bystander.response_headers(&mut b, false);
        assert_eq!(status(&b), answer, "{policy:?}: the bystander");
        if let Some(response) = &b.local_response {
            assert_eq!(response.details, "wasm_fail_stream");
        }
        assert_eq!(worker.plugin().failures(), 1, "{policy:?}");
        bystander.stream_done(&mut b);
        trapping.stream_done(&mut t);
        // A stream started now runs in the fresh instance.
        let (mut next, mut n) = (worker.filter(), StreamData::default());
        next.request_headers(&mut n, false);
        next.response_headers(&mut n, false);
        assert_eq!(status(&n), None, "{policy:?}: the next stream");
        next.stream_done(&mut n);
        assert_eq!(worker.plugin().failures(), 1, "{policy:?}");
    }
}
