//! Every host function of the proxy-wasm `env` module (ABI 0.2.1, plus the 0.2.0 names).
//!
//! Each returns a status for the module; `Err` (a trap) only when the guest allocator itself
//! trapped. Statuses follow the spec and Envoy, because the Rust SDK panics on any status it
//! does not expect.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::memory::{read, read_string, return_bytes, view, view_pair, write_u32, write_u64};
use super::status::*;
use super::{buffer, map, pairs};
use crate::callout::{GrpcCallout, GrpcOutbound, HttpCallout};
use crate::clock::unix_nanos;
use crate::filter_chain::LocalResponse;
use crate::headers::Headers;
use crate::logs::{effective_level, LogLevel};
use crate::metrics::{MetricError, MetricKind};
use crate::properties;
use crate::queues::QueueError;
use crate::shared_data::SetError;
use crate::state::{HostState, StreamOp};

/// Calls (HTTP and gRPC) one callback may make: each is held by the host until the callback
/// returns and the data plane takes it.
pub const MAX_CALLOUTS_PER_CALLBACK: usize = 128;

type C<'a> = Caller<'a, HostState>;
type R = wasmtime::Result<u32>;

macro_rules! tryst {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}

/// Registers every function under `env`.
pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let m = "env";
    linker.func_wrap(m, "proxy_log", proxy_log)?;
    linker.func_wrap(m, "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(
        m,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time,
    )?;
    linker.func_wrap(
        m,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period,
    )?;
    linker.func_wrap(m, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(m, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    linker.func_wrap(m, "proxy_get_buffer_status", proxy_get_buffer_status)?;
    linker.func_wrap(m, "proxy_get_configuration", proxy_get_configuration)?;
    linker.func_wrap(m, "proxy_get_header_map_pairs", proxy_get_header_map_pairs)?;
    linker.func_wrap(m, "proxy_set_header_map_pairs", proxy_set_header_map_pairs)?;
    linker.func_wrap(m, "proxy_get_header_map_value", proxy_get_header_map_value)?;
    linker.func_wrap(
        m,
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    linker.func_wrap(
        m,
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    linker.func_wrap(m, "proxy_add_header_map_value", proxy_add_header_map_value)?;
    linker.func_wrap(m, "proxy_get_header_map_size", proxy_get_header_map_size)?;
    linker.func_wrap(m, "proxy_get_property", proxy_get_property)?;
    linker.func_wrap(m, "proxy_set_property", proxy_set_property)?;
    linker.func_wrap(m, "proxy_send_local_response", proxy_send_local_response)?;
    linker.func_wrap(m, "proxy_continue_stream", proxy_continue_stream)?;
    linker.func_wrap(m, "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap(m, "proxy_continue_request", |c: C<'_>| continue_dir(c, 0))?;
    linker.func_wrap(m, "proxy_continue_response", |c: C<'_>| continue_dir(c, 1))?;
    linker.func_wrap(m, "proxy_clear_route_cache", |_: C<'_>| -> R { Ok(OK) })?;
    linker.func_wrap(m, "proxy_get_status", proxy_get_status)?;
    linker.func_wrap(m, "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap(m, "proxy_set_shared_data", proxy_set_shared_data)?;
    linker.func_wrap(
        m,
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    linker.func_wrap(m, "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    linker.func_wrap(m, "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;
    linker.func_wrap(m, "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    linker.func_wrap(m, "proxy_http_call", proxy_http_call)?;
    linker.func_wrap(m, "proxy_grpc_call", proxy_grpc_call)?;
    linker.func_wrap(m, "proxy_grpc_stream", proxy_grpc_stream)?;
    linker.func_wrap(m, "proxy_grpc_send", proxy_grpc_send)?;
    linker.func_wrap(m, "proxy_grpc_cancel", |c: C<'_>, t: u32| {
        grpc_end(c, t, true)
    })?;
    linker.func_wrap(m, "proxy_grpc_close", |c: C<'_>, t: u32| {
        grpc_end(c, t, false)
    })?;
    linker.func_wrap(m, "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap(m, "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap(m, "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap(m, "proxy_get_metric", proxy_get_metric)?;
    linker.func_wrap(
        m,
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.func_wrap(m, "proxy_done", proxy_done)?;
    linker.func_wrap(
        m,
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    // AssemblyScript's runtime imports.
    linker.func_wrap(m, "abort", as_abort)?;
    linker.func_wrap(m, "seed", |_: C<'_>| -> f64 {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        (u64::from_le_bytes(b) >> 11) as f64
    })?;
    Ok(())
}

fn proxy_log(c: C<'_>, level: u32, ptr: u32, len: u32) -> R {
    let Some(level) = LogLevel::from_abi(level) else {
        return Ok(BAD_ARGUMENT);
    };
    let message = tryst!(read_string(&c, ptr, len));
    // Below the reported level nothing would show it: not even the ring keeps it.
    if (level as u32) >= effective_level(c.data().plugin.log_level) {
        c.data().logs.log(level, &message);
    }
    Ok(OK)
}

fn proxy_get_log_level(mut c: C<'_>, ptr: u32) -> R {
    let level = effective_level(c.data().plugin.log_level);
    tryst!(write_u32(&mut c, ptr, level));
    Ok(OK)
}

/// What the host holds on a module's behalf (a body it grows, the calls of one callback) is
/// bounded by what the module may hold itself: its linear-memory cap.
fn module_budget(state: &HostState) -> usize {
    state.plugin.limits.memory_bytes
}

/// Logs why the host refused a module's request, so that a refusal the SDK turns into a
/// panic has its reason next to it.
fn refuse(state: &HostState, status: u32, why: &str) -> u32 {
    state.logs.log(LogLevel::Warn, why);
    status
}

fn proxy_get_current_time(mut c: C<'_>, ptr: u32) -> R {
    let now = unix_nanos(c.data().env.clock.now());
    tryst!(write_u64(&mut c, ptr, now));
    Ok(OK)
}

fn proxy_set_tick_period(mut c: C<'_>, ms: u32) -> R {
    c.data_mut().tick_period = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    Ok(OK)
}

/// A copy of a readable buffer, `None` when that buffer does not exist here.
fn buffer_of(state: &mut HostState, kind: u32) -> Result<Option<Vec<u8>>, u32> {
    Ok(match kind {
        // Envoy hands any context a stream body, empty where it has none.
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY => {
            Some(state.stream_body(kind).cloned().unwrap_or_default())
        }
        // Envoy's HTTP filter has no network data: an empty buffer, as for a missing body.
        buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA => Some(Vec::new()),
        buffer::HTTP_CALL_RESPONSE_BODY => state.http_response.as_ref().map(|r| r.body.clone()),
        buffer::GRPC_RECEIVE_BUFFER => state.grpc.message.clone(),
        buffer::VM_CONFIGURATION => Some(state.plugin.vm_configuration.clone()),
        buffer::PLUGIN_CONFIGURATION => Some(state.plugin.configuration.clone()),
        buffer::CALL_DATA => state.call_data.clone(),
        _ => return Err(BAD_ARGUMENT),
    })
}

fn proxy_get_buffer_bytes(mut c: C<'_>, kind: u32, start: u32, max: u32, pp: u32, sp: u32) -> R {
    let Some(buf) = tryst!(buffer_of(c.data_mut(), kind)) else {
        return Ok(NOT_FOUND);
    };
    let start = (start as usize).min(buf.len());
    let end = start.saturating_add(max as usize).min(buf.len());
    return_bytes(&mut c, &buf[start..end], pp, sp)
}

fn proxy_get_buffer_status(mut c: C<'_>, kind: u32, len_ptr: u32, flags_ptr: u32) -> R {
    let Some(buf) = tryst!(buffer_of(c.data_mut(), kind)) else {
        return Ok(NOT_FOUND);
    };
    tryst!(write_u32(&mut c, len_ptr, buf.len() as u32));
    tryst!(write_u32(&mut c, flags_ptr, 0));
    Ok(OK)
}

fn proxy_get_configuration(mut c: C<'_>, pp: u32, sp: u32) -> R {
    let config = c.data().plugin.configuration.clone();
    return_bytes(&mut c, &config, pp, sp)
}

/// Envoy's `Buffer::copyFrom`: start 0 drains `size` bytes then prepends (so `0, len`
/// replaces); a start at or past the end appends; anything else is BAD_ARGUMENT.
fn splice(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> u32 {
    if start == 0 {
        let drain = size.min(buf.len());
        buf.drain(..drain);
        buf.splice(0..0, data.iter().copied());
        OK
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        OK
    } else {
        BAD_ARGUMENT
    }
}

fn proxy_set_buffer_bytes(mut c: C<'_>, kind: u32, start: u32, size: u32, ptr: u32, len: u32) -> R {
    let data = tryst!(read(&c, ptr, len));
    let state = c.data_mut();
    let budget = module_budget(state);
    let target = match kind {
        // Envoy's empty stand-in for a body the context has not got takes no bytes.
        buffer::HTTP_REQUEST_BODY | buffer::HTTP_RESPONSE_BODY => match state.stream_body(kind) {
            Some(body) => Some(body),
            None => {
                let why =
                    "proxy_set_buffer_bytes: the context has no body of that stream to change";
                return Ok(refuse(state, BAD_ARGUMENT, why));
            }
        },
        // Envoy hands the module a call's response body as a constant buffer.
        buffer::HTTP_CALL_RESPONSE_BODY => {
            return Ok(if state.http_response.is_some() {
                BAD_ARGUMENT
            } else {
                NOT_FOUND
            });
        }
        buffer::GRPC_RECEIVE_BUFFER => state.grpc.message.as_mut(),
        buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA => {
            let why = "proxy_set_buffer_bytes: an HTTP filter has no network data to change";
            return Ok(refuse(state, BAD_ARGUMENT, why));
        }
        buffer::VM_CONFIGURATION | buffer::PLUGIN_CONFIGURATION | buffer::CALL_DATA => None,
        _ => return Ok(BAD_ARGUMENT),
    };
    let Some(buf) = target else {
        return Ok(NOT_FOUND);
    };
    let old = buf.len();
    let new = spliced_len(old, start as usize, size as usize, data.len());
    // A body the data plane already holds past the budget may pass or shrink; a module may
    // not grow one past it.
    if new > budget && new > old {
        let why = format!(
            "proxy_set_buffer_bytes: a body of {new} bytes is past the {budget}-byte limit"
        );
        return Ok(refuse(c.data(), BAD_ARGUMENT, &why));
    }
    Ok(splice(buf, start as usize, size as usize, &data))
}

/// The length [`splice`] leaves.
fn spliced_len(len: usize, start: usize, size: usize, data: usize) -> usize {
    if start == 0 {
        len - size.min(len) + data
    } else {
        len + data
    }
}

fn map_ref(state: &mut HostState, kind: u32) -> Result<Option<&mut Headers>, u32> {
    Ok(match kind {
        map::HTTP_REQUEST_HEADERS
        | map::HTTP_REQUEST_TRAILERS
        | map::HTTP_RESPONSE_HEADERS
        | map::HTTP_RESPONSE_TRAILERS => state.stream_map(kind).and_then(|m| m.as_mut()),
        map::GRPC_RECEIVE_INITIAL_METADATA => state.grpc.initial_metadata.as_mut(),
        map::GRPC_RECEIVE_TRAILING_METADATA => state.grpc.trailing_metadata.as_mut(),
        map::HTTP_CALL_RESPONSE_HEADERS => state.http_response.as_mut().map(|r| &mut r.headers),
        map::HTTP_CALL_RESPONSE_TRAILERS => state.http_response.as_mut().map(|r| &mut r.trailers),
        _ => return Err(BAD_ARGUMENT),
    })
}

/// A mutable map; trailers are created on demand (a filter may add trailers).
fn map_mut(state: &mut HostState, kind: u32) -> Result<&mut Headers, u32> {
    if kind == map::HTTP_REQUEST_TRAILERS || kind == map::HTTP_RESPONSE_TRAILERS {
        return state
            .stream_map(kind)
            .map(|slot| slot.get_or_insert_with(Headers::new))
            .ok_or(BAD_ARGUMENT);
    }
    map_ref(state, kind)?.ok_or(BAD_ARGUMENT)
}

fn proxy_get_header_map_pairs(mut c: C<'_>, kind: u32, pp: u32, sp: u32) -> R {
    let encoded = match tryst!(map_ref(c.data_mut(), kind)) {
        Some(h) if !h.is_empty() => pairs::encode(h),
        // An absent or empty map is returned as size 0.
        _ => Vec::new(),
    };
    return_bytes(&mut c, &encoded, pp, sp)
}

fn proxy_set_header_map_pairs(mut c: C<'_>, kind: u32, ptr: u32, len: u32) -> R {
    let bytes = tryst!(read(&c, ptr, len));
    // decode refuses what is past the pairs limits.
    let Some(new) = pairs::decode(&bytes) else {
        return Ok(BAD_ARGUMENT);
    };
    *tryst!(map_mut(c.data_mut(), kind)) = new;
    Ok(OK)
}

/// Whether a map may take `name: value` besides what it has, within the limits of a map a
/// module hands over whole (cpp-host's pairs limits): a module cannot grow one past them a
/// value at a time. `replacing` frees the values a replace removes.
fn map_fits(h: &Headers, name: &str, value: usize, replacing: bool) -> bool {
    let freed: usize = if replacing {
        h.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(k, v)| 10 + k.len() + v.len())
            .sum()
    } else {
        0
    };
    let entries = h.len() + 1;
    let bytes = pairs::encoded_size(h) - freed + 10 + name.len() + value;
    (replacing || entries <= pairs::MAX_PAIRS) && bytes <= pairs::MAX_PAIRS_BYTES
}

fn proxy_get_header_map_value(mut c: C<'_>, kind: u32, kp: u32, kl: u32, pp: u32, sp: u32) -> R {
    let value = {
        let (key, state) = tryst!(view(&mut c, kp, kl));
        match tryst!(map_ref(state, kind)) {
            Some(h) => h.get(&key).map(<[u8]>::to_vec),
            None => None,
        }
    };
    match value {
        // An empty value is a null pointer and size 0, as cpp-host's `copyToPointerSize`
        // returns it (the Rust SDK reads both as an empty value).
        Some(v) => return_bytes(&mut c, &v, pp, sp),
        None => Ok(NOT_FOUND),
    }
}

fn proxy_replace_header_map_value(
    mut c: C<'_>,
    kind: u32,
    kp: u32,
    kl: u32,
    vp: u32,
    vl: u32,
) -> R {
    let (key, value, state) = tryst!(view_pair(&mut c, (kp, kl), (vp, vl)));
    let map = tryst!(map_mut(state, kind));
    if !map_fits(map, &key, value.len(), true) {
        return Ok(refuse(
            state,
            BAD_ARGUMENT,
            "proxy_replace_header_map_value: the map would be past 1 MiB",
        ));
    }
    map.replace(&key, value);
    Ok(OK)
}

fn proxy_add_header_map_value(mut c: C<'_>, kind: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> R {
    let (key, value, state) = tryst!(view_pair(&mut c, (kp, kl), (vp, vl)));
    let map = tryst!(map_mut(state, kind));
    if !map_fits(map, &key, value.len(), false) {
        return Ok(refuse(
            state,
            BAD_ARGUMENT,
            "proxy_add_header_map_value: the map would be past 1024 entries or 1 MiB",
        ));
    }
    map.add(&key, value);
    Ok(OK)
}

fn proxy_remove_header_map_value(mut c: C<'_>, kind: u32, kp: u32, kl: u32) -> R {
    let (key, state) = tryst!(view(&mut c, kp, kl));
    if let Some(h) = tryst!(map_ref(state, kind)) {
        h.remove(&key);
    }
    Ok(OK)
}

fn proxy_get_header_map_size(mut c: C<'_>, kind: u32, sp: u32) -> R {
    let size = match tryst!(map_ref(c.data_mut(), kind)) {
        Some(h) => pairs::encoded_size(h),
        None => 0,
    };
    tryst!(write_u32(&mut c, sp, size as u32));
    Ok(OK)
}

fn proxy_get_property(mut c: C<'_>, ptr: u32, len: u32, pp: u32, sp: u32) -> R {
    let value = {
        let (path, state) = tryst!(view(&mut c, ptr, len));
        let segments: Vec<&str> = path.split('\0').collect();
        let now = unix_nanos(state.env.clock.now());
        let plugin = state.plugin.clone();
        let root = std::mem::take(&mut state.root_properties);
        let v = properties::get(
            &segments,
            &plugin,
            state.stream_data().map(|s| &*s),
            &root,
            now,
        );
        state.root_properties = root;
        v
    };
    match value {
        Some(v) => return_bytes(&mut c, &v, pp, sp),
        None => Ok(NOT_FOUND),
    }
}

/// Stored apart from the built-in properties and the data plane's facts (see
/// [`properties`]): a filter cannot change what a later one reads as `source.address`.
fn proxy_set_property(mut c: C<'_>, ptr: u32, len: u32, vp: u32, vl: u32) -> R {
    let path = tryst!(read_string(&c, ptr, len));
    let value = tryst!(read(&c, vp, vl));
    let state = c.data_mut();
    let (map, key) = match state.stream_data() {
        Some(s) => (&mut s.properties, properties::module_key(&path)),
        None => (&mut state.root_properties, path),
    };
    if !properties::fits(map, &key, value.len()) {
        return Ok(refuse(
            c.data(),
            BAD_ARGUMENT,
            "proxy_set_property: past 1024 values or 1 MiB in this context",
        ));
    }
    map.insert(key, value);
    Ok(OK)
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut c: C<'_>,
    code: u32,
    dp: u32,
    dl: u32,
    bp: u32,
    bl: u32,
    hp: u32,
    hl: u32,
    grpc_status: i32,
) -> R {
    let details = tryst!(read_string(&c, dp, dl));
    let body = tryst!(read(&c, bp, bl));
    let header_bytes = tryst!(read(&c, hp, hl));
    let Some(headers) = pairs::decode(&header_bytes) else {
        return Ok(BAD_ARGUMENT);
    };
    // Envoy 1.40 sends 200 to 999 as given; after a 1xx it sends no final response at all
    // (the client waits), so a 1xx is refused here (tests/envoy/abi.rs).
    let Ok(status) = u16::try_from(code) else {
        return Ok(BAD_ARGUMENT);
    };
    if !(200..=999).contains(&status) {
        return Ok(BAD_ARGUMENT);
    }
    let response = LocalResponse {
        status,
        headers,
        body,
        details,
        grpc_status: (grpc_status >= 0).then_some(grpc_status),
    };
    let state = c.data_mut();
    let effective = state.effective_context;
    let known = state.streams.contains_key(&effective);
    match state.current_stream() {
        Some(stream) => stream.local_response = Some(response),
        // Another stream of this instance (a decision made in the root context or another
        // stream): the data plane answers it.
        None if known => state
            .stream_ops
            .push((effective, StreamOp::LocalReply(Box::new(response)))),
        None => return Ok(NOT_FOUND),
    }
    Ok(OK)
}

fn continue_dir(mut c: C<'_>, dir: u32) -> R {
    let state = c.data_mut();
    let effective = state.effective_context;
    let known = state.streams.contains_key(&effective);
    if dir <= 1 {
        state.release(effective, dir);
    }
    match state.current_stream() {
        Some(s) => match dir {
            0 => s.resume_request = true,
            1 => s.resume_response = true,
            _ => return Ok(BAD_ARGUMENT),
        },
        None if known => {
            let op = match dir {
                0 => StreamOp::ResumeRequest,
                1 => StreamOp::ResumeResponse,
                _ => return Ok(BAD_ARGUMENT),
            };
            state.stream_ops.push((effective, op));
        }
        None => return Ok(NOT_FOUND),
    }
    Ok(OK)
}

fn proxy_continue_stream(c: C<'_>, stream_type: u32) -> R {
    continue_dir(c, stream_type)
}

fn proxy_close_stream(mut c: C<'_>, stream_type: u32) -> R {
    if stream_type > 1 {
        return Ok(BAD_ARGUMENT);
    }
    let state = c.data_mut();
    let effective = state.effective_context;
    let known = state.streams.contains_key(&effective);
    match state.current_stream() {
        Some(s) => s.reset = true,
        None if known => state.stream_ops.push((effective, StreamOp::Close)),
        None => return Ok(NOT_FOUND),
    }
    Ok(OK)
}

fn proxy_get_status(mut c: C<'_>, code_ptr: u32, pp: u32, sp: u32) -> R {
    let (code, message) = c.data().status.clone();
    tryst!(write_u32(&mut c, code_ptr, code));
    return_bytes(&mut c, message.as_bytes(), pp, sp)
}

fn proxy_get_shared_data(mut c: C<'_>, kp: u32, kl: u32, pp: u32, sp: u32, cas_ptr: u32) -> R {
    let found = {
        let (key, state) = tryst!(view(&mut c, kp, kl));
        state.env.shared_data.get(&state.plugin.vm_id, &key)
    };
    let Some((value, cas)) = found else {
        return Ok(NOT_FOUND);
    };
    tryst!(write_u32(&mut c, cas_ptr, cas));
    return_bytes(&mut c, &value, pp, sp)
}

/// A full namespace is INTERNAL_FAILURE (see [`crate::shared_data`] for why).
fn proxy_set_shared_data(mut c: C<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32) -> R {
    let (key, value, state) = tryst!(view_pair(&mut c, (kp, kl), (vp, vl)));
    Ok(
        match state
            .env
            .shared_data
            .set(&state.plugin.vm_id, &key, value, cas)
        {
            Ok(()) => OK,
            Err(SetError::CasMismatch) => CAS_MISMATCH,
            Err(SetError::Full) => INTERNAL_FAILURE,
        },
    )
}

fn proxy_register_shared_queue(mut c: C<'_>, np: u32, nl: u32, id_ptr: u32) -> R {
    if nl as usize > crate::queues::MAX_NAME {
        return Ok(BAD_ARGUMENT);
    }
    let name = tryst!(read_string(&c, np, nl));
    let state = c.data();
    let registered = state.env.queues.register(
        &state.plugin.vm_id,
        &name,
        &state.mailbox,
        state.root_context,
    );
    let id = match registered {
        Ok(id) => id,
        Err(QueueError::BadName) => return Ok(BAD_ARGUMENT),
        Err(_) => {
            let why = format!(
                "proxy_register_shared_queue: vm_id has {} queues already",
                crate::queues::MAX_QUEUES_PER_VM
            );
            return Ok(refuse(state, INTERNAL_FAILURE, &why));
        }
    };
    tryst!(write_u32(&mut c, id_ptr, id));
    Ok(OK)
}

fn proxy_resolve_shared_queue(mut c: C<'_>, vp: u32, vl: u32, np: u32, nl: u32, id_ptr: u32) -> R {
    let mut vm_id = tryst!(read_string(&c, vp, vl));
    let name = tryst!(read_string(&c, np, nl));
    if vm_id.is_empty() {
        vm_id = c.data().plugin.vm_id.clone();
    }
    let Some(id) = c.data().env.queues.resolve(&vm_id, &name) else {
        return Ok(NOT_FOUND);
    };
    tryst!(write_u32(&mut c, id_ptr, id));
    Ok(OK)
}

fn proxy_dequeue_shared_queue(mut c: C<'_>, id: u32, pp: u32, sp: u32) -> R {
    match c.data().env.queues.dequeue(id) {
        Ok(value) => return_bytes(&mut c, &value, pp, sp),
        Err(QueueError::Empty) => Ok(EMPTY),
        Err(_) => Ok(NOT_FOUND),
    }
}

/// OK even when the queue was full: its oldest items make room (see [`crate::queues`]).
fn proxy_enqueue_shared_queue(c: C<'_>, id: u32, vp: u32, vl: u32) -> R {
    let value = tryst!(read(&c, vp, vl));
    let state = c.data();
    match state.env.queues.enqueue(id, &value) {
        Ok(done) => {
            if done.dropped_oldest > 0 || done.dropped_item {
                let why = format!(
                    "shared queue {id} full: dropped {} oldest item(s){}",
                    done.dropped_oldest,
                    if done.dropped_item {
                        format!(" and the new {}-byte item", value.len())
                    } else {
                        String::new()
                    }
                );
                refuse(state, OK, &why);
            }
            Ok(OK)
        }
        Err(_) => Ok(NOT_FOUND),
    }
}

/// Whether one more call of `bytes` fits in what this callback may dispatch.
fn callout_fits(state: &HostState, bytes: usize) -> bool {
    let calls = &state.callouts;
    let held: usize = calls
        .http
        .iter()
        .map(|h| h.body.len() + h.headers.byte_size() + h.trailers.byte_size())
        .chain(
            calls
                .grpc
                .iter()
                .map(|g| g.message.as_ref().map_or(0, Vec::len) + g.initial_metadata.byte_size()),
        )
        .sum();
    calls.http.len() + calls.grpc.len() < MAX_CALLOUTS_PER_CALLBACK
        && held + bytes <= module_budget(state)
}

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut c: C<'_>,
    up: u32,
    ul: u32,
    hp: u32,
    hl: u32,
    bp: u32,
    bl: u32,
    tp: u32,
    tl: u32,
    timeout_ms: u32,
    token_ptr: u32,
) -> R {
    let upstream = tryst!(read(&c, up, ul));
    let headers = tryst!(read(&c, hp, hl));
    let body = tryst!(read(&c, bp, bl));
    let trailers = tryst!(read(&c, tp, tl));
    let (Some(headers), Some(trailers)) = (pairs::decode(&headers), pairs::decode(&trailers))
    else {
        return Ok(BAD_ARGUMENT);
    };
    // A cluster name is text; Envoy answers an unknown cluster BAD_ARGUMENT at once.
    let Ok(upstream) = String::from_utf8(upstream) else {
        return Ok(BAD_ARGUMENT);
    };
    if upstream.is_empty()
        || headers.get(":method").is_none()
        || headers.get(":path").is_none()
        || headers.get(":authority").is_none()
        || !c.data().env.upstream_known(&upstream)
    {
        return Ok(BAD_ARGUMENT);
    }
    if !super::memory::slots_ok(&c, token_ptr, token_ptr) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    let bytes = body.len() + headers.byte_size() + trailers.byte_size();
    if !callout_fits(c.data(), bytes) {
        let why = format!(
            "proxy_http_call: past {MAX_CALLOUTS_PER_CALLBACK} calls or {} bytes in one callback",
            module_budget(c.data())
        );
        return Ok(refuse(c.data(), INTERNAL_FAILURE, &why));
    }
    let state = c.data_mut();
    let token = state.new_token();
    let owner = state.effective_context;
    state.callout_owner.insert(token, owner);
    state.callouts.http.push(HttpCallout {
        token,
        upstream,
        headers,
        body,
        trailers,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
    });
    tryst!(write_u32(&mut c, token_ptr, token));
    Ok(OK)
}

#[allow(clippy::too_many_arguments)]
fn grpc_open(
    mut c: C<'_>,
    strs: [(u32, u32); 3],
    metadata: (u32, u32),
    message: Option<(u32, u32)>,
    timeout_ms: u32,
    token_ptr: u32,
) -> R {
    let upstream = tryst!(read_string(&c, strs[0].0, strs[0].1));
    let service = tryst!(read_string(&c, strs[1].0, strs[1].1));
    let method = tryst!(read_string(&c, strs[2].0, strs[2].1));
    let md = tryst!(read(&c, metadata.0, metadata.1));
    let Some(initial_metadata) = pairs::decode(&md) else {
        return Ok(BAD_ARGUMENT);
    };
    let message = match message {
        Some((p, l)) => Some(tryst!(read(&c, p, l))),
        None => None,
    };
    if upstream.is_empty() || service.is_empty() || method.is_empty() {
        return Ok(BAD_ARGUMENT);
    }
    if !super::memory::slots_ok(&c, token_ptr, token_ptr) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    let bytes = message.as_ref().map_or(0, Vec::len) + initial_metadata.byte_size();
    if !callout_fits(c.data(), bytes) {
        let why = format!(
            "gRPC call: past {MAX_CALLOUTS_PER_CALLBACK} calls or {} bytes in one callback",
            module_budget(c.data())
        );
        return Ok(refuse(c.data(), INTERNAL_FAILURE, &why));
    }
    let state = c.data_mut();
    let token = state.new_token();
    let owner = state.effective_context;
    state.callout_owner.insert(token, owner);
    let streaming = message.is_none();
    if streaming {
        state.open_grpc_streams.insert(token, ());
    }
    state.callouts.grpc.push(GrpcCallout {
        token,
        upstream,
        service,
        method,
        initial_metadata,
        message,
        timeout: Duration::from_millis(u64::from(timeout_ms)),
        streaming,
    });
    tryst!(write_u32(&mut c, token_ptr, token));
    Ok(OK)
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    c: C<'_>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    mdp: u32,
    mdl: u32,
    msgp: u32,
    msgl: u32,
    timeout_ms: u32,
    token_ptr: u32,
) -> R {
    grpc_open(
        c,
        [(up, ul), (sp, sl), (mp, ml)],
        (mdp, mdl),
        Some((msgp, msgl)),
        timeout_ms,
        token_ptr,
    )
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    c: C<'_>,
    up: u32,
    ul: u32,
    sp: u32,
    sl: u32,
    mp: u32,
    ml: u32,
    mdp: u32,
    mdl: u32,
    token_ptr: u32,
) -> R {
    grpc_open(
        c,
        [(up, ul), (sp, sl), (mp, ml)],
        (mdp, mdl),
        None,
        0,
        token_ptr,
    )
}

fn proxy_grpc_send(mut c: C<'_>, token: u32, ptr: u32, len: u32, end_stream: u32) -> R {
    let message = tryst!(read(&c, ptr, len));
    let state = c.data_mut();
    if !state.open_grpc_streams.contains_key(&token) {
        return Ok(NOT_FOUND);
    }
    state.callouts.grpc_outbound.push(GrpcOutbound::Send {
        token,
        message,
        end_stream: end_stream != 0,
    });
    Ok(OK)
}

fn grpc_end(mut c: C<'_>, token: u32, cancel: bool) -> R {
    let state = c.data_mut();
    if !state.callout_owner.contains_key(&token) {
        return Ok(NOT_FOUND);
    }
    let stream = state.open_grpc_streams.remove(&token).is_some();
    // A stream whose side the module closed still receives until the remote side closes
    // (Envoy's `local_closed_`); a cancel, or the close of a unary call, ends it at once.
    if cancel || !stream {
        state.callout_owner.remove(&token);
    }
    state.callouts.grpc_outbound.push(if cancel {
        GrpcOutbound::Cancel { token }
    } else {
        GrpcOutbound::Close { token }
    });
    Ok(OK)
}

/// Ids are the plugin's own (see [`crate::metrics`]).
fn proxy_define_metric(mut c: C<'_>, kind: u32, np: u32, nl: u32, id_ptr: u32) -> R {
    if nl as usize > crate::metrics::MAX_NAME {
        return Ok(BAD_ARGUMENT);
    }
    let name = tryst!(read_string(&c, np, nl));
    let Some(kind) = MetricKind::from_abi(kind) else {
        return Ok(BAD_ARGUMENT);
    };
    if !super::memory::slots_ok(&c, id_ptr, id_ptr) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    let state = c.data();
    let id = match state
        .env
        .metrics
        .define_for(&state.plugin.name, kind, &name)
    {
        Ok(id) => id,
        Err(e) => return Ok(metric_status(Err(e))),
    };
    tryst!(write_u32(&mut c, id_ptr, id));
    Ok(OK)
}

fn metric_status(r: Result<(), MetricError>) -> u32 {
    match r {
        Ok(()) => OK,
        Err(MetricError::NotFound) => NOT_FOUND,
        Err(MetricError::BadArgument) => BAD_ARGUMENT,
    }
}

fn proxy_increment_metric(c: C<'_>, id: u32, offset: i64) -> R {
    let state = c.data();
    Ok(metric_status(state.env.metrics.increment_for(
        &state.plugin.name,
        id,
        offset,
    )))
}

fn proxy_record_metric(c: C<'_>, id: u32, value: u64) -> R {
    let state = c.data();
    Ok(metric_status(state.env.metrics.record_for(
        &state.plugin.name,
        id,
        value,
    )))
}

fn proxy_get_metric(mut c: C<'_>, id: u32, ptr: u32) -> R {
    let state = c.data();
    match state.env.metrics.get_for(&state.plugin.name, id) {
        Ok(v) => {
            tryst!(write_u64(&mut c, ptr, v));
            Ok(OK)
        }
        Err(e) => Ok(metric_status(Err(e))),
    }
}

fn proxy_set_effective_context(mut c: C<'_>, id: u32) -> R {
    let state = c.data_mut();
    if id != state.root_context && !state.streams.contains_key(&id) {
        return Ok(BAD_ARGUMENT);
    }
    state.effective_context = id;
    Ok(OK)
}

/// Releases the effective context, whose `proxy_on_done` returned false: the VM runs its
/// `on_log` and `on_delete` once the current callback returns. NOT_FOUND when that context
/// waits for nothing (cpp-host's `WasmBase::done`).
fn proxy_done(mut c: C<'_>) -> R {
    let state = c.data_mut();
    state.done = true;
    let effective = state.effective_context;
    match state.pending_done.get_mut(&effective) {
        Some(released) => {
            *released = true;
            Ok(OK)
        }
        None => Ok(NOT_FOUND),
    }
}

fn proxy_call_foreign_function(
    mut c: C<'_>,
    np: u32,
    nl: u32,
    ap: u32,
    al: u32,
    pp: u32,
    sp: u32,
) -> R {
    let name = tryst!(read_string(&c, np, nl));
    let args = tryst!(read(&c, ap, al));
    let Some(f) = c.data().env.foreign.get(&name).cloned() else {
        return Ok(NOT_FOUND);
    };
    let result = match f(&args) {
        Ok(result) => result,
        Err(status) => return Ok(status),
    };
    // As cpp-host: a null results pointer means the module does not want the result (nothing
    // is allocated in it), a null size pointer that it does not want the size.
    match (pp, sp) {
        (0, 0) => Ok(OK),
        (0, sp) => {
            tryst!(write_u32(&mut c, sp, result.len() as u32));
            Ok(OK)
        }
        (pp, 0) => {
            if !super::memory::slots_ok(&c, pp, pp) {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            let addr = if result.is_empty() {
                0
            } else {
                match super::memory::copy_in(&mut c, &result)? {
                    Ok(addr) => addr,
                    Err(status) => return Ok(status),
                }
            };
            tryst!(write_u32(&mut c, pp, addr));
            Ok(OK)
        }
        (pp, sp) => return_bytes(&mut c, &result, pp, sp),
    }
}

fn as_abort(c: C<'_>, msg: u32, file: u32, line: u32, col: u32) -> wasmtime::Result<()> {
    // AssemblyScript strings: UTF-16LE, length in bytes at ptr - 4.
    let text = |ptr: u32| -> String {
        let Some(len_at) = ptr.checked_sub(4) else {
            return String::new();
        };
        let len = read(&c, len_at, 4)
            .ok()
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
            .min(4096);
        let bytes = read(&c, ptr, len).unwrap_or_default();
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    };
    let message = format!("abort: {} at {}:{line}:{col}", text(msg), text(file));
    c.data().logs.log(LogLevel::Critical, &message);
    Err(wasmtime::Error::msg(message))
}

#[cfg(test)]
mod tests {
    use super::splice;

    #[test]
    fn envoy_buffer_semantics() {
        let mut b = b"world".to_vec();
        assert_eq!(splice(&mut b, 0, 0, b"hello "), 0);
        assert_eq!(b, b"hello world");
        assert_eq!(splice(&mut b, 11, 0, b"!"), 0);
        assert_eq!(b, b"hello world!");
        assert_eq!(splice(&mut b, 0, usize::MAX, b"new"), 0);
        assert_eq!(b, b"new");
        assert_eq!(splice(&mut b, 1, 1, b"x"), 2);
        assert_eq!(splice(&mut b, 0, 1, b"N"), 0);
        assert_eq!(b, b"New");
    }
}
