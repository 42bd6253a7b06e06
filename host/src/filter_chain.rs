//! The boundary between the network (the `gateway` binary, or a test) and the filters: a
//! sans-IO HTTP filter manager with Envoy's iteration rules.
//!
//! The driver feeds one [`HttpStream`] per request with what the client and the upstream sent
//! (`request_headers`, `request_data`, …, `response_headers`, …), delivers the answers to the
//! calls filters made ([`HttpStream::take_callouts`] → [`HttpStream::http_call_response`]),
//! and forwards what [`HttpStream::take_outputs`] yields: request parts for the upstream,
//! response parts for the client, or a reset. It stops reading a peer while
//! [`HttpStream::request_read_disabled`] (or `response_read_disabled`) says so: a filter
//! holds data past the watermark.
//!
//! The rules are those of Envoy's `FilterManager` (`source/common/http/filter_manager.cc`),
//! which proxy-wasm modules are written against:
//! - Request phases run filters in order, response phases in reverse order.
//! - Every filter keeps its own iteration state per direction: headers stopped with
//!   [`FilterStatus::StopIteration`] hold only the headers (later frames still reach that
//!   filter); `StopAllIteration*` hold everything behind the filter; a body stop holds the
//!   data at the filter until it continues. Several filters can hold at once, each at its
//!   own place.
//! - A direction has one buffer (Envoy's `buffered_request_data_`): what a stopped filter
//!   holds. `…AndBuffer` past the buffer limit (1 MiB, Envoy's default) answers 413 (request)
//!   or 500 (response); `…AndWatermark` instead pushes back on the peer until the buffer drains.
//! - A filter that resumes after `StopAllIteration*` is handed what was held behind it first;
//!   trailers follow the body as trailers.
//! - A local response ends the request side and passes through the response phases of the
//!   filters that saw the request; once the response has started through the filters it goes
//!   straight to the client, and once its head went out the stream is reset. A non-empty body
//!   gets `content-type: text/plain` unless the filter gave one.

use std::borrow::Cow;
use std::cell::{Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::SystemTime;

use crate::callout::{Callouts, GrpcInbound, HttpCallResult};
use crate::headers::Headers;

/// What a filter callback decided: Envoy's `FilterHeadersStatus`, `FilterDataStatus` and
/// `FilterTrailersStatus` in one type. A headers callback answers `Continue`,
/// `StopIteration` or `StopAllIteration*`; a body callback `Continue` or `StopIteration*`;
/// a trailers callback `Continue` or `StopIteration`. Another answer counts as the nearest
/// one of its callback's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterStatus {
    Continue,
    /// Headers: hold the headers; the body and the trailers still reach this filter.
    /// Trailers: hold them.
    StopIteration,
    /// Headers: hold the headers and buffer everything behind them (413 or 500 past the
    /// buffer limit) until this filter continues.
    StopAllIterationAndBuffer,
    /// Headers: as `StopAllIterationAndBuffer`, but past the limit the peer is pushed back on
    /// instead of answered. What a proxy-wasm module's pause from headers means in Envoy.
    StopAllIterationAndWatermark,
    /// Body: keep the data here; the next callback sees everything kept so far.
    StopIterationAndBuffer,
    /// Body: keep the data here, pushing back on the peer past the limit.
    StopIterationAndWatermark,
    /// Body: stop without keeping the data (the filter took it).
    StopIterationNoBuffer,
}

/// Facts about the stream that filters can read as properties.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// The client (`source.address` is `IP:port`).
    pub source: SocketAddr,
    /// The listener address that accepted the connection.
    pub destination: SocketAddr,
    /// `HTTP/1.1` or `HTTP/2`: borrowed, so that naming it costs a stream no allocation.
    pub protocol: Cow<'static, str>,
    pub route_name: String,
    pub cluster_name: String,
    pub request_id: String,
    pub connection_id: u64,
    /// The SNI the client asked for on a TLS connection (Envoy's
    /// `connection.requested_server_name`); empty otherwise.
    pub requested_server_name: String,
    pub start: SystemTime,
}

impl Default for StreamInfo {
    fn default() -> Self {
        StreamInfo {
            source: SocketAddr::from((Ipv4Addr::LOCALHOST, 40000)),
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 8000)),
            protocol: Cow::Borrowed("HTTP/1.1"),
            route_name: String::new(),
            cluster_name: String::new(),
            request_id: String::new(),
            connection_id: 0,
            requested_server_name: String::new(),
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

/// Everything a filter callback can see and change about its stream ([`StreamFields`]),
/// boxed: a filter's instance takes it in for a callback and hands it back by swapping this
/// pointer with a spare of its own, instead of moving the fields (over 500 bytes) in and out
/// and building and dropping an empty one around every callback.
#[derive(Clone, Debug, Default)]
pub struct StreamData(Box<StreamFields>);

impl StreamData {
    pub fn new(info: StreamInfo) -> StreamData {
        StreamData(Box::new(StreamFields {
            info,
            ..StreamFields::default()
        }))
    }
}

impl Deref for StreamData {
    type Target = StreamFields;

