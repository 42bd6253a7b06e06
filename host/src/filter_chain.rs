//! The boundary between the network (the `gateway` binary, or a test) and the filters: a
//! sans-IO HTTP filter chain with Envoy's iteration rules.
//!
//! The driver feeds one [`HttpStream`] per request with what the client and the upstream sent
//! (`request_headers`, `request_data`, …, `response_headers`, …), delivers the answers to the
//! calls filters made ([`HttpStream::take_callouts`] → [`HttpStream::http_call_response`]),
//! and forwards what [`HttpStream::take_outputs`] yields: request parts for the upstream,
//! response parts for the client, or a reset.
//!
//! Rules, as Envoy applies them to proxy-wasm filters:
//! - Request phases run filters in order, response phases in reverse order.
//! - [`FilterStatus::Stop`] from a headers callback holds the headers and buffers the body
//!   (Envoy's `StopAllIterationAndWatermark`); when the filter resumes, the headers go on and
//!   the buffered body is handed to that same filter first.
//! - `Stop` from a body callback buffers: the filter is called again with the whole buffered
//!   body (the running total) when more data arrives; `Continue` passes on the (possibly
//!   rewritten) body. Buffering past the buffer limit (1 MiB, Envoy's default) answers 413
//!   (request) or 500 (response), as Envoy does.
//! - A local response ends the request side and passes through the response phases of the
//!   filters that saw the request, from the one that sent it back to the first. A non-empty
//!   body gets `content-type: text/plain` unless the filter gave one.
//!
//! - With Envoy's `allow_on_headers_stop_iteration` ([`HttpFilter::body_while_headers_stopped`]),
//!   a headers `Stop` still lets the body reach the filter that stopped; it may change the
//!   headers there, and its body `Continue` resumes the headers, then the body.
//!
//! Limitation: one stop point per direction. While a later filter holds the headers, data
//! still runs through the earlier filters as it arrives; a `Stop` from one of those is
//! treated as `Continue`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use crate::callout::{Callouts, GrpcInbound, HttpCallResult};
use crate::headers::Headers;

/// What a filter callback decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterStatus {
    Continue,
    /// Headers: hold them and buffer the body until the filter resumes. Body: buffer.
    Stop,
}

/// Facts about the stream that filters can read as properties.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// The client (`source.address` is `IP:port`).
    pub source: SocketAddr,
    /// The listener address that accepted the connection.
    pub destination: SocketAddr,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    pub route_name: String,
    pub cluster_name: String,
    pub request_id: String,
    pub connection_id: u64,
    pub start: SystemTime,
}

impl Default for StreamInfo {
    fn default() -> Self {
        StreamInfo {
            source: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 8000)),
            protocol: "HTTP/1.1".into(),
            route_name: String::new(),
            cluster_name: String::new(),
            request_id: String::new(),
            connection_id: 0,
            start: SystemTime::UNIX_EPOCH,
        }
    }
}

/// A response a filter answers itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Envoy's response code details.
    pub details: String,
    pub grpc_status: Option<i32>,
}

