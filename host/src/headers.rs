//! Header and trailer maps as proxy-wasm sees them: ordered `(name, value)` pairs with
//! lower-case names, duplicates kept, HTTP/2 pseudo-headers (`:method`, `:path`,
//! `:authority`, `:scheme`, `:status`) included.
//!
//! Values are bytes: HTTP lets a client send obs-text (0x80-0xFF) in a value, Envoy forwards
//! it, and a filter must see and forward exactly what was sent, never a lossy UTF-8 copy.
//! Names are tokens (ASCII) by the time a codec has accepted them.

use std::sync::Arc;

/// An ordered header map.
///
/// Shared until written: the filter chain hands the headers it lets through to the data plane
/// and keeps them for later callbacks, and a copy costs a reference count until one side
/// changes its copy. An empty map holds no allocation.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Vec<Pair>>>);

/// A header's lower-case name and its value's bytes.
type Pair = (String, Vec<u8>);

impl Headers {
    pub fn new() -> Headers {
        Headers(None)
    }

    pub fn from_pairs<K: Into<String>, V: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Headers {
        pairs
            .into_iter()
            .map(|(k, v)| (k.into().to_ascii_lowercase(), v.into()))
            .collect::<Vec<_>>()
            .into()
    }

    fn pairs(&self) -> &[Pair] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The pairs to change: this map's own copy from here on.
    fn pairs_mut(&mut self) -> &mut Vec<Pair> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    pub fn len(&self) -> usize {
        self.pairs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs().iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first value of `name` (case-insensitive), as Envoy answers
    /// `proxy_get_header_map_value`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` when it is text (pseudo-headers, numbers, media types).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        self.pairs()
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.pairs_mut()
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Adds a pair at the front (e.g. the Host an HTTP/1.1 request starts with).
    pub fn add_first(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.pairs_mut()
            .insert(0, (name.to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Replaces every value of `name` with one (adds it when absent).
    pub fn replace(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        let Some(first) = self
            .pairs()
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name))
        else {
            return self.add(name, value);
        };
        let pairs = self.pairs_mut();
        pairs[first].1 = value.to_vec();
        let mut i = first + 1;
        while i < pairs.len() {
            if pairs[i].0.eq_ignore_ascii_case(name) {
                pairs.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Removes every value of `name` (absent: nothing happens, and nothing is copied).
    pub fn remove(&mut self, name: &str) {
        if self.get(name).is_some() {
            self.pairs_mut()
                .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        }
    }

    /// The total size in bytes of names and values.
    pub fn byte_size(&self) -> usize {
        self.pairs().iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Pairs taken as they are (names already lower-case).
impl From<Vec<Pair>> for Headers {
    fn from(pairs: Vec<Pair>) -> Headers {
        Headers((!pairs.is_empty()).then(|| Arc::new(pairs)))
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.pairs() == other.pairs()
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl FromIterator<(String, Vec<u8>)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Headers::from_pairs(iter)
    }
}
