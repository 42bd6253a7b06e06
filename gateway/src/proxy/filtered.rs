//! The request path when filters apply: the proxy drives the host's sans-IO filter chain
//! ([`host::HttpStream`]) from the network, as Envoy's filter manager does.
//!
//! The chain sees Envoy's view of a request (pseudo-headers `:method`, `:path`,
//! `:authority`, `:scheme`; `:status` on responses). What it lets through is sent on as it
//! comes: request headers start the upstream request, body chunks stream through bounded
//! channels (backpressure, no whole-body buffering unless a filter asks for it), and a local
//! response from any phase answers the client instead. The stream ends (`on_done`, `on_log`)
//! when the client has the whole response or goes away.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, Notify};

use host::callout::{GrpcCallout, GrpcInbound, GrpcOutbound};
use host::state::StreamOp;
use host::{Headers, HttpCallResult, HttpStream, Output, StreamInfo, WorkerPlugin};

use super::body::{BodyTimeout, BoxError, ClientBody, ProxyBody};
use super::channel::{channel, ChannelBody, FrameSender};
use super::errors::ProxyError;
use super::grpc_call;
use super::{headers, Downstream};
use crate::access_log::AccessLog;
use crate::server::{Lingered, Worker};
use crate::Snapshot;

/// Frames in flight per direction before the sender waits.
const CHANNEL_FRAMES: usize = 16;

/// The longest answer of known length that is read through the filters before its head
/// leaves (see `forward`).
const SHORT_RESPONSE_BYTES: u64 = 64 << 10;

type Head = (Headers, bool);
type Chain = Rc<RefCell<HttpStream>>;

/// One filtered request in flight: its chain, where the chain's outputs go, and how modules
/// reach it from elsewhere.
pub struct Stream {
    chain: Chain,
    taps: Rc<RefCell<Taps>>,
    /// Wakes the body pumps when a filter let go of what it held (see `request_read_disabled`).
    wake: Notify,
    /// The instance of each filter ([`WorkerPlugin::id`]) and the context it has there once
    /// registered in the worker's [`LiveStreams`].
    contexts: RefCell<Vec<(usize, Option<u32>)>>,
    /// The filters' instances: after this stream's events only they can have work waiting.
    plugins: Vec<WorkerPlugin>,
    worker: Weak<Worker>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.upgrade() {
            let mut live = worker.live_streams.borrow_mut();
            for (instance, context) in self.contexts.get_mut().iter() {
                if let Some(context) = context {
                    live.0.remove(&(*instance, *context));
                }
            }
        }
    }
}

/// A worker's filtered streams by (instance, context id): where a resume or close a module
/// asks for from its root context (`on_tick`, `on_queue_ready`, a call's answer) or from
/// another stream (`proxy_set_effective_context`) is carried out.
#[derive(Default)]
pub struct LiveStreams(FxHashMap<(usize, u32), (Weak<Stream>, usize)>);

impl Stream {
    /// Registers the contexts filters have got since the last look.
    fn register(self: &Rc<Stream>, worker: &Worker) {
        let chain = self.chain.borrow();
        let mut contexts = self.contexts.borrow_mut();
        for (filter, (instance, known)) in contexts.iter_mut().enumerate() {
            if known.is_none() {
                if let Some(context) = chain.context_id(filter) {
                    *known = Some(context);
                    worker
                        .live_streams
                        .borrow_mut()
                        .0
                        .insert((*instance, context), (Rc::downgrade(self), filter));
                }
            }
        }
    }
}

/// Where the chain's outputs go.
struct Taps {
    request_head: Option<oneshot::Sender<Head>>,
    upstream: Option<FrameSender>,
    response_head: Option<oneshot::Sender<Head>>,
    client: Option<FrameSender>,
    /// Why the stream ended before its answer: a filter reset it, or the client's body broke
    /// off.
    reset: Option<oneshot::Sender<ProxyError>>,
}

impl Taps {
    /// Where one side's head goes: the upstream request, or the client's response.
    fn head(&mut self, side: Side) -> &mut Option<oneshot::Sender<Head>> {
        match side {
            Side::Request => &mut self.request_head,
            Side::Response => &mut self.response_head,
        }
    }

    /// Where one side's body goes.
    fn body(&mut self, side: Side) -> &mut Option<FrameSender> {
        match side {
            Side::Request => &mut self.upstream,
            Side::Response => &mut self.client,
        }
    }

    /// Breaks one side's body off: its peer sees it fail, never end whole.
    fn abort(&mut self, side: Side) {
        if let Some(tx) = self.body(side).take() {
            tx.abort();
        }
    }
}

/// One piece of what the chain lets through, on either side.
enum Piece {
    Head(Headers, bool),
    Data(Vec<u8>, bool),
    Trailers(Headers),
}

pub(super) fn to_header_map(headers: &Headers) -> HeaderMap {
    to_header_map_with_room(headers, 0)
}

/// [`to_header_map`] with room for `spare` more headers, so that adding them does not grow it.
fn to_header_map_with_room(headers: &Headers, spare: usize) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len() + spare);
    for (name, value) in headers.iter() {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            map.append(name, value);
        }
    }
    map
}