/// Everything a filter callback can see and change about its stream.
#[derive(Clone, Debug, Default)]
pub struct StreamData {
    pub info: StreamInfo,
    pub request_headers: Option<Headers>,
    /// The request body as the current filter sees it: the chunk, or the buffered total.
    pub request_body: Vec<u8>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_body: Vec<u8>,
    pub response_trailers: Option<Headers>,
    /// Set by a filter to answer the stream itself.
    pub local_response: Option<LocalResponse>,
    /// Set by a filter (from any callback) to resume a direction it stopped.
    pub resume_request: bool,
    pub resume_response: bool,
    /// Set by a filter to reset (close) the stream.
    pub reset: bool,
    /// Values filters stored with `set_property`.
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Calls the current filter made during its callback.
    pub callouts: Callouts,
    /// Request body bytes received so far.
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// One filter's view of one stream. Every callback may set `local_response`, `reset`, the
/// `resume_*` flags and `callouts` on the [`StreamData`].
pub trait HttpFilter {
    fn name(&self) -> &str;
    /// The proxy-wasm context id, for routing resumes a module asks for from its root
    /// context (see `WorkerPlugin::take_stream_ops`).
    fn context_id(&self) -> Option<u32> {
        None
    }
    /// Envoy's `allow_on_headers_stop_iteration`: after a headers `Stop`, the body still
    /// reaches this filter (the running total, as for a body `Stop`), and a `Continue` from
    /// its body callback sends the headers and the body on.
    fn body_while_headers_stopped(&self) -> bool {
        false
    }
    fn request_headers(&mut self, stream: &mut StreamData, end_of_stream: bool) -> FilterStatus;
    /// `stream.request_body` holds the chunk (or everything buffered at this filter).
    fn request_body(&mut self, _stream: &mut StreamData, _end_of_stream: bool) -> FilterStatus {
        FilterStatus::Continue
    }
    fn request_trailers(&mut self, _stream: &mut StreamData) -> FilterStatus {
        FilterStatus::Continue
    }
    fn response_headers(&mut self, _stream: &mut StreamData, _end_of_stream: bool) -> FilterStatus {
        FilterStatus::Continue
    }
    fn response_body(&mut self, _stream: &mut StreamData, _end_of_stream: bool) -> FilterStatus {
        FilterStatus::Continue
    }
    fn response_trailers(&mut self, _stream: &mut StreamData) -> FilterStatus {
        FilterStatus::Continue
    }
    /// The answer to an HTTP call this filter made.
    fn http_call_response(
        &mut self,
        _stream: &mut StreamData,
        _token: u32,
        _result: HttpCallResult,
    ) {
    }
    /// Something happened on a gRPC call this filter made.
    fn grpc_event(&mut self, _stream: &mut StreamData, _token: u32, _event: GrpcInbound) {}
    /// The stream is over (complete, answered or reset): proxy-wasm's on_done, on_log,
    /// on_delete.
    fn stream_done(&mut self, _stream: &mut StreamData) {}
}

/// Makes a filter per stream (a plugin on a worker).
pub trait FilterFactory {
    fn create_filter(&self) -> Box<dyn HttpFilter>;
}

/// What the chain hands to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    RequestHeaders {
        headers: Headers,
        end_of_stream: bool,
    },
    RequestData {
        data: Vec<u8>,
        end_of_stream: bool,
    },
    RequestTrailers(Headers),
    ResponseHeaders {
        headers: Headers,
        end_of_stream: bool,
    },
    ResponseData {
        data: Vec<u8>,
        end_of_stream: bool,
    },
    ResponseTrailers(Headers),
    /// Abort the stream (both directions).
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Headers,
    Body,
    Trailers,
}

#[derive(Debug, Default)]
struct Flow {
    /// Filter indices in iteration order.
    order: Vec<usize>,
    /// Where iteration stopped: position in `order` and stage.
    stopped: Option<(usize, Stage)>,
    headers_eos: bool,
    headers_forwarded: bool,
    buffer: Vec<u8>,
    buffer_eos: bool,
    /// Trailers waiting behind a stop.
    trailers: Option<Headers>,
    /// Where the waiting trailers go on from: the filters before it have had them.
    trailers_from: usize,
    /// No more output in this direction.
    ended: bool,
}

/// A chain of filter instances for one stream.
pub struct HttpStream {
    filters: Vec<Box<dyn HttpFilter>>,
    data: StreamData,
    request: Flow,
    response: Flow,
    outputs: Vec<Output>,
    callouts: Vec<(usize, Callouts)>,
    local_reply_sent: bool,
    in_local_reply: bool,
    /// How many filters (a prefix of the request order) have had the request headers: they,
    /// and only they, get the response phase of a local reply, as in Envoy.
    request_headers_reached: usize,
    buffer_limit: usize,
    done: bool,
}

/// Envoy's default connection buffer limit.
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

impl HttpStream {
    pub fn new(filters: Vec<Box<dyn HttpFilter>>, info: StreamInfo) -> HttpStream {
        let n = filters.len();
        HttpStream {
            filters,
            data: StreamData {
                info,
                ..StreamData::default()
            },
            request: Flow {
                order: (0..n).collect(),
                ..Flow::default()
            },
            response: Flow {
                order: (0..n).rev().collect(),
                ..Flow::default()
            },
            outputs: Vec::new(),
            callouts: Vec::new(),
            local_reply_sent: false,
            in_local_reply: false,
            request_headers_reached: 0,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            done: false,
        }
    }

