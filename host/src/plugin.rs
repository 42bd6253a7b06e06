//! A configured plugin ([`Plugin`], shared by every worker) and its per-worker instance
//! ([`WorkerPlugin`]): one VM per plugin per worker thread, reused for every stream on that
//! worker, replaced by a fresh, reconfigured one when it fails. [`WasmFilter`] is the plugin's
//! [`HttpFilter`] for one stream.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::callout::{Callouts, GrpcInbound, HttpCallResult};
use crate::env::HostEnv;
use crate::error::Error;
use crate::filter_chain::{FilterFactory, FilterStatus, HttpFilter, LocalResponse, StreamData};
use crate::logs::{LogLevel, LogSink};
use crate::metrics::MetricKind;
use crate::module::PluginModule;
use crate::plugin_config::{FailurePolicy, PluginConfig};
use crate::queues::Mailbox;
use crate::state::StreamOp;
use crate::vm::{Failure, Vm};

struct PluginInner {
    module: Arc<PluginModule>,
    config: Arc<PluginConfig>,
    env: Arc<HostEnv>,
    failures: AtomicU64,
    failure_metric: u32,
}

/// A module with its configuration (`Send + Sync`: share it with every worker).
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl Plugin {
    pub fn new(module: Arc<PluginModule>, config: PluginConfig, env: Arc<HostEnv>) -> Plugin {
        let failure_metric = env.metrics.define(
            MetricKind::Counter,
            &format!("wasmgate.plugin.{}.failures", config.root_id),
        );
        Plugin {
            inner: Arc::new(PluginInner {
                module,
                config: Arc::new(config),
                env,
                failures: AtomicU64::new(0),
                failure_metric,
            }),
        }
    }

    pub fn config(&self) -> &PluginConfig {
        &self.inner.config
    }

    /// Whether this plugin is `module` with `config`: a reload that keeps a plugin as it was
    /// keeps this one, and with it every worker's running instance (Envoy reuses a VM whose
    /// code and configuration are unchanged).
    pub fn is(&self, module: &Arc<PluginModule>, config: &PluginConfig) -> bool {
        Arc::ptr_eq(&self.inner.module, module) && *self.inner.config == *config
    }

    /// The same plugin (not merely an equal one).
    pub fn ptr_eq(&self, other: &Plugin) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn env(&self) -> &Arc<HostEnv> {
        &self.inner.env
    }

    /// Starts a throwaway instance: `Err(ConfigRefused)` when the module refuses its
    /// configuration (the control plane's validation step).
    pub fn validate(&self) -> Result<(), Error> {
        self.start_vm(
            &Arc::new(LogSink::new(&self.inner.config.name)),
            &Mailbox::new(),
        )
        .map(drop)
    }

    /// This worker's instance.
    pub fn worker(&self) -> Result<WorkerPlugin, Error> {
        let logs = Arc::new(LogSink::new(&self.inner.config.name));
        let mailbox = Mailbox::new();
        let vm = self.start_vm(&logs, &mailbox)?;
        let now = self.inner.env.clock.monotonic();
        Ok(WorkerPlugin {
            inner: Rc::new(RefCell::new(Worker {
                plugin: self.clone(),
                name: Rc::from(self.inner.config.name.as_str()),
                vm: Some(vm),
                generation: 0,
                logs,
                mailbox,
                root_callouts: Callouts::default(),
                stream_ops: Vec::new(),
                last_tick: now,
                restart_at: Duration::ZERO,
                restart_backoff: Duration::ZERO,
                recent_failures: 0,
                last_failure: Duration::ZERO,
            })),
        })
    }

    fn start_vm(&self, logs: &Arc<LogSink>, mailbox: &Arc<Mailbox>) -> Result<Vm, Error> {
        Vm::start(
            &self.inner.module,
            Arc::clone(&self.inner.config),
            Arc::clone(&self.inner.env),
            Arc::clone(logs),
            Arc::clone(mailbox),
        )
    }

    /// Failed callbacks so far (all workers).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }
}

