;; A proxy-wasm module written by hand that shows its WASI environment: on every request it
;; adds `x-environ` with the `NAME=value` entries it can read, separated by `;`. A test puts it
;; next to modules that are given secrets, to check it sees only the ones its own config names.
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  ;; 0: entry count, 4: bytes; 1024: the header name; 2048: entry pointers; 8192: entries.
  (data (i32.const 1024) "x-environ")

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $p))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (local $size i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (local.set $size (i32.load (i32.const 4)))
    ;; At most a page of entries: enough for a test, never past the memory.
    (if (i32.gt_u (local.get $size) (i32.const 4096)) (then (local.set $size (i32.const 0))))
    (if (i32.gt_u (i32.load (i32.const 0)) (i32.const 512)) (then (local.set $size (i32.const 0))))
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then (drop (call $environ (i32.const 2048) (i32.const 8192)))))
    ;; NUL separators become ';' (a header value holds no NUL); the last one is dropped.
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (if (i32.eqz (i32.load8_u (i32.add (i32.const 8192) (local.get $i))))
          (then (i32.store8 (i32.add (i32.const 8192) (local.get $i)) (i32.const 59))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then (local.set $size (i32.sub (local.get $size) (i32.const 1)))))
    (drop (call $add_header (i32.const 0) (i32.const 1024) (i32.const 9) (i32.const 8192) (local.get $size)))
    (i32.const 0))
)
