//! Check-and-count in proxy-wasm shared data: atomic across every worker thread of a proxy.
//!
//! A request reads its identifier's counters with their CAS token, decides, and (when allowed)
//! writes the incremented counters back with that token; a `CasMismatch` means another worker
//! counted in between, so it reads and decides again, at most [`MAX_ATTEMPTS`] times.
//!
//! Envoy does not check the CAS when a key does not exist yet (proxy-wasm-cpp-host
//! `SharedData::set`): two workers that both read "missing" and both write with CAS 0 would
//! both succeed, and the second write would erase the first one's count. So a key is created
//! with the CAS [`CREATE_CAS`] instead of 0: on a missing key the host ignores it and creates
//! the key; on a key another worker has created meanwhile it does not match (the host hands
//! out CAS values from a process-wide counter that starts at 1, so an existing key holds
//! `u32::MAX` only after four billion writes, and only then at the exact moment of a race),
//! and the creation fails with `CasMismatch` like any other race. On a host that does check
//! the CAS of missing keys (and refuses the creation while the key is still missing), the
//! next attempt creates with CAS 0.
//!
//! Keys, per plugin instance (`scope`: Envoy's plugin name and a fingerprint of the
//! configuration, within the VM's shared data); shared data has no delete and no TTL, so the key space
//! is bounded by design:
//! - `<scope>|=<identifier>`: the counters of one identifier, at most `max_identifiers` keys
//!   (identifiers longer than [`MAX_IDENTIFIER_LEN`] bytes are replaced by a 128-bit hash);
//! - `<scope>|#ids`: how many identifier keys have been created;
//! - `<scope>|*<n>`: [`OVERFLOW_BUCKETS`] shared buckets. Once `max_identifiers` identifiers
//!   have a key, a new identifier is counted in the bucket its hash picks, under the same
//!   limits: the limits are never loosened, at worst identifiers in one bucket share a budget.

use crate::config::Config;
use crate::counters::{evaluate, Counters, Evaluation};

/// Attempts of the read-decide-write loop before the store counts as failing.
pub const MAX_ATTEMPTS: u32 = 64;
/// The CAS a key is created with (see the module docs).
pub const CREATE_CAS: u32 = u32::MAX;
/// Identifiers up to this length are keys as they are; longer ones are hashed.
pub const MAX_IDENTIFIER_LEN: usize = 64;
/// Shared buckets for the identifiers past `max_identifiers`.
pub const OVERFLOW_BUCKETS: u64 = 1024;

/// Why a write did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// The key changed since it was read.
    CasMismatch,
    /// Any other host status.
    Failed(u32),
}

/// proxy-wasm shared data as the host offers it.
pub trait Store {
    /// The value and CAS token of a key; `Ok(None)` when the key does not exist. An `Err` is
    /// the host's status.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, u32>;
    /// Writes a key if its CAS is still `cas` (0: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;
}

/// The outcome of counting one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Counted {
    /// The request is allowed and counted, or rejected and not counted (`stop` is set).
    Decided(Evaluation),
    /// The store failed or kept changing for [`MAX_ATTEMPTS`] attempts.
    Failed(String),
}

/// The key of an identifier's counters.
pub fn identifier_key(scope: &str, identifier: &str) -> String {
    if identifier.len() <= MAX_IDENTIFIER_LEN {
        format!("{scope}|={identifier}")
    } else {
        let (a, b) = hash128(identifier.as_bytes());
        let mut key = format!("{scope}|=#");
        push_hex(&mut key, a);
        push_hex(&mut key, b);
        key
    }
}

fn ids_key(scope: &str) -> String {
    format!("{scope}|#ids")
}

fn overflow_key(scope: &str, identifier: &str) -> String {
    let (a, _) = hash128(identifier.as_bytes());
    format!("{scope}|*{}", a % OVERFLOW_BUCKETS)
}

/// 16 hex digits of a 64-bit FNV-1a hash (a plugin configuration's fingerprint).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(16);
    push_hex(&mut out, hash128(bytes).0);
    out
}

fn push_hex(out: &mut String, word: u64) {
    for shift in (0..16).rev() {
        out.push(char::from(
            b"0123456789abcdef"[(word >> (shift * 4)) as usize & 15],
        ));
    }
}

/// Two FNV-1a 64 hashes with different offset bases (stable across VMs and builds).
fn hash128(bytes: &[u8]) -> (u64, u64) {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ u64::from(byte)).wrapping_mul(PRIME);
        b = (b ^ u64::from(byte)).wrapping_mul(PRIME).rotate_left(5);
    }
    (a, b)
}

