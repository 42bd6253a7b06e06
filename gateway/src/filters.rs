//! The plugins and filter chains of a configuration, as proxy-wasm plugins on the host
//! runtime.
//!
//! A [`Runtime`] owns the wasmtime engine and the process-wide proxy-wasm state (shared data,
//! queues, metrics). For each configuration it compiles (once per module file) and validates
//! every plugin instance — the module's own `on_configure` must accept its config, so a
//! reload a module would refuse is refused whole. Each worker then starts its own instance
//! of every plugin ([`WorkerFilters`]) and builds per-request filter chains from them.
//!
//! The operator's platform plugins (`--platform-plugins`) are compiled and validated once,
//! when the runtime starts, and head every route's chain in every configuration: the same
//! plugins (and, on each worker, the same instances) whatever the configurations that come
//! and go, and apart from their plugins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host::clock::SystemClock;
use host::shared_data::DEFAULT_MAX_BYTES_PER_VM;
use host::{
    Engine, EngineConfig, FailurePolicy, HostEnv, Limits, Plugin, PluginConfig, PluginModule,
    WorkerPlugin,
};
use kit::schema::FieldError;
pub use model::plugins::default_modules_dir;
use model::{Config, ConfigError, ModuleSettings};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

/// Where modules come from and what they may read.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// wasmgate's plugin modules (`request_size_limiting.wasm`, ...).
    pub modules_dir: PathBuf,
    /// Third-party modules for `filter_chains` (`<name>.wasm`).
    pub filters_dir: Option<PathBuf>,
    /// Environment variables modules may read (secrets for `{vault://env/NAME}`).
    pub env_allow: Vec<String>,
    /// Values given directly (not read from the process environment), e.g. by a test or a
    /// control plane provisioning this data plane.
    pub env_values: Vec<(String, String)>,
    /// The bytes (keys and values) each vm_id may keep in shared data; Envoy has no such cap.
    pub shared_data_max_bytes: usize,
    /// The operator's platform plugins, run on every proxied request before the matched
    /// route's own chain.
    pub platform: Option<Platform>,
    /// Where compiled modules are kept between runs ([`host::module_cache`]); none: every
    /// module is compiled at start.
    pub module_cache_dir: Option<PathBuf>,
}

/// The plugins a platform runs on every proxied request of this data plane, whatever its
/// configuration says (`gateway run --platform-plugins FILE`).
#[derive(Clone, Debug)]
pub struct Platform {
    /// Where they were read from, for messages.
    pub file: PathBuf,
    /// As [`model::parse_platform_plugins`] read them.
    pub plugins: Vec<model::Plugin>,
    /// Their modules: the operator's folder, not a control plane version's (which holds the
    /// modules that version's configuration needs).
    pub modules_dir: PathBuf,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            modules_dir: default_modules_dir(),
            filters_dir: None,
            env_allow: Vec::new(),
            env_values: Vec::new(),
            shared_data_max_bytes: DEFAULT_MAX_BYTES_PER_VM,
            platform: None,
            module_cache_dir: None,
        }
    }
}

/// One filter of a route's chain: a platform plugin, a plugin instance of the configuration
/// or a filter_chains filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterRef {
    Platform(usize),
    Plugin(usize),
    Chain(usize, usize),
}

/// The compiled, validated plugins of one configuration.
#[derive(Default)]
pub struct ConfigFilters {
    /// The runtime's platform plugins (the same ones in every configuration).
    pub platform: Vec<Plugin>,
    /// Aligned with `Config::plugins` (None: disabled).
    pub plugins: Vec<Option<Plugin>>,
    /// Aligned with `Config::filter_chains` and their filters.
    pub chains: Vec<Vec<Option<Plugin>>>,
    /// Per route: the filters to run, in order (the platform's, then plugins by priority,
    /// then chains).
    pub routes: Vec<Vec<FilterRef>>,
}

impl ConfigFilters {
    pub fn plugin(&self, filter: FilterRef) -> Option<&Plugin> {
        match filter {
            FilterRef::Platform(i) => self.platform.get(i),
            FilterRef::Plugin(i) => self.plugins.get(i)?.as_ref(),
            FilterRef::Chain(c, f) => self.chains.get(c)?.get(f)?.as_ref(),
        }
    }

