//! An in-process harness for plugin tests: load `.wasm` modules into a filter chain, send a
//! request through it, and see what the modules did — what reached the upstream, the response
//! (local or proxied), logs, shared data, metrics, and the HTTP calls they made (answered by
//! the test). Time is a [`ManualClock`]: [`Harness::advance`] moves it and fires due ticks,
//! so minute and hour windows are testable without waiting.
//!
//! The harness mirrors what Envoy adds around filters, so that the shared case files give the
//! same results here and in Envoy: `:authority`/`:path`/`:method`/`:scheme` pseudo-headers,
//! `x-forwarded-for` (the client IP), `x-forwarded-proto`, `x-request-id`, and
//! `x-envoy-expected-rq-timeout-ms` towards the upstream; a paused stream nobody resumes gets
//! Envoy's `504 stream timeout`, through the filters, once the stream timeout has
//! (virtually) passed.
//!
//! ```no_run
//! use host::testing::{Harness, TestRequest};
//! use host::PluginConfig;
//!
//! let mut h = Harness::new().unwrap();
//! h.load_file("request_size_limiting.wasm".as_ref(),
//!     PluginConfig::new("request-size-limiting", r#"{"allowed_payload_size": 1}"#)).unwrap();
//! let out = h.send(TestRequest::post("/", b"hello".to_vec()));
//! assert_eq!(out.response.status, 200);
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::callout::{HttpCallResult, HttpCallout};
use crate::clock::{Clock, ManualClock};
use crate::engine::{Engine, EngineConfig};
use crate::env::{ForeignFunction, HostEnv};
use crate::error::Error;
use crate::filter_chain::{
    HttpFilter, HttpStream, LocalResponse, Output, StreamInfo, DEFAULT_BUFFER_LIMIT,
};
use crate::headers::Headers;
use crate::logs::LogRecord;
use crate::metrics::MetricValue;
use crate::module::PluginModule;
use crate::plugin::{Plugin, WorkerPlugin};
use crate::plugin_config::PluginConfig;
use crate::shared_data::DEFAULT_MAX_BYTES_PER_VM;
use crate::state::StreamOp;

/// One engine for every harness of the process (compiling is the slow part).
pub fn shared_engine() -> Result<Engine, Error> {
    static ENGINE: OnceLock<Result<Engine, Error>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::new(EngineConfig {
                max_instances: 1000,
                ..EngineConfig::default()
            })
        })
        .clone()
}

/// A module compiled once per process and path.
pub fn module_from_file(path: &Path) -> Result<Arc<PluginModule>, Error> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<PluginModule>>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    if let Some(m) = modules.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return Ok(Arc::clone(m));
    }
    let module = Arc::new(PluginModule::from_file(&shared_engine()?, path)?);
    modules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_owned(), Arc::clone(&module));
    Ok(module)
}

/// A request body as a client sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestBody {
    Empty,
    /// With a Content-Length; delivered in one piece.
    Bytes(Vec<u8>),
    /// Without a Content-Length (chunked): each chunk, then an empty end-of-stream.
    Chunks(Vec<Vec<u8>>),
    /// With a Content-Length, delivered in these pieces (the last one ends the stream).
    Pieces(Vec<Vec<u8>>),
}

#[derive(Clone, Debug)]
pub struct TestRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// As the client sends them (a `host` header becomes `:authority`).
    pub headers: Vec<(String, String)>,
    pub body: TestBody,
    pub trailers: Option<Headers>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
}

impl TestRequest {
    pub fn new(method: &str, path: &str) -> TestRequest {
        TestRequest {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: TestBody::Empty,
            trailers: None,
            protocol: "HTTP/1.1".into(),
        }
    }

    pub fn get(path: &str) -> TestRequest {
        TestRequest::new("GET", path)
    }

    pub fn post(path: &str, body: Vec<u8>) -> TestRequest {
        TestRequest::new("POST", path).body(TestBody::Bytes(body))
    }

    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: TestBody) -> TestRequest {
        self.body = body;
        self
    }
}

