//! One instance of a plugin's module (Envoy's "VM"): its store, its exported callbacks and
//! the proxy-wasm context lifecycle. Every callback runs under the plugin's CPU budget and
//! memory cap; a failed callback marks the VM failed and its owner replaces it.
//!
//! The budget is the CPU time of the worker thread, checked at every epoch tick (1 ms): a
//! callback that loops holds its worker for about its budget, never more, and a callback that
//! waits for a CPU under contention is not charged for the wait. Guest code runs
//! synchronously on the worker thread; yielding to the worker's other streams mid-callback
//! (wasmtime's async support) would need every host call and the filter chain to be async,
//! for what a small budget gives already: a bound on how long one callback stalls a worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Instance, Store, TypedFunc, UpdateDeadline, WasmParams, WasmResults};

use crate::abi::{buffer, map};
use crate::callout::{Callouts, GrpcInbound, HttpCallResult};
use crate::engine::thread_cpu_time;
use crate::env::HostEnv;
use crate::error::{describe, Error};
use crate::filter_chain::StreamData;
use crate::logs::{LogLevel, LogSink};
use crate::module::PluginModule;
use crate::plugin_config::PluginConfig;
use crate::queues::Mailbox;
use crate::state::{HostState, StreamContext, StreamOp};

/// Why a callback failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A trap: unreachable, out-of-bounds, a panic in the module, an unimplemented import.
    Trap,
    /// The CPU deadline passed.
    Deadline,
    /// The module grew its memory past the cap.
    Memory,
    /// Fuel ran out.
    Fuel,
    /// `proc_exit`.
    Exit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub callback: &'static str,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} in {}: {}", self.kind, self.callback, self.message)
    }
}

fn classify(callback: &'static str, e: wasmtime::Error) -> Failure {
    let message = describe(&e);
    let kind = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => FailureKind::Deadline,
        Some(wasmtime::Trap::OutOfFuel) => FailureKind::Fuel,
        _ if message.contains("forcing trap when growing memory") => FailureKind::Memory,
        _ if message.contains("proc_exit") => FailureKind::Exit,
        _ => FailureKind::Trap,
    };
    Failure {
        kind,
        callback,
        message,
    }
}

// Shared, not cloned, per call: cloning a `TypedFunc` clones its registered type, which
// costs reference counts in the engine's type registry (taken and dropped twice per call).
type F1 = Arc<TypedFunc<u32, ()>>;
type F2 = Arc<TypedFunc<(u32, u32), ()>>;
type F3 = Arc<TypedFunc<(u32, u32, u32), ()>>;
type B1 = Arc<TypedFunc<u32, u32>>;
type B2 = Arc<TypedFunc<(u32, u32), u32>>;
type B3 = Arc<TypedFunc<(u32, u32, u32), u32>>;
type F5 = Arc<TypedFunc<(u32, u32, u32, u32, u32), ()>>;

struct Exports {
    on_context_create: Option<F2>,
    on_vm_start: Option<B2>,
    on_configure: Option<B2>,
    on_tick: Option<F1>,
    on_queue_ready: Option<F2>,
    on_done: Option<B1>,
    on_log: Option<F1>,
    on_delete: Option<F1>,
    on_request_headers: Option<B3>,
    on_request_body: Option<B3>,
    on_request_trailers: Option<B2>,
    on_response_headers: Option<B3>,
    on_response_body: Option<B3>,
    on_response_trailers: Option<B2>,
    on_http_call_response: Option<F5>,
    on_grpc_receive_initial_metadata: Option<F3>,
    on_grpc_receive: Option<F3>,
    on_grpc_receive_trailing_metadata: Option<F3>,
    on_grpc_close: Option<F3>,
    on_foreign_function: Option<F3>,
}

fn export<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|e| {
            format!(
                "export {name} has an unexpected signature: {}",
                describe(&e)
            )
        }),
    }
}

/// The CPU budget of what runs in a store, shared with the store's epoch callback (which
/// wasmtime wants `Send + Sync`, hence atomics for values only the worker thread uses).
///
/// The thread's CPU clock is first read at the first tick within a callback, which is charged
/// a whole tick for what ran before it (no more than a tick of time passed): most callbacks
/// end before a tick and cost no clock read at all.
struct Budget {
    /// The thread's CPU time the budget counts from, in nanoseconds; [`NOT_READ`] until the
    /// first tick.
    started: AtomicU64,
    allowed: AtomicU64,
    tick: Duration,
}

const NOT_READ: u64 = u64::MAX;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Budget {
    fn new(tick: Duration) -> Budget {
        Budget {
            started: AtomicU64::new(NOT_READ),
            allowed: AtomicU64::new(0),
            tick,
        }
    }

    fn start(&self, allowed: Duration) {
        self.started.store(NOT_READ, Ordering::Relaxed);
        self.allowed.store(nanos(allowed), Ordering::Relaxed);
    }

    /// At a tick: whether the budget is spent.
    fn spent(&self) -> bool {
        let now = nanos(thread_cpu_time());
        let started = match self.started.load(Ordering::Relaxed) {
            NOT_READ => {
                let started = now.saturating_sub(nanos(self.tick));
                self.started.store(started, Ordering::Relaxed);
                started
            }
            started => started,
        };
        now.saturating_sub(started) >= self.allowed.load(Ordering::Relaxed)
    }
}

/// How many streams may wait for `proxy_done` at once ([`Vm::finish_stream`]).
pub const MAX_PENDING_DONE: usize = 128;

/// A running instance.
pub struct Vm {
    store: Store<HostState>,
    ex: Exports,
    budget: Arc<Budget>,
    callback_budget: Duration,
    fuel: Option<u64>,
    next_context: u32,
    failed: bool,
    /// Past its start: teardown runs the root context's `on_done` ([`Drop`]).
    started: bool,
    /// Streams whose `proxy_on_done` returned false, oldest first, with their data for the
    /// `on_log` that waits for `proxy_done`.
    pending: VecDeque<(u32, StreamData)>,
}

