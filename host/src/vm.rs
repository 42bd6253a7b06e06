//! One instance of a plugin's module (Envoy's "VM"): its store, its exported callbacks and
//! the proxy-wasm context lifecycle. Every callback runs under the plugin's CPU deadline
//! (epoch) and memory cap; a failed callback marks the VM failed and its owner replaces it.

use std::sync::Arc;

use wasmtime::{Instance, Store, TypedFunc, WasmParams, WasmResults};

use crate::callout::{Callouts, GrpcInbound, HttpCallResult};
use crate::env::HostEnv;
use crate::error::{describe, Error};
use crate::filter_chain::StreamData;
use crate::logs::LogSink;
use crate::module::PluginModule;
use crate::plugin_config::PluginConfig;
use crate::queues::Mailbox;
use crate::state::{HostState, StreamOp};

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

type F1 = TypedFunc<u32, ()>;
type F2 = TypedFunc<(u32, u32), ()>;
type F3 = TypedFunc<(u32, u32, u32), ()>;
type B1 = TypedFunc<u32, u32>;
type B2 = TypedFunc<(u32, u32), u32>;
type B3 = TypedFunc<(u32, u32, u32), u32>;
type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;

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

/// A running instance.
pub struct Vm {
    store: Store<HostState>,
    ex: Exports,
    deadline_ticks: u64,
    fuel: Option<u64>,
    next_context: u32,
    failed: bool,
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
        store.set_epoch_deadline(engine.deadline_ticks(plugin.limits.startup_deadline));
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
        store.data_mut().alloc = alloc;
        macro_rules! ex {
            ($name:literal) => {
                export(&instance, &mut store, $name).map_err(&start_err)?
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
            deadline_ticks: engine.deadline_ticks(plugin.limits.callback_deadline),
            fuel: plugin.limits.fuel,
            next_context: 2,
            failed: false,
        };
        let failed = |f: Failure| start_err(f.to_string());
        if let Some(init) = init {
            init.call(&mut vm.store, ())
                .map_err(|e| failed(classify("_initialize", e)))?;
        }
        let root = vm.store.data().root_context;
        let logged_from = logs.len();
        if let Some(f) = vm.ex.on_context_create.clone() {
            f.call(&mut vm.store, (root, 0))
                .map_err(|e| failed(classify("proxy_on_context_create", e)))?;
        }
        let refused = |what: &str| {
            let records = logs.records();
            let reason: Vec<String> = records
                .iter()
                .skip(logged_from.min(records.len()))
                .map(|r| r.message.clone())
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
        Ok(vm)
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    pub fn root_context(&self) -> u32 {
        self.store.data().root_context
    }

    /// Runs one callback under the deadline (and fuel), with `context` effective.
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
        self.store.set_epoch_deadline(self.deadline_ticks);
        if let Some(fuel) = self.fuel {
            let _ = self.store.set_fuel(fuel);
        }
        self.store.data_mut().effective_context = context;
        match f(&mut self.store) {
            Ok(v) => Ok(v),
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
        self.store.data_mut().streams.insert(id, ());
        if let Some(f) = self.ex.on_context_create.clone() {
            self.guard("proxy_on_context_create", id, |s| f.call(s, (id, root)))?;
        }
        Ok(id)
    }

    /// Moves a stream's data in for its callbacks.
    pub fn enter(&mut self, context: u32, data: StreamData) {
        self.store.data_mut().stream = Some((context, data));
    }

    /// Takes the stream's data back out.
    pub fn leave(&mut self) -> StreamData {
        self.store
            .data_mut()
            .stream
            .take()
            .map(|(_, d)| d)
            .unwrap_or_default()
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
        self.headers_cb("proxy_on_request_headers", f, ctx, n as u32, eos)
    }

    pub fn on_request_body(&mut self, ctx: u32, size: usize, eos: bool) -> Result<Action, Failure> {
        let f = self.ex.on_request_body.clone();
        self.headers_cb("proxy_on_request_body", f, ctx, size as u32, eos)
    }

    pub fn on_response_headers(
        &mut self,
        ctx: u32,
        n: usize,
        eos: bool,
    ) -> Result<Action, Failure> {
        let f = self.ex.on_response_headers.clone();
        self.headers_cb("proxy_on_response_headers", f, ctx, n as u32, eos)
    }

    pub fn on_response_body(
        &mut self,
        ctx: u32,
        size: usize,
        eos: bool,
    ) -> Result<Action, Failure> {
        let f = self.ex.on_response_body.clone();
        self.headers_cb("proxy_on_response_body", f, ctx, size as u32, eos)
    }

    pub fn on_request_trailers(&mut self, ctx: u32, n: usize) -> Result<Action, Failure> {
        match self.ex.on_request_trailers.clone() {
            Some(f) => self.guard("proxy_on_request_trailers", ctx, |s| {
                f.call(s, (ctx, n as u32))
            }),
            None => Ok(0),
        }
    }

    pub fn on_response_trailers(&mut self, ctx: u32, n: usize) -> Result<Action, Failure> {
        match self.ex.on_response_trailers.clone() {
            Some(f) => self.guard("proxy_on_response_trailers", ctx, |s| {
                f.call(s, (ctx, n as u32))
            }),
            None => Ok(0),
        }
    }

    /// on_done, on_log, on_delete for a stream context.
    pub fn finish_stream(&mut self, ctx: u32) -> Result<(), Failure> {
        let result = (|| {
            if let Some(f) = self.ex.on_done.clone() {
                self.guard("proxy_on_done", ctx, |s| f.call(s, ctx))?;
            }
            if let Some(f) = self.ex.on_log.clone() {
                self.guard("proxy_on_log", ctx, |s| f.call(s, ctx))?;
            }
            if let Some(f) = self.ex.on_delete.clone() {
                self.guard("proxy_on_delete", ctx, |s| f.call(s, ctx))?;
            }
            Ok(())
        })();
        self.store.data_mut().streams.remove(&ctx);
        result
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
        let Some(ctx) = self.store.data_mut().callout_owner.remove(&token) else {
            return Ok(());
        };
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
        let Some(ctx) = self.call_owner(token) else {
            return Ok(());
        };
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

    pub fn take_callouts(&mut self) -> Callouts {
        std::mem::take(&mut self.store.data_mut().callouts)
    }

    pub fn take_stream_ops(&mut self) -> Vec<(u32, StreamOp)> {
        std::mem::take(&mut self.store.data_mut().stream_ops)
    }

    /// Bytes of linear memory the instance has.
    pub fn memory_size(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }
}
