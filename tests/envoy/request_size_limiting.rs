//! request-size-limiting in a real Envoy, beyond the case file: gigabyte streams with flat
//! memory, and Content-Length headers that lie.

use serde_json::json;
use wasmgate_tests::client::{raw_exchange, send, Connection};
use wasmgate_tests::{
    EchoUpstream, Envoy, EnvoyConfig, Protocol, Request, RequestBody, WasmFilter,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn size_limit(config: serde_json::Value) -> Vec<WasmFilter> {
    vec![WasmFilter::plugin("request-size-limiting", config)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_under_the_limit_streams_through_with_flat_memory() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("big", size_limit(json!({"allowed_payload_size": 2048})));
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("big");
    // Warm up so the baseline includes the VMs and connection buffers.
    send(
        addr,
        Protocol::Http1,
        &Request::post("/", RequestBody::Bytes(vec![b'x'; 1024])),
    )
    .await
    .unwrap();
    let baseline = wasmgate_tests::process::peak_rss(envoy.pid()).expect("Envoy RSS");

    let upload = Request::post(
        "/upload",
        RequestBody::Filler {
            len: GIB,
            with_length: false,
        },
    );
    let response = send(addr, Protocol::Http1, &upload).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let report: wasmgate_tests::EchoReport = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(report.body_len, GIB);
    assert_eq!(report.body_sha256, wasmgate_tests::echo::filler_sha256(GIB));

    let grown = wasmgate_tests::process::peak_rss(envoy.pid())
        .unwrap()
        .saturating_sub(baseline);
    assert!(
        grown < 64 * MIB,
        "Envoy's peak RSS grew by {} MiB for a 1 GiB stream",
        grown / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_over_the_limit_is_cut_off_early_on_both_protocols() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("limited", size_limit(json!({"allowed_payload_size": 10})));
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("limited");
    for protocol in Protocol::ALL {
        let upload = Request::post(
            "/upload",
            RequestBody::Filler {
                len: GIB,
                with_length: false,
            },
        );
        let mut connection = Connection::open(addr, protocol).await.unwrap();
        let response = connection.send(&upload).await.unwrap();
        assert_eq!(response.status, 413, "{protocol:?}: {}", response.text());
        assert_eq!(
            response.json().unwrap(),
            response.kong_error_json("Request size limit exceeded")
        );
        // Answered after ~10 MB, not after a gigabyte: at most the limit and the buffers on
        // the way (Envoy's, the sockets') had left the client.
        assert!(
            response.body_sent < 64 * MIB,
            "{protocol:?}: {} MiB sent before the answer",
            response.body_sent / MIB
        );
    }
    for arrival in echo.arrivals() {
        assert!(
            !arrival.complete && arrival.body_bytes <= 10 * MIB,
            "the upstream got {} bytes of a refused upload",
            arrival.body_bytes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_lies_cannot_carry_bytes_past_the_limit() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr()).listener(
        "lies",
        size_limit(json!({"allowed_payload_size": 1, "size_unit": "kilobytes"})),
    );
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("lies");

    // HTTP/1.1: Content-Length says 100, 5000 bytes follow. The bytes past the declared length
    // are not body: Envoy parses them as the next request, and refuses that garbage.
    let mut request = b"POST /lie HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'A', 5000));
    request.extend(b"\r\n\r\n");
    let answer = raw_exchange(addr, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "first answer: {answer}");
    assert!(
        answer.contains("HTTP/1.1 400"),
        "the trailing bytes must be refused: {answer}"
    );

    // HTTP/2: content-length 100, 5000 bytes of DATA. Envoy resets the stream; whatever it
    // does, no body over the limit may reach the upstream.
    let lie = Request::post("/lie2", RequestBody::Chunks(vec![vec![b'B'; 5000]]))
        .header("content-length", "100");
    let result = send(addr, Protocol::Http2, &lie).await;
    if let Ok(response) = &result {
        assert_ne!(
            response.status,
            200,
            "a lying HTTP/2 request must not succeed: {}",
            response.text()
        );
    }

    // The upstream's own record: every request head it got, with the body bytes that came.
    let arrivals = echo.arrivals();
    for arrival in &arrivals {
        assert!(
            arrival.body_bytes <= 1024,
            "{} reached the upstream with {} body bytes",
            arrival.path,
            arrival.body_bytes
        );
    }
    assert_eq!(
        arrivals.iter().filter(|a| a.complete).count(),
        1,
        "only the honest first 100 bytes may arrive whole: {arrivals:?}"
    );
}