/// Checks and counts one request of `identifier` at the time `now_ms()` gives (read again on
/// every attempt).
pub fn check_and_count(
    store: &dyn Store,
    config: &Config,
    scope: &str,
    identifier: &str,
    now_ms: &mut dyn FnMut() -> i64,
) -> Counted {
    let mut key = identifier_key(scope, identifier);
    // Counting in an overflow bucket: no identifier slot needed.
    let mut overflow = false;
    // Whether this request may create the identifier's key (a slot was reserved for it).
    let mut reserved = false;
    // Creation was refused while the key stayed missing: the host checks the CAS of new keys.
    let mut create_refused = false;
    for _ in 0..MAX_ATTEMPTS {
        let (stored, cas, creating) = match store.get(&key) {
            Ok(Some((bytes, cas))) => (Counters::decode(&bytes), cas, false),
            Ok(None) => {
                if !reserved && !overflow {
                    match reserve_identifier(store, scope, config.max_identifiers) {
                        Ok(true) => reserved = true,
                        Ok(false) => {
                            key = overflow_key(scope, identifier);
                            overflow = true;
                            continue;
                        }
                        Err(message) => return Counted::Failed(message),
                    }
                }
                let cas = if create_refused { 0 } else { CREATE_CAS };
                (Counters::default(), cas, true)
            }
            Err(status) => {
                return Counted::Failed(format!("reading \"{key}\": host status {status}"));
            }
        };
        let eval = evaluate(config, &stored, now_ms());
        if eval.stop.is_some() {
            return Counted::Decided(eval);
        }
        match store.set(&key, &eval.next.encode(), cas) {
            Ok(()) => return Counted::Decided(eval),
            Err(SetError::CasMismatch) => create_refused |= creating,
            Err(SetError::Failed(status)) => {
                return Counted::Failed(format!("writing \"{key}\": host status {status}"));
            }
        }
    }
    Counted::Failed(format!(
        "\"{key}\" kept changing for {MAX_ATTEMPTS} attempts"
    ))
}

/// Takes one of the `max` identifier keys; `Ok(false)` when all are taken.
fn reserve_identifier(store: &dyn Store, scope: &str, max: u64) -> Result<bool, String> {
    let key = ids_key(scope);
    let mut create_cas = CREATE_CAS;
    for _ in 0..MAX_ATTEMPTS {
        let (count, cas) = match store.get(&key) {
            Ok(Some((bytes, cas))) => {
                let mut word = [0u8; 8];
                let n = bytes.len().min(8);
                word[..n].copy_from_slice(&bytes[..n]);
                (u64::from_le_bytes(word), cas)
            }
            Ok(None) => (0, create_cas),
            Err(status) => return Err(format!("reading \"{key}\": host status {status}")),
        };
        if count >= max {
            return Ok(false);
        }
        match store.set(&key, &(count + 1).to_le_bytes(), cas) {
            Ok(()) => return Ok(true),
            Err(SetError::CasMismatch) => {
                if cas == create_cas {
                    create_cas = 0;
                }
            }
            Err(SetError::Failed(status)) => {
                return Err(format!("writing \"{key}\": host status {status}"));
            }
        }
    }
    Err(format!(
        "\"{key}\" kept changing for {MAX_ATTEMPTS} attempts"
    ))
}

/// Shared data with Envoy's semantics, in memory: for native tests and in-process hosts.
#[cfg(not(target_arch = "wasm32"))]
pub mod memory {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::{SetError, Store};

    /// Key → (value, CAS), and the next CAS.
    type Data = (HashMap<String, (Vec<u8>, u32)>, u32);

    /// proxy-wasm-cpp-host's `SharedData`: CAS values from one counter starting at 1 (0 is
    /// skipped), a CAS of 0 always writes, and the CAS is not checked when the key is missing.
    #[derive(Default)]
    pub struct MemoryStore {
        inner: Mutex<Data>,
        /// Check the CAS of missing keys too (a stricter host).
        pub strict_create: bool,
    }

    impl MemoryStore {
        /// A store that also checks the CAS of missing keys (a stricter host than Envoy).
        pub fn strict() -> MemoryStore {
            MemoryStore {
                strict_create: true,
                ..MemoryStore::default()
            }
        }