    /// Every platform plugin and every enabled plugin and chain filter, with where it is.
    pub fn refs(&self) -> impl Iterator<Item = (FilterRef, &Plugin)> {
        let platform = (self.platform.iter().enumerate()).map(|(i, p)| (FilterRef::Platform(i), p));
        let plugins = (self.plugins.iter().enumerate())
            .filter_map(|(i, p)| Some((FilterRef::Plugin(i), p.as_ref()?)));
        let chains = self.chains.iter().enumerate().flat_map(|(c, chain)| {
            (chain.iter().enumerate())
                .filter_map(move |(f, p)| Some((FilterRef::Chain(c, f), p.as_ref()?)))
        });
        platform.chain(plugins).chain(chains)
    }

    fn all(&self) -> impl Iterator<Item = &Plugin> {
        self.refs().map(|(_, plugin)| plugin)
    }
}

/// Compiled modules by the SHA-256 of their bytes: the same module in another folder (each
/// version from a control plane has its own) is not compiled again, and is the same
/// [`PluginModule`], so plugins that did not change keep their instances across reloads.
type ModuleCache = HashMap<[u8; 32], Arc<PluginModule>>;

pub struct Runtime {
    engine: Engine,
    pub env: Arc<HostEnv>,
    options: RuntimeOptions,
    modules: Mutex<ModuleCache>,
    /// The platform's plugins, started and checked once.
    platform: Vec<Plugin>,
}

impl Runtime {
    /// Instances are allocated on demand, not from a pool: a pool has a fixed number of
    /// slots, and every worker holds its own instance of every filter it has run, for two
    /// configurations while a reload's old one finishes its requests, so no fixed size fits
    /// every worker count and configuration (a pool of 256 left the last of 90 workers with
    /// the seed's 3 plugins answering 503). An instance is started once per worker and lives
    /// on, so allocating it costs nothing that matters; memory images are still
    /// copy-on-write, and each instance's memory is capped by its plugin's limits.
    pub fn new(options: RuntimeOptions) -> Result<Runtime, String> {
        let engine = Engine::new(EngineConfig {
            pooling: false,
            cache_dir: options.module_cache_dir.clone(),
            ..EngineConfig::default()
        })
        .map_err(|e| format!("wasm engine: {e}"))?;
        let mut runtime = Runtime {
            engine,
            env: Arc::new(
                HostEnv::new(SystemClock::shared())
                    .with_shared_data_limit(options.shared_data_max_bytes),
            ),
            options,
            modules: Mutex::new(HashMap::new()),
            platform: Vec::new(),
        };
        if let Some(platform) = runtime.options.platform.clone() {
            runtime.platform = runtime
                .platform(&platform)
                .map_err(|e| format!("{} is invalid: {e}", platform.file.display()))?;
        }
        Ok(runtime)
    }

    /// Starts each enabled platform plugin once, as any plugin (its module must accept its
    /// config), named apart from the configurations' plugins and seeing the platform's own
    /// stream identity ([`model::PLATFORM_STREAM`]) on every stream: a platform
    /// `rate-limiting` by `service` counts every request of the data plane under one key.
    fn platform(&self, platform: &Platform) -> Result<Vec<Plugin>, ConfigError> {
        let mut errors = Vec::new();
        let mut built = Vec::new();
        for plugin in platform.plugins.iter().filter(|p| p.enabled) {
            let file = model::plugins::find(&plugin.name)
                .map_or_else(|| format!("{}.wasm", plugin.name), |p| p.module_file());
            let configuration = model::plugins::module_configuration(
                &plugin.name,
                &plugin.config,
                serde_json::Map::new(),
            );
            match self.plugin(
                &platform.modules_dir.join(file),
                (
                    &model::platform_instance_name(plugin),
                    &plugin.name,
                    &model::envoy::plugin_vm_id(&plugin.name),
                ),
                configuration.into_bytes(),
                (true, &plugin.wasmgate),
                Some(model::PLATFORM_STREAM),
                None,
            ) {
                Ok(p) => built.push(p),
                Err(e) => errors.extend(refused_fields(&format!("plugins.{}", plugin.name), &e)),
            }
        }
        if errors.is_empty() {
            Ok(built)
        } else {
            Err(ConfigError { fields: errors })
        }
    }

