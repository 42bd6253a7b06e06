//! The state a VM's store carries: what host functions read and change during a callback.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::abi::AbiVersion;
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
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub root_context: u32,
    /// Stream contexts alive in this VM.
    pub streams: HashMap<u32, ()>,
    pub effective_context: u32,
    /// The stream whose callback runs, with its data moved in for the call.
    pub stream: Option<(u32, StreamData)>,
    pub root_properties: BTreeMap<String, Vec<u8>>,
    pub tick_period: Option<Duration>,
    pub callouts: Callouts,
    /// Which context made each call (token → context id).
    pub callout_owner: HashMap<u32, u32>,
    pub open_grpc_streams: HashMap<u32, ()>,
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
    pub pending_done: HashMap<u32, bool>,
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
            streams: HashMap::new(),
            effective_context: 1,
            stream: None,
            root_properties: BTreeMap::new(),
            tick_period: None,
            callouts: Callouts::default(),
            callout_owner: HashMap::new(),
            open_grpc_streams: HashMap::new(),
            next_token: 0,
            http_response: None,
            grpc: GrpcView::default(),
            status: (0, String::new()),
            stream_ops: Vec::new(),
            done: false,
            pending_done: HashMap::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            call_data: None,
        }
    }

    /// The stream data of the effective context, when it is the loaded stream.
    pub fn stream_data(&mut self) -> Option<&mut StreamData> {
        let effective = self.effective_context;
        match &mut self.stream {
            Some((id, data)) if *id == effective => Some(data),
            _ => None,
        }
    }

    pub fn new_token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }
}
