//! The proxy-wasm adapter: reads what the identifier needs, runs the core's check-and-count on
//! the host's shared data, and adds the headers to the response or sends the rejection.
//!
//! Every host call on the request path goes through the raw ABI with every status handled.
//! The SDK's wrappers panic (a trap: the request gets 503 and the VM is rebuilt) on a status
//! they do not expect, its string getters on a header value outside UTF-8 (`Accept: \xff`),
//! and a failing store must follow `fault_tolerant` instead.

use std::cell::Cell;
use std::ptr::null_mut;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::limiter::{Decision, Need, RequestInfo};
use crate::siphash::SipKey;
use crate::store::{hash_key, MAX_ATTEMPTS};
use crate::{
    Config, Limiter, SetError, Store, Verdict, EVICTIONS_METRIC, PLUGIN_NAME, UNCOUNTED_METRIC,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(RateLimitRoot { limiter: None, metrics: Metrics::default() })
    });
}}

/// The host calls, declared with plain integers for statuses and enums: the SDK's `Status`
/// would be undefined behaviour on a status it does not list.
mod abi {
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        /// WASI's CSPRNG; returns an errno (0: success).
        pub fn random_get(buf: *mut u8, buf_len: usize) -> i32;
    }

    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;
    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const COUNTER: u32 = 0;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;

    /// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`
    /// (the SDK's allocator: exactly `size` bytes).
    ///
    /// # Safety
    /// `data` is null or such a buffer of `size` bytes, owned by nobody else.
    pub unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            Vec::new()
        } else {
            // SAFETY: see the function's contract.
            unsafe { Vec::from_raw_parts(data, size, size) }
        }
    }
}

/// The host's shared data (one map per vm_id, process-wide).
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: the pointers are valid for the call.
        let status = unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            // SAFETY: on OK the host hands over a buffer of `size` bytes.
            abi::OK => Ok(Some((unsafe { abi::owned(data, size) }, cas))),
            abi::NOT_FOUND => Ok(None),
            status => Err(status),
        }
    }

    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), SetError> {
        // SAFETY: the pointers are valid for the duration of the call.
        let status = unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            abi::OK => Ok(()),
            abi::CAS_MISMATCH => Err(SetError::CasMismatch),
            status => Err(SetError::Failed(status)),
        }
    }
}

/// The host's wall clock in Unix milliseconds, or its status.
fn now_ms() -> Result<i64, u32> {
    let mut nanos: u64 = 0;
    // SAFETY: the pointer is valid for the call.
    match unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) } {
        abi::OK => Ok(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)),
        status => Err(status),
    }
}

