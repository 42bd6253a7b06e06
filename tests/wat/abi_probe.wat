;; Probes the hostcall details of review section D (#13 item 7) and answers what the host
;; returned, so that the same module can be run in real Envoy and in the in-process host and
;; the answers compared (tests/host/abi.rs, tests/envoy/abi.rs).
;;
;; Request header `x-probe` picks what on_request_headers does:
;;   "all"   every probe below; a local response 200 whose body is the 1536-byte report
;;           (offsets in tests/host/abi.rs: `Report`);
;;   "code"  a local response with the status in `x-code` (three ASCII digits); when the
;;           host refuses it, a local response 200 with body "refused" and the status byte;
;;   "known" proxy_http_call to the upstream "known" with timeout 0, then a local response
;;           200 with the status byte (in-process host only);
;;   "Kall"  proxy_http_call to "upstream" (Envoy's cluster of the test), and in its answer
;;           proxy_set_buffer_bytes on the call's response body: a local response 200 with
;;           that status byte and 1 when the body was not empty.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 131072))
  ;; The stream that made the "Kall" call.
  (global $caller (mut i32) (i32.const 0))

  (data (i32.const 1024) "x-probe")           ;; 7
  (data (i32.const 1040) "x-empty")           ;; 7
  (data (i32.const 1056) "x-absent")          ;; 8
  (data (i32.const 1072) "my-prop")           ;; 7
  (data (i32.const 1088) "request\00path")    ;; 12
  (data (i32.const 1104) "/spoofed")          ;; 8
  (data (i32.const 1120) "request\00headers") ;; 15
  (data (i32.const 1136) "plugin_name")       ;; 11
  (data (i32.const 1152) "spoof")             ;; 5
  (data (i32.const 1168) "probe_counter")     ;; 13
  (data (i32.const 1184) "probe_hist")        ;; 10
  (data (i32.const 1200) "probe_gauge")       ;; 11
  (data (i32.const 1216) "no_such_cluster")   ;; 15
  (data (i32.const 1232) "probe_fn")          ;; 8
  (data (i32.const 1248) "x-code")            ;; 6
  (data (i32.const 1264) "refused")           ;; 7
  (data (i32.const 1280) "known")             ;; 5
  (data (i32.const 1296) "v1")                ;; 2
  (data (i32.const 1312) "level 6")           ;; 7
  (data (i32.const 1328) "upstream")          ;; 8
  ;; Header pairs :method GET, :path /, :authority x (61 bytes).
  (data (i32.const 1344)
    "\03\00\00\00"
    "\07\00\00\00\03\00\00\00" "\05\00\00\00\01\00\00\00" "\0a\00\00\00\01\00\00\00"
    ":method\00GET\00:path\00/\00:authority\00x\00")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $headers i32) (param $body i32) (param $trailers i32)
    (if (i32.eqz (global.get $caller)) (then (return)))
    (drop (call $set_effective (global.get $caller)))
    (i32.store8 (i32.const 920) (call $set_buffer (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 1296) (i32.const 2)))
    (i32.store8 (i32.const 921) (i32.gt_u (local.get $body) (i32.const 0)))
    (global.set $caller (i32.const 0))
    (drop (call $answer (i32.const 200) (i32.const 920) (i32.const 2))))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))

  ;; The first byte of request header `name` (0 when absent or empty).
  (func $header_byte (param $name i32) (param $len i32) (param $at i32) (result i32)
    (if (i32.ne (call $get_header (i32.const 0) (local.get $name) (local.get $len) (i32.const 900) (i32.const 904)) (i32.const 0))
      (then (return (i32.const 0))))
    (if (i32.le_u (i32.load (i32.const 904)) (local.get $at)) (then (return (i32.const 0))))
    (i32.load8_u (i32.add (i32.load (i32.const 900)) (local.get $at))))

  (func $answer (param $code i32) (param $body i32) (param $len i32) (result i32)
    (call $respond (local.get $code) (i32.const 0) (i32.const 0) (local.get $body) (local.get $len) (i32.const 0) (i32.const 0) (i32.const -1)))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $mode i32)
    (local $code i32)
    (local $status i32)
    (global.set $heap (i32.const 131072))
    (local.set $mode (call $header_byte (i32.const 1024) (i32.const 7) (i32.const 0)))
    (if (i32.eq (local.get $mode) (i32.const 99)) ;; 'c'
      (then
        (local.set $code
          (i32.add
            (i32.add
              (i32.mul (i32.sub (call $header_byte (i32.const 1248) (i32.const 6) (i32.const 0)) (i32.const 48)) (i32.const 100))
              (i32.mul (i32.sub (call $header_byte (i32.const 1248) (i32.const 6) (i32.const 1)) (i32.const 48)) (i32.const 10)))
            (i32.sub (call $header_byte (i32.const 1248) (i32.const 6) (i32.const 2)) (i32.const 48))))
        (local.set $status (call $answer (local.get $code) (i32.const 0) (i32.const 0)))
        (if (i32.ne (local.get $status) (i32.const 0))
          (then
            (i32.store8 (i32.const 1271) (local.get $status))
            (drop (call $answer (i32.const 200) (i32.const 1264) (i32.const 8)))))
        (return (i32.const 1))))
    (if (i32.eq (local.get $mode) (i32.const 107)) ;; 'k'
      (then
        (local.set $status
          (call $http_call (i32.const 1280) (i32.const 5) (i32.const 1344) (i32.const 61)
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 908)))
        (i32.store8 (i32.const 912) (local.get $status))
        (drop (call $answer (i32.const 200) (i32.const 912) (i32.const 1)))
        (return (i32.const 1))))
    (if (i32.eq (local.get $mode) (i32.const 75)) ;; 'K'
      (then
        (local.set $status
          (call $http_call (i32.const 1328) (i32.const 8) (i32.const 1344) (i32.const 61)
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 908)))
        (if (i32.ne (local.get $status) (i32.const 0))
          (then
            (i32.store8 (i32.const 912) (i32.const 0xee))
            (i32.store8 (i32.const 913) (local.get $status))
            (drop (call $answer (i32.const 200) (i32.const 912) (i32.const 2)))
            (return (i32.const 1))))
        (global.set $caller (local.get $ctx))
        (return (i32.const 1))))
    (if (i32.ne (local.get $mode) (i32.const 97)) ;; 'a'
      (then (return (i32.const 0))))
    (call $probe_all)
    (drop (call $answer (i32.const 200) (i32.const 8192) (i32.const 1536)))
    (i32.const 1))

  (func $probe_all
    (local $id i32)
    (memory.fill (i32.const 8192) (i32.const 0) (i32.const 1536))
    ;; proxy_log: level 6 (past critical), level 5.
    (i32.store (i32.const 8192) (call $log (i32.const 6) (i32.const 1312) (i32.const 7)))
    (i32.store (i32.const 8196) (call $log (i32.const 5) (i32.const 1312) (i32.const 7)))
    ;; An empty header value: status, pointer, size (pointer preset to 0xffffffff).
    (i32.store (i32.const 8204) (i32.const -1))
    (i32.store (i32.const 8208) (i32.const -1))
    (i32.store (i32.const 8200) (call $get_header (i32.const 0) (i32.const 1040) (i32.const 7) (i32.const 8204) (i32.const 8208)))
    ;; set_property then get_property of a name of the module's own.
    (i32.store (i32.const 8212) (call $set_property (i32.const 1072) (i32.const 7) (i32.const 1296) (i32.const 2)))
    (i32.store (i32.const 8216) (call $get_property (i32.const 1072) (i32.const 7) (i32.const 896) (i32.const 8220)))
    (if (i32.gt_u (i32.load (i32.const 8220)) (i32.const 0))
      (then (i32.store (i32.const 8224) (i32.load8_u (i32.load (i32.const 896))))))
    ;; set_property request.path, then get it: the real path, not the set one.
    (i32.store (i32.const 8228) (call $set_property (i32.const 1088) (i32.const 12) (i32.const 1104) (i32.const 8)))
    (i32.store (i32.const 8232) (call $get_property (i32.const 1088) (i32.const 12) (i32.const 896) (i32.const 8236)))
    ;; request.headers: status, size, and up to 1024 bytes at 8704.
    (i32.store (i32.const 8240) (call $get_property (i32.const 1120) (i32.const 15) (i32.const 896) (i32.const 8244)))
    (if (i32.eqz (i32.load (i32.const 8240)))
      (then
        (memory.copy (i32.const 8704) (i32.load (i32.const 896))
          (select (i32.load (i32.const 8244)) (i32.const 1024) (i32.lt_u (i32.load (i32.const 8244)) (i32.const 1024))))))
    ;; WASI clocks 2 and 3, clock_res_get(2).
    (i32.store (i32.const 8248) (call $clock_time_get (i32.const 2) (i64.const 1) (i32.const 880)))
    (i32.store (i32.const 8252) (call $clock_time_get (i32.const 3) (i64.const 1) (i32.const 880)))
    (i32.store (i32.const 8256) (call $clock_res_get (i32.const 2) (i32.const 880)))
    ;; poll_oneoff with one (zeroed) subscription: errno, nevents (preset 0xdeadbeef).
    (i32.store (i32.const 8264) (i32.const 0xdeadbeef))
    (i32.store (i32.const 8260) (call $poll_oneoff (i32.const 10240) (i32.const 10496) (i32.const 1) (i32.const 8264)))
    ;; fd_fdstat_get(1): errno, then the 24 bytes at 8272 (preset 0xaa); fd 5: errno.
    (memory.fill (i32.const 8272) (i32.const 0xaa) (i32.const 24))
    (i32.store (i32.const 8268) (call $fd_fdstat_get (i32.const 1) (i32.const 8272)))
    (i32.store (i32.const 8296) (call $fd_fdstat_get (i32.const 5) (i32.const 10752)))
    ;; random_get of 64 KiB, and one byte more.
    (i32.store (i32.const 8300) (call $random_get (i32.const 16384) (i32.const 65536)))
    (i32.store (i32.const 8304) (call $random_get (i32.const 16384) (i32.const 65537)))
    ;; A counter: define, increment by 0, 1, -1.
    (i32.store (i32.const 8308) (call $define_metric (i32.const 0) (i32.const 1168) (i32.const 13) (i32.const 8312)))
    (local.set $id (i32.load (i32.const 8312)))
    (i32.store (i32.const 8316) (call $increment_metric (local.get $id) (i64.const 0)))
    (i32.store (i32.const 8320) (call $increment_metric (local.get $id) (i64.const 1)))
    (i32.store (i32.const 8324) (call $increment_metric (local.get $id) (i64.const -1)))
    ;; A metric of kind 3 (no such kind).
    (i32.store (i32.const 8328) (call $define_metric (i32.const 3) (i32.const 1184) (i32.const 10) (i32.const 880)))
    ;; A histogram: define, increment, get.
    (i32.store (i32.const 8332) (call $define_metric (i32.const 2) (i32.const 1184) (i32.const 10) (i32.const 8336)))
    (local.set $id (i32.load (i32.const 8336)))
    (i32.store (i32.const 8340) (call $increment_metric (local.get $id) (i64.const 1)))
    (i32.store (i32.const 8344) (call $get_metric (local.get $id) (i32.const 880)))
    ;; A gauge: define, increment by 0.
    (i32.store (i32.const 8348) (call $define_metric (i32.const 1) (i32.const 1200) (i32.const 11) (i32.const 8352)))
    (i32.store (i32.const 8356) (call $increment_metric (i32.load (i32.const 8352)) (i64.const 0)))
    ;; The body of a call's response, outside any call.
    (i32.store (i32.const 8360) (call $set_buffer (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 1296) (i32.const 2)))
    ;; proxy_http_call: an empty upstream, then an unknown one (timeout 0 both).
    (i32.store (i32.const 8364) (call $http_call (i32.const 1216) (i32.const 0) (i32.const 1344) (i32.const 61)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 880)))
    (i32.store (i32.const 8368) (call $http_call (i32.const 1216) (i32.const 15) (i32.const 1344) (i32.const 61)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 880)))
    ;; proxy_get_log_level: status, level.
    (i32.store (i32.const 8372) (call $get_log_level (i32.const 8376)))
    ;; A foreign function with null result pointers: status; heap before and after (nothing
    ;; allocated); then with a size pointer only: status, size; a pointer only: status.
    (i32.store (i32.const 8384) (global.get $heap))
    (i32.store (i32.const 8380) (call $foreign (i32.const 1232) (i32.const 8) (i32.const 1296) (i32.const 2) (i32.const 0) (i32.const 0)))
    (i32.store (i32.const 8388) (global.get $heap))
    (i32.store (i32.const 8392) (call $foreign (i32.const 1232) (i32.const 8) (i32.const 1296) (i32.const 2) (i32.const 0) (i32.const 8396)))
    (i32.store (i32.const 8400) (call $foreign (i32.const 1232) (i32.const 8) (i32.const 1296) (i32.const 2) (i32.const 8404) (i32.const 0)))
    ;; set_property plugin_name, then get it: status, size.
    (i32.store (i32.const 8408) (call $set_property (i32.const 1136) (i32.const 11) (i32.const 1152) (i32.const 5)))
    (i32.store (i32.const 8412) (call $get_property (i32.const 1136) (i32.const 11) (i32.const 896) (i32.const 8416)))
    ;; An absent header.
    (i32.store (i32.const 8420) (call $get_header (i32.const 0) (i32.const 1056) (i32.const 8) (i32.const 880) (i32.const 884)))
    ;; The request path as the host answers it after the set: up to 16 bytes at 8424.
    (if (i32.eqz (i32.load (i32.const 8232)))
      (then
        (drop (call $get_property (i32.const 1088) (i32.const 12) (i32.const 896) (i32.const 892)))
        (memory.copy (i32.const 8424) (i32.load (i32.const 896))
          (select (i32.load (i32.const 892)) (i32.const 16) (i32.lt_u (i32.load (i32.const 892)) (i32.const 16))))))))
