//! Query strings and `application/x-www-form-urlencoded` bodies, edited in place.
//!
//! Arguments keep their order, their repetitions and their original encoding: an argument
//! no operation touched is written back byte for byte, so `a=%2F&b=x+y&c` survives a
//! transformation that only adds `d`. Names and values are matched and rendered decoded, as
//! nginx's `ngx.decode_args` does (`+` is a space, `%XX` a byte; an invalid escape stays as
//! written). New text is encoded like `ngx.encode_args`: everything but `A-Z a-z 0-9 - . _ ~`
//! becomes `%XX`. Everything works on bytes: a non-UTF-8 escape never fails.

/// One argument: decoded name and value (`None` for a bare `name` without `=`), and the
/// original text of each while it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: Vec<u8>,
    pub value: Option<Vec<u8>>,
    raw_name: Option<Vec<u8>>,
    raw_value: Option<Vec<u8>>,
}

impl Param {
    pub fn new(name: &[u8], value: &[u8]) -> Param {
        Param {
            name: name.to_vec(),
            value: Some(value.to_vec()),
            raw_name: None,
            raw_value: None,
        }
    }

    /// The same argument, written encoded from its decoded name and value rather than with
    /// its original bytes: what may go into a request line (a form body's raw bytes may hold
    /// spaces, CR or LF).
    pub fn reencoded(&self) -> Param {
        Param {
            name: self.name.clone(),
            value: self.value.clone(),
            raw_name: None,
            raw_value: None,
        }
    }

    /// The value as Kong's templates and bodies see it: a bare `name` is `true`.
    pub fn value_or_true(&self) -> &[u8] {
        self.value.as_deref().unwrap_or(b"true")
    }

    fn write(&self, out: &mut Vec<u8>) {
        match &self.raw_name {
            Some(raw) => out.extend_from_slice(raw),
            None => encode_into(&self.name, out),
        }
        if let Some(value) = &self.value {
            out.push(b'=');
            match &self.raw_value {
                Some(raw) => out.extend_from_slice(raw),
                None => encode_into(value, out),
            }
        }
    }
}

/// An ordered argument list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub params: Vec<Param>,
}