    fn deref(&self) -> &StreamFields {
        &self.0
    }
}

impl DerefMut for StreamData {
    fn deref_mut(&mut self) -> &mut StreamFields {
        &mut self.0
    }
}

/// The fields of [`StreamData`].
#[derive(Clone, Debug, Default)]
pub struct StreamFields {
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
    /// What stopped filters hold of the request (Envoy's `buffered_request_data_`): `Some`
    /// once a filter buffered, even when drained since. It lives with the stream's data, not
    /// in the chain, so that a module holding the body buffered reaches it from its other
    /// contexts between the stream's steps, as Envoy's `modifyDecodingBuffer`.
    pub(crate) request_buffered: Option<Vec<u8>>,
    pub(crate) response_buffered: Option<Vec<u8>>,
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
    /// The stream's data, shared with the filter when its stream is made: a module may act on
    /// its stream from outside the stream's callbacks (its root context's `on_tick`, another
    /// stream's callback, after `proxy_set_effective_context`).
    fn share(&mut self, _stream: &Rc<RefCell<StreamData>>) {}
    fn request_headers(&mut self, stream: &mut StreamData, end_of_stream: bool) -> FilterStatus;
    /// `stream.request_body` holds the chunk, or, while this filter buffers
    /// ([`FilterStatus::StopIterationAndBuffer`] last time), everything buffered so far.
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

impl Output {
    fn headers(dir: Dir, headers: Headers, end_of_stream: bool) -> Output {
        match dir {
            Dir::Request => Output::RequestHeaders {
                headers,
                end_of_stream,
            },
            Dir::Response => Output::ResponseHeaders {
                headers,
                end_of_stream,
            },
        }
    }

    fn data(dir: Dir, data: Vec<u8>, end_of_stream: bool) -> Output {
        match dir {
            Dir::Request => Output::RequestData {
                data,
                end_of_stream,
            },
            Dir::Response => Output::ResponseData {
                data,
                end_of_stream,
            },
        }
    }
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

/// Where a filter's iteration stands in one direction (Envoy's `IterationState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Iteration {
    #[default]
    Continue,
    /// Stopped by this filter's last callback; later frames still reach it.
    StopSingle,
    /// Stopped at the headers; everything behind them waits in the buffer.
    StopAllBuffer,
    StopAllWatermark,
}

/// One filter's state in one direction.
#[derive(Clone, Copy, Debug, Default)]
struct FilterState {
    iteration: Iteration,
    headers_continued: bool,
    /// Request side: the filter had the request headers, so it has a context and takes part
    /// in the response, local replies included (Envoy's Wasm filter passes a stream it has no
    /// context for straight through).
    processed_headers: bool,
    /// This filter had the end of the direction: later data is not for it.
    end_stream: bool,
    /// Its last body callback kept the data: new data joins the buffer and it sees the whole
    /// (Envoy's Wasm filter adds the chunk to the buffer before the callback).
    buffering: bool,
    /// Resuming after a stop-all: the resumed frames start at this filter itself.
    iterate_from_current: bool,
}

impl FilterState {
    fn stopped_all(&self) -> bool {
        matches!(
            self.iteration,
            Iteration::StopAllBuffer | Iteration::StopAllWatermark
        )
    }
}

#[derive(Debug, Default)]
struct Flow {
    /// Filter indices in iteration order.
    order: Vec<usize>,
    /// Per filter index.
    states: Vec<FilterState>,
    /// Buffering past the limit pushes back on the peer instead of failing.
    streaming: bool,
    above_watermark: bool,
    /// The peer sent the whole direction.
    complete: bool,
    headers_forwarded: bool,
    /// The end of the direction went out.
    ended: bool,
}

impl Flow {
    fn new(order: Vec<usize>, filters: usize) -> Flow {
        Flow {
            order,
            states: vec![FilterState::default(); filters],
            ..Flow::default()
        }
    }

    fn position(&self, idx: usize) -> Option<usize> {
        self.order.iter().position(|&i| i == idx)
    }
}

/// A chain of filter instances for one stream.
pub struct HttpStream {
    filters: Vec<Box<dyn HttpFilter>>,
    /// Borrowed only for the length of one step here (a filter callback at most): between
    /// steps a filter's module may reach it from another context ([`HttpFilter::share`]).
    data: Rc<RefCell<StreamData>>,
    request: Flow,
    response: Flow,
    outputs: Vec<Output>,
    callouts: Vec<(usize, Callouts)>,
    local_reply_sent: bool,
    in_local_reply: bool,
    /// The response (the upstream's or a local one) entered the filters whole: request data
    /// is of no use any more (Envoy's `local_complete_`).
    local_complete: bool,
    /// Bumped by every local reply and reset: an iteration that sees it change stops.
    epoch: u64,
    buffer_limit: usize,
    done: bool,
}

/// Envoy's default connection buffer limit.
pub const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

impl HttpStream {
    pub fn new(mut filters: Vec<Box<dyn HttpFilter>>, info: StreamInfo) -> HttpStream {
        let n = filters.len();
        let data = Rc::new(RefCell::new(StreamData::new(info)));
        for f in filters.iter_mut() {
            f.share(&data);
        }
        HttpStream {
            filters,
            data,
            request: Flow::new((0..n).collect(), n),
            response: Flow::new((0..n).rev().collect(), n),
            outputs: Vec::new(),
            callouts: Vec::new(),
            local_reply_sent: false,
            in_local_reply: false,
            local_complete: false,
            epoch: 0,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            done: false,
        }
    }

    pub fn set_buffer_limit(&mut self, limit: usize) {
        self.buffer_limit = limit;
    }

    pub fn data(&self) -> Ref<'_, StreamData> {
        self.data.borrow()
    }