/// [`to_header_map_with_room`] for a head made from `original` ([`from_header_map`]): when the
/// filters left the original's pairs as they were and in front, the original map is taken
/// over and only the pairs they added are converted (most heads pass with a few headers
/// added); otherwise the whole head is. `skipped` is a name `from_header_map` left out of the
/// pairs that stays in the map (the request's Host, which the upstream request sets anyway).
fn to_header_map_from(
    head: &Headers,
    mut original: HeaderMap,
    skipped: Option<&HeaderName>,
    spare: usize,
) -> HeaderMap {
    let mut fields = head.iter().filter(|(name, _)| !name.starts_with(':'));
    for (name, value) in original.iter() {
        if Some(name) == skipped {
            continue;
        }
        match fields.next() {
            Some((n, v)) if n == name.as_str() && v == value.as_bytes() => {}
            _ => return to_header_map_with_room(head, spare),
        }
    }
    original.reserve(spare);
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            original.append(name, value);
        }
    }
    original
}

fn trailers_frame(headers: &Headers) -> Frame<Bytes> {
    Frame::trailers(to_header_map(headers))
}

/// Routes what the chain produced, then performs the calls filters made.
async fn deliver(worker: &Rc<Worker>, stream: &Rc<Stream>) {
    deliver_outputs(worker, stream).await;
    stream.wake.notify_waiters();
    carry_out(worker, &stream.plugins);
}

async fn deliver_outputs(worker: &Rc<Worker>, stream: &Rc<Stream>) {
    let (chain, taps) = (&stream.chain, &stream.taps);
    stream.register(worker);
    let outputs = chain.borrow_mut().take_outputs();
    for output in outputs {
        let (side, piece) = match output {
            Output::RequestHeaders {
                headers,
                end_of_stream,
            } => (Side::Request, Piece::Head(headers, end_of_stream)),
            Output::RequestData {
                data,
                end_of_stream,
            } => (Side::Request, Piece::Data(data, end_of_stream)),
            Output::RequestTrailers(trailers) => (Side::Request, Piece::Trailers(trailers)),
            Output::ResponseHeaders {
                headers,
                end_of_stream,
            } => (Side::Response, Piece::Head(headers, end_of_stream)),
            Output::ResponseData {
                data,
                end_of_stream,
            } => (Side::Response, Piece::Data(data, end_of_stream)),
            Output::ResponseTrailers(trailers) => (Side::Response, Piece::Trailers(trailers)),
            Output::Reset => {
                let mut taps = taps.borrow_mut();
                taps.abort(Side::Request);
                taps.abort(Side::Response);
                if let Some(tx) = taps.reset.take() {
                    let _ = tx.send(stream_reset());
                }
                continue;
            }
        };
        match piece {
            Piece::Head(headers, end_of_stream) => {
                let mut taps = taps.borrow_mut();
                if end_of_stream {
                    *taps.body(side) = None;
                }
                if let Some(tx) = taps.head(side).take() {
                    let _ = tx.send((headers, end_of_stream));
                }
            }
            Piece::Data(data, end_of_stream) => {
                let tx = taps.borrow_mut().body(side).clone();
                if let Some(tx) = tx {
                    if !data.is_empty() {
                        let _ = tx.send(Ok(Frame::data(Bytes::from(data)))).await;
                    }
                }
                if end_of_stream {
                    *taps.borrow_mut().body(side) = None;
                }
            }
            Piece::Trailers(trailers) => {
                let tx = taps.borrow_mut().body(side).take();
                if let Some(tx) = tx {
                    let _ = tx.send(Ok(trailers_frame(&trailers))).await;
                }
            }
        }
    }
    let callouts = chain.borrow_mut().take_callouts();
    for (filter, callouts) in callouts {
        for call in callouts.http {
            let worker = Rc::clone(worker);
            let stream = Rc::clone(stream);
            tokio::task::spawn_local(async move {
                let exchange = http_call(&worker, &call);
                tokio::pin!(exchange);
                let result = loop {
                    if stream.chain.borrow().is_complete() {
                        // cpp-host makes every call on the root context: a call outlives the
                        // stream that made it, and its answer goes to the root context, where
                        // the module's SDK forgets the call (it keeps every token until its
                        // answer comes).
                        let plugin = stream.plugins.get(filter).cloned();
                        drop(stream);
                        let result = exchange.await;
                        if let Some(plugin) = plugin {
                            plugin.root_http_call_response(call.token, result);
                            carry_out(&worker, std::slice::from_ref(&plugin));
                        }
                        return;
                    }
                    tokio::select! {
                        result = &mut exchange => break result,
                        _ = stream.wake.notified() => {}
                    }
                };
                stream
                    .chain
                    .borrow_mut()
                    .http_call_response(filter, call.token, result);
                Box::pin(deliver(&worker, &stream)).await;
            });
        }
        let Some(plugin) = stream.plugins.get(filter) else {
            continue;
        };
        for call in callouts.grpc {
            start_grpc_call(worker, plugin, call, Some((Rc::clone(stream), filter)));
        }
        to_grpc_calls(worker, plugin, callouts.grpc_outbound);
    }
}

/// What modules did on their open gRPC calls and streams, by (instance, token), to the calls'
/// tasks.
#[derive(Default)]
pub struct GrpcCalls(FxHashMap<(usize, u32), mpsc::UnboundedSender<GrpcOutbound>>);

