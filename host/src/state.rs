//! The state a VM's store carries: what host functions read and change during a callback.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::abi::{map, AbiVersion};
use crate::callout::{Callouts, HttpCallResponse};
use crate::env::HostEnv;
use crate::filter_chain::{LocalResponse, StreamData};
use crate::headers::Headers;
use crate::logs::LogSink;
use crate::plugin_config::PluginConfig;
use crate::queues::Mailbox;

/// What a module asked for a stream from outside that stream's callbacks (its root context,
/// or another stream through `proxy_set_effective_context`): the data plane carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamOp {
    ResumeRequest,
    ResumeResponse,
    Close,
    /// `proxy_send_local_response`: the stream is answered (through its filters, as Envoy's
    /// `sendLocalReply` from another context).
    LocalReply(Box<LocalResponse>),
}

/// A stream context of the VM.
#[derive(Debug, Default)]
pub struct StreamContext {
    /// Its stream's data as the data plane shares it ([`crate::HttpFilter::share`]); nothing
    /// for a filter driven without a stream.
    pub shared: Weak<RefCell<StreamData>>,
    /// The header and trailer maps the context holds stopped, one bit per map type (0-3).
    /// Envoy's Wasm filter keeps a map for its module from the callback that stopped on it
    /// until the module continues that direction: meanwhile any context may use it.
    held: u8,
    /// The bodies the context holds buffered, one bit per buffer type (0 the request, 1 the
    /// response): Envoy's `buffering_request_body_` / `buffering_response_body_`, set when a
    /// body callback stopped with StopIterationAndBuffer. Meanwhile any context of the module
    /// reaches the stream's buffer (Envoy's `modifyDecodingBuffer`).
    buffering: u8,
}

/// A stream other than the one whose callback runs, moved out of its shared cell while it is
/// the effective context.
#[derive(Debug)]
struct Borrowed {
    context: u32,
    cell: Rc<RefCell<StreamData>>,
    data: StreamData,
}

/// What a gRPC callback currently exposes.
#[derive(Clone, Debug, Default)]
pub struct GrpcView {
    pub message: Option<Vec<u8>>,
    pub initial_metadata: Option<Headers>,
    pub trailing_metadata: Option<Headers>,
}

pub struct HostState {
    pub limits: StoreLimits,
    pub plugin: Arc<PluginConfig>,
    pub env: Arc<HostEnv>,
    pub logs: Arc<LogSink>,
    pub mailbox: Arc<Mailbox>,
    pub abi: AbiVersion,
    pub memory: Option<Memory>,
    /// `proxy_on_memory_allocate` or `malloc`.
    pub alloc: Option<std::sync::Arc<TypedFunc<u32, u32>>>,
    pub root_context: u32,
    /// Stream contexts alive in this VM. Context ids and tokens are the host's own counters,
    /// never chosen by a client: these maps need no DoS-resistant hash.
    pub streams: FxHashMap<u32, StreamContext>,
    pub effective_context: u32,
    /// The context of the stream whose callback runs, if one does: its data is in `stream`.
    pub stream_context: Option<u32>,
    /// That stream's data, swapped in for the call ([`crate::vm::Vm::with_stream`]); a spare
    /// between calls, to be swapped out for the next stream's.
    pub stream: StreamData,
    borrowed: Option<Borrowed>,
    /// `proxy_continue_stream` calls of this callback, (context, direction): the body stays
    /// the context's until the callback returns ([`HostState::settle`]), as Envoy resumes
    /// after the VM call.
    continued: Vec<(u32, u32)>,
    /// The body (0 the request, 1 the response) the running callback of the stream whose
    /// data is moved in carries in that data: its body and trailers callbacks. Its other
    /// callbacks have no body of their own: they reach the one it holds buffered, as Envoy's
    /// `getBuffer` looks at `buffering_request_body_` before the callback's own chunk.
    carried: Option<u32>,
    pub root_properties: BTreeMap<String, Vec<u8>>,
    pub tick_period: Option<Duration>,
    pub callouts: Callouts,
    /// Which context made each call (token → context id).
    pub callout_owner: FxHashMap<u32, u32>,
    pub open_grpc_streams: FxHashMap<u32, ()>,
    pub next_token: u32,
    pub http_response: Option<HttpCallResponse>,
    pub grpc: GrpcView,
    /// `proxy_get_status`: code and message of the current call.
    pub status: (u32, String),
    /// Resumes or closes for streams not currently loaded (context id, what).
    pub stream_ops: Vec<(u32, StreamOp)>,
    pub done: bool,
    /// Contexts whose `proxy_on_done` returned false, each with whether `proxy_done` has
    /// released it since: their `on_log` and `on_delete` wait for it ([`crate::vm::Vm`]).
    pub pending_done: FxHashMap<u32, bool>,
    /// Partial WASI stdout/stderr lines.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Args of the foreign function call being served (buffer type 8).
    pub call_data: Option<Vec<u8>>,
}

