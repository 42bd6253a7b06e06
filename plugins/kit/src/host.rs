//! The proxy-wasm host calls every plugin makes (wasm only), on the raw ABI (0.2.1).
//!
//! Not the SDK's hostcalls: they panic on any status they do not expect (in wasm a trap,
//! which Envoy answers with 503 and a VM reload), and its string getters on header values
//! outside UTF-8. Here each call hands its status back for the adapter to decide on. The
//! declarations return plain integers, never the SDK's `Status`: an enum holding a value it
//! does not list is undefined behaviour.
//!
//! Buffers the host returns were allocated in this module through `proxy_on_memory_allocate`,
//! which the SDK exports: every plugin links it for the context dispatch (`proxy_wasm::main!`).

use std::ptr::{null, null_mut};

use crate::abi::{decode_map, encode_map, Pairs};
use crate::schema::ConfigError;
use crate::LocalResponse;

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

/// Log levels, with the ABI's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
    Warn = 3,
    Error = 4,
}

/// Header maps, with the ABI's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
}

/// Buffers, with the ABI's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    RequestBody = 0,
    /// A gRPC call's answer, in its response callback.
    GrpcReceive = 5,
    PluginConfiguration = 7,
}

const COUNTER: u32 = 0;

mod sys {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
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
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        /// Returns an errno (0: success).
        pub fn random_get(buf: *mut u8, buf_len: usize) -> i32;
    }
}