struct Worker {
    plugin: Plugin,
    /// The plugin's name, shared with each stream's filter.
    name: Rc<str>,
    vm: Option<Vm>,
    /// Bumped when the VM is replaced: contexts of older generations are gone.
    generation: u64,
    logs: Arc<LogSink>,
    mailbox: Arc<Mailbox>,
    root_callouts: Callouts,
    stream_ops: Vec<(u32, StreamOp)>,
    last_tick: Duration,
    /// After a failed restart: no new try before this (monotonic clock), so a module that
    /// cannot start is not started again for every request (each start may take the whole
    /// startup deadline of CPU); meanwhile its streams fail by the failure policy.
    restart_at: Duration,
    restart_backoff: Duration,
    /// Failures of running instances in a row, each within [`FAILURE_WINDOW`] of the last:
    /// the circuit breaker's count.
    recent_failures: u32,
    last_failure: Duration,
}

/// The wait after a first failed restart, doubled after each further one up to the most.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The circuit breaker: a failed instance is replaced at once, but a second failure within
/// this window of the last one waits [`BREAKER_FIRST`] (Envoy's FAIL_RELOAD waits 1 s), and
/// each further one twice as long, up to [`RESTART_BACKOFF_MAX`]. Meanwhile the filter's
/// streams fail by its policy without running the module, so a client that sends a poison
/// request in a loop costs one rebuild per wait, not one per request.
const FAILURE_WINDOW: Duration = Duration::from_secs(10);
const BREAKER_FIRST: Duration = Duration::from_secs(1);

impl Worker {
    /// The running instance, started again first if it was dropped and a restart is due.
    fn vm(&mut self) -> Option<&mut Vm> {
        if self.vm.is_none() {
            let now = self.plugin.inner.env.clock.monotonic();
            if now < self.restart_at {
                return None;
            }
            match self.plugin.start_vm(&self.logs, &self.mailbox) {
                Ok(vm) => {
                    self.vm = Some(vm);
                    self.restart_backoff = Duration::ZERO;
                }
                Err(e) => {
                    self.restart_backoff = (self.restart_backoff * 2)
                        .clamp(RESTART_BACKOFF_FIRST, RESTART_BACKOFF_MAX);
                    self.restart_at = now + self.restart_backoff;
                    self.logs.log(
                        LogLevel::Error,
                        &format!(
                            "restart failed (next try in {:?}): {e}",
                            self.restart_backoff
                        ),
                    );
                    return None;
                }
            }
        }
        self.vm.as_mut()
    }

    /// Counts and logs a failure and drops the instance. The fresh one starts at the
    /// worker's next poll or stream, not within the failing request.
    fn fail(&mut self, failure: &Failure) {
        let inner = &self.plugin.inner;
        inner.failures.fetch_add(1, Ordering::Relaxed);
        let _ = inner.env.metrics.increment(inner.failure_metric, 1);
        let now = inner.env.clock.monotonic();
        if self.recent_failures > 0 && now.saturating_sub(self.last_failure) > FAILURE_WINDOW {
            self.recent_failures = 0;
        }
        self.recent_failures = self.recent_failures.saturating_add(1);
        self.last_failure = now;
        let wait = match self.recent_failures {
            1 => Duration::ZERO,
            n => BREAKER_FIRST
                .saturating_mul(1 << (n - 2).min(5))
                .min(RESTART_BACKOFF_MAX),
        };
        self.restart_at = self.restart_at.max(now + wait);
        let next = if wait.is_zero() {
            "the instance is replaced".to_owned()
        } else {
            format!(
                "failure {} in a row: the next instance starts in {wait:?}",
                self.recent_failures
            )
        };
        self.logs.log(
            LogLevel::Error,
            &format!("{}: {failure}; {next}", inner.config.name),
        );
        self.vm = None;
        self.generation += 1;
    }

    fn collect_root(&mut self) {
        if let Some(vm) = self.vm.as_mut() {
            vm.move_callouts(&mut self.root_callouts);
            vm.move_stream_ops(&mut self.stream_ops);
        }
    }
}

/// A plugin's instance on one worker (not `Send`: it lives on its worker thread).
#[derive(Clone)]
pub struct WorkerPlugin {
    inner: Rc<RefCell<Worker>>,
}

