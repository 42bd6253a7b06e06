//! `rate_limiting::store::Bucket::{decode, encode}`: decoding is total; whatever it reads is
//! at most `BUCKET_ENTRIES` entries with distinct periods each; a non-empty decoded bucket is
//! exactly its input (`encode(decode(x)) == x`, so the format has one spelling) and any
//! decoded bucket round-trips; and any bucket the store can hold, built from the same bytes,
//! survives `decode(encode(b))`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rate_limiting::counters::{Counters, Window};
use rate_limiting::store::{Bucket, Entry, BUCKET_ENTRIES};
use rate_limiting::Period;
use wasmgate_fuzz::Bytes;

fn build(data: &[u8]) -> Bucket {
    let mut r = Bytes(data);
    let entries = u64::from(r.byte()) % (BUCKET_ENTRIES + 1);
    let entries = (0..entries)
        .map(|_| {
            let owner = r.u128();
            let last_use_ms = r.u64() as i64;
            let mask = r.byte();
            let rotate = usize::from(r.byte()) % Period::ALL.len();
            let mut periods = Period::ALL.to_vec();
            periods.rotate_left(rotate);
            periods.retain(|p| mask & (1 << p.code()) != 0);
            let windows = periods
                .into_iter()
                .map(|p| {
                    let w = Window {
                        start: r.u64() as i64,
                        count: r.u64(),
                        previous: r.u64(),
                    };
                    (p, w)
                })
                .collect();
            Entry {
                owner,
                last_use_ms,
                counters: Counters { windows },
            }
        })
        .collect();
    Bucket { entries }
}

fuzz_target!(|data: &[u8]| {
    let decoded = Bucket::decode(data);
    assert!(decoded.entries.len() as u64 <= BUCKET_ENTRIES);
    for entry in &decoded.entries {
        let periods: Vec<Period> = entry.counters.windows.iter().map(|(p, _)| *p).collect();
        for (i, p) in periods.iter().enumerate() {
            assert!(!periods[..i].contains(p), "a repeated period");
        }
    }
    let encoded = decoded.encode();
    if decoded != Bucket::default() {
        assert_eq!(encoded, data, "a decoded bucket is exactly its input");
    }
    assert_eq!(Bucket::decode(&encoded), decoded);

    let built = build(data);
    let bytes = built.encode();
    let windows: usize = built.entries.iter().map(|e| e.counters.windows.len()).sum();
    assert_eq!(bytes.len(), 2 + 25 * built.entries.len() + 25 * windows);
    assert_eq!(Bucket::decode(&bytes), built);
});
