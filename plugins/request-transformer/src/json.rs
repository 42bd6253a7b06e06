//! JSON bodies: the top-level object, edited key by key.
//!
//! Only the top-level keys are decoded; every value stays as the client wrote it (numbers
//! keep their precision, nested objects their formatting), and key order is kept. The parser
//! is strict RFC 8259 (no `NaN`/`Infinity`, BOM, comments or trailing commas; UTF-8 only):
//! a body a lenient upstream would read differently is [`Parsed::Invalid`], so a configured
//! `remove` cannot be bypassed with it. Duplicate keys collapse to the last value (as Kong's
//! cjson decodes them) at the first key's position. Nesting inside a value is skipped without
//! recursion; time is linear in the body.
//!
//! Names and values written into the body are bytes: they are escaped as JSON strings
//! (`"`, `\` and control characters), and bytes outside UTF-8 are written as they are, as
//! cjson does.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// What a body is, as far as key edits are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Object(Object),
    /// Valid JSON that is not an object (an array, a string, ...): it has no keys to edit.
    Other,
    /// Not JSON by RFC 8259.
    Invalid,
}

/// A top-level JSON object with its members in order: key bytes and value text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    members: Vec<(Vec<u8>, Vec<u8>)>,
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Vec<(Vec<u8>, Vec<u8>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // Indexed so that a body of many distinct keys stays linear (n·log n).
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            crate::steps::step();
            let value = value.get().as_bytes().to_vec();
            match index.get(&key) {
                Some(&i) => {
                    if let Some(member) = members.get_mut(i) {
                        member.1 = value;
                    }
                }
                None => {
                    index.insert(key.clone(), members.len());
                    members.push((key.into_bytes(), value));
                }
            }
        }
        Ok(members)
    }
}