fn to_grpc_calls(worker: &Worker, plugin: &WorkerPlugin, events: Vec<GrpcOutbound>) {
    let calls = worker.grpc_calls.borrow();
    for event in events {
        let token = match &event {
            GrpcOutbound::Send { token, .. }
            | GrpcOutbound::Close { token }
            | GrpcOutbound::Cancel { token } => *token,
        };
        if let Some(tx) = calls.0.get(&(plugin.id(), token)) {
            let _ = tx.send(event);
        }
    }
}

/// Makes a module's gRPC call, and hands what happens on it to the stream whose filter made
/// it or, once that stream is over (or for a root context's call), to the root context: as
/// with HTTP calls, cpp-host makes every call on the root context.
fn start_grpc_call(
    worker: &Rc<Worker>,
    plugin: &WorkerPlugin,
    call: GrpcCallout,
    stream: Option<(Rc<Stream>, usize)>,
) {
    let key = (plugin.id(), call.token);
    let (outbound_tx, outbound) = mpsc::unbounded_channel();
    worker.grpc_calls.borrow_mut().0.insert(key, outbound_tx);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::task::spawn_local(grpc_call::exchange(
        Rc::clone(worker),
        call,
        outbound,
        events_tx,
    ));
    let worker = Rc::clone(worker);
    let plugin = plugin.clone();
    tokio::task::spawn_local(async move {
        let mut stream = stream;
        while let Some(event) = events.recv().await {
            if matches!(event, GrpcInbound::Close { .. }) {
                worker.grpc_calls.borrow_mut().0.remove(&key);
            }
            stream = stream.filter(|(s, _)| !s.chain.borrow().is_complete());
            match &stream {
                Some((s, filter)) => {
                    s.chain.borrow_mut().grpc_event(*filter, key.1, event);
                    Box::pin(deliver(&worker, s)).await;
                }
                None => {
                    plugin.root_grpc_event(key.1, event);
                    carry_out(&worker, std::slice::from_ref(&plugin));
                }
            }
        }
        // Cancelled: the task ended without a close.
        worker.grpc_calls.borrow_mut().0.remove(&key);
    });
}

/// Carries out what modules asked for outside their own stream's callbacks: calls made from
/// root contexts, and resumes or closes of streams (from a root context or another stream).
/// Runs after every tick for every instance of the worker.
pub fn module_work(worker: &Rc<Worker>) {
    let running: Vec<WorkerPlugin> = match worker.filters.try_borrow() {
        Ok(filters) => filters.running().cloned().collect(),
        Err(_) => return,
    };
    carry_out(worker, &running);
}

/// [`module_work`] for some instances: after a stream event, those of its filters.
fn carry_out(worker: &Rc<Worker>, plugins: &[WorkerPlugin]) {
    let work: Vec<_> = plugins
        .iter()
        .filter_map(|plugin| {
            let (callouts, ops) = plugin.take_root_work()?;
            Some((plugin.clone(), callouts, ops))
        })
        .collect();
    for (plugin, callouts, ops) in work {
        for (context, op) in ops {
            let target = worker
                .live_streams
                .borrow()
                .0
                .get(&(plugin.id(), context))
                .and_then(|(stream, filter)| Some((stream.upgrade()?, *filter)));
            let Some((stream, filter)) = target else {
                // The stream is over: nothing is left to resume or close.
                continue;
            };
            {
                let mut chain = stream.chain.borrow_mut();
                match op {
                    StreamOp::ResumeRequest => chain.resume_request(filter),
                    StreamOp::ResumeResponse => chain.resume_response(filter),
                    StreamOp::Close => chain.close(),
                    StreamOp::LocalReply(response) => chain.send_local_reply(*response),
                }
            }
            let worker = Rc::clone(worker);
            tokio::task::spawn_local(async move { deliver(&worker, &stream).await });
        }
        for call in callouts.http {
            let worker = Rc::clone(worker);
            let plugin = plugin.clone();
            tokio::task::spawn_local(async move {
                let result = http_call(&worker, &call).await;
                plugin.root_http_call_response(call.token, result);
                carry_out(&worker, std::slice::from_ref(&plugin));
            });
        }
        for call in callouts.grpc {
            start_grpc_call(worker, &plugin, call, None);
        }
        to_grpc_calls(worker, &plugin, callouts.grpc_outbound);
    }
}

/// The most of a call's response body a module is handed; a longer one fails the call.
const CALL_RESPONSE_LIMIT: usize = 64 << 20;

/// The index of the service a module's call names, as an Envoy cluster (`service.<name>`)
/// or by its name.
pub fn callout_service(config: &model::Config, upstream: &str) -> Option<usize> {
    let wanted = upstream.strip_prefix("service.").unwrap_or(upstream);
    config.services.iter().position(|s| s.name == wanted)
}

