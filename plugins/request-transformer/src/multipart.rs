//! `multipart/form-data` bodies (RFC 7578), edited part by part.
//!
//! Parts keep their order, headers and bytes; a part is named by the `name` parameter of its
//! `Content-Disposition`. A body that does not parse (no boundary, no closing delimiter) is
//! left unchanged. New parts are simple text fields:
//! `Content-Disposition: form-data; name="..."` and the value.

/// A part: its header block (without the blank line) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Part {
    headers: Vec<u8>,
    content: Vec<u8>,
    name: Option<Vec<u8>>,
}

impl Part {
    fn simple(name: &[u8], value: &[u8]) -> Part {
        Part {
            headers: disposition(name),
            content: value.to_vec(),
            name: Some(name.to_vec()),
        }
    }
}

/// `Content-Disposition: form-data; name="<name>"`, with `"`, CR and LF percent-encoded as
/// HTML forms do.
fn disposition(name: &[u8]) -> Vec<u8> {
    let mut out = b"Content-Disposition: form-data; name=\"".to_vec();
    for &b in name {
        match b {
            b'"' => out.extend_from_slice(b"%22"),
            b'\r' => out.extend_from_slice(b"%0D"),
            b'\n' => out.extend_from_slice(b"%0A"),
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

/// A parsed multipart body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multipart {
    boundary: Vec<u8>,
    preamble: Vec<u8>,
    parts: Vec<Part>,
    epilogue: Vec<u8>,
}

/// The `boundary` parameter of a Content-Type (quoted or not).
pub fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(content_type);
    for param in text.split(';').skip(1) {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if value.is_empty() || value.len() > 200 {
                return None;
            }
            return Some(value.as_bytes().to_vec());
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The `name` parameter of a part's Content-Disposition header.
fn part_name(headers: &[u8]) -> Option<Vec<u8>> {
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"content-disposition") {
            continue;
        }
        let mut rest = &line[colon + 1..];
        while let Some(i) = rest.iter().position(|&b| b == b';') {
            rest = &rest[i + 1..];
            let trimmed = rest.trim_ascii_start();
            if trimmed.len() >= 5 && trimmed[..5].eq_ignore_ascii_case(b"name=") {
                let value = &trimmed[5..];
                if let Some(quoted) = value.strip_prefix(b"\"") {
                    let end = quoted.iter().position(|&b| b == b'"')?;
                    return Some(quoted[..end].to_vec());
                }
                let end = value
                    .iter()
                    .position(|&b| b == b';' || b.is_ascii_whitespace())
                    .unwrap_or(value.len());
                return Some(value[..end].to_vec());
            }
        }
    }
    None
}

impl Multipart {
    /// An empty body with this boundary (Kong adds fields to an empty multipart body).
    pub fn empty(boundary: &[u8]) -> Multipart {
        Multipart {
            boundary: boundary.to_vec(),
            preamble: Vec::new(),
            parts: Vec::new(),
            epilogue: Vec::new(),
        }
    }

    pub fn parse(body: &[u8], boundary: &[u8]) -> Option<Multipart> {
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(boundary);
        let first = find(body, &delimiter, 0)?;
        if first != 0 && (first < 2 || &body[first - 2..first] != b"\r\n") {
            return None;
        }
        let preamble = body[..first].to_vec();
        let mut next_delimiter = b"\r\n".to_vec();
        next_delimiter.extend_from_slice(&delimiter);
        let mut parts = Vec::new();
        let mut at = first + delimiter.len();
        loop {
            if body[at..].starts_with(b"--") {
                let epilogue = body[at + 2..].to_vec();
                return Some(Multipart {
                    boundary: boundary.to_vec(),
                    preamble,
                    parts,
                    epilogue,
                });
            }
            // Transport padding, then CRLF.
            while matches!(body.get(at), Some(b' ' | b'\t')) {
                at += 1;
            }
            if !body[at..].starts_with(b"\r\n") {
                return None;
            }
            at += 2;
            let end = find(body, &next_delimiter, at)?;
            let part = &body[at..end];
            let (headers, content) = match find(part, b"\r\n\r\n", 0) {
                Some(i) => (&part[..i], &part[i + 4..]),
                None if part.starts_with(b"\r\n") => (&part[..0], &part[2..]),
                None => return None,
            };
            parts.push(Part {
                headers: headers.to_vec(),
                content: content.to_vec(),
                name: part_name(headers),
            });
            at = end + next_delimiter.len();
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.preamble.clone();
        for part in &self.parts {
            out.extend_from_slice(b"--");
            out.extend_from_slice(&self.boundary);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&part.headers);
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(&part.content);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--");
        out.extend_from_slice(&self.boundary);
        out.extend_from_slice(b"--");
        out.extend_from_slice(&self.epilogue);
        out
    }

    /// Whether a new value could be confused with the boundary (then it cannot be added).
    pub fn collides(&self, value: &[u8]) -> bool {
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(&self.boundary);
        find(value, &delimiter, 0).is_some()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.parts.iter().any(|p| p.name.as_deref() == Some(name))
    }

    /// The content of the first part of that name.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.parts
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.content.as_slice())
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.parts.len();
        self.parts.retain(|p| p.name.as_deref() != Some(name));
        self.parts.len() != before
    }

    /// Renames every part of that name; their other headers (filename, content type) stay.
    pub fn rename(&mut self, old: &[u8], new: &[u8]) -> bool {
        if old == new || !self.contains(old) {
            return false;
        }
        self.remove(new);
        for part in self
            .parts
            .iter_mut()
            .filter(|p| p.name.as_deref() == Some(old))
        {
            part.headers = rename_in_headers(&part.headers, new);
            part.name = Some(new.to_vec());
        }
        true
    }

    /// Replaces the first part of that name with a simple field (others of the name go).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) -> bool {
        let Some(first) = self
            .parts
            .iter()
            .position(|p| p.name.as_deref() == Some(name))
        else {
            return false;
        };
        let mut i = 0;
        self.parts.retain(|p| {
            let keep = p.name.as_deref() != Some(name) || i == first;
            i += 1;
            keep
        });
        self.parts[first] = Part::simple(name, value);
        true
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) -> bool {
        if self.contains(name) {
            return false;
        }
        self.parts.push(Part::simple(name, value));
        true
    }

    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        self.parts.push(Part::simple(name, value));
    }
}