/// A header's value as the host's bytes; `None` when absent or when the host refuses.
fn header(map: u32, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the pointers are valid for the call.
    let status = unsafe {
        abi::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: on OK the host hands over a buffer of `size` bytes.
    (status == abi::OK).then(|| unsafe { abi::owned(data, size) })
}

fn set_response_header(name: &str, value: &str) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    let status = unsafe {
        abi::proxy_replace_header_map_value(
            abi::RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status == abi::OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// A property (`["source", "address"]`) as the host's bytes; `None` when unknown or refused.
fn property(path: &[&str]) -> Option<Vec<u8>> {
    // The ABI's path: the segments, each followed by a NUL but the last.
    let serialized = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the pointers are valid for the call.
    let status = unsafe {
        abi::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size)
    };
    // SAFETY: on OK the host hands over a buffer of `size` bytes.
    (status == abi::OK).then(|| unsafe { abi::owned(data, size) })
}

fn log(level: u32, message: &str) {
    // Envoy prefixes the plugin's name, root id and vm_id. A refused log line has nowhere to
    // be reported.
    // SAFETY: the pointer is valid for the call.
    unsafe { abi::proxy_log(level, message.as_ptr(), message.len()) };
}

/// 128 bits from WASI's `random_get` (Envoy and `gateway` back it with the OS's CSPRNG).
fn draw_hash_key() -> Result<SipKey, String> {
    let mut key: SipKey = [0; 16];
    // SAFETY: the buffer is valid for its length during the call.
    match unsafe { abi::random_get(key.as_mut_ptr(), key.len()) } {
        0 => Ok(key),
        errno => Err(format!(
            "drawing the identifier hash key: random_get errno {errno}"
        )),
    }
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
    let mut id = 0;
    // SAFETY: the pointers are valid for the call.
    let status =
        unsafe { abi::proxy_define_metric(abi::COUNTER, name.as_ptr(), name.len(), &mut id) };
    if status == abi::OK {
        Some(id)
    } else {
        log(
            abi::WARN,
            &format!("defining metric {name}: host status {status}"),
        );
        None
    }
}

fn increment(metric: Option<u32>, n: u32) {
    if let Some(id) = metric {
        // SAFETY: no pointers. A refused increment has nowhere better to go than the log line
        // the caller writes anyway.
        unsafe { abi::proxy_increment_metric(id, i64::from(n)) };
    }
}

/// Logs and counts what the core reports besides the verdict.
fn report(decision: &Decision, limiter: &Limiter, metrics: Metrics) {
    if let Some(error) = &decision.error {
        log(abi::ERROR, error);
    }
    if decision.evicted > 0 {
        increment(metrics.evictions, decision.evicted);
        let (worth, total) = tally(&EVICTIONS, u64::from(decision.evicted));
        if worth {
            log(
                abi::WARN,
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
            log(
                abi::WARN,
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
    metrics: Metrics,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match kit::proxy::configure(self, PLUGIN_NAME, Config::parse) {
            Some(config) => {
                // The counters belong to the plugin instance, which the host names stably
                // (Envoy's `name` of the Wasm plugin; our translation derives it from the Kong
                // plugin's id or name). Instances sharing a vm_id and a name share counters.
                let name = property(&["plugin_name"]).unwrap_or_default();
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
            metrics: self.metrics,
            headers: Vec::new(),
            rejected: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimitFilter {
    limiter: Option<Rc<Limiter>>,
    metrics: Metrics,
    /// Added to the upstream's response.
    headers: Vec<(String, String)>,
    rejected: bool,
}

impl Context for RateLimitFilter {}

impl HttpContext for RateLimitFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(limiter) = self.limiter.clone() else {
            return Action::Continue;
        };
        let source = property(&["source", "address"]);
        let (mut cluster, mut header_value, mut path) = (None, None, None);
        match limiter.needs() {
            Need::Nothing => {}
            // Kong's service: the cluster the route sends the request to. Envoy 1.40 answers
            // `xds.cluster_name` at the request headers (the wasm `cluster_name` is not set
            // yet there).
            Need::Cluster => {
                cluster = property(&["xds", "cluster_name"]).or_else(|| property(&["cluster_name"]))
            }
            Need::Header => {
                if let Some(name) = limiter.config.header_name.as_deref() {
                    header_value = header(abi::REQUEST_HEADERS, name);
                }
            }
            Need::Path => path = header(abi::REQUEST_HEADERS, ":path"),
        }
        let accept = header(abi::REQUEST_HEADERS, "accept");
        let request = RequestInfo {
            source_address: source.as_deref(),
            cluster: cluster.as_deref(),
            header: header_value.as_deref(),
            path: path.as_deref(),
            accept: accept.as_deref(),
        };
        let decision = match (now_ms(), process_hash_key()) {
            (Err(status), _) => limiter.store_failed(
                &format!("reading the clock: host status {status}"),
                request.accept,
            ),
            (_, Err(problem)) => limiter.store_failed(&problem, request.accept),
            (Ok(first), Ok(key)) => {
                let mut last = first;
                let mut clock = || {
                    last = now_ms().unwrap_or(last);
                    last
                };
                limiter.decide(&HostStore, &key, &request, &mut clock)
            }
        };
        report(&decision, &limiter, self.metrics);
        match decision.verdict {
            Verdict::Allow { headers } => {
                self.headers = headers;
                Action::Continue
            }
            Verdict::Reject { response } => {
                self.rejected = true;
                kit::proxy::send(&response);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The rejection (our own local reply passes through here too) already carries them.
        if !self.rejected {
            for (name, value) in std::mem::take(&mut self.headers) {
                if let Err(status) = set_response_header(&name, &value) {
                    log(
                        abi::WARN,
                        &format!("setting response header {name}: host status {status}"),
                    );
                }
            }
        }
        Action::Continue
    }
}
