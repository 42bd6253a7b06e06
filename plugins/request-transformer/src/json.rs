//! JSON bodies: the top-level object, edited key by key.
//!
//! Only the top-level keys are decoded; every value stays as the client wrote it (numbers
//! keep their precision, nested objects their formatting), and key order is kept. A body
//! that is not a JSON object (malformed, not UTF-8, an array, nested deeper than serde_json's
//! limit of 128) is left unchanged, as Kong leaves malformed JSON. Duplicate keys collapse to
//! the last value (as Kong's cjson decodes them) only when the body is rewritten.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON value, kept as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw(String);

impl Raw {
    fn string(s: &str) -> Raw {
        // Serialising a str cannot fail.
        Raw(serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()))
    }
}

/// A top-level JSON object with its members in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    members: Vec<(String, Raw)>,
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Vec<(String, Raw)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(String, Raw)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            let value = Raw(value.get().to_owned());
            // cjson keeps the last of duplicate keys; keep the first position.
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(members)
    }
}

impl Object {
    pub fn empty() -> Object {
        Object {
            members: Vec::new(),
        }
    }

    /// The body as an object; `None` when it is anything else.
    pub fn parse(body: &[u8]) -> Option<Object> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let members = de.deserialize_map(ObjectVisitor).ok()?;
        de.end().ok()?;
        Some(Object { members })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::from("{");
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Raw::string(key).0);
            out.push(':');
            out.push_str(&value.0);
        }
        out.push('}');
        out.into_bytes()
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.members.iter().position(|(k, _)| k == key)
    }

    /// Present as Kong's Lua sees it: a key whose value is `false` is falsy, like a missing one.
    fn is_truthy(&self, key: &str) -> bool {
        self.position(key)
            .is_some_and(|i| self.members[i].1 .0 != "false")
    }

    pub fn remove(&mut self, key: &str) -> bool {
        match self.position(key) {
            Some(i) => {
                self.members.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        if old == new || !self.is_truthy(old) {
            return false;
        }
        self.remove(new);
        if let Some(i) = self.position(old) {
            self.members[i].0 = new.to_owned();
        }
        true
    }

    pub fn replace(&mut self, key: &str, value: &str) -> bool {
        if !self.is_truthy(key) {
            return false;
        }
        if let Some(i) = self.position(key) {
            self.members[i].1 = Raw::string(value);
        }
        true
    }

    pub fn add(&mut self, key: &str, value: &str) -> bool {
        if self.is_truthy(key) {
            return false;
        }
        match self.position(key) {
            Some(i) => self.members[i].1 = Raw::string(value),
            None => self.members.push((key.to_owned(), Raw::string(value))),
        }
        true
    }

    /// Adds a value: a missing key gets an array of it, an array gets it at its end, any
    /// other value becomes an array of the old value and the new one.
    pub fn append(&mut self, key: &str, value: &str) {
        let new = Raw::string(value).0;
        let Some(i) = self.position(key) else {
            self.members.push((key.to_owned(), Raw(format!("[{new}]"))));
            return;
        };
        let old = self.members[i].1 .0.trim();
        let appended = match old.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(inner) if inner.trim().is_empty() => format!("[{new}]"),
            Some(inner) => format!("[{inner},{new}]"),
            None => format!("[{old},{new}]"),
        };
        self.members[i].1 = Raw(appended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(o: &Object) -> String {
        String::from_utf8(o.to_bytes()).unwrap()
    }

    #[test]
    fn values_keep_their_text_and_order() {
        let o = Object::parse(br#" {"b": 1.000000000000000000001, "a": {"x" : [1, 2]}, "e": []} "#)
            .unwrap();
        assert_eq!(
            text(&o),
            r#"{"b":1.000000000000000000001,"a":{"x" : [1, 2]},"e":[]}"#
        );
    }

    #[test]
    fn operations_follow_kong() {
        let mut o = Object::parse(br#"{"a":"1","f":false,"n":null,"arr":[1],"num":2}"#).unwrap();
        assert!(!o.replace("f", "x"), "false counts as absent for replace");
        assert!(o.add("f", "now"), "and add overwrites it");
        assert!(o.replace("n", "was null"));
        assert!(!o.add("a", "x"));
        o.append("a", "2");
        o.append("arr", "2");
        o.append("num", "3");
        o.append("new", "v");
        assert_eq!(
            text(&o),
            r#"{"a":["1","2"],"f":"now","n":"was null","arr":[1,"2"],"num":[2,"3"],"new":["v"]}"#
        );
        assert!(o.rename("a", "num"));
        assert!(!o.rename("missing", "f"));
        assert!(o.remove("f"));
        assert!(!o.remove("f"));
        assert_eq!(
            text(&o),
            r#"{"num":["1","2"],"n":"was null","arr":[1,"2"],"new":["v"]}"#
        );
        let mut e = Object::parse(b"{}").unwrap();
        e.append("x", "\"q\"\n");
        assert_eq!(text(&e), r#"{"x":["\"q\"\n"]}"#);
    }

    #[test]
    fn anything_but_an_object_is_refused_without_failing() {
        for body in [
            &b"[1,2]"[..],
            b"\"s\"",
            b"null",
            b"{\"a\":1",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\"}",
            b"",
        ] {
            assert_eq!(
                Object::parse(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Deep nesting inside a value is skipped without recursion: no stack overflow even
        // on a small stack (wasm's is 1 MiB).
        let deep = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200_000), "]".repeat(200_000));
                Object::parse(deep.as_bytes()).map(|o| o.to_bytes().len())
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(deep, Some(400_007));
        let mut dup = Object::parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        dup.add("c", "x");
        assert_eq!(text(&dup), r#"{"a":3,"b":2,"c":"x"}"#);
    }
}
