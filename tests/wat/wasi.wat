;; A proxy-wasm module written by hand that calls the host's WASI preview-1 subset and reports
;; what it got: on every request it adds request headers whose values are the hex of the raw
;; little-endian results (errno as i32, then the value), so a test reads the exact bytes.
;; A request with an `x-exit` header makes it call proc_exit(7) instead (and, should that
;; return, continue the request untouched).
;; tests/host/wasi.rs also loads it with every import renamed to `wasi_unstable`.
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; Not implemented by the host: answered ENOSYS.
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))

  ;; Two pages: 131072 bytes, the bound the out-of-bounds checks aim at.
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))

  ;; 1000: hex digits; 1024..: header names.
  (data (i32.const 1000) "0123456789abcdef")
  (data (i32.const 1024) "x-clocks")        ;; 8
  (data (i32.const 1040) "x-clock-res")     ;; 11
  (data (i32.const 1056) "x-random")        ;; 8
  (data (i32.const 1072) "x-random-bounds") ;; 15
  (data (i32.const 1088) "x-environ-sizes") ;; 15
  (data (i32.const 1104) "x-environ-ptrs")  ;; 14
  (data (i32.const 1120) "x-environ")       ;; 9
  (data (i32.const 1136) "x-args")          ;; 6
  (data (i32.const 1152) "x-misc")          ;; 6
  (data (i32.const 1168) "x-exit")          ;; 6
  ;; An iovec for fd_write: "hi\n" at 1200.
  (data (i32.const 1184) "\b0\04\00\00\03\00\00\00")
  (data (i32.const 1200) "hi\n")
  (data (i32.const 1216) "x-clock-res-bad") ;; 15

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    ;; Wraps within the second page: every allocation here is small.
    (if (i32.gt_u (global.get $heap) (i32.const 126976))
      (then (global.set $heap (i32.const 65536)) (local.set $p (i32.const 65536))))
    (local.get $p))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  ;; Adds request header `name` with the hex of memory [src, src+len).
  (func $report (param $name i32) (param $nlen i32) (param $src i32) (param $len i32)
    (local $i i32)
    (local $b i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $b (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (i32.store8 (i32.add (i32.const 32768) (i32.shl (local.get $i) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1000) (i32.shr_u (local.get $b) (i32.const 4)))))
        (i32.store8 (i32.add (i32.const 32769) (i32.shl (local.get $i) (i32.const 1)))
          (i32.load8_u (i32.add (i32.const 1000) (i32.and (local.get $b) (i32.const 15)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (drop (call $add_header (i32.const 0) (local.get $name) (local.get $nlen)
      (i32.const 32768) (i32.shl (local.get $len) (i32.const 1)))))

  ;; A 16-byte record at `at`: errno (i32), 4 bytes of padding, the clock's value (u64, -1
  ;; unless the host wrote it).
  (func $clock (param $id i32) (param $at i32)
    (i64.store (i32.add (local.get $at) (i32.const 8)) (i64.const -1))
    (i32.store (local.get $at)
      (call $clock_time_get (local.get $id) (i64.const 1) (i32.add (local.get $at) (i32.const 8)))))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $count i32)
    (local $size i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1168) (i32.const 6) (i32.const 4400) (i32.const 4404)))
      (then (call $proc_exit (i32.const 7)) (return (i32.const 0))))
    ;; Results of the previous request are gone: 4096..32768 is zero again.
    (memory.fill (i32.const 4096) (i32.const 0) (i32.const 28672))

    ;; Clocks 0 (realtime) .. 4 (no such clock): 4096..4176.
    (call $clock (i32.const 0) (i32.const 4096))
    (call $clock (i32.const 1) (i32.const 4112))
    (call $clock (i32.const 2) (i32.const 4128))
    (call $clock (i32.const 3) (i32.const 4144))
    (call $clock (i32.const 4) (i32.const 4160))
    (call $report (i32.const 1024) (i32.const 8) (i32.const 4096) (i32.const 80))
    ;; clock_res_get(realtime): 4176..4192.
    (i64.store (i32.const 4184) (i64.const -1))
    (i32.store (i32.const 4176) (call $clock_res_get (i32.const 0) (i32.const 4184)))
    (call $report (i32.const 1040) (i32.const 11) (i32.const 4176) (i32.const 16))
    ;; clock_res_get(4), no such clock: 4240..4256.
    (i64.store (i32.const 4248) (i64.const -1))
    (i32.store (i32.const 4240) (call $clock_res_get (i32.const 4) (i32.const 4248)))
    (call $report (i32.const 1216) (i32.const 15) (i32.const 4240) (i32.const 16))

    ;; Two random_get calls of 16 bytes: [errno][16 bytes][errno][16 bytes] at 4200..4240.
    (i32.store (i32.const 4200) (call $random_get (i32.const 4204) (i32.const 16)))
    (i32.store (i32.const 4220) (call $random_get (i32.const 4224) (i32.const 16)))
    (call $report (i32.const 1056) (i32.const 8) (i32.const 4200) (i32.const 40))
    ;; Bounds: the last 16 bytes of memory; one byte further; a length past the host's cap
    ;; (64 MiB + 1); an empty buffer right at the end of memory. 4256..4272.
    (i32.store (i32.const 4256) (call $random_get (i32.const 131056) (i32.const 16)))
    (i32.store (i32.const 4260) (call $random_get (i32.const 131057) (i32.const 16)))
    (i32.store (i32.const 4264) (call $random_get (i32.const 0) (i32.const 67108865)))
    (i32.store (i32.const 4268) (call $random_get (i32.const 131072) (i32.const 0)))
    (call $report (i32.const 1072) (i32.const 15) (i32.const 4256) (i32.const 16))

    ;; environ: [count][size][errno sizes][errno get] at 4272..4288, pointers at 16384,
    ;; strings at 20480 (both cleared above; a test environment is far below 4 KiB).
    (i32.store (i32.const 4280) (call $environ_sizes_get (i32.const 4272) (i32.const 4276)))
    (local.set $count (i32.load (i32.const 4272)))
    (local.set $size (i32.load (i32.const 4276)))
    (if (i32.gt_u (local.get $count) (i32.const 512)) (then (local.set $count (i32.const 0))))
    (if (i32.gt_u (local.get $size) (i32.const 4096)) (then (local.set $size (i32.const 0))))
    (i32.store (i32.const 4284) (call $environ_get (i32.const 16384) (i32.const 20480)))
    (call $report (i32.const 1088) (i32.const 15) (i32.const 4272) (i32.const 16))
    (call $report (i32.const 1104) (i32.const 14) (i32.const 16384) (i32.shl (local.get $count) (i32.const 2)))
    (call $report (i32.const 1120) (i32.const 9) (i32.const 20480) (local.get $size))

    ;; args: [argc][size] (set to -1 first) [errno sizes] [argv slot, -1] [errno get] at 4288..4308.
    (i32.store (i32.const 4288) (i32.const -1))
    (i32.store (i32.const 4292) (i32.const -1))
    (i32.store (i32.const 4296) (call $args_sizes_get (i32.const 4288) (i32.const 4292)))
    (i32.store (i32.const 4300) (i32.const -1))
    (i32.store (i32.const 4304) (call $args_get (i32.const 4300) (i32.const 24576)))
    (call $report (i32.const 1136) (i32.const 6) (i32.const 4288) (i32.const 20))

    ;; The rest, one errno each at 4312..4332: sched_yield, fd_prestat_get(3), path_open,
    ;; fd_close (both unimplemented), fd_write to fd 3.
    (i32.store (i32.const 4312) (call $sched_yield))
    (i32.store (i32.const 4316) (call $fd_prestat_get (i32.const 3) (i32.const 4408)))
    (i32.store (i32.const 4320) (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 8)
      (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 4416)))
    (i32.store (i32.const 4324) (call $fd_close (i32.const 3)))
    (i32.store (i32.const 4328) (call $fd_write (i32.const 3) (i32.const 1184) (i32.const 1) (i32.const 4420)))
    (call $report (i32.const 1152) (i32.const 6) (i32.const 4312) (i32.const 20))
    (i32.const 0))
)
