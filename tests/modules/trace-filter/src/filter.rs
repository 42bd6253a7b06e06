//! The proxy-wasm contexts: the root holds the script and the streams waiting for a tick;
//! each stream follows the script and traces every callback.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::abi;
use crate::script::{Resume, Script, Step};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// A stream paused at its headers until the next tick.
struct Waiting {
    context: u32,
    tag: String,
    stream: u32,
}

#[derive(Default)]
struct Root {
    script: Option<Rc<Script>>,
    waiting: Rc<RefCell<Vec<Waiting>>>,
}

fn trace(tag: &str, name: &str, line: &str) {
    abi::log_info(&format!("TRACE|{tag}|{name} {line}"));
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match abi::get_buffer(abi::PLUGIN_CONFIGURATION, 0, size) {
            Ok(bytes) => bytes,
            Err(status) => {
                abi::log_warn(&format!("trace filter: no configuration: status {status}"));
                return false;
            }
        };
        match Script::parse(&bytes) {
            Ok(script) => {
                if matches!(script.resume, Resume::Tick | Resume::TickReply) {
                    let status = abi::set_tick_period(script.tick_ms);
                    if status != abi::OK {
                        abi::log_warn(&format!("trace filter: tick period: status {status}"));
                    }
                }
                self.script = Some(Rc::new(script));
                true
            }
            Err(e) => {
                abi::log_warn(&format!("trace filter: invalid configuration: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(script) = &self.script else {
            return;
        };
        let waiting: Vec<Waiting> = self.waiting.borrow_mut().drain(..).collect();
        for w in waiting {
            let effective = abi::set_effective_context(w.context);
            let did = if effective != abi::OK {
                format!("set_effective_context {}", abi::status_text(effective))
            } else if script.resume == Resume::TickReply {
                let status = abi::send_local_response(
                    script.reply_status,
                    ("x-t-reply", &script.name),
                    &format!("{} reply", script.name),
                    script.reply_grpc_status,
                );
                format!("reply {} {}", script.reply_status, abi::status_text(status))
            } else {
                format!(
                    "{} {}",
                    resume_word(w.stream),
                    abi::status_text(abi::continue_stream(w.stream))
                )
            };
            trace(&w.tag, &script.name, &format!("tick -> {did}"));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A root whose configuration was refused never gets streams; a default script keeps
        // the SDK from panicking on `None` should a host ask anyway.
        let script = self
            .script
            .clone()
            .unwrap_or_else(|| Rc::new(default_script()));
        Some(Box::new(Stream {
            context: context_id,
            script,
            waiting: Rc::clone(&self.waiting),
            tag: "-".to_owned(),
            holding: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn default_script() -> Script {
    Script {
        name: "unconfigured".to_owned(),
        request_headers: Step::Continue,
        request_body: Step::Continue,
        request_trailers: Step::Continue,
        response_headers: Step::Continue,
        response_body: Step::Continue,
        response_trailers: Step::Continue,
        resume: Resume::None,
        tick_ms: 50,
        callout: String::new(),
        reply_status: 403,
        reply_grpc_status: -1,
        set_request_body: None,
        set_response_body: None,
        add_request_trailer: false,
        add_response_trailer: false,
    }
}

fn resume_word(stream: u32) -> &'static str {
    if stream == abi::STREAM_REQUEST {
        "resume_request"
    } else {
        "resume_response"
    }
}

fn tag_in(pairs: &[(String, String)]) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == "x-t-id")
        .map(|(_, v)| v.clone())
}

fn request_tag() -> Option<String> {
    abi::get_map(abi::REQUEST_HEADERS)
        .ok()
        .and_then(|pairs| tag_in(&pairs))
}

struct Stream {
    context: u32,
    script: Rc<Script>,
    waiting: Rc<RefCell<Vec<Waiting>>>,
    tag: String,
    /// The direction whose headers this filter holds, until resumed.
    holding: Option<u32>,
}

/// One direction's ABI numbers.
#[derive(Clone, Copy)]
struct Side {
    word: &'static str,
    headers: u32,
    trailers: u32,
    body: u32,
    stream: u32,
}

const REQUEST: Side = Side {
    word: "request",
    headers: abi::REQUEST_HEADERS,
    trailers: abi::REQUEST_TRAILERS,
    body: abi::REQUEST_BODY,
    stream: abi::STREAM_REQUEST,
};

const RESPONSE: Side = Side {
    word: "response",
    headers: abi::RESPONSE_HEADERS,
    trailers: abi::RESPONSE_TRAILERS,
    body: abi::RESPONSE_BODY,
    stream: abi::STREAM_RESPONSE,
};

impl Stream {
    fn trace(&self, line: &str) {
        trace(&self.tag, &self.script.name, line);
    }

    fn reply(&self) -> String {
        let status = abi::send_local_response(
            self.script.reply_status,
            ("x-t-reply", &self.script.name),
            &format!("{} reply", self.script.name),
            self.script.reply_grpc_status,
        );
        format!(
            "reply {} {}",
            self.script.reply_status,
            abi::status_text(status)
        )
    }

    fn headers(&mut self, side: Side, eos: bool) -> Action {
        let map = abi::get_map(side.headers);
        if side.stream == abi::STREAM_REQUEST {
            if let Some(id) = map.as_ref().ok().and_then(|pairs| tag_in(pairs)) {
                self.tag = id;
            }
        }
        let seen = match &map {
            Ok(pairs) => {
                let mut names: Vec<&str> = pairs
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("x-t-"))
                    .collect();
                names.sort_unstable();
                names.dedup();
                let status = pairs
                    .iter()
                    .find(|(k, _)| k == ":status")
                    .map(|(_, v)| format!(" status={v}"))
                    .unwrap_or_default();
                format!("hdrs={}{status}", names.join(","))
            }
            Err(status) => format!("hdrs=status{status}"),
        };
        let added = abi::add_header(side.headers, &self.script.header_name(), "1");
        let mut did = Vec::new();
        if added != abi::OK {
            did.push(format!("add_header {}", abi::status_text(added)));
        }
        let step = if side.stream == abi::STREAM_REQUEST {
            self.script.request_headers
        } else {
            self.script.response_headers
        };
        let action = match step {
            Step::Continue => {
                did.push("continue".to_owned());
                Action::Continue
            }
            Step::Pause | Step::Buffer => {
                did.push("pause".to_owned());
                self.holding = Some(side.stream);
                match self.script.resume {
                    Resume::None | Resume::BodyEos => {}
                    Resume::Tick | Resume::TickReply => self.waiting.borrow_mut().push(Waiting {
                        context: self.context,
                        tag: self.tag.clone(),
                        stream: side.stream,
                    }),
                    Resume::HttpCall => {
                        let called = self.dispatch_http_call(
                            &self.script.callout,
                            vec![
                                (":method", "GET"),
                                (":path", "/callout"),
                                (":authority", "callee"),
                                ("x-t-id", &self.tag),
                            ],
                            None,
                            vec![],
                            Duration::from_secs(5),
                        );
                        did.push(match called {
                            Ok(_) => "http_call ok".to_owned(),
                            Err(status) => format!("http_call {status:?}"),
                        });
                    }
                    Resume::GrpcCall => {
                        let called = self.dispatch_grpc_call(
                            &self.script.callout,
                            "svc.Echo",
                            "Say",
                            vec![("x-t-id", self.tag.as_bytes())],
                            Some(b"hi"),
                            Duration::from_secs(5),
                        );
                        did.push(match called {
                            Ok(_) => "grpc_call ok".to_owned(),
                            Err(status) => format!("grpc_call {status:?}"),
                        });
                    }
                }
                Action::Pause
            }
            Step::Reply => {
                did.push(self.reply());
                Action::Pause
            }
        };
        self.trace(&format!(
            "{}_headers eos={eos} {seen} -> {}",
            side.word,
            did.join(" ")
        ));
        action
    }

    fn body(&mut self, side: Side, size: usize, eos: bool) -> Action {
        let read = match abi::get_buffer(side.body, 0, size) {
            Ok(bytes) => bytes.len().to_string(),
            Err(status) => format!("status{status}"),
        };
        let (step, replacement, add_trailer) = if side.stream == abi::STREAM_REQUEST {
            (
                self.script.request_body,
                &self.script.set_request_body,
                self.script.add_request_trailer,
            )
        } else {
            (
                self.script.response_body,
                &self.script.set_response_body,
                self.script.add_response_trailer,
            )
        };
        let mut did = Vec::new();
        if eos {
            if let Some(text) = replacement {
                let status = abi::set_buffer(side.body, 0, size, text.as_bytes());
                did.push(format!(
                    "set_body {} {}",
                    text.len(),
                    abi::status_text(status)
                ));
            }
            if add_trailer {
                let status = abi::add_header(side.trailers, "x-t-added", &self.script.name);
                did.push(format!("add_trailer {}", abi::status_text(status)));
            }
        }
        let action = match step {
            Step::Continue => {
                did.push("continue".to_owned());
                Action::Continue
            }
            Step::Pause => {
                did.push("pause".to_owned());
                Action::Pause
            }
            Step::Buffer if !eos => {
                did.push("pause".to_owned());
                Action::Pause
            }
            Step::Buffer => {
                did.push("continue".to_owned());
                Action::Continue
            }
            Step::Reply => {
                did.push(self.reply());
                Action::Pause
            }
        };
        if eos && self.script.resume == Resume::BodyEos && self.holding == Some(side.stream) {
            self.holding = None;
            let status = abi::continue_stream(side.stream);
            did.push(format!(
                "{} {}",
                resume_word(side.stream),
                abi::status_text(status)
            ));
        }
        self.trace(&format!(
            "{}_body size={size} read={read} eos={eos} -> {}",
            side.word,
            did.join(" ")
        ));
        action
    }

    fn trailers(&mut self, side: Side) -> Action {
        let seen = match abi::get_map(side.trailers) {
            Ok(pairs) => {
                let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable();
                format!("names={}", names.join(","))
            }
            Err(status) => format!("names=status{status}"),
        };
        let step = if side.stream == abi::STREAM_REQUEST {
            self.script.request_trailers
        } else {
            self.script.response_trailers
        };
        let (did, action) = match step {
            Step::Continue => ("continue".to_owned(), Action::Continue),
            Step::Pause | Step::Buffer => ("pause".to_owned(), Action::Pause),
            Step::Reply => (self.reply(), Action::Pause),
        };
        self.trace(&format!("{}_trailers {seen} -> {did}", side.word));
        action
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        let message = match abi::get_buffer(abi::GRPC_RECEIVE_BUFFER, 0, size) {
            Ok(bytes) => format!("{:?}", String::from_utf8_lossy(&bytes)),
            Err(status) => format!("status{status}"),
        };
        let did = match self.holding.take() {
            Some(stream) => format!(
                "{} {}",
                resume_word(stream),
                abi::status_text(abi::continue_stream(stream))
            ),
            None => "nothing held".to_owned(),
        };
        self.trace(&format!(
            "grpc_call_response status={status} size={size} message={message} -> {did}"
        ));
    }

    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let status = match abi::get_map(abi::CALL_RESPONSE_HEADERS) {
            Ok(pairs) => pairs
                .iter()
                .find(|(k, _)| k == ":status")
                .map_or_else(|| "none".to_owned(), |(_, v)| v.clone()),
            Err(status) => format!("status{status}"),
        };
        let did = match self.holding.take() {
            Some(stream) => format!(
                "{} {}",
                resume_word(stream),
                abi::status_text(abi::continue_stream(stream))
            ),
            None => "nothing held".to_owned(),
        };
        self.trace(&format!("http_call_response status={status} -> {did}"));
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, eos: bool) -> Action {
        self.headers(REQUEST, eos)
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.body(REQUEST, size, eos)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.trailers(REQUEST)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, eos: bool) -> Action {
        self.headers(RESPONSE, eos)
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.body(RESPONSE, size, eos)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.trailers(RESPONSE)
    }

    fn on_log(&mut self) {
        // A stream that ends while waiting for a tick must not be resumed after it is gone.
        self.waiting
            .borrow_mut()
            .retain(|w| w.context != self.context);
        // A filter the chain never reached has no tag yet; the request's headers still name
        // the stream.
        if self.tag == "-" {
            if let Some(id) = request_tag() {
                self.tag = id;
            }
        }
        self.trace("log");
    }
}
