//! Gigabyte streams through `gateway`, in a test binary of their own: they measure the peak
//! memory of this whole process, so no other test may run beside them, and they are heavy on
//! the CPU, so they stay away from the tests that count requests per second.

use wasmgate_tests::client::send;
use wasmgate_tests::gateway::{start, ProxyPath};
use wasmgate_tests::{EchoReport, EchoUpstream, Protocol, Request, RequestBody};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Peak resident memory of this test process (gateway, client and echo all live in it).
fn peak_rss() -> u64 {
    wasmgate_tests::process::peak_rss(std::process::id()).expect("VmHWM of this process")
}

fn echo_route(echo: &EchoUpstream) -> String {
    format!(
        "_format_version: \"3.0\"\nservices: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n",
        echo.addr()
    )
}

/// One test, so that the two paths run one after the other, each measured from its own peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_streams_through_with_flat_memory() {
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let gateway = start(&path.config(&echo_route(&echo)));
        let warm = Request::post(
            "/warm",
            RequestBody::Filler {
                len: MIB,
                with_length: false,
            },
        );
        send(gateway.addr(), Protocol::Http1, &warm).await.unwrap();
        let before = peak_rss();
        let upload = Request::post(
            "/big",
            RequestBody::Filler {
                len: GIB,
                with_length: false,
            },
        );
        let response = send(gateway.addr(), Protocol::Http1, &upload)
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{path:?}: {}", response.text());
        let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
        path.assert_taken(&seen);
        assert_eq!(seen.body_len, GIB);
        assert_eq!(seen.body_sha256, wasmgate_tests::echo::filler_sha256(GIB));
        let grown = peak_rss().saturating_sub(before);
        assert!(
            grown < 64 * MIB,
            "{path:?}: peak RSS grew by {} MiB for a 1 GiB stream",
            grown / MIB
        );
    }
}
