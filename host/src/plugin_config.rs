//! What configures one plugin: its names, its configuration bytes, the environment it may
//! read, its failure policy and limits.

use std::time::Duration;

/// What happens to a stream when the module fails (trap, deadline, memory cap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer 503, as Envoy's default FAIL_CLOSED.
    #[default]
    FailClosed,
    /// Skip the filter for that stream.
    FailOpen,
}

/// Per-instance limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPU time one callback may take: the worker thread's CPU time, checked at every epoch
    /// tick, so a callback is stopped within about a tick past it.
    pub callback_deadline: Duration,
    /// CPU time `_initialize`, `on_vm_start` and `on_configure` may take together.
    pub startup_deadline: Duration,
    /// Linear memory cap per instance.
    pub memory_bytes: usize,
    /// Past this much linear memory an instance is replaced between streams
    /// ([`crate::vm::Vm::over_soft_limit`]): linear memory never shrinks, so one large
    /// request would otherwise keep its peak reserved for the instance's life. Off (`None`)
    /// by default, as in Envoy: a replacement loses what the module keeps in its memory
    /// (caches, local counters) and costs a start, which only the operator can weigh.
    pub memory_soft_bytes: Option<usize>,
    /// Fuel per callback, when the engine was built with fuel.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            callback_deadline: Duration::from_millis(10),
            startup_deadline: Duration::from_secs(2),
            memory_bytes: 128 << 20,
            memory_soft_bytes: None,
            fuel: None,
        }
    }
}

/// One plugin as configured (Envoy's `PluginConfig` + `VmConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    /// `plugin_name`.
    pub name: String,
    /// `plugin_root_id`: which root context of the module serves this plugin.
    pub root_id: String,
    /// `plugin_vm_id`: namespace of shared data and queues.
    pub vm_id: String,
    /// The plugin configuration (`proxy_on_configure`, buffer type 7).
    pub configuration: Vec<u8>,
    /// The VM configuration (`proxy_on_vm_start`, buffer type 6).
    pub vm_configuration: Vec<u8>,
    /// Environment variables the module may read through WASI (an explicit allow-list:
    /// nothing from the host's own environment leaks in).
    pub env: Vec<(String, String)>,
    pub failure_policy: FailurePolicy,
    pub limits: Limits,
    /// Log level reported by `proxy_get_log_level` (0 trace … 5 critical).
    pub log_level: u32,
    /// Envoy's `allow_on_headers_stop_iteration`: a filter that stops in its request or
    /// response headers callback still gets the body callbacks (and may change the headers
    /// there) instead of having everything held until it resumes.
    pub allow_on_headers_stop_iteration: bool,
    /// The route and cluster name its filters read (`xds.route_name`, `xds.cluster_name` and
    /// their short forms) instead of their stream's, when set. A data plane's own layer of
    /// filters, which runs on every route and service alike, is one route and one cluster of
    /// its own to them: what they key by route or service (a rate limit by `service`) is
    /// then one key for the whole data plane.
    pub stream_identity: Option<String>,
}

impl PluginConfig {
    /// A plugin named `name` (also its root id and vm id) with `configuration`.
    pub fn new(name: &str, configuration: impl Into<Vec<u8>>) -> PluginConfig {
        PluginConfig {
            name: name.to_owned(),
            root_id: name.to_owned(),
            vm_id: name.to_owned(),
            configuration: configuration.into(),
            vm_configuration: Vec::new(),
            env: Vec::new(),
            failure_policy: FailurePolicy::default(),
            limits: Limits::default(),
            log_level: 1,
            allow_on_headers_stop_iteration: false,
            stream_identity: None,
        }
    }

    pub fn vm_id(mut self, vm_id: &str) -> PluginConfig {
        self.vm_id = vm_id.to_owned();
        self
    }

    pub fn root_id(mut self, root_id: &str) -> PluginConfig {
        self.root_id = root_id.to_owned();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> PluginConfig {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> PluginConfig {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    pub fn failure_policy(mut self, policy: FailurePolicy) -> PluginConfig {
        self.failure_policy = policy;
        self
    }

    pub fn limits(mut self, limits: Limits) -> PluginConfig {
        self.limits = limits;
        self
    }

    pub fn stream_identity(mut self, name: &str) -> PluginConfig {
        self.stream_identity = Some(name.to_owned());
        self
    }
}