    /// Compiles a module once per content (a file changed since is compiled again).
    fn module(&self, path: &Path) -> Result<Arc<PluginModule>, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(module) = self
            .modules
            .lock()
            .ok()
            .and_then(|c| c.get(&digest).cloned())
        {
            return Ok(module);
        }
        let module = Arc::new(
            PluginModule::new(&self.engine, &bytes)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
        if let Ok(mut cache) = self.modules.lock() {
            // Only what a plugin still holds stays: modules of configurations long gone would
            // pile up over a control plane's versions.
            cache.retain(|_, module| Arc::strong_count(module) > 1);
            cache.insert(digest, Arc::clone(&module));
        }
        Ok(module)
    }

    /// The secrets one module is given: the variables its own configuration references
    /// (`{vault://env/NAME}`) among those `--env-allow` lets through. Another module's
    /// secrets, and anything the operator allowed that this configuration does not name,
    /// stay out of its environment.
    fn secrets(&self, configuration: &[u8]) -> Vec<(String, String)> {
        let wanted = model::plugins::secret_variables(&String::from_utf8_lossy(configuration));
        let mut secrets: Vec<(String, String)> = self
            .options
            .env_allow
            .iter()
            .filter(|name| wanted.contains(name))
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
            .collect();
        secrets.extend(
            self.options
                .env_values
                .iter()
                .filter(|(name, _)| wanted.contains(name))
                .cloned(),
        );
        secrets
    }

    fn plugin(
        &self,
        module: &Path,
        (name, root_id, vm_id): (&str, &str, &str),
        configuration: Vec<u8>,
        (allow_on_headers_stop_iteration, settings): (bool, &ModuleSettings),
        stream_identity: Option<&str>,
        previous: Option<&ConfigFilters>,
    ) -> Result<Plugin, host::Error> {
        // A module that cannot be read or compiled: its message as it is.
        let module = self.module(module).map_err(host::Error::Io)?;
        let secrets = self.secrets(&configuration);
        // As the Envoy translation sets it: wasmgate's plugins may hold the headers and still
        // see the body; third-party filters get Envoy's default unless their entry says so.
        let mut config = PluginConfig::new(name, configuration)
            .root_id(root_id)
            .vm_id(vm_id)
            .allow_on_headers_stop_iteration(allow_on_headers_stop_iteration)
            .failure_policy(failure_policy(settings))
            .limits(limits(settings));
        for (k, v) in secrets {
            config = config.env(&k, &v);
        }
        if let Some(identity) = stream_identity {
            config = config.stream_identity(identity);
        }
        if let Some(same) = previous.and_then(|p| p.all().find(|p| p.is(&module, &config))) {
            return Ok(same.clone());
        }
        let plugin = Plugin::new(module, config, Arc::clone(&self.env));
        plugin.validate()?;
        Ok(plugin)
    }

