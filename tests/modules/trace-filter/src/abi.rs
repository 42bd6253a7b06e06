//! The host calls whose status the trace records. The SDK's wrappers panic on a status they
//! do not expect (a host that answers NOT_FOUND to a resume would trap the module), so the
//! filter calls the ABI itself and reports whatever the host returned.

use std::ptr::null_mut;

pub const OK: u32 = 0;

pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const PLUGIN_CONFIGURATION: u32 = 7;
pub const GRPC_RECEIVE_BUFFER: u32 = 5;

pub const REQUEST_HEADERS: u32 = 0;
pub const REQUEST_TRAILERS: u32 = 1;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RESPONSE_TRAILERS: u32 = 3;
pub const CALL_RESPONSE_HEADERS: u32 = 6;

pub const STREAM_REQUEST: u32 = 0;
pub const STREAM_RESPONSE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// `ok`, or the status number.
pub fn status_text(status: u32) -> String {
    if status == OK {
        "ok".to_owned()
    } else {
        format!("status{status}")
    }
}

pub fn log_info(message: &str) {
    // SAFETY: the pointer and length describe `message`, which outlives the call.
    unsafe {
        proxy_log(2, message.as_ptr(), message.len());
    }
}

pub fn log_warn(message: &str) {
    // SAFETY: as in `log_info`.
    unsafe {
        proxy_log(3, message.as_ptr(), message.len());
    }
}

/// Takes ownership of memory the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a `Vec<u8>` of exactly that capacity, forgotten).
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host filled `size` bytes it obtained from `proxy_on_memory_allocate(size)`.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A buffer's bytes `[start, start + max)`, or the status the host returned.
pub fn get_buffer(buffer: u32, start: usize, max: usize) -> Result<Vec<u8>, u32> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: both out-pointers are valid for the call.
    let status = unsafe { proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) };
    let bytes = take(data, size);
    if status == OK {
        Ok(bytes)
    } else {
        Err(status)
    }
}

pub fn set_buffer(buffer: u32, start: usize, size: usize, bytes: &[u8]) -> u32 {
    // SAFETY: the pointer and length describe `bytes`.
    unsafe { proxy_set_buffer_bytes(buffer, start, size, bytes.as_ptr(), bytes.len()) }
}

/// A header map's pairs (lossy text), or the status the host returned.
pub fn get_map(map: u32) -> Result<Vec<(String, String)>, u32> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: both out-pointers are valid for the call.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    let bytes = take(data, size);
    if status != OK {
        return Err(status);
    }
    Ok(decode_map(&bytes))
}

/// The ABI's serialised map: a count, then each (key length, value length), then each key
/// and value followed by a NUL. A malformed map yields what could be read.
fn decode_map(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    let mut data = count.saturating_mul(8).saturating_add(4);
    for i in 0..count {
        let (Some(k), Some(v)) = (word(4 + i * 8), word(8 + i * 8)) else {
            break;
        };
        let key_end = data.saturating_add(k);
        let value_start = key_end.saturating_add(1);
        let value_end = value_start.saturating_add(v);
        let (Some(key), Some(value)) =
            (bytes.get(data..key_end), bytes.get(value_start..value_end))
        else {
            break;
        };
        pairs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        data = value_end.saturating_add(1);
    }
    pairs
}

pub fn add_header(map: u32, name: &str, value: &str) -> u32 {
    // SAFETY: the pointers and lengths describe `name` and `value`.
    unsafe {
        proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    }
}

pub fn continue_stream(stream: u32) -> u32 {
    // SAFETY: no pointers.
    unsafe { proxy_continue_stream(stream) }
}

pub fn set_effective_context(context: u32) -> u32 {
    // SAFETY: no pointers.
    unsafe { proxy_set_effective_context(context) }
}

pub fn set_tick_period(ms: u32) -> u32 {
    // SAFETY: no pointers.
    unsafe { proxy_set_tick_period_milliseconds(ms) }
}

/// A local reply with one header, a text body and a gRPC status (-1: none).
pub fn send_local_response(status: u32, header: (&str, &str), body: &str, grpc: i32) -> u32 {
    let (name, value) = header;
    let mut map = Vec::new();
    map.extend_from_slice(&1u32.to_le_bytes());
    map.extend_from_slice(&(name.len() as u32).to_le_bytes());
    map.extend_from_slice(&(value.len() as u32).to_le_bytes());
    map.extend_from_slice(name.as_bytes());
    map.push(0);
    map.extend_from_slice(value.as_bytes());
    map.push(0);
    let details = "trace_filter_reply";
    // SAFETY: every pointer and length describes a live local buffer.
    unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            grpc,
        )
    }
}
