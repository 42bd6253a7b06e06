//! Findings of the randomised module driver (`tests/host/fuzz_modules.rs`,
//! docs/FUZZING.md), each as the smallest stream that shows it. They fail until the host is
//! fixed.

use std::cell::Cell;
use std::rc::Rc;

use host::{FilterStatus, Headers, HttpFilter, HttpStream, Output, StreamData, StreamInfo};

/// Buffers the request body until the end of the stream, as a proxy-wasm filter that edits
/// bodies does (StopIterationAndBuffer, a module's body pause); a request that ends with
/// trailers ends in its trailers callback.
struct Buffering {
    trailers: Rc<Cell<bool>>,
}

impl HttpFilter for Buffering {
    fn name(&self) -> &str {
        "buffering"
    }
    fn request_headers(&mut self, _: &mut StreamData, _: bool) -> FilterStatus {
        FilterStatus::Continue
    }
    fn request_body(&mut self, _: &mut StreamData, end_of_stream: bool) -> FilterStatus {
        if end_of_stream {
            FilterStatus::Continue
        } else {
            FilterStatus::StopIterationAndBuffer
        }
    }
    fn request_trailers(&mut self, _: &mut StreamData) -> FilterStatus {
        self.trailers.set(true);
        FilterStatus::Continue
    }
}

/// Envoy delivers the trailers to the filter that stopped in its body callback (its
/// `decodeTrailers` runs, and its Continue sends the buffered body and the trailers on).
/// The host keeps the trailers behind the stop instead, so the stream never ends: in the
/// gateway, request-transformer with a body operation and an HTTP/2 (or chunked) request
/// with trailers waits for the stream timeout (504).
#[test]
fn a_filter_buffering_the_body_gets_the_trailers() {
    let seen = Rc::new(Cell::new(false));
    let filter = Buffering {
        trailers: Rc::clone(&seen),
    };
    let mut stream = HttpStream::new(vec![Box::new(filter)], StreamInfo::default());
    let mut headers = Headers::new();
    headers.add(":method", "POST");
    headers.add(":path", "/");
    headers.add(":authority", "a.test");
    stream.request_headers(headers, false);
    stream.request_data(b"body".to_vec(), false);
    let mut trailers = Headers::new();
    trailers.add("x-trailer", "t");
    stream.request_trailers(trailers);
    assert!(seen.get(), "the filter never got the trailers");
    let outputs = stream.take_outputs();
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::RequestData { data, .. } if data == b"body")),
        "{outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::RequestTrailers(_))),
        "{outputs:?}"
    );
}
