//! Check-and-count in proxy-wasm shared data: atomic across every worker thread of a proxy,
//! in a fixed amount of memory that cleans itself.
//!
//! # Layout
//!
//! Shared data has no delete and no TTL, so keys never name a window or an identifier. Per
//! plugin instance (`scope`: `rate-limiting|<plugin_name>`, see [`crate::Limiter::new`]) there
//! is a fixed table of `ceil(max_identifiers / 8)` bucket keys `<scope>|<n>`, created when
//! first used. A bucket's value holds up to [`BUCKET_ENTRIES`] identifiers, each as its owner
//! (a keyed 128-bit hash of the identifier, [`crate::siphash`]), the time of its last counted
//! request and the counters of every configured window ([`Bucket`]). The identifier's hash
//! also picks its bucket. The hash key is drawn at random once per process and shared by all
//! worker VMs through the key [`HASH_KEY_KEY`] ([`hash_key`]): without it nobody can pick
//! identifiers that fall into a given client's bucket.
//!
//! # Decisions
//!
//! A request reads its bucket with its CAS token, finds its identifier there (or makes room
//! for it), decides, and when allowed writes the whole bucket back with that token; a
//! `CasMismatch` means another worker changed the bucket in between, so it reads and decides
//! again, at most [`MAX_ATTEMPTS`] times. Finding, claiming and evicting happen on one value
//! under one CAS, so an identifier never holds two entries and never loses a race to itself.
//! Making room, in this order:
//! - entries whose windows are all over ([`crate::counters::is_stale`]) are dropped on every
//!   write: an idle identifier frees its entry and its memory;
//! - a new identifier takes a free entry of its bucket;
//! - when all of them are live, the least recently counted identifier of the bucket is
//!   evicted and loses its count (Kong's shared-memory LRU does the same under pressure). The
//!   eviction is reported ([`Counted::Decided`]), and the adapter counts it in a metric.
//!
//! So a new identifier's first request in a window is never refused because of other
//! clients, and the memory of an instance is bounded by the table: `max_identifiers` entries
//! of at most 25 + 25 × windows bytes (see [`Bucket`]). The bound is per bucket, so a bucket
//! can fill before the table does: with the default 10,000, the first eviction came after
//! 2,200 to 3,000 live identifiers, and 10,000 live identifiers evicted about 1,400 of each
//! other (`evictions_start_when_buckets_fill`). One bucket per identifier is what keeps the
//! count exact: an identifier that could be in two keys could also be claimed twice.
//!
//! # Creating keys
//!
//! Envoy does not check the CAS when a key does not exist yet (proxy-wasm-cpp-host
//! `SharedData::set`): two workers that both read "missing" and both write with CAS 0 would
//! both succeed, and the second write would erase the first one's count. So a key is created
//! with the CAS [`CREATE_CAS`] instead of 0: on a missing key the host ignores it and creates
//! the key; on a key another worker has created meanwhile it does not match, and the
//! creation fails with `CasMismatch` like any other race. The host hands out CAS values from
//! one process-wide counter that starts at 1 and wraps, so a key holds `u32::MAX` once every
//! 2³² writes of the process; only a creation racing at that very write overwrites (one
//! count, or the hash key of one worker). At 100,000 writes per second that is possible once
//! every 12 hours and needs a creation race at that moment: a known bound, not an
//! impossibility. On a host that does check the CAS of missing keys (and refuses the creation
//! while the key is still missing), the next attempt creates with CAS 0.

use crate::config::Config;
use crate::counters::{evaluate, is_stale, Counters, Evaluation, Window};
use crate::siphash::SipKey;
use crate::Period;

/// Attempts of the read-decide-write loop before the request passes uncounted.
pub const MAX_ATTEMPTS: u32 = 64;
/// The CAS a key is created with (see the module docs).
pub const CREATE_CAS: u32 = u32::MAX;
/// Identifiers one bucket holds at most.
pub const BUCKET_ENTRIES: u64 = 8;
/// Where the process's identifier hash key lives, in the VM's shared data.
pub const HASH_KEY_KEY: &[u8] = b"rate-limiting|#siphash-key";

/// Why a write did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// The key changed since it was read.
    CasMismatch,
    /// Any other host status.
    Failed(u32),
}

/// proxy-wasm shared data as the host offers it. Keys are bytes, as in the ABI.
pub trait Store {
    /// The value and CAS token of a key; `Ok(None)` when the key does not exist. An `Err` is
    /// the host's status.
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32>;
    /// Writes a key if its CAS is still `cas` (0: unconditionally).
    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), SetError>;
}

/// One identifier in a bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The keyed hash of the identifier (and of where it comes from).
    pub owner: u128,
    /// Unix milliseconds of its last counted request: the least recent is evicted first.
    pub last_use_ms: i64,
    pub counters: Counters,
}

