//! Kong's `uri_captures` on every data plane, by one mechanism: the data plane's translation
//! ships each route's Kong regex paths in the plugin config (`wasmgate.route_paths`), and the
//! filter evaluates them on the request, as Kong's router does.
//!
//! Kong (3.x, `traditional_compatible` and `expressions` routers) matches a regex path as
//! `"^" .. path_without_tilde` with Rust's `regex` crate against the normalised request path
//! (no query string), takes the first of the route's regex paths that matches, and exposes
//! group 0, the numbered groups and the named groups; a group that did not participate is
//! absent, and a match without any group but 0 gives an empty table. A route without regex
//! paths, or a request no regex path matches, gets the empty table too.
//!
//! The regexes are compiled here with `regex-lite` (small, linear-time matching): Rust
//! `regex` syntax without Unicode classes, so `\d`, `\w` and `\s` are ASCII-only and
//! `\p{...}` refuses the config. A path that is not UTF-8 after normalisation matches none.

use std::fmt;

use regex_lite::Regex;

/// Each route's compiled regex paths, by route name (Envoy's `xds.route_name`).
#[derive(Clone, Default)]
pub struct RoutePaths {
    routes: Vec<(String, Vec<Regex>)>,
}

impl fmt::Debug for RoutePaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.routes.iter().map(|(name, regexes)| {
                (name, regexes.iter().map(Regex::as_str).collect::<Vec<_>>())
            }))
            .finish()
    }
}

impl PartialEq for RoutePaths {
    fn eq(&self, other: &Self) -> bool {
        self.routes.len() == other.routes.len()
            && self.routes.iter().zip(&other.routes).all(|(a, b)| {
                a.0 == b.0
                    && a.1.len() == b.1.len()
                    && a.1.iter().zip(&b.1).all(|(x, y)| x.as_str() == y.as_str())
            })
    }
}

impl Eq for RoutePaths {}

/// A route's captures for one request: `(key, value)` with keys `"0"`, `"1"`, ... and group
/// names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    values: Vec<(String, Vec<u8>)>,
}

impl Captures {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

impl RoutePaths {
    /// Compiles one route's regex paths (Kong's, without the `~`). `Err` holds the index of
    /// the path that does not compile and why.
    pub fn insert(&mut self, route: &str, paths: &[&str]) -> Result<(), (usize, String)> {
        let mut regexes = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            match Regex::new(&format!("^{path}")) {
                Ok(regex) => regexes.push(regex),
                Err(e) => return Err((i, e.to_string().replace('\n', " "))),
            }
        }
        self.routes.push((route.to_owned(), regexes));
        Ok(())
    }

