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
//!
//! The store is sharded by (vm_id, key), each shard behind its own lock, so that the
//! workers' requests (rate-limiting reads and writes its counters on every one) do not queue
//! on one process-wide lock, and readers of a shard never wait for each other. A vm_id's caps
//! are counted across its shards with atomics that are only raised after a check against the
//! cap (see [`Usage`]), so they hold exactly whatever the number of writers.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

// Keys come from modules, and a module may key by what a client sends (rate-limiting's
// `limit_by: header`): hashing stays seeded per process, with foldhash rather than SipHash,
// which took three hashes of ~600 instructions on every get and set.
use foldhash::fast::RandomState;

/// Why a `set` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    /// The vm_id's namespace would exceed its byte cap.
    Full,
}

/// What one vm_id holds across every shard.
#[derive(Debug, Default)]
struct Usage {
    bytes: AtomicUsize,
    entries: AtomicUsize,
}

/// Adds `n` to `counter` unless that would pass `cap`. A check-then-add in one atomic step:
/// two writers in two shards cannot both take the last room.
fn reserve(counter: &AtomicUsize, n: usize, cap: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            held.checked_add(n).filter(|total| *total <= cap)
        })
        .is_ok()
}

/// A vm_id's keys in one shard.
#[derive(Debug)]
struct Namespace {
    usage: Arc<Usage>,
    entries: HashMap<String, (Vec<u8>, u32), RandomState>,
}

type Shard = HashMap<String, Namespace, RandomState>;

/// Shards of the store: enough that two workers' keys rarely share one, few enough that a
/// snapshot (tests, debugging) stays cheap.
const SHARDS: usize = 16;