/// What a headers/body/trailers callback answered: 0 Continue, anything else stops.
pub type Action = u32;

impl Vm {
    /// Instantiates, runs `_initialize` (or `_start`), creates the root context and runs
    /// `on_vm_start` and `on_configure`.
    pub fn start(
        module: &PluginModule,
        plugin: Arc<PluginConfig>,
        env: Arc<HostEnv>,
        logs: Arc<LogSink>,
        mailbox: Arc<Mailbox>,
    ) -> Result<Vm, Error> {
        let engine = &module.engine;
        let start_err = |reason: String| Error::Start {
            plugin: plugin.name.clone(),
            reason,
        };
        let mut store = Store::new(
            engine.wasmtime(),
            HostState::new(
                Arc::clone(&plugin),
                env,
                Arc::clone(&logs),
                mailbox,
                module.abi,
            ),
        );
        store.limiter(|s| &mut s.limits);
        let budget = Arc::new(Budget::new(engine.epoch_tick()));
        let checked = Arc::clone(&budget);
        store.epoch_deadline_callback(move |_| {
            Ok(if checked.spent() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        // One budget for the whole start: instantiation, `_initialize`, `on_vm_start`,
        // `on_configure`.
        budget.start(plugin.limits.startup_deadline);
        store.set_epoch_deadline(1);
        if engine.config().fuel {
            let fuel = plugin.limits.fuel.unwrap_or(u64::MAX / 2);
            store
                .set_fuel(fuel.saturating_mul(16))
                .map_err(|e| start_err(describe(&e)))?;
        }
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| start_err(describe(&e)))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = match export::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")
            .map_err(&start_err)?
        {
            Some(f) => Some(f),
            None => export::<u32, u32>(&instance, &mut store, "malloc").map_err(&start_err)?,
        };
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc.map(Arc::new);
        macro_rules! ex {
            ($name:literal) => {
                export(&instance, &mut store, $name)
                    .map_err(&start_err)?
                    .map(Arc::new)
            };
        }
        let ex = Exports {
            on_context_create: ex!("proxy_on_context_create"),
            on_vm_start: ex!("proxy_on_vm_start"),
            on_configure: ex!("proxy_on_configure"),
            on_tick: ex!("proxy_on_tick"),
            on_queue_ready: ex!("proxy_on_queue_ready"),
            on_done: ex!("proxy_on_done"),
            on_log: ex!("proxy_on_log"),
            on_delete: ex!("proxy_on_delete"),
            on_request_headers: ex!("proxy_on_request_headers"),
            on_request_body: ex!("proxy_on_request_body"),
            on_request_trailers: ex!("proxy_on_request_trailers"),
            on_response_headers: ex!("proxy_on_response_headers"),
            on_response_body: ex!("proxy_on_response_body"),
            on_response_trailers: ex!("proxy_on_response_trailers"),
            on_http_call_response: ex!("proxy_on_http_call_response"),
            on_grpc_receive_initial_metadata: ex!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive: ex!("proxy_on_grpc_receive"),
            on_grpc_receive_trailing_metadata: ex!("proxy_on_grpc_receive_trailing_metadata"),
            on_grpc_close: ex!("proxy_on_grpc_close"),
            on_foreign_function: ex!("proxy_on_foreign_function"),
        };
        let init =
            match export::<(), ()>(&instance, &mut store, "_initialize").map_err(&start_err)? {
                Some(f) => Some(f),
                None => export::<(), ()>(&instance, &mut store, "_start").map_err(&start_err)?,
            };
        let mut vm = Vm {
            store,
            ex,
            budget,
            callback_budget: plugin.limits.callback_deadline,
            fuel: plugin.limits.fuel,
            next_context: 2,
            failed: false,
            started: false,
            pending: VecDeque::new(),
        };
        let failed = |f: Failure| start_err(f.to_string());
        if let Some(init) = init {
            init.call(&mut vm.store, ())
                .map_err(|e| failed(classify("_initialize", e)))?;
        }
        let root = vm.store.data().root_context;
        let logged_from = logs.mark();
        if let Some(f) = vm.ex.on_context_create.clone() {
            f.call(&mut vm.store, (root, 0))
                .map_err(|e| failed(classify("proxy_on_context_create", e)))?;
        }
        let refused = |what: &str| {
            let reason: Vec<String> = logs
                .records_since(logged_from)
                .into_iter()
                .map(|r| r.message)
                .collect();
            Error::ConfigRefused {
                plugin: plugin.name.clone(),
                reason: if reason.is_empty() {
                    format!("{what} returned false")
                } else {
                    reason.join("\n")
                },
            }
        };
        if let Some(f) = vm.ex.on_vm_start.clone() {
            let len = plugin.vm_configuration.len() as u32;
            let ok = f
                .call(&mut vm.store, (root, len))
                .map_err(|e| failed(classify("proxy_on_vm_start", e)))?;
            if ok == 0 {
                return Err(refused("proxy_on_vm_start"));
            }
        }
        if let Some(f) = vm.ex.on_configure.clone() {
            let len = plugin.configuration.len() as u32;
            let ok = f
                .call(&mut vm.store, (root, len))
                .map_err(|e| failed(classify("proxy_on_configure", e)))?;
            if ok == 0 {
                return Err(refused("proxy_on_configure"));
            }
        }
        vm.started = true;
        Ok(vm)
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    pub fn root_context(&self) -> u32 {
        self.store.data().root_context
    }

    /// Runs one callback under its CPU budget (and fuel), with `context` effective.
    fn guard<T>(
        &mut self,
        callback: &'static str,
        context: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, Failure> {
        if self.failed {
            return Err(Failure {
                kind: FailureKind::Trap,
                callback,
                message: "the instance failed earlier".into(),
            });
        }
        self.budget.start(self.callback_budget);
        self.store.set_epoch_deadline(1);
        if let Some(fuel) = self.fuel {
            let _ = self.store.set_fuel(fuel);
        }
        self.store.data_mut().effective_context = context;
        let result = f(&mut self.store);
        self.store.data_mut().give_back();
        self.store.data_mut().settle();
        match result {
            Ok(v) => {
                self.release_done()?;
                Ok(v)
            }
            Err(e) => {
                self.failed = true;
                Err(classify(callback, e))
            }
        }
    }

    /// Creates a stream (HTTP) context.
    pub fn new_stream(&mut self) -> Result<u32, Failure> {
        let id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(2);
        let root = self.root_context();
        self.store
            .data_mut()
            .streams
            .insert(id, StreamContext::default());
        if let Some(f) = self.ex.on_context_create.clone() {
            self.guard("proxy_on_context_create", id, |s| f.call(s, (id, root)))?;
        }
        Ok(id)
    }

    /// Makes stream context `context` reach its stream's data from the module's other
    /// contexts ([`crate::HttpFilter::share`]).
    pub fn share_stream(&mut self, context: u32, data: Weak<RefCell<StreamData>>) {
        if let Some(c) = self.store.data_mut().streams.get_mut(&context) {
            c.shared = data;
        }
    }

    /// Runs `f` (callbacks of stream context `context`) with that stream's data swapped in,
    /// for their host calls to reach in place; `data` holds the instance's spare meanwhile.
    /// The stream whose data was in before (a callback under way) is back in after.
    pub fn with_stream<T>(
        &mut self,
        context: u32,
        data: &mut StreamData,
        f: impl FnOnce(&mut Vm) -> T,
    ) -> T {
        let state = self.store.data_mut();
        std::mem::swap(&mut state.stream, data);
        let outer = state.stream_context.replace(context);
        let result = f(self);
        let state = self.store.data_mut();
        std::mem::swap(&mut state.stream, data);
        state.stream_context = outer;
        result
    }

    fn headers_cb(
        &mut self,
        name: &'static str,
        f: Option<B3>,
        context: u32,
        a: u32,
        b: bool,
    ) -> Result<Action, Failure> {
        match f {
            Some(f) => self.guard(name, context, |s| f.call(s, (context, a, u32::from(b)))),
            None => Ok(0),
        }
    }

    pub fn on_request_headers(&mut self, ctx: u32, n: usize, eos: bool) -> Result<Action, Failure> {
        let f = self.ex.on_request_headers.clone();
        let result = self.headers_cb("proxy_on_request_headers", f, ctx, n as u32, eos);
        self.hold(ctx, map::HTTP_REQUEST_HEADERS, &result);
        result
    }

    /// After a headers or trailers callback: whether the context holds that map of its
    /// stream, for its other contexts to use ([`HostState::stream_map`]). A headers answer
    /// of 2 (ContinueAndEndStream) continues, as Envoy reads it; so does a stop the callback
    /// took back with `proxy_continue_stream`. Returns whether it stopped.
    fn hold(&mut self, ctx: u32, kind: u32, result: &Result<Action, Failure>) -> bool {
        let direction = u32::from(kind > map::HTTP_REQUEST_TRAILERS);
        let resumed = self.resumed_in_callback(ctx, direction);
        let is_headers = kind == map::HTTP_REQUEST_HEADERS || kind == map::HTTP_RESPONSE_HEADERS;
        let stopped = match result {
            Ok(0) => false,
            Ok(2) if is_headers => false,
            Ok(_) => !resumed,
            Err(_) => false,
        };
        self.store.data_mut().set_held(ctx, kind, stopped);
        stopped
    }

    /// Whether the callback of stream context `ctx` that just returned resumed `direction`
    /// itself (`proxy_continue_stream`).
    fn resumed_in_callback(&self, ctx: u32, direction: u32) -> bool {
        let state = self.store.data();
        if state.stream_context != Some(ctx) {
            return false;
        }
        if direction == 0 {
            state.stream.resume_request
        } else {
            state.stream.resume_response
        }
    }

    /// After a body callback: whether the context keeps that body buffered, for its other
    /// contexts to reach ([`HostState::stream_body`]): its answer was 1 (Envoy's
    /// StopIterationAndBuffer) and the callback did not take it back.
    fn note_buffering(&mut self, ctx: u32, body: u32, result: &Result<Action, Failure>) {
        let buffering = matches!(result, Ok(1)) && !self.resumed_in_callback(ctx, body);
        self.store.data_mut().set_buffering(ctx, body, buffering);
    }

    /// After a trailers callback: one that did not stop lets the body it buffered go on.
    fn trailers_done(&mut self, ctx: u32, kind: u32, result: &Result<Action, Failure>) {
        if !self.hold(ctx, kind, result) {
            let body = u32::from(kind == map::HTTP_RESPONSE_TRAILERS);
            self.store.data_mut().set_buffering(ctx, body, false);
        }
    }

    /// Runs `f` (a body or trailers callback) carrying `body` ([`HostState::carry`]).
    fn carrying<T>(&mut self, body: u32, f: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.store.data_mut().carry(Some(body));
        let result = f(self);
        self.store.data_mut().carry(before);
        result
    }

    pub fn on_request_body(&mut self, ctx: u32, size: usize, eos: bool) -> Result<Action, Failure> {
        let f = self.ex.on_request_body.clone();
        let result = self.carrying(buffer::HTTP_REQUEST_BODY, |vm| {
            vm.headers_cb("proxy_on_request_body", f, ctx, size as u32, eos)
        });
        self.note_buffering(ctx, buffer::HTTP_REQUEST_BODY, &result);
        result
    }

    pub fn on_response_headers(
        &mut self,
        ctx: u32,
        n: usize,
        eos: bool,
    ) -> Result<Action, Failure> {
        let f = self.ex.on_response_headers.clone();
        let result = self.headers_cb("proxy_on_response_headers", f, ctx, n as u32, eos);
        self.hold(ctx, map::HTTP_RESPONSE_HEADERS, &result);
        result
    }

    pub fn on_response_body(
        &mut self,
        ctx: u32,
        size: usize,
        eos: bool,
    ) -> Result<Action, Failure> {
        let f = self.ex.on_response_body.clone();
        let result = self.carrying(buffer::HTTP_RESPONSE_BODY, |vm| {
            vm.headers_cb("proxy_on_response_body", f, ctx, size as u32, eos)
        });
        self.note_buffering(ctx, buffer::HTTP_RESPONSE_BODY, &result);
        result
    }

    pub fn on_request_trailers(&mut self, ctx: u32, n: usize) -> Result<Action, Failure> {
        let result = match self.ex.on_request_trailers.clone() {
            Some(f) => self.carrying(buffer::HTTP_REQUEST_BODY, |vm| {
                vm.guard("proxy_on_request_trailers", ctx, |s| {
                    f.call(s, (ctx, n as u32))
                })
            }),
            None => Ok(0),
        };
        self.trailers_done(ctx, map::HTTP_REQUEST_TRAILERS, &result);
        result
    }

    pub fn on_response_trailers(&mut self, ctx: u32, n: usize) -> Result<Action, Failure> {
        let result = match self.ex.on_response_trailers.clone() {
            Some(f) => self.carrying(buffer::HTTP_RESPONSE_BODY, |vm| {
                vm.guard("proxy_on_response_trailers", ctx, |s| {
                    f.call(s, (ctx, n as u32))
                })
            }),
            None => Ok(0),
        };
        self.trailers_done(ctx, map::HTTP_RESPONSE_TRAILERS, &result);
        result
    }

    /// on_done, on_log, on_delete for a stream context. When `on_done` returns false (the
    /// spec: the module has work left, such as a flush), `on_log` and `on_delete` wait until
    /// the module calls `proxy_done` with that context effective, from any later callback;
    /// the stream's data is kept for its `on_log` meanwhile. At most [`MAX_PENDING_DONE`]
    /// streams wait: past that the oldest is finished without its `proxy_done`, so a module
    /// that never calls it does not hold every stream's data for good.
    pub fn finish_stream(&mut self, ctx: u32) -> Result<(), Failure> {
        let result = (|| {
            if let Some(f) = self.ex.on_done.clone() {
                if self.guard("proxy_on_done", ctx, |s| f.call(s, ctx))? == 0 {
                    let state = self.store.data();
                    let data = if state.stream_context == Some(ctx) {
                        state.stream.clone()
                    } else {
                        StreamData::default()
                    };
                    self.pending.push_back((ctx, data));
                    self.store.data_mut().pending_done.insert(ctx, false);
                    if self.pending.len() > MAX_PENDING_DONE {
                        if let Some((oldest, data)) = self.pending.pop_front() {
                            self.store.data_mut().pending_done.remove(&oldest);
                            self.finish_deferred(oldest, data)?;
                        }
                    }
                    return Ok(false);
                }
            }
            self.log_and_delete(ctx)?;
            Ok(true)
        })();
        match result {
            Ok(false) => {
                // Its `on_log` waits with the data kept above: the data plane's stream, and
                // the maps held on it, are over.
                if let Some(c) = self.store.data_mut().streams.get_mut(&ctx) {
                    *c = StreamContext::default();
                }
            }
            _ => self.forget_stream(ctx),
        }
        result.map(drop)
    }

    /// A stream context is gone. The calls it was waiting for are the root context's now:
    /// cpp-host makes every call on the root context, so a call outlives its stream and its
    /// answer comes to the root (the module's SDK forgets the call then).
    fn forget_stream(&mut self, ctx: u32) {
        let state = self.store.data_mut();
        state.streams.remove(&ctx);
        let root = state.root_context;
        for owner in state.callout_owner.values_mut() {
            if *owner == ctx {
                *owner = root;
            }
        }
    }

    fn log_and_delete(&mut self, ctx: u32) -> Result<(), Failure> {
        if let Some(f) = self.ex.on_log.clone() {
            self.guard("proxy_on_log", ctx, |s| f.call(s, ctx))?;
        }
        if let Some(f) = self.ex.on_delete.clone() {
            self.guard("proxy_on_delete", ctx, |s| f.call(s, ctx))?;
        }
        Ok(())
    }

    /// `on_log` and `on_delete` of a stream that waited, with its kept data in for them and
    /// the data of the stream whose callback may be under way put back after.
    fn finish_deferred(&mut self, ctx: u32, mut data: StreamData) -> Result<(), Failure> {
        let carried = self.store.data_mut().carry(None);
        let result = self.with_stream(ctx, &mut data, |vm| vm.log_and_delete(ctx));
        self.store.data_mut().carry(carried);
        self.forget_stream(ctx);
        result
    }

    /// Finishes the streams `proxy_done` released during the callback that just returned.
    #[inline(always)]
    fn release_done(&mut self) -> Result<(), Failure> {
        // Only a waiting stream can be released: most callbacks end here.
        if self.pending.is_empty() {
            return Ok(());
        }
        self.release_pending()
    }

    fn release_pending(&mut self) -> Result<(), Failure> {
        loop {
            let released = self
                .store
                .data()
                .pending_done
                .iter()
                .find_map(|(ctx, released)| released.then_some(*ctx));
            let Some(ctx) = released else {
                return Ok(());
            };
            self.store.data_mut().pending_done.remove(&ctx);
            if let Some(i) = self.pending.iter().position(|(c, _)| *c == ctx) {
                if let Some((_, data)) = self.pending.remove(i) {
                    self.finish_deferred(ctx, data)?;
                }
            }
        }
    }

    /// The context that made call `token` (it gets the answer).
    pub fn call_owner(&self, token: u32) -> Option<u32> {
        self.store.data().callout_owner.get(&token).copied()
    }

    pub fn on_http_call_response(
        &mut self,
        token: u32,
        result: HttpCallResult,
    ) -> Result<(), Failure> {
        if self.store.data_mut().callout_owner.remove(&token).is_none() {
            return Ok(());
        }
        // cpp-host makes every call on the root context: the answer comes to the root
        // context, whatever context made the call, and a module (its SDK) makes the caller's
        // context effective itself. The caller's stream stays reachable through it.
        let ctx = self.store.data().root_context;
        let response = match result {
            HttpCallResult::Response(r) => Some(r),
            HttpCallResult::Failed => None,
        };
        let (n, body, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            )
        });
        self.store.data_mut().http_response = response;
        let result = match self.ex.on_http_call_response.clone() {
            Some(f) => self.guard("proxy_on_http_call_response", ctx, |s| {
                f.call(s, (ctx, token, n, body, t))
            }),
            None => Ok(()),
        };
        self.store.data_mut().http_response = None;
        result
    }

    pub fn on_grpc_event(&mut self, token: u32, event: GrpcInbound) -> Result<(), Failure> {
        if self.call_owner(token).is_none() {
            return Ok(());
        }
        // To the root context, as an HTTP call's answer (see `on_http_call_response`).
        let ctx = self.store.data().root_context;
        let state = self.store.data_mut();
        state.grpc = Default::default();
        let (name, f, arg) = match event {
            GrpcInbound::InitialMetadata(h) => {
                let n = h.len() as u32;
                state.grpc.initial_metadata = Some(h);
                (
                    "proxy_on_grpc_receive_initial_metadata",
                    self.ex.on_grpc_receive_initial_metadata.clone(),
                    n,
                )
            }
            GrpcInbound::Message(m) => {
                let n = m.len() as u32;
                state.grpc.message = Some(m);
                ("proxy_on_grpc_receive", self.ex.on_grpc_receive.clone(), n)
            }
            GrpcInbound::TrailingMetadata(h) => {
                let n = h.len() as u32;
                state.grpc.trailing_metadata = Some(h);
                (
                    "proxy_on_grpc_receive_trailing_metadata",
                    self.ex.on_grpc_receive_trailing_metadata.clone(),
                    n,
                )
            }
            GrpcInbound::Close { status, message } => {
                state.status = (status, message);
                state.callout_owner.remove(&token);
                state.open_grpc_streams.remove(&token);
                ("proxy_on_grpc_close", self.ex.on_grpc_close.clone(), status)
            }
        };
        let result = match f {
            Some(f) => self.guard(name, ctx, |s| f.call(s, (ctx, token, arg))),
            None => Ok(()),
        };
        self.store.data_mut().grpc = Default::default();
        result
    }

    pub fn on_tick(&mut self) -> Result<(), Failure> {
        let root = self.root_context();
        match self.ex.on_tick.clone() {
            Some(f) => self.guard("proxy_on_tick", root, |s| f.call(s, root)),
            None => Ok(()),
        }
    }

    pub fn on_queue_ready(&mut self, root: u32, queue: u32) -> Result<(), Failure> {
        match self.ex.on_queue_ready.clone() {
            Some(f) => self.guard("proxy_on_queue_ready", root, |s| f.call(s, (root, queue))),
            None => Ok(()),
        }
    }

    /// Calls the module's `proxy_on_foreign_function` with `args` as buffer type 8.
    pub fn on_foreign_function(&mut self, function_id: u32, args: Vec<u8>) -> Result<(), Failure> {
        let root = self.root_context();
        let len = args.len() as u32;
        self.store.data_mut().call_data = Some(args);
        let result = match self.ex.on_foreign_function.clone() {
            Some(f) => self.guard("proxy_on_foreign_function", root, |s| {
                f.call(s, (root, function_id, len))
            }),
            None => Ok(()),
        };
        self.store.data_mut().call_data = None;
        result
    }

    pub fn tick_period(&self) -> Option<std::time::Duration> {
        self.store.data().tick_period
    }

    /// Moves the calls the module made since the last time into `into`.
    pub fn move_callouts(&mut self, into: &mut Callouts) {
        into.append(&mut self.store.data_mut().callouts);
    }

    /// Moves the resumes and closes the module asked for since the last time into `into`.
    pub fn move_stream_ops(&mut self, into: &mut Vec<(u32, StreamOp)>) {
        let ops = &mut self.store.data_mut().stream_ops;
        // Nearly always none: skip `append`'s reserve and copy.
        if !ops.is_empty() {
            into.append(ops);
        }
    }

    /// Whether the linear memory passed the plugin's soft limit
    /// ([`crate::Limits::memory_soft_bytes`]): the owner replaces the instance between
    /// streams, since linear memory never shrinks.
    pub fn over_soft_limit(&self) -> bool {
        self.store
            .data()
            .plugin
            .limits
            .memory_soft_bytes
            .is_some_and(|soft| self.memory_size() > soft)
    }

    /// Stream contexts in the instance that have not finished (those waiting for
    /// `proxy_done` have): replacing the instance now would fail that many streams.
    pub fn active_streams(&self) -> usize {
        self.store
            .data()
            .streams
            .len()
            .saturating_sub(self.pending.len())
    }

    /// Bytes of linear memory the instance has.
    pub fn memory_size(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }
}

/// Teardown (a replacement other than after a failure, a reload, a shutdown that drops its
/// instances): the streams still waiting for `proxy_done` are finished, then the root context
/// gets `on_done` and, when that returns true, `on_delete`, as cpp-host does when it shuts a
/// VM down, so a module can flush what it buffers. A root that returns false is not waited
/// for: nothing keeps the instance alive to deliver what it waits for. A failed instance
/// runs nothing more.
impl Drop for Vm {
    fn drop(&mut self) {
        if !self.started || self.failed || std::thread::panicking() {
            return;
        }
        let result = (|| -> Result<(), Failure> {
            while let Some((ctx, data)) = self.pending.pop_front() {
                self.store.data_mut().pending_done.remove(&ctx);
                self.finish_deferred(ctx, data)?;
            }
            let root = self.root_context();
            if let Some(f) = self.ex.on_done.clone() {
                if self.guard("proxy_on_done", root, |s| f.call(s, root))? == 0 {
                    return Ok(());
                }
            }
            if let Some(f) = self.ex.on_delete.clone() {
                self.guard("proxy_on_delete", root, |s| f.call(s, root))?;
            }
            Ok(())
        })();
        if let Err(failure) = result {
            self.store
                .data()
                .logs
                .log(LogLevel::Error, &format!("at teardown: {failure}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use super::*;
    use crate::engine::{Engine, EngineConfig};
    use crate::plugin_config::Limits;

    /// A module whose request headers callback counts down from its header count (the test
    /// passes any number) and whose response headers callback never ends.
    const WORK: &str = r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (local $n i32)
        (local.set $n (local.get 1))
        (loop $l
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (loop $l (br $l))
        (i32.const 0))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (drop (memory.grow (local.get 1)))
        (i32.const 0)))"#;

    fn vm(engine: &Engine, budget: Duration) -> Vm {
        vm_with(
            engine,
            Limits {
                callback_deadline: budget,
                ..Limits::default()
            },
        )
    }

    fn vm_with(engine: &Engine, limits: Limits) -> Vm {
        let wasm = wat::parse_str(WORK).expect("WAT");
        let module = PluginModule::new(engine, &wasm).expect("module");
        let config = PluginConfig::new("budget", "").limits(limits);
        Vm::start(
            &module,
            Arc::new(config),
            HostEnv::shared(),
            Arc::new(LogSink::new("budget")),
            Mailbox::new(),
        )
        .expect("starts")
    }

    fn engine() -> Engine {
        Engine::new(EngineConfig {
            pooling: false,
            ..EngineConfig::default()
        })
        .expect("engine")
    }

    /// The tests that measure CPU time run one at a time: the contention test's five spinners
    /// pinned to a CPU would starve the other's epoch ticker, which the bound relies on.
    fn measuring_cpu() -> std::sync::MutexGuard<'static, ()> {
        static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        ALONE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A loop is stopped once it has used its budget of the worker thread's CPU: it holds the
    /// worker (every other stream on it) for about the budget and no longer. The bound is
    /// the budget plus the tick the check waits for and some slack, not a speed claim.
    #[test]
    fn a_loop_is_stopped_after_its_budget_of_cpu() {
        let _alone = measuring_cpu();
        let engine = engine();
        let budget = Duration::from_millis(20);
        let mut vm = vm(&engine, budget);
        let ctx = vm.new_stream().expect("stream");
        let cpu = thread_cpu_time();
        let failure = vm.on_response_headers(ctx, 0, false).expect_err("stopped");
        let used = thread_cpu_time() - cpu;
        assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
        assert!(
            used >= budget - engine.epoch_tick(),
            "stopped early, after {used:?}"
        );
        assert!(
            used < budget + Duration::from_millis(15),
            "held the worker for {used:?} of CPU"
        );
    }

    /// Pins the calling thread to one CPU.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only
        // read and write the set given, which lives here.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    /// Under contention a callback takes longer than its budget in wall-clock time, and is
    /// not stopped for it: only its own CPU counts. Here five threads spin on the test
    /// thread's CPU, so a callback needing half its budget of CPU takes about three budgets
    /// of wall-clock time (a wall-clock deadline stopped it).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_callback_under_contention_is_charged_only_its_own_cpu() {
        let _alone = measuring_cpu();
        let engine = engine();
        let budget = Duration::from_millis(30);
        let mut vm = vm(&engine, budget);
        let ctx = vm.new_stream().expect("stream");
        // How many iterations make half the budget, measured alone.
        let probe = 2_000_000;
        let cpu = thread_cpu_time();
        vm.on_request_headers(ctx, probe, false).expect("probe");
        let per_probe = (thread_cpu_time() - cpu).max(Duration::from_micros(1));
        let work = (probe as f64 * (budget.as_secs_f64() / 2.0) / per_probe.as_secs_f64())
            .min(i32::MAX as f64) as usize;
        pin(0);
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..5)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    pin(0);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        // Spinning rather than sleeping while the spinners start: a thread that slept is
        // owed CPU by the scheduler and would run the callback ahead of them.
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let started = Instant::now();
        let result = vm.on_request_headers(ctx, work, false);
        let wall = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for spinner in spinners {
            let _ = spinner.join();
        }
        assert_eq!(
            result,
            Ok(0),
            "a callback within its CPU budget was stopped"
        );
        assert!(
            wall > budget,
            "no contention to show: the callback took {wall:?} of wall-clock time"
        );
    }

    /// Past the soft limit, and only past it, the instance says it wants replacing; without
    /// one it never does.
    #[test]
    fn an_instance_past_its_soft_limit_says_so() {
        let engine = engine();
        let page = 64 << 10;
        let mut vm = vm_with(
            &engine,
            Limits {
                memory_soft_bytes: Some(4 * page),
                ..Limits::default()
            },
        );
        let ctx = vm.new_stream().expect("stream");
        // One page to start with, three more: at the soft limit, not past it.
        vm.on_request_body(ctx, 3, false).expect("grows");
        assert_eq!(vm.memory_size(), 4 * page);
        assert!(!vm.over_soft_limit());
        vm.on_request_body(ctx, 1, false).expect("grows");
        assert!(vm.over_soft_limit());
        let mut unlimited = vm_with(&engine, Limits::default());
        let ctx = unlimited.new_stream().expect("stream");
        unlimited.on_request_body(ctx, 100, false).expect("grows");
        assert!(!unlimited.over_soft_limit());
        assert_eq!(Limits::default().memory_soft_bytes, None);
    }

    /// Modules built by other toolchains have more than one table, or tables past 20,000
    /// elements (wasmtime's pool defaults, which refused them while Envoy loads them): they
    /// start both from the pool (the test harness) and on demand (the gateway).
    #[test]
    fn modules_with_several_or_large_tables_start_pooled_or_not() {
        let wasm = wat::parse_str(
            r#"(module
              (memory (export "memory") 1)
              (table $a 100000 funcref)
              (table $b 10 funcref)
              (table $c 1 funcref)
              (table $d 200000 funcref)
              (elem (table $d) (i32.const 199999) func $answer)
              (type $answer (func (result i32)))
              (func $answer (result i32) (i32.const 7))
              (func (export "proxy_abi_version_0_2_1"))
              (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
              (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                (i32.sub (call_indirect $d (type $answer) (i32.const 199999)) (i32.const 7))))"#,
        )
        .expect("WAT");
        for pooling in [true, false] {
            let engine = Engine::new(EngineConfig {
                pooling,
                max_instances: 4,
                ..EngineConfig::default()
            })
            .expect("engine");
            let module = PluginModule::new(&engine, &wasm).expect("module");
            let mut vm = Vm::start(
                &module,
                Arc::new(PluginConfig::new("tables", "")),
                HostEnv::shared(),
                Arc::new(LogSink::new("tables")),
                Mailbox::new(),
            )
            .unwrap_or_else(|e| panic!("pooling {pooling}: {e}"));
            let ctx = vm.new_stream().expect("stream");
            assert_eq!(
                vm.on_request_headers(ctx, 0, false),
                Ok(0),
                "pooling {pooling}"
            );
        }
    }

    /// A module that logs its lifecycle: `on_done` returns false for streams (true for the
    /// root), and `on_tick` releases stream 2 with `proxy_done` and logs the status (a digit).
    const LIFECYCLE: &str = r#"(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
      (import "env" "proxy_done" (func $done (result i32)))
      (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 4096))
      (data (i32.const 100) "done")
      (data (i32.const 110) "log")
      (data (i32.const 120) "delete")
      (data (i32.const 130) "root done")
      (data (i32.const 140) "root delete")
      (data (i32.const 160) "headers")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      (func $say (param $at i32) (param $len i32)
        (drop (call $log (i32.const 2) (local.get $at) (local.get $len))))
      (func (export "proxy_on_done") (param $ctx i32) (result i32)
        (if (i32.eq (local.get $ctx) (i32.const 1))
          (then (call $say (i32.const 130) (i32.const 9)) (return (i32.const 1))))
        (call $say (i32.const 100) (i32.const 4))
        (i32.const 0))
      (func (export "proxy_on_log") (param $ctx i32)
        (call $say (i32.const 110) (i32.const 3))
        ;; The kept request headers are there for on_log: their serialised size is logged
        ;; as "headers" when there are any.
        (if (i32.eqz (call $pairs (i32.const 0) (i32.const 200) (i32.const 204)))
          (then (if (i32.gt_u (i32.load (i32.const 204)) (i32.const 4))
            (then (call $say (i32.const 160) (i32.const 7)))))))
      (func (export "proxy_on_delete") (param $ctx i32)
        (if (i32.eq (local.get $ctx) (i32.const 1))
          (then (call $say (i32.const 140) (i32.const 11)))
          (else (call $say (i32.const 120) (i32.const 6)))))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
      (func (export "proxy_on_tick") (param $root i32)
        (drop (call $effective (i32.const 2)))
        (i32.store8 (i32.const 300) (i32.add (i32.const 48) (call $done)))
        (call $say (i32.const 300) (i32.const 1))))"#;

