//! `kit::path::normalize` on any bytes, against a line-by-line model of Kong's
//! `kong.tools.uri.normalize(path, true)` (Kong 3.9 `kong/tools/uri.lua`, its early exits
//! included); and the properties that follow: never longer, no `//`, no `.` or `..`
//! segment left, and idempotent once no decodable triplet is left.
//!
//! Kong's normalisation is not idempotent in general (`/%2541` stays, `/%%34%31` becomes
//! `/%41`, then `/A`: its decoding is one pass), so idempotence is asserted only where it
//! holds in Kong too.
#![no_main]

use libfuzzer_sys::fuzz_target;

const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `ngx.re.gsub(uri, "%([\\dA-F]{2})", normalize_decode, "joi")`.
fn kong_decode(uri: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < uri.len() {
        if uri[i] == b'%' && i + 2 < uri.len() {
            if let (Some(h), Some(l)) = (hex(uri[i + 1]), hex(uri[i + 2])) {
                let num = h * 16 + l;
                if RESERVED.contains(&num) {
                    out.extend(uri[i..i + 3].to_ascii_uppercase());
                } else {
                    out.push(num);
                }
                i += 3;
                continue;
            }
        }
        out.push(uri[i]);
        i += 1;
    }
    out
}

fn kong_normalize(uri: &[u8]) -> Vec<u8> {
    if uri.is_empty() || uri == b"/" {
        return uri.to_vec();
    }
    let mut uri = if uri.contains(&b'%') {
        kong_decode(uri)
    } else {
        uri.to_vec()
    };
    if !uri.contains(&b'.') && !uri.windows(2).any(|w| w == b"//") {
        return uri;
    }
    let mut output: Vec<Vec<u8>> = Vec::new();
    let mut output_n = 0usize;
    while !uri.is_empty() {
        let at = |i: usize| uri.get(i).copied();
        if uri == b"/." {
            uri = b"/".to_vec();
        } else if uri == b"/.." {
            uri = b"/".to_vec();
            output_n = output_n.saturating_sub(1);
        } else if uri == b"." || uri == b".." {
            uri.clear();
        } else if at(0) == Some(b'.') && at(1) == Some(b'.') && at(2) == Some(b'/') {
            uri.drain(..3);
        } else if (at(0) == Some(b'.') && at(1) == Some(b'/'))
            || (at(0) == Some(b'/') && at(1) == Some(b'.') && at(2) == Some(b'/'))
        {
            // `./` and `/./` (two rules in Kong, the same step).
            uri.drain(..2);
        } else if at(0) == Some(b'/')
            && at(1) == Some(b'.')
            && at(2) == Some(b'.')
            && at(3) == Some(b'/')
        {
            uri.drain(..3);
            output_n = output_n.saturating_sub(1);
        } else if at(0) == Some(b'/') && at(1) == Some(b'/') {
            uri.drain(..1);
        } else {
            let segment = match uri.iter().skip(1).position(|&b| b == b'/') {
                Some(i) => uri.drain(..i + 1).collect(),
                None => std::mem::take(&mut uri),
            };
            output.truncate(output_n);
            output.push(segment);
            output_n += 1;
        }
    }
    output.truncate(output_n);
    output.concat()
}

/// Whether every `%XX` left is a reserved character's upper-case triplet (a second pass of
/// Kong's decoding changes nothing then).
fn fully_decoded(path: &[u8]) -> bool {
    path.windows(3).all(|w| match w {
        [b'%', h, l] => match (hex(*h), hex(*l)) {
            (Some(h2), Some(l2)) => {
                RESERVED.contains(&(h2 * 16 + l2))
                    && !h.is_ascii_lowercase()
                    && !l.is_ascii_lowercase()
            }
            _ => true,
        },
        _ => true,
    })
}

fuzz_target!(|path: &[u8]| {
    let out = kit::path::normalize(path);
    assert_eq!(out, kong_normalize(path), "Kong normalises differently");
    assert!(out.len() <= path.len());
    if path.is_empty() || path == b"/" {
        assert_eq!(out, path);
        return;
    }
    assert!(!out.windows(2).any(|w| w == b"//"), "slashes are merged");
    for segment in out.split(|&b| b == b'/') {
        assert!(
            segment != b"." && segment != b"..",
            "dot segments are removed"
        );
    }
    if fully_decoded(&out) {
        assert_eq!(kit::path::normalize(&out), out, "idempotent");
    }
});
