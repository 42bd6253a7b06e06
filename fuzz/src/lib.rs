//! What the fuzz targets share: how an input is cut into sections and read as an edit
//! script, and small helpers for the properties they check.
//!
//! Inputs are kept readable so that a crash can be reported and turned into a unit test as it
//! is: sections are separated by [`SECTION`], scripts are lines, and `\xHH` in a script writes
//! any byte (see [`unescape`]). The seed corpora (`fuzz/seeds.py`) are written in the same
//! formats.

/// Separates the sections of an input (a body and its edit script, say).
pub const SECTION: &[u8] = b"\n--8<--\n";

/// The first `n` sections of `data` (missing ones are empty); the last holds the rest.
pub fn sections(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match find(rest, SECTION) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SECTION.len()..];
            }
            None => {
                out.push(rest);
                rest = b"";
            }
        }
    }
    out.push(rest);
    out
}

/// The first occurrence of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether known findings fail too (`WASMGATE_FUZZ_STRICT=1`). A finding that has been
/// reported, with a failing test in the owning crate, is otherwise skipped by its target, so
/// that the fuzzer keeps looking for new ones; docs/FUZZING.md lists them.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("WASMGATE_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `\xHH` is the byte HH; everything else is itself.
pub fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if b == b'\\' && text.get(i + 1) == Some(&b'x') {
            if let (Some(h), Some(l)) = (
                text.get(i + 2).copied().and_then(hex),
                text.get(i + 3).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// One step of an edit script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Remove(Vec<u8>),
    Rename(Vec<u8>, Vec<u8>),
    Replace(Vec<u8>, Vec<u8>),
    Add(Vec<u8>, Vec<u8>),
    Append(Vec<u8>, Vec<u8>),
}

/// An edit script: one operation a line, `r` remove, `n` rename, `p` replace, `a` add, `A`
/// append, then `name` or `name=value` (split at the first `=`; `\xHH` escapes apply after
/// the split). Lines starting with anything else are skipped.
pub fn ops(script: &[u8]) -> Vec<Op> {
    script
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&kind, rest) = line.split_first()?;
            let (name, value) = match rest.iter().position(|&b| b == b'=') {
                Some(i) => (unescape(&rest[..i]), unescape(&rest[i + 1..])),
                None => (unescape(rest), Vec::new()),
            };
            Some(match kind {
                b'r' => Op::Remove(name),
                b'n' => Op::Rename(name, value),
                b'p' => Op::Replace(name, value),
                b'a' => Op::Add(name, value),
                b'A' => Op::Append(name, value),
                _ => return None,
            })
        })
        .collect()
}

/// A byte reader for the binary parts of inputs: every read succeeds (zeros past the end).
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        for b in &mut out {
            *b = self.byte();
        }
        u64::from_le_bytes(out)
    }

    pub fn u128(&mut self) -> u128 {
        u128::from(self.u64()) | u128::from(self.u64()) << 64
    }

    /// A length-prefixed field: a length byte (255: absent), then that many bytes.
    pub fn field(&mut self) -> Option<&'a [u8]> {
        let len = self.byte();
        if len == 255 {
            return None;
        }
        let len = usize::from(len).min(self.0.len());
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(field)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A header value may not hold CR, LF, NUL or other control characters (tab is allowed): the
/// rule the transformer applies to every value it writes.
pub fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_scripts() {
        assert_eq!(
            sections(b"a\n--8<--\nb\n--8<--\nc", 2),
            [&b"a"[..], b"b\n--8<--\nc"]
        );
        assert_eq!(sections(b"a", 3), [&b"a"[..], b"", b""]);
        assert_eq!(
            ops(b"rrole\nnold=new\npk=v=w\nx\nAk=\\x00\\xff\\x4"),
            [
                Op::Remove(b"role".to_vec()),
                Op::Rename(b"old".to_vec(), b"new".to_vec()),
                Op::Replace(b"k".to_vec(), b"v=w".to_vec()),
                Op::Append(b"k".to_vec(), b"\x00\xff\\x4".to_vec()),
            ]
        );
    }
}