    fn lifecycle(engine: &Engine, logs: &Arc<LogSink>) -> Vm {
        let wasm = wat::parse_str(LIFECYCLE).expect("WAT");
        let module = PluginModule::new(engine, &wasm).expect("module");
        Vm::start(
            &module,
            Arc::new(PluginConfig::new("lifecycle", "")),
            HostEnv::shared(),
            Arc::clone(logs),
            Mailbox::new(),
        )
        .expect("starts")
    }

    fn said(logs: &LogSink) -> Vec<String> {
        let said = logs.records().into_iter().map(|r| r.message).collect();
        logs.clear();
        said
    }

    /// A module that logs why and refuses its configuration.
    const REFUSES: &str = r#"(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "config.second: expected a number")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $log (i32.const 4) (i32.const 100) (i32.const 32)))
        (i32.const 0)))"#;

    /// The reason of a refused configuration is what the module logged while refusing, also
    /// when the plugin's log ring is already full (after a long life of an earlier instance):
    /// the ring then drops a record for each it keeps, and its length says nothing of what is
    /// new.
    #[test]
    fn a_refusal_gives_what_the_module_logged_even_with_a_full_ring() {
        let engine = engine();
        let logs = Arc::new(LogSink::new("refuses"));
        for i in 0..crate::logs::MAX_RECORDS {
            logs.log(LogLevel::Info, &format!("earlier {i}"));
        }
        let wasm = wat::parse_str(REFUSES).expect("WAT");
        let module = PluginModule::new(&engine, &wasm).expect("module");
        let refused = Vm::start(
            &module,
            Arc::new(PluginConfig::new("refuses", "")),
            HostEnv::shared(),
            Arc::clone(&logs),
            Mailbox::new(),
        );
        match refused {
            Err(Error::ConfigRefused { reason, .. }) => {
                assert_eq!(reason, "config.second: expected a number")
            }
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("the module's refusal was not seen"),
        }
    }

    /// The spec's `proxy_on_done`: false defers `on_log` and `on_delete` until the module
    /// calls `proxy_done` for that context (OK), which is NOT_FOUND when nothing waits.
    #[test]
    fn on_done_false_defers_on_log_and_on_delete_until_proxy_done() {
        let engine = engine();
        let logs = Arc::new(LogSink::new("lifecycle"));
        let mut vm = lifecycle(&engine, &logs);
        assert_eq!(vm.active_streams(), 0);
        let ctx = vm.new_stream().expect("stream");
        assert_eq!(ctx, 2);
        assert_eq!(vm.active_streams(), 1);
        let mut data = StreamData::default();
        data.request_headers = Some(crate::headers::Headers::from_pairs([("x-kept", "yes")]));
        vm.with_stream(ctx, &mut data, |vm| vm.finish_stream(ctx))
            .expect("finishes");
        assert!(
            data.request_headers.is_some(),
            "the stream keeps its own data"
        );
        assert_eq!(said(&logs), ["done"]);
        assert_eq!(
            vm.active_streams(),
            0,
            "a stream waiting for proxy_done is finished"
        );
        // Released from the root's tick: OK (0), then the stream's on_log, with its headers,
        // and on_delete.
        vm.on_tick().expect("tick");
        assert_eq!(said(&logs), ["0", "log", "headers", "delete"]);
        // Nothing waits any more: NOT_FOUND (1), and nothing else runs.
        vm.on_tick().expect("tick");
        assert_eq!(said(&logs), ["1"]);
    }

    /// A module that never calls `proxy_done` does not keep every stream: past
    /// MAX_PENDING_DONE the oldest is logged and deleted without it.
    #[test]
    fn streams_waiting_for_proxy_done_are_bounded() {
        let engine = engine();
        let logs = Arc::new(LogSink::new("lifecycle"));
        let mut vm = lifecycle(&engine, &logs);
        for _ in 0..MAX_PENDING_DONE {
            let ctx = vm.new_stream().expect("stream");
            vm.finish_stream(ctx).expect("finishes");
        }
        assert!(said(&logs).iter().all(|m| m == "done"));
        let ctx = vm.new_stream().expect("stream");
        vm.finish_stream(ctx).expect("finishes");
        assert_eq!(said(&logs), ["done", "log", "delete"]);
    }

    /// The finish that pushes the oldest waiting stream out runs that stream's `on_log` with
    /// that stream's data swapped in, inside its own stream's turn, and gets its own data back
    /// after.
    #[test]
    fn an_evicted_stream_logs_with_its_own_data_inside_another_streams_finish() {
        let engine = engine();
        let logs = Arc::new(LogSink::new("lifecycle"));
        let mut vm = lifecycle(&engine, &logs);
        for i in 0..MAX_PENDING_DONE {
            let ctx = vm.new_stream().expect("stream");
            let mut data = StreamData::default();
            if i == 0 {
                data.request_headers = Some(crate::headers::Headers::from_pairs([("x-old", "1")]));
            }
            vm.with_stream(ctx, &mut data, |vm| vm.finish_stream(ctx))
                .expect("finishes");
        }
        said(&logs);
        let ctx = vm.new_stream().expect("stream");
        let mut data = StreamData::default();
        data.request_body = b"its own".to_vec();
        vm.with_stream(ctx, &mut data, |vm| vm.finish_stream(ctx))
            .expect("finishes");
        assert_eq!(said(&logs), ["done", "log", "headers", "delete"]);
        assert_eq!(data.request_body, b"its own");
        assert!(data.request_headers.is_none());
        let state = vm.store.data();
        assert_eq!(state.stream_context, None);
        assert!(state.stream.request_body.is_empty() && state.stream.request_headers.is_none());
    }

    /// Teardown of a healthy instance: the waiting streams are finished, then the root gets
    /// on_done and on_delete (cpp-host at VM shutdown). A failed instance runs nothing more.
    #[test]
    fn a_torn_down_instance_finishes_its_streams_then_its_root() {
        let engine = engine();
        let logs = Arc::new(LogSink::new("lifecycle"));
        let mut vm = lifecycle(&engine, &logs);
        let ctx = vm.new_stream().expect("stream");
        vm.finish_stream(ctx).expect("finishes");
        assert_eq!(said(&logs), ["done"]);
        drop(vm);
        assert_eq!(said(&logs), ["log", "delete", "root done", "root delete"]);
        let mut vm = lifecycle(&engine, &logs);
        let ctx = vm.new_stream().expect("stream");
        vm.on_request_headers(ctx, 0, false).expect_err("traps");
        said(&logs);
        drop(vm);
        assert_eq!(said(&logs), Vec::<String>::new());
    }

    /// The table limits hold the same way pooled and on demand: a fifth table, or a table of
    /// one element past MAX_TABLE_ELEMENTS, fails the start (on demand, a table's elements are
    /// host memory outside the linear memory cap: 2^32 of them would ask for 32 GiB).
    #[test]
    fn a_table_past_the_limits_fails_the_start_pooled_or_not() {
        use crate::engine::{MAX_TABLES, MAX_TABLE_ELEMENTS};
        let tables = |declared: &str| {
            format!(
                r#"(module
                  (memory (export "memory") 1)
                  {declared}
                  (func (export "proxy_abi_version_0_2_1"))
                  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024)))"#
            )
        };
        let at_the_limits = tables(&format!(
            "{} (table {MAX_TABLE_ELEMENTS} funcref)",
            "(table 1 funcref) ".repeat(MAX_TABLES as usize - 1)
        ));
        let one_too_many = tables(&"(table 1 funcref) ".repeat(MAX_TABLES as usize + 1));
        let one_too_large = tables(&format!("(table {} funcref)", MAX_TABLE_ELEMENTS + 1));
        for pooling in [true, false] {
            let engine = Engine::new(EngineConfig {
                pooling,
                max_instances: 4,
                ..EngineConfig::default()
            })
            .expect("engine");
            let start = |text: &str| {
                let wasm = wat::parse_str(text).expect("WAT");
                let module = PluginModule::new(&engine, &wasm)?;
                Vm::start(
                    &module,
                    Arc::new(PluginConfig::new("tables", "")),
                    HostEnv::shared(),
                    Arc::new(LogSink::new("tables")),
                    Mailbox::new(),
                )
                .map(drop)
            };
            start(&at_the_limits).unwrap_or_else(|e| panic!("pooling {pooling}: {e}"));
            assert!(start(&one_too_many).is_err(), "pooling {pooling}: 5 tables");
            assert!(
                start(&one_too_large).is_err(),
                "pooling {pooling}: 2^20 + 1 elements"
            );
        }
    }
}
