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

    /// Whether the request side takes no more input: its end went through, or a local
    /// response or reset ended it. A driver stops reading the client's body then (Envoy
    /// answers a local reply without reading the rest of the body).
    pub fn request_ended(&self) -> bool {
        self.request.ended || self.local_reply_sent || self.done
    }

    /// Whether the response has been sent completely (or the stream reset, or finished).
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
            // Held with the headers (that filter has not seen the body yet either): the
            // filters before it get the trailers now, as they got the body, and the rest when
            // it resumes (Envoy's `decodeTrailers` runs up to the filter that stopped all).
            Some((stop, _)) => {
                for pos in 0..stop {
                    let idx = self.flow(dir).order[pos];
                    let _ = self.call(dir, Stage::Trailers, idx, true);
                    if self.intercepted(dir, idx) {
                        return;
                    }
                }
                self.flow(dir).trailers_from = stop;
            }
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

#[cfg(test)]
mod tests {
    //! The iteration rules with scripted filters: each records its callbacks (name, phase,
    //! the body it saw, end of stream) in one shared log and answers what its script says.

    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::FilterStatus::{Continue, Stop};
    use super::*;
    use crate::callout::HttpCallout;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Ev {
        ReqHeaders,
        ReqBody,
        ReqTrailers,
        RespHeaders,
        RespBody,
        RespTrailers,
        Call,
    }

    type Log = Rc<RefCell<Vec<String>>>;
    type Act = Box<dyn FnMut(Ev, &mut StreamData, bool) -> FilterStatus>;

    struct Fake {
        name: &'static str,
        log: Log,
        body_while_stopped: bool,
        act: Act,
    }

    impl Fake {
        fn on(&mut self, ev: Ev, s: &mut StreamData, eos: bool) -> FilterStatus {
            let mut line = format!("{} {ev:?}", self.name);
            let body = match ev {
                Ev::ReqBody | Ev::ReqTrailers => Some(&s.request_body),
                Ev::RespBody | Ev::RespTrailers => Some(&s.response_body),
                _ => None,
            };
            if let Some(body) = body {
                line += &format!(" [{}]", String::from_utf8_lossy(body));
            }
            if eos && !matches!(ev, Ev::ReqTrailers | Ev::RespTrailers | Ev::Call) {
                line += " eos";
            }
            self.log.borrow_mut().push(line);
            (self.act)(ev, s, eos)
        }
    }