        pub fn keys(&self) -> usize {
            self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
        }
    }

    impl Store for MemoryStore {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
            let guard = self.inner.lock().map_err(|_| 10u32)?;
            Ok(guard.0.get(key).cloned())
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
            let mut guard = self.inner.lock().map_err(|_| SetError::Failed(10))?;
            let (map, next) = &mut *guard;
            if *next == 0 {
                *next = 1;
            }
            match map.get(key) {
                Some((_, current)) if cas != 0 && cas != *current => {
                    return Err(SetError::CasMismatch)
                }
                None if self.strict_create && cas != 0 => return Err(SetError::CasMismatch),
                _ => {}
            }
            let token = *next;
            *next = next.wrapping_add(1);
            if *next == 0 {
                *next = 1;
            }
            map.insert(key.to_owned(), (value.to_vec(), token));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::memory::MemoryStore;
    use super::*;
    use crate::Period;

    const T0_MS: i64 = 1_709_208_000_000;

    fn allowed(counted: &Counted) -> bool {
        matches!(counted, Counted::Decided(e) if e.stop.is_none())
    }

    fn second(limit: f64) -> Config {
        Config::with_limits(&[(Period::Second, limit)])
    }

    #[test]
    fn counts_up_to_the_limit_in_one_key() {
        let store = MemoryStore::default();
        let config = second(3.0);
        let results: Vec<bool> = (0..5)
            .map(|_| {
                allowed(&check_and_count(
                    &store,
                    &config,
                    "s",
                    "1.2.3.4",
                    &mut || T0_MS,
                ))
            })
            .collect();
        assert_eq!(results, [true, true, true, false, false]);
        // One identifier key plus the identifier count.
        assert_eq!(store.keys(), 2);
        // The key stays the same in every later window.
        assert!(allowed(&check_and_count(
            &store,
            &config,
            "s",
            "1.2.3.4",
            &mut || T0_MS + 5_000
        )));
        assert_eq!(store.keys(), 2);
    }

    #[test]
    fn identifiers_and_scopes_have_their_own_budgets() {
        let store = MemoryStore::default();
        let config = second(1.0);
        let mut now = || T0_MS;
        assert!(allowed(&check_and_count(
            &store, &config, "a", "x", &mut now
        )));
        assert!(allowed(&check_and_count(
            &store, &config, "a", "y", &mut now
        )));
        assert!(allowed(&check_and_count(
            &store, &config, "b", "x", &mut now
        )));
        assert!(!allowed(&check_and_count(
            &store, &config, "a", "x", &mut now
        )));
    }

    /// A store where another worker creates the key between our read and our write: the very
    /// race Envoy does not guard against.
    struct RacingCreate {
        inner: MemoryStore,
        raced: Cell<bool>,
    }

    impl Store for RacingCreate {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
            let got = self.inner.get(key)?;
            if got.is_none() && key.contains("|=") && !self.raced.replace(true) {
                // The other worker reads "missing" too, and creates the key with its count.
                let config = second(2.0);
                let theirs = evaluate(&config, &Counters::default(), T0_MS);
                self.inner
                    .set(key, &theirs.next.encode(), CREATE_CAS)
                    .map_err(|_| 10u32)?;
            }
            Ok(got)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_racing_creation_is_not_overwritten() {
        let store = RacingCreate {
            inner: MemoryStore::default(),
            raced: Cell::new(false),
        };
        let config = second(2.0);
        // The other worker's request took the first slot: we get the second, then the limit.
        assert!(allowed(&check_and_count(
            &store,
            &config,
            "s",
            "id",
            &mut || T0_MS
        )));
        assert!(!allowed(&check_and_count(
            &store,
            &config,
            "s",
            "id",
            &mut || T0_MS
        )));
        // With CAS 0 on creation (the naive way), our write would have erased theirs.
        let key = identifier_key("s", "id");
        let (bytes, _) = store.inner.get(&key).unwrap().unwrap();
        assert_eq!(
            Counters::decode(&bytes).get(Period::Second).unwrap().count,
            2
        );
    }

    #[test]
    fn a_host_that_checks_cas_on_creation_still_works() {
        let store = MemoryStore::strict();
        let config = second(2.0);
        let mut now = || T0_MS;
        assert!(allowed(&check_and_count(
            &store, &config, "s", "id", &mut now
        )));
        assert!(allowed(&check_and_count(
            &store, &config, "s", "id", &mut now
        )));
        assert!(!allowed(&check_and_count(
            &store, &config, "s", "id", &mut now
        )));
    }

