//! Header and trailer maps as proxy-wasm sees them: ordered `(name, value)` pairs with
//! lower-case names, duplicates kept, HTTP/2 pseudo-headers (`:method`, `:path`,
//! `:authority`, `:scheme`, `:status`) included.
//!
//! Values are bytes: HTTP lets a client send obs-text (0x80-0xFF) in a value, Envoy forwards
//! it, and a filter must see and forward exactly what was sent, never a lossy UTF-8 copy.
//! Names are tokens (ASCII) by the time a codec has accepted them.

/// An ordered header map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    pub fn from_pairs<K: Into<String>, V: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Headers {
        Headers(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into().to_ascii_lowercase(), v.into()))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first value of `name` (case-insensitive), as Envoy answers
    /// `proxy_get_header_map_value`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` when it is text (pseudo-headers, numbers, media types).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.0
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Replaces every value of `name` with one (adds it when absent).
    pub fn replace(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        match self
            .0
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = value.to_vec();
                let mut i = first + 1;
                while i < self.0.len() {
                    if self.0[i].0.eq_ignore_ascii_case(name) {
                        self.0.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            None => self.add(name, value),
        }
    }

    /// Removes every value of `name` (absent: nothing happens).
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The total size in bytes of names and values.
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl FromIterator<(String, Vec<u8>)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Headers::from_pairs(iter)
    }
}