    pub fn set_buffer_limit(&mut self, limit: usize) {
        self.buffer_limit = limit;
    }

    pub fn data(&self) -> &StreamData {
        &self.data
    }

    /// Sets a property filters read with `get_property` (the data plane's own facts, e.g. the
    /// route's regex captures), before the request starts. `path` joins segments with `\0`.
    pub fn set_property(&mut self, path: &str, value: Vec<u8>) {
        self.data.properties.insert(path.to_owned(), value);
    }

    /// What to send on, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Calls filters made, each with the index of the filter to deliver the answer to.
    pub fn take_callouts(&mut self) -> Vec<(usize, Callouts)> {
        std::mem::take(&mut self.callouts)
    }

    /// Whether a filter holds either direction.
    pub fn is_paused(&self) -> bool {
        self.request.stopped.is_some() || self.response.stopped.is_some()
    }

    pub fn local_reply_sent(&self) -> bool {
        self.local_reply_sent
    }

    /// Whether the response has been sent completely (or the stream reset).
    /// Whether the request side takes no more input: its end went through, or a local
    /// response or reset ended it. A driver stops reading the client's body then (Envoy
    /// answers a local reply without reading the rest of the body).
    pub fn request_ended(&self) -> bool {
        self.request.ended || self.local_reply_sent || self.done
    }

    pub fn is_complete(&self) -> bool {
        self.response.ended || self.done
    }

    fn flow(&mut self, dir: Dir) -> &mut Flow {
        match dir {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        }
    }

    fn body(&mut self, dir: Dir) -> &mut Vec<u8> {
        match dir {
            Dir::Request => &mut self.data.request_body,
            Dir::Response => &mut self.data.response_body,
        }
    }

    // ---- inputs ----

    pub fn request_headers(&mut self, headers: Headers, end_of_stream: bool) {
        if self.done || self.local_reply_sent {
            return;
        }
        self.data.request_headers = Some(headers);
        self.request.headers_eos = end_of_stream;
        self.run_headers(Dir::Request, 0);
    }

    pub fn request_data(&mut self, data: Vec<u8>, end_of_stream: bool) {
        if self.done || self.local_reply_sent || self.request.ended {
            return;
        }
        self.data.request_bytes += data.len() as u64;
        self.on_data(Dir::Request, data, end_of_stream);
    }

    pub fn request_trailers(&mut self, trailers: Headers) {
        if self.done || self.local_reply_sent || self.request.ended {
            return;
        }
        self.on_trailers(Dir::Request, trailers);
    }

    pub fn response_headers(&mut self, headers: Headers, end_of_stream: bool) {
        if self.done || self.local_reply_sent {
            return;
        }
        self.data.response_headers = Some(headers);
        self.response.headers_eos = end_of_stream;
        self.run_headers(Dir::Response, 0);
    }

    pub fn response_data(&mut self, data: Vec<u8>, end_of_stream: bool) {
        if self.done || self.local_reply_sent || self.response.ended {
            return;
        }
        self.data.response_bytes += data.len() as u64;
        self.on_data(Dir::Response, data, end_of_stream);
    }

    pub fn response_trailers(&mut self, trailers: Headers) {
        if self.done || self.local_reply_sent || self.response.ended {
            return;
        }
        self.on_trailers(Dir::Response, trailers);
    }

    /// Delivers the answer to an HTTP call filter `filter` made.
    pub fn http_call_response(&mut self, filter: usize, token: u32, result: HttpCallResult) {
        if self.done {
            return;
        }
        let Some(f) = self.filters.get_mut(filter) else {
            return;
        };
        f.http_call_response(&mut self.data, token, result);
        self.after_async(filter);
    }

    pub fn grpc_event(&mut self, filter: usize, token: u32, event: GrpcInbound) {
        if self.done {
            return;
        }
        let Some(f) = self.filters.get_mut(filter) else {
            return;
        };
        f.grpc_event(&mut self.data, token, event);
        self.after_async(filter);
    }

