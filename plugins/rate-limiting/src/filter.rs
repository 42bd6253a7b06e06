//! The proxy-wasm adapter: reads what the identifier needs, runs the core's check-and-count on
//! the host's shared data, and adds the headers to the response or sends the rejection.
//!
//! Every host call goes through `kit::host`, with every status handled here: the SDK's
//! wrappers panic (a trap: the request gets 503 and the VM is rebuilt) on a status they do
//! not expect, its string getters on a header value outside UTF-8 (`Accept: \xff`), and a
//! failing store must follow `fault_tolerant` instead.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use kit::host::{self, Buffer, Level, Map};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::counters::HeaderValue;
use crate::limiter::{Decision, Need, RequestInfo};
use crate::remote;
use crate::siphash::SipKey;
use crate::store::{hash_key, MAX_ATTEMPTS};
use crate::{
    Config, Limiter, Period, SetError, Store, Verdict, EVICTIONS_METRIC, PLUGIN_NAME,
    UNCOUNTED_METRIC,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(RateLimitRoot { limiter: None, service: None, metrics: Metrics::default() })
    });
}}

/// The host's shared data (one map per vm_id, process-wide).
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
        host::shared_data(key)
    }

    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), SetError> {
        host::set_shared_data(key, value, cas).map_err(|status| match status {
            host::CAS_MISMATCH => SetError::CasMismatch,
            status => SetError::Failed(status),
        })
    }
}

/// The host's wall clock in Unix milliseconds, or its status.
fn now_ms() -> Result<i64, u32> {
    host::current_time_nanos().map(|nanos| i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX))
}

/// A request header's value as the host's bytes; `None` when absent or when the host refuses.
fn request_header(name: &str) -> Option<Vec<u8>> {
    host::header(Map::RequestHeaders, name.as_bytes())
        .ok()
        .flatten()
}

/// What Kong's error body needs from the request: read only when it is refused.
fn reply_to() -> (Option<Vec<u8>>, Vec<u8>) {
    (
        request_header("accept"),
        host::property(b"request\0id").unwrap_or_default(),
    )
}

/// The most headers an allowed request's response gets: two per period, whose limits are
/// distinct, and the three `RateLimit-*`.
const MAX_HEADERS: usize = 2 * Period::ALL.len() + 3;

/// A header value as printed for the response.
enum Printed {
    /// An integer, in the buffer's last `len` bytes.
    Inline { buf: [u8; 24], len: u8 },
    /// Anything else, as `lua_tostring` prints it.
    Text(String),
}