    /// Sets a property filters read with `get_property` (the data plane's own facts, e.g. the
    /// route's regex captures), before the request starts. `path` joins segments with `\0`.
    pub fn set_property(&mut self, path: &str, value: Vec<u8>) {
        self.data
            .borrow_mut()
            .properties
            .insert(path.to_owned(), value);
    }

    /// What to send on, in order.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Calls filters made, each with the index of the filter to deliver the answer to.
    pub fn take_callouts(&mut self) -> Vec<(usize, Callouts)> {
        std::mem::take(&mut self.callouts)
    }

    /// The proxy-wasm context id filter `filter` has in its instance, once it has one: how a
    /// driver finds the stream a module acts on from its root context or another stream.
    pub fn context_id(&self, filter: usize) -> Option<u32> {
        self.filters.get(filter).and_then(|f| f.context_id())
    }

    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }

    /// Whether a filter holds either direction.
    pub fn is_paused(&self) -> bool {
        !self.done
            && [&self.request, &self.response]
                .iter()
                .any(|f| f.states.iter().any(|s| s.iteration != Iteration::Continue))
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

    /// Whether the driver should stop reading the client: a filter holds more of the request
    /// than the buffer limit with a watermark stop (Envoy's `readDisable`), until it drains
    /// to half the limit.
    pub fn request_read_disabled(&self) -> bool {
        self.request.above_watermark && !self.request_ended()
    }

    /// The same for the upstream's response.
    pub fn response_read_disabled(&self) -> bool {
        self.response.above_watermark && !self.is_complete()
    }

    fn flow(&mut self, dir: Dir) -> &mut Flow {
        match dir {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        }
    }

    fn state(&mut self, dir: Dir, idx: usize) -> &mut FilterState {
        let flow = self.flow(dir);
        &mut flow.states[idx]
    }

    fn body(&self, dir: Dir) -> RefMut<'_, Vec<u8>> {
        RefMut::map(self.data.borrow_mut(), |d| match dir {
            Dir::Request => &mut d.request_body,
            Dir::Response => &mut d.response_body,
        })
    }

