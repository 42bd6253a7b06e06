//! The proxy-wasm adapter: reads what the identifier needs, runs the core's check-and-count on
//! the host's shared data, and adds the headers to the response or sends the rejection.
//!
//! Shared data and the clock are called through the raw ABI, not the SDK wrappers: those
//! panic (a trap, then 503s from this worker) on any status they do not expect, and a failing
//! store must instead follow `fault_tolerant`.

use std::ptr::null_mut;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::limiter::{Need, RequestInfo};
use crate::{Config, Limiter, SetError, Store, Verdict, PLUGIN_NAME};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(RateLimitRoot { limiter: None })
    });
}}

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

/// The host's shared data (one map per vm_id, process-wide).
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: the pointers are valid for the call; the host allocates the returned buffer
        // with `proxy_on_memory_allocate` (exactly `size` bytes), which we then own.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            OK if data.is_null() => Ok(Some((Vec::new(), cas))),
            // SAFETY: see above; the buffer is `size` bytes from the module's allocator.
            OK => Ok(Some((
                unsafe { Vec::from_raw_parts(data, size, size) },
                cas,
            ))),
            NOT_FOUND => Ok(None),
            status => Err(status),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        // SAFETY: the pointers are valid for the duration of the call.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(SetError::CasMismatch),
            status => Err(SetError::Failed(status)),
        }
    }
}

/// The host's wall clock in Unix milliseconds (0 if the host cannot tell).
fn now_ms() -> i64 {
    let mut nanos: u64 = 0;
    // SAFETY: the pointer is valid for the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        (nanos / 1_000_000) as i64
    } else {
        0
    }
}

fn property(path: Vec<&str>) -> Option<String> {
    let bytes = hostcalls::get_property(path).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

fn log(level: LogLevel, message: &str) {
    // Envoy prefixes the plugin's name, root id and vm_id.
    hostcalls::log(level, message).ok();
}

struct RateLimitRoot {
    limiter: Option<Rc<Limiter>>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match kit::proxy::configure(self, PLUGIN_NAME, Config::parse) {
            Some(config) => {
                // Counters are per plugin instance. Shared data is one map per vm_id, and
                // filters on several listeners or routes may share a vm_id and a name: the
                // scope is Envoy's plugin name plus a fingerprint of the configuration, so
                // only instances with the same vm_id, name and config share counters.
                let bytes = self.get_plugin_configuration().unwrap_or_default();
                let instance = format!(
                    "{}|{}",
                    property(vec!["plugin_name"]).unwrap_or_default(),
                    crate::store::fingerprint(&bytes)
                );
                self.limiter = Some(Rc::new(Limiter::new(config, &instance)));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitFilter {
            limiter: self.limiter.clone(),
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
        let source = property(vec!["source", "address"]);
        let (mut cluster, mut header, mut path) = (None, None, None);
        match limiter.needs() {
            Need::Nothing => {}
            // Kong's service: the cluster the route sends the request to. Envoy 1.40 answers
            // `xds.cluster_name` at the request headers (the wasm `cluster_name` is not set
            // yet there).
            Need::Cluster => {
                cluster =
                    property(vec!["xds", "cluster_name"]).or_else(|| property(vec!["cluster_name"]))
            }
            Need::Header => {
                if let Some(name) = limiter.config.header_name.as_deref() {
                    header = self.get_http_request_header(name);
                }
            }
            Need::Path => path = self.get_http_request_header(":path"),
        }
        let accept = self.get_http_request_header("accept");
        let request = RequestInfo {
            source_address: source.as_deref(),
            cluster: cluster.as_deref(),
            header: header.as_deref(),
            path: path.as_deref(),
            accept: accept.as_deref(),
        };
        match limiter.decide(&HostStore, &request, &mut now_ms) {
            Verdict::Allow { headers, log: note } => {
                if let Some(note) = note {
                    log(LogLevel::Error, &note);
                }
                self.headers = headers;
                Action::Continue
            }
            Verdict::Reject {
                response,
                log: note,
            } => {
                if let Some(note) = note {
                    log(LogLevel::Error, &note);
                }
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
                self.set_http_response_header(&name, Some(&value));
            }
        }
        Action::Continue
    }
}