impl WorkerPlugin {
    pub fn plugin(&self) -> Plugin {
        self.inner.borrow().plugin.clone()
    }

    pub fn logs(&self) -> Arc<LogSink> {
        Arc::clone(&self.inner.borrow().logs)
    }

    /// Identifies this instance slot on its worker (the same across restarts of the VM).
    pub fn id(&self) -> usize {
        Rc::as_ptr(&self.inner) as usize
    }

    /// A filter for a new stream.
    pub fn filter(&self) -> WasmFilter {
        let w = self.inner.borrow();
        WasmFilter {
            worker: Rc::clone(&self.inner),
            context: None,
            shared: Weak::new(),
            disabled: false,
            name: Rc::clone(&w.name),
            allow_on_headers_stop_iteration: w.plugin.config().allow_on_headers_stop_iteration,
        }
    }

    /// Whether the instance is alive (false after a failure whose restart failed too).
    pub fn is_running(&self) -> bool {
        self.inner.borrow().vm.is_some()
    }

    /// Runs what is due: `on_queue_ready` for queues that got data, `on_tick` once when a tick
    /// period passed since the last one. As Envoy re-arms its timer after each tick, a worker
    /// that was busy for many periods fires one tick, not one per period missed.
    pub fn poll(&self) {
        let mut w = self.inner.borrow_mut();
        // A failed instance is replaced here, between requests, once its restart is due.
        let _ = w.vm();
        let ready = w.mailbox.drain();
        for (root, queue) in ready {
            let Some(vm) = w.vm() else { return };
            if let Err(f) = vm.on_queue_ready(root, queue) {
                w.fail(&f);
            }
            w.collect_root();
        }
        let now = w.plugin.inner.env.clock.monotonic();
        let Some(period) = w.vm().and_then(|vm| vm.tick_period()) else {
            w.last_tick = now;
            return;
        };
        if now.saturating_sub(w.last_tick) < period {
            return;
        }
        w.last_tick = now;
        let Some(vm) = w.vm() else { return };
        if let Err(f) = vm.on_tick() {
            w.fail(&f);
        }
        w.collect_root();
    }

    /// When the next tick is due (monotonic clock), if the module asked for ticks.
    pub fn next_tick(&self) -> Option<Duration> {
        let w = self.inner.borrow();
        let period = w.vm.as_ref()?.tick_period()?;
        Some(w.last_tick + period)
    }

    /// Calls made from the root context (on_tick, on_configure, on_queue_ready).
    pub fn take_root_callouts(&self) -> Callouts {
        let mut w = self.inner.borrow_mut();
        w.collect_root();
        std::mem::take(&mut w.root_callouts)
    }

    /// Resumes/closes the module asked for streams outside their callbacks:
    /// `(context id, op)`; route them with [`HttpFilter::context_id`].
    pub fn take_stream_ops(&self) -> Vec<(u32, StreamOp)> {
        let mut w = self.inner.borrow_mut();
        w.collect_root();
        std::mem::take(&mut w.stream_ops)
    }

    /// Both of the above at once, `None` when there is neither (after nearly every stream
    /// event): what a data plane asks after each event, for each plugin of the stream.
    pub fn take_root_work(&self) -> Option<(Callouts, Vec<(u32, StreamOp)>)> {
        let mut w = self.inner.borrow_mut();
        w.collect_root();
        if w.root_callouts.is_empty() && w.stream_ops.is_empty() {
            return None;
        }
        Some((
            std::mem::take(&mut w.root_callouts),
            std::mem::take(&mut w.stream_ops),
        ))
    }

    /// Delivers the answer to a call made from the root context.
    pub fn root_http_call_response(&self, token: u32, result: HttpCallResult) {
        let mut w = self.inner.borrow_mut();
        let Some(vm) = w.vm() else { return };
        if let Err(f) = vm.on_http_call_response(token, result) {
            w.fail(&f);
        }
        w.collect_root();
    }

    pub fn root_grpc_event(&self, token: u32, event: GrpcInbound) {
        let mut w = self.inner.borrow_mut();
        let Some(vm) = w.vm() else { return };
        if let Err(f) = vm.on_grpc_event(token, event) {
            w.fail(&f);
        }
        w.collect_root();
    }