/// What reached the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authority: String,
    /// Without pseudo-headers.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    pub protocol: String,
}

/// A response (from the upstream, or as the client got it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestResponse {
    pub status: u16,
    /// Without `:status`.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
}

impl TestResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> TestResponse {
        TestResponse {
            status,
            headers: Headers::from_pairs(headers.iter().map(|(k, v)| (*k, *v))),
            body: body.to_vec(),
            trailers: None,
        }
    }

    /// The first value of `name`, when it is text (`headers.get` has the bytes).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The result of one request.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub response: TestResponse,
    /// `None` when nothing reached the upstream (a local response, a reset).
    pub upstream: Option<UpstreamRequest>,
    /// The chain released the request headers towards the upstream, as a streaming data plane
    /// forwards them at once, even when a filter answered afterwards.
    pub forwarded: bool,
    /// The chain released the whole request (its end of stream) towards the upstream.
    pub forwarded_whole: bool,
    /// A filter answered (local response).
    pub local: bool,
    pub reset: bool,
    /// The stream stayed paused until the stream timeout (504).
    pub timed_out: bool,
    /// HTTP calls the modules made while serving it.
    pub http_calls: Vec<HttpCallout>,
}

type UpstreamFn = Box<dyn FnMut(&UpstreamRequest) -> TestResponse>;
type HttpCallFn = Box<dyn FnMut(&HttpCallout) -> HttpCallResult>;

/// A filter chain of plugins on one (simulated) worker.
pub struct Harness {
    engine: Engine,
    env: Arc<HostEnv>,
    clock: Arc<ManualClock>,
    workers: Vec<WorkerPlugin>,
    upstream: UpstreamFn,
    http_calls: HttpCallFn,
    /// Stream facts for the next requests (source address, route and cluster names).
    pub info: StreamInfo,
    pub buffer_limit: usize,
    /// How long a filter may hold the stream before it is answered 504: `gateway` uses the
    /// service's `read_timeout`, whose Kong default this is.
    pub stream_timeout: Duration,
    requests: u64,
    foreign: HashMap<String, ForeignFunction>,
    shared_data_limit: usize,
}

