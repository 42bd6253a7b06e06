//! The probe module of tests/wat/abi_probe.wat and how to read its report: shared by the
//! in-process host's test (tests/host/abi.rs) and real Envoy's (tests/envoy/abi.rs).

#![allow(dead_code)]

/// The module, compiled.
pub fn wasm() -> Vec<u8> {
    let path = wasmgate_tests::paths::workspace_root().join("tests/wat/abi_probe.wat");
    wat::parse_file(path).expect("abi_probe.wat compiles")
}

/// The 1536-byte body the module answers `x-probe: all` with; offsets are those of the WAT
/// minus 8192.
pub struct Report(Vec<u8>);

impl Report {
    pub fn new(body: Vec<u8>) -> Report {
        assert_eq!(
            body.len(),
            1536,
            "a probe report: {:?}",
            String::from_utf8_lossy(&body)
        );
        Report(body)
    }

    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap())
    }

    pub fn bytes(&self, at: usize, len: usize) -> &[u8] {
        &self.0[at..at + len]
    }

    /// `request.headers` as the module got it (status 0 and the header-pairs encoding).
    pub fn headers_map(&self) -> Vec<(String, Vec<u8>)> {
        assert_eq!(self.u32(48), 0, "request.headers status");
        let size = self.u32(52) as usize;
        assert!(size <= 1024, "{size}");
        decode_pairs(self.bytes(512, size))
    }
}

/// The proxy-wasm header-pairs encoding (u32 count, count × (u32, u32) sizes, then each
/// `name\0value\0`).
pub fn decode_pairs(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let count = word(0);
    let mut at = 4 + 8 * count;
    (0..count)
        .map(|i| {
            let (k, v) = (word(4 + 8 * i), word(8 + 8 * i));
            let name = String::from_utf8(b[at..at + k].to_vec()).unwrap();
            let value = b[at + k + 1..at + k + 1 + v].to_vec();
            at += k + v + 2;
            (name, value)
        })
        .collect()
}

/// What both data planes answer alike (`plane` names the one checked).
pub fn check_common(r: &Report, plane: &str) {
    const OK: u32 = 0;
    const NOT_FOUND: u32 = 1;
    const BAD_ARGUMENT: u32 = 2;
    const EBADF: u32 = 8;
    const EINVAL: u32 = 28;
    const ENOTSUP: u32 = 58;
    let at = |i: usize| r.u32(i);
    // proxy_log past critical: BAD_ARGUMENT; at critical: OK.
    assert_eq!((at(0), at(4)), (BAD_ARGUMENT, OK), "{plane}: proxy_log");
    // An empty header value: OK, null pointer, size 0.
    assert_eq!((at(8), at(12), at(16)), (OK, 0, 0), "{plane}: empty value");
    // An absent one: NOT_FOUND.
    assert_eq!(at(228), NOT_FOUND, "{plane}: absent header");
    // A property of the module's own reads back.
    assert_eq!(
        (at(20), at(24), at(28), at(32)),
        (OK, OK, 2, u32::from(b'v')),
        "{plane}: my-prop"
    );
    // request.path set: accepted, and the built-in value stays.
    assert_eq!((at(36), at(40)), (OK, OK), "{plane}: request.path");
    assert_eq!(
        r.bytes(232, at(44) as usize),
        b"/probe",
        "{plane}: request.path"
    );
    // plugin_name set: accepted, not shadowed (its value is the plugin's name, not "spoof").
    assert_eq!((at(216), at(220)), (OK, OK), "{plane}: plugin_name");
    assert_ne!(at(224), 5, "{plane}: plugin_name");
    // request.headers: a map with each name once, multi-valued names joined with ','.
    let map = r.headers_map();
    let mut names: Vec<&str> = map.iter().map(|(k, _)| k.as_str()).collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all, "{plane}: each name once: {map:?}");
    for (name, value) in [
        ("x-probe", &b"all"[..]),
        ("x-empty", b""),
        ("x-multi", b"a,b"),
        (":path", b"/probe"),
        (":method", b"GET"),
    ] {
        assert!(
            map.iter().any(|(k, v)| k == name && v == value),
            "{plane}: {name} in {map:?}"
        );
    }
    // WASI: the CPU-time clocks are not supported.
    assert_eq!(
        (at(56), at(60), at(64)),
        (ENOTSUP, ENOTSUP, ENOTSUP),
        "{plane}: clocks"
    );
    // poll_oneoff: success, no events.
    assert_eq!((at(68), at(72)), (OK, 0), "{plane}: poll_oneoff");
    // fd_fdstat_get on stdout: success, the fd_write right only; fd 5: EBADF.
    let mut stat = [0u8; 24];
    stat[8] = 64;
    assert_eq!(
        (at(76), r.bytes(80, 24)),
        (OK, &stat[..]),
        "{plane}: fdstat"
    );
    assert_eq!(at(104), EBADF, "{plane}: fdstat(5)");
    // random_get: 64 KiB at most.
    assert_eq!((at(108), at(112)), (OK, EINVAL), "{plane}: random_get");
    // Metrics: a counter takes neither 0 nor a negative increment; a histogram no increment
    // and no get; no kind 3; a gauge takes 0.
    assert_eq!(at(116), OK, "{plane}: define counter");
    assert_eq!(
        (at(124), at(128), at(132)),
        (BAD_ARGUMENT, OK, BAD_ARGUMENT),
        "{plane}: counter increments"
    );
    assert_eq!(at(136), BAD_ARGUMENT, "{plane}: kind 3");
    assert_eq!(
        (at(140), at(148), at(152)),
        (OK, BAD_ARGUMENT, BAD_ARGUMENT),
        "{plane}: histogram"
    );
    assert_eq!((at(156), at(164)), (OK, OK), "{plane}: gauge");
    // A call's response body outside a call: NOT_FOUND.
    assert_eq!(at(168), NOT_FOUND, "{plane}: set_buffer_bytes(call body)");
    // proxy_http_call to an empty or unknown upstream: BAD_ARGUMENT at once.
    assert_eq!(
        (at(172), at(176)),
        (BAD_ARGUMENT, BAD_ARGUMENT),
        "{plane}: http_call"
    );
    // proxy_get_log_level: OK (the level itself is each data plane's own).
    assert_eq!(at(180), OK, "{plane}: get_log_level");
    // A foreign function call with null result pointers allocates nothing in the module.
    assert_eq!(at(192), at(196), "{plane}: foreign, null pointers");
}