    /// A filter asked (from outside a stream callback, e.g. its root context) to resume.
    pub fn resume(&mut self, filter: usize) {
        self.data.resume_request = true;
        self.data.resume_response = true;
        self.after_async(filter);
    }

    /// Ends the stream: every filter gets `stream_done` once. Call it when the response is
    /// complete, or when the client or upstream went away.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for f in self.filters.iter_mut() {
            f.stream_done(&mut self.data);
        }
    }

    // ---- iteration ----

    fn call(&mut self, dir: Dir, stage: Stage, idx: usize, eos: bool) -> FilterStatus {
        self.data.resume_request = false;
        self.data.resume_response = false;
        let Some(filter) = self.filters.get_mut(idx) else {
            return FilterStatus::Continue;
        };
        if (dir, stage) == (Dir::Request, Stage::Headers) {
            self.request_headers_reached = self.request_headers_reached.max(idx + 1);
        }
        let data = &mut self.data;
        let status = match (dir, stage) {
            (Dir::Request, Stage::Headers) => filter.request_headers(data, eos),
            (Dir::Request, Stage::Body) => filter.request_body(data, eos),
            (Dir::Request, Stage::Trailers) => filter.request_trailers(data),
            (Dir::Response, Stage::Headers) => filter.response_headers(data, eos),
            (Dir::Response, Stage::Body) => filter.response_body(data, eos),
            (Dir::Response, Stage::Trailers) => filter.response_trailers(data),
        };
        let callouts = std::mem::take(&mut self.data.callouts);
        if !callouts.is_empty() {
            self.callouts.push((idx, callouts));
        }
        let resumed = match dir {
            Dir::Request => self.data.resume_request,
            Dir::Response => self.data.resume_response,
        };
        if resumed {
            FilterStatus::Continue
        } else {
            status
        }
    }

    /// After a callback: a reset or local response takes over. True when iteration must end.
    fn intercepted(&mut self, dir: Dir, idx: usize) -> bool {
        if self.data.reset {
            self.data.reset = false;
            self.reset();
            return true;
        }
        if let Some(response) = self.data.local_response.take() {
            if self.in_local_reply {
                // Envoy ignores a second local reply sent while the first one is encoded.
                return false;
            }
            self.local_reply(dir, idx, response);
            return true;
        }
        false
    }

    fn reset(&mut self) {
        self.outputs.push(Output::Reset);
        self.request.ended = true;
        self.response.ended = true;
        self.request.stopped = None;
        self.response.stopped = None;
        self.finish();
    }

    fn run_headers(&mut self, dir: Dir, from: usize) {
        let n = self.flow(dir).order.len();
        let eos = self.flow(dir).headers_eos;
        for pos in from..n {
            let idx = self.flow(dir).order[pos];
            let status = self.call(dir, Stage::Headers, idx, eos);
            if self.intercepted(dir, idx) {
                return;
            }
            if status == FilterStatus::Stop {
                self.flow(dir).stopped = Some((pos, Stage::Headers));
                return;
            }
        }
        let headers = match dir {
            Dir::Request => self.data.request_headers.clone(),
            Dir::Response => self.data.response_headers.clone(),
        }
        .unwrap_or_default();
        let flow = self.flow(dir);
        flow.headers_forwarded = true;
        let buffered = std::mem::take(&mut flow.buffer);
        let buffered_eos = flow.buffer_eos;
        let trailers_waiting = flow.trailers.is_some();
        let end = eos;
        if end {
            flow.ended = true;
        }
        self.outputs.push(match dir {
            Dir::Request => Output::RequestHeaders {
                headers,
                end_of_stream: end,
            },
            Dir::Response => Output::ResponseHeaders {
                headers,
                end_of_stream: end,
            },
        });
        if !end && (!buffered.is_empty() || buffered_eos) {
            // Envoy hands the data buffered behind a headers stop to the filter that stopped.
            self.flow(dir).buffer_eos = false;
            self.run_body(dir, from.saturating_sub(1), buffered, buffered_eos);
        } else if !end && trailers_waiting {
            self.flush_trailers(dir);
        }
        if dir == Dir::Response && self.response.ended {
            self.finish();
        }
    }

    fn on_data(&mut self, dir: Dir, chunk: Vec<u8>, eos: bool) {
        match self.flow(dir).stopped {
            None => self.run_body(dir, 0, chunk, eos),
            Some((stop, stage)) => {
                // Earlier filters see the data as it arrives.
                let mut chunk = chunk;
                for pos in 0..stop {
                    let idx = self.flow(dir).order[pos];
                    *self.body(dir) = chunk;
                    let _ = self.call(dir, Stage::Body, idx, eos);
                    chunk = std::mem::take(self.body(dir));
                    if self.intercepted(dir, idx) {
                        return;
                    }
                }
                let flow = self.flow(dir);
                flow.buffer.extend_from_slice(&chunk);
                flow.buffer_eos |= eos;
                if self.over_limit(dir) {
                    return;
                }
                let idx = self.flow(dir).order[stop];
                let body_allowed = self
                    .filters
                    .get(idx)
                    .is_some_and(|f| f.body_while_headers_stopped());
                if stage == Stage::Headers && body_allowed {
                    self.body_behind_held_headers(dir, stop);
                } else if stage == Stage::Body {
                    let flow = self.flow(dir);
                    flow.stopped = None;
                    let buffered = std::mem::take(&mut flow.buffer);
                    let buffered_eos = std::mem::take(&mut flow.buffer_eos);
                    self.run_body(dir, stop, buffered, buffered_eos);
                }
            }
        }
    }

    /// The buffered body goes to the filter that holds the headers; when it continues, the
    /// headers resume after it and the body follows them.
    fn body_behind_held_headers(&mut self, dir: Dir, stop: usize) {
        let idx = self.flow(dir).order[stop];
        let flow = self.flow(dir);
        let buffered = std::mem::take(&mut flow.buffer);
        let eos = flow.buffer_eos;
        *self.body(dir) = buffered;
        let status = self.call(dir, Stage::Body, idx, eos);
        let body = std::mem::take(self.body(dir));
        if self.intercepted(dir, idx) {
            return;
        }
        if status == FilterStatus::Stop {
            self.flow(dir).buffer = body;
            return;
        }
        let flow = self.flow(dir);
        flow.stopped = None;
        flow.buffer_eos = false;
        // Trailers that arrived meanwhile go after the body, not right behind the headers.
        let trailers = flow.trailers.take();
        self.run_headers(dir, stop + 1);
        let flow = self.flow(dir);
        flow.trailers = trailers;
        if flow.ended || !flow.headers_forwarded {
            // A later filter holds the headers now: the body waits behind it.
            flow.buffer.extend_from_slice(&body);
            flow.buffer_eos |= eos;
        } else {
            self.run_body(dir, stop + 1, body, eos);
        }
    }

    fn over_limit(&mut self, dir: Dir) -> bool {
        if self.flow(dir).buffer.len() <= self.buffer_limit {
            return false;
        }
        match dir {
            Dir::Request => {
                let idx = self
                    .request
                    .stopped
                    .map_or(0, |(p, _)| self.request.order[p]);
                self.local_reply(
                    Dir::Request,
                    idx,
                    LocalResponse {
                        status: 413,
                        body: b"Payload Too Large".to_vec(),
                        details: "request_payload_too_large".into(),
                        ..LocalResponse::default()
                    },
                );
            }
            Dir::Response => {
                self.local_reply(
                    Dir::Response,
                    0,
                    LocalResponse {
                        status: 500,
                        body: b"Internal Server Error".to_vec(),
                        details: "response_payload_too_large".into(),
                        ..LocalResponse::default()
                    },
                );
            }
        }
        true
    }

    fn run_body(&mut self, dir: Dir, from: usize, chunk: Vec<u8>, eos: bool) {
        let n = self.flow(dir).order.len();
        let mut body = chunk;
        for pos in from..n {
            let idx = self.flow(dir).order[pos];
            *self.body(dir) = body;
            let status = self.call(dir, Stage::Body, idx, eos);
            body = std::mem::take(self.body(dir));
            if self.intercepted(dir, idx) {
                return;
            }
            if status == FilterStatus::Stop {
                let flow = self.flow(dir);
                flow.stopped = Some((pos, Stage::Body));
                flow.buffer = body;
                flow.buffer_eos = eos;
                self.over_limit(dir);
                return;
            }
        }
        let trailers_waiting = self.flow(dir).trailers.is_some();
        if !body.is_empty() || eos {
            self.outputs.push(match dir {
                Dir::Request => Output::RequestData {
                    data: body,
                    end_of_stream: eos,
                },
                Dir::Response => Output::ResponseData {
                    data: body,
                    end_of_stream: eos,
                },
            });
        }
        if eos {
            self.flow(dir).ended = true;
            if dir == Dir::Response {
                self.finish();
            }
        } else if trailers_waiting {
            self.flush_trailers(dir);
        }
    }

    fn on_trailers(&mut self, dir: Dir, trailers: Headers) {
        match dir {
            Dir::Request => self.data.request_trailers = Some(trailers.clone()),
            Dir::Response => self.data.response_trailers = Some(trailers.clone()),
        }
        self.flow(dir).trailers = Some(trailers);
        let stopped = self.flow(dir).stopped;
        match stopped {
            None => self.flush_trailers(dir),
            Some((stop, stage)) if self.buffers_body(dir, stop, stage) => {
                self.trailers_to_buffering_filter(dir, stop, stage);
            }
            // Held with the headers: the filter has not seen the body yet either.
            Some(_) => {}
        }
    }

    /// Whether the filter stopped at `stop` is buffering the body (a body `Stop`, or a
    /// headers `Stop` of a filter that still gets the body).
    fn buffers_body(&self, dir: Dir, stop: usize, stage: Stage) -> bool {
        let flow = match dir {
            Dir::Request => &self.request,
            Dir::Response => &self.response,
        };
        let allowed = flow
            .order
            .get(stop)
            .and_then(|&idx| self.filters.get(idx))
            .is_some_and(|f| f.body_while_headers_stopped());
        stage == Stage::Body || (stage == Stage::Headers && allowed)
    }

    /// Trailers end the stream: as Envoy does, they reach the filters up to the one buffering
    /// the body, whose trailers callback sees the whole body (and may replace it). When it
    /// continues, the body goes on, then the trailers through the rest of the chain.
    fn trailers_to_buffering_filter(&mut self, dir: Dir, stop: usize, stage: Stage) {
        for pos in 0..stop {
            let idx = self.flow(dir).order[pos];
            let _ = self.call(dir, Stage::Trailers, idx, true);
            if self.intercepted(dir, idx) {
                return;
            }
        }
        let idx = self.flow(dir).order[stop];
        let buffered = std::mem::take(&mut self.flow(dir).buffer);
        *self.body(dir) = buffered;
        let status = self.call(dir, Stage::Trailers, idx, true);
        let body = std::mem::take(self.body(dir));
        if self.intercepted(dir, idx) {
            return;
        }
        let flow = self.flow(dir);
        flow.trailers_from = stop + 1;
        if status == FilterStatus::Stop {
            flow.buffer = body;
            return;
        }
        flow.stopped = None;
        flow.buffer_eos = false;
        if stage == Stage::Headers {
            let trailers = flow.trailers.take();
            self.run_headers(dir, stop + 1);
            let flow = self.flow(dir);
            flow.trailers = trailers;
            if flow.ended || !flow.headers_forwarded {
                flow.buffer.extend_from_slice(&body);
                return;
            }
        }
        self.run_body(dir, stop + 1, body, false);
    }

    fn flush_trailers(&mut self, dir: Dir) {
        if self.flow(dir).trailers.take().is_none() {
            return;
        }
        let from = self.flow(dir).trailers_from;
        self.run_trailers(dir, from);
    }

    fn run_trailers(&mut self, dir: Dir, from: usize) {
        let n = self.flow(dir).order.len();
        for pos in from..n {
            let idx = self.flow(dir).order[pos];
            let status = self.call(dir, Stage::Trailers, idx, true);
            if self.intercepted(dir, idx) {
                return;
            }
            if status == FilterStatus::Stop {
                self.flow(dir).stopped = Some((pos, Stage::Trailers));
                return;
            }
        }
        let trailers = match dir {
            Dir::Request => self.data.request_trailers.clone(),
            Dir::Response => self.data.response_trailers.clone(),
        }
        .unwrap_or_default();
        self.flow(dir).ended = true;
        self.outputs.push(match dir {
            Dir::Request => Output::RequestTrailers(trailers),
            Dir::Response => Output::ResponseTrailers(trailers),
        });
        if dir == Dir::Response {
            self.finish();
        }
    }

    /// A filter asked to resume after an async event (or from its root context).
    fn after_async(&mut self, filter: usize) {
        let resume_request = std::mem::take(&mut self.data.resume_request);
        let resume_response = std::mem::take(&mut self.data.resume_response);
        let callouts = std::mem::take(&mut self.data.callouts);
        if !callouts.is_empty() {
            self.callouts.push((filter, callouts));
        }
        let dir = if self.response.stopped.is_some() {
            Dir::Response
        } else {
            Dir::Request
        };
        if self.intercepted(dir, filter) {
            return;
        }
        if resume_request {
            self.resume_dir(Dir::Request, filter);
        }
        if resume_response {
            self.resume_dir(Dir::Response, filter);
        }
    }

    fn resume_dir(&mut self, dir: Dir, filter: usize) {
        let Some((pos, stage)) = self.flow(dir).stopped else {
            return;
        };
        if self.flow(dir).order.get(pos) != Some(&filter) {
            return;
        }
        self.flow(dir).stopped = None;
        match stage {
            Stage::Headers => {
                // The buffered body goes to the filter that stopped first (iterate from
                // current filter), so run_headers hands it over from `pos`.
                self.run_headers_then_body_from(dir, pos);
            }
            Stage::Body => {
                let flow = self.flow(dir);
                let buffered = std::mem::take(&mut flow.buffer);
                let eos = std::mem::take(&mut flow.buffer_eos);
                self.run_body(dir, pos + 1, buffered, eos);
            }
            Stage::Trailers => self.run_trailers(dir, pos + 1),
        }
    }

    fn run_headers_then_body_from(&mut self, dir: Dir, pos: usize) {
        // run_headers(from) hands buffered data to position from - 1.
        self.run_headers(dir, pos + 1);
    }

    fn local_reply(&mut self, dir: Dir, idx: usize, response: LocalResponse) {
        if self.local_reply_sent || self.response.headers_forwarded {
            self.reset();
            return;
        }
        self.local_reply_sent = true;
        self.request.ended = true;
        self.request.stopped = None;
        self.request.buffer.clear();
        let mut headers = Headers::new();
        headers.add(":status", response.status.to_string());
        for (k, v) in response.headers.iter() {
            headers.add(k, v);
        }
        if !response.body.is_empty() && headers.get("content-type").is_none() {
            headers.add("content-type", "text/plain");
        }
        headers.replace("content-length", response.body.len().to_string());
        let n = self.filters.len();
        self.response = Flow {
            order: match dir {
                Dir::Request => (0..self.request_headers_reached.max(idx + 1).min(n))
                    .rev()
                    .collect(),
                // A local reply from the response side goes straight to the client.
                Dir::Response => Vec::new(),
            },
            ..Flow::default()
        };
        if n == 0 {
            self.response.order.clear();
        }
        self.data.response_headers = Some(headers);
        self.data.response_body.clear();
        let eos = response.body.is_empty();
        self.response.headers_eos = eos;
        self.in_local_reply = true;
        self.run_headers(Dir::Response, 0);
        if !eos && !self.done {
            self.on_data(Dir::Response, response.body, true);
        }
        self.in_local_reply = false;
    }
}

/// Makes streams from an ordered list of filter factories.
pub struct FilterChain {
    factories: Vec<std::rc::Rc<dyn FilterFactory>>,
    buffer_limit: usize,
}

impl FilterChain {
    pub fn new(factories: Vec<std::rc::Rc<dyn FilterFactory>>) -> FilterChain {
        FilterChain {
            factories,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
        }
    }

    pub fn buffer_limit(mut self, limit: usize) -> FilterChain {
        self.buffer_limit = limit;
        self
    }

    pub fn new_stream(&self, info: StreamInfo) -> HttpStream {
        let filters = self.factories.iter().map(|f| f.create_filter()).collect();
        let mut stream = HttpStream::new(filters, info);
        stream.set_buffer_limit(self.buffer_limit);
        stream
    }
}