fn status(code: u32) -> Result<(), u32> {
    if code == OK {
        Ok(())
    } else {
        Err(code)
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate` (the
/// SDK's: a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` is null or such a buffer of `size` bytes, owned by nobody else.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: see the function's contract.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Runs a call that returns a host-allocated buffer through the two pointers it is given:
/// the buffer on OK, the status otherwise.
fn returned(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Vec<u8>, u32> {
    let mut data = null_mut();
    let mut size = 0;
    status(call(&mut data, &mut size))?;
    // SAFETY: on OK the host handed over `size` bytes it allocated in this module.
    Ok(unsafe { owned(data, size) })
}

/// OK and NOT_FOUND as a value and its absence; any other status as itself.
fn found(result: Result<Vec<u8>, u32>) -> Result<Option<Vec<u8>>, u32> {
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(NOT_FOUND) => Ok(None),
        Err(code) => Err(code),
    }
}

pub fn log(level: Level, message: &str) {
    // SAFETY: the pointer is valid for the call. A refused log line has nowhere to be
    // reported.
    unsafe { sys::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// A header's value as the host's bytes; `None` when absent.
pub fn header(map: Map, name: &[u8]) -> Result<Option<Vec<u8>>, u32> {
    found(returned(|data, size| {
        // SAFETY: the pointers are valid for the call.
        unsafe {
            sys::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
        }
    }))
}

/// Every header of the map, names and values as the host's bytes, in the host's order. A
/// map that does not decode is reported as NOT_FOUND: there is no usable map.
pub fn header_pairs(map: Map) -> Result<Pairs, u32> {
    let bytes = returned(|data, size| {
        // SAFETY: the pointers are valid for the call.
        unsafe { sys::proxy_get_header_map_pairs(map as u32, data, size) }
    })?;
    decode_map(&bytes).ok_or(NOT_FOUND)
}

pub fn add_header(map: Map, name: &[u8], value: &[u8]) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    status(unsafe {
        sys::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn replace_header(map: Map, name: &[u8], value: &[u8]) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    status(unsafe {
        sys::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every occurrence of the header.
pub fn remove_header(map: Map, name: &[u8]) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    status(unsafe { sys::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Resumes the request a filter paused (`proxy_continue_stream`); the host refuses, for one,
/// a stream that has already ended.
pub fn continue_request() -> Result<(), u32> {
    // SAFETY: no pointers; 0 is the request stream.
    status(unsafe { sys::proxy_continue_stream(0) })
}

/// Up to `max_size` bytes of the buffer from `start`; `None` when there is no such buffer.
pub fn buffer(buffer: Buffer, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, u32> {
    found(returned(|data, size| {
        // SAFETY: the pointers are valid for the call.
        unsafe { sys::proxy_get_buffer_bytes(buffer as u32, start, max_size, data, size) }
    }))
}

/// Replaces `size` bytes of the buffer from `start` with `bytes`.
pub fn set_buffer(buffer: Buffer, start: usize, size: usize, bytes: &[u8]) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    status(unsafe {
        sys::proxy_set_buffer_bytes(buffer as u32, start, size, bytes.as_ptr(), bytes.len())
    })
}

/// A property of the stream or the plugin as the host's bytes, at its path's segments joined
/// by NUL (`b"source\0address"`: a constant, nothing to join on a request's path); `None` when
/// the host does not know it or refuses.
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    returned(|data, size| {
        // SAFETY: the pointers are valid for the call.
        unsafe { sys::proxy_get_property(path.as_ptr(), path.len(), data, size) }
    })
    .ok()
}

/// Answers the stream with `response` (the filter then returns `Action::Pause`). The host
/// refuses, for one, a response that has already started.
pub fn send_local_response(response: &LocalResponse) -> Result<(), u32> {
    let headers: Vec<(&[u8], &[u8])> = response
        .headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let headers = encode_map(&headers);
    // SAFETY: the pointers are valid for the call; no details, and -1: not a gRPC response.
    status(unsafe {
        sys::proxy_send_local_response(
            u32::from(response.status),
            null(),
            0,
            response.body.as_ptr(),
            response.body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// [`send_local_response`], with a refusal only logged: the stream has nothing better to do.
pub fn send(response: &LocalResponse) {
    if let Err(code) = send_local_response(response) {
        log(
            Level::Error,
            &format!(
                "local response {} refused: host status {code}",
                response.status
            ),
        );
    }
}

/// A shared-data value and its CAS; `None` when the key is not there.
pub fn shared_data(key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
    let mut cas = 0;
    let value = found(returned(|data, size| {
        // SAFETY: the pointers are valid for the call.
        unsafe { sys::proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas) }
    }))?;
    Ok(value.map(|value| (value, cas)))
}

/// Sets a shared-data value if its CAS is still `cas` (0: unconditionally); CAS_MISMATCH
/// when another writer came first.
pub fn set_shared_data(key: &[u8], value: &[u8], cas: u32) -> Result<(), u32> {
    // SAFETY: the pointers are valid for the call.
    status(unsafe {
        sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// The host's wall clock, in nanoseconds since the Unix epoch.
pub fn current_time_nanos() -> Result<u64, u32> {
    let mut nanos = 0;
    // SAFETY: the pointer is valid for the call.
    status(unsafe { sys::proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

/// Defines a counter metric; its id.
pub fn define_counter(name: &str) -> Result<u32, u32> {
    let mut id = 0;
    // SAFETY: the pointers are valid for the call.
    status(unsafe { sys::proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    // SAFETY: no pointers.
    status(unsafe { sys::proxy_increment_metric(id, offset) })
}

/// Fills `buf` from WASI's `random_get` (Envoy and `gateway` back it with the OS's CSPRNG);
/// the errno when it fails.
pub fn random(buf: &mut [u8]) -> Result<(), i32> {
    // SAFETY: the buffer is valid for its length during the call.
    match unsafe { sys::random_get(buf.as_mut_ptr(), buf.len()) } {
        0 => Ok(()),
        errno => Err(errno),
    }
}

/// Reads and parses the plugin configuration in `on_configure`. On failure the error is logged
/// with the plugin's name, one line per invalid field ([`crate::schema::refusal_lines`]: a
/// data plane reads the fields back from them), and `None` tells the adapter to return
/// `false`, so the host refuses the configuration (Envoy fails start-up or NACKs).
pub fn configure<T>(
    plugin: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    let lines = match buffer(Buffer::PluginConfiguration, 0, usize::MAX) {
        Ok(bytes) => match parse(&bytes.unwrap_or_default()) {
            Ok(config) => return Some(config),
            Err(err) => crate::schema::refusal_lines(plugin, &err),
        },
        Err(code) => vec![format!(
            "{plugin}: reading the configuration: host status {code}"
        )],
    };
    for line in lines {
        log(Level::Error, &line);
    }
    None
}