impl Printed {
    fn new(value: HeaderValue) -> Printed {
        let mut buf = [0; 24];
        match value.write(&mut buf).map(<[u8]>::len) {
            Some(len) => Printed::Inline {
                buf,
                len: len as u8,
            },
            None => Printed::Text(value.text()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Printed::Inline { buf, len } => {
                buf.get(buf.len() - usize::from(*len)..).unwrap_or_default()
            }
            Printed::Text(text) => text.as_bytes(),
        }
    }
}

/// The headers for the upstream's response as the decision made them, in order: plain
/// values, so that a stream's context stays small and has nothing to drop (it is made and
/// freed on every request); printed when they are added.
struct ResponseHeaders {
    slots: [(&'static str, HeaderValue); MAX_HEADERS],
    len: usize,
}

impl ResponseHeaders {
    fn new() -> ResponseHeaders {
        ResponseHeaders {
            slots: [("", HeaderValue::Integer(0)); MAX_HEADERS],
            len: 0,
        }
    }

    fn push(&mut self, name: &'static str, value: HeaderValue) {
        if let Some(slot) = self.slots.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The headers, once: a later call has none.
    fn take(&mut self) -> &[(&'static str, HeaderValue)] {
        let len = std::mem::take(&mut self.len);
        self.slots.get(..len).unwrap_or_default()
    }
}

/// `request` with what Kong's error body needs.
fn with_reply<'a>(
    request: &RequestInfo<'a>,
    (accept, request_id): &'a (Option<Vec<u8>>, Vec<u8>),
) -> RequestInfo<'a> {
    RequestInfo {
        accept: accept.as_deref(),
        request_id,
        ..*request
    }
}

/// 128 bits from WASI's `random_get`.
fn draw_hash_key() -> Result<SipKey, String> {
    let mut key: SipKey = [0; 16];
    host::random(&mut key)
        .map(|()| key)
        .map_err(|errno| format!("drawing the identifier hash key: random_get errno {errno}"))
}

thread_local! {
    /// This VM's copy of the process's hash key, once read or drawn.
    static HASH_KEY: Cell<Option<SipKey>> = const { Cell::new(None) };
    /// What this VM has reported so far, to log at 1, 2, 4, 8… occurrences, not every one.
    static EVICTIONS: Cell<u64> = const { Cell::new(0) };
    static UNCOUNTED: Cell<u64> = const { Cell::new(0) };
}

fn process_hash_key() -> Result<SipKey, String> {
    if let Some(key) = HASH_KEY.with(Cell::get) {
        return Ok(key);
    }
    let key = hash_key(&HostStore, &mut draw_hash_key)?;
    HASH_KEY.with(|cell| cell.set(Some(key)));
    Ok(key)
}

/// Adds `n` to a per-VM tally; true when the tally passed a power of two (log-worthy).
fn tally(counter: &'static std::thread::LocalKey<Cell<u64>>, n: u64) -> (bool, u64) {
    counter.with(|c| {
        let before = c.get();
        let after = before.saturating_add(n);
        c.set(after);
        (
            (before.saturating_add(1)..=after).any(u64::is_power_of_two),
            after,
        )
    })
}

/// The ids of the counters this plugin defines (`None`: the host refused the definition).
#[derive(Clone, Copy, Debug, Default)]
struct Metrics {
    evictions: Option<u32>,
    uncounted: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            evictions: define_counter(EVICTIONS_METRIC),
            uncounted: define_counter(UNCOUNTED_METRIC),
        }
    }
}

fn define_counter(name: &str) -> Option<u32> {
    host::define_counter(name)
        .inspect_err(|status| {
            host::log(
                Level::Warn,
                &format!("defining metric {name}: host status {status}"),
            )
        })
        .ok()
}

fn increment(metric: Option<u32>, n: u32) {
    if let Some(id) = metric {
        // A refused increment has nowhere better to go than the log line the caller writes
        // anyway.
        host::increment_metric(id, i64::from(n)).ok();
    }
}

/// Logs and counts what the core reports besides the verdict.
fn report(decision: &Decision, limiter: &Limiter, metrics: Metrics) {
    if let Some(error) = &decision.error {
        host::log(Level::Error, error);
    }
    if decision.evicted > 0 {
        increment(metrics.evictions, decision.evicted);
        let (worth, total) = tally(&EVICTIONS, u64::from(decision.evicted));
        if worth {
            host::log(
                Level::Warn,
                &format!(
                    "evicted {} live identifier(s) from a full bucket to count a new one; they \
                     lost their counts ({total} in this worker so far; max_identifiers is {})",
                    decision.evicted, limiter.config.max_identifiers
                ),
            );
        }
    }
    if decision.uncounted {
        increment(metrics.uncounted, 1);
        let (worth, total) = tally(&UNCOUNTED, 1);
        if worth {
            host::log(
                Level::Warn,
                &format!(
                    "passed a request uncounted: {MAX_ATTEMPTS} writes of its bucket lost their \
                     race against other workers ({total} in this worker so far)"
                ),
            );
        }
    }
}

struct RateLimitRoot {
    limiter: Option<Rc<Limiter>>,
    /// `policy: redis`: the rate-limit service's cluster and the deadline of a call.
    service: Option<(Rc<str>, Duration)>,
    metrics: Metrics,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match host::configure(PLUGIN_NAME, Config::parse) {
            Some(config) => {
                // The counters belong to the plugin instance, which the host names stably
                // (Envoy's `name` of the Wasm plugin; our translation derives it from the Kong
                // plugin's id or name). Instances sharing a vm_id and a name share counters.
                let name = host::property(b"plugin_name").unwrap_or_default();
                self.service = config.redis.as_ref().map(|redis| {
                    (
                        Rc::from(redis.cluster_name()),
                        Duration::from_millis(u64::from(redis.timeout_ms.max(1))),
                    )
                });
                self.limiter = Some(Rc::new(Limiter::new(config, &name)));
                self.metrics = Metrics::define();
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitFilter {
            limiter: self.limiter.clone(),
            service: self.service.clone(),
            pending: None,
            metrics: self.metrics,
            headers: ResponseHeaders::new(),
            rejected: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimitFilter {
    limiter: Option<Rc<Limiter>>,
    service: Option<(Rc<str>, Duration)>,
    /// The token of the call to the rate-limit service the request waits for.
    pending: Option<u32>,
    metrics: Metrics,
    /// Added to the upstream's response.
    headers: ResponseHeaders,
    rejected: bool,
}

impl RateLimitFilter {
    /// Reports a decision and applies it: `Continue`, or `Pause` after answering the request.
    fn conclude(&mut self, decision: Decision, limiter: &Limiter) -> Action {
        report(&decision, limiter, self.metrics);
        match decision.verdict {
            Verdict::Allow { .. } => Action::Continue,
            Verdict::Reject { response } => {
                self.rejected = true;
                host::send(&response);
                Action::Pause
            }
        }
    }

    /// `policy: redis`: asks the rate-limit service and holds the request until it answers.
    fn ask_service(
        &mut self,
        limiter: &Limiter,
        (cluster, timeout): (Rc<str>, Duration),
        request: &RequestInfo<'_>,
    ) -> Action {
        let message = limiter.remote_request(request);
        match self.dispatch_grpc_call(
            &cluster,
            remote::SERVICE,
            remote::METHOD,
            Vec::new(),
            Some(&message),
            timeout,
        ) {
            Ok(token) => {
                self.pending = Some(token);
                Action::Pause
            }
            Err(status) => {
                let decision = limiter.store_failed(
                    &format!("calling the rate-limit service (cluster {cluster}): {status:?}"),
                    &with_reply(request, &reply_to()),
                );
                self.conclude(decision, limiter)
            }
        }
    }
}

impl Context for RateLimitFilter {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if self.pending != Some(token) {
            return;
        }
        self.pending = None;
        let Some(limiter) = self.limiter.clone() else {
            return;
        };
        let failed = |problem: String| {
            limiter.store_failed(&problem, &with_reply(&RequestInfo::default(), &reply_to()))
        };
        let decision = match (status, now_ms()) {
            (0, Ok(now)) => match host::buffer(Buffer::GrpcReceive, 0, size) {
                Ok(answer) => {
                    let headers = &mut self.headers;
                    limiter.decide_remote(
                        &answer.unwrap_or_default(),
                        now,
                        &mut reply_to,
                        &mut |name, value| headers.push(name, value),
                    )
                }
                Err(status) => failed(format!(
                    "reading the rate-limit service's answer: host status {status}"
                )),
            },
            (0, Err(status)) => failed(format!("reading the clock: host status {status}")),
            (status, _) => failed(format!(
                "the rate-limit service failed: gRPC status {status}"
            )),
        };
        if self.conclude(decision, &limiter) == Action::Continue {
            if let Err(status) = host::continue_request() {
                host::log(
                    Level::Warn,
                    &format!("resuming the request: host status {status}"),
                );
            }
        }
    }
}

impl HttpContext for RateLimitFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(limiter) = self.limiter.clone() else {
            return Action::Continue;
        };
        let (mut cluster, mut header_value, mut path) = (None, None, None);
        match limiter.needs() {
            Need::Nothing => {}
            // Kong's service: the cluster the route sends the request to. Envoy 1.40 answers
            // `xds.cluster_name` at the request headers (the wasm `cluster_name` is not set
            // yet there).
            Need::Cluster => {
                cluster =
                    host::property(b"xds\0cluster_name").or_else(|| host::property(b"cluster_name"))
            }
            Need::Header => {
                if let Some(name) = limiter.config.header_name.as_deref() {
                    header_value = request_header(name);
                }
            }
            Need::Path => path = request_header(":path"),
        }
        let mut request = RequestInfo {
            cluster: cluster.as_deref(),
            header: header_value.as_deref(),
            path: path.as_deref(),
            ..RequestInfo::default()
        };
        let source = if limiter.needs_address(&request) {
            host::property(b"source\0address")
        } else {
            None
        };
        request.source_address = source.as_deref();
        if let Some(service) = self.service.clone() {
            return self.ask_service(&limiter, service, &request);
        }
        let decision = match (now_ms(), process_hash_key()) {
            (Err(status), _) => limiter.store_failed(
                &format!("reading the clock: host status {status}"),
                &with_reply(&request, &reply_to()),
            ),
            (_, Err(problem)) => limiter.store_failed(&problem, &with_reply(&request, &reply_to())),
            (Ok(first), Ok(key)) => {
                let mut last = first;
                let mut clock = || {
                    last = now_ms().unwrap_or(last);
                    last
                };
                let headers = &mut self.headers;
                limiter.decide_with(
                    &HostStore,
                    &key,
                    &request,
                    &mut clock,
                    &mut reply_to,
                    &mut |name, value| headers.push(name, value),
                )
            }
        };
        self.conclude(decision, &limiter)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The rejection (our own local reply passes through here too) already carries them.
        if !self.rejected {
            for &(name, value) in self.headers.take() {
                let printed = Printed::new(value);
                if let Err(status) =
                    host::replace_header(Map::ResponseHeaders, name.as_bytes(), printed.bytes())
                {
                    host::log(
                        Level::Warn,
                        &format!("setting response header {name}: host status {status}"),
                    );
                }
            }
        }
        Action::Continue
    }
}
