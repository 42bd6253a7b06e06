//! `request_transformer::multipart`: `boundary` of a Content-Type, `Multipart::parse` of a
//! body, and the edits a transformer makes.
//!
//! - `boundary` gives 1 to 200 RFC 2046 characters, not ending in a space, and an empty
//!   body built with it parses.
//! - A body that parses is written back byte for byte, and `--boundary` occurs in it exactly
//!   once per delimiter line (once per part, plus the closing one): nowhere a lenient parser
//!   could start a part the strict one does not see.
//! - An edit script (section 3: `r`emove, re`n`ame, re`p`lace, `a`dd; Kong's multipart has
//!   no append) changes the part names as a model of Kong's semantics does; written and
//!   parsed again, the body has the same parts, with names as a form encodes them (`"`, CR,
//!   LF and other controls as `%XX`).
//!
//! Input sections: Content-Type value, body, edit script. A Content-Type without a valid
//! boundary still gets its body parsed, with the Content-Type's bytes as the boundary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_transformer::multipart::{boundary, Multipart, MAX_BOUNDARY};
use wasmgate_fuzz::{find, ops, sections, Op};

/// Occurrences of `--boundary`, read left to right as delimiter lines are: a match and, when
/// `--` follows it (the close delimiter), those two dashes too.
fn delimiters(body: &[u8], dash: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while let Some(i) = body.get(at..).and_then(|rest| find(rest, dash)) {
        count += 1;
        at += i + dash.len();
        if body.get(at..).is_some_and(|rest| rest.starts_with(b"--")) {
            at += 2;
        }
    }
    count
}

/// The name a part written by the transformer reads back as.
fn as_written(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in name {
        if b == b'"' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// One part as the model sees it: its name in memory and its name once written and read.
type Part = (Option<Vec<u8>>, Option<Vec<u8>>);

fn simple(name: &[u8]) -> Part {
    (Some(name.to_vec()), Some(as_written(name)))
}

fn apply(model: &mut Vec<Part>, op: &Op) -> bool {
    let named = |p: &Part, n: &[u8]| p.0.as_deref() == Some(n);
    let remove = |model: &mut Vec<Part>, n: &[u8]| {
        let before = model.len();
        model.retain(|p| !named(p, n));
        model.len() != before
    };
    match op {
        Op::Remove(n) => remove(model, n),
        Op::Rename(old, new) => {
            if old == new || !model.iter().any(|p| named(p, old)) {
                return false;
            }
            // The last `new` part becomes the simple field in place; other `new` parts go.
            match model.iter().rposition(|p| named(p, new)) {
                Some(last) => {
                    let mut i = 0;
                    model.retain(|p| {
                        i += 1;
                        !named(p, new) || i - 1 == last
                    });
                    if let Some(slot) = model.iter_mut().find(|p| named(p, new)) {
                        *slot = simple(new);
                    }
                }
                None => model.push(simple(new)),
            }
            remove(model, old);
            true
        }
        Op::Replace(n, _) => {
            if !remove(model, n) {
                return false;
            }
            model.push(simple(n));
            true
        }
        Op::Add(n, _) => {
            if model.iter().any(|p| named(p, n)) {
                return false;
            }
            model.push(simple(n));
            true
        }
        Op::Append(..) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 3);
    let (content_type, body, script) = (parts[0], parts[1], parts[2]);
    let valid = boundary(content_type);
    if let Some(b) = &valid {
        assert!(!b.is_empty() && b.len() <= MAX_BOUNDARY);
        assert_ne!(b.last(), Some(&b' '));
        assert!(b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&c)));
        let empty = Multipart::empty(b).to_bytes();
        let parsed = Multipart::parse(&empty, b).expect("an empty body parses");
        assert_eq!(parsed.names().count(), 0);
    }
    let b = match &valid {
        Some(b) => b.clone(),
        None if !content_type.is_empty() => content_type.to_vec(),
        None => b"B".to_vec(),
    };
    let Ok(mut multipart) = Multipart::parse(body, &b) else {
        return;
    };
    assert_eq!(multipart.to_bytes(), body, "round trip");
    let mut dash = b"--".to_vec();
    dash.extend_from_slice(&b);
    assert_eq!(
        delimiters(body, &dash),
        multipart.names().count() + 1,
        "--boundary outside a delimiter line"
    );

    // Edits, as the transformer makes them: only with a valid boundary, and never writing a
    // name or value that holds it (the transformer refuses those with 500).
    if valid.is_none() {
        return;
    }
    let mut model: Vec<Part> = multipart
        .names()
        .map(|n| (n.map(<[u8]>::to_vec), n.map(<[u8]>::to_vec)))
        .collect();
    for op in ops(script) {
        let written: Vec<&[u8]> = match &op {
            Op::Rename(_, new) => vec![new],
            Op::Replace(n, v) | Op::Add(n, v) => vec![n, v],
            _ => vec![],
        };
        if written.iter().any(|w| multipart.collides(w)) {
            continue;
        }
        let changed = match &op {
            Op::Remove(n) => multipart.remove(n),
            Op::Rename(old, new) => multipart.rename(old, new),
            Op::Replace(n, v) => multipart.replace(n, v),
            Op::Add(n, v) => multipart.add(n, v),
            Op::Append(..) => false,
        };
        assert_eq!(changed, apply(&mut model, &op), "{op:?}");
        let names: Vec<Option<Vec<u8>>> =
            multipart.names().map(|n| n.map(<[u8]>::to_vec)).collect();
        let expected: Vec<Option<Vec<u8>>> = model.iter().map(|p| p.0.clone()).collect();
        assert_eq!(names, expected, "after {op:?}");
        if let Op::Remove(n) = &op {
            assert!(!multipart.contains(n));
        }
    }
    let written = multipart.to_bytes();
    let again = Multipart::parse(&written, &b).expect("an edited body parses again");
    let names: Vec<Option<Vec<u8>>> = again.names().map(|n| n.map(<[u8]>::to_vec)).collect();
    let expected: Vec<Option<Vec<u8>>> = model.iter().map(|p| p.1.clone()).collect();
    assert_eq!(names, expected, "names after a write and a parse");
});
