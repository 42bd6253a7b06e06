//! The proxy-wasm adapter: reads the request head, feeds body chunk sizes to the counter and
//! sends the core's rejections. Body bytes are never read into the module.
//!
//! Host calls go through `kit::host`: the SDK's getters trap (503) on a status they do not
//! expect and its string getters on a value outside UTF-8.

use std::rc::Rc;

use kit::host::{self, Map};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::{passes_without_body, BodyCounter, Config, RequestHead, Verdict, PLUGIN_NAME};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(SizeLimitRoot { config: Rc::new(Config::default()) })
    });
}}

struct SizeLimitRoot {
    config: Rc<Config>,
}

impl Context for SizeLimitRoot {}

impl RootContext for SizeLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match host::configure(PLUGIN_NAME, Config::parse) {
            Some(config) => {
                self.config = Rc::new(config);
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(SizeLimitFilter {
            config: Rc::clone(&self.config),
            counter: BodyCounter::default(),
            rejected: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request header's value as the host's bytes; `None` when absent or when the host refuses.
/// Treating a refused header as absent never lets a body past the limit: the streamed bytes
/// are counted whatever Content-Length says.
fn request_header(name: &[u8]) -> Option<Vec<u8>> {
    host::header(Map::RequestHeaders, name).ok().flatten()
}

struct SizeLimitFilter {
    config: Rc<Config>,
    counter: BodyCounter,
    rejected: bool,
}

impl SizeLimitFilter {
    fn apply(&mut self, verdict: Verdict) -> Action {
        match verdict {
            Verdict::Continue => Action::Continue,
            Verdict::Reject(response) => {
                self.rejected = true;
                host::send(&response);
                Action::Pause
            }
        }
    }
}

impl Context for SizeLimitFilter {}

impl HttpContext for SizeLimitFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let content_length = request_header(b"content-length");
        // No body follows: when the length alone lets the request pass, the rest of the head
        // could only have shaped a refusal or the counting of a body, so it is not read.
        if end_of_stream && passes_without_body(&self.config, content_length.as_deref()) {
            return Action::Continue;
        }
        let expect = request_header(b"expect");
        let accept = request_header(b"accept");
        let protocol = host::property(b"request\0protocol");
        let request_id = host::property(b"request\0id").unwrap_or_default();
        let head = RequestHead {
            content_length: content_length.as_deref(),
            expect: expect.as_deref(),
            accept: accept.as_deref(),
            request_id: &request_id,
            end_of_stream,
            http11: protocol.as_deref() == Some(b"HTTP/1.1".as_slice()),
        };
        let verdict = self.counter.on_headers(&self.config, &head);
        self.apply(verdict)
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.rejected {
            return Action::Pause;
        }
        // The filter never pauses on the body, so the host reports each chunk's own size.
        let verdict = self.counter.on_body_chunk(&self.config, body_size);
        self.apply(verdict)
    }
}