    impl HttpFilter for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn body_while_headers_stopped(&self) -> bool {
            self.body_while_stopped
        }
        fn request_headers(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
            self.on(Ev::ReqHeaders, s, eos)
        }
        fn request_body(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
            self.on(Ev::ReqBody, s, eos)
        }
        fn request_trailers(&mut self, s: &mut StreamData) -> FilterStatus {
            self.on(Ev::ReqTrailers, s, true)
        }
        fn response_headers(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
            self.on(Ev::RespHeaders, s, eos)
        }
        fn response_body(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
            self.on(Ev::RespBody, s, eos)
        }
        fn response_trailers(&mut self, s: &mut StreamData) -> FilterStatus {
            self.on(Ev::RespTrailers, s, true)
        }
        fn http_call_response(&mut self, s: &mut StreamData, token: u32, _: HttpCallResult) {
            self.log
                .borrow_mut()
                .push(format!("{} Call {token}", self.name));
            let _ = (self.act)(Ev::Call, s, false);
        }
        fn stream_done(&mut self, _: &mut StreamData) {
            self.log.borrow_mut().push(format!("{} Done", self.name));
        }
    }

    fn fake(
        name: &'static str,
        log: &Log,
        act: impl FnMut(Ev, &mut StreamData, bool) -> FilterStatus + 'static,
    ) -> Box<dyn HttpFilter> {
        Box::new(Fake {
            name,
            log: Rc::clone(log),
            body_while_stopped: false,
            act: Box::new(act),
        })
    }

    fn pass(name: &'static str, log: &Log) -> Box<dyn HttpFilter> {
        fake(name, log, |_, _, _| Continue)
    }

    fn chain(filters: Vec<Box<dyn HttpFilter>>) -> HttpStream {
        HttpStream::new(filters, StreamInfo::default())
    }

    /// A filter that stops at every `at` and lets everything else through.
    fn stopping_at(name: &'static str, log: &Log, at: Ev) -> Box<dyn HttpFilter> {
        fake(name, log, move |ev, _, _| match ev {
            ev if ev == at => Stop,
            _ => Continue,
        })
    }

    /// A filter that answers `response` itself at `at`, as a plugin refusing a request does.
    fn replying_at(
        name: &'static str,
        log: &Log,
        at: Ev,
        response: LocalResponse,
    ) -> Box<dyn HttpFilter> {
        fake(name, log, move |ev, s, _| {
            if ev == at {
                s.local_response = Some(response.clone());
                return Stop;
            }
            Continue
        })
    }

    /// `b` between two filters that let everything through: one that runs before it on the
    /// request and one that runs before it on the response.
    fn between_a_and_c(b: Box<dyn HttpFilter>, log: &Log) -> HttpStream {
        chain(vec![pass("a", log), b, pass("c", log)])
    }

    /// Filters a, b and c, where b stops at every `at`, and their log.
    fn b_stopping_at(at: Ev) -> (Log, HttpStream) {
        let log = Log::default();
        let s = between_a_and_c(stopping_at("b", &log, at), &log);
        (log, s)
    }

    /// The log since the last call.
    fn seen(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.borrow_mut())
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        Headers::from_pairs(pairs.iter().copied())
    }

    fn req() -> Headers {
        h(&[(":method", "POST"), (":path", "/")])
    }

    fn resp() -> Headers {
        h(&[(":status", "200")])
    }

    fn req_headers(headers: Headers, end_of_stream: bool) -> Output {
        Output::RequestHeaders {
            headers,
            end_of_stream,
        }
    }

    fn req_data(data: &str, end_of_stream: bool) -> Output {
        Output::RequestData {
            data: data.into(),
            end_of_stream,
        }
    }

    fn resp_headers(headers: Headers, end_of_stream: bool) -> Output {
        Output::ResponseHeaders {
            headers,
            end_of_stream,
        }
    }

    fn resp_data(data: &str, end_of_stream: bool) -> Output {
        Output::ResponseData {
            data: data.into(),
            end_of_stream,
        }
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn request_phases_run_in_order_and_response_phases_in_reverse() {
        let log = Log::default();
        let mut s = chain(vec![pass("a", &log), pass("b", &log), pass("c", &log)]);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), false);
        s.request_trailers(h(&[("x-t", "1")]));
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "c ReqHeaders",
                "a ReqBody [12]",
                "b ReqBody [12]",
                "c ReqBody [12]",
                "a ReqBody [34]",
                "b ReqBody [34]",
                "c ReqBody [34]",
                "a ReqTrailers []",
                "b ReqTrailers []",
                "c ReqTrailers []",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(req(), false),
                req_data("12", false),
                req_data("34", false),
                Output::RequestTrailers(h(&[("x-t", "1")])),
            ]
        );
        assert!(s.request_ended());
        assert!(!s.is_complete());
        assert!(!s.is_paused());

        s.response_headers(resp(), false);
        s.response_data(b"xy".to_vec(), false);
        s.response_trailers(h(&[("grpc-status", "0")]));
        assert_eq!(
            seen(&log),
            [
                "c RespHeaders",
                "b RespHeaders",
                "a RespHeaders",
                "c RespBody [xy]",
                "b RespBody [xy]",
                "a RespBody [xy]",
                "c RespTrailers []",
                "b RespTrailers []",
                "a RespTrailers []",
                // The response's end finishes the stream.
                "a Done",
                "b Done",
                "c Done",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                resp_headers(resp(), false),
                resp_data("xy", false),
                Output::ResponseTrailers(h(&[("grpc-status", "0")])),
            ]
        );
        assert!(s.is_complete());
        assert_eq!((s.data().request_bytes, s.data().response_bytes), (4, 2));
        // Once only.
        s.finish();
        assert_eq!(seen(&log), NONE);
    }

    #[test]
    fn end_of_stream_on_the_headers_ends_the_direction_there() {
        let log = Log::default();
        let mut s = chain(vec![pass("a", &log), pass("b", &log)]);
        s.request_headers(req(), true);
        assert!(s.request_ended());
        assert_eq!(s.take_outputs(), [req_headers(req(), true)]);
        // Nothing more is taken on the request side.
        s.request_data(b"late".to_vec(), true);
        s.request_trailers(h(&[("x-t", "1")]));
        assert_eq!(s.take_outputs(), []);
        assert_eq!(s.data().request_bytes, 0);
        assert!(!s.is_complete());

        s.response_headers(resp(), true);
        assert_eq!(s.take_outputs(), [resp_headers(resp(), true)]);
        assert!(s.is_complete());
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders eos",
                "b ReqHeaders eos",
                "b RespHeaders eos",
                "a RespHeaders eos",
                "a Done",
                "b Done",
            ]
        );
        // After the end, every input is ignored.
        s.response_data(b"x".to_vec(), true);
        assert_eq!(s.take_outputs(), []);
        assert_eq!(seen(&log), NONE);
    }

    #[test]
    fn each_filter_sees_what_the_one_before_it_changed() {
        let log = Log::default();
        let a = fake("a", &log, |ev, s, _| {
            match ev {
                Ev::ReqHeaders => {
                    if let Some(headers) = s.request_headers.as_mut() {
                        headers.add("x-a", "1");
                    }
                }
                Ev::ReqBody => s.request_body.make_ascii_uppercase(),
                Ev::RespBody => s.response_body.push(b'a'),
                _ => {}
            }
            Continue
        });
        let b = fake("b", &log, |ev, s, _| {
            match ev {
                Ev::ReqHeaders => {
                    let saw = s.request_headers.as_ref().and_then(|h| h.get("x-a"));
                    assert_eq!(saw, Some(b"1".as_slice()));
                }
                Ev::ReqBody => s.request_body.push(b'b'),
                Ev::RespBody => s.response_body.push(b'b'),
                _ => {}
            }
            Continue
        });
        let mut s = chain(vec![a, b]);
        s.request_headers(req(), false);
        s.request_data(b"xy".to_vec(), true);
        s.response_headers(resp(), false);
        s.response_data(b"r".to_vec(), true);
        let mut sent = req();
        sent.add("x-a", "1");
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(sent, false),
                req_data("XYb", true),
                resp_headers(resp(), false),
                // Response order: b, then a.
                resp_data("rba", true),
            ]
        );
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqBody [xy] eos",
                "b ReqBody [XY] eos",
                "b RespHeaders",
                "a RespHeaders",
                "b RespBody [r] eos",
                "a RespBody [rb] eos",
                "a Done",
                "b Done",
            ]
        );
    }

    /// Envoy's `StopAllIterationAndBuffer` (what a proxy-wasm headers `Pause` maps to without
    /// `allow_on_headers_stop_iteration`): the headers wait, the body is buffered behind
    /// them, and on resume the buffered body goes first to the filter that stopped
    /// (`iterate_from_current_filter_`), then on.
    #[test]
    fn a_headers_stop_holds_the_headers_and_buffers_the_body_for_the_filter_that_stopped() {
        let (log, mut s) = b_stopping_at(Ev::ReqHeaders);
        s.request_headers(req(), false);
        assert_eq!(seen(&log), ["a ReqHeaders", "b ReqHeaders"]);
        assert_eq!(s.take_outputs(), []);
        assert!(s.is_paused());
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), true);
        // The filters before the stop see the body as it arrives; nothing goes on.
        assert_eq!(seen(&log), ["a ReqBody [12]", "a ReqBody [34] eos"]);
        assert_eq!(s.take_outputs(), []);
        assert!(!s.request_ended());

        // Only the filter that stopped can resume.
        s.resume(0);
        s.resume(2);
        s.resume(7);
        assert_eq!(seen(&log), NONE);
        assert_eq!(s.take_outputs(), []);
        assert!(s.is_paused());

        s.resume(1);
        assert_eq!(
            seen(&log),
            [
                "c ReqHeaders",
                "b ReqBody [1234] eos",
                "c ReqBody [1234] eos"
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [req_headers(req(), false), req_data("1234", true)]
        );
        assert!(!s.is_paused());
        assert!(s.request_ended());
    }

    /// A filter that stopped for an HTTP call resumes from its answer; the call is handed
    /// to the driver with the index of the filter that made it.
    #[test]
    fn a_filter_resumes_from_the_answer_to_its_http_call() {
        let log = Log::default();
        let call = HttpCallout {
            token: 7,
            upstream: "authz".into(),
            headers: h(&[(":path", "/check")]),
            body: Vec::new(),
            trailers: Headers::new(),
            timeout: Some(Duration::from_millis(500)),
        };
        let made = call.clone();
        let b = fake("b", &log, move |ev, s, _| match ev {
            Ev::ReqHeaders => {
                s.callouts.http.push(made.clone());
                Stop
            }
            Ev::Call => {
                s.resume_request = true;
                Continue
            }
            _ => Continue,
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), true);
        assert_eq!(
            s.take_callouts(),
            [(
                1,
                Callouts {
                    http: vec![call],
                    ..Callouts::default()
                }
            )]
        );
        assert_eq!(s.take_callouts(), []);
        assert_eq!(s.take_outputs(), []);
        assert!(!s.request_ended());
        s.http_call_response(1, 7, HttpCallResult::Failed);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders eos",
                "b ReqHeaders eos",
                "b Call 7",
                "c ReqHeaders eos"
            ]
        );
        assert_eq!(s.take_outputs(), [req_headers(req(), true)]);
        assert!(s.request_ended());
        assert!(!s.is_paused());
    }

    /// Envoy's `StopIterationAndBuffer` on a body, as proxy-wasm hosts present it: the filter
    /// is called again with everything buffered so far (the running total), and its
    /// `Continue` sends the whole buffer on.
    #[test]
    fn a_body_stop_buffers_and_calls_the_filter_again_with_the_running_total() {
        let log = Log::default();
        let b = fake("b", &log, |ev, _, eos| match ev {
            Ev::ReqBody if !eos => Stop,
            _ => Continue,
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        assert_eq!(s.take_outputs(), [req_headers(req(), false)]);
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), false);
        assert_eq!(s.take_outputs(), []);
        assert!(s.is_paused());
        s.request_data(b"5".to_vec(), true);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "c ReqHeaders",
                "a ReqBody [12]",
                "b ReqBody [12]",
                "a ReqBody [34]",
                "b ReqBody [1234]",
                "a ReqBody [5] eos",
                "b ReqBody [12345] eos",
                "c ReqBody [12345] eos",
            ]
        );
        assert_eq!(s.take_outputs(), [req_data("12345", true)]);
        assert!(s.request_ended());
    }

    /// A resumed body goes on from the next filter: the one that buffered it has seen it.
    #[test]
    fn a_body_resumed_from_a_call_goes_on_from_the_next_filter() {
        let log = Log::default();
        let mut answered = false;
        let b = fake("b", &log, move |ev, s, _| match ev {
            Ev::ReqBody if !answered => Stop,
            Ev::Call => {
                answered = true;
                s.resume_request = true;
                Continue
            }
            _ => Continue,
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), false);
        seen(&log);
        s.take_outputs();
        s.http_call_response(1, 3, HttpCallResult::Failed);
        assert_eq!(seen(&log), ["b Call 3", "c ReqBody [1234]"]);
        assert_eq!(s.take_outputs(), [req_data("1234", false)]);
        assert!(!s.is_paused());
        s.request_data(b"5".to_vec(), true);
        assert_eq!(
            seen(&log),
            [
                "a ReqBody [5] eos",
                "b ReqBody [5] eos",
                "c ReqBody [5] eos"
            ]
        );
        assert_eq!(s.take_outputs(), [req_data("5", true)]);
    }

    /// Trailers end a buffered body: they reach the filters up to the one buffering (which
    /// sees the whole body then), and on its `Continue` the body goes on, then the trailers,
    /// as trailers (Envoy: `commonContinue` → `doData(end_stream = false)`, `doTrailers`).
    #[test]
    fn trailers_behind_a_buffering_filter_follow_the_body_as_trailers() {
        let (log, mut s) = b_stopping_at(Ev::ReqBody);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        seen(&log);
        s.take_outputs();
        s.request_trailers(h(&[("x-t", "1")]));
        assert_eq!(
            seen(&log),
            [
                "a ReqTrailers []",
                "b ReqTrailers [12]",
                "c ReqBody [12]",
                "c ReqTrailers []",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                req_data("12", false),
                Output::RequestTrailers(h(&[("x-t", "1")]))
            ]
        );
        assert!(s.request_ended());
    }

    /// The buffer limit (Envoy's `requestDataTooLarge`: over the limit, not at it): a body
    /// buffered to exactly the limit waits; one byte more answers 413, through the response
    /// phases of every filter that saw the request.
    #[test]
    fn a_request_buffered_past_the_limit_gets_413_and_not_at_the_limit() {
        let (log, mut s) = b_stopping_at(Ev::ReqBody);
        s.set_buffer_limit(4);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), false);
        assert!(!s.local_reply_sent());
        assert_eq!(s.take_outputs(), [req_headers(req(), false)]);
        seen(&log);
        s.request_data(b"5".to_vec(), false);
        assert!(s.local_reply_sent());
        assert_eq!(
            seen(&log),
            [
                // The filter before the stop saw the byte; the buffering one never sees
                // more than the limit.
                "a ReqBody [5]",
                "c RespHeaders",
                "b RespHeaders",
                "a RespHeaders",
                "c RespBody [Payload Too Large] eos",
                "b RespBody [Payload Too Large] eos",
                "a RespBody [Payload Too Large] eos",
                "a Done",
                "b Done",
                "c Done",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                resp_headers(
                    h(&[
                        (":status", "413"),
                        ("content-type", "text/plain"),
                        ("content-length", "17")
                    ]),
                    false
                ),
                resp_data("Payload Too Large", true),
            ]
        );
        assert!(s.request_ended());
        assert!(s.is_complete());
        // The rest of the body is not taken.
        s.request_data(b"6".to_vec(), true);
        assert_eq!(s.take_outputs(), []);
        assert_eq!(seen(&log), NONE);
    }

    /// Envoy's `responseDataTooLarge` once the response headers went out: nothing can be
    /// answered any more, the stream is reset.
    #[test]
    fn a_response_buffered_past_the_limit_after_its_headers_went_out_is_reset() {
        let log = Log::default();
        let b = stopping_at("b", &log, Ev::RespBody);
        let mut s = chain(vec![pass("a", &log), b]);
        s.set_buffer_limit(3);
        s.request_headers(req(), true);
        s.response_headers(resp(), false);
        s.response_data(b"123".to_vec(), false);
        assert_eq!(
            s.take_outputs(),
            [req_headers(req(), true), resp_headers(resp(), false)]
        );
        assert!(!s.is_complete());
        seen(&log);
        s.response_data(b"4".to_vec(), false);
        assert_eq!(s.take_outputs(), [Output::Reset]);
        assert_eq!(seen(&log), ["a Done", "b Done"]);
        assert!(s.is_complete());
        assert!(s.request_ended());
        assert!(!s.local_reply_sent());
    }

    /// A local reply from a request phase: later filters never run; the reply passes back
    /// through the filters that saw the request, from the one that sent it to the first;
    /// `content-type: text/plain` for a body without one, the real `content-length`.
    #[test]
    fn a_local_reply_skips_later_filters_and_passes_back_through_those_that_saw_the_request() {
        let log = Log::default();
        let reply = LocalResponse {
            status: 403,
            headers: h(&[("x-why", "b"), ("content-length", "99")]),
            body: b"no".to_vec(),
            ..LocalResponse::default()
        };
        let b = replying_at("b", &log, Ev::ReqHeaders, reply);
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "b RespHeaders",
                "a RespHeaders",
                "b RespBody [no] eos",
                "a RespBody [no] eos",
                "a Done",
                "b Done",
                "c Done",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                resp_headers(
                    h(&[
                        (":status", "403"),
                        ("x-why", "b"),
                        ("content-length", "2"),
                        ("content-type", "text/plain"),
                    ]),
                    false
                ),
                resp_data("no", true),
            ]
        );
        assert!(s.local_reply_sent());
        assert!(s.request_ended());
        assert!(s.is_complete());
        assert!(!s.is_paused());
        // The client's body and an upstream answer that raced it are dropped.
        s.request_data(b"body".to_vec(), true);
        s.response_headers(resp(), true);
        assert_eq!(s.take_outputs(), []);
        assert_eq!(seen(&log), NONE);
    }

    #[test]
    fn a_local_reply_without_a_body_ends_at_its_headers_and_keeps_the_filters_content_type() {
        let log = Log::default();
        let reply = LocalResponse {
            status: 429,
            ..LocalResponse::default()
        };
        let a = replying_at("a", &log, Ev::ReqHeaders, reply);
        let mut s = chain(vec![a, pass("b", &log)]);
        s.request_headers(req(), true);
        assert_eq!(
            s.take_outputs(),
            [resp_headers(
                h(&[(":status", "429"), ("content-length", "0")]),
                true
            )]
        );
        assert_eq!(
            seen(&log),
            ["a ReqHeaders eos", "a RespHeaders eos", "a Done", "b Done"]
        );

        let reply = LocalResponse {
            status: 400,
            headers: h(&[("content-type", "application/json")]),
            body: b"{}".to_vec(),
            ..LocalResponse::default()
        };
        let a = replying_at("a", &log, Ev::ReqHeaders, reply);
        let mut s = chain(vec![a]);
        s.request_headers(req(), false);
        assert_eq!(
            s.take_outputs(),
            [
                resp_headers(
                    h(&[
                        (":status", "400"),
                        ("content-type", "application/json"),
                        ("content-length", "2"),
                    ]),
                    false
                ),
                resp_data("{}", true),
            ]
        );
    }

    /// Envoy's `sendLocalReply` while the response is being encoded, before its headers
    /// reached the client: the reply goes straight to the client, past every filter.
    #[test]
    fn a_local_reply_from_a_response_phase_goes_straight_to_the_client() {
        let log = Log::default();
        let reply = LocalResponse {
            status: 502,
            body: b"bad".to_vec(),
            ..LocalResponse::default()
        };
        let b = replying_at("b", &log, Ev::RespHeaders, reply);
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), true);
        s.take_outputs();
        seen(&log);
        s.response_headers(resp(), false);
        assert_eq!(
            seen(&log),
            [
                "c RespHeaders",
                "b RespHeaders",
                "a Done",
                "b Done",
                "c Done"
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                resp_headers(
                    h(&[
                        (":status", "502"),
                        ("content-type", "text/plain"),
                        ("content-length", "3"),
                    ]),
                    false
                ),
                resp_data("bad", true),
            ]
        );
        assert!(s.is_complete());
        s.response_data(b"upstream".to_vec(), true);
        assert_eq!(s.take_outputs(), []);
    }

    /// Once the response headers went out, a local reply can only reset the stream.
    #[test]
    fn a_local_reply_after_the_response_headers_went_out_resets_the_stream() {
        let log = Log::default();
        let reply = LocalResponse {
            status: 500,
            ..LocalResponse::default()
        };
        let a = replying_at("a", &log, Ev::RespBody, reply);
        let mut s = chain(vec![a]);
        s.request_headers(req(), true);
        s.response_headers(resp(), false);
        s.response_data(b"x".to_vec(), false);
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(req(), true),
                resp_headers(resp(), false),
                Output::Reset
            ]
        );
        assert!(!s.local_reply_sent());
        assert!(s.is_complete());
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders eos",
                "a RespHeaders",
                "a RespBody [x]",
                "a Done"
            ]
        );
    }

    #[test]
    fn a_reset_from_a_filter_ends_both_directions() {
        let log = Log::default();
        let b = fake("b", &log, |ev, s, _| {
            if ev == Ev::ReqBody {
                s.reset = true;
            }
            Continue
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        s.request_data(b"x".to_vec(), false);
        assert_eq!(s.take_outputs(), [req_headers(req(), false), Output::Reset]);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "c ReqHeaders",
                "a ReqBody [x]",
                "b ReqBody [x]",
                "a Done",
                "b Done",
                "c Done",
            ]
        );
        assert!(s.request_ended() && s.is_complete());
        s.request_data(b"y".to_vec(), true);
        s.response_headers(resp(), true);
        assert_eq!(s.take_outputs(), []);
    }

    /// `finish` (the client or upstream went away) ends the stream once, for every filter,
    /// and nothing runs after it.
    #[test]
    fn finish_ends_the_stream_once_and_stops_all_input() {
        let log = Log::default();
        let mut s = chain(vec![pass("a", &log), pass("b", &log)]);
        s.request_headers(req(), false);
        assert!(!s.request_ended());
        assert!(!s.is_complete());
        s.finish();
        s.finish();
        assert!(s.request_ended());
        assert!(s.is_complete());
        s.request_data(b"x".to_vec(), true);
        s.response_headers(resp(), true);
        s.http_call_response(0, 1, HttpCallResult::Failed);
        assert_eq!(
            seen(&log),
            ["a ReqHeaders", "b ReqHeaders", "a Done", "b Done"]
        );
        assert_eq!(s.take_outputs(), [req_headers(req(), false)]);
    }

    /// A response headers stop holds them and buffers the response body for that filter;
    /// the filters after it in response order (earlier in the chain) wait.
    #[test]
    fn a_response_headers_stop_buffers_the_response_body_until_resumed() {
        let (log, mut s) = b_stopping_at(Ev::RespHeaders);
        s.request_headers(req(), true);
        s.take_outputs();
        seen(&log);
        s.response_headers(resp(), false);
        s.response_data(b"ab".to_vec(), false);
        s.response_data(b"cd".to_vec(), true);
        assert_eq!(s.take_outputs(), []);
        assert_eq!(
            seen(&log),
            [
                "c RespHeaders",
                "b RespHeaders",
                "c RespBody [ab]",
                "c RespBody [cd] eos"
            ]
        );
        s.resume(1);
        assert_eq!(
            seen(&log),
            [
                "a RespHeaders",
                "b RespBody [abcd] eos",
                "a RespBody [abcd] eos",
                "a Done",
                "b Done",
                "c Done",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [resp_headers(resp(), false), resp_data("abcd", true)]
        );
        assert!(s.is_complete());
    }

    /// Envoy's `allow_on_headers_stop_iteration`: the filter holding the headers still gets
    /// the body (the running total); its body `Continue` sends the headers on, then the body.
    #[test]
    fn with_body_while_headers_stopped_the_holding_filter_gets_the_body_and_releases_both() {
        let log = Log::default();
        let b = Box::new(Fake {
            name: "b",
            log: Rc::clone(&log),
            body_while_stopped: true,
            act: Box::new(|ev, s, eos| match ev {
                Ev::ReqHeaders => Stop,
                Ev::ReqBody if !eos => Stop,
                Ev::ReqBody => {
                    if let Some(headers) = s.request_headers.as_mut() {
                        headers.replace("content-length", "4");
                    }
                    Continue
                }
                _ => Continue,
            }),
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        assert_eq!(s.take_outputs(), []);
        s.request_data(b"34".to_vec(), true);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqBody [12]",
                "b ReqBody [12]",
                "a ReqBody [34] eos",
                "b ReqBody [1234] eos",
                "c ReqHeaders",
                "c ReqBody [1234] eos",
            ]
        );
        let mut sent = req();
        sent.add("content-length", "4");
        assert_eq!(
            s.take_outputs(),
            [req_headers(sent, false), req_data("1234", true)]
        );
        assert!(s.request_ended());
    }

    /// Trailers that arrive while a filter holds the headers (and so the body): the filters
    /// before it get them at once, as they got the body; on resume the body goes on from the
    /// filter that stopped, then the trailers from it.
    #[test]
    fn trailers_behind_held_headers_reach_the_earlier_filters_at_once_the_rest_on_resume() {
        let (log, mut s) = b_stopping_at(Ev::ReqHeaders);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.request_trailers(h(&[("x-t", "1")]));
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqBody [12]",
                "a ReqTrailers []"
            ]
        );
        assert_eq!(s.take_outputs(), []);
        assert!(!s.request_ended());
        s.resume(1);
        assert_eq!(
            seen(&log),
            [
                "c ReqHeaders",
                "b ReqBody [12]",
                "c ReqBody [12]",
                "b ReqTrailers []",
                "c ReqTrailers []",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(req(), false),
                req_data("12", false),
                Output::RequestTrailers(h(&[("x-t", "1")])),
            ]
        );
        assert!(s.request_ended());

        // Without a body: the trailers follow the headers.
        let log = Log::default();
        let b = stopping_at("b", &log, Ev::ReqHeaders);
        let mut s = chain(vec![pass("a", &log), b]);
        s.request_headers(req(), false);
        s.request_trailers(h(&[("x-t", "2")]));
        s.resume(1);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqTrailers []",
                "b ReqTrailers []"
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(req(), false),
                Output::RequestTrailers(h(&[("x-t", "2")])),
            ]
        );
    }
}