    /// Bytes of linear memory the current instance has.
    pub fn memory_size(&self) -> usize {
        self.inner.borrow().vm.as_ref().map_or(0, Vm::memory_size)
    }
}

impl FilterFactory for WorkerPlugin {
    fn create_filter(&self) -> Box<dyn HttpFilter> {
        Box::new(self.filter())
    }
}

/// A plugin's filter for one stream: owns a stream context in the worker's VM.
pub struct WasmFilter {
    worker: Rc<RefCell<Worker>>,
    /// (VM generation, context id), once created.
    context: Option<(u64, u32)>,
    /// The stream's data, for the module's other contexts to reach ([`HttpFilter::share`]).
    shared: Weak<RefCell<StreamData>>,
    /// Fail-open after a failure: the filter is skipped for the rest of the stream.
    disabled: bool,
    name: Rc<str>,
    allow_on_headers_stop_iteration: bool,
}

impl WasmFilter {
    fn on_failure(&mut self, stream: &mut StreamData) -> FilterStatus {
        self.disabled = true;
        let policy = self.worker.borrow().plugin.config().failure_policy;
        match policy {
            FailurePolicy::FailOpen => FilterStatus::Continue,
            FailurePolicy::FailClosed => {
                stream.local_response = Some(LocalResponse {
                    status: 503,
                    details: "wasm_fail_stream".into(),
                    ..LocalResponse::default()
                });
                FilterStatus::StopIteration
            }
        }
    }

    /// Runs one callback of this stream's context with the stream's data swapped in; `status`
    /// reads what the module returned.
    fn invoke(
        &mut self,
        stream: &mut StreamData,
        call: impl FnOnce(&mut Vm, u32) -> Result<u32, Failure>,
        status: impl FnOnce(u32) -> FilterStatus,
    ) -> FilterStatus {
        if self.disabled {
            return FilterStatus::Continue;
        }
        let worker = Rc::clone(&self.worker);
        let mut w = worker.borrow_mut();
        let generation = w.generation;
        if let Some((g, _)) = self.context {
            if g != generation {
                // The instance this stream lived in was replaced: its context is gone.
                drop(w);
                return self.on_failure(stream);
            }
        }
        let Some(vm) = w.vm() else {
            drop(w);
            return self.on_failure(stream);
        };
        let ctx = match self.context {
            Some((_, ctx)) => ctx,
            None => match vm.new_stream() {
                Ok(ctx) => {
                    self.context = Some((generation, ctx));
                    vm.share_stream(ctx, self.shared.clone());
                    ctx
                }
                Err(f) => {
                    w.fail(&f);
                    drop(w);
                    return self.on_failure(stream);
                }
            },
        };
        let result = vm.with_stream(ctx, stream, |vm| call(vm, ctx));
        vm.move_callouts(&mut stream.callouts);
        // What is left is the root context's: the stream ops.
        w.collect_root();
        match result {
            Ok(code) => status(code),
            Err(f) => {
                w.fail(&f);
                drop(w);
                self.on_failure(stream)
            }
        }
    }
}