    /// The captures of `route` for a request whose path (without the query string) is `path`.
    pub fn captures(&self, route: Option<&[u8]>, path: &[u8]) -> Captures {
        let Some((_, regexes)) = route.and_then(|route| {
            self.routes
                .iter()
                .find(|(name, _)| name.as_bytes() == route)
        }) else {
            return Captures::default();
        };
        let normalized = kit::path::normalize(path);
        let Ok(text) = std::str::from_utf8(&normalized) else {
            return Captures::default();
        };
        let Some((regex, groups)) = regexes
            .iter()
            .find_map(|regex| regex.captures(text).map(|groups| (regex, groups)))
        else {
            return Captures::default();
        };
        let mut values = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            if let Some(m) = group {
                values.push((i.to_string(), m.as_str().as_bytes().to_vec()));
            }
        }
        for name in regex.capture_names().flatten() {
            if let Some(m) = groups.name(name) {
                values.push((name.to_owned(), m.as_str().as_bytes().to_vec()));
            }
        }
        if values.len() < 2 {
            // Kong's `has_capture`: only the whole match is no capture at all.
            return Captures::default();
        }
        Captures { values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(routes: &[(&str, &[&str])]) -> RoutePaths {
        let mut p = RoutePaths::default();
        for (name, list) in routes {
            p.insert(name, list).unwrap();
        }
        p
    }

    fn get(c: &Captures, key: &str) -> Option<String> {
        c.get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_first_matching_regex_gives_kongs_captures() {
        let p = paths(&[
            ("users", &[r"/u/(?<id>\d+)(/(x))?$", r"/(\w+)/(?P<rest>.*)"]),
            ("plain", &[r"/plain"]),
            ("prefix", &[]),
        ]);
        let c = p.captures(Some(b"users"), b"/u/42");
        assert_eq!(get(&c, "0").as_deref(), Some("/u/42"));
        assert_eq!(get(&c, "1").as_deref(), Some("42"));
        assert_eq!(get(&c, "id").as_deref(), Some("42"));
        assert_eq!(get(&c, "2"), None, "an unmatched group is absent");
        assert_eq!(get(&c, "3"), None);
        // The path is normalised first, as Kong's router sees it.
        let c = p.captures(Some(b"users"), b"/u//%34%32");
        assert_eq!(get(&c, "id").as_deref(), Some("42"));
        let c = p.captures(Some(b"users"), b"/abc/d/e");
        assert_eq!(get(&c, "rest").as_deref(), Some("d/e"));
        assert_eq!(get(&c, "1").as_deref(), Some("abc"));
        // Anchored at the start, as Kong prefixes `^`.
        assert_eq!(p.captures(Some(b"users"), b"x/u/42"), Captures::default());
        // Only group 0: no captures at all (Kong's has_capture).
        assert_eq!(p.captures(Some(b"plain"), b"/plain"), Captures::default());
        assert_eq!(p.captures(Some(b"prefix"), b"/u/42"), Captures::default());
        assert_eq!(p.captures(Some(b"unknown"), b"/u/42"), Captures::default());
        assert_eq!(p.captures(None, b"/u/42"), Captures::default());
    }

    #[test]
    fn any_path_bytes_are_safe() {
        let p = paths(&[("r", &[r"/(.*)"])]);
        for path in [
            &b"/\xff\x80"[..],
            b"/%FF",
            b"/a\r\n\x00",
            b"",
            b"%",
            b"/../../..",
        ] {
            let c = p.captures(Some(b"r"), path);
            if let Some(v) = c.get("1") {
                assert!(std::str::from_utf8(v).is_ok());
            }
        }
        assert_eq!(
            get(&p.captures(Some(b"r"), b"/a\r\n\x00"), "1").as_deref(),
            Some("a\r"),
            "`.` stops at LF, as in Kong's regex"
        );
    }

    #[test]
    fn regexes_that_do_not_compile_are_reported_by_index() {
        let mut p = RoutePaths::default();
        let err = p.insert("r", &["/ok", "/(unclosed"]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(p.insert("r", &[r"/\p{L}"]).is_err(), "no Unicode classes");
    }

    #[test]
    fn route_paths_are_equal_by_route_names_and_patterns() {
        let users: &[(&str, &[&str])] = &[("users", &[r"/u/(\d+)", r"/v/(\d+)"])];
        assert_eq!(paths(users), paths(users));
        for other in [
            &[("other", &[r"/u/(\d+)", r"/v/(\d+)"][..])][..],
            &[("users", &[r"/u/(\d+)", r"/w/(\d+)"][..])],
            &[("users", &[r"/u/(\d+)"][..])],
            &[("users", &[r"/u/(\d+)", r"/v/(\d+)", r"/w"][..])],
            &[
                ("users", &[r"/u/(\d+)", r"/v/(\d+)"][..]),
                ("more", &[][..]),
            ],
            &[],
        ] {
            assert_ne!(paths(users), paths(other), "{other:?}");
        }
        // Printed as each route's anchored patterns (a config's Debug in a log).
        assert_eq!(
            format!("{:?}", paths(users)),
            r#"{"users": ["^/u/(\\d+)", "^/v/(\\d+)"]}"#
        );
    }
}
