//! `request_transformer::json::Object::parse` and its edits.
//!
//! - Parsing agrees with serde_json wherever serde_json reads the body: an object has the
//!   same members (duplicate keys: the last value, as cjson), anything else is `Other`; a body
//!   the strict parser accepts and serde_json's `Value` does not is still valid JSON for
//!   serde_json's skipping parser (numbers out of f64 range, nesting past its limit).
//! - `to_bytes` round-trips exactly (`parse(to_bytes(o)) == o`).
//! - An edit script (section 2: `r`emove, re`n`ame, re`p`lace, `a`dd, `A`ppend; its first 16
//!   steps) changes the object exactly as Kong's Lua table would change (a `false` value is
//!   absent for rename, replace and add; append makes or extends an array, or gives an
//!   object the key "1"), checked after every step against a model on serde_json values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_transformer::json::{Object, Parsed};
use serde_json::{Map, Value};
use wasmgate_fuzz::{ops, sections, Op};

fn as_map(object: &Object) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(&object.to_bytes()) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn truthy(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key).is_some_and(|v| *v != Value::Bool(false))
}

/// Kong's `append_value` on the decoded table.
fn appended(old: Option<&Value>, new: &str) -> Value {
    let new = Value::String(new.to_owned());
    match old {
        Some(Value::String(s)) => Value::Array(vec![Value::String(s.clone()), new]),
        Some(Value::Array(items)) => {
            let mut items = items.clone();
            items.push(new);
            Value::Array(items)
        }
        Some(Value::Object(map)) if !map.is_empty() => {
            let mut map = map.clone();
            map.insert("1".into(), new);
            Value::Object(map)
        }
        _ => Value::Array(vec![new]),
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 2);
    let (body, script) = (parts[0], parts[1]);
    let parsed = Object::parse(body);
    let lenient = serde_json::from_slice::<Value>(body);
    let mut object = match (&parsed, &lenient) {
        (Parsed::Object(o), Ok(Value::Object(map))) => {
            assert_eq!(
                as_map(o).as_ref(),
                Some(map),
                "members differ from serde_json"
            );
            o.clone()
        }
        (Parsed::Other, Ok(v)) => {
            assert!(!v.is_object());
            return;
        }
        (Parsed::Invalid, Err(_)) => return,
        (Parsed::Object(_) | Parsed::Other, Err(e)) => {
            let skipped = serde_json::from_slice::<serde::de::IgnoredAny>(body);
            assert!(
                skipped.is_ok() || e.to_string().contains("recursion limit"),
                "accepted what serde_json refuses: {e}"
            );
            match &parsed {
                Parsed::Object(o) => o.clone(),
                _ => return,
            }
        }
        (p, Ok(v)) => panic!("{p:?} but serde_json reads {v}"),
    };
    let bytes = object.to_bytes();
    assert_eq!(
        Object::parse(&bytes),
        Parsed::Object(object.clone()),
        "round trip"
    );

    let mut model = as_map(&object);
    // Each step re-reads the whole object: a few steps find what many would, faster.
    for op in ops(script).into_iter().take(16) {
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        let changed = match &op {
            Op::Remove(k) => object.remove(k),
            Op::Rename(old, new) => object.rename(old, new),
            Op::Replace(k, v) => object.replace(k, v),
            Op::Add(k, v) => object.add(k, v),
            Op::Append(k, v) => {
                object.append(k, v);
                true
            }
        };
        // Bytes outside UTF-8 are written as they are (as cjson does): no JSON model then.
        let Some(map) = model.as_mut() else { continue };
        let (key, value) = match &op {
            Op::Remove(k) => (text(k), Some(String::new())),
            Op::Rename(k, v) | Op::Replace(k, v) | Op::Add(k, v) | Op::Append(k, v) => {
                (text(k), text(v))
            }
        };
        let (Some(key), Some(value)) = (key, value) else {
            model = None;
            continue;
        };
        let expected_change = match &op {
            Op::Remove(_) => map.remove(&key).is_some(),
            Op::Rename(..) => {
                if key != value && truthy(map, &key) {
                    let v = map.remove(&key).unwrap_or(Value::Null);
                    map.insert(value, v);
                    true
                } else {
                    false
                }
            }
            Op::Replace(..) => {
                let hit = truthy(map, &key);
                if hit {
                    map.insert(key, Value::String(value));
                }
                hit
            }
            Op::Add(..) => {
                let hit = !truthy(map, &key);
                if hit {
                    map.insert(key, Value::String(value));
                }
                hit
            }
            Op::Append(..) => {
                let new = appended(map.get(&key), &value);
                map.insert(key, new);
                true
            }
        };
        assert_eq!(changed, expected_change, "{op:?}");
        let got = as_map(&object).expect("edited object is still JSON");
        assert_eq!(&got, map, "after {op:?}");
    }
});