    /// The direction's buffer ([`StreamData::request_buffered`]).
    fn buffered(&self, dir: Dir) -> RefMut<'_, Option<Vec<u8>>> {
        RefMut::map(self.data.borrow_mut(), |d| match dir {
            Dir::Request => &mut d.request_buffered,
            Dir::Response => &mut d.response_buffered,
        })
    }

    /// What the buffer holds; the buffer itself stays (drained), as Envoy's does once a
    /// filter has buffered.
    fn take_buffered(&self, dir: Dir) -> Vec<u8> {
        self.buffered(dir)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn buffered_len(&self, dir: Dir) -> usize {
        self.buffered(dir).as_ref().map_or(0, Vec::len)
    }

    fn has_trailers(&self, dir: Dir) -> bool {
        let d = self.data.borrow();
        match dir {
            Dir::Request => d.request_trailers.is_some(),
            Dir::Response => d.response_trailers.is_some(),
        }
    }

    // ---- inputs ----

    pub fn request_headers(&mut self, headers: Headers, end_of_stream: bool) {
        if self.done || self.local_reply_sent {
            return;
        }
        self.data.borrow_mut().request_headers = Some(headers);
        self.request.complete = end_of_stream;
        self.headers_from(Dir::Request, 0, end_of_stream);
        self.update_watermarks();
    }

    pub fn request_data(&mut self, data: Vec<u8>, end_of_stream: bool) {
        if self.done || self.local_reply_sent || self.local_complete || self.request.complete {
            return;
        }
        self.data.borrow_mut().request_bytes += data.len() as u64;
        self.request.complete = end_of_stream;
        self.data_from(Dir::Request, 0, Some(data), end_of_stream);
        self.update_watermarks();
    }

    pub fn request_trailers(&mut self, trailers: Headers) {
        if self.done || self.local_reply_sent || self.local_complete || self.request.complete {
            return;
        }
        self.request.complete = true;
        self.data.borrow_mut().request_trailers = Some(trailers);
        self.trailers_from(Dir::Request, 0);
        self.update_watermarks();
    }

    pub fn response_headers(&mut self, headers: Headers, end_of_stream: bool) {
        if self.done || self.local_reply_sent {
            return;
        }
        self.data.borrow_mut().response_headers = Some(headers);
        self.response.complete = end_of_stream;
        self.local_complete |= end_of_stream;
        self.headers_from(Dir::Response, 0, end_of_stream);
        self.update_watermarks();
    }

    pub fn response_data(&mut self, data: Vec<u8>, end_of_stream: bool) {
        if self.done || self.local_reply_sent || self.response.complete {
            return;
        }
        self.data.borrow_mut().response_bytes += data.len() as u64;
        self.response.complete = end_of_stream;
        self.local_complete |= end_of_stream;
        self.data_from(Dir::Response, 0, Some(data), end_of_stream);
        self.update_watermarks();
    }

    pub fn response_trailers(&mut self, trailers: Headers) {
        if self.done || self.local_reply_sent || self.response.complete {
            return;
        }
        self.response.complete = true;
        self.local_complete = true;
        self.data.borrow_mut().response_trailers = Some(trailers);
        self.trailers_from(Dir::Response, 0);
        self.update_watermarks();
    }

    /// Delivers the answer to an HTTP call filter `filter` made.
    pub fn http_call_response(&mut self, filter: usize, token: u32, result: HttpCallResult) {
        if self.done {
            return;
        }
        let Some(f) = self.filters.get_mut(filter) else {
            return;
        };
        f.http_call_response(&mut self.data.borrow_mut(), token, result);
        self.after_async(filter);
    }

    pub fn grpc_event(&mut self, filter: usize, token: u32, event: GrpcInbound) {
        if self.done {
            return;
        }
        let Some(f) = self.filters.get_mut(filter) else {
            return;
        };
        f.grpc_event(&mut self.data.borrow_mut(), token, event);
        self.after_async(filter);
    }

    /// A filter asked (from outside its stream callbacks, e.g. its root context) to resume
    /// both directions.
    pub fn resume(&mut self, filter: usize) {
        self.resume_request(filter);
        self.resume_response(filter);
    }

    /// A filter asked to resume the request (proxy-wasm's `proxy_continue_stream(request)`).
    pub fn resume_request(&mut self, filter: usize) {
        if !self.done {
            self.resume_dir(Dir::Request, filter);
            self.update_watermarks();
        }
    }

    pub fn resume_response(&mut self, filter: usize) {
        if !self.done {
            self.resume_dir(Dir::Response, filter);
            self.update_watermarks();
        }
    }

    /// The data plane answers the stream itself (an upstream failure, a stream held too
    /// long), as Envoy's `sendLocalReply`: through the response phases of the filters that saw
    /// the request, straight to the client once the response started through them, or a reset
    /// once its head went out.
    pub fn send_local_reply(&mut self, response: LocalResponse) {
        if !self.done {
            self.local_reply(response);
            self.update_watermarks();
        }
    }

    /// A module closed the stream from outside its callbacks (`proxy_close_stream` for
    /// another context): both directions are reset.
    pub fn close(&mut self) {
        if !self.done {
            self.reset();
        }
    }

    /// Ends the stream: every filter gets `stream_done` once. Call it when the response is
    /// complete, or when the client or upstream went away.
    pub fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for f in self.filters.iter_mut() {
            f.stream_done(&mut self.data.borrow_mut());
        }
    }

    // ---- iteration (Envoy's FilterManager) ----

    fn call(&mut self, dir: Dir, stage: Stage, idx: usize, eos: bool) -> FilterStatus {
        if dir == Dir::Response && !self.request.states[idx].processed_headers {
            return FilterStatus::Continue;
        }
        if (dir, stage) == (Dir::Request, Stage::Headers) {
            self.request.states[idx].processed_headers = true;
        }
        let mut data = self.data.borrow_mut();
        data.resume_request = false;
        data.resume_response = false;
        let Some(filter) = self.filters.get_mut(idx) else {
            return FilterStatus::Continue;
        };
        let data = &mut *data;
        let status = match (dir, stage) {
            (Dir::Request, Stage::Headers) => filter.request_headers(data, eos),
            (Dir::Request, Stage::Body) => filter.request_body(data, eos),
            (Dir::Request, Stage::Trailers) => filter.request_trailers(data),
            (Dir::Response, Stage::Headers) => filter.response_headers(data, eos),
            (Dir::Response, Stage::Body) => filter.response_body(data, eos),
            (Dir::Response, Stage::Trailers) => filter.response_trailers(data),
        };
        if !data.callouts.is_empty() {
            self.callouts
                .push((idx, std::mem::take(&mut data.callouts)));
        }
        let resumed = match dir {
            Dir::Request => data.resume_request,
            Dir::Response => data.resume_response,
        };
        // A filter that resumes within the callback that stopped continues.
        if resumed {
            FilterStatus::Continue
        } else {
            status
        }
    }

    /// After a callback: a reset or local response takes over. True when iteration must end.
    fn intercepted(&mut self) -> bool {
        let (reset, response) = {
            let mut data = self.data.borrow_mut();
            // Nearly every callback: nothing to take (a local response is a large move).
            if !data.reset && data.local_response.is_none() {
                return false;
            }
            let reset = std::mem::take(&mut data.reset);
            (reset, data.local_response.take())
        };
        if reset {
            self.reset();
            return true;
        }
        if let Some(response) = response {
            if self.in_local_reply {
                // Envoy ignores a second local reply sent while the first one is encoded.
                return false;
            }
            self.local_reply(response);
            return true;
        }
        false
    }

    fn reset(&mut self) {
        self.epoch += 1;
        self.outputs.push(Output::Reset);
        self.request.ended = true;
        self.response.ended = true;
        self.finish();
    }

    fn end_direction(&mut self, dir: Dir) {
        self.flow(dir).ended = true;
        if dir == Dir::Response {
            self.finish();
        }
    }

    /// Envoy's `decodeHeaders`/`encodeHeaders` from position `start`.
    fn headers_from(&mut self, dir: Dir, start: usize, end_stream: bool) {
        let n = self.flow(dir).order.len();
        for pos in start..n {
            let idx = self.flow(dir).order[pos];
            self.state(dir, idx).end_stream = end_stream;
            let status = self.call(dir, Stage::Headers, idx, end_stream);
            // Only a body callback may hand the stream a body.
            self.body(dir).clear();
            if self.intercepted() {
                return;
            }
            let state = self.state(dir, idx);
            state.iteration = match status {
                FilterStatus::StopIteration => Iteration::StopSingle,
                FilterStatus::StopAllIterationAndBuffer => Iteration::StopAllBuffer,
                FilterStatus::StopAllIterationAndWatermark => Iteration::StopAllWatermark,
                _ => {
                    state.headers_continued = true;
                    continue;
                }
            };
            return;
        }
        let headers = {
            let d = self.data.borrow();
            match dir {
                Dir::Request => d.request_headers.clone(),
                Dir::Response => d.response_headers.clone(),
            }
        }
        .unwrap_or_default();
        self.flow(dir).headers_forwarded = true;
        self.outputs.push(Output::headers(dir, headers, end_stream));
        if end_stream {
            self.end_direction(dir);
        }
    }

    /// Envoy's `decodeData`/`encodeData` from position `start`, with a chunk from the peer, or
    /// (`None`) with what the buffer holds.
    fn data_from(&mut self, dir: Dir, start: usize, chunk: Option<Vec<u8>>, end_stream: bool) {
        if dir == Dir::Request && self.local_complete {
            return;
        }
        let epoch = self.epoch;
        let from_buffer = chunk.is_none();
        let mut data = match chunk {
            Some(chunk) => chunk,
            // The buffer stays (drained) while its data iterates.
            None => self.take_buffered(dir),
        };
        let had_trailers = self.has_trailers(dir);
        let mut end_stream = end_stream;
        let mut trailers_added_at = None;
        let mut passed = true;
        let n = self.flow(dir).order.len();
        for pos in start..n {
            let idx = self.flow(dir).order[pos];
            let state = *self.state(dir, idx);
            if state.stopped_all() {
                self.flow(dir).streaming = state.iteration == Iteration::StopAllWatermark;
                self.buffer_data(dir, data, from_buffer);
                return;
            }
            if state.end_stream {
                if from_buffer {
                    *self.buffered(dir) = Some(data);
                }
                return;
            }
            let eos = end_stream && !self.has_trailers(dir);
            self.state(dir, idx).end_stream = eos;
            let sees_buffer = state.buffering && !from_buffer;
            if sees_buffer {
                self.flow(dir).streaming = false;
                self.buffer_data(dir, std::mem::take(&mut data), false);
                if self.epoch != epoch {
                    return;
                }
                let whole = self.take_buffered(dir);
                *self.body(dir) = whole;
            } else {
                *self.body(dir) = std::mem::take(&mut data);
            }
            let status = self.call(dir, Stage::Body, idx, eos);
            let body = std::mem::take(&mut *self.body(dir));
            if sees_buffer {
                *self.buffered(dir) = Some(body);
            } else {
                data = body;
            }
            if self.intercepted() {
                return;
            }
            // Trailers added at the end of the data (proxy-wasm lets the last body callback
            // add them): the data no longer ends the direction, the trailers do.
            if !had_trailers && self.has_trailers(dir) && trailers_added_at.is_none() {
                end_stream = false;
                trailers_added_at = Some(pos);
            }
            self.state(dir, idx).buffering = status == FilterStatus::StopIterationAndBuffer;
            if !self.after_data(dir, pos, status, &mut data, from_buffer) {
                passed = false;
                break;
            }
            if self.epoch != epoch {
                return;
            }
        }
        if self.epoch != epoch {
            return;
        }
        if passed {
            if !data.is_empty() || end_stream {
                self.outputs.push(Output::data(dir, data, end_stream));
            }
            if end_stream {
                self.end_direction(dir);
            }
        }
        if let Some(at) = trailers_added_at {
            if passed || dir == Dir::Request {
                self.trailers_from(dir, at + 1);
            }
        }
    }

    /// Envoy's `commonHandleAfterDataCallback`: whether iteration goes on to the next filter.
    fn after_data(
        &mut self,
        dir: Dir,
        pos: usize,
        status: FilterStatus,
        data: &mut Vec<u8>,
        from_buffer: bool,
    ) -> bool {
        let idx = self.flow(dir).order[pos];
        match status {
            FilterStatus::Continue => {
                if self.state(dir, idx).iteration == Iteration::StopSingle {
                    self.buffer_data(dir, std::mem::take(data), from_buffer);
                    self.common_continue(dir, pos);
                    return false;
                }
                true
            }
            FilterStatus::StopIterationNoBuffer => {
                self.state(dir, idx).iteration = Iteration::StopSingle;
                let complete = self.flow(dir).complete;
                let mut buffered = self.buffered(dir);
                if from_buffer {
                    // The data is the buffer: it stays where it was.
                    *buffered = Some(std::mem::take(data));
                } else if complete && buffered.is_none() {
                    // So that the end of the stream goes on when the filter continues.
                    *buffered = Some(Vec::new());
                }
                false
            }
            stop => {
                self.state(dir, idx).iteration = Iteration::StopSingle;
                self.flow(dir).streaming = stop == FilterStatus::StopIterationAndWatermark;
                self.buffer_data(dir, std::mem::take(data), from_buffer);
                false
            }
        }
    }

    /// Envoy's `commonHandleBufferData`, then the limit: data joins the direction's buffer.
    fn buffer_data(&mut self, dir: Dir, data: Vec<u8>, from_buffer: bool) {
        match &mut *self.buffered(dir) {
            Some(buffered) if !from_buffer => buffered.extend_from_slice(&data),
            buffered => *buffered = Some(data),
        }
        let limit = self.buffer_limit;
        if self.buffered_len(dir) <= limit {
            return;
        }
        let flow = self.flow(dir);
        if flow.streaming {
            flow.above_watermark = true;
            return;
        }
        // Envoy's `requestDataTooLarge` / `responseDataTooLarge`.
        let response = match dir {
            Dir::Request => LocalResponse {
                status: 413,
                body: b"Payload Too Large".to_vec(),
                details: "request_payload_too_large".into(),
                ..LocalResponse::default()
            },
            Dir::Response => LocalResponse {
                status: 500,
                body: b"Internal Server Error".to_vec(),
                details: "response_payload_too_large".into(),
                ..LocalResponse::default()
            },
        };
        self.local_reply(response);
    }

    /// The watermarks: a direction above the limit stops reading until it drains to half.
    fn update_watermarks(&mut self) {
        let limit = self.buffer_limit;
        for dir in [Dir::Request, Dir::Response] {
            let len = self.buffered_len(dir);
            let flow = self.flow(dir);
            if flow.above_watermark && len <= limit / 2 {
                flow.above_watermark = false;
            } else if flow.streaming && len > limit {
                flow.above_watermark = true;
            }
        }
    }

    /// Envoy's `decodeTrailers`/`encodeTrailers` from position `start`.
    fn trailers_from(&mut self, dir: Dir, start: usize) {
        if dir == Dir::Request && self.local_complete {
            return;
        }
        let n = self.flow(dir).order.len();
        for pos in start..n {
            let idx = self.flow(dir).order[pos];
            let state = *self.state(dir, idx);
            if state.stopped_all() {
                return;
            }
            // A filter that keeps the body sees it whole in its trailers callback.
            if state.buffering {
                let whole = self.take_buffered(dir);
                *self.body(dir) = whole;
            }
            let status = self.call(dir, Stage::Trailers, idx, true);
            let body = std::mem::take(&mut *self.body(dir));
            if state.buffering {
                *self.buffered(dir) = Some(body);
            }
            self.state(dir, idx).end_stream = true;
            if self.intercepted() {
                return;
            }
            let state = self.state(dir, idx);
            if status == FilterStatus::Continue {
                if state.iteration == Iteration::StopSingle {
                    self.common_continue(dir, pos);
                    return;
                }
            } else {
                if state.iteration == Iteration::Continue {
                    state.iteration = Iteration::StopSingle;
                }
                return;
            }
        }
        let trailers = {
            let d = self.data.borrow();
            match dir {
                Dir::Request => d.request_trailers.clone(),
                Dir::Response => d.response_trailers.clone(),
            }
        }
        .unwrap_or_default();
        self.outputs.push(match dir {
            Dir::Request => Output::RequestTrailers(trailers),
            Dir::Response => Output::ResponseTrailers(trailers),
        });
        self.end_direction(dir);
    }

    /// Envoy's `commonContinue`: the filter at `pos` resumes; what it held goes on, headers
    /// first, then the buffered body, then the trailers.
    fn common_continue(&mut self, dir: Dir, pos: usize) {
        let can_continue = match dir {
            Dir::Request => !self.local_complete,
            Dir::Response => !self.response.ended,
        };
        if !can_continue || self.done {
            return;
        }
        let epoch = self.epoch;
        let idx = self.flow(dir).order[pos];
        let state = self.state(dir, idx);
        if state.stopped_all() {
            state.iterate_from_current = true;
        }
        state.iteration = Iteration::Continue;
        // A filter that resumes holds nothing any more: the next data is its own chunk. (Envoy's
        // Wasm filter would add it to the drained buffer and pass an empty chunk on, losing it.)
        state.buffering = false;
        if !state.headers_continued {
            state.headers_continued = true;
            let has_trailers = self.has_trailers(dir);
            let eos = self.flow(dir).complete && self.buffered(dir).is_none() && !has_trailers;
            self.headers_from(dir, pos + 1, eos);
            if self.epoch != epoch {
                return;
            }
        }
        let from = if self.state(dir, idx).iterate_from_current {
            pos
        } else {
            pos + 1
        };
        let had_trailers = self.has_trailers(dir);
        if self.buffered(dir).is_some() {
            let eos = self.flow(dir).complete && !had_trailers;
            self.data_from(dir, from, None, eos);
            if self.epoch != epoch {
                return;
            }
        }
        if had_trailers {
            self.trailers_from(dir, from);
        }
        if let Some(state) = self.flow(dir).states.get_mut(idx) {
            state.iterate_from_current = false;
        }
    }

    /// A filter asked to resume after an async event (or from its root context).
    fn after_async(&mut self, filter: usize) {
        let (resume_request, resume_response, callouts) = {
            let mut data = self.data.borrow_mut();
            (
                std::mem::take(&mut data.resume_request),
                std::mem::take(&mut data.resume_response),
                std::mem::take(&mut data.callouts),
            )
        };
        if !callouts.is_empty() {
            self.callouts.push((filter, callouts));
        }
        if self.intercepted() {
            self.update_watermarks();
            return;
        }
        if resume_request {
            self.resume_dir(Dir::Request, filter);
        }
        if resume_response {
            self.resume_dir(Dir::Response, filter);
        }
        self.update_watermarks();
    }

    /// Only the filter that stopped can resume it (proxy-wasm's `proxy_continue_stream` acts
    /// on the caller's own filter).
    fn resume_dir(&mut self, dir: Dir, filter: usize) {
        let Some(state) = self.flow(dir).states.get(filter) else {
            return;
        };
        if state.iteration == Iteration::Continue {
            return;
        }
        if let Some(pos) = self.flow(dir).position(filter) {
            self.common_continue(dir, pos);
        }
    }

    fn local_reply(&mut self, response: LocalResponse) {
        self.epoch += 1;
        if self.response.headers_forwarded || self.local_reply_sent {
            // The client has the head of a response already: all that is left is a reset.
            self.reset();
            return;
        }
        let grpc = self
            .data
            .borrow()
            .request_headers
            .as_ref()
            .and_then(|h| h.get("content-type"))
            .is_some_and(is_grpc_content_type);
        let (headers, body) = if grpc {
            grpc_local_reply(response)
        } else {
            let mut headers = Headers::new();
            headers.add(":status", response.status.to_string());
            for (k, v) in response.headers.iter() {
                headers.add(k, v);
            }
            if !response.body.is_empty() && headers.get("content-type").is_none() {
                headers.add("content-type", "text/plain");
            }
            headers.replace("content-length", response.body.len().to_string());
            (headers, response.body)
        };
        let n = self.filters.len();
        // Before the response started through the filters, the reply passes through them
        // (those that saw the request); after, it goes straight to the client, as Envoy's
        // `sendDirectLocalReply`.
        let order = if self.data.borrow().response_headers.is_none() {
            (0..n).rev().collect()
        } else {
            Vec::new()
        };
        self.local_reply_sent = true;
        self.local_complete = true;
        self.request.ended = true;
        self.response = Flow::new(order, n);
        {
            let mut data = self.data.borrow_mut();
            data.response_headers = Some(headers);
            data.response_body.clear();
            data.response_buffered = None;
            data.response_trailers = None;
        }
        let eos = body.is_empty();
        self.response.complete = eos;
        self.in_local_reply = true;
        let epoch = self.epoch;
        self.headers_from(Dir::Response, 0, eos);
        if !eos && !self.done && self.epoch == epoch {
            self.response.complete = true;
            self.data_from(Dir::Response, 0, Some(body), true);
        }
        self.in_local_reply = false;
    }
}

