//! The host's hand-written WASI preview-1 subset (host/src/wasi.rs), beyond `fd_write`: a WAT
//! module (tests/wat/wasi.wat) calls each function and reports the raw results in request
//! headers; the tests read them at the upstream and compare them with the harness's manual
//! clock, the plugin's environment allow-list and the documented errnos. The same module runs
//! with its imports under `wasi_snapshot_preview1` and under `wasi_unstable`.

use std::time::Duration;

use host::clock::{unix_nanos, Clock};
use host::testing::{Harness, TestRequest, UpstreamRequest};
use host::{PluginConfig, WorkerPlugin};

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
const ENOTSUP: i32 = 58;

const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

fn wasm(wasi_module: &str) -> Vec<u8> {
    let path = wasmgate_tests::paths::workspace_root().join("tests/wat/wasi.wat");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replace("\"wasi_snapshot_preview1\"", &format!("\"{wasi_module}\""));
    assert_eq!(
        text.matches(&format!("(import \"{wasi_module}\"")).count(),
        13,
        "every WASI import is under {wasi_module}"
    );
    wat::parse_str(&text).unwrap()
}

fn load(wasi_module: &str, config: PluginConfig) -> (Harness, WorkerPlugin) {
    let mut h = Harness::new().unwrap();
    let w = h.load_bytes(&wasm(wasi_module), config).unwrap();
    (h, w)
}