/// A part's header block with its Content-Disposition replaced by one naming `new` (keeping
/// a `filename` parameter).
fn rename_in_headers(headers: &[u8], new: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(headers.len() + new.len());
    for (i, line) in headers.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let bare = line.strip_suffix(b"\r").unwrap_or(line);
        let is_disposition = bare
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|c| bare[..c].eq_ignore_ascii_case(b"content-disposition"));
        if !is_disposition {
            out.extend_from_slice(line);
            continue;
        }
        out.extend_from_slice(&disposition(new));
        let lower = bare.to_ascii_lowercase();
        if let Some(at) = find(&lower, b"filename", 0) {
            // `; filename="..."` and anything after it, as written.
            out.extend_from_slice(b"; ");
            out.extend_from_slice(&bare[at..]);
        }
        if line.len() != bare.len() {
            out.push(b'\r');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn added_fields_round_trip(
            fields in proptest::collection::vec(
                ("[a-z0-9_.-]{1,8}", proptest::collection::vec(any::<u8>(), 0..40)),
                0..6,
            )
        ) {
            let mut m = Multipart::empty(b"bNd");
            let mut expected = Vec::new();
            for (name, value) in &fields {
                if m.collides(value) {
                    continue;
                }
                m.append(name.as_bytes(), value);
                expected.push((name.as_bytes().to_vec(), value.clone()));
            }
            let parsed = Multipart::parse(&m.to_bytes(), b"bNd").unwrap();
            let got: Vec<(Vec<u8>, Vec<u8>)> = parsed
                .parts
                .iter()
                .map(|p| (p.name.clone().unwrap_or_default(), p.content.clone()))
                .collect();
            prop_assert_eq!(got, expected);
        }
    }

    const BODY: &[u8] = b"--XyZ\r\n\
Content-Disposition: form-data; name=\"a\"\r\n\r\n\
1\r\n\
--XyZ\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
\x00\xff\r\n--X\r\n\
--XyZ--\r\n";

    fn text(m: &Multipart) -> String {
        String::from_utf8_lossy(&m.to_bytes()).into_owned()
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(
            boundary(b"multipart/form-data; boundary=XyZ"),
            Some(b"XyZ".to_vec())
        );
        assert_eq!(
            boundary(b"multipart/form-data; charset=utf-8; Boundary=\"a b\""),
            Some(b"a b".to_vec())
        );
        assert_eq!(boundary(b"multipart/form-data"), None);
        assert_eq!(boundary(b"multipart/form-data; boundary="), None);
    }

    #[test]
    fn parts_round_trip_byte_for_byte() {
        let m = Multipart::parse(BODY, b"XyZ").unwrap();
        assert_eq!(m.to_bytes(), BODY);
        assert_eq!(m.get(b"a"), Some(&b"1"[..]));
        assert_eq!(m.get(b"file"), Some(&b"\x00\xff\r\n--X"[..]));
    }

    #[test]
    fn operations_edit_parts() {
        let mut m = Multipart::parse(BODY, b"XyZ").unwrap();
        assert!(m.rename(b"file", b"upload"));
        assert!(text(&m).contains(
            "Content-Disposition: form-data; name=\"upload\"; filename=\"f.bin\"\r\n\
             Content-Type: application/octet-stream"
        ));
        assert!(m.replace(b"a", b"2"));
        assert!(!m.add(b"a", b"3"));
        m.append(b"a", b"4");
        assert!(m.add(b"q\"", b"v"));
        assert!(m.remove(b"upload"));
        assert_eq!(
            text(&m),
            "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n2\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n4\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"q%22\"\r\n\r\nv\r\n--XyZ--\r\n"
        );
        let reparsed = Multipart::parse(&m.to_bytes(), b"XyZ").unwrap();
        assert_eq!(reparsed.get(b"q%22"), Some(&b"v"[..]));
        assert!(m.collides(b"x--XyZ"));
        let mut e = Multipart::empty(b"b");
        e.add(b"k", b"v");
        assert_eq!(
            text(&e),
            "--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv\r\n--b--"
        );
    }

    #[test]
    fn broken_bodies_are_refused_without_failing() {
        for body in [
            &b""[..],
            b"--XyZ",
            b"--XyZ\r\nno blank line\r\n--XyZ--",
            b"--XyZ\r\n\r\nunterminated",
            b"junk--XyZ--",
            b"\xff\xfe",
        ] {
            assert_eq!(Multipart::parse(body, b"XyZ"), None);
        }
        let m = Multipart::parse(b"--XyZ--", b"XyZ").unwrap();
        assert_eq!(m.to_bytes(), b"--XyZ--");
    }
}