/// `application/grpc`, alone or with a `+subtype` or parameters: a gRPC request.
fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// A local reply to a gRPC request, as Envoy sends it: a trailers-only response (`:status`
/// 200, `content-type: application/grpc`, `grpc-status` and, for a body, `grpc-message`) that
/// gRPC clients read as a call status instead of "unexpected HTTP status". The status is the
/// filter's gRPC status when it gave one (0-16), else Envoy's mapping of the HTTP status.
fn grpc_local_reply(response: LocalResponse) -> (Headers, Vec<u8>) {
    let status = response
        .grpc_status
        .filter(|s| (0..=16).contains(s))
        .unwrap_or(match response.status {
            400 => 13,                   // INTERNAL
            401 => 16,                   // UNAUTHENTICATED
            403 => 7,                    // PERMISSION_DENIED
            404 => 12,                   // UNIMPLEMENTED
            429 | 502 | 503 | 504 => 14, // UNAVAILABLE
            _ => 2,                      // UNKNOWN
        });
    let mut headers = Headers::new();
    headers.add(":status", "200");
    for (k, v) in response.headers.iter() {
        headers.add(k, v);
    }
    headers.replace("content-type", "application/grpc");
    headers.replace("grpc-status", status.to_string());
    if !response.body.is_empty() {
        // gRPC's percent-encoding: printable ASCII but `%` as is, every other byte as %XX.
        let mut message = String::new();
        for &b in &response.body {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                message.push(char::from(b));
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        headers.replace("grpc-message", message);
    }
    (headers, Vec::new())
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
#[allow(non_upper_case_globals)] // `Stop` reads as the status it stands for
mod tests {
    //! The iteration rules with scripted filters: each records its callbacks (name, phase,
    //! the body it saw, end of stream) in one shared log and answers what its script says.

    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::FilterStatus::Continue;
    use super::*;

    /// What a script answers to stop: as a proxy-wasm module's pause, translated by the filter
    /// the way `WasmFilter` does (see [`Fake::on`]).
    const Stop: FilterStatus = FilterStatus::StopIteration;
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
            match ((self.act)(ev, s, eos), ev) {
                (Stop, Ev::ReqHeaders | Ev::RespHeaders) if !self.body_while_stopped => {
                    FilterStatus::StopAllIterationAndWatermark
                }
                (Stop, Ev::ReqBody | Ev::RespBody) => FilterStatus::StopIterationAndBuffer,
                (status, _) => status,
            }
        }
    }

    impl HttpFilter for Fake {
        fn name(&self) -> &str {
            self.name
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

    /// Review finding 17: an earlier filter that buffers the body keeps doing so while a later
    /// one holds the headers; each holds at its own place (Envoy 1.40 gives the earlier one
    /// the running total too: `envoy_traces`' earlier_buffers_later_holds).
    #[test]
    fn an_earlier_body_stop_holds_while_a_later_filter_holds_the_headers() {
        let log = Log::default();
        let a = fake("a", &log, |ev, _, eos| match ev {
            Ev::ReqBody if !eos => Stop,
            _ => Continue,
        });
        let b = stopping_at("b", &log, Ev::ReqHeaders);
        let mut s = chain(vec![a, b, pass("c", &log)]);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.request_data(b"34".to_vec(), false);
        s.request_data(b"5".to_vec(), true);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqBody [12]",
                "a ReqBody [1234]",
                "a ReqBody [12345] eos",
            ]
        );
        assert_eq!(s.take_outputs(), []);
        s.resume(1);
        assert_eq!(
            seen(&log),
            [
                "c ReqHeaders",
                "b ReqBody [12345] eos",
                "c ReqBody [12345] eos"
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [req_headers(req(), false), req_data("12345", true)]
        );

        // The other way round: the later filter buffers the body while the earlier one
        // holds the headers; it gets the body once the earlier one lets go.
        let log = Log::default();
        let a = stopping_at("a", &log, Ev::ReqHeaders);
        let b = fake("b", &log, |ev, _, eos| match ev {
            Ev::ReqBody if !eos => Stop,
            _ => Continue,
        });
        let mut s = chain(vec![a, b]);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.resume(0);
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
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [req_headers(req(), false), req_data("1234", true)]
        );
    }

    /// Review finding 18: held headers (a module's pause: StopAllIterationAndWatermark) push
    /// back on the client past the buffer limit instead of answering 413, until the buffer
    /// drains to half the limit.
    #[test]
    fn held_headers_push_back_past_the_limit_instead_of_413() {
        let (log, mut s) = b_stopping_at(Ev::ReqHeaders);
        s.set_buffer_limit(4);
        s.request_headers(req(), false);
        s.request_data(b"1234".to_vec(), false);
        assert!(!s.request_read_disabled(), "at the limit, reading goes on");
        s.request_data(b"5".to_vec(), false);
        assert!(s.request_read_disabled(), "one past, reading stops");
        assert!(!s.local_reply_sent());
        s.request_data(b"67".to_vec(), true);
        assert!(!s.local_reply_sent(), "a watermark never answers");
        seen(&log);
        s.resume(1);
        assert!(!s.request_read_disabled());
        assert_eq!(
            s.take_outputs(),
            [req_headers(req(), false), req_data("1234567", true)]
        );

        // A body stop that buffers (…AndBuffer) still answers 413 one past the limit.
        let (_, mut s) = b_stopping_at(Ev::ReqBody);
        s.set_buffer_limit(4);
        s.request_headers(req(), false);
        s.request_data(b"12345".to_vec(), false);
        assert!(s.local_reply_sent());
        assert!(!s.request_read_disabled());
    }

    /// Review finding 26: trailers a filter adds in the last body callback go out as
    /// trailers; the data before them no longer ends the stream.
    #[test]
    fn trailers_added_in_the_last_body_callback_go_out_after_the_body() {
        let log = Log::default();
        let a = fake("a", &log, |ev, s, eos| {
            if ev == Ev::ReqBody && eos {
                s.request_trailers = Some(h(&[("x-added", "1")]));
            }
            Continue
        });
        let mut s = chain(vec![a, pass("b", &log)]);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), true);
        assert_eq!(
            seen(&log),
            [
                "a ReqHeaders",
                "b ReqHeaders",
                "a ReqBody [12] eos",
                "b ReqBody [12]",
                "b ReqTrailers []",
            ]
        );
        assert_eq!(
            s.take_outputs(),
            [
                req_headers(req(), false),
                req_data("12", false),
                Output::RequestTrailers(h(&[("x-added", "1")])),
            ]
        );
        assert!(s.request_ended());
    }

    /// A body `StopIterationNoBuffer` keeps nothing: the chunk is the filter's.
    #[test]
    fn a_body_stop_without_buffer_drops_the_chunk() {
        let log = Log::default();
        let mut dropped = false;
        let b = fake("b", &log, move |ev, _, _| {
            if ev == Ev::ReqBody && !dropped {
                dropped = true;
                return FilterStatus::StopIterationNoBuffer;
            }
            Continue
        });
        let mut s = between_a_and_c(b, &log);
        s.request_headers(req(), false);
        s.request_data(b"12".to_vec(), false);
        s.take_outputs();
        s.request_data(b"34".to_vec(), true);
        assert_eq!(s.take_outputs(), [req_data("34", true)]);
    }

    /// Review finding 24: a local reply to a gRPC request is a trailers-only gRPC response.
    #[test]
    fn a_local_reply_to_a_grpc_request_is_trailers_only() {
        let log = Log::default();
        let b = replying_at(
            "b",
            &log,
            Ev::ReqHeaders,
            LocalResponse {
                status: 429,
                body: b"too many: 100%".to_vec(),
                ..LocalResponse::default()
            },
        );
        let mut s = chain(vec![pass("a", &log), b]);
        let mut grpc = req();
        grpc.add("content-type", "application/grpc+proto");
        s.request_headers(grpc, false);
        assert_eq!(
            s.take_outputs(),
            [resp_headers(
                h(&[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "14"),
                    ("grpc-message", "too many: 100%25"),
                ]),
                true
            )]
        );

        // The filter's own gRPC status wins; other content types stay plain HTTP.
        let mut s = chain(vec![replying_at(
            "c",
            &log,
            Ev::ReqHeaders,
            LocalResponse {
                status: 403,
                grpc_status: Some(16),
                ..LocalResponse::default()
            },
        )]);
        let mut grpc = req();
        grpc.add("content-type", "application/grpc");
        s.request_headers(grpc, true);
        let out = s.take_outputs();
        assert!(
            matches!(&out[..], [Output::ResponseHeaders { headers, end_of_stream: true }]
                if headers.get_str("grpc-status") == Some("16") && headers.get_str(":status") == Some("200")),
            "{out:?}"
        );
        let mut s = chain(vec![replying_at(
            "d",
            &log,
            Ev::ReqHeaders,
            LocalResponse {
                status: 403,
                ..LocalResponse::default()
            },
        )]);
        let mut other = req();
        other.add("content-type", "application/grpc-web-text-ish");
        s.request_headers(other, true);
        let out = s.take_outputs();
        assert!(
            matches!(&out[..], [Output::ResponseHeaders { headers, .. }]
                if headers.get_str(":status") == Some("403") && headers.get("grpc-status").is_none()),
            "{out:?}"
        );
    }
}