/// The process-wide store.
#[derive(Debug)]
pub struct SharedData {
    shards: [RwLock<Shard>; SHARDS],
    /// Each vm_id's [`Usage`], shared by its namespaces in every shard; looked up only when
    /// a shard sees the vm_id for the first time.
    usage: Mutex<HashMap<String, Arc<Usage>>>,
    /// Picks a key's shard; seeded per process, as the maps' own hashing.
    hasher: RandomState,
    /// The next cas handed out: never 0 (0 means "no cas" to `set`), wrapping to 1.
    next_cas: AtomicU32,
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
            shards: std::array::from_fn(|_| RwLock::default()),
            usage: Mutex::default(),
            hasher: RandomState::default(),
            next_cas: AtomicU32::new(1),
            max_bytes_per_vm,
            max_entries_per_vm: MAX_ENTRIES_PER_VM,
        }
    }

    /// Another cap on the number of keys per vm_id (tests reach it without a million keys).
    pub fn with_max_entries(mut self, max_entries_per_vm: usize) -> SharedData {
        self.max_entries_per_vm = max_entries_per_vm;
        self
    }

    fn shard(&self, vm_id: &str, key: &str) -> &RwLock<Shard> {
        let hash = self.hasher.hash_one((vm_id, key));
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// A fresh cas: unique among the last 2^32 - 1 handed out, and never 0.
    fn next_cas(&self) -> u32 {
        loop {
            let cas = self.next_cas.fetch_add(1, Ordering::Relaxed);
            if cas != 0 {
                return cas;
            }
        }
    }

    /// Runs `f` on the vm_id's namespace in `shard`, made on first use.
    fn with_namespace<R>(
        &self,
        shard: &mut Shard,
        vm_id: &str,
        f: impl FnOnce(&mut Namespace) -> R,
    ) -> R {
        if let Some(namespace) = shard.get_mut(vm_id) {
            return f(namespace);
        }
        let usage = Arc::clone(
            self.usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(vm_id.to_owned())
                .or_default(),
        );
        f(shard.entry(vm_id.to_owned()).or_insert(Namespace {
            usage,
            entries: HashMap::default(),
        }))
    }

    /// The value and its cas, if the key exists.
    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let shard = self
            .shard(vm_id, key)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        shard.get(vm_id)?.entries.get(key).cloned()
    }

    pub fn set(&self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let mut shard = self
            .shard(vm_id, key)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        self.with_namespace(&mut shard, vm_id, |ns| {
            let usage = &ns.usage;
            match ns.entries.get_mut(key) {
                Some((old, old_cas)) => {
                    if cas != 0 && cas != *old_cas {
                        return Err(SetError::CasMismatch);
                    }
                    // The key's old value is stable under the shard's write lock, so its
                    // bytes can be given back (or more taken) after the fact.
                    if value.len() > old.len()
                        && !reserve(&usage.bytes, value.len() - old.len(), self.max_bytes_per_vm)
                    {
                        return Err(SetError::Full);
                    }
                    if value.len() < old.len() {
                        usage
                            .bytes
                            .fetch_sub(old.len() - value.len(), Ordering::Relaxed);
                    }
                    // A value is held in its own length, not the capacity of a longer
                    // one it replaced: what the cap counts is what the host holds.
                    if old.len() == value.len() {
                        old.copy_from_slice(value);
                    } else {
                        *old = value.to_vec();
                    }
                    *old_cas = self.next_cas();
                }
                None => {
                    if !reserve(&usage.entries, 1, self.max_entries_per_vm) {
                        return Err(SetError::Full);
                    }
                    if !reserve(&usage.bytes, key.len() + value.len(), self.max_bytes_per_vm) {
                        usage.entries.fetch_sub(1, Ordering::Relaxed);
                        return Err(SetError::Full);
                    }
                    ns.entries
                        .insert(key.to_owned(), (value.to_vec(), self.next_cas()));
                }
            }
            Ok(())
        })
    }

    /// Every key of a vm_id with its value (for tests and debugging).
    pub fn snapshot(&self, vm_id: &str) -> Vec<(String, Vec<u8>)> {
        let mut entries = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(ns) = shard.get(vm_id) {
                entries.extend(ns.entries.iter().map(|(k, (v, _))| (k.clone(), v.clone())));
            }
        }
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

    /// Workers incrementing one counter with get + set(cas), as rate-limiting does: every
    /// increment lands once, none is lost to a stale cas, and no cas is 0.
    #[test]
    fn concurrent_read_modify_writes_lose_no_update() {
        const THREADS: u64 = 4;
        const EACH: u64 = 2000;
        let data = SharedData::default();
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for _ in 0..EACH {
                        loop {
                            let (count, cas) = match data.get("vm", "counter") {
                                Some((v, cas)) => {
                                    assert_ne!(cas, 0);
                                    (u64::from_le_bytes(v.try_into().unwrap()), cas)
                                }
                                None => (0, 0),
                            };
                            // The key's creation ignores cas: a second creator would
                            // overwrite the first, so creating it is done once, below.
                            if cas == 0 {
                                std::thread::yield_now();
                                continue;
                            }
                            match data.set("vm", "counter", &(count + 1).to_le_bytes(), cas) {
                                Ok(()) => break,
                                Err(SetError::CasMismatch) => continue,
                                Err(SetError::Full) => panic!("full"),
                            }
                        }
                    }
                });
            }
            data.set("vm", "counter", &0u64.to_le_bytes(), 0).unwrap();
        });
        let (v, _) = data.get("vm", "counter").unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), THREADS * EACH);
    }

    #[test]
    fn cas_values_wrap_past_u32_max_to_1_never_0() {
        let data = SharedData::default();
        data.next_cas.store(u32::MAX, Ordering::Relaxed);
        data.set("vm", "k", b"1", 0).unwrap();
        let (_, cas) = data.get("vm", "k").unwrap();
        assert_eq!(cas, u32::MAX);
        data.set("vm", "k", b"2", cas).unwrap();
        let (_, cas) = data.get("vm", "k").unwrap();
        assert_eq!(cas, 1);
        // A stale cas from before the wrap still fails.
        assert_eq!(
            data.set("vm", "k", b"3", u32::MAX),
            Err(SetError::CasMismatch)
        );
    }

    /// Writers on every shard at once: the caps are one per vm_id, not per shard, and hold
    /// exactly (no more succeeds than fits; everything that fits succeeds).
    #[test]
    fn caps_hold_exactly_under_concurrent_writers_across_shards() {
        const THREADS: usize = 4;
        // 40 keys of 10 bytes each (key 4 + value 6) per thread.
        let by_keys = SharedData::default().with_max_entries(50);
        let by_bytes = SharedData::new(505);
        for data in [&by_keys, &by_bytes] {
            let stored = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for thread in 0..THREADS {
                    let (data, stored) = (&data, &stored);
                    scope.spawn(move || {
                        for i in 0..40 {
                            match data.set("vm", &format!("{thread}{i:03}"), b"abcdef", 0) {
                                Ok(()) => {
                                    stored.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => assert_eq!(e, SetError::Full),
                            }
                        }
                    });
                }
            });
            assert_eq!(data.snapshot("vm").len(), stored.load(Ordering::Relaxed));
        }
        assert_eq!(by_keys.snapshot("vm").len(), 50);
        assert_eq!(by_bytes.snapshot("vm").len(), 50);

        // Values growing in every shard race for the last 5 bytes: 20 keys (each thread its
        // own 5) each try to take 1 more; exactly 5 grow.
        let grown = std::sync::atomic::AtomicUsize::new(0);
        let keys: Vec<String> = by_bytes
            .snapshot("vm")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        std::thread::scope(|scope| {
            for own in keys.chunks(5).take(THREADS) {
                let (grown, data) = (&grown, &by_bytes);
                scope.spawn(move || {
                    for key in own {
                        let (mut value, cas) = data.get("vm", key).unwrap();
                        value.push(b'+');
                        if data.set("vm", key, &value, cas).is_ok() {
                            grown.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let held: usize = by_bytes
            .snapshot("vm")
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert_eq!(held, 505);
        assert_eq!(grown.load(Ordering::Relaxed), 5);
        // Shrinking gives the bytes back.
        by_bytes.set("vm", &keys[0], b"", 0).unwrap();
        by_bytes.set("vm", "new", b"abc", 0).unwrap();
    }
}
