//! Clients that lie, against the plugins' adapters in the host, where the body reaches the
//! module exactly as the test delivers it (in Envoy and `gateway` a codec checks framing
//! first, so a lie never gets this far there).

use host::testing::{Harness, TestBody, TestRequest};
use host::PluginConfig;

/// A Content-Length of 100 and 5,000 bytes of body: request-size-limiting counts what comes,
/// not what was declared, and refuses once the count passes its 1 KiB limit.
#[test]
fn a_content_length_that_lies_cannot_carry_bytes_past_the_limit() {
    let mut h = Harness::new().expect("harness");
    h.load_file(
        &wasmgate_tests::paths::plugin_module("request-size-limiting"),
        PluginConfig::new(
            "request-size-limiting",
            r#"{"allowed_payload_size": 1, "size_unit": "kilobytes"}"#,
        ),
    )
    .expect("request-size-limiting loads");
    let pieces = vec![vec![b'A'; 100]; 50];
    let out = h.send(
        TestRequest::new("POST", "/lie")
            .header("content-length", "100")
            .body(TestBody::Pieces(pieces)),
    );
    assert_eq!(out.response.status, 413, "{}", out.response.text());
    assert!(!out.forwarded_whole, "the whole lie reached the upstream");
    assert!(out.upstream.is_none());

    // The honest request of the same declared length passes.
    let out = h.send(
        TestRequest::new("POST", "/honest")
            .header("content-length", "100")
            .body(TestBody::Pieces(vec![vec![b'A'; 100]])),
    );
    assert_eq!(out.response.status, 200, "{}", out.response.text());
}
