//! Kong's normalised request path: what `kong.request.get_path()` returns and what plugins
//! compare against their configured paths (`kong.tools.uri.normalize(path, true)`).
//!
//! Envoy hands a filter the path as the client sent it, so `/v1//items`, `/v1/./items` and
//! `/v1/%69tems` would otherwise be three different paths where Kong sees one.
//!
//! The result is bytes: Kong decodes every `%XX` that is not a reserved character, including
//! the ones that are not ASCII or not UTF-8 (`%99` becomes the byte 0x99).

/// RFC 3986's reserved characters plus `%`: Kong keeps these percent-encoded (in upper case),
/// because decoding them would change what the path means.
const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";

/// Kong's `normalize(path, true)`: decodes `%XX` triplets of everything but the reserved
/// characters (whose triplets are upper-cased), removes `.` and `..` segments (RFC 3986
/// 5.2.4) and merges consecutive slashes. Total on any bytes.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    if path.is_empty() || path == b"/" {
        return path.to_vec();
    }
    remove_dot_segments(&decode_unreserved(path))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// One left-to-right pass, as Kong's single `gsub`: a decoded `%` is never read again, so
/// `%2541` stays `%2541`.
fn decode_unreserved(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            if let [high, low, after @ ..] = tail {
                if let (Some(h), Some(l)) = (hex_value(*high), hex_value(*low)) {
                    let decoded = h << 4 | l;
                    if RESERVED.contains(&decoded) {
                        out.extend_from_slice(&[
                            b'%',
                            high.to_ascii_uppercase(),
                            low.to_ascii_uppercase(),
                        ]);
                    } else {
                        out.push(decoded);
                    }
                    rest = after;
                    continue;
                }
            }
        }
        out.push(byte);
        rest = tail;
    }
    out
}

/// Kong's loop over the path: the rules are tried in this order on what is left of the
/// input, and a `..` drops the last output segment.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if rest == b"/." {
            rest = b"/";
        } else if rest == b"/.." {
            rest = b"/";
            segments.pop();
        } else if rest == b"." || rest == b".." {
            rest = b"";
        } else if let Some(after) = rest.strip_prefix(b"../") {
            rest = after;
        } else if let Some(after) = rest.strip_prefix(b"./") {
            rest = after;
        } else if rest.starts_with(b"/./") {
            rest = rest.get(2..).unwrap_or_default();
        } else if rest.starts_with(b"/../") {
            rest = rest.get(3..).unwrap_or_default();
            segments.pop();
        } else if rest.starts_with(b"//") {
            rest = rest.get(1..).unwrap_or_default();
        } else {
            // A segment runs from here (its leading slash included) to the next slash.
            let end = rest
                .iter()
                .skip(1)
                .position(|&b| b == b'/')
                .map_or(rest.len(), |i| i + 1);
            let (segment, after) = rest.split_at_checked(end).unwrap_or((rest, b""));
            segments.push(segment);
            rest = after;
        }
    }
    segments.concat()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(path: &[u8]) -> Vec<u8> {
        normalize(path)
    }

    /// Kong's `spec/01-unit/18-tools_uri_spec.lua`, with `merge_slashes` on as `get_path` uses
    /// it (the cases that only hold without merging are given their merged result).
    #[test]
    fn kongs_spec_cases() {
        let cases: &[(&[u8], &[u8])] = &[
            // no normalization necessary
            (b"", b""),
            (b"/", b"/"),
            (b"/a", b"/a"),
            (b"/a/", b"/a/"),
            (b"/a/b/c", b"/a/b/c"),
            (b"/a/b/c/", b"/a/b/c/"),
            // reserved characters stay encoded
            (b"/a%2Fb%2Fc/", b"/a%2Fb%2Fc/"),
            (
                b"/%20%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
                b"/ %21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
            ),
            // triplets are upper-cased or decoded
            (b"/a%2fb%2fc/", b"/a%2Fb%2Fc/"),
            (b"/f%6f%6f", b"/foo"),
            (b"/%6B%6f%6e%67", b"/kong"),
            (b"/%2E", b"/"),
            // dot segments
            (b"/./", b"/"),
            (b"/.", b"/"),
            (b"/..", b"/"),
            (b"/../", b"/"),
            (b"/./.././../", b"/"),
            (b"/a/b/c/./../../g", b"/a/g"),
            (b"mid/content=5/../6", b"mid/6"),
            // merged slashes
            (b"//", b"/"),
            (b"/////", b"/"),
            (b"/a//b//", b"/a/b/"),
            // issue #2366: non-ASCII bytes are decoded
            (b"/endel%C3%B8st", "/endeløst".as_bytes()),
            (
                b"/%C3%A4/a/%2e./a%2E//a/%2e/./a/../a/%2e%2E/%5f%99%af%2f%2F",
                b"/\xc3\xa4/a./a/_\x99\xaf%2F%2F",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(n(input), *expected, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn one_budget_for_the_spellings_of_a_path() {
        for spelling in [
            &b"/v1/items"[..],
            b"/v1//items",
            b"/v1/%69tems",
            b"/v1/./items",
            b"//v1/x/../items",
            b"/v1/%2e/items",
        ] {
            assert_eq!(n(spelling), b"/v1/items", "{spelling:?}");
        }
        assert_ne!(n(b"/v1%2Fitems"), b"/v1/items");
    }

    #[test]
    fn decoding_is_one_pass_and_tolerates_broken_triplets() {
        assert_eq!(n(b"/%2541"), b"/%2541");
        assert_eq!(n(b"/%41%"), b"/A%");
        assert_eq!(n(b"/%4"), b"/%4");
        assert_eq!(n(b"/%zz%4g"), b"/%zz%4g");
        assert_eq!(n(b"/%00%ff"), b"/\x00\xff");
        // A decoded slash would change the path; a decoded dot is a dot segment.
        assert_eq!(n(b"/a/%2e%2e/b"), b"/b");
        assert_eq!(n(b"/a%2F..%2Fb"), b"/a%2F..%2Fb");
    }

    #[test]
    fn any_bytes_are_normalised_without_panicking() {
        // Every 3-byte string over an alphabet of the bytes the rules look at.
        let alphabet = b"/.%2eE0Af\xff";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let out = n(&[*a, *b, *c]);
                    assert!(out.len() <= 3);
                }
            }
        }
        let long = b"/..".repeat(10_000);
        assert_eq!(n(&long), b"/");
    }

    /// RFC 3986 5.2.4's rules for what is left of a relative path: a lone `.` or `..` and a
    /// leading `./` or `../` are removed.
    #[test]
    fn relative_dot_segments_are_removed() {
        assert_eq!(n(b"."), b"");
        assert_eq!(n(b".."), b"");
        assert_eq!(n(b"../a"), b"a");
        assert_eq!(n(b"./a"), b"a");
        assert_eq!(n(b"a/.."), b"/");
    }
}
