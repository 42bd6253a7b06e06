//! The proxy-wasm adapter: [`Stream`] does the work; this file connects it to the host.
//!
//! Every host call goes through `kit::host`, with each status handled by [`Stream`]: the
//! SDK's wrappers (`get_buffer`, `set_buffer`, the header map calls, `get_property`, even
//! `log` and `send_http_response`) panic on any status they do not expect, and in wasm a
//! panic is a trap, which Envoy answers with 503 (and a VM reload). Header names and values
//! are bytes.

use std::rc::Rc;

use kit::host::{self, Buffer, Level, Map};
use kit::LocalResponse;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::stream::{self, Host, Status, Stream};
use crate::transform::Headers;
use crate::{Config, PLUGIN_NAME};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TransformerRoot { config: Rc::new(Config::default()) })
    });
}}

fn log(level: Level, message: &str) {
    host::log(level, &format!("{PLUGIN_NAME}: {message}"));
}

/// The host, for the stream being served.
struct ProxyWasm;

impl Host for ProxyWasm {
    fn request_headers(&mut self) -> Result<Headers, Status> {
        host::header_pairs(Map::RequestHeaders)
    }

    fn request_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, Status> {
        host::header(Map::RequestHeaders, name.as_bytes())
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), Status> {
        host::remove_header(Map::RequestHeaders, name.as_bytes())
    }

    fn add_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        host::add_header(Map::RequestHeaders, name.as_bytes(), value)
    }

    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        host::replace_header(Map::RequestHeaders, name.as_bytes(), value)
    }

    fn request_body(&mut self, size: usize) -> Result<Option<Vec<u8>>, Status> {
        host::buffer(Buffer::RequestBody, 0, size)
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) -> Result<(), Status> {
        host::set_buffer(Buffer::RequestBody, 0, size, body)
    }

    fn route_name(&mut self) -> Option<Vec<u8>> {
        host::property(b"xds\0route_name")
    }

    fn request_id(&mut self) -> Vec<u8> {
        host::property(b"request\0id").unwrap_or_default()
    }

    fn send(&mut self, response: &LocalResponse) {
        if let Err(code) = host::send_local_response(response) {
            log(
                Level::Error,
                &format!("local response {} refused: status {code}", response.status),
            );
        }
    }

    fn log(&mut self, level: stream::Level, message: &str) {
        let level = match level {
            stream::Level::Debug => Level::Debug,
            stream::Level::Warn => Level::Warn,
            stream::Level::Error => Level::Error,
        };
        log(level, message);
    }
}

struct TransformerRoot {
    config: Rc<Config>,
}

impl Context for TransformerRoot {}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl RootContext for TransformerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match host::configure(PLUGIN_NAME, |bytes| Config::parse(bytes, &env)) {
            Some(config) => {
                if let Some(warning) = config.warning() {
                    log(Level::Warn, &warning);
                }
                self.config = Rc::new(config);
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TransformerFilter(Stream::new(Rc::clone(
            &self.config,
        )))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TransformerFilter(Stream);

fn action(action: stream::Action) -> proxy_wasm::types::Action {
    match action {
        stream::Action::Continue => proxy_wasm::types::Action::Continue,
        stream::Action::Pause => proxy_wasm::types::Action::Pause,
    }
}

impl Context for TransformerFilter {}

impl HttpContext for TransformerFilter {
    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        action(self.0.on_request_headers(&mut ProxyWasm, end_of_stream))
    }

    fn on_http_request_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        action(
            self.0
                .on_request_body(&mut ProxyWasm, body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> proxy_wasm::types::Action {
        action(self.0.on_request_trailers(&mut ProxyWasm))
    }
}