/// The identifiers of one bucket key, as stored.
///
/// `[version 2][entries u8]` then per entry `[owner u128][last use i64][windows u8]` and per
/// window `[period u8][start i64][count u64][previous u64]`, little-endian: 25 + 25 × windows
/// bytes an entry, at most 2 + 8 × 175 = 1,402 bytes a bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub entries: Vec<Entry>,
}

const VERSION: u8 = 2;
const ENTRY_HEAD: usize = 16 + 8 + 1;
const WINDOW: usize = 1 + 8 + 8 + 8;

/// Reads the stored format front to back; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

impl Bucket {
    pub fn encode(&self) -> Vec<u8> {
        let windows: usize = self.entries.iter().map(|e| e.counters.windows.len()).sum();
        let mut out = Vec::with_capacity(2 + self.entries.len() * ENTRY_HEAD + windows * WINDOW);
        out.push(VERSION);
        out.push(self.entries.len().min(usize::from(u8::MAX)) as u8);
        for entry in self.entries.iter().take(usize::from(u8::MAX)) {
            out.extend_from_slice(&entry.owner.to_le_bytes());
            out.extend_from_slice(&entry.last_use_ms.to_le_bytes());
            let windows = &entry.counters.windows;
            out.push(windows.len().min(usize::from(u8::MAX)) as u8);
            for (period, w) in windows.iter().take(usize::from(u8::MAX)) {
                out.push(period.code());
                out.extend_from_slice(&w.start.to_le_bytes());
                out.extend_from_slice(&w.count.to_le_bytes());
                out.extend_from_slice(&w.previous.to_le_bytes());
            }
        }
        out
    }

    /// The stored bucket. Total: any bytes that are not exactly a bucket this module writes
    /// (another version, truncated, trailing bytes, more than [`BUCKET_ENTRIES`] entries, an
    /// unknown or repeated period) read as an empty bucket.
    pub fn decode(bytes: &[u8]) -> Bucket {
        Bucket::read(bytes).unwrap_or_default()
    }

    fn read(bytes: &[u8]) -> Option<Bucket> {
        let mut r = Reader(bytes);
        if r.byte()? != VERSION {
            return None;
        }
        let count = r.byte()?;
        if u64::from(count) > BUCKET_ENTRIES {
            return None;
        }
        let mut entries = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let owner = u128::from_le_bytes(r.take()?);
            let last_use_ms = r.i64()?;
            let windows = r.byte()?;
            if usize::from(windows) > Period::ALL.len() {
                return None;
            }
            let mut counters = Counters {
                windows: Vec::with_capacity(usize::from(windows)),
            };
            for _ in 0..windows {
                let period = Period::from_code(r.byte()?)?;
                if counters.get(period).is_some() {
                    return None;
                }
                let window = Window {
                    start: r.i64()?,
                    count: r.u64()?,
                    previous: r.u64()?,
                };
                counters.windows.push((period, window));
            }
            entries.push(Entry {
                owner,
                last_use_ms,
                counters,
            });
        }
        r.0.is_empty().then_some(Bucket { entries })
    }

    /// Records a counted request of `owner` with its new counters, dropping stale entries and,
    /// when a new identifier finds the bucket full of live ones, evicting the least recently
    /// counted. Returns how many live identifiers were evicted.
    fn count(
        &mut self,
        config: &Config,
        capacity: usize,
        owner: u128,
        counters: Counters,
        now_ms: i64,
    ) -> u32 {
        self.entries
            .retain(|e| e.owner == owner || !is_stale(config, &e.counters, now_ms));
        match self.entries.iter_mut().find(|e| e.owner == owner) {
            Some(entry) => {
                entry.counters = counters;
                entry.last_use_ms = now_ms;
            }
            None => self.entries.push(Entry {
                owner,
                last_use_ms: now_ms,
                counters,
            }),
        }
        let mut evicted = 0;
        // More than one only when a new configuration lowered max_identifiers.
        while self.entries.len() > capacity {
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.owner != owner)
                .min_by_key(|(_, e)| e.last_use_ms)
                .map(|(i, _)| i);
            let Some(victim) = victim else { break };
            self.entries.remove(victim);
            evicted += 1;
        }
        evicted
    }
}

/// The table of one plugin instance for a `max_identifiers`: how many bucket keys, and how
/// many identifiers each holds (the product is `max_identifiers` rounded up to spread
/// evenly, by less than one per bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub buckets: u64,
    pub capacity: usize,
}

impl Table {
    pub fn new(max_identifiers: u64) -> Table {
        let max = max_identifiers.max(1);
        let buckets = max.div_ceil(BUCKET_ENTRIES);
        let capacity = max.div_ceil(buckets);
        Table {
            buckets,
            capacity: usize::try_from(capacity).unwrap_or(1),
        }
    }

    /// The bucket key of an identifier's owner hash (its high half picks the bucket; the
    /// whole hash tells identifiers apart within it).
    pub fn key(&self, scope: &[u8], owner: u128) -> Vec<u8> {
        let (digits, at) = self.index(owner);
        let digits = digits.get(at..).unwrap_or_default();
        let mut key = Vec::with_capacity(scope.len() + 1 + digits.len());
        key.extend_from_slice(scope);
        key.push(b'|');
        key.extend_from_slice(digits);
        key
    }