impl Params {
    /// Splits on `&`; empty segments are kept so the text round-trips exactly (fuzzing entry
    /// point: total on any bytes, linear in their length).
    pub fn parse(raw: &[u8]) -> Params {
        if raw.is_empty() {
            return Params::default();
        }
        let params = raw
            .split(|&b| b == b'&')
            .map(|segment| {
                let (raw_name, raw_value) = match segment.iter().position(|&b| b == b'=') {
                    Some(i) => (&segment[..i], Some(&segment[i + 1..])),
                    None => (segment, None),
                };
                Param {
                    name: decode(raw_name),
                    value: raw_value.map(decode),
                    raw_name: Some(raw_name.to_vec()),
                    raw_value: raw_value.map(<[u8]>::to_vec),
                }
            })
            .collect();
        Params { params }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, param) in self.params.iter().enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            param.write(&mut out);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.params.iter().any(|p| p.name == name)
    }

    /// The first argument of that name.
    pub fn get(&self, name: &[u8]) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Removes every argument of that name; whether any was there.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.params.len();
        self.params.retain(|p| p.name != name);
        self.params.len() != before
    }

    /// Renames every `old` argument in place (values untouched); any existing `new` goes, as
    /// Kong overwrites it. Renaming an absent argument does nothing.
    pub fn rename(&mut self, old: &[u8], new: &[u8]) -> bool {
        if old == new || !self.contains(old) {
            return false;
        }
        self.remove(new);
        for p in self.params.iter_mut().filter(|p| p.name == old) {
            p.name = new.to_vec();
            p.raw_name = None;
        }
        true
    }

    /// Sets a present argument to one value (at its first position); absent: nothing.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) -> bool {
        let Some(first) = self.params.iter().position(|p| p.name == name) else {
            return false;
        };
        let mut i = 0;
        self.params.retain(|p| {
            let keep = p.name != name || i == first;
            i += 1;
            keep
        });
        if let Some(slot) = self.params.get_mut(first) {
            *slot = Param::new(name, value);
        }
        true
    }

    /// Adds an argument only when absent.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> bool {
        if self.contains(name) {
            return false;
        }
        self.params.push(Param::new(name, value));
        true
    }

    /// Adds an argument even when present (it becomes repeated).
    pub fn append(&mut self, name: &[u8], value: &[u8]) {
        self.params.push(Param::new(name, value));
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `+` and `%XX`; an invalid escape is kept as written.
pub fn decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = raw
                    .get(i + 1)
                    .and_then(|&h| hex(h))
                    .zip(raw.get(i + 2).and_then(|&l| hex(l)));
                if let Some((h, l)) = pair {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - . _ ~`.
pub fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    encode_into(bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(p: &Params) -> String {
        String::from_utf8(p.to_bytes()).unwrap()
    }

    #[test]
    fn untouched_arguments_keep_their_encoding() {
        let raw = "a=%2f&b=x+y&c&&d=%zz&e=%C3%A9&a=2";
        let mut p = Params::parse(raw.as_bytes());
        assert_eq!(text(&p), raw);
        assert_eq!(p.get(b"b").unwrap().value.as_deref(), Some(&b"x y"[..]));
        assert_eq!(p.get(b"d").unwrap().value.as_deref(), Some(&b"%zz"[..]));
        assert_eq!(p.get(b"e").unwrap().value.as_deref(), Some("é".as_bytes()));
        assert_eq!(p.get(b"c").unwrap().value_or_true(), b"true");
        assert_eq!(p.get(b"a").unwrap().value.as_deref(), Some(&b"/"[..]));
        p.add(b"n w", b"v&=?");
        assert_eq!(text(&p), format!("{raw}&n%20w=v%26%3D%3F"));
    }

    #[test]
    fn operations_follow_kong() {
        let mut p = Params::parse(b"a=1&b=2&a=3");
        assert!(!p.add(b"a", b"x"));
        assert!(p.replace(b"a", b"r"));
        assert_eq!(text(&p), "a=r&b=2");
        assert!(!p.replace(b"z", b"r"));
        p.append(b"b", b"4");
        assert_eq!(text(&p), "a=r&b=2&b=4");
        assert!(p.rename(b"b", b"a"));
        assert_eq!(text(&p), "a=2&a=4");
        assert!(!p.rename(b"missing", b"a"));
        assert_eq!(text(&p), "a=2&a=4");
        assert!(p.remove(b"a"));
        assert!(p.is_empty());
        assert_eq!(text(&p), "");
    }

    #[test]
    fn odd_escapes_never_fail() {
        for raw in [
            "%",
            "%%",
            "%f",
            "%ff%fe",
            "=",
            "&",
            "+=+",
            "a=%E9",
            "\u{ff}=\u{0}",
        ] {
            let p = Params::parse(raw.as_bytes());
            assert_eq!(p.to_bytes(), raw.as_bytes());
        }
        assert_eq!(decode(b"%ff%FE%4"), vec![0xff, 0xfe, b'%', b'4']);
    }

    proptest! {
        #[test]
        fn any_text_round_trips_byte_for_byte(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(Params::parse(&raw).to_bytes(), raw);
        }

        #[test]
        fn decoded_arguments_round_trip(
            pairs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..12), proptest::collection::vec(any::<u8>(), 0..12)),
                0..8,
            )
        ) {
            let mut p = Params::default();
            for (name, value) in &pairs {
                p.append(name, value);
            }
            let parsed = Params::parse(&p.to_bytes());
            let got: Vec<(Vec<u8>, Vec<u8>)> = parsed
                .params
                .iter()
                .map(|q| (q.name.clone(), q.value.clone().unwrap_or_default()))
                .collect();
            prop_assert_eq!(got, pairs);
        }

        #[test]
        fn decode_inverts_encode(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes)), bytes);
        }
    }
}