/// Performs a module's `proxy_http_call` to a service named like an Envoy cluster
/// (`service.<name>` or `<name>`).
async fn http_call(worker: &Rc<Worker>, call: &host::HttpCallout) -> HttpCallResult {
    let snapshot = worker.shared.snapshot.load_full();
    let Some(index) = callout_service(&snapshot.config, &call.upstream) else {
        return HttpCallResult::Failed;
    };
    let service = &snapshot.config.services[index];
    let path = call.headers.get_str(":path").unwrap_or("/");
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let Ok(uri) = super::upstream::uri(&snapshot.targets[index], path, query) else {
        return HttpCallResult::Failed;
    };
    let mut request = Request::builder()
        .method(call.headers.get_str(":method").unwrap_or("GET"))
        .uri(uri);
    if let Some(headers) = request.headers_mut() {
        *headers = to_header_map(&call.headers);
        if let Some(authority) = call
            .headers
            .get(":authority")
            .and_then(|a| HeaderValue::try_from(a).ok())
        {
            headers.insert(http::header::HOST, authority);
        }
    }
    let body = if call.trailers.is_empty() {
        ProxyBody::full(call.body.clone())
    } else {
        // Announced, and chunked even for a GET (hyper sends no body for a GET otherwise), or
        // an HTTP/1.1 upstream would not get them.
        if let Some(headers) = request.headers_mut() {
            headers.remove(http::header::CONTENT_LENGTH);
            headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            for name in call.trailers.iter().map(|(name, _)| name) {
                if let Ok(name) = HeaderValue::try_from(name) {
                    headers.append(http::header::TRAILER, name);
                }
            }
        }
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(call.body.clone()))),
            Ok(trailers_frame(&call.trailers)),
        ];
        ProxyBody::streaming(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    };
    let Ok(request) = request.body(body) else {
        return HttpCallResult::Failed;
    };
    let exchange = async {
        let response = worker.upstreams.send(service, request).await.ok()?;
        let (parts, body) = response.into_parts();
        // Held whole for the module: bounded, so a call's target cannot fill the gateway.
        let collected = http_body_util::Limited::new(body, CALL_RESPONSE_LIMIT)
            .collect()
            .await
            .ok()?;
        // The values' bytes as the peer sent them: obs-text stays obs-text.
        let mut headers = Headers::new();
        headers.add(":status", parts.status.as_str());
        for (name, value) in &parts.headers {
            headers.add(name.as_str(), value.as_bytes());
        }
        let mut trailers = Headers::new();
        for (name, value) in collected.trailers().into_iter().flatten() {
            trailers.add(name.as_str(), value.as_bytes());
        }
        Some(host::HttpCallResponse {
            headers,
            body: collected.to_bytes().to_vec(),
            trailers,
        })
    };
    // No timeout (None): the module passed 0, which Envoy takes as no deadline.
    let deadline = call
        .timeout
        .map_or(Duration::MAX, |t| t.max(Duration::from_millis(1)));
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Some(response)) => HttpCallResult::Response(response),
        _ => HttpCallResult::Failed,
    }
}

/// What the gateway's own answer needs of the client's request (Kong's error body), taken
/// before its headers go upstream.
struct ReplyTo {
    accept: Option<HeaderValue>,
    /// Set by `proxy::handle` for every request.
    request_id: String,
}

