//! SipHash-2-4 with a 128-bit output (Aumasson and Bernstein's reference `siphash.c` with
//! `outlen = 16`): a keyed hash, so that without the key nobody can choose identifiers that
//! land on a given counter bucket or collide with another identifier.

/// The 128-bit secret key.
pub type SipKey = [u8; 16];

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    for (slot, byte) in w.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    u64::from_le_bytes(w)
}

struct State([u64; 4]);

impl State {
    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.0;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.0[3] ^= m;
        self.round();
        self.round();
        self.0[0] ^= m;
    }

    fn fold(&self) -> u64 {
        self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3]
    }
}

/// SipHash-2-4-128 of the concatenation of `parts`; the reference's 16 output bytes are the
/// little-endian bytes of the result.
pub fn siphash128(key: &SipKey, parts: &[&[u8]]) -> u128 {
    let (k0, k1) = (
        word(key.get(..8).unwrap_or_default()),
        word(key.get(8..).unwrap_or_default()),
    );
    let mut state = State([
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ]);
    let mut block = [0u8; 8];
    let mut filled = 0;
    let mut length: u64 = 0;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        if let Some(slot) = block.get_mut(filled) {
            *slot = *byte;
        }
        filled += 1;
        length = length.wrapping_add(1);
        if filled == 8 {
            state.compress(u64::from_le_bytes(block));
            filled = 0;
        }
    }
    let last = word(block.get(..filled).unwrap_or_default()) | length << 56;
    state.compress(last);
    state.0[2] ^= 0xee;
    for _ in 0..4 {
        state.round();
    }
    let low = state.fold();
    state.0[1] ^= 0xdd;
    for _ in 0..4 {
        state.round();
    }
    let high = state.fold();
    u128::from(high) << 64 | u128::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the reference `vectors.h` (`vectors_sip128`): key 00..0f, message 00..(n-1).
    #[test]
    fn reference_vectors() {
        let key: SipKey = std::array::from_fn(|i| i as u8);
        let message: Vec<u8> = (0..64).collect();
        let rows = [
            (0, "a3817f04ba25a8e66df67214c7550293"),
            (1, "da87c1d86b99af44347659119b22fc45"),
            (7, "a1f1ebbed8dbc153c0b84aa61ff08239"),
            (8, "3b62a9ba6258f5610f83e264f31497b4"),
            (15, "5493e99933b0a8117e08ec0f97cfc3d9"),
            (63, "5150d1772f50834a503e069a973fbd7c"),
        ];
        for (n, expected) in rows {
            let tag = siphash128(&key, &[&message[..n]]);
            let hex: String = tag
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, expected, "{n} bytes");
        }
    }

    #[test]
    fn parts_are_concatenated() {
        let key = [7u8; 16];
        let whole = siphash128(&key, &[b"header:0123456789abcdef"]);
        assert_eq!(
            siphash128(&key, &[b"header:", b"0123456789", b"abcdef"]),
            whole
        );
        assert_ne!(siphash128(&[8u8; 16], &[b"header:0123456789abcdef"]), whole);
    }
}
