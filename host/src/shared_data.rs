//! Shared data: one process-wide key/value map per vm_id, with compare-and-swap.
//!
//! As in Envoy: `set` with a non-zero, stale `cas` fails with CAS_MISMATCH; `cas = 0`
//! overwrites; creating a key does not check `cas`. There is no delete and no TTL. Unlike
//! Envoy, what one vm_id may hold is capped, so a module cannot grow the host without bound:
//! its keys' and values' bytes, and its number of keys ([`MAX_ENTRIES_PER_VM`]), since each
//! key costs the host about a hundred bytes besides its own (map slot, allocations, cas).
//!
//! A `set` past a cap fails with `Full`, which the ABI answers INTERNAL_FAILURE. The Rust
//! SDK's `set_shared_data` panics on that status (only OK and CAS_MISMATCH are expected),
//! so an SDK module that fills its namespace traps; the status is kept on purpose: the
//! project's own modules take it as a store failure (rate-limiting's `fault_tolerant`, as
//! Kong with an unreachable store), and answering CAS_MISMATCH instead would make every
//! read-modify-write loop retry until its deadline. Evicting old keys (nginx's shared dict
//! does, under `ngx.shared` pressure) would be the SDK-tolerant alternative; it changes
//! what a full store means to every module, so it is not done silently here.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a `set` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    /// The vm_id's namespace would exceed its byte cap.
    Full,
}

#[derive(Debug, Default)]
struct Namespace {
    entries: HashMap<String, (Vec<u8>, u32)>,
    bytes: usize,
}

/// The process-wide store.
#[derive(Debug)]
pub struct SharedData {
    namespaces: Mutex<HashMap<String, Namespace>>,
    next_cas: Mutex<u32>,
    max_bytes_per_vm: usize,
    max_entries_per_vm: usize,
}

/// The bytes (keys and values) one vm_id may hold unless configured otherwise.
pub const DEFAULT_MAX_BYTES_PER_VM: usize = 64 << 20;
/// The keys one vm_id may hold: with the host's own cost of a key, at most about 100 MiB
/// besides the keys' and values' bytes.
pub const MAX_ENTRIES_PER_VM: usize = 1 << 20;

impl Default for SharedData {
    fn default() -> Self {
        SharedData::new(DEFAULT_MAX_BYTES_PER_VM)
    }
}

impl SharedData {
    pub fn new(max_bytes_per_vm: usize) -> SharedData {
        SharedData {
            namespaces: Mutex::new(HashMap::new()),
            next_cas: Mutex::new(1),
            max_bytes_per_vm,
            max_entries_per_vm: MAX_ENTRIES_PER_VM,
        }
    }

    /// Another cap on the number of keys per vm_id (tests reach it without a million keys).
    pub fn with_max_entries(mut self, max_entries_per_vm: usize) -> SharedData {
        self.max_entries_per_vm = max_entries_per_vm;
        self
    }

    /// The value and its cas, if the key exists.
    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.get(vm_id)?.entries.get(key).cloned()
    }

    pub fn set(&self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let new_cas = {
            let mut next = self.next_cas.lock().unwrap_or_else(|e| e.into_inner());
            let cas = *next;
            *next = next.checked_add(1).unwrap_or(1);
            cas
        };
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let ns = namespaces.entry(vm_id.to_owned()).or_default();
        match ns.entries.get_mut(key) {
            Some((old, old_cas)) => {
                if cas != 0 && cas != *old_cas {
                    return Err(SetError::CasMismatch);
                }
                let bytes = ns.bytes - old.len() + value.len();
                if bytes > self.max_bytes_per_vm {
                    return Err(SetError::Full);
                }
                *old = value.to_vec();
                *old_cas = new_cas;
                ns.bytes = bytes;
            }
            None => {
                let bytes = ns.bytes + key.len() + value.len();
                if bytes > self.max_bytes_per_vm || ns.entries.len() >= self.max_entries_per_vm {
                    return Err(SetError::Full);
                }
                ns.entries.insert(key.to_owned(), (value.to_vec(), new_cas));
                ns.bytes = bytes;
            }
        }
        Ok(())
    }

    /// Every key of a vm_id with its value (for tests and debugging).
    pub fn snapshot(&self, vm_id: &str) -> Vec<(String, Vec<u8>)> {
        let namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries: Vec<(String, Vec<u8>)> = namespaces
            .get(vm_id)
            .map(|ns| {
                ns.entries
                    .iter()
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics() {
        let data = SharedData::default();
        assert_eq!(data.get("vm", "k"), None);
        data.set("vm", "k", b"1", 77).unwrap();
        let (v, cas) = data.get("vm", "k").unwrap();
        assert_eq!(v, b"1");
        assert_eq!(
            data.set("vm", "k", b"2", cas + 1),
            Err(SetError::CasMismatch)
        );
        data.set("vm", "k", b"2", cas).unwrap();
        assert_eq!(data.set("vm", "k", b"3", cas), Err(SetError::CasMismatch));
        data.set("vm", "k", b"4", 0).unwrap();
        assert_eq!(data.get("vm", "k").unwrap().0, b"4");
        assert_eq!(data.get("other", "k"), None);
    }

    #[test]
    fn namespaces_are_capped() {
        let data = SharedData::new(10);
        data.set("vm", "k", b"12345", 0).unwrap();
        assert_eq!(data.set("vm", "k2", b"123456", 0), Err(SetError::Full));
        data.set("vm2", "k2", b"123456", 0).unwrap();
    }

    #[test]
    fn the_number_of_keys_is_capped_per_vm_id() {
        assert_eq!(SharedData::default().max_entries_per_vm, MAX_ENTRIES_PER_VM);
        let data = SharedData::default().with_max_entries(3);
        for key in ["a", "b", "c"] {
            data.set("vm", key, b"", 0).unwrap();
        }
        // At the cap: no new key, but the existing ones still change.
        assert_eq!(data.set("vm", "d", b"", 0), Err(SetError::Full));
        data.set("vm", "a", b"grown", 0).unwrap();
        assert_eq!(data.get("vm", "d"), None);
        data.set("other", "d", b"", 0).unwrap();
    }
}