impl ReplyTo {
    fn of(request: &HeaderMap) -> ReplyTo {
        ReplyTo {
            accept: request.get(http::header::ACCEPT).cloned(),
            request_id: request
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// The gateway's own answer once the filters have the request (a filter held the stream too
/// long, or the upstream failed), sent as Envoy sends its local replies: through the response
/// phases of the filters that saw the request (or straight to the client once the response
/// started through them), so modules see it and log it. When no head comes out of the filters
/// within `hold`, the plain answer goes to the client without them.
async fn own_answer(
    worker: &Rc<Worker>,
    stream: &Rc<Stream>,
    error: ProxyError,
    response_head: &mut oneshot::Receiver<Head>,
    reply_to: &ReplyTo,
    hold: Duration,
    log: &mut AccessLog,
) -> Result<Head, ProxyError> {
    let accept = reply_to.accept.as_ref().map(HeaderValue::as_bytes);
    let kong = kit::kong_error(
        error.status().as_u16(),
        error.message(),
        accept,
        reply_to.request_id.as_bytes(),
    );
    stream
        .chain
        .borrow_mut()
        .send_local_reply(host::LocalResponse {
            status: kong.status,
            headers: Headers::from_pairs(kong.headers),
            body: kong.body,
            details: error.to_string(),
            grpc_status: None,
        });
    log.error = Some(error.to_string());
    deliver(worker, stream).await;
    match tokio::time::timeout(hold, response_head).await {
        Ok(Ok(head)) => Ok(head),
        _ => Err(error),
    }
}

/// Ends a filtered stream (`on_done`, `on_log` for every filter) once nothing of it is left
/// to send: when `forward` lets go of it, or, when the client's body still streams, when that
/// body is dropped (sent whole, or the client left).
struct Finish(Option<Rc<Stream>>);

impl Finish {
    /// The client's body of a response whose head ended the stream or not. A body the filters
    /// already let through whole leaves as one piece of known length; one still streaming
    /// takes over ending the stream.
    fn body(&mut self, end_of_stream: bool, mut body: ChannelBody) -> ProxyBody {
        if end_of_stream {
            return ProxyBody::empty();
        }
        if let Some(whole) = body.take_whole() {
            return ProxyBody::full(whole);
        }
        let Some(stream) = self.0.take() else {
            return ProxyBody::streaming(body);
        };
        // The body's drop hook runs wherever hyper drops it: the stream is ended by a task.
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::task::spawn_local(async move {
            let _ = done_rx.await;
            end_stream(&stream);
        });
        ProxyBody::streaming(body.on_drop(move || {
            let _ = done_tx.send(());
        }))
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            end_stream(&stream);
        }
    }
}

fn end_stream(stream: &Stream) {
    // Borrowed only while a step of the chain runs, never across an await.
    if let Ok(mut chain) = stream.chain.try_borrow_mut() {
        chain.finish();
    }
    // A pump waiting for a filter to let go reads on (and ends) now.
    stream.wake.notify_waiters();
}

/// Which side of the stream a body comes from.
#[derive(Clone, Copy)]
enum Side {
    /// The client's request body.
    Request,
    /// The upstream's response body.
    Response,
}

/// After a local reply the rest of a request body is read and dropped like nginx's lingering
/// close (`server::LINGER_IDLE`, `server::LINGER_TOTAL`), so a client still writing its body
/// reads the answer instead of a reset; what is dropped counts in the connection's
/// [`Lingered`] bound, which the socket's own linger shares.
async fn linger(mut body: ClientBody, lingered: Lingered) {
    let deadline = tokio::time::Instant::now() + crate::server::LINGER_TOTAL;
    loop {
        let idle = (tokio::time::Instant::now() + crate::server::LINGER_IDLE).min(deadline);
        match tokio::time::timeout_at(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if !lingered.dropped(frame.data_ref().map_or(0, bytes::Buf::remaining)) {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Feeds one side's body (and trailers) into the chain as it arrives. When a local reply
/// ends the request first, the unread request body is handed back.
///
/// While a filter holds more than the buffer limit behind a watermark stop, the peer is not
/// read (Envoy's `readDisable`): its window or socket buffer fills and it waits. On HTTP/2 the
/// last DATA frame carries the end of the stream, as Envoy's codec hands it to filters.
async fn pump<B>(
    worker: Rc<Worker>,
    stream: Rc<Stream>,
    mut body: B,
    side: Side,
    http2: bool,
) -> Option<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let (chain, taps) = (&stream.chain, &stream.taps);
    loop {
        match side {
            Side::Request if chain.borrow().request_ended() => return Some(body),
            // The client has gone: what is left of the upstream's answer is not read (dropping
            // it ends the upstream request), as Envoy resets the upstream stream.
            Side::Response if chain.borrow().is_complete() => return None,
            _ => {}
        }
        loop {
            let disabled = match side {
                Side::Request => chain.borrow().request_read_disabled(),
                Side::Response => chain.borrow().response_read_disabled(),
            };
            if !disabled {
                break;
            }
            stream.wake.notified().await;
        }
        let frame = body.frame().await;
        let last = http2 && http_body::Body::is_end_stream(&body);
        let ended = frame.is_none();
        {
            let mut stream = chain.borrow_mut();
            match (frame, side) {
                (Some(Ok(frame)), _) => match frame.into_data() {
                    Ok(data) => match side {
                        Side::Request => stream.request_data(data.to_vec(), last),
                        Side::Response => stream.response_data(data.to_vec(), last),
                    },
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let trailers = from_header_map(&trailers, &[]);
                            match side {
                                Side::Request => stream.request_trailers(trailers),
                                Side::Response => stream.response_trailers(trailers),
                            }
                        }
                    }
                },
                (Some(Err(error)), Side::Request) => {
                    // The client went away mid-body, or stopped sending it for the client body
                    // timeout: nothing more will come.
                    let mut taps = taps.borrow_mut();
                    taps.abort(Side::Request);
                    if let Some(tx) = taps.reset.take() {
                        let _ = tx.send(match error.downcast_ref::<BodyTimeout>() {
                            Some(timeout) => ProxyError::ClientTimeout(timeout.to_string()),
                            None => stream_reset(),
                        });
                    }
                    return None;
                }
                (Some(Err(_)), Side::Response) => {
                    taps.borrow_mut().abort(Side::Response);
                    return None;
                }
                (None, Side::Request) => stream.request_data(Vec::new(), true),
                (None, Side::Response) => stream.response_data(Vec::new(), true),
            }
        }
        deliver(&worker, &stream).await;
        if ended {
            return None;
        }
    }
}

/// Whether the client's body channel has no room left.
fn client_full(taps: &RefCell<Taps>) -> bool {
    taps.borrow()
        .client
        .as_ref()
        .is_some_and(FrameSender::is_full)
}

/// A filter reset the stream (or it ended) before its answer.
fn stream_reset() -> ProxyError {
    ProxyError::BadGateway("the stream was reset".into())
}

/// The pairs filters see: `pseudo` (lower-case names) first, then the map's (lower-case, as
/// http's names are), each value's bytes as the peer sent them (obs-text stays obs-text).
fn from_header_map(map: &HeaderMap, pseudo: &[(&str, &[u8])]) -> Headers {
    let mut pairs = Vec::with_capacity(pseudo.len() + map.len());
    for (name, value) in pseudo {
        pairs.push(((*name).to_owned(), value.to_vec()));
    }
    for (name, value) in map {
        if name == http::header::HOST {
            continue;
        }
        pairs.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
    }
    Headers::from(pairs)
}

fn response_from(head: &Headers, body: ProxyBody) -> Response<ProxyBody> {
    response_with(head, to_header_map(head), body)
}

/// The client's response: `head`'s status, and `headers` made of it.
fn response_with(head: &Headers, headers: HeaderMap, body: ProxyBody) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = head
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    headers::strip_hop_by_hop(response.headers_mut());
    response
}

/// What the request path needs to know about the route it matched.
pub struct Matched<'a> {
    pub snapshot: &'a Arc<Snapshot>,
    pub route: usize,
    pub service: usize,
    pub matched: &'a str,
    /// The client's Host (or :authority).
    pub host: &'a str,
    /// The normalised path.
    pub path: &'a str,
}

pub async fn forward(
    worker: &Rc<Worker>,
    matched: Matched<'_>,
    downstream: Downstream,
    mut parts: http::request::Parts,
    body: ClientBody,
    filters: Vec<WorkerPlugin>,
    log: &mut AccessLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let snapshot = matched.snapshot;
    let route = &snapshot.config.routes[matched.route];
    let service = &snapshot.config.services[matched.service];
    // How long a filter may hold the request or the response head: the service's Kong
    // `read_timeout`, as the Envoy translation sets the route's idle timeout (a filter that
    // holds a stream that long is treated as an upstream that does not answer: 504).
    let hold_timeout = Duration::from_millis(service.read_timeout_ms);
    let protocol = match parts.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let reply_to = ReplyTo::of(&parts.headers);
    let info = StreamInfo {
        source: downstream.client,
        destination: downstream.local,
        protocol: Cow::Borrowed(protocol),
        route_name: snapshot.config.route_name(matched.route),
        cluster_name: snapshot.targets[matched.service].cluster_name.clone(),
        // Filters also read it as a header.
        request_id: reply_to.request_id.clone(),
        connection_id: downstream.id,
        requested_server_name: downstream
            .server_name
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        start: SystemTime::now(),
    };
    for filter in &filters {
        log.filters
            .push((filter.plugin().config().root_id.clone(), "ran".into()));
    }
    let chain: Chain = Rc::new(RefCell::new(HttpStream::new(
        filters
            .iter()
            .map(|f| Box::new(f.filter()) as Box<dyn host::HttpFilter>)
            .collect(),
        info,
    )));
    // A request without a body (most of them) needs no channel for one.
    let end_of_stream = http_body::Body::is_end_stream(&body);
    let (upstream_tx, upstream_body) = match end_of_stream {
        true => (None, None),
        false => {
            let (tx, body) = channel(CHANNEL_FRAMES);
            (Some(tx), Some(body))
        }
    };
    let (client_tx, client_body) = channel(CHANNEL_FRAMES);
    let (request_head_tx, mut request_head_rx) = oneshot::channel::<Head>();
    let (response_head_tx, mut response_head_rx) = oneshot::channel::<Head>();
    let (reset_tx, mut reset_rx) = oneshot::channel::<ProxyError>();
    let taps = Rc::new(RefCell::new(Taps {
        request_head: Some(request_head_tx),
        upstream: upstream_tx,
        response_head: Some(response_head_tx),
        client: Some(client_tx),
        reset: Some(reset_tx),
    }));
    let stream = Rc::new(Stream {
        chain: Rc::clone(&chain),
        taps: Rc::clone(&taps),
        wake: Notify::new(),
        contexts: RefCell::new(filters.iter().map(|f| (f.id(), None)).collect()),
        plugins: filters.clone(),
        worker: Rc::downgrade(worker),
    });
    // The stream ends when `forward` is done with it (or dropped: the client left), unless
    // the response body still streams; then when the client's body is dropped.
    let mut finish = Finish(Some(Rc::clone(&stream)));

    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{}?{q}", matched.path),
        None => matched.path.to_owned(),
    };
    // Filters see the Host as the client sent it (Envoy's `:authority`): `$(headers.host)`
    // and `preserve_host` keep its spelling; only routing uses the lower-cased host.
    let given_authority = super::host_header(&parts);
    let scheme = downstream.scheme();
    let view = headers::for_filters(&parts.headers);
    // The filters see the client's headers as they came: what they let through can take the
    // client's map over ([`to_header_map_from`]).
    let as_they_came = matches!(view, Cow::Borrowed(_));
    let mut request_headers = from_header_map(
        &view,
        &[
            (":authority", given_authority.as_bytes()),
            (":path", path_and_query.as_bytes()),
            (":method", parts.method.as_str().as_bytes()),
            (":scheme", scheme.as_bytes()),
        ],
    );
    drop(view);
    // Filters trust it as the data plane's record of the client's path (Envoy sets it when a
    // route rewrites the path and drops a client's own): a client may not choose it.
    request_headers.remove("x-envoy-original-path");
    // The same for the Host the translation hands the transformer in Envoy: here `:authority`
    // is the client's, and a client's copy of the header may not stand in for it.
    request_headers.remove(model::envoy::CLIENT_HOST_HEADER);
    chain
        .borrow_mut()
        .request_headers(request_headers, end_of_stream);
    deliver(worker, &stream).await;
    if !end_of_stream {
        // A client that waits for `100 Continue` sends nothing after a local reply: its
        // connection closes at once. Any other body is read and dropped for a while.
        let expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if chain.borrow().request_ended() && expects_continue {
            // Answered at the headers (request-size-limiting's 417): the body is never asked
            // for, so hyper sends no `100 Continue`, and the connection ends with the answer
            // (then lingers, `server::Connected::linger`).
            drop(body);
        } else {
            let request_pump = pump(
                Rc::clone(worker),
                Rc::clone(&stream),
                body,
                Side::Request,
                parts.version == http::Version::HTTP_2,
            );
            let lingered = parts
                .extensions
                .get::<Lingered>()
                .cloned()
                .unwrap_or_default();
            tokio::task::spawn_local(async move {
                if let Some(unread) = request_pump.await {
                    if !expects_continue {
                        linger(unread, lingered).await;
                    }
                }
            });
        }
    }