impl HostState {
    pub fn new(
        plugin: Arc<PluginConfig>,
        env: Arc<HostEnv>,
        logs: Arc<LogSink>,
        mailbox: Arc<Mailbox>,
        abi: AbiVersion,
    ) -> HostState {
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(plugin.limits.memory_bytes)
            .instances(1)
            .tables(crate::engine::MAX_TABLES as usize)
            .table_elements(crate::engine::MAX_TABLE_ELEMENTS)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            limits,
            plugin,
            env,
            logs,
            mailbox,
            abi,
            memory: None,
            alloc: None,
            root_context: 1,
            streams: FxHashMap::default(),
            effective_context: 1,
            stream_context: None,
            stream: StreamData::default(),
            borrowed: None,
            continued: Vec::new(),
            carried: None,
            root_properties: BTreeMap::new(),
            tick_period: None,
            callouts: Callouts::default(),
            callout_owner: FxHashMap::default(),
            open_grpc_streams: FxHashMap::default(),
            next_token: 0,
            http_response: None,
            grpc: GrpcView::default(),
            status: (0, String::new()),
            stream_ops: Vec::new(),
            done: false,
            pending_done: FxHashMap::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            call_data: None,
        }
    }

    fn effective_is_current(&self) -> bool {
        self.stream_context == Some(self.effective_context)
    }

    /// The stream whose callback runs, when it is the effective context: what only that
    /// callback hands over (its body chunk, the flags the filter chain reads after it).
    pub fn current_stream(&mut self) -> Option<&mut StreamData> {
        if self.effective_is_current() {
            Some(&mut self.stream)
        } else {
            None
        }
    }

    /// The effective context's stream data: the stream whose callback runs, or another stream
    /// of this VM whose data plane shares its data (moved out of its cell until the effective
    /// context changes or the callback returns, [`HostState::give_back`]). `None` when that
    /// stream is gone, or in the middle of a step of its own filter chain (the same stream
    /// through another filter of this VM).
    pub fn stream_data(&mut self) -> Option<&mut StreamData> {
        if self.effective_is_current() {
            return self.current_stream();
        }
        let effective = self.effective_context;
        if !matches!(&self.borrowed, Some(b) if b.context == effective) {
            self.give_back();
            let cell = self.streams.get(&effective)?.shared.upgrade()?;
            let data = std::mem::take(&mut *cell.try_borrow_mut().ok()?);
            self.borrowed = Some(Borrowed {
                context: effective,
                cell,
                data,
            });
        }
        self.borrowed.as_mut().map(|b| &mut b.data)
    }

    /// Puts the data [`HostState::stream_data`] borrowed back into its stream's cell.
    #[inline]
    pub fn give_back(&mut self) {
        if self.borrowed.is_some() {
            self.put_back();
        }
    }

    fn put_back(&mut self) {
        if let Some(b) = self.borrowed.take() {
            if let Ok(mut cell) = b.cell.try_borrow_mut() {
                *cell = b.data;
            }
        }
    }

    /// Header or trailer map `kind` (0-3) of the effective context's stream, where the
    /// context may use it: always in its stream's own callbacks (as before), from elsewhere
    /// only while the context holds the stream stopped on that map, as in Envoy.
    pub fn stream_map(&mut self, kind: u32) -> Option<&mut Option<Headers>> {
        if kind > map::HTTP_RESPONSE_TRAILERS {
            return None;
        }
        if !self.effective_is_current() {
            let context = self.streams.get(&self.effective_context)?;
            if context.held & (1 << kind) == 0 {
                return None;
            }
        }
        let s = self.stream_data()?;
        Some(match kind {
            map::HTTP_REQUEST_HEADERS => &mut s.request_headers,
            map::HTTP_REQUEST_TRAILERS => &mut s.request_trailers,
            map::HTTP_RESPONSE_HEADERS => &mut s.response_headers,
            _ => &mut s.response_trailers,
        })
    }

    /// After a callback of `context` on map `kind`: whether it left its stream stopped there.
    pub fn set_held(&mut self, context: u32, kind: u32, stopped: bool) {
        if let Some(c) = self.streams.get_mut(&context) {
            let bit = 1u8 << kind.min(7);
            if stopped {
                c.held |= bit;
            } else {
                c.held &= !bit;
            }
        }
    }

    /// `proxy_continue_stream`: the context lets go of the maps of that direction (0 the
    /// request, 1 the response), as Envoy's `continueStream` drops its pointers to them. Its
    /// buffered body of that direction goes on once the callback returns.
    pub fn release(&mut self, context: u32, direction: u32) {
        if let Some(c) = self.streams.get_mut(&context) {
            let (headers, trailers) = if direction == 0 {
                (map::HTTP_REQUEST_HEADERS, map::HTTP_REQUEST_TRAILERS)
            } else {
                (map::HTTP_RESPONSE_HEADERS, map::HTTP_RESPONSE_TRAILERS)
            };
            c.held &= !((1 << headers) | (1 << trailers));
            self.continued.push((context, direction));
        }
    }

    /// After a body callback of `context` (or a trailers callback that continued): whether
    /// it keeps body `buffer` (0 the request, 1 the response) buffered.
    pub fn set_buffering(&mut self, context: u32, buffer: u32, buffering: bool) {
        if let Some(c) = self.streams.get_mut(&context) {
            let bit = 1u8 << buffer.min(7);
            if buffering {
                c.buffering |= bit;
            } else {
                c.buffering &= !bit;
            }
        }
    }

    /// After a callback: the bodies continued in it went on with their streams.
    #[inline]
    pub fn settle(&mut self) {
        if !self.continued.is_empty() {
            self.settle_continued();
        }
    }

    fn settle_continued(&mut self) {
        for (context, direction) in std::mem::take(&mut self.continued) {
            self.set_buffering(context, direction, false);
        }
    }

    /// Which body the callback about to run carries ([`HostState::stream_body`]); returns
    /// the one before, to put back.
    pub fn carry(&mut self, body: Option<u32>) -> Option<u32> {
        std::mem::replace(&mut self.carried, body)
    }

    /// Body `buffer` (0 the request, 1 the response) of the effective context's stream: in
    /// its stream's callback that carries it, the body that callback has (the chunk, or the
    /// running total while buffering); otherwise, from any callback of any context, the
    /// stream's buffer while the context holds that body buffered, as Envoy's `getBuffer`
    /// hands out the filter manager's buffered body. `None` when there is no such body, which
    /// Envoy answers as an empty buffer that takes no bytes.
    pub fn stream_body(&mut self, buffer: u32) -> Option<&mut Vec<u8>> {
        if buffer > 1 {
            return None;
        }
        if self.carried == Some(buffer) && self.effective_is_current() {
            let s = self.current_stream()?;
            return Some(if buffer == 0 {
                &mut s.request_body
            } else {
                &mut s.response_body
            });
        }
        let context = self.streams.get(&self.effective_context)?;
        if context.buffering & (1 << buffer) == 0 {
            return None;
        }
        let s = self.stream_data()?;
        if buffer == 0 {
            s.request_buffered.as_mut()
        } else {
            s.response_buffered.as_mut()
        }
    }

    pub fn new_token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }
}