    /// [`Table::key`] written into `buf`, when it fits there: the request path builds it
    /// on the stack.
    pub fn key_in<'b>(&self, scope: &[u8], owner: u128, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let (digits, at) = self.index(owner);
        let digits = digits.get(at..)?;
        let len = scope.len() + 1 + digits.len();
        let out = buf.get_mut(..len)?;
        let (head, tail) = out.split_at_mut(scope.len());
        head.copy_from_slice(scope);
        let (bar, rest) = tail.split_first_mut()?;
        *bar = b'|';
        rest.copy_from_slice(digits);
        Some(out)
    }

    /// The bucket's index in decimal: the digits from `.1` on.
    fn index(&self, owner: u128) -> ([u8; 20], usize) {
        let mut rest = ((owner >> 64) as u64) % self.buckets;
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        while let Some(slot) = at.checked_sub(1).and_then(|i| digits.get_mut(i)) {
            *slot = b'0' + (rest % 10) as u8;
            at -= 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        (digits, at)
    }
}

/// Bucket keys up to this long are built on the stack (a plugin instance named by a Kong id
/// has a 50-byte scope).
const STACK_KEY: usize = 128;

/// The outcome of counting one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Counted {
    /// The request is allowed and counted, or rejected and not counted (`stop` is set).
    /// `evicted` live identifiers lost their counts to make room for this one.
    Decided { eval: Evaluation, evicted: u32 },
    /// Every one of the [`MAX_ATTEMPTS`] writes lost its race against other workers writing
    /// the same bucket: the request was allowed by the last read but is not counted.
    Uncounted(Evaluation),
    /// The store failed.
    Failed(String),
}