impl Harness {
    /// An empty chain on the shared engine, with its own shared data, queues, metrics and a
    /// manual clock starting now.
    pub fn new() -> Result<Harness, Error> {
        let clock = Arc::new(ManualClock::starting_now());
        let env = Arc::new(HostEnv::new(Arc::clone(&clock) as Arc<dyn Clock>));
        Ok(Harness {
            engine: shared_engine()?,
            env,
            clock,
            workers: Vec::new(),
            upstream: Box::new(|_| TestResponse::new(200, &[], b"")),
            http_calls: Box::new(|_| HttpCallResult::Failed),
            info: StreamInfo {
                route_name: "route".into(),
                cluster_name: "upstream".into(),
                ..StreamInfo::default()
            },
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            stream_timeout: Duration::from_secs(60),
            requests: 0,
            foreign: HashMap::new(),
            shared_data_limit: DEFAULT_MAX_BYTES_PER_VM,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn env(&self) -> &Arc<HostEnv> {
        &self.env
    }

    /// Registers a foreign function (before loading plugins).
    pub fn foreign_function(
        &mut self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, u32> + Send + Sync + 'static,
    ) {
        self.foreign.insert(name.to_owned(), Arc::new(f));
        self.renew_env();
    }

    /// Caps each vm_id's shared data at `bytes` (before loading plugins), as `gateway run
    /// --shared-data-max-bytes` does.
    pub fn set_shared_data_limit(&mut self, bytes: usize) {
        self.shared_data_limit = bytes;
        self.renew_env();
    }

    fn renew_env(&mut self) {
        let mut env = HostEnv::new(Arc::clone(&self.clock) as Arc<dyn Clock>)
            .with_shared_data_limit(self.shared_data_limit);
        env.foreign = self.foreign.clone();
        self.env = Arc::new(env);
    }

    /// Appends a plugin from a `.wasm` file to the chain. A refused configuration is
    /// `Err(Error::ConfigRefused)` with what the module logged.
    pub fn load_file(&mut self, path: &Path, config: PluginConfig) -> Result<WorkerPlugin, Error> {
        let module = module_from_file(path)?;
        self.load_module(module, config)
    }

    /// Appends a plugin from module bytes (compiled for this harness).
    pub fn load_bytes(&mut self, wasm: &[u8], config: PluginConfig) -> Result<WorkerPlugin, Error> {
        let module = Arc::new(PluginModule::new(&self.engine, wasm)?);
        self.load_module(module, config)
    }

    pub fn load_module(
        &mut self,
        module: Arc<PluginModule>,
        config: PluginConfig,
    ) -> Result<WorkerPlugin, Error> {
        let plugin = Plugin::new(module, config, Arc::clone(&self.env));
        let worker = plugin.worker()?;
        self.workers.push(worker.clone());
        Ok(worker)
    }

    pub fn plugins(&self) -> &[WorkerPlugin] {
        &self.workers
    }

    /// The client's address for the next requests (`source.address`).
    pub fn set_source(&mut self, addr: SocketAddr) {
        self.info.source = addr;
    }

    pub fn set_route(&mut self, route: &str, cluster: &str) {
        self.info.route_name = route.into();
        self.info.cluster_name = cluster.into();
    }

    /// How the upstream answers (default: 200, empty).
    pub fn set_upstream(&mut self, f: impl FnMut(&UpstreamRequest) -> TestResponse + 'static) {
        self.upstream = Box::new(f);
    }

    /// How HTTP calls of the modules are answered (default: failed, as an unknown cluster).
    pub fn on_http_call(&mut self, f: impl FnMut(&HttpCallout) -> HttpCallResult + 'static) {
        self.http_calls = Box::new(f);
    }

    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Moves time forward and runs what became due (ticks, queues).
    pub fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.poll();
    }

    /// Runs due ticks and queue notifications and answers root-context calls.
    pub fn poll(&mut self) {
        for _ in 0..100 {
            let mut busy = false;
            for w in self.workers.clone() {
                w.poll();
                let callouts = w.take_root_callouts();
                for call in callouts.http {
                    busy = true;
                    let result = (self.http_calls)(&call);
                    w.root_http_call_response(call.token, result);
                }
            }
            if !busy {
                break;
            }
        }
    }

    /// Every log record of every plugin in the chain.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.workers
            .iter()
            .flat_map(|w| w.logs().records())
            .collect()
    }

    /// The log messages, one string each.
    pub fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(|r| format!("[{:?}] {}", r.level, r.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<Vec<u8>> {
        self.env.shared_data.get(vm_id, key).map(|(v, _)| v)
    }

    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.env.metrics.by_name(name)
    }

    fn request_headers(&mut self, req: &TestRequest) -> (Headers, bool) {
        self.requests += 1;
        let mut h = Headers::new();
        let authority = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or("wasmgate.test", |(_, v)| v.as_str())
            .to_owned();
        h.add(":authority", &authority);
        h.add(":path", &req.path);
        h.add(":method", &req.method);
        h.add(":scheme", "http");
        // An edge proxy replaces the client's request id with its own (below).
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("x-request-id") {
                h.add(k, v);
            }
        }
        let explicit_length = h.get("content-length").map(<[u8]>::to_vec);
        let body_len: Option<usize> = match &req.body {
            TestBody::Empty => Some(0),
            TestBody::Bytes(b) => Some(b.len()),
            TestBody::Pieces(p) => Some(p.iter().map(Vec::len).sum()),
            TestBody::Chunks(_) => None,
        };
        if let (None, Some(len)) = (&explicit_length, body_len) {
            if len > 0 || req.method != "GET" {
                h.add("content-length", len.to_string());
            }
        }
        let declared = h
            .get_str("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let eos = body_len == Some(0) && declared == 0 && req.trailers.is_none();
        h.add("x-forwarded-for", self.info.source.ip().to_string());
        h.add("x-forwarded-proto", "http");
        h.add("x-request-id", request_id(self.requests));
        (h, eos)
    }

    /// Sends one request through the chain and, unless a filter answers, to the upstream.
    pub fn send(&mut self, req: TestRequest) -> Outcome {
        let filters: Vec<Box<dyn HttpFilter>> = self
            .workers
            .iter()
            .map(|w| Box::new(w.filter()) as Box<dyn HttpFilter>)
            .collect();
        let mut info = self.info.clone();
        info.protocol = req.protocol.clone().into();
        info.start = self.clock.now();
        info.request_id = request_id(self.requests + 1);
        info.connection_id = self.requests + 1;
        let mut stream = HttpStream::new(filters, info);
        stream.set_buffer_limit(self.buffer_limit);
        let mut run = Run {
            outcome: Outcome::default(),
            upstream: UpstreamRequest {
                protocol: req.protocol.clone(),
                ..UpstreamRequest::default()
            },
            upstream_started: false,
            upstream_done: false,
            client_status: None,
            client_done: false,
        };
        let (headers, eos) = self.request_headers(&req);
        stream.request_headers(headers, eos);
        self.pump(&mut stream, &mut run);
        if !eos {
            match &req.body {
                TestBody::Empty | TestBody::Bytes(_) if req.trailers.is_none() => {
                    let data = match &req.body {
                        TestBody::Bytes(b) => b.clone(),
                        _ => Vec::new(),
                    };
                    stream.request_data(data, true);
                    self.pump(&mut stream, &mut run);
                }
                TestBody::Empty | TestBody::Bytes(_) => {
                    if let TestBody::Bytes(b) = &req.body {
                        stream.request_data(b.clone(), false);
                        self.pump(&mut stream, &mut run);
                    }
                }
                TestBody::Pieces(pieces) => {
                    let n = pieces.len();
                    for (i, p) in pieces.iter().enumerate() {
                        stream.request_data(p.clone(), i + 1 == n && req.trailers.is_none());
                        self.pump(&mut stream, &mut run);
                    }
                }
                TestBody::Chunks(chunks) => {
                    for c in chunks {
                        stream.request_data(c.clone(), false);
                        self.pump(&mut stream, &mut run);
                    }
                    if req.trailers.is_none() {
                        stream.request_data(Vec::new(), true);
                        self.pump(&mut stream, &mut run);
                    }
                }
            }
            if let Some(t) = &req.trailers {
                stream.request_trailers(t.clone());
                self.pump(&mut stream, &mut run);
            }
        }
        if !run.client_done && !run.outcome.reset {
            // Nothing more will come: a paused stream waits for the stream timeout, then gets
            // Envoy's 504 as a local reply through the filters (`gateway` answers the same
            // way, in Kong's words).
            self.advance(self.stream_timeout);
            self.pump(&mut stream, &mut run);
            if !run.client_done && !run.outcome.reset {
                run.outcome.timed_out = true;
                stream.send_local_reply(LocalResponse {
                    status: 504,
                    body: b"stream timeout".to_vec(),
                    details: "stream_idle_timeout".into(),
                    ..LocalResponse::default()
                });
                self.pump(&mut stream, &mut run);
            }
        }
        stream.finish();
        self.poll();
        run.outcome.local |= stream.local_reply_sent();
        if run.outcome.local || run.outcome.reset {
            run.outcome.upstream = None;
        }
        run.outcome
    }

    fn pump(&mut self, stream: &mut HttpStream, run: &mut Run) {
        for _ in 0..1000 {
            let mut progressed = false;
            for (filter, callouts) in stream.take_callouts() {
                for call in callouts.http {
                    progressed = true;
                    let result = (self.http_calls)(&call);
                    run.outcome.http_calls.push(call.clone());
                    stream.http_call_response(filter, call.token, result);
                }
            }
            for (i, w) in self.workers.clone().into_iter().enumerate() {
                // One stream at a time: every op is for this stream's context.
                for (_ctx, op) in w.take_stream_ops() {
                    progressed = true;
                    match op {
                        StreamOp::Close => run.outcome.reset = true,
                        StreamOp::ResumeRequest | StreamOp::ResumeResponse => stream.resume(i),
                        StreamOp::LocalReply(response) => stream.send_local_reply(*response),
                    }
                }
            }
            for out in stream.take_outputs() {
                progressed = true;
                self.output(out, stream, run);
            }
            if run.upstream_done && !run.upstream_started {
                run.upstream_started = true;
                progressed = true;
                let mut upstream = run.upstream.clone();
                upstream
                    .headers
                    .add("x-envoy-expected-rq-timeout-ms", "60000");
                run.upstream = upstream.clone();
                let response = (self.upstream)(&upstream);
                run.outcome.upstream = Some(upstream);
                let mut h = Headers::new();
                h.add(":status", response.status.to_string());
                for (k, v) in response.headers.iter() {
                    h.add(k, v);
                }
                if response.headers.get("content-length").is_none() {
                    h.add("content-length", response.body.len().to_string());
                }
                let empty = response.body.is_empty() && response.trailers.is_none();
                stream.response_headers(h, empty);
                if !empty {
                    stream.response_data(response.body.clone(), response.trailers.is_none());
                }
                if let Some(t) = response.trailers {
                    stream.response_trailers(t);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn output(&mut self, out: Output, _stream: &mut HttpStream, run: &mut Run) {
        match out {
            Output::RequestHeaders {
                headers,
                end_of_stream,
            } => {
                let mut rest = Headers::new();
                for (k, v) in headers.iter() {
                    match k {
                        ":method" => run.upstream.method = String::from_utf8_lossy(v).into_owned(),
                        ":path" => run.upstream.path = String::from_utf8_lossy(v).into_owned(),
                        ":authority" => {
                            run.upstream.authority = String::from_utf8_lossy(v).into_owned()
                        }
                        k if k.starts_with(':') => {}
                        _ => rest.add(k, v),
                    }
                }
                // The upstream speaks HTTP/1.1 (as in our Envoy bootstraps): `host`.
                rest.add_first("host", run.upstream.authority.as_bytes());
                run.upstream.headers = rest;
                run.upstream_done = end_of_stream;
                run.outcome.forwarded = true;
                run.outcome.forwarded_whole = end_of_stream;
            }
            Output::RequestData {
                data,
                end_of_stream,
            } => {
                run.upstream.body.extend_from_slice(&data);
                run.upstream_done |= end_of_stream;
                run.outcome.forwarded_whole |= end_of_stream;
            }
            Output::RequestTrailers(t) => {
                run.upstream.trailers = Some(t);
                run.upstream_done = true;
                run.outcome.forwarded_whole = true;
            }
            Output::ResponseHeaders {
                headers,
                end_of_stream,
            } => {
                let mut rest = Headers::new();
                for (k, v) in headers.iter() {
                    if k == ":status" {
                        run.client_status =
                            std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                    } else if !k.starts_with(':') {
                        rest.add(k, v);
                    }
                }
                // `always_set_request_id_in_response`, after the filters, as Envoy's
                // connection manager and `gateway` do.
                rest.add("x-request-id", request_id(self.requests));
                run.outcome.response.status = run.client_status.unwrap_or(0);
                run.outcome.response.headers = rest;
                run.client_done = end_of_stream;
            }
            Output::ResponseData {
                data,
                end_of_stream,
            } => {
                run.outcome.response.body.extend_from_slice(&data);
                run.client_done |= end_of_stream;
            }
            Output::ResponseTrailers(t) => {
                run.outcome.response.trailers = Some(t);
                run.client_done = true;
            }
            Output::Reset => {
                run.outcome.reset = true;
            }
        }
    }
}

/// The `n`th request's id, a UUID as Envoy's.
fn request_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

struct Run {
    outcome: Outcome,
    upstream: UpstreamRequest,
    upstream_started: bool,
    upstream_done: bool,
    client_status: Option<u16>,
    client_done: bool,
}

/// The wall-clock time of `clock` as seconds since the epoch (handy in assertions).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