    let mut local =
        |head: Head, body: ChannelBody| response_from(&head.0, finish.body(head.1, body));
    // Most often the filters let the head through at once: no timer to arm and disarm then.
    let request_head = match request_head_rx.try_recv() {
        Ok(head) => head,
        Err(_) => tokio::select! {
        head = &mut request_head_rx => head.map_err(|_| ProxyError::BadGateway("the filter chain ended the request".into()))?,
        head = &mut response_head_rx => {
            let head = head.map_err(|_| ProxyError::BadGateway("the filter chain ended the request".into()))?;
            log.filters.push(("local response".into(), head.0.get_str(":status").unwrap_or("").to_owned().into()));
            return Ok(local(head, client_body));
        }
        reset = &mut reset_rx => return Err(reset.unwrap_or_else(|_| stream_reset())),
        _ = tokio::time::sleep(hold_timeout) => {
            let error = ProxyError::Timeout("a filter held the request".into());
            return own_answer(worker, &stream, error, &mut response_head_rx, &reply_to, hold_timeout, log).await.map(|head| local(head, client_body));
        }
        },
    };

    // The upstream request, from what the filters made of the client's.
    let (head, head_eos) = request_head;
    let filtered_path = match head.get(":path") {
        Some(path) => std::str::from_utf8(path)
            .map_err(|_| ProxyError::BadRequest("a filter set a :path that is not text".into()))?,
        None => matched.path,
    };
    let (path, query) = match filtered_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (filtered_path, None),
    };
    // A filter that rewrote the path set the whole upstream path, as Kong's
    // `kong.service.request.set_path`: strip_path and the service path are not applied again.
    let upstream_path = if path == matched.path {
        model::router::upstream_path(
            service.path.as_deref(),
            matched.matched,
            route.strip_path,
            path,
        )
    } else {
        path.to_owned()
    };
    let target = &snapshot.targets[matched.service];
    let uri = super::upstream::uri(target, &upstream_path, query)?;
    log.upstream = Some(uri.clone());
    let method = match head.get_str(":method") {
        Some(method) => http::Method::from_bytes(method.as_bytes())
            .map_err(|e| ProxyError::BadRequest(format!("the filtered request: {e}")))?,
        None => parts.method.clone(),
    };
    // The forwarding headers and the Host are added to it.
    let filtered_headers = if as_they_came {
        let client = std::mem::take(&mut parts.headers);
        to_header_map_from(
            &head,
            client,
            Some(&http::header::HOST),
            headers::FORWARDING_HEADERS,
        )
    } else {
        to_header_map_with_room(&head, headers::FORWARDING_HEADERS)
    };
    let authority = head.get_str(":authority").unwrap_or(&given_authority);
    // A filter that set the Host set Kong's `upstream_host`, which wins over preserve_host.
    let upstream_host = if authority != given_authority || route.preserve_host {
        authority.to_owned()
    } else {
        target.host.clone()
    };
    let upstream_body = match upstream_body {
        Some(body) if !head_eos => ProxyBody::streaming(body),
        _ => ProxyBody::empty(),
    };
    let mut upstream_request = Request::builder()
        .method(method)
        .uri(uri)
        .body(upstream_body)
        .map_err(|e| ProxyError::BadRequest(format!("building the upstream request: {e}")))?;
    let filtered_length = filtered_headers.contains_key(http::header::CONTENT_LENGTH);
    headers::forward_request_headers(
        filtered_headers,
        upstream_request.headers_mut(),
        &downstream,
        matched.host,
        matched.path,
        route.strip_path.then_some(matched.matched),
        upstream_host,
    );
    if !head_eos && !filtered_length {
        upstream_request
            .headers_mut()
            .remove(http::header::CONTENT_LENGTH);
    }
    headers::frame_body_of_unknown_length(upstream_request.headers_mut(), !head_eos);

    let started = std::time::Instant::now();
    let response = tokio::select! {
        response = worker.upstreams.send(service, upstream_request) => match response {
            Ok(response) => response,
            Err(error) => {
                return own_answer(worker, &stream, error, &mut response_head_rx, &reply_to, hold_timeout, log).await.map(|head| local(head, client_body));
            }
        },
        head = &mut response_head_rx => {
            // A filter answered while the body streamed (e.g. a size limit): the upstream
            // request is dropped, which aborts it.
            let head = head.map_err(|_| ProxyError::BadGateway("the filter chain ended the request".into()))?;
            log.filters.push(("local response".into(), head.0.get_str(":status").unwrap_or("").to_owned().into()));
            return Ok(local(head, client_body));
        }
        reset = &mut reset_rx => return Err(reset.unwrap_or_else(|_| stream_reset())),
    };
    log.upstream_latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);

    let (mut response_parts, response_body) = response.into_parts();
    // A WebSocket upstream's side of the switch, for `upgrade::switch` once the 101 went
    // through the filters.
    let upstream_upgrade = response_parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>();
    headers::strip_hop_by_hop(&mut response_parts.headers);
    let response_headers = from_header_map(
        &response_parts.headers,
        &[(":status", response_parts.status.as_str().as_bytes())],
    );
    let upstream_headers = std::mem::take(&mut response_parts.headers);
    let end_of_stream = http_body::Body::is_end_stream(&response_body);
    let short = http_body::Body::size_hint(&response_body)
        .exact()
        .is_some_and(|length| length <= SHORT_RESPONSE_BYTES);
    chain
        .borrow_mut()
        .response_headers(response_headers, end_of_stream);
    deliver(worker, &stream).await;
    if !end_of_stream {
        let mut response_pump = Box::pin(pump(
            Rc::clone(worker),
            Rc::clone(&stream),
            response_body,
            Side::Response,
            response_parts.version == http::Version::HTTP_2,
        ));
        // A short answer of known length is read through the filters before its head goes
        // to the client, so head and body leave in one write (hyper flushes the head alone
        // when the body has nothing yet; Envoy's codec coalesces them within an event loop
        // iteration). It stops waiting once the client's channel is full: only the client
        // empties it.
        let whole = short
            && std::future::poll_fn(|cx| {
                match std::future::Future::poll(response_pump.as_mut(), cx) {
                    std::task::Poll::Ready(_) => std::task::Poll::Ready(true),
                    std::task::Poll::Pending if client_full(&taps) => std::task::Poll::Ready(false),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await;
        if !whole {
            tokio::task::spawn_local(async move {
                response_pump.await;
            });
        }
    }
    let head = match response_head_rx.try_recv() {
        Ok(head) => head,
        Err(_) => tokio::select! {
            head = &mut response_head_rx => head.map_err(|_| ProxyError::BadGateway("the filter chain ended the response".into()))?,
            reset = reset_rx => return Err(reset.unwrap_or_else(|_| stream_reset())),
            _ = tokio::time::sleep(hold_timeout) => {
                let error = ProxyError::Timeout("a filter held the response".into());
                own_answer(worker, &stream, error, &mut response_head_rx, &reply_to, hold_timeout, log).await?
            }
        },
    };
    let headers = to_header_map_from(&head.0, upstream_headers, None, 0);
    let mut response = response_with(&head.0, headers, finish.body(head.1, client_body));
    if let Some(upgrade) = upstream_upgrade {
        response.extensions_mut().insert(upgrade);
    }
    response.headers_mut().insert(
        "via",
        HeaderValue::from_static(concat!("1.1 wasmgate/", env!("CARGO_PKG_VERSION"))),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::super::headers::tests::map;
    use super::*;

    fn listed(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Whatever the filters did to a head, the map made of it holds what a fresh conversion
    /// holds (the original's skipped Host aside), in the same order.
    #[test]
    fn a_head_taken_over_from_its_map_is_what_a_fresh_conversion_makes() {
        let original = map(&[
            ("host", b"bench.example"),
            ("user-agent", b"curl"),
            ("x-tag", b"a"),
            ("x-tag", b"b\xff"),
            ("accept", b"*/*"),
        ]);
        type Edit = fn(&mut Headers);
        let edits: [(&str, Edit, bool); 7] = [
            ("nothing", |_| {}, true),
            (
                "appended",
                |h| h.add("authorization", "Bearer s3cr3t"),
                true,
            ),
            ("appended to a name it has", |h| h.add("x-tag", "c"), true),
            ("replaced", |h| h.replace("user-agent", "other"), false),
            ("removed the last", |h| h.remove("accept"), false),
            ("removed one of a name", |h| h.replace("x-tag", "a"), false),
            (
                "changed a pseudo-header",
                |h| h.replace(":path", "/other"),
                true,
            ),
        ];
        for (what, edit, taken_over) in edits {
            let mut head = from_header_map(&original, &[(":path", b"/"), (":method", b"GET")]);
            edit(&mut head);
            let made = to_header_map_from(&head, original.clone(), Some(&http::header::HOST), 2);
            let mut fresh = to_header_map(&head);
            if taken_over {
                // The original's Host stays (the upstream request sets it), where it was.
                let mut expected = map(&[("host", b"bench.example")]);
                for (name, value) in fresh.iter() {
                    expected.append(name.clone(), value.clone());
                }
                fresh = expected;
            }
            assert_eq!(listed(&made), listed(&fresh), "{what}");
        }
        // Without a skipped name, a Host the pairs do not have is not taken over.
        let head = from_header_map(&original, &[(":status", b"200")]);
        let made = to_header_map_from(&head, original.clone(), None, 0);
        assert!(!made.contains_key(http::header::HOST));
        assert_eq!(listed(&made), listed(&to_header_map(&head)));
    }
}
