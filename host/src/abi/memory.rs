//! Guest memory, bounds-checked. Every pointer/length pair from a module goes through here:
//! out of bounds is `INVALID_MEMORY_ACCESS` for the module, never a host fault. Buffers the
//! host returns are allocated in the guest through its allocator export, exactly as large as
//! the data.

use std::borrow::Cow;

use wasmtime::Caller;

use super::status;
use crate::state::HostState;

/// Largest single buffer the host copies out of a module in one call.
pub const MAX_READ: usize = 64 << 20;

fn memory_len(caller: &Caller<'_, HostState>) -> usize {
    caller.data().memory.map_or(0, |m| m.data_size(caller))
}

fn in_bounds(caller: &Caller<'_, HostState>, ptr: u32, len: usize) -> bool {
    (ptr as usize)
        .checked_add(len)
        .is_some_and(|end| end <= memory_len(caller))
}

/// Copies `len` bytes at `ptr` out of the module.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<Vec<u8>, u32> {
    let len = len as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let Some(memory) = caller.data().memory else {
        return Err(status::INVALID_MEMORY_ACCESS);
    };
    if !in_bounds(caller, ptr, len) {
        return Err(status::INVALID_MEMORY_ACCESS);
    }
    if len > MAX_READ {
        return Err(status::BAD_ARGUMENT);
    }
    let data = memory.data(caller);
    let start = ptr as usize;
    let end = start
        .checked_add(len)
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<String, u32> {
    read(caller, ptr, len).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// The module's `len` bytes at `ptr` as text, and the host's state, borrowed together: what a
/// host call only looks up (a header name, a shared-data key, a property path) is not copied.
pub fn view<'a>(
    caller: &'a mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> Result<(Cow<'a, str>, &'a mut HostState), u32> {
    // As `read`: nothing to read is never out of bounds.
    if len == 0 {
        return Ok((Cow::Borrowed(""), caller.data_mut()));
    }
    let Some(memory) = caller.data().memory else {
        return Err(status::INVALID_MEMORY_ACCESS);
    };
    let (data, state) = memory.data_and_store_mut(caller);
    Ok((text(slice(data, ptr, len)?), state))
}

/// `bytes` as text, invalid UTF-8 replaced. Valid text (nearly always) is checked by
/// `str::from_utf8`, which costs less than half of `from_utf8_lossy`'s chunked scan.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// `len` bytes at `ptr` of a module's memory `data`, checked as [`read`] checks them.
fn slice(data: &[u8], ptr: u32, len: u32) -> Result<&[u8], u32> {
    if len == 0 {
        return Ok(&[]);
    }
    let start = ptr as usize;
    let bytes = start
        .checked_add(len as usize)
        .and_then(|end| data.get(start..end))
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    if bytes.len() > MAX_READ {
        return Err(status::BAD_ARGUMENT);
    }
    Ok(bytes)
}

/// The module's text at `(kp, kl)` and bytes at `(vp, vl)`, and the host's state, borrowed
/// together: a host call that stores a name and a value (a header, a shared-data entry)
/// copies them once, where it keeps them. Checked as [`read_string`] then [`read`].
pub fn view_pair<'a>(
    caller: &'a mut Caller<'_, HostState>,
    (kp, kl): (u32, u32),
    (vp, vl): (u32, u32),
) -> Result<(Cow<'a, str>, &'a [u8], &'a mut HostState), u32> {
    let (data, state) = match caller.data().memory {
        Some(memory) => memory.data_and_store_mut(caller),
        None => (&mut [][..], caller.data_mut()),
    };
    let data = &*data;
    let key = slice(data, kp, kl)?;
    let value = slice(data, vp, vl)?;
    Ok((text(key), value, state))
}

/// Writes `bytes` at `ptr`.
pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<(), u32> {
    let Some(memory) = caller.data().memory else {
        return Err(status::INVALID_MEMORY_ACCESS);
    };
    let data = memory.data_mut(&mut *caller);
    let start = ptr as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(status::INVALID_MEMORY_ACCESS)?;
    data.get_mut(start..end)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> Result<(), u32> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> Result<(), u32> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Whether both return slots (a u32 pointer and a u32 size) are writable.
pub fn slots_ok(caller: &Caller<'_, HostState>, ptr_ptr: u32, size_ptr: u32) -> bool {
    in_bounds(caller, ptr_ptr, 4) && in_bounds(caller, size_ptr, 4)
}

/// Allocates exactly `bytes.len()` (not zero) in the guest through its allocator and copies
/// `bytes` there: `Ok(Ok(address))`, `Ok(Err(status))` for the module, `Err` only when the
/// guest allocator trapped.
pub fn copy_in(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
) -> wasmtime::Result<Result<u32, u32>> {
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(Err(status::INTERNAL_FAILURE));
    };
    let Some(alloc) = caller.data().alloc.clone() else {
        return Ok(Err(status::INTERNAL_FAILURE));
    };
    let addr = alloc.call(&mut *caller, len)?;
    if addr == 0 && len > 0 {
        return Ok(Err(status::INTERNAL_FAILURE));
    }
    if !bytes.is_empty() {
        if let Err(status) = write(caller, addr, bytes) {
            return Ok(Err(status));
        }
    }
    Ok(Ok(addr))
}

/// Returns `bytes` to the module: allocates exactly `bytes.len()` in the guest, copies, and
/// writes the pointer and size to the return slots. An empty buffer is a null pointer and size
/// 0, as cpp-host's `copyToPointerSize` returns one (nothing is allocated).
/// `Ok(status)` for the module; `Err` only when the guest allocator trapped.
pub fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> wasmtime::Result<u32> {
    if !slots_ok(caller, ptr_ptr, size_ptr) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    if bytes.is_empty() {
        let _ = write_u32(caller, ptr_ptr, 0);
        let _ = write_u32(caller, size_ptr, 0);
        return Ok(status::OK);
    }
    let addr = match copy_in(caller, bytes)? {
        Ok(addr) => addr,
        Err(status) => return Ok(status),
    };
    if write_u32(caller, ptr_ptr, addr).is_err()
        || write_u32(caller, size_ptr, bytes.len() as u32).is_err()
    {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}
