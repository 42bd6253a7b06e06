//! `request_transformer::urlencoded`: `Params::parse` / `to_bytes` round-trip any bytes
//! exactly; each argument is the `decode` of its `&`-separated segment, split at the first
//! `=`; `decode` inverts `encode`, whose output is only unreserved bytes and upper-case
//! triplets; and an edit script (section 2) changes the arguments exactly as a model of
//! Kong's semantics does, and survives a write and a re-parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_transformer::urlencoded::{decode, encode, Params};
use wasmgate_fuzz::{ops, sections, Op};

type Model = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn decoded(params: &Params) -> Model {
    params
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect()
}

/// `decoded(params) == *model`, without copying every argument after every edit (that copy
/// made the target quadratic in the input and slowed it to a few hundred runs a second).
fn matches(params: &Params, model: &Model) -> bool {
    params.params.len() == model.len()
        && params
            .params
            .iter()
            .zip(model)
            .all(|(p, (name, value))| p.name == *name && p.value == *value)
}

fn apply(model: &mut Model, op: &Op) -> bool {
    let contains = |m: &Model, n: &[u8]| m.iter().any(|(k, _)| k == n);
    match op {
        Op::Remove(n) => {
            let before = model.len();
            model.retain(|(k, _)| k != n);
            model.len() != before
        }
        Op::Rename(old, new) => {
            if old == new || !contains(model, old) {
                return false;
            }
            model.retain(|(k, _)| k != new);
            for (k, _) in model.iter_mut().filter(|(k, _)| k == old) {
                *k = new.clone();
            }
            true
        }
        Op::Replace(n, v) => {
            let Some(first) = model.iter().position(|(k, _)| k == n) else {
                return false;
            };
            model[first].1 = Some(v.clone());
            let mut i = 0;
            model.retain(|(k, _)| {
                i += 1;
                k != n || i - 1 == first
            });
            true
        }
        Op::Add(n, v) => {
            if contains(model, n) {
                return false;
            }
            model.push((n.clone(), Some(v.clone())));
            true
        }
        Op::Append(n, v) => {
            model.push((n.clone(), Some(v.clone())));
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 2);
    let (raw, script) = (parts[0], parts[1]);

    let mut params = Params::parse(raw);
    assert_eq!(
        params.to_bytes(),
        raw,
        "untouched arguments keep their bytes"
    );
    if raw.is_empty() {
        assert!(params.is_empty());
    } else {
        let segments: Vec<&[u8]> = raw.split(|&b| b == b'&').collect();
        assert_eq!(segments.len(), params.params.len());
        for (segment, p) in segments.iter().zip(&params.params) {
            match segment.iter().position(|&b| b == b'=') {
                Some(i) => {
                    assert_eq!(p.name, decode(&segment[..i]));
                    assert_eq!(p.value.as_deref(), Some(&decode(&segment[i + 1..])[..]));
                }
                None => {
                    assert_eq!(p.name, decode(segment));
                    assert_eq!(p.value, None);
                    assert_eq!(p.value_or_true(), b"true");
                }
            }
        }
    }

    // The codec on the raw bytes as a value.
    let encoded = encode(raw);
    assert_eq!(decode(&encoded), raw);
    let mut rest = &encoded[..];
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            assert!(tail.len() >= 2);
            assert!(tail[..2]
                .iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)));
            rest = &tail[2..];
        } else {
            assert!(b.is_ascii_alphanumeric() || b"-._~".contains(&b), "{b:#x}");
            rest = tail;
        }
    }
    let plain = decode(raw);
    assert!(plain.len() <= raw.len());
    if !raw.contains(&b'%') && !raw.contains(&b'+') {
        assert_eq!(plain, raw);
    }

    let mut model = decoded(&params);
    for op in ops(script) {
        let changed = match &op {
            Op::Remove(n) => params.remove(n),
            Op::Rename(old, new) => params.rename(old, new),
            Op::Replace(n, v) => params.replace(n, v),
            Op::Add(n, v) => params.add(n, v),
            Op::Append(n, v) => {
                params.append(n, v);
                true
            }
        };
        assert_eq!(changed, apply(&mut model, &op), "{op:?}");
        assert!(
            matches(&params, &model),
            "after {op:?}: {:?} != {model:?}",
            decoded(&params)
        );
        if let Op::Remove(n) = &op {
            assert!(!params.contains(n));
        }
    }
    // Written and read again: the same arguments (one bare empty argument is the empty
    // query string, which has none).
    let again = decoded(&Params::parse(&params.to_bytes()));
    if model == [(Vec::new(), None)] {
        assert!(again.is_empty());
    } else {
        assert_eq!(again, model);
    }
});