/// The bytes the module reported under `name` (hex-decoded).
fn report(up: &UpstreamRequest, name: &str) -> Vec<u8> {
    let hex = up
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"));
    assert_eq!(hex.len() % 2, 0, "{name}");
    hex.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn send(h: &mut Harness) -> UpstreamRequest {
    let out = h.send(TestRequest::get("/"));
    assert_eq!(out.response.status, 200, "{}", h.log_text());
    out.upstream.expect("reached the upstream")
}

/// The five clock records: (errno, value) for ids 0..=4.
fn clocks(up: &UpstreamRequest) -> Vec<(i32, u64)> {
    let b = report(up, "x-clocks");
    assert_eq!(b.len(), 80);
    (0..5)
        .map(|i| (i32_at(&b, i * 16), u64_at(&b, i * 16 + 8)))
        .collect()
}

#[test]
fn clock_time_get_reads_the_host_clock_realtime_and_monotonic_and_advances_with_it() {
    for m in MODULES {
        let (mut h, _) = load(m, PluginConfig::new("wasi", ""));
        let wall = unix_nanos(h.clock().now());
        let mono = h.clock().monotonic().as_nanos() as u64;
        let first = clocks(&send(&mut h));
        // 0: realtime (ns since the Unix epoch); 1: monotonic; 2, 3 (process and thread CPU
        // time) are not measured: ENOTSUP, as in cpp-host, nothing written; 4 does not exist.
        assert_eq!(
            first,
            vec![
                (ESUCCESS, wall),
                (ESUCCESS, mono),
                (ENOTSUP, u64::MAX),
                (ENOTSUP, u64::MAX),
                (EINVAL, u64::MAX)
            ],
            "{m}"
        );
        // The realtime clock is the wall clock (a sanity bound: after 2020-01-01).
        assert!(wall > 1_577_836_800_000_000_000, "{m}: {wall}");

        h.advance(Duration::from_millis(1500));
        let second = clocks(&send(&mut h));
        assert_eq!(second[0], (ESUCCESS, wall + 1_500_000_000), "{m}");
        assert_eq!(second[1], (ESUCCESS, mono + 1_500_000_000), "{m}");

        // Setting the wall clock back moves realtime back; monotonic never goes back.
        h.clock()
            .set(std::time::UNIX_EPOCH + Duration::from_nanos(wall - 10_000_000_000));
        let third = clocks(&send(&mut h));
        assert_eq!(third[0], (ESUCCESS, wall - 10_000_000_000), "{m}");
        assert_eq!(third[1], (ESUCCESS, mono + 1_500_000_000), "{m}");

        let up = send(&mut h);
        let res = report(&up, "x-clock-res");
        assert_eq!((i32_at(&res, 0), u64_at(&res, 8)), (ESUCCESS, 1_000), "{m}");
        // No such clock: EINVAL, as from clock_time_get, and nothing written.
        let res = report(&up, "x-clock-res-bad");
        assert_eq!(
            (i32_at(&res, 0), u64_at(&res, 8)),
            (EINVAL, u64::MAX),
            "{m}"
        );
    }
}

#[test]
fn random_get_fills_the_buffer_and_refuses_one_past_the_end_of_memory() {
    for m in MODULES {
        let (mut h, w) = load(m, PluginConfig::new("wasi", ""));
        let mut seen = Vec::new();
        for _ in 0..2 {
            let up = send(&mut h);
            let r = report(&up, "x-random");
            assert_eq!(r.len(), 40);
            assert_eq!((i32_at(&r, 0), i32_at(&r, 20)), (ESUCCESS, ESUCCESS), "{m}");
            let (a, b) = (r[4..20].to_vec(), r[24..40].to_vec());
            // 16 random bytes: all zero (unfilled) or equal to each other only by a 2^-128
            // chance.
            assert_ne!(a, vec![0; 16], "{m}: the buffer was filled");
            assert_ne!(b, vec![0; 16], "{m}: the buffer was filled");
            assert_ne!(a, b, "{m}: two calls differ");
            seen.push(a);
            seen.push(b);

            let bounds = report(&up, "x-random-bounds");
            let errnos: Vec<i32> = (0..4).map(|i| i32_at(&bounds, i * 4)).collect();
            // The last 16 bytes of the 2-page memory: fine. One byte further: EFAULT. A
            // length past the host's 64 KiB cap: EINVAL. Nothing at the very end: fine.
            assert_eq!(errnos, vec![ESUCCESS, EFAULT, EINVAL, ESUCCESS], "{m}");
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4, "{m}: no two of four calls alike");
        // Out-of-bounds buffers are errors for the module, not failures of the instance.
        assert_eq!(w.plugin().failures(), 0, "{m}");
    }
}

#[test]
fn environ_is_exactly_the_plugins_allow_list_and_args_are_empty() {
    // Something the host's own environment certainly has: it must not leak in.
    assert!(std::env::var_os("PATH").is_some());
    for m in MODULES {
        let config = PluginConfig::new("wasi", "")
            .env("BACKEND_TOKEN", "s3cret")
            .env("EMPTY", "")
            .env("WITH_EQUALS", "a=b c");
        let (mut h, _) = load(m, config);
        let up = send(&mut h);
        let expected: &[u8] = b"BACKEND_TOKEN=s3cret\0EMPTY=\0WITH_EQUALS=a=b c\0";
        let sizes = report(&up, "x-environ-sizes");
        assert_eq!(
            (
                u32_at(&sizes, 0),
                u32_at(&sizes, 4),
                i32_at(&sizes, 8),
                i32_at(&sizes, 12)
            ),
            (3, expected.len() as u32, ESUCCESS, ESUCCESS),
            "{m}"
        );
        assert_eq!(
            String::from_utf8(report(&up, "x-environ")).unwrap(),
            String::from_utf8(expected.to_vec()).unwrap(),
            "{m}"
        );
        // environ[i] points at the i-th NUL-terminated entry of the buffer (at 20480).
        let ptrs = report(&up, "x-environ-ptrs");
        let ptrs: Vec<u32> = (0..3).map(|i| u32_at(&ptrs, i * 4)).collect();
        assert_eq!(ptrs, vec![20480, 20480 + 21, 20480 + 21 + 7], "{m}");

        // argc 0, argv buffer size 0, both calls succeed and args_get writes nothing.
        let args = report(&up, "x-args");
        let args: Vec<i32> = (0..5).map(|i| i32_at(&args, i * 4)).collect();
        assert_eq!(args, vec![0, 0, ESUCCESS, -1, ESUCCESS], "{m}");
    }
    // No allow-list: an empty environment.
    let (mut h, _) = load(MODULES[0], PluginConfig::new("wasi", ""));
    let up = send(&mut h);
    let sizes = report(&up, "x-environ-sizes");
    assert_eq!(sizes, [0u8; 16]);
    assert_eq!(report(&up, "x-environ"), b"");
}

#[test]
fn unimplemented_wasi_functions_answer_enosys_and_the_rest_their_documented_errno() {
    for m in MODULES {
        let (mut h, w) = load(m, PluginConfig::new("wasi", ""));
        let up = send(&mut h);
        let misc = report(&up, "x-misc");
        let errnos: Vec<i32> = (0..5).map(|i| i32_at(&misc, i * 4)).collect();
        // sched_yield: 0; fd_prestat_get: EBADF (no preopened directories); path_open,
        // fd_close: ENOSYS; fd_write to anything but stdout/stderr: EBADF.
        assert_eq!(errnos, vec![ESUCCESS, EBADF, ENOSYS, ENOSYS, EBADF], "{m}");
        assert_eq!(w.plugin().failures(), 0, "{m}");
    }
}

#[test]
fn proc_exit_traps_the_instance_fails_the_request_closed_and_the_next_request_works() {
    for m in MODULES {
        let (mut h, w) = load(m, PluginConfig::new("wasi", ""));
        let out = h.send(TestRequest::get("/").header("x-exit", "1"));
        // Fail closed (the default policy): 503, nothing reaches the upstream.
        assert_eq!(out.response.status, 503, "{m}: {}", h.log_text());
        assert!(out.upstream.is_none(), "{m}");
        assert_eq!(w.plugin().failures(), 1, "{m}");
        let log = h.log_text();
        assert!(log.contains("proc_exit(7)"), "{m}: {log}");
        assert!(log.contains("module called proc_exit(7)"), "{m}: {log}");
        // A fresh instance serves the next request, and runs its WASI calls.
        assert!(w.is_running(), "{m}");
        let up = send(&mut h);
        assert_eq!(clocks(&up)[0].0, ESUCCESS, "{m}");
        assert_eq!(w.plugin().failures(), 1, "{m}");
    }
}
