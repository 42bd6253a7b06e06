//! `request_transformer::multipart::{parameters, disposition_name}` on any header value.
//!
//! - `parameters`: the leading value is a non-empty run of token characters and `/`; names
//!   are non-empty lower-case tokens; every value is free of control characters but tab; and
//!   the parameters written back (`lead; name="value"` with `"` and `\` escaped) parse to the
//!   same list.
//! - `disposition_name`: with exactly one `name` and no `name*`, the name is that value; a
//!   repeated `name` or `name*` is ambiguous; and `form-data; name="<n>"`, written as a form
//!   writes it, reads back as `n` for any `n` without control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_transformer::multipart::{disposition_name, parameters, Malformed};

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn quoted(value: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fuzz_target!(|value: &[u8]| {
    if let Some((lead, params)) = parameters(value) {
        assert!(!lead.is_empty() && lead.iter().all(|&b| is_tchar(b) || b == b'/'));
        for (name, v) in &params {
            assert!(!name.is_empty() && name.iter().all(|&b| is_tchar(b)));
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
        }
        let mut written = lead.to_vec();
        for (name, v) in &params {
            written.extend_from_slice(b"; ");
            written.extend_from_slice(name);
            written.push(b'=');
            written.extend_from_slice(&quoted(v));
        }
        let (lead2, params2) = parameters(&written).expect("written parameters parse");
        assert_eq!((lead2, &params2), (lead, &params));

        let count = |n: &[u8]| params.iter().filter(|(k, _)| k == n).count();
        let name = disposition_name(value);
        if count(b"name") > 1 || count(b"name*") > 1 {
            assert_eq!(name, Err(Malformed::AmbiguousName));
        } else if count(b"name*") == 0 {
            let plain = params
                .iter()
                .find(|(k, _)| k == b"name")
                .map(|(_, v)| v.clone());
            assert_eq!(name, Ok(plain));
        }
    } else {
        assert_eq!(disposition_name(value), Err(Malformed::BadDisposition));
    }

    // Any name without control characters reads back from the header a form writes.
    if value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        let mut header = b"form-data; name=".to_vec();
        header.extend_from_slice(&quoted(value));
        assert_eq!(disposition_name(&header), Ok(Some(value.to_vec())));
    }
});