    #[test]
    fn identifiers_past_the_cap_share_hashed_buckets() {
        let store = MemoryStore::default();
        let mut config = second(1.0);
        config.max_identifiers = 2;
        let mut now = || T0_MS;
        for id in ["a", "b"] {
            assert!(allowed(&check_and_count(
                &store, &config, "s", id, &mut now
            )));
        }
        // "c" is over the cap: counted in its overflow bucket, still limited.
        assert!(allowed(&check_and_count(
            &store, &config, "s", "c", &mut now
        )));
        assert!(!allowed(&check_and_count(
            &store, &config, "s", "c", &mut now
        )));
        assert!(store.get(&identifier_key("s", "c")).unwrap().is_none());
        assert!(store.get(&overflow_key("s", "c")).unwrap().is_some());
        // Known identifiers keep their own keys.
        assert!(!allowed(&check_and_count(
            &store, &config, "s", "a", &mut now
        )));
        assert!(allowed(&check_and_count(
            &store,
            &config,
            "s",
            "a",
            &mut || T0_MS + 1000
        )));
        // The key space is bounded: 2 identifiers + the count + at most OVERFLOW_BUCKETS.
        for i in 0..5000 {
            check_and_count(&store, &config, "s", &format!("id-{i}"), &mut now);
        }
        assert!(
            store.keys() as u64 <= 3 + OVERFLOW_BUCKETS,
            "{}",
            store.keys()
        );
    }

    #[test]
    fn long_identifiers_are_hashed() {
        let long = "k".repeat(5000);
        let key = identifier_key("s", &long);
        assert_eq!(key.len(), "s|=#".len() + 32);
        assert_ne!(key, identifier_key("s", &format!("{long}x")));
        assert_eq!(identifier_key("s", "10.0.0.1"), "s|=10.0.0.1");
    }

    /// A store whose writes always lose the race, or that fails.
    struct Broken {
        inner: MemoryStore,
        fail_get: bool,
    }

    impl Store for Broken {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
            if self.fail_get {
                return Err(10);
            }
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
            if key.ends_with("#ids") {
                return self.inner.set(key, value, cas);
            }
            Err(SetError::CasMismatch)
        }
    }

    #[test]
    fn a_store_that_fails_or_keeps_changing_is_reported() {
        let config = second(5.0);
        let failing = Broken {
            inner: MemoryStore::default(),
            fail_get: true,
        };
        let Counted::Failed(message) = check_and_count(&failing, &config, "s", "x", &mut || T0_MS)
        else {
            panic!("must fail")
        };
        assert!(message.contains("host status 10"), "{message}");
        let contended = Broken {
            inner: MemoryStore::default(),
            fail_get: false,
        };
        let clock_reads = RefCell::new(0);
        let Counted::Failed(message) = check_and_count(&contended, &config, "s", "x", &mut || {
            *clock_reads.borrow_mut() += 1;
            T0_MS
        }) else {
            panic!("must fail")
        };
        assert!(message.contains("kept changing"), "{message}");
        assert_eq!(*clock_reads.borrow(), MAX_ATTEMPTS as usize);
    }

    /// Many threads at once against a store with Envoy's semantics: exactly the limit is
    /// admitted per window, for one identifier and for several.
    #[test]
    fn threads_never_over_admit() {
        for identifiers in [1usize, 5] {
            let store = Arc::new(MemoryStore::default());
            let config = Arc::new(second(100.0));
            let admitted: Arc<Vec<AtomicUsize>> =
                Arc::new((0..identifiers).map(|_| AtomicUsize::new(0)).collect());
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (store, config, admitted, barrier) = (
                        Arc::clone(&store),
                        Arc::clone(&config),
                        Arc::clone(&admitted),
                        Arc::clone(&barrier),
                    );
                    std::thread::spawn(move || {
                        barrier.wait();
                        for i in 0..400 {
                            let id = (t + i) % identifiers;
                            let counted = check_and_count(
                                &*store,
                                &config,
                                "s",
                                &format!("id-{id}"),
                                &mut || T0_MS,
                            );
                            if allowed(&counted) {
                                admitted[id].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            for (id, n) in admitted.iter().enumerate() {
                assert_eq!(
                    n.load(Ordering::Relaxed),
                    100,
                    "identifier {id} of {identifiers}"
                );
            }
        }
    }
}
