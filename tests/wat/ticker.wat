;; Asks for a tick every 10 ms when configured and counts its ticks in the counter `ticks`:
;; how the tests see when a worker's timers run (tests/host/timers.rs,
;; tests/gateway/lifecycle.rs).
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "ticks")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    ;; The metric's id goes to 200, where each tick reads it.
    (drop (call $define (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 200)))
    (drop (call $period (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $increment (i32.load (i32.const 200)) (i64.const 1)))))
