//! The proxy-wasm adapter: [`Stream`] does the work; this file connects it to the host.
//!
//! Every request-path call goes through the raw ABI with each status handled: the SDK's
//! wrappers (`get_buffer`, `set_buffer`, the header map calls, `get_property`, even `log` and
//! `send_http_response`) panic on any status they do not expect, and in wasm a panic is a
//! trap, which Envoy answers with 503 (and a VM reload). Header names and values are bytes.

use std::ptr::{null, null_mut};
use std::rc::Rc;

use kit::LocalResponse;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::abi;
use crate::stream::{self, Host, Level, Status, Stream};
use crate::transform::Headers;
use crate::{Config, PLUGIN_NAME};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TransformerRoot { config: Rc::new(Config::default()) })
    });
}}

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const REQUEST_HEADERS: u32 = 0;
const REQUEST_BODY: u32 = 0;

fn status(code: u32) -> Result<(), Status> {
    if code == OK {
        Ok(())
    } else {
        Err(code)
    }
}

/// Takes ownership of a buffer the host allocated with `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` is null or points to `size` bytes from this module's allocator, owned by nobody
/// else.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

fn log(level: LogLevel, message: &str) {
    let message = format!("{PLUGIN_NAME}: {message}");
    // SAFETY: the pointer is valid for the call. A refused log line is dropped.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host, for the stream being served.
struct ProxyWasm;

impl Host for ProxyWasm {
    fn request_headers(&mut self) -> Result<Headers, Status> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the pointers are valid for the call.
        status(unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) })?;
        // SAFETY: on OK the host handed over `size` bytes it allocated in this module.
        let bytes = unsafe { owned(data, size) };
        abi::decode_map(&bytes).ok_or(NOT_FOUND)
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), Status> {
        // SAFETY: the pointers are valid for the call.
        status(unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) })
    }

    fn add_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: the pointers are valid for the call.
        status(unsafe {
            proxy_add_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        // SAFETY: the pointers are valid for the call.
        status(unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    fn request_body(&mut self, size: usize) -> Result<Option<Vec<u8>>, Status> {
        let mut data = null_mut();
        let mut returned = 0;
        // SAFETY: the pointers are valid for the call.
        let code =
            unsafe { proxy_get_buffer_bytes(REQUEST_BODY, 0, size, &mut data, &mut returned) };
        match code {
            // SAFETY: on OK the host handed over `returned` bytes it allocated in this module.
            OK => Ok(Some(unsafe { owned(data, returned) })),
            NOT_FOUND => Ok(None),
            code => Err(code),
        }
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) -> Result<(), Status> {
        // SAFETY: the pointers are valid for the call.
        status(unsafe { proxy_set_buffer_bytes(REQUEST_BODY, 0, size, body.as_ptr(), body.len()) })
    }

    fn route_name(&mut self) -> Option<Vec<u8>> {
        let path = abi::property_path(&["xds", "route_name"]);
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the pointers are valid for the call.
        let code = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        // SAFETY: on OK the host handed over `size` bytes it allocated in this module.
        (code == OK).then(|| unsafe { owned(data, size) })
    }

    fn send(&mut self, response: &LocalResponse) {
        let headers: Vec<(&[u8], &[u8])> = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let headers = abi::encode_map(&headers);
        // SAFETY: the pointers are valid for the call.
        let code = unsafe {
            proxy_send_local_response(
                u32::from(response.status),
                null(),
                0,
                response.body.as_ptr(),
                response.body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        if code != OK {
            log(
                LogLevel::Error,
                &format!("local response {} refused: status {code}", response.status),
            );
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, message);
    }
}

struct TransformerRoot {
    config: Rc<Config>,
}

impl Context for TransformerRoot {}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl RootContext for TransformerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match kit::proxy::configure(self, PLUGIN_NAME, |bytes| Config::parse(bytes, &env)) {
            Some(config) => {
                if let Some(warning) = config.warning() {
                    log(LogLevel::Warn, &warning);
                }
                self.config = Rc::new(config);
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TransformerFilter(Stream::new(Rc::clone(
            &self.config,
        )))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TransformerFilter(Stream);

fn action(action: stream::Action) -> proxy_wasm::types::Action {
    match action {
        stream::Action::Continue => proxy_wasm::types::Action::Continue,
        stream::Action::Pause => proxy_wasm::types::Action::Pause,
    }
}

impl Context for TransformerFilter {}

impl HttpContext for TransformerFilter {
    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        action(self.0.on_request_headers(&mut ProxyWasm, end_of_stream))
    }

    fn on_http_request_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        action(
            self.0
                .on_request_body(&mut ProxyWasm, body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> proxy_wasm::types::Action {
        action(self.0.on_request_trailers(&mut ProxyWasm))
    }
}
