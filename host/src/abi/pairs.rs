//! The proxy-wasm header-pairs encoding: u32 count, then count × (u32 key_len, u32 val_len),
//! then each `key\0value\0`, little-endian.

use crate::headers::Headers;

/// cpp-host's limits on a map a module hands to the host.
pub const MAX_PAIRS: usize = 1024;
pub const MAX_PAIRS_BYTES: usize = 1 << 20;

pub fn encode(headers: &Headers) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in headers.iter() {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers.iter() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers.iter() {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The encoded size of a map (`proxy_get_header_map_size`).
pub fn encoded_size(headers: &Headers) -> usize {
    4 + headers
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>()
}

/// Decodes a map; `None` when malformed, longer than its pairs or over the limits. An empty
/// input is an empty map.
pub fn decode(bytes: &[u8]) -> Option<Headers> {
    if bytes.is_empty() {
        return Some(Headers::new());
    }
    if bytes.len() > MAX_PAIRS_BYTES {
        return None;
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    if count > MAX_PAIRS {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut headers = Vec::with_capacity(sizes.len());
    for (klen, vlen) in sizes {
        let key = bytes.get(at..at.checked_add(klen)?)?;
        at += klen;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        let value = bytes.get(at..at.checked_add(vlen)?)?;
        at += vlen;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        headers.push((
            String::from_utf8_lossy(key).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    // cpp-host's PairsUtil::toPairs refuses a buffer longer than its pairs (Envoy 1.40 then
    // finds no headers in a proxy_http_call: BAD_ARGUMENT).
    (at == bytes.len()).then(|| Headers::from(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Headers::from_pairs([(":path", "/a"), ("x", ""), ("x", "2")]);
        let bytes = encode(&h);
        assert_eq!(bytes.len(), encoded_size(&h));
        assert_eq!(decode(&bytes), Some(h));
        assert_eq!(decode(&[]), Some(Headers::new()));
    }

    #[test]
    fn values_keep_bytes_outside_utf8() {
        let h = Headers::from_pairs([("x", b"\xff\x80a".to_vec())]);
        assert_eq!(decode(&encode(&h)), Some(h));
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(decode(&[1, 0, 0]), None);
        assert_eq!(decode(&[1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn bytes_past_the_pairs_are_refused() {
        let h = Headers::from_pairs([(":path", "/a")]);
        let mut bytes = encode(&h);
        assert_eq!(decode(&bytes), Some(h));
        bytes.push(0);
        assert_eq!(decode(&bytes), None);
        assert_eq!(decode(&[0, 0, 0, 0]), Some(Headers::new()));
        assert_eq!(decode(&[0, 0, 0, 0, 0]), None);
    }
}