impl HttpFilter for WasmFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn context_id(&self) -> Option<u32> {
        self.context.map(|(_, c)| c)
    }

    fn share(&mut self, stream: &Rc<RefCell<StreamData>>) {
        self.shared = Rc::downgrade(stream);
    }

    fn request_headers(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
        let n = s.request_headers.as_ref().map_or(0, |h| h.len());
        let allow = self.allow_on_headers_stop_iteration;
        self.invoke(
            s,
            |vm, ctx| vm.on_request_headers(ctx, n, eos),
            |code| headers_status(code, allow),
        )
    }

    fn request_body(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
        let n = s.request_body.len();
        self.invoke(s, |vm, ctx| vm.on_request_body(ctx, n, eos), data_status)
    }

    fn request_trailers(&mut self, s: &mut StreamData) -> FilterStatus {
        let n = s.request_trailers.as_ref().map_or(0, |h| h.len());
        self.invoke(s, |vm, ctx| vm.on_request_trailers(ctx, n), trailers_status)
    }

    fn response_headers(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
        let n = s.response_headers.as_ref().map_or(0, |h| h.len());
        let allow = self.allow_on_headers_stop_iteration;
        self.invoke(
            s,
            |vm, ctx| vm.on_response_headers(ctx, n, eos),
            |code| headers_status(code, allow),
        )
    }

    fn response_body(&mut self, s: &mut StreamData, eos: bool) -> FilterStatus {
        let n = s.response_body.len();
        self.invoke(s, |vm, ctx| vm.on_response_body(ctx, n, eos), data_status)
    }

    fn response_trailers(&mut self, s: &mut StreamData) -> FilterStatus {
        let n = s.response_trailers.as_ref().map_or(0, |h| h.len());
        self.invoke(
            s,
            |vm, ctx| vm.on_response_trailers(ctx, n),
            trailers_status,
        )
    }

    fn http_call_response(&mut self, s: &mut StreamData, token: u32, result: HttpCallResult) {
        if self.context.is_none() {
            return;
        }
        self.invoke(
            s,
            |vm, _| vm.on_http_call_response(token, result).map(|()| 0),
            trailers_status,
        );
    }

    fn grpc_event(&mut self, s: &mut StreamData, token: u32, event: GrpcInbound) {
        if self.context.is_none() {
            return;
        }
        self.invoke(
            s,
            |vm, _| vm.on_grpc_event(token, event).map(|()| 0),
            trailers_status,
        );
    }

    fn stream_done(&mut self, s: &mut StreamData) {
        if self.disabled {
            return;
        }
        let mut w = self.worker.borrow_mut();
        let generation = w.generation;
        let (ctx, vm) = match self.context.take() {
            Some((g, _)) if g != generation => return,
            Some((_, ctx)) => match w.vm() {
                Some(vm) => (ctx, vm),
                None => return,
            },
            // A filter the stream never reached still logs it, as in Envoy (its Wasm filter
            // creates the context for `on_log`).
            None => {
                let Some(vm) = w.vm() else { return };
                match vm.new_stream() {
                    Ok(ctx) => (ctx, vm),
                    Err(f) => {
                        w.fail(&f);
                        return;
                    }
                }
            }
        };
        let result = vm.with_stream(ctx, s, |vm| vm.finish_stream(ctx));
        w.collect_root();
        if let Err(f) = result {
            w.fail(&f);
        } else if w
            .vm
            .as_ref()
            .is_some_and(|vm| vm.over_soft_limit() && vm.active_streams() == 0)
        {
            // Linear memory never shrinks: an instance that grew past its soft limit is
            // replaced once idle (dropping it finishes its waiting streams and runs its
            // root's on_done). Not a failure: no count, no backoff.
            w.collect_root();
            w.logs.log(
                LogLevel::Info,
                "linear memory past its soft limit; the instance is replaced",
            );
            w.vm = None;
            w.generation += 1;
        }
    }
}

/// A module's answer to a headers callback, as Envoy reads it (proxy-wasm-cpp-host's
/// conversion): a pause holds everything (`StopAllIterationAndWatermark`) unless the plugin
/// allows a headers-only stop; unknown values stop all.
fn headers_status(code: u32, allow_on_headers_stop_iteration: bool) -> FilterStatus {
    match code {
        // 2 is ContinueAndEndStream, which Envoy's Wasm filter turns into Continue.
        0 | 2 => FilterStatus::Continue,
        1 if allow_on_headers_stop_iteration => FilterStatus::StopIteration,
        3 => FilterStatus::StopAllIterationAndBuffer,
        _ => FilterStatus::StopAllIterationAndWatermark,
    }
}

/// A module's answer to a body callback: 1 (pause) keeps the data for the next callback.
fn data_status(code: u32) -> FilterStatus {
    match code {
        0 => FilterStatus::Continue,
        1 => FilterStatus::StopIterationAndBuffer,
        2 => FilterStatus::StopIterationAndWatermark,
        _ => FilterStatus::StopIterationNoBuffer,
    }
}

fn trailers_status(code: u32) -> FilterStatus {
    match code {
        0 => FilterStatus::Continue,
        _ => FilterStatus::StopIteration,
    }
}
