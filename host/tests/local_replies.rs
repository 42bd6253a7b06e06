//! Which filters see a local reply. Envoy (and its proxy-wasm filters) run the response
//! phase of every filter that has seen the request headers: a reply sent from a body
//! callback still passes the filters after the sender that the headers had reached (a
//! rate-limiting filter adds its headers to request-size-limiting's 413 of a streamed body),
//! and never a filter the request never reached. Differential finding F6.

use std::cell::RefCell;
use std::rc::Rc;

use host::{
    FilterStatus, Headers, HttpFilter, HttpStream, LocalResponse, Output, StreamData, StreamInfo,
};

type Seen = Rc<RefCell<Vec<String>>>;

/// Records its callbacks; `reply_at_body` answers 413 from its first body callback.
struct Recorder {
    name: &'static str,
    reply_at_body: bool,
    reply_at_headers: bool,
    seen: Seen,
}

impl Recorder {
    fn note(&self, what: &str) {
        self.seen.borrow_mut().push(format!("{} {what}", self.name));
    }
}

impl HttpFilter for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn request_headers(&mut self, stream: &mut StreamData, _: bool) -> FilterStatus {
        self.note("request headers");
        if self.reply_at_headers {
            stream.local_response = Some(LocalResponse {
                status: 429,
                ..LocalResponse::default()
            });
            return FilterStatus::StopIteration;
        }
        FilterStatus::Continue
    }
    fn request_body(&mut self, stream: &mut StreamData, _: bool) -> FilterStatus {
        self.note("request body");
        if self.reply_at_body {
            stream.local_response = Some(LocalResponse {
                status: 413,
                ..LocalResponse::default()
            });
            return FilterStatus::StopIterationAndBuffer;
        }
        FilterStatus::Continue
    }
    fn response_headers(&mut self, stream: &mut StreamData, _: bool) -> FilterStatus {
        self.note("response headers");
        if let Some(headers) = stream.response_headers.as_mut() {
            headers.add(&format!("x-{}", self.name), "1");
        }
        FilterStatus::Continue
    }
}

fn chain(filters: [(&'static str, bool, bool); 3]) -> (HttpStream, Seen) {
    let seen: Seen = Rc::default();
    let filters = filters
        .into_iter()
        .map(|(name, reply_at_headers, reply_at_body)| {
            Box::new(Recorder {
                name,
                reply_at_body,
                reply_at_headers,
                seen: Rc::clone(&seen),
            }) as Box<dyn HttpFilter>
        })
        .collect();
    (HttpStream::new(filters, StreamInfo::default()), seen)
}

fn post() -> Headers {
    let mut headers = Headers::new();
    headers.add(":method", "POST");
    headers.add(":path", "/");
    headers.add(":authority", "a.test");
    headers.add("content-length", "4");
    headers
}

fn client_headers(stream: &mut HttpStream) -> Headers {
    stream
        .take_outputs()
        .into_iter()
        .find_map(|out| match out {
            Output::ResponseHeaders { headers, .. } => Some(headers),
            _ => None,
        })
        .expect("a response went to the client")
}

#[test]
fn a_reply_from_a_body_callback_passes_every_filter_the_headers_reached() {
    let (mut stream, seen) = chain([("a", false, false), ("b", false, true), ("c", false, false)]);
    stream.request_headers(post(), false);
    stream.request_data(b"body".to_vec(), true);
    let headers = client_headers(&mut stream);
    assert_eq!(headers.get_str(":status"), Some("413"));
    for name in ["x-a", "x-b", "x-c"] {
        assert_eq!(
            headers.get_str(name),
            Some("1"),
            "{name}: {:?}",
            seen.borrow()
        );
    }
    assert_eq!(
        seen.borrow()
            .iter()
            .filter(|s| s.ends_with("response headers"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "c response headers",
            "b response headers",
            "a response headers"
        ]
    );
}

#[test]
fn a_reply_from_a_headers_callback_skips_the_filters_after_it() {
    let (mut stream, seen) = chain([("a", false, false), ("b", true, false), ("c", false, false)]);
    stream.request_headers(post(), false);
    let headers = client_headers(&mut stream);
    assert_eq!(headers.get_str(":status"), Some("429"));
    assert_eq!(headers.get_str("x-c"), None);
    assert!(
        !seen.borrow().iter().any(|s| s.starts_with("c ")),
        "{:?}",
        seen.borrow()
    );
    assert_eq!(headers.get_str("x-a"), Some("1"));
}
