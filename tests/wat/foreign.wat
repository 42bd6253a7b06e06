;; A proxy-wasm module written by hand (no SDK), run in both Envoy and the in-process host
;; with the same cases (tests/host/foreign.rs). It reads the plugin configuration and refuses
;; `"refuse"`, reads, adds, replaces and removes request headers, reads properties (its root
;; id and plugin name among them), writes and reads shared data, defines and increments a
;; metric, logs, answers `/deny` locally, and marks every response in its response phase.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))

  (memory (export "memory") 2)
  ;; A bump allocator over the second page onwards, reset at the start of every callback.
  (global $heap (mut i32) (i32.const 65536))

  ;; Return slots: 0 pointer, 4 size, 8 cas, 16 time (u64), 24 metric id.
  (data (i32.const 1024) "x-who")
  (data (i32.const 1040) "x-wat-saw")
  (data (i32.const 1056) "x-wat")
  (data (i32.const 1064) "1")
  (data (i32.const 1072) "x-remove-me")
  (data (i32.const 1088) "request\00path")
  (data (i32.const 1104) "x-wat-path")
  (data (i32.const 1120) "wat-key")
  (data (i32.const 1128) "wat-value")
  (data (i32.const 1144) "x-wat-shared")
  (data (i32.const 1160) "/deny")
  (data (i32.const 1168) "denied by wat\n")
  ;; One header pair, x-wat-local: 1, in the pairs encoding.
  (data (i32.const 1184) "\01\00\00\00\0b\00\00\00\01\00\00\00x-wat-local\001\00")
  (data (i32.const 1216) "wat: request headers")
  (data (i32.const 1240) "x-wat-response")
  (data (i32.const 1256) "\22refuse\22")
  (data (i32.const 1272) "wat: configuration refused")
  (data (i32.const 1304) "wat_requests")
  (data (i32.const 1320) "x-wat-metric")
  (data (i32.const 1336) "ok")
  (data (i32.const 1368) "plugin_root_id")
  (data (i32.const 1384) "x-wat-root")
  (data (i32.const 1400) "x-wat-time")
  (data (i32.const 1416) "plugin_name")
  (data (i32.const 1432) "x-wat-name")

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.lt_s
              (memory.grow (i32.add (i32.div_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 65536)) (i32.const 1)))
              (i32.const 0))
          (then (return (i32.const 0))))))
    (local.get $p))

  (func $memeq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $no
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
    (global.set $heap (i32.const 65536))
    (if (i32.eq (local.get $size) (i32.const 8))
      (then
        (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
          (then
            (if (call $memeq (i32.load (i32.const 0)) (i32.const 1256) (i32.const 8))
              (then
                (drop (call $log (i32.const 4) (i32.const 1272) (i32.const 26)))
                (return (i32.const 0))))))))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (global.set $heap (i32.const 65536))
    ;; The path: /deny is answered here, anything else is copied into x-wat-path.
    (if (i32.eqz (call $get_property (i32.const 1088) (i32.const 12) (i32.const 0) (i32.const 4)))
      (then
        (if (i32.and
              (i32.eq (i32.load (i32.const 4)) (i32.const 5))
              (call $memeq (i32.load (i32.const 0)) (i32.const 1160) (i32.const 5)))
          (then
            (drop (call $local_response (i32.const 403) (i32.const 0) (i32.const 0)
              (i32.const 1168) (i32.const 14) (i32.const 1184) (i32.const 26) (i32.const -1)))
            (return (i32.const 1))))
        (drop (call $add_header (i32.const 0) (i32.const 1104) (i32.const 10)
          (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 0) (i32.const 4)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 1040) (i32.const 9)
          (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (drop (call $replace_header (i32.const 0) (i32.const 1056) (i32.const 5) (i32.const 1064) (i32.const 1)))
    (drop (call $remove_header (i32.const 0) (i32.const 1072) (i32.const 11)))
    (drop (call $set_shared (i32.const 1120) (i32.const 7) (i32.const 1128) (i32.const 9) (i32.const 0)))
    (if (i32.eqz (call $get_shared (i32.const 1120) (i32.const 7) (i32.const 0) (i32.const 4) (i32.const 8)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 1144) (i32.const 12)
          (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (if (i32.eqz (call $get_property (i32.const 1368) (i32.const 14) (i32.const 0) (i32.const 4)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 1384) (i32.const 10)
          (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (if (i32.eqz (call $get_property (i32.const 1416) (i32.const 11) (i32.const 0) (i32.const 4)))
      (then
        (drop (call $add_header (i32.const 0) (i32.const 1432) (i32.const 10)
          (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    ;; Time is after 2020 (nanoseconds).
    (if (i32.eqz (call $now (i32.const 16)))
      (then
        (if (i64.gt_u (i64.load (i32.const 16)) (i64.const 1577836800000000000))
          (then
            (drop (call $add_header (i32.const 0) (i32.const 1400) (i32.const 10) (i32.const 1336) (i32.const 2)))))))
    (if (i32.eqz (call $define_metric (i32.const 0) (i32.const 1304) (i32.const 12) (i32.const 24)))
      (then
        (if (i32.eqz (call $increment_metric (i32.load (i32.const 24)) (i64.const 1)))
          (then
            (drop (call $add_header (i32.const 0) (i32.const 1320) (i32.const 12) (i32.const 1336) (i32.const 2)))))))
    (drop (call $log (i32.const 2) (i32.const 1216) (i32.const 20)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (global.set $heap (i32.const 65536))
    (drop (call $add_header (i32.const 2) (i32.const 1240) (i32.const 14) (i32.const 1064) (i32.const 1)))
    (i32.const 0))

  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
