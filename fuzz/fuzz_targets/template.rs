//! `request_transformer::template`: `Template::parse` of any configured text (with secret
//! references resolved by a test resolver) and `render` against any request values.
//!
//! - Text without `$(` and `{vault://` is literal: it renders as itself and reads nothing.
//! - A template reads only the sources `reads` reports, looks headers up by lower-case
//!   names, and its literal text pieces appear in the output in order, unchanged (values are
//!   bytes, never re-encoded).
//! - `has_secret` is set exactly when a reference was resolved; neither an error nor the
//!   template's `Debug` output shows a secret value.
//!
//! Input sections: the template text (lossy UTF-8), then request values, one a line:
//! `h<name>=<value>` a header, `q` a query argument, `c` a URI capture (`\xHH` escapes).
#![no_main]

use std::cell::{Cell, RefCell};

use libfuzzer_sys::fuzz_target;
use request_transformer::template::{Lookup, Source, Template};
use wasmgate_fuzz::{sections, unescape};

const MARK: &str = "S3CR3T-7e1f";

#[derive(Default)]
struct Request {
    values: Vec<(u8, Vec<u8>, Vec<u8>)>,
    calls: RefCell<Vec<(Source, String)>>,
}

impl Request {
    fn get(&self, kind: u8, source: Source, key: &str) -> Option<Vec<u8>> {
        self.calls.borrow_mut().push((source, key.to_owned()));
        self.values
            .iter()
            .find(|(k, n, _)| *k == kind && n == key.as_bytes())
            .map(|(_, _, v)| v.clone())
    }
}

impl Lookup for Request {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get(b'h', Source::Headers, name)
    }
    fn query(&self, name: &str) -> Option<Vec<u8>> {
        self.get(b'q', Source::QueryParams, name)
    }
    fn capture(&self, key: &str) -> Option<Vec<u8>> {
        self.get(b'c', Source::UriCaptures, key)
    }
}

/// Whether `pieces` occur in `haystack` in order, without overlapping.
fn in_order(haystack: &[u8], pieces: &[&str]) -> bool {
    let mut at = 0;
    for piece in pieces {
        match wasmgate_fuzz::find(&haystack[at..], piece.as_bytes()) {
            Some(i) => at += i + piece.len(),
            None => return false,
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let parts = sections(data, 2);
    let text = String::from_utf8_lossy(parts[0]).into_owned();
    let echoed = text.contains(MARK);
    let resolved = Cell::new(0u32);
    let resolver = |reference: &str| -> Result<String, String> {
        if reference.starts_with("env/missing") {
            return Err(format!("secret {{vault://{reference}}} is not set"));
        }
        resolved.set(resolved.get() + 1);
        Ok(format!("<{MARK}>"))
    };
    let template = match Template::parse(&text, &resolver) {
        Ok(t) => t,
        Err(e) => {
            assert!(echoed || !e.contains(MARK), "a secret in an error: {e}");
            return;
        }
    };
    assert_eq!(template.has_secret(), resolved.get() > 0);
    assert!(echoed || !format!("{template:?}").contains(MARK));
    assert_eq!(
        Template::parse(&text, &resolver).ok(),
        Some(template.clone())
    );

    let mut request = Request::default();
    for line in parts[1].split(|&b| b == b'\n') {
        let Some((&kind, rest)) = line.split_first() else {
            continue;
        };
        let (name, value) = match rest.iter().position(|&b| b == b'=') {
            Some(i) => (unescape(&rest[..i]), unescape(&rest[i + 1..])),
            None => (unescape(rest), Vec::new()),
        };
        request.values.push((kind, name, value));
    }
    let out = template.render(&request);
    assert_eq!(template.render(&request), out, "rendering is deterministic");

    let literal = !text.contains("$(") && !text.contains("{vault://");
    if literal {
        assert_eq!(template.as_text(), Some(text.as_str()));
        assert_eq!(out, text.as_bytes());
    }
    let calls = request.calls.borrow();
    for (source, key) in calls.iter() {
        assert!(
            template.reads(*source),
            "read {source:?} without reporting it"
        );
        if *source == Source::Headers {
            assert_eq!(*key, key.to_ascii_lowercase());
        }
    }
    if literal {
        assert!(calls.is_empty());
    }
    let texts: Vec<&str> = template.texts().collect();
    assert!(in_order(&out, &texts), "text pieces missing from {out:?}");
});
