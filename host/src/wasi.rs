//! The WASI preview 1 subset proxy-wasm modules import, hand-written (no wasmtime-wasi):
//! `fd_write` to the plugin log (stdout → info, stderr → error, line by line),
//! `clock_time_get` / `clock_res_get` from the host clock (realtime and monotonic; the CPU-time
//! clocks are ENOTSUP, as in cpp-host), `random_get` (at most 64 KiB a call, cpp-host's
//! `PROXY_WASM_HOST_WASI_RANDOM_GET_MAX_SIZE_BYTES`), `environ_*` from the plugin's explicit
//! allow-list, empty `args_*`, `sched_yield`, `poll_oneoff` answering no events and
//! `fd_fdstat_get` for stdout/stderr (as cpp-host: Go's wasip1 runtime needs both to
//! succeed), and `proc_exit` as a trap.
//! Every other WASI function the module imports answers ENOSYS (see
//! [`crate::module::ModuleImports`]). Registered under `wasi_snapshot_preview1` and, for
//! AssemblyScript modules (ABI 0.2.0), `wasi_unstable`.

use wasmtime::{Caller, Linker};

use crate::abi::memory::{read, write, write_u32, write_u64};
use crate::clock::unix_nanos;
use crate::logs::LogLevel;
use crate::state::HostState;

pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

pub const ESUCCESS: i32 = 0;
pub const EBADF: i32 = 8;
pub const EFAULT: i32 = 21;
pub const EINVAL: i32 = 28;
pub const ENOSYS: i32 = 52;
pub const ENOTSUP: i32 = 58;

/// Largest `random_get` (cpp-host's limit, also the Web Crypto `getRandomValues` one).
pub const RANDOM_GET_MAX: u32 = 64 * 1024;

/// What a clock id is: the two clocks the host has, the two CPU-time clocks it does not
/// measure (ENOTSUP, as cpp-host), or no clock at all (EINVAL).
fn clock(id: u32) -> Result<bool, i32> {
    match id {
        0 => Ok(true),
        1 => Ok(false),
        2 | 3 => Err(ENOTSUP),
        _ => Err(EINVAL),
    }
}

type C<'a> = Caller<'a, HostState>;

fn errno(r: Result<(), u32>) -> i32 {
    match r {
        Ok(()) => ESUCCESS,
        Err(_) => EFAULT,
    }
}

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for m in MODULES {
        linker.func_wrap(m, "fd_write", fd_write)?;
        linker.func_wrap(m, "clock_time_get", clock_time_get)?;
        linker.func_wrap(m, "clock_res_get", |mut c: C<'_>, id: u32, ptr: u32| {
            if let Err(errno) = clock(id) {
                return errno;
            }
            errno(write_u64(&mut c, ptr, 1_000))
        })?;
        linker.func_wrap(m, "random_get", random_get)?;
        linker.func_wrap(m, "environ_sizes_get", environ_sizes_get)?;
        linker.func_wrap(m, "environ_get", environ_get)?;
        linker.func_wrap(m, "args_sizes_get", |mut c: C<'_>, argc: u32, size: u32| {
            errno(write_u32(&mut c, argc, 0).and_then(|()| write_u32(&mut c, size, 0)))
        })?;
        linker.func_wrap(m, "args_get", |_: C<'_>, _argv: u32, _buf: u32| ESUCCESS)?;
        linker.func_wrap(m, "sched_yield", |_: C<'_>| ESUCCESS)?;
        linker.func_wrap(m, "fd_prestat_get", |_: C<'_>, _fd: u32, _ptr: u32| EBADF)?;
        linker.func_wrap(m, "fd_fdstat_get", fd_fdstat_get)?;
        linker.func_wrap(m, "poll_oneoff", poll_oneoff)?;
        linker.func_wrap(m, "proc_exit", proc_exit)?;
    }
    Ok(())
}

fn fd_write(mut c: C<'_>, fd: u32, iovs: u32, iovs_len: u32, nwritten: u32) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    let Some(table_len) = iovs_len.checked_mul(8) else {
        return EINVAL;
    };
    let Ok(table) = read(&c, iovs, table_len) else {
        return EFAULT;
    };
    let mut data = Vec::new();
    for iov in table.chunks_exact(8) {
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        match read(&c, ptr, len) {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(_) => return EFAULT,
        }
        if data.len() > crate::logs::MAX_MESSAGE * 4 {
            return EINVAL;
        }
    }
    let written = data.len() as u32;
    let (level, state) = (
        if fd == 1 {
            LogLevel::Info
        } else {
            LogLevel::Error
        },
        c.data_mut(),
    );
    let line = if fd == 1 {
        &mut state.stdout
    } else {
        &mut state.stderr
    };
    line.extend_from_slice(&data);
    let mut lines = Vec::new();
    while let Some(nl) = line.iter().position(|&b| b == b'\n') {
        let rest = line.split_off(nl + 1);
        let mut done = std::mem::replace(line, rest);
        done.pop();
        lines.push(String::from_utf8_lossy(&done).into_owned());
    }
    if line.len() > crate::logs::MAX_MESSAGE {
        lines.push(String::from_utf8_lossy(line).into_owned());
        line.clear();
    }
    for l in lines {
        state.logs.log(level, &l);
    }
    errno(write_u32(&mut c, nwritten, written))
}