    /// A [`model::plugins::PluginCheck`] by the modules themselves, from `modules_dir`: the
    /// plugin's module must accept `config` (as the data planes hand it over, without routes),
    /// and each field it refuses is reported at its path (`config.second`). The gateway never
    /// links the plugins' cores; this is how `gateway validate` reports a plugin's errors with
    /// every other error of a file.
    pub fn check_plugin(
        &self,
        modules_dir: &Path,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<(), ConfigError> {
        let Some(known) = model::plugins::find(name) else {
            return Ok(());
        };
        let configuration =
            model::plugins::module_configuration(name, config, serde_json::Map::new());
        self.plugin(
            &modules_dir.join(known.module_file()),
            (name, name, &model::envoy::plugin_vm_id(name)),
            configuration.into_bytes(),
            (true, &ModuleSettings::default()),
            None,
            None,
        )
        .map(drop)
        .map_err(|e| ConfigError {
            fields: refused_fields("", &e),
        })
    }

    /// Compiles and validates every plugin and chain filter of `config`, with wasmgate's
    /// modules from `modules_dir`; errors name the entity, as the declarative validation
    /// does. A plugin that is in `previous` as it was is taken from there, not validated
    /// again.
    pub fn build(
        &self,
        config: &Config,
        modules_dir: &Path,
        previous: Option<&ConfigFilters>,
    ) -> Result<ConfigFilters, ConfigError> {
        let mut errors = Vec::new();
        let mut filters = ConfigFilters {
            platform: self.platform.clone(),
            ..ConfigFilters::default()
        };
        for plugin in &config.plugins {
            if !plugin.enabled {
                filters.plugins.push(None);
                continue;
            }
            let file = model::plugins::find(&plugin.name)
                .map_or_else(|| format!("{}.wasm", plugin.name), |p| p.module_file());
            // Named as in Envoy: one VM (shared data) per module, and an instance name that is
            // stable across reloads and edits, so per-instance state (rate-limit counters)
            // survives them.
            let name = config.plugin_instance_name(plugin);
            let vm_id = model::envoy::plugin_vm_id(&plugin.name);
            match self.plugin(
                &modules_dir.join(file),
                (&name, &plugin.name, &vm_id),
                model::plugins::configuration(config, plugin).into_bytes(),
                (true, &plugin.wasmgate),
                None,
                previous,
            ) {
                Ok(p) => filters.plugins.push(Some(p)),
                Err(e) => {
                    errors.extend(refused_fields(&format!("plugins.{}", plugin.name), &e));
                    filters.plugins.push(None);
                }
            }
        }
        let filters_dir = self.options.filters_dir.clone();
        for (c, chain) in config.filter_chains.iter().enumerate() {
            let mut built = Vec::new();
            for (f, filter) in chain.filters.iter().enumerate() {
                if !chain.enabled || !filter.enabled {
                    built.push(None);
                    continue;
                }
                let path = format!(
                    "filter_chains.{}.filters.{}",
                    chain.name.clone().unwrap_or_else(|| (c + 1).to_string()),
                    filter.name
                );
                let Some(dir) = &filters_dir else {
                    errors.push(FieldError {
                        path,
                        message: "no filters directory is configured (--filters-dir)".into(),
                    });
                    built.push(None);
                    continue;
                };
                let module = dir.join(format!("{}.wasm", filter.name));
                if !module.is_file() {
                    errors.push(FieldError {
                        path,
                        message: format!("no such filter: {}", filter.name),
                    });
                    built.push(None);
                    continue;
                }
                let vm_id = format!(
                    "{}@chain:{}:{f}",
                    filter.name,
                    config.scope_label(chain.scope)
                );
                match self.plugin(
                    &module,
                    (&filter.plugin_name, &filter.root_id, &vm_id),
                    filter.config.clone().unwrap_or_default().into_bytes(),
                    (filter.allow_on_headers_stop_iteration, &filter.wasmgate),
                    None,
                    previous,
                ) {
                    Ok(p) => built.push(Some(p)),
                    Err(e) => {
                        errors.push(FieldError {
                            path,
                            message: e.to_string(),
                        });
                        built.push(None);
                    }
                }
            }
            filters.chains.push(built);
        }
        for route in 0..config.routes.len() {
            // The platform's first, whatever the route: no precedence joins them to the
            // configuration's, which follow by Kong's.
            let mut refs: Vec<FilterRef> = (0..filters.platform.len())
                .map(FilterRef::Platform)
                .collect();
            refs.extend(
                config
                    .plugins_for(Some(route))
                    .into_iter()
                    .filter_map(|p| config.plugins.iter().position(|q| std::ptr::eq(p, q)))
                    .map(FilterRef::Plugin),
            );
            let service = config.routes[route].service;
            let mut chains: Vec<usize> = (0..config.filter_chains.len())
                .filter(|&c| {
                    config.filter_chains[c].enabled
                        && config.filter_chains[c].scope.covers(Some(route), service)
                })
                .collect();
            chains.sort_by_key(|&c| config.filter_chains[c].scope.specificity());
            for c in chains {
                for f in 0..config.filter_chains[c].filters.len() {
                    if config.filter_chains[c].filters[f].enabled {
                        refs.push(FilterRef::Chain(c, f));
                    }
                }
            }
            filters.routes.push(refs);
        }
        if errors.is_empty() {
            Ok(filters)
        } else {
            Err(ConfigError { fields: errors })
        }
    }
}

/// The errors of a wasmgate plugin that did not start, under `path` (the plugin's, e.g.
/// `plugins.rate-limiting`): each field its module named in a refusal line
/// ([`kit::schema::refusal_lines`]) at its own path, Kong's
/// (`plugins.rate-limiting.config.second: expected a number`); whatever else it logged, or any
/// other failure, at `path` itself, as the host reports it.
fn refused_fields(path: &str, error: &host::Error) -> Vec<FieldError> {
    let at = |field: &str| match (path, field) {
        ("", field) => field.to_owned(),
        (path, "") => path.to_owned(),
        (path, field) => format!("{path}.{field}"),
    };
    let whole = || FieldError {
        path: path.to_owned(),
        message: error.to_string(),
    };
    let host::Error::ConfigRefused { plugin, reason } = error else {
        return vec![whole()];
    };
    let mut fields = Vec::new();
    let mut other = Vec::new();
    for line in reason.lines() {
        match kit::schema::refused_field(line) {
            Some((_, field)) => fields.push(FieldError {
                path: at(&field.path),
                message: field.message,
            }),
            None => other.push(line),
        }
    }
    if fields.is_empty() {
        return vec![whole()];
    }
    if !other.is_empty() {
        fields.push(FieldError {
            path: path.to_owned(),
            message: format!("{plugin}: configuration refused: {}", other.join("\n")),
        });
    }
    fields
}

fn failure_policy(settings: &ModuleSettings) -> FailurePolicy {
    match settings.failure_policy {
        model::FailurePolicy::FailClosed => FailurePolicy::FailClosed,
        model::FailurePolicy::FailOpen => FailurePolicy::FailOpen,
    }
}

/// The host's limits with what the entity's `wasmgate` block sets (validated by the model).
fn limits(settings: &ModuleSettings) -> Limits {
    let defaults = Limits::default();
    let mib = |mb: u64| usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    Limits {
        callback_deadline: settings
            .callback_budget_ms
            .map_or(defaults.callback_deadline, Duration::from_millis),
        startup_deadline: settings
            .startup_budget_ms
            .map_or(defaults.startup_deadline, Duration::from_millis),
        memory_bytes: settings.memory_limit_mb.map_or(defaults.memory_bytes, mib),
        memory_soft_bytes: settings
            .memory_soft_limit_mb
            .map(mib)
            .or(defaults.memory_soft_bytes),
        ..defaults
    }
}

/// After an instance failed to start on a worker, how long its requests fail before the next
/// try, doubling up to [`START_RETRY_MAX`]: a start can fail for a passing reason (the
/// instance pool full while a reload's two generations overlap, a module whose start
/// depends on shared data), and a worker must not fail a filter's requests for good.
const START_RETRY_FIRST: Duration = Duration::from_millis(500);
const START_RETRY_MAX: Duration = Duration::from_secs(30);

/// A filter's instance on one worker.
enum Instance {
    Running(WorkerPlugin),
    /// The last start failed; the next is tried from `retry_at`.
    Failed {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// One worker's instances of one configuration's plugins.
pub struct WorkerFilters {
    /// Which configuration these instances belong to.
    pub generation: u64,
    instances: FxHashMap<FilterRef, Instance>,
    /// The instances of a configuration about to serve, started before it does.
    next: Option<Box<WorkerFilters>>,
}

impl WorkerFilters {
    pub fn new(generation: u64) -> WorkerFilters {
        WorkerFilters {
            generation,
            instances: FxHashMap::default(),
            next: None,
        }
    }

    /// Starts the instances of a configuration about to serve, beside the running ones, and
    /// with those of its plugins that are the running ones' (see [`WorkerFilters::advance`]);
    /// false when they were started already.
    pub fn prepare(&mut self, generation: u64, filters: &ConfigFilters) -> bool {
        if self.generation == generation
            || self
                .next
                .as_ref()
                .is_some_and(|n| n.generation == generation)
        {
            return false;
        }
        let mut next = WorkerFilters::new(generation);
        next.instances = self.kept(filters);
        next.warm(filters);
        self.next = Some(Box::new(next));
        true
    }

    /// The running instances of the plugins `filters` keeps as they were, where they are now.
    fn kept(&self, filters: &ConfigFilters) -> FxHashMap<FilterRef, Instance> {
        let mut kept = FxHashMap::default();
        for (filter, plugin) in filters.refs() {
            let running = self.instances.values().find_map(|instance| match instance {
                Instance::Running(worker) if worker.plugin().ptr_eq(plugin) => Some(worker),
                _ => None,
            });
            if let Some(worker) = running {
                kept.insert(filter, Instance::Running(worker.clone()));
            }
        }
        kept
    }

    /// Moves to another configuration's plugins. The running instances of plugins it kept as
    /// they were go on (with their VM state and timers); the rest are dropped here and live
    /// on only in the streams that still use them.
    pub fn advance(&mut self, generation: u64, filters: &ConfigFilters) {
        if self.generation == generation {
            return;
        }
        match self.next.take() {
            Some(next) if next.generation == generation => *self = *next,
            _ => {
                self.instances = self.kept(filters);
                self.generation = generation;
            }
        }
    }

    /// Starts every filter of the configuration that has no instance yet (or whose retry is
    /// due), off the request path: as Envoy starts a worker's VMs with the configuration,
    /// its first requests do not pay for the starts, and ticks run from the start.
    pub fn warm(&mut self, filters: &ConfigFilters) {
        let refs: Vec<FilterRef> = filters.refs().map(|(filter, _)| filter).collect();
        for filter in refs {
            let _ = self.instance(filters, filter);
        }
    }

    /// This worker's instance of a filter, started on first use. `None` when the instance
    /// cannot start (the request then fails closed); it is tried again after a backoff.
    pub fn instance(&mut self, filters: &ConfigFilters, filter: FilterRef) -> Option<WorkerPlugin> {
        let backoff = match self.instances.get(&filter) {
            Some(Instance::Running(worker)) => return Some(worker.clone()),
            Some(Instance::Failed { retry_at, backoff }) => {
                if Instant::now() < *retry_at {
                    return None;
                }
                (*backoff * 2).min(START_RETRY_MAX)
            }
            None => START_RETRY_FIRST,
        };
        let plugin = filters.plugin(filter)?;
        match plugin.worker() {
            Ok(worker) => {
                self.instances
                    .insert(filter, Instance::Running(worker.clone()));
                Some(worker)
            }
            Err(e) => {
                log::error!(
                    "{}: cannot start on this worker (next try in {backoff:?}): {e}",
                    plugin.config().name
                );
                self.instances.insert(
                    filter,
                    Instance::Failed {
                        retry_at: Instant::now() + backoff,
                        backoff,
                    },
                );
                None
            }
        }
    }

    /// The instances that run.
    pub fn running(&self) -> impl Iterator<Item = &WorkerPlugin> {
        self.instances
            .values()
            .filter_map(|instance| match instance {
                Instance::Running(worker) => Some(worker),
                _ => None,
            })
    }

    /// When the first of the instances' next ticks is due (monotonic clock).
    pub fn next_tick(&self) -> Option<Duration> {
        self.running().filter_map(WorkerPlugin::next_tick).min()
    }

    /// Runs what is due on every instance (queues, ticks).
    pub fn poll(&self) {
        for instance in self.instances.values() {
            if let Instance::Running(worker) = instance {
                worker.poll();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: &str) -> host::Error {
        host::Error::ConfigRefused {
            plugin: "wasmgate.plugin.rate-limiting@global".into(),
            reason: reason.into(),
        }
    }

    fn field(path: &str, message: &str) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A module's refusal lines become Kong's field errors under the plugin's path; anything
    /// else stays whole at the plugin.
    #[test]
    fn a_modules_refusal_names_each_field_at_its_kong_path() {
        let error = refused(
            "rate-limiting: invalid configuration: config.second: value must be greater than 0\n\
             rate-limiting: invalid configuration: @entity: at least one of these fields must be non-empty: 'config.second'",
        );
        assert_eq!(
            refused_fields("plugins.rate-limiting", &error),
            [
                field(
                    "plugins.rate-limiting.config.second",
                    "value must be greater than 0"
                ),
                field(
                    "plugins.rate-limiting.@entity",
                    "at least one of these fields must be non-empty: 'config.second'"
                ),
            ]
        );
        // As a PluginCheck reports it: relative to the plugin.
        assert_eq!(
            refused_fields("", &error)[0],
            field("config.second", "value must be greater than 0")
        );
        // Other lines the module logged are kept, at the plugin.
        let error = refused(
            "rate-limiting: starting\nrate-limiting: invalid configuration: config.second: expected a number",
        );
        assert_eq!(
            refused_fields("plugins.rate-limiting", &error),
            [
                field("plugins.rate-limiting.config.second", "expected a number"),
                field(
                    "plugins.rate-limiting",
                    "wasmgate.plugin.rate-limiting@global: configuration refused: rate-limiting: starting"
                ),
            ]
        );
        let error = refused("proxy_on_configure returned false");
        assert_eq!(
            refused_fields("plugins.rate-limiting", &error),
            [field("plugins.rate-limiting", &error.to_string())]
        );
        let error = host::Error::Io("/nowhere/rate_limiting.wasm: No such file".into());
        assert_eq!(
            refused_fields("plugins.rate-limiting", &error),
            [field(
                "plugins.rate-limiting",
                "/nowhere/rate_limiting.wasm: No such file"
            )]
        );
    }
}
