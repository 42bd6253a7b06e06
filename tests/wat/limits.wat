;; Reaches each bound the host puts on what a module makes it hold (#13 item 7, review 29/30):
;; a loop calls one host function until it is refused, then answers a local response 200
;; whose body is [successes u32][status of the refused call u32][extra u32] (tests/host/limits.rs).
;; Request header `x-op` (its first byte) picks the loop:
;;   'b' request body: emptied, then 64 KiB appends (in on_request_body);
;;   'h' header map: emptied, then adds of `x-a: v`;
;;   'H' header map: emptied, `x-big` replaced by a value that fills 1 MiB exactly, then an add;
;;   'c' http calls without a body;   'C' http calls with a 64 KiB body;
;;   'p' set_property of distinct names;
;;   'q' 10,001 enqueues on one queue (extra: the first item dequeued);
;;   'r' registrations of distinct queues;  'R' a queue name of 1025 bytes (status only);
;;   'm' definitions of distinct metrics;   'M' a metric name of 1025 bytes (status only).
(module
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  ;; 20 pages: 1 MiB of value at 65536, the heap above it.
  (memory (export "memory") 20)
  (global $heap (mut i32) (i32.const 1179648))
  (global $op (mut i32) (i32.const 0))

  (data (i32.const 1024) "x-op")   ;; 4
  (data (i32.const 1040) "x-a")    ;; 3
  (data (i32.const 1056) "v")      ;; 1
  (data (i32.const 1072) "x-big")  ;; 5
  (data (i32.const 1088) "up")     ;; 2
  (data (i32.const 1104) "q")      ;; 1
  ;; Header pairs :method GET, :path /, :authority x (61 bytes).
  (data (i32.const 1152)
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
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  (func (export "proxy_on_queue_ready") (param i32 i32))

  ;; Two printable bytes for $i < 4096 at $at: names stay distinct as text.
  (func $name (param $at i32) (param $i i32)
    (i32.store8 (local.get $at) (i32.add (i32.and (local.get $i) (i32.const 63)) (i32.const 64)))
    (i32.store8 (i32.add (local.get $at) (i32.const 1)) (i32.add (i32.shr_u (local.get $i) (i32.const 6)) (i32.const 64))))

  (func $report (param $count i32) (param $status i32) (param $extra i32) (result i32)
    (i32.store (i32.const 2048) (local.get $count))
    (i32.store (i32.const 2052) (local.get $status))
    (i32.store (i32.const 2056) (local.get $extra))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 2048) (i32.const 12) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $i i32)
    (local $s i32)
    (global.set $heap (i32.const 1179648))
    (global.set $op (i32.const 0))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 900) (i32.const 904)))
      (then (global.set $op (i32.load8_u (i32.load (i32.const 900))))))
    (if (i32.eq (global.get $op) (i32.const 98)) (then (return (i32.const 0)))) ;; 'b': the body callback
    (if (i32.eq (global.get $op) (i32.const 104)) ;; 'h'
      (then
        (drop (call $set_pairs (i32.const 0) (i32.const 0) (i32.const 0)))
        (loop $l
          (local.set $s (call $add_header (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 1056) (i32.const 1)))
          (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
        (return (call $report (local.get $i) (local.get $s) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 72)) ;; 'H': 4 + (8 + 5 + 2) + value = 1 MiB
      (then
        (drop (call $set_pairs (i32.const 0) (i32.const 0) (i32.const 0)))
        (local.set $i (call $replace_header (i32.const 0) (i32.const 1072) (i32.const 5) (i32.const 65536) (i32.const 1048557)))
        (local.set $s (call $add_header (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 1056) (i32.const 0)))
        ;; Replacing it with as much again still fits.
        (return (call $report (local.get $i) (local.get $s)
          (call $replace_header (i32.const 0) (i32.const 1072) (i32.const 5) (i32.const 65536) (i32.const 1048557))))))
    (if (i32.or (i32.eq (global.get $op) (i32.const 99)) (i32.eq (global.get $op) (i32.const 67))) ;; 'c' 'C'
      (then
        (loop $l
          (local.set $s (call $http_call (i32.const 1088) (i32.const 2) (i32.const 1152) (i32.const 61)
            (i32.const 65536) (select (i32.const 65536) (i32.const 0) (i32.eq (global.get $op) (i32.const 67)))
            (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 908)))
          (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
        (return (call $report (local.get $i) (local.get $s) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 112)) ;; 'p'
      (then
        (loop $l
          (call $name (i32.const 1200) (local.get $i))
          (local.set $s (call $set_property (i32.const 1200) (i32.const 2) (i32.const 1056) (i32.const 1)))
          (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
        (return (call $report (local.get $i) (local.get $s) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 113)) ;; 'q'
      (then
        (drop (call $register (i32.const 1104) (i32.const 1) (i32.const 912)))
        (loop $l
          (i32.store (i32.const 1208) (local.get $i))
          (local.set $s (call $enqueue (i32.load (i32.const 912)) (i32.const 1208) (i32.const 4)))
          (if (i32.eqz (local.get $s))
            (then
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (local.get $i) (i32.const 10001))))))
        (drop (call $dequeue (i32.load (i32.const 912)) (i32.const 916) (i32.const 920)))
        (return (call $report (local.get $i) (local.get $s) (i32.load (i32.load (i32.const 916)))))))
    (if (i32.eq (global.get $op) (i32.const 114)) ;; 'r'
      (then
        (loop $l
          (call $name (i32.const 1216) (local.get $i))
          (local.set $s (call $register (i32.const 1216) (i32.const 2) (i32.const 912)))
          (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
        (return (call $report (local.get $i) (local.get $s) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 82)) ;; 'R'
      (then
        (return (call $report (i32.const 0) (call $register (i32.const 65536) (i32.const 1025) (i32.const 912)) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 109)) ;; 'm'
      (then
        (loop $l
          (call $name (i32.const 1224) (local.get $i))
          (local.set $s (call $define_metric (i32.const 1) (i32.const 1224) (i32.const 2) (i32.const 912)))
          (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
        (return (call $report (local.get $i) (local.get $s) (i32.const 0)))))
    (if (i32.eq (global.get $op) (i32.const 77)) ;; 'M'
      (then
        (return (call $report (i32.const 0) (call $define_metric (i32.const 1) (i32.const 65536) (i32.const 1025) (i32.const 912)) (i32.const 0)))))
    (i32.const 0))

  ;; 'b': the body emptied, then 64 KiB appends until refused, then a 1-byte append.
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (local $i i32)
    (local $s i32)
    (if (i32.ne (global.get $op) (i32.const 98)) (then (return (i32.const 0))))
    (drop (call $set_buffer (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0)))
    (loop $l
      (local.set $s (call $set_buffer (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 65536) (i32.const 65536)))
      (if (i32.eqz (local.get $s)) (then (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
    (call $report (local.get $i) (local.get $s)
      (call $set_buffer (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 65536) (i32.const 1)))))
