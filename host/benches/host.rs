//! Figures for docs/BENCHMARKS.md (host section):
//! `CARGO_TARGET_DIR=… cargo xtask build && cargo bench -p host --release`
//! (the plugins' modules come from `WASMGATE_WASM_DIR`, else `target/wasm32-wasip1/wasm`).
//!
//! - instantiation: a fresh instance of a plugin (InstancePre → `_initialize` →
//!   `on_vm_start` → `on_configure`), as a worker does at start-up or after a failure;
//! - host call: a WAT module making 1000 `proxy_get_header_map_value` calls per request,
//!   against the same module making none (the difference / 1000 is one call);
//! - per request: GET / through the harness with each plugin, against an empty chain.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use host::testing::{module_from_file, Harness, TestRequest};
use host::{HostEnv, Plugin, PluginConfig};

fn wasm_dir() -> PathBuf {
    std::env::var_os("WASMGATE_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm")
        })
}

const PLUGINS: [(&str, &str); 3] = [
    ("request-size-limiting", r#"{"allowed_payload_size": 10}"#),
    ("rate-limiting", r#"{"second": 1000000000}"#),
    (
        "request-transformer",
        r#"{"add": {"headers": ["x-added:1"]}, "remove": {"headers": ["x-gone"]}}"#,
    ),
];

fn module_path(plugin: &str) -> PathBuf {
    wasm_dir().join(format!("{}.wasm", plugin.replace('-', "_")))
}

fn calls_module(calls: u32) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (data (i32.const 1024) "x-key")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 32768))))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (local.set $i (i32.const {calls}))
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $i)))
      (drop (call $get (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 0) (i32.const 4)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.const 0)))"#
    );
    wat::parse_str(text).expect("WAT")
}

fn instantiation(c: &mut Criterion) {
    let mut group = c.benchmark_group("instantiate");
    for (plugin, config) in PLUGINS {
        let path = module_path(plugin);
        if !path.is_file() {
            eprintln!(
                "skipping {plugin}: {} is missing (cargo xtask build)",
                path.display()
            );
            continue;
        }
        let module = module_from_file(&path).expect("module");
        let p = Plugin::new(module, PluginConfig::new(plugin, config), HostEnv::shared());
        group.bench_function(plugin, |b| b.iter(|| p.worker().expect("instance")));
    }
    group.finish();
}

fn host_calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_call");
    for calls in [0u32, 1000] {
        let mut h = Harness::new().expect("harness");
        h.load_bytes(&calls_module(calls), PluginConfig::new("calls", ""))
            .expect("module");
        let request = TestRequest::get("/").header("x-key", "value");
        group.bench_function(format!("request_with_{calls}_get_header_calls"), |b| {
            b.iter(|| h.send(request.clone()))
        });
    }
    group.finish();
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_request");
    let request = TestRequest::get("/")
        .header("x-gone", "1")
        .header("accept", "*/*");
    let mut empty = Harness::new().expect("harness");
    group.bench_function("empty_chain", |b| b.iter(|| empty.send(request.clone())));
    for (plugin, config) in PLUGINS {
        let path = module_path(plugin);
        if !path.is_file() {
            continue;
        }
        let mut h = Harness::new().expect("harness");
        h.load_file(&path, PluginConfig::new(plugin, config))
            .expect("plugin loads");
        group.bench_function(plugin, |b| b.iter(|| h.send(request.clone())));
    }
    group.finish();
}

criterion_group!(benches, instantiation, host_calls, per_request);
criterion_main!(benches);