fn clock_time_get(mut c: C<'_>, id: u32, _precision: u64, ptr: u32) -> i32 {
    let realtime = match clock(id) {
        Ok(realtime) => realtime,
        Err(errno) => return errno,
    };
    let clock = &c.data().env.clock;
    let t = if realtime {
        unix_nanos(clock.now())
    } else {
        clock.monotonic().as_nanos() as u64
    };
    errno(write_u64(&mut c, ptr, t))
}

/// stdout and stderr are write-only character streams; there is no other descriptor. The
/// 24-byte `fdstat`: filetype, flags, then the base rights (only `fd_write`, bit 6) and the
/// inheriting rights (none), as cpp-host writes it.
fn fd_fdstat_get(mut c: C<'_>, fd: u32, ptr: u32) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    let mut stat = [0u8; 24];
    stat[8..16].copy_from_slice(&64u64.to_le_bytes());
    errno(write(&mut c, ptr, &stat))
}

/// Nothing to wait for: no event, at once. Go's wasip1 runtime calls it to sleep and aborts
/// on an error (proxy-wasm-cpp-host#497).
fn poll_oneoff(mut c: C<'_>, _in: u32, _out: u32, _subscriptions: u32, nevents: u32) -> i32 {
    errno(write_u32(&mut c, nevents, 0))
}

fn random_get(mut c: C<'_>, ptr: u32, len: u32) -> i32 {
    if len > RANDOM_GET_MAX {
        return EINVAL;
    }
    let mut bytes = vec![0u8; len as usize];
    if getrandom::fill(&mut bytes).is_err() {
        return EINVAL;
    }
    errno(write(&mut c, ptr, &bytes))
}

fn environ(c: &C<'_>) -> Vec<Vec<u8>> {
    c.data()
        .plugin
        .env
        .iter()
        .map(|(k, v)| {
            let mut e = format!("{k}={v}").into_bytes();
            e.push(0);
            e
        })
        .collect()
}

fn environ_sizes_get(mut c: C<'_>, count_ptr: u32, size_ptr: u32) -> i32 {
    let env = environ(&c);
    let size: usize = env.iter().map(Vec::len).sum();
    errno(
        write_u32(&mut c, count_ptr, env.len() as u32)
            .and_then(|()| write_u32(&mut c, size_ptr, size as u32)),
    )
}

fn environ_get(mut c: C<'_>, environ_ptr: u32, buf_ptr: u32) -> i32 {
    let env = environ(&c);
    let mut at = buf_ptr;
    for (i, e) in env.iter().enumerate() {
        let slot = environ_ptr.wrapping_add(4 * i as u32);
        if write_u32(&mut c, slot, at).is_err() || write(&mut c, at, e).is_err() {
            return EFAULT;
        }
        at = at.wrapping_add(e.len() as u32);
    }
    ESUCCESS
}

fn proc_exit(c: C<'_>, code: u32) -> wasmtime::Result<()> {
    c.data()
        .logs
        .log(LogLevel::Warn, &format!("proc_exit({code})"));
    Err(wasmtime::Error::msg(format!(
        "module called proc_exit({code})"
    )))
}
