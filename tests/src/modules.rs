//! Hand-written WAT modules that tests of the in-process host and of the gateway share: the
//! same module is the same check on both.

/// A module that pauses its stream in `{callback}` and, from `on_tick` with
/// `proxy_set_effective_context` to that stream, adds `x-from-tick: added` to map `{map}`,
/// reads it back into `x-read-back`, resumes stream direction `{stream}`, then tries to add
/// `x-late` and logs that status as `late: N`.
pub fn edits_from_tick(callback: &str, map: u32, stream: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $waiting (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "x-from-tick")
  (data (i32.const 120) "added")
  (data (i32.const 140) "x-read-back")
  (data (i32.const 160) "x-late")
  (data (i32.const 180) "late: ")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 100)))
    (i32.const 1))
  (func (export "{callback}") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $waiting (local.get $ctx))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $waiting)
      (then
        (drop (call $effective (global.get $waiting)))
        (drop (call $add (i32.const {map}) (i32.const 100) (i32.const 11) (i32.const 120) (i32.const 5)))
        (if (i32.eqz (call $get (i32.const {map}) (i32.const 100) (i32.const 11) (i32.const 300) (i32.const 304)))
          (then (drop (call $add (i32.const {map}) (i32.const 140) (i32.const 11)
            (i32.load (i32.const 300)) (i32.load (i32.const 304))))))
        (drop (call $continue (i32.const {stream})))
        (i32.store8 (i32.const 186) (i32.add (i32.const 48)
          (call $add (i32.const {map}) (i32.const 160) (i32.const 6) (i32.const 120) (i32.const 5))))
        (drop (call $log (i32.const 2) (i32.const 180) (i32.const 7)))
        (global.set $waiting (i32.const 0))))))"#
    ))
    .expect("WAT")
}