/// A JSON string of `bytes`: `"`, `\` and control characters escaped, anything else as is.
fn string(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

impl Object {
    pub fn empty() -> Object {
        Object {
            members: Vec::new(),
        }
    }

    /// Parses a whole body (fuzzing entry point): total on any bytes.
    pub fn parse(body: &[u8]) -> Parsed {
        // Skipped values are not checked for UTF-8 by serde_json.
        if std::str::from_utf8(body).is_err() {
            return Parsed::Invalid;
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        if let Ok(members) = de.deserialize_map(ObjectVisitor) {
            if de.end().is_ok() {
                return Parsed::Object(Object { members });
            }
            return Parsed::Invalid;
        }
        match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Parsed::Other,
            Err(_) => Parsed::Invalid,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![b'{'];
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&string(key));
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        out
    }

    fn position(&self, key: &[u8]) -> Option<usize> {
        self.members.iter().position(|(k, _)| {
            crate::steps::step();
            k == key
        })
    }

    fn value_mut(&mut self, key: &[u8]) -> Option<&mut Vec<u8>> {
        self.members
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Present as Kong's Lua sees it: a key whose value is `false` is falsy, like a missing one.
    fn is_truthy(&self, key: &[u8]) -> bool {
        self.members
            .iter()
            .any(|(k, v)| k == key && v.as_slice() != b"false")
    }

    pub fn remove(&mut self, key: &[u8]) -> bool {
        match self.position(key) {
            Some(i) => {
                self.members.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn rename(&mut self, old: &[u8], new: &[u8]) -> bool {
        if old == new || !self.is_truthy(old) {
            return false;
        }
        self.remove(new);
        if let Some(member) = self.members.iter_mut().find(|(k, _)| k == old) {
            member.0 = new.to_vec();
        }
        true
    }

    pub fn replace(&mut self, key: &[u8], value: &[u8]) -> bool {
        if !self.is_truthy(key) {
            return false;
        }
        if let Some(slot) = self.value_mut(key) {
            *slot = string(value);
        }
        true
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> bool {
        if self.is_truthy(key) {
            return false;
        }
        match self.value_mut(key) {
            Some(slot) => *slot = string(value),
            None => self.members.push((key.to_vec(), string(value))),
        }
        true
    }

    /// Kong's `append_value` on the decoded table: a string becomes `[old, new]`; an array
    /// gets the value at its end; an object is a Lua table too, so `table.insert` gives it the
    /// key `"1"` (an empty one encodes as the array `[new]`); anything else (number, boolean,
    /// null) and a missing key become `[new]`.
    pub fn append(&mut self, key: &[u8], value: &[u8]) {
        let new = string(value);
        let Some(slot) = self.value_mut(key) else {
            self.members.push((key.to_vec(), wrap(&new)));
            return;
        };
        let inner = |open: u8, close: u8| {
            slot.strip_prefix(&[open])
                .and_then(|s| s.strip_suffix(&[close]))
                .map(<[u8]>::to_vec)
        };
        let appended = match slot.first() {
            Some(b'"') => {
                let mut out = vec![b'['];
                out.extend_from_slice(slot);
                out.push(b',');
                out.extend_from_slice(&new);
                out.push(b']');
                out
            }
            Some(b'[') => match inner(b'[', b']') {
                Some(items) if items.trim_ascii().is_empty() => wrap(&new),
                Some(items) => [&b"["[..], &items, b",", &new, b"]"].concat(),
                None => wrap(&new),
            },
            Some(b'{') => match inner(b'{', b'}') {
                Some(members) if members.trim_ascii().is_empty() => wrap(&new),
                Some(members) => [&b"{"[..], &members, b",\"1\":", &new, b"}"].concat(),
                None => wrap(&new),
            },
            _ => wrap(&new),
        };
        *slot = appended;
    }
}

fn wrap(value: &[u8]) -> Vec<u8> {
    [&b"["[..], value, b"]"].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_any_bytes_is_total(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Parsed::Object(o) = Object::parse(&body) {
                prop_assert_eq!(Object::parse(&o.to_bytes()), Parsed::Object(o));
            }
        }
    }

    #[test]
    fn control_bytes_without_a_short_escape_are_written_as_u00xx() {
        assert_eq!(string(b"\x01\x1f\x0b"), b"\"\\u0001\\u001f\\u000b\"");
        assert_eq!(string(b"\x08\x0c\n\r\t"), b"\"\\b\\f\\n\\r\\t\"");
        assert_eq!(string(b"\"\\\x7f"), b"\"\\\"\\\\\x7f\"");
    }

    #[test]
    fn high_and_control_bytes_never_fail() {
        for body in [
            &b"{\"a\":\"\x80\"}"[..],
            b"{\"a\":\"\r\n\"}",
            b"{\"a\":\"\x00\"}",
            b"{\"\xff\":1}",
            b"\xff",
            b"\x00",
        ] {
            assert_eq!(Object::parse(body), Parsed::Invalid, "{body:?}");
        }
        let o = object(b"{\"\\u0000\\r\\n\":\"\xc3\xa9\\u00ff\"}");
        assert_eq!(o.members[0].0, b"\x00\r\n");
        assert_eq!(o.to_bytes(), b"{\"\\u0000\\r\\n\":\"\xc3\xa9\\u00ff\"}");
    }

    fn object(body: &[u8]) -> Object {
        match Object::parse(body) {
            Parsed::Object(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn text(o: &Object) -> String {
        String::from_utf8(o.to_bytes()).unwrap()
    }

    #[test]
    fn values_keep_their_text_and_order() {
        let o = object(br#" {"b": 1.000000000000000000001, "a": {"x" : [1, 2]}, "e": []} "#);
        assert_eq!(
            text(&o),
            r#"{"b":1.000000000000000000001,"a":{"x" : [1, 2]},"e":[]}"#
        );
    }

    #[test]
    fn operations_follow_kong() {
        let mut o = object(br#"{"a":"1","f":false,"n":null,"arr":[1],"num":2}"#);
        assert!(!o.replace(b"f", b"x"), "false counts as absent for replace");
        assert!(o.add(b"f", b"now"), "and add overwrites it");
        assert!(o.replace(b"n", b"was null"));
        assert!(!o.add(b"a", b"x"));
        o.append(b"a", b"2");
        o.append(b"arr", b"2");
        o.append(b"new", b"v");
        assert_eq!(
            text(&o),
            r#"{"a":["1","2"],"f":"now","n":"was null","arr":[1,"2"],"num":2,"new":["v"]}"#
        );
        assert!(o.rename(b"a", b"num"));
        assert!(!o.rename(b"missing", b"f"));
        assert!(o.remove(b"f"));
        assert!(!o.remove(b"f"));
        assert_eq!(
            text(&o),
            r#"{"num":["1","2"],"n":"was null","arr":[1,"2"],"new":["v"]}"#
        );
    }

    #[test]
    fn append_follows_kongs_append_value() {
        // Review #19: Kong replaces anything that is not a string or a table.
        let mut o = object(
            br#"{"n":1,"t":true,"f":false,"z":null,"s":"x","a":[],"o":{},"p":{"k":1},"q":[ 1 ]}"#,
        );
        for key in ["n", "t", "f", "z", "s", "a", "o", "p", "q"] {
            o.append(key.as_bytes(), b"v");
        }
        assert_eq!(
            text(&o),
            r#"{"n":["v"],"t":["v"],"f":["v"],"z":["v"],"s":["x","v"],"a":["v"],"o":["v"],"p":{"k":1,"1":"v"},"q":[ 1 ,"v"]}"#
        );
    }

    #[test]
    fn written_bytes_are_escaped_not_replaced() {
        let mut o = Object::empty();
        o.add(b"k\xff", b"\"q\"\n\x00\xc3\xa9\xff");
        assert_eq!(
            o.to_bytes(),
            b"{\"k\xff\":\"\\\"q\\\"\\n\\u0000\xc3\xa9\xff\"}".to_vec()
        );
    }

    #[test]
    fn what_a_lenient_parser_would_read_differently_is_invalid() {
        // Review #9: the upstream (Python's json, cjson) reads `NaN`, so would see `role`.
        for body in [
            &br#"{"role":"admin","x":NaN}"#[..],
            br#"{"role":"admin","x":Infinity}"#,
            b"\xef\xbb\xbf{\"role\":\"admin\"}",
            br#"{"role":"admin",}"#,
            br#"{"role":"admin"} // c"#,
            br#"{/*c*/"role":"admin"}"#,
            b"{\"role\":\"adm\xffin\"}",
            b"{\"a\":1",
            b"{\"a\":1} x",
            b"{'role':'admin'}",
            b"",
            b"  ",
        ] {
            assert_eq!(
                Object::parse(body),
                Parsed::Invalid,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [&b"[1,2]"[..], b"\"s\"", b"null", b"1", b" [{\"role\":1}] "] {
            assert_eq!(Object::parse(body), Parsed::Other);
        }
    }

    #[test]
    fn deep_nesting_and_many_keys_stay_cheap() {
        // Deep nesting inside a value is skipped without recursion: no stack overflow even
        // on a small stack (wasm's is 1 MiB), nor at the top level.
        let deep = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200_000), "]".repeat(200_000));
                let array = format!("{}1{}", "[".repeat(200_000), "]".repeat(200_000));
                (
                    match Object::parse(deep.as_bytes()) {
                        Parsed::Object(o) => o.to_bytes().len(),
                        _ => 0,
                    },
                    Object::parse(array.as_bytes()),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(deep, (400_007, Parsed::Other));
        // 100,000 distinct keys: a linear scan per key would be ~5·10^9 comparisons.
        let mut body = String::from("{");
        for i in 0..100_000 {
            body.push_str(&format!("\"k{i}\":0,"));
        }
        body.push_str("\"k0\":1}");
        // One step per member read; a scan of the members per key would take ~5·10^9.
        let (o, steps) = crate::steps::counted(|| object(body.as_bytes()));
        assert!(steps <= 100_001, "{steps} steps");
        assert_eq!(o.members.len(), 100_000);
        assert_eq!(o.members[0], (b"k0".to_vec(), b"1".to_vec()));
        let mut dup = object(br#"{"a":1,"b":2,"a":3}"#);
        dup.add(b"c", b"x");
        assert_eq!(text(&dup), r#"{"a":3,"b":2,"c":"x"}"#);
    }
}
