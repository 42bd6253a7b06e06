//! The proxy-wasm ABI's serialisations, pure so that they are tested natively and fuzzable;
//! `host` (wasm only) reads and writes them. The SDK's own versions index without bounds
//! checks and decode names as UTF-8 with `unwrap`.

/// A header map's names and values, in order, as bytes.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A header map as the host returns it: a little-endian `u32` count, then a `u32` name size
/// and a `u32` value size per pair, then each name and value followed by a NUL. Total on any
/// bytes: `None` when they do not hold a whole map.
pub fn decode_map(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut map = Vec::with_capacity(count);
    for n in 0..count {
        let sizes = 4 + n * 8;
        let mut field = |size: usize| -> Option<Vec<u8>> {
            let end = data.checked_add(size)?;
            let value = bytes.get(data..end)?.to_vec();
            data = end.checked_add(1)?;
            Some(value)
        };
        let name = field(word(sizes)?)?;
        let value = field(word(sizes + 4)?)?;
        map.push((name, value));
    }
    Some(map)
}

/// Serialises a header map in the same format.
pub fn encode_map(map: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&size(map.len()));
    for (name, value) in map {
        out.extend_from_slice(&size(name.len()));
        out.extend_from_slice(&size(value.len()));
    }
    for (name, value) in map {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_round_trip_with_any_bytes() {
        let map: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a"),
            (b"accept", b"\xff\x80"),
            (b"x", b"a\r\n\x00b"),
            (b"\xc3", b""),
        ];
        let decoded = decode_map(&encode_map(&map)).unwrap();
        let back: Vec<(&[u8], &[u8])> = decoded
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(back, map);
        assert_eq!(decode_map(b""), Some(vec![]));
        assert_eq!(decode_map(b"\x01\x00\x00\x00"), None);
        assert_eq!(decode_map(b"\xff\xff\xff\xff"), None);
    }

    /// An empty map as a host writes it: a zero count and nothing else.
    #[test]
    fn an_empty_map_is_a_zero_count() {
        assert_eq!(encode_map(&[]), [0, 0, 0, 0]);
        assert_eq!(decode_map(&[0, 0, 0, 0]), Some(vec![]));
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_map(&bytes);
        }
    }
}
