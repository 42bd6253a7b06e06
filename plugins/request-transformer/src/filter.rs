//! The proxy-wasm adapter: hands the request head to the core, applies its header changes,
//! and buffers the body only when the core asks for it.
//!
//! Envoy 1.40 facts this follows: a Pause from the header callback (with default plugin
//! settings) stops body delivery for good, so the filter drops Content-Length and continues,
//! then pauses in the body callback until the end of the stream (Envoy buffers and passes the
//! running total) and replaces the body; Envoy sends it chunked. With `wasmgate.hold_headers`
//! (Envoy: `allow_on_headers_stop_iteration: true`) the headers wait for the body instead,
//! and the rewritten body gets its exact Content-Length. Header values are read and written
//! as bytes: the SDK's string getters would trap on a non-UTF-8 value.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::transform::{self, BodyJob, HeaderChange, RequestHead};
use crate::{Config, PLUGIN_NAME, URI_CAPTURES_PROPERTY};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TransformerRoot { config: Rc::new(Config::default()) })
    });
}}

struct TransformerRoot {
    config: Rc<Config>,
}

impl Context for TransformerRoot {}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn log(level: LogLevel, message: &str) {
    proxy_wasm::hostcalls::log(level, &format!("{PLUGIN_NAME}: {message}")).ok();
}

impl RootContext for TransformerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match kit::proxy::configure(self, PLUGIN_NAME, |bytes| Config::parse(bytes, &env)) {
            Some(config) => {
                if let Some(warning) = config.warning() {
                    log(LogLevel::Warn, &warning);
                }
                self.config = Rc::new(config);
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TransformerFilter {
            config: Rc::clone(&self.config),
            job: None,
            done: false,
            body_size: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TransformerFilter {
    config: Rc<Config>,
    job: Option<BodyJob>,
    /// A local response was sent: nothing more to do.
    done: bool,
    body_size: usize,
}

impl TransformerFilter {
    fn apply(&self, changes: &[HeaderChange]) {
        for change in changes {
            match change.values.split_first() {
                None => self.remove_http_request_header(&change.name),
                Some((first, rest)) => {
                    self.set_http_request_header_bytes(&change.name, Some(first));
                    for value in rest {
                        self.add_http_request_header_bytes(&change.name, value);
                    }
                }
            }
        }
    }

    fn refuse(&mut self, refusal: &transform::Refusal) -> Action {
        log(LogLevel::Error, &refusal.log);
        self.done = true;
        self.job = None;
        kit::proxy::send(&refusal.response);
        Action::Pause
    }

    /// Rewrites the complete buffered body of `size` bytes.
    fn finish(&mut self, size: usize) -> Action {
        let Some(job) = self.job.take() else {
            return Action::Continue;
        };
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        match job.finish(&body) {
            Ok(decision) => {
                if let Some(new) = &decision.body {
                    self.set_http_request_body(0, size, new);
                }
                if job.hold_headers {
                    self.apply(&decision.changes);
                }
                Action::Continue
            }
            Err(refusal) => self.refuse(&refusal),
        }
    }
}

impl Context for TransformerFilter {}

impl HttpContext for TransformerFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers: Vec<(String, Vec<u8>)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let captures = if self.config.reads_captures() {
            self.get_property(vec![URI_CAPTURES_PROPERTY])
        } else {
            None
        };
        let head = RequestHead {
            headers: &headers,
            end_of_stream,
            captures: captures.as_deref(),
        };
        match transform::on_headers(&self.config, &head) {
            Ok(decision) => {
                self.apply(&decision.changes);
                let hold = decision.body.as_ref().is_some_and(|job| job.hold_headers);
                self.job = decision.body;
                if hold {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Err(refusal) => self.refuse(&refusal),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.done {
            return Action::Pause;
        }
        let Some(job) = &self.job else {
            return Action::Continue;
        };
        self.body_size = body_size;
        if body_size as u64 > job.limit {
            // Too large to buffer: it goes on unchanged (already buffered bytes included).
            log(
                LogLevel::Debug,
                "body larger than wasmgate.body_buffer_limit: passed on unchanged",
            );
            self.job = None;
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish(body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.done {
            return Action::Pause;
        }
        // A body followed by trailers ends here, not in a body callback.
        self.finish(self.body_size)
    }
}