fn describe(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Checks and counts one request of the identifier whose keyed hash is `owner`, at the time
/// `now_ms()` gives (read again on every attempt, after the read of the store).
pub fn check_and_count(
    store: &dyn Store,
    config: &Config,
    scope: &[u8],
    owner: u128,
    now_ms: &mut dyn FnMut() -> i64,
) -> Counted {
    let table = Table::new(config.max_identifiers);
    let mut stack = [0u8; STACK_KEY];
    let heap;
    let key = match table.key_in(scope, owner, &mut stack) {
        Some(key) => key,
        None => {
            heap = table.key(scope, owner);
            heap.as_slice()
        }
    };
    // Creation was refused while the key stayed missing: the host checks the CAS of new keys.
    let mut create_refused = false;
    let mut last = None;
    for _ in 0..MAX_ATTEMPTS {
        let (mut bucket, cas, creating) = match store.get(key) {
            Ok(Some((bytes, cas))) => (Bucket::decode(&bytes), cas, false),
            Ok(None) => {
                let cas = if create_refused { 0 } else { CREATE_CAS };
                (Bucket::default(), cas, true)
            }
            Err(status) => {
                return Counted::Failed(format!(
                    "reading \"{}\": host status {status}",
                    describe(key)
                ));
            }
        };
        let now = now_ms();
        let empty = Counters::default();
        let stored = bucket
            .entries
            .iter()
            .find(|e| e.owner == owner)
            .map_or(&empty, |e| &e.counters);
        let eval = evaluate(config, stored, now);
        if eval.stop.is_some() {
            return Counted::Decided { eval, evicted: 0 };
        }
        let evicted = bucket.count(config, table.capacity, owner, eval.next.clone(), now);
        match store.set(key, &bucket.encode(), cas) {
            Ok(()) => return Counted::Decided { eval, evicted },
            Err(SetError::CasMismatch) => {
                create_refused |= creating;
                last = Some(eval);
            }
            Err(SetError::Failed(status)) => {
                return Counted::Failed(format!(
                    "writing \"{}\": host status {status}",
                    describe(key)
                ));
            }
        }
    }
    match last {
        Some(eval) => Counted::Uncounted(eval),
        None => Counted::Failed(format!("\"{}\": no attempt made", describe(key))),
    }
}

/// The process's identifier hash key: read from shared data, or drawn with `draw` and
/// published there by the first worker VM that needs it (created with [`CREATE_CAS`], and
/// read back, so that a worker that loses the creation race adopts the winner's key).
pub fn hash_key(
    store: &dyn Store,
    draw: &mut dyn FnMut() -> Result<SipKey, String>,
) -> Result<SipKey, String> {
    let key = HASH_KEY_KEY;
    let mut create_refused = false;
    for _ in 0..MAX_ATTEMPTS {
        let (cas, creating) = match store.get(key) {
            Ok(Some((bytes, cas))) => match SipKey::try_from(bytes.as_slice()) {
                Ok(found) => return Ok(found),
                // Not a value this module writes: replace it.
                Err(_) => (cas, false),
            },
            Ok(None) => (if create_refused { 0 } else { CREATE_CAS }, true),
            Err(status) => {
                return Err(format!(
                    "reading \"{}\": host status {status}",
                    describe(key)
                ))
            }
        };
        let fresh = draw()?;
        match store.set(key, &fresh, cas) {
            Ok(()) => {}
            Err(SetError::CasMismatch) => create_refused |= creating,
            Err(SetError::Failed(status)) => {
                return Err(format!(
                    "writing \"{}\": host status {status}",
                    describe(key)
                ))
            }
        }
    }
    Err(format!(
        "\"{}\" kept changing for {MAX_ATTEMPTS} attempts",
        describe(key)
    ))
}

/// Shared data with Envoy's semantics, in memory: for native tests and in-process hosts.
#[cfg(any(test, not(target_arch = "wasm32")))]
pub mod memory {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::{SetError, Store};

    /// Key → (value, CAS), and the next CAS.
    type Data = (HashMap<Vec<u8>, (Vec<u8>, u32)>, u32);

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

        /// How many keys exist.
        pub fn keys(&self) -> usize {
            self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
        }

        /// The bytes of every key and value.
        pub fn bytes(&self) -> usize {
            self.inner
                .lock()
                .map(|g| g.0.iter().map(|(k, (v, _))| k.len() + v.len()).sum())
                .unwrap_or(0)
        }

        /// The next CAS the store hands out (to reproduce the wrap-around of Envoy's counter).
        pub fn set_next_cas(&self, next: u32) {
            if let Ok(mut guard) = self.inner.lock() {
                guard.1 = next;
            }
        }
    }

    impl Store for MemoryStore {
        fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
            let guard = self.inner.lock().map_err(|_| 10u32)?;
            Ok(guard.0.get(key).cloned())
        }

        fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), SetError> {
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
            map.insert(key.to_vec(), (value.to_vec(), token));
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
    use crate::siphash::siphash128;
    use crate::WindowType;

    const T0_MS: i64 = 1_709_208_000_000;
    const KEY: SipKey = [7; 16];

    fn owner(identifier: &str) -> u128 {
        siphash128(&KEY, &[identifier.as_bytes()])
    }

    fn allowed(counted: &Counted) -> bool {
        matches!(counted, Counted::Decided { eval, .. } if eval.stop.is_none())
    }

    fn evicted(counted: &Counted) -> u32 {
        match counted {
            Counted::Decided { evicted, .. } => *evicted,
            _ => 0,
        }
    }

    fn second(limit: f64) -> Config {
        Config::with_limits(&[(Period::Second, limit)])
    }

    fn count(store: &dyn Store, config: &Config, id: &str, now: i64) -> Counted {
        check_and_count(store, config, b"s", owner(id), &mut || now)
    }

    /// A simple generator for the property tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn counts_up_to_the_limit_in_one_key() {
        let store = MemoryStore::default();
        let config = second(3.0);
        let results: Vec<bool> = (0..5)
            .map(|_| allowed(&count(&store, &config, "1.2.3.4", T0_MS)))
            .collect();
        assert_eq!(results, [true, true, true, false, false]);
        assert_eq!(store.keys(), 1);
        // The key stays the same in every later window.
        assert!(allowed(&count(&store, &config, "1.2.3.4", T0_MS + 5_000)));
        assert_eq!(store.keys(), 1);
    }

    #[test]
    fn identifiers_and_scopes_have_their_own_budgets() {
        let store = MemoryStore::default();
        let config = second(1.0);
        let mut now = || T0_MS;
        assert!(allowed(&check_and_count(
            &store,
            &config,
            b"a",
            owner("x"),
            &mut now
        )));
        assert!(allowed(&check_and_count(
            &store,
            &config,
            b"a",
            owner("y"),
            &mut now
        )));
        assert!(allowed(&check_and_count(
            &store,
            &config,
            b"b",
            owner("x"),
            &mut now
        )));
        assert!(!allowed(&check_and_count(
            &store,
            &config,
            b"a",
            owner("x"),
            &mut now
        )));
    }

    /// A store where another worker writes the key between our read and our write, once:
    /// with `create`, it creates the missing key (the race Envoy does not guard against).
    struct RacingCreate {
        inner: MemoryStore,
        raced: Cell<bool>,
        theirs: Vec<u8>,
    }

    impl Store for RacingCreate {
        fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
            let got = self.inner.get(key)?;
            if got.is_none() && !self.raced.replace(true) {
                self.inner
                    .set(key, &self.theirs, CREATE_CAS)
                    .map_err(|_| 10u32)?;
            }
            Ok(got)
        }

        fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), SetError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_racing_creation_is_not_overwritten() {
        let config = second(2.0);
        // The other worker counted one request of the same identifier.
        let mut theirs = Bucket::default();
        let eval = evaluate(&config, &Counters::default(), T0_MS);
        theirs.count(&config, 8, owner("id"), eval.next, T0_MS);
        let store = RacingCreate {
            inner: MemoryStore::default(),
            raced: Cell::new(false),
            theirs: theirs.encode(),
        };
        // Their request took the first unit: we get the second, then the limit.
        assert!(allowed(&count(&store, &config, "id", T0_MS)));
        assert!(!allowed(&count(&store, &config, "id", T0_MS)));
        // With CAS 0 on creation (the naive way), our write would have erased theirs.
        let key = Table::new(config.max_identifiers).key(b"s", owner("id"));
        let (bytes, _) = store.inner.get(&key).unwrap().unwrap();
        let bucket = Bucket::decode(&bytes);
        assert_eq!(bucket.entries.len(), 1);
        assert_eq!(
            bucket.entries[0]
                .counters
                .get(Period::Second)
                .unwrap()
                .count,
            2
        );
    }

    #[test]
    fn a_host_that_checks_cas_on_creation_still_works() {
        let store = MemoryStore::strict();
        let config = second(2.0);
        assert!(allowed(&count(&store, &config, "id", T0_MS)));
        assert!(allowed(&count(&store, &config, "id", T0_MS)));
        assert!(!allowed(&count(&store, &config, "id", T0_MS)));
    }

    /// Review #3: past `max_identifiers`, a new identifier still gets its own budget (the
    /// least recently counted identifier of its bucket makes room), and the memory stays
    /// within the table.
    #[test]
    fn a_new_identifier_is_never_refused_because_of_others() {
        let store = MemoryStore::default();
        let mut config = Config::with_limits(&[(Period::Minute, 1.0)]);
        config.max_identifiers = 20;
        let table = Table::new(20);
        assert_eq!((table.buckets, table.capacity), (3, 7));
        let mut evictions = 0;
        for i in 0..5_000 {
            let counted = count(&store, &config, &format!("id-{i}"), T0_MS + i);
            assert!(allowed(&counted), "id-{i}");
            evictions += evicted(&counted);
        }
        // Every bucket is full of live identifiers: each of the others evicted one.
        assert_eq!(evictions, 5_000 - 21);
        assert_eq!(store.keys() as u64, table.buckets);
        // The most recent identifiers kept their counts.
        assert!(!allowed(&count(&store, &config, "id-4999", T0_MS + 5_000)));
    }

    /// Review #3: an identifier whose windows are all over frees its entry (no eviction).
    #[test]
    fn idle_identifiers_free_their_entries() {
        let store = MemoryStore::default();
        let mut config = second(1.0);
        config.max_identifiers = 1;
        assert_eq!(
            Table::new(1),
            Table {
                buckets: 1,
                capacity: 1
            }
        );
        let a = count(&store, &config, "a", T0_MS);
        assert!(allowed(&a));
        // a's second is over: b takes its place without evicting anyone, then is limited.
        let b = count(&store, &config, "b", T0_MS + 1_000);
        assert!(allowed(&b) && evicted(&b) == 0);
        assert!(!allowed(&count(&store, &config, "b", T0_MS + 1_000)));
        // a comes back in b's window: b is live, so it is evicted (and says so).
        let a = count(&store, &config, "a", T0_MS + 1_500);
        assert!(allowed(&a));
        assert_eq!(evicted(&a), 1);
        assert!(allowed(&count(&store, &config, "b", T0_MS + 1_600)));
        // The stored value shrinks back to one entry: memory cleans itself.
        let (bytes, _) = store
            .get(&Table::new(1).key(b"s", owner("b")))
            .unwrap()
            .unwrap();
        assert_eq!(bytes.len(), 2 + 25 + 25);
    }

    #[test]
    fn the_least_recently_counted_identifier_is_evicted() {
        let store = MemoryStore::default();
        let mut config = Config::with_limits(&[(Period::Hour, 2.0)]);
        config.max_identifiers = 2;
        count(&store, &config, "a", T0_MS);
        count(&store, &config, "b", T0_MS + 1);
        count(&store, &config, "a", T0_MS + 2);
        // b is the least recently counted: c evicts it; a keeps its two requests.
        assert_eq!(evicted(&count(&store, &config, "c", T0_MS + 3)), 1);
        assert!(!allowed(&count(&store, &config, "a", T0_MS + 4)));
        // b starts over (its count was lost) and evicts c, the least recent now.
        let b = count(&store, &config, "b", T0_MS + 5);
        assert!(allowed(&b) && evicted(&b) == 1);
        assert!(allowed(&count(&store, &config, "b", T0_MS + 6)));
    }

    #[test]
    fn a_lower_max_identifiers_trims_the_buckets() {
        let store = MemoryStore::default();
        let mut config = Config::with_limits(&[(Period::Hour, 2.0)]);
        config.max_identifiers = 8;
        for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            count(&store, &config, id, T0_MS + i as i64);
        }
        // Still one bucket (same key), now for 2 identifiers: three live ones make room.
        config.max_identifiers = 2;
        assert_eq!(evicted(&count(&store, &config, "e", T0_MS + 10)), 3);
        assert!(!allowed(&count(&store, &config, "e", T0_MS + 11)));
    }

    /// The bound of the module docs, measured: with every identifier live, the shared data of
    /// an instance holds exactly the table (keys and 25 + 25 × windows bytes an entry).
    #[test]
    fn memory_is_bounded_by_the_table() {
        for (max, windows) in [(10_000u64, 1usize), (10_000, 6), (1_000, 6), (13, 2)] {
            let store = MemoryStore::default();
            let periods = &Period::ALL[..windows];
            let limits: Vec<(Period, f64)> = periods.iter().map(|&p| (p, 1e9)).collect();
            let mut config = Config::with_limits(&limits);
            config.max_identifiers = max;
            let table = Table::new(max);
            let entries = table.buckets * table.capacity as u64;
            assert!(entries >= max && entries < max + table.buckets, "{max}");
            for i in 0..3 * max {
                count(&store, &config, &i.to_string(), T0_MS);
            }
            let key_bytes: usize = (0..table.buckets).map(|n| format!("s|{n}").len()).sum();
            let value_bytes = table.buckets as usize * 2 + entries as usize * (25 + 25 * windows);
            assert_eq!(store.keys() as u64, table.buckets, "{max}");
            assert_eq!(store.bytes(), key_bytes + value_bytes, "{max} × {windows}");
        }
    }

    /// How full the table is when its buckets start to evict (identifiers are spread by a
    /// keyed hash, so some buckets fill before others): the figure in the module docs.
    #[test]
    fn evictions_start_when_buckets_fill() {
        let mut config = Config::with_limits(&[(Period::Hour, 1e9)]);
        config.max_identifiers = 10_000;
        let mut first_eviction = Vec::new();
        let mut at_full = Vec::new();
        for run in 0..4 {
            let store = MemoryStore::default();
            let mut evictions = 0;
            for i in 0..10_000 {
                let counted = count(&store, &config, &format!("{run}-{i}"), T0_MS);
                if evicted(&counted) > 0 && evictions == 0 {
                    first_eviction.push(i);
                }
                evictions += evicted(&counted);
            }
            at_full.push(evictions);
        }
        eprintln!(
            "first eviction at identifiers {first_eviction:?}; evictions at 10,000: {at_full:?}"
        );
        // Under a tenth of the table no bucket is full yet; at the full count about 14 % of
        // the identifiers have evicted another.
        assert!(
            first_eviction.iter().all(|&i| i > 1_000),
            "{first_eviction:?}"
        );
        assert!(
            at_full.iter().all(|&n| (800..1_600).contains(&n)),
            "{at_full:?}"
        );
    }

    /// Review #3: buckets are chosen by a keyed hash: without the process's key, which
    /// identifiers share a bucket cannot be known.
    #[test]
    fn placement_depends_on_the_secret_key() {
        let table = Table::new(10_000);
        let mut same = 0;
        for i in 0..1_000 {
            let id = format!("203.0.113.{i}");
            let a = table.key(b"s", siphash128(&[1; 16], &[id.as_bytes()]));
            let b = table.key(b"s", siphash128(&[2; 16], &[id.as_bytes()]));
            same += usize::from(a == b);
        }
        assert!(same < 10, "{same}");
    }

    /// A store whose reads fail, or whose writes always lose the race.
    struct Broken {
        inner: MemoryStore,
        fail_get: bool,
    }

    impl Store for Broken {
        fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, u32> {
            if self.fail_get {
                return Err(10);
            }
            self.inner.get(key)
        }

        fn set(&self, _key: &[u8], _value: &[u8], _cas: u32) -> Result<(), SetError> {
            Err(SetError::CasMismatch)
        }
    }

    /// Review #12: a failing store is reported as such; a storm of lost races ends, after
    /// MAX_ATTEMPTS reads of the store and the clock, as an uncounted request with the last
    /// evaluation (never silently).
    #[test]
    fn a_store_that_fails_or_keeps_changing_is_reported() {
        let config = second(5.0);
        let failing = Broken {
            inner: MemoryStore::default(),
            fail_get: true,
        };
        let Counted::Failed(message) = count(&failing, &config, "x", T0_MS) else {
            panic!("must fail")
        };
        assert!(
            message.contains("host status 10") && message.contains("\"s|"),
            "{message}"
        );
        let contended = Broken {
            inner: MemoryStore::default(),
            fail_get: false,
        };
        let clock_reads = RefCell::new(0);
        let counted = check_and_count(&contended, &config, b"s", owner("x"), &mut || {
            *clock_reads.borrow_mut() += 1;
            T0_MS
        });
        let Counted::Uncounted(eval) = counted else {
            panic!("must be uncounted: {counted:?}")
        };
        assert_eq!(eval.stop, None);
        assert_eq!(*clock_reads.borrow(), MAX_ATTEMPTS as usize);
    }

    /// Many threads at once against a store with Envoy's semantics: exactly the limit is
    /// admitted per window, for one identifier, for several, and for several sharing one
    /// bucket; a request that passes uncounted is reported, and is the only excess.
    #[test]
    fn threads_never_over_admit() {
        for (identifiers, max_identifiers) in [(1usize, 10_000u64), (5, 10_000), (5, 8)] {
            let store = Arc::new(MemoryStore::default());
            let mut config = second(100.0);
            config.max_identifiers = max_identifiers;
            let config = Arc::new(config);
            let admitted: Arc<Vec<AtomicUsize>> =
                Arc::new((0..identifiers).map(|_| AtomicUsize::new(0)).collect());
            let uncounted = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (store, config, admitted, uncounted, barrier) = (
                        Arc::clone(&store),
                        Arc::clone(&config),
                        Arc::clone(&admitted),
                        Arc::clone(&uncounted),
                        Arc::clone(&barrier),
                    );
                    std::thread::spawn(move || {
                        barrier.wait();
                        for i in 0..400 {
                            let id = (t + i) % identifiers;
                            let counted = count(&*store, &config, &format!("id-{id}"), T0_MS);
                            match counted {
                                Counted::Decided { eval, .. } if eval.stop.is_none() => {
                                    admitted[id].fetch_add(1, Ordering::Relaxed);
                                }
                                Counted::Uncounted(_) => {
                                    uncounted.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
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
                    "identifier {id} of {identifiers} (max {max_identifiers})"
                );
            }
            eprintln!(
                "{identifiers} identifiers, max {max_identifiers}: {} uncounted",
                uncounted.load(Ordering::Relaxed)
            );
        }
    }

    fn random_bucket(rng: &mut XorShift) -> Bucket {
        let entries = (rng.next() % (BUCKET_ENTRIES + 1)) as usize;
        Bucket {
            entries: (0..entries)
                .map(|_| {
                    let mut periods = Period::ALL.to_vec();
                    periods.retain(|_| rng.next() & 1 == 0);
                    Entry {
                        owner: u128::from(rng.next()) << 64 | u128::from(rng.next()),
                        last_use_ms: rng.next() as i64,
                        counters: Counters {
                            windows: periods
                                .into_iter()
                                .map(|p| {
                                    let w = Window {
                                        start: rng.next() as i64,
                                        count: rng.next(),
                                        previous: rng.next() >> (rng.next() % 64),
                                    };
                                    (p, w)
                                })
                                .collect(),
                        },
                    }
                })
                .collect(),
        }
    }

    /// The codec is total and round-trips: the fuzz target's property.
    #[test]
    fn buckets_round_trip() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let bucket = random_bucket(&mut rng);
            let bytes = bucket.encode();
            let windows: usize = bucket
                .entries
                .iter()
                .map(|e| e.counters.windows.len())
                .sum();
            assert_eq!(bytes.len(), 2 + 25 * bucket.entries.len() + 25 * windows);
            assert_eq!(Bucket::decode(&bytes), bucket);
            // Every truncation and every single-byte change decodes without panicking, to a
            // bucket that round-trips in turn.
            let cut = (rng.next() as usize) % (bytes.len() + 1);
            let mut changed = bytes.clone();
            if let Some(byte) = changed.get_mut((rng.next() as usize) % bytes.len()) {
                *byte ^= 1 << (rng.next() % 8);
            }
            for garbled in [&bytes[..cut], &changed[..]] {
                let decoded = Bucket::decode(garbled);
                assert_eq!(Bucket::decode(&decoded.encode()), decoded);
            }
        }
    }

    /// The encoder sizes its buffer from the documented layout (2 bytes, then 25 an entry and
    /// 25 a window): one allocation of exactly the value's size.
    #[test]
    fn any_bytes_decode_to_a_bucket_that_round_trips() {
        let mut rng = XorShift(42);
        for _ in 0..20_000 {
            let len = (rng.next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Often a plausible header, so that the decoder gets past it.
            if rng.next() & 1 == 0 {
                if let Some(first) = bytes.get_mut(0) {
                    *first = VERSION;
                }
                if let Some(count) = bytes.get_mut(1) {
                    *count %= 3;
                }
            }
            let decoded = Bucket::decode(&bytes);
            assert!(decoded.entries.len() as u64 <= BUCKET_ENTRIES);
            assert_eq!(Bucket::decode(&decoded.encode()), decoded);
        }
    }

    #[test]
    fn garbage_is_an_empty_bucket() {
        let valid = random_bucket(&mut XorShift(7)).encode();
        let mut trailing = valid.clone();
        trailing.push(0);
        let mut too_many = vec![VERSION, 9];
        too_many.extend(std::iter::repeat_n(0u8, 9 * 25));
        let repeated = {
            let mut b = vec![VERSION, 1];
            b.extend_from_slice(&[0; 24]);
            b.push(2);
            b.extend_from_slice(&[0; 25]);
            b.extend_from_slice(&[0; 25]);
            b
        };
        let unknown_period = {
            let mut b = vec![VERSION, 1];
            b.extend_from_slice(&[0; 24]);
            b.push(1);
            b.push(6);
            b.extend_from_slice(&[0; 24]);
            b
        };
        for garbage in [
            &b""[..],
            b"\x01",
            b"\x02",
            b"\x03\x00",
            &trailing,
            &too_many,
            &repeated,
            &unknown_period,
        ] {
            assert_eq!(Bucket::decode(garbage), Bucket::default(), "{garbage:?}");
        }
        assert_eq!(Bucket::decode(&[VERSION, 0]), Bucket::default());
    }

    #[test]
    fn table_sizes() {
        for (max, buckets, capacity) in [
            (1, 1, 1),
            (2, 1, 2),
            (8, 1, 8),
            (9, 2, 5),
            (10_000, 1_250, 8),
            (10_001, 1_251, 8),
            (1_000_000, 125_000, 8),
        ] {
            assert_eq!(Table::new(max), Table { buckets, capacity }, "{max}");
        }
        assert_eq!(
            Table::new(8).key(b"rate-limiting|rl", 5u128 << 64),
            b"rate-limiting|rl|0"
        );
        assert_eq!(
            Table::new(10_000).key(b"rate-limiting|\xff", 1_251u128 << 64),
            b"rate-limiting|\xff|1"
        );
    }

    /// The request path's key on the stack is `Table::key`'s, or none when it does not fit.
    #[test]
    fn keys_built_on_the_stack_are_the_same_keys() {
        let long = [b'x'; STACK_KEY];
        for (max, owner) in [
            (8, 5u128 << 64),
            (10_000, u128::MAX),
            (1_000_000, 123_456u128 << 64),
        ] {
            let table = Table::new(max);
            for scope in [&b"rate-limiting|rl"[..], b"", &long[..STACK_KEY - 8]] {
                let mut buf = [0; STACK_KEY];
                let key = table.key(scope, owner);
                assert_eq!(table.key_in(scope, owner, &mut buf), Some(key.as_slice()));
            }
            let mut buf = [0; STACK_KEY];
            assert_eq!(table.key_in(&long, owner, &mut buf), None);
        }
    }

    /// The first worker VM draws the key and publishes it; every other one reads it.
    #[test]
    fn the_hash_key_is_drawn_once_per_process() {
        let store = MemoryStore::default();
        let draws = Cell::new(0u8);
        let mut draw = || {
            draws.set(draws.get() + 1);
            Ok([draws.get(); 16])
        };
        let first = hash_key(&store, &mut draw).unwrap();
        let second = hash_key(&store, &mut draw).unwrap();
        assert_eq!((first, second, draws.get()), ([1; 16], [1; 16], 1));
        // A stricter host refuses the first creation (CAS u32::MAX on a missing key); the
        // next draw is created with CAS 0.
        assert_eq!(hash_key(&MemoryStore::strict(), &mut draw), Ok([3; 16]));
        let failing = Broken {
            inner: MemoryStore::default(),
            fail_get: true,
        };
        assert!(hash_key(&failing, &mut draw)
            .unwrap_err()
            .contains("host status 10"));
        let mut no_randomness = || Err("random_get: errno 52".to_owned());
        assert_eq!(
            hash_key(&MemoryStore::default(), &mut no_randomness),
            Err("random_get: errno 52".to_owned())
        );
    }

    /// Two VMs read "missing" at once: the one that creates second adopts the first one's key.
    #[test]
    fn a_racing_hash_key_creation_adopts_the_winner() {
        let store = RacingCreate {
            inner: MemoryStore::default(),
            raced: Cell::new(false),
            theirs: vec![9; 16],
        };
        assert_eq!(hash_key(&store, &mut || Ok([1; 16])), Ok([9; 16]));
    }

    /// Review #23, the documented bound: a creation that gets the CAS `u32::MAX` (once every
    /// 2³² writes of the process) is overwritten by a racing creation.
    #[test]
    fn a_creation_at_the_cas_wraparound_can_be_overwritten() {
        let inner = MemoryStore::default();
        inner.set_next_cas(u32::MAX);
        let store = RacingCreate {
            inner,
            raced: Cell::new(false),
            theirs: vec![9; 16],
        };
        assert_eq!(hash_key(&store, &mut || Ok([1; 16])), Ok([1; 16]));
        // The same race one write later is caught.
        let inner = MemoryStore::default();
        inner.set_next_cas(1);
        let store = RacingCreate {
            inner,
            raced: Cell::new(false),
            theirs: vec![9; 16],
        };
        assert_eq!(hash_key(&store, &mut || Ok([1; 16])), Ok([9; 16]));
    }

    /// Sliding windows keep an identifier for one more window (the previous count weighs).
    #[test]
    fn sliding_identifiers_stay_one_window_longer() {
        let store = MemoryStore::default();
        let mut config = second(1.0);
        config.window_type = WindowType::Sliding;
        config.max_identifiers = 1;
        count(&store, &config, "a", T0_MS);
        assert_eq!(evicted(&count(&store, &config, "b", T0_MS + 1_000)), 1);
        assert_eq!(evicted(&count(&store, &config, "a", T0_MS + 3_000)), 0);
    }
}
