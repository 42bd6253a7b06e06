//! Kong's path normalisation (RFC 3986), applied before routing so that `/a/../admin` cannot
//! slip past a route, and sent upstream as normalised.

/// Upper-cases percent-encoded triplets, decodes unreserved characters, removes dot segments
/// and merges duplicate slashes.
pub fn normalize(path: &str) -> String {
    let decoded = normalize_percent(path);
    let without_dots = remove_dot_segments(&decoded);
    merge_slashes(&without_dots)
}

fn normalize_percent(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let (high, low) = (bytes[i + 1], bytes[i + 2]);
            if let (Some(h), Some(l)) = ((high as char).to_digit(16), (low as char).to_digit(16)) {
                let value = (h * 16 + l) as u8;
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(value);
                } else {
                    out.extend([b'%', high.to_ascii_uppercase(), low.to_ascii_uppercase()]);
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                if output.len() > 1 || (output.len() == 1 && !output[0].is_empty()) {
                    output.pop();
                }
                trailing_slash = i == last;
            }
            s => {
                output.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut joined = output.join("/");
    if absolute && !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    if trailing_slash && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalises_like_kong() {
        assert_eq!(normalize("/foo%3a"), "/foo%3A");
        assert_eq!(normalize("/fo%6F"), "/foo");
        assert_eq!(normalize("/foo/./bar/../baz"), "/foo/baz");
        assert_eq!(normalize("/foo//bar"), "/foo/bar");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/%zz"), "/%zz");
        assert_eq!(normalize("/x%"), "/x%");
    }
}
