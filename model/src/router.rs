//! Kong's route matching (traditional_compatible precedence), shared by the gateway and, as
//! an order of Envoy routes, by the Envoy translation.
//!
//! Each (route, path) pair is a candidate. Candidates are tried in this order, as Kong
//! documents it: more kinds of match criteria first (methods, hosts, headers, paths); then
//! routes without wildcard hosts; then more headers; then regex paths by `regex_priority`
//! (highest first) before plain prefixes by length (longest first); then declaration order.

use regex::Regex;

use crate::entities::{Config, RoutePath};

#[derive(Clone, Debug)]
enum PathMatcher {
    Any,
    Prefix(String),
    Regex(Regex),
}

/// One (route, path) pair in evaluation order.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub route: usize,
    path: PathMatcher,
    hosts: Vec<String>,
    methods: Vec<String>,
    headers: Vec<(String, Vec<String>)>,
}

impl Candidate {
    /// The plain prefix of this candidate, if it has one.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix(p) => Some(p),
            _ => None,
        }
    }

    /// The Kong regex of this candidate, if it has one: without its `~`, anchored at the
    /// start of the path as Kong's router anchors it (`^(?:...)`).
    pub fn regex(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Regex(r) => Some(r.as_str()),
            _ => None,
        }
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    pub fn headers(&self) -> &[(String, Vec<String>)] {
        &self.headers
    }
}

/// Values captured by a regex path, as Kong exposes them to plugins (`uri_captures`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captures {
    /// Numbered groups from 1; unmatched groups are empty strings.
    pub positional: Vec<String>,
    pub named: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: usize,
    /// The part of the path the route matched (stripped when `strip_path`).
    pub matched: String,
    pub captures: Captures,
}

/// Kong's precedence as a tuple, compared highest first: kinds of criteria, no wildcard host,
/// header count, regex path, regex priority, prefix length, earlier declaration.
type SortKey = (u32, u8, usize, u8, i64, usize, usize);

/// A compiled, ordered set of candidates.
#[derive(Clone, Debug, Default)]
pub struct Router {
    candidates: Vec<Candidate>,
}

/// A Host header's host without its port: `example.com:8000` → `example.com`,
/// `[2001:db8::1]:8000` → `[2001:db8::1]`. An IPv6 address without brackets is left whole
/// (its last group is no port), and so is anything whose port is not digits.
pub fn host_without_port(host: &str) -> &str {
    let (h, port) = if host.starts_with('[') {
        match host.split_once("]:") {
            Some((h, port)) => (&host[..h.len() + 1], port),
            None => return host,
        }
    } else {
        match host.split_once(':') {
            Some((h, port)) if !port.contains(':') => (h, port),
            _ => return host,
        }
    };
    if !h.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        h
    } else {
        host
    }
}

/// Whether a request host matches a route host (exact, `*.suffix` or `prefix.*`); the port of
/// the request host is ignored unless the route host has one.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let bare = if host_without_port(pattern) != pattern {
        host.as_str()
    } else {
        host_without_port(&host)
    };
    if let Some(suffix) = pattern.strip_prefix('*') {
        bare.len() > suffix.len() && bare.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        bare.len() > prefix.len() && bare.starts_with(prefix)
    } else {
        bare == pattern
    }
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut keyed: Vec<(SortKey, Candidate)> = Vec::new();
        let mut order = 0usize;
        for (index, route) in config.routes.iter().enumerate() {
            let service_enabled = route
                .service
                .and_then(|s| config.services.get(s))
                .is_none_or(|s| s.enabled);
            if !service_enabled {
                continue;
            }
            let categories = [
                !route.methods.is_empty(),
                !route.hosts.is_empty(),
                !route.headers.is_empty(),
                !route.paths.is_empty(),
            ]
            .iter()
            .filter(|b| **b)
            .count() as u32;
            let wildcard = route.hosts.iter().any(|h| h.contains('*'));
            let headers: Vec<(String, Vec<String>)> = route
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let paths: Vec<PathMatcher> = if route.paths.is_empty() {
                vec![PathMatcher::Any]
            } else {
                route
                    .paths
                    .iter()
                    .filter_map(|p| match p {
                        RoutePath::Prefix(p) => Some(PathMatcher::Prefix(p.clone())),
                        // Kong anchors regex paths at the start of the path.
                        RoutePath::Regex(r) => Regex::new(&format!("^(?:{r})"))
                            .ok()
                            .map(PathMatcher::Regex),
                    })
                    .collect()
            };
            for path in paths {
                let (is_regex, regex_priority, length) = match &path {
                    PathMatcher::Regex(_) => (1u8, route.regex_priority, 0usize),
                    PathMatcher::Prefix(p) => (0, 0, p.len()),
                    PathMatcher::Any => (0, 0, 0),
                };
                // Sort keys, all "higher first" except declaration order.
                let key = (
                    categories,
                    u8::from(!wildcard),
                    headers.len(),
                    is_regex,
                    regex_priority,
                    length,
                    usize::MAX - order,
                );
                order += 1;
                keyed.push((
                    key,
                    Candidate {
                        route: index,
                        path,
                        hosts: route.hosts.clone(),
                        methods: route.methods.clone(),
                        headers: headers.clone(),
                    },
                ));
            }
        }
        keyed.sort_by_key(|(key, _)| std::cmp::Reverse(*key));
        Router {
            candidates: keyed.into_iter().map(|(_, c)| c).collect(),
        }
    }

    /// The candidates in evaluation order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The first candidate matching the request. `header` returns every value of a
    /// (lower-case) request header.
    pub fn find<'h>(
        &self,
        method: &str,
        host: &str,
        path: &str,
        header: impl Fn(&str) -> Vec<&'h str>,
    ) -> Option<RouteMatch> {
        self.candidates.iter().find_map(|c| {
            if !c.methods.is_empty() && !c.methods.iter().any(|m| m == method) {
                return None;
            }
            if !c.hosts.is_empty() && !c.hosts.iter().any(|h| host_matches(h, host)) {
                return None;
            }
            for (name, accepted) in &c.headers {
                let values = header(name);
                if !values
                    .iter()
                    .any(|v| accepted.iter().any(|a| a.eq_ignore_ascii_case(v)))
                {
                    return None;
                }
            }
            match &c.path {
                PathMatcher::Any => Some(RouteMatch {
                    route: c.route,
                    matched: String::new(),
                    captures: Captures::default(),
                }),
                PathMatcher::Prefix(p) => path.starts_with(p.as_str()).then(|| RouteMatch {
                    route: c.route,
                    matched: p.clone(),
                    captures: Captures::default(),
                }),
                PathMatcher::Regex(re) => {
                    let caps = re.captures(path)?;
                    let whole = caps.get(0).map_or("", |m| m.as_str()).to_owned();
                    let positional = (1..caps.len())
                        .map(|i| caps.get(i).map_or(String::new(), |m| m.as_str().to_owned()))
                        .collect();
                    let named = re
                        .capture_names()
                        .flatten()
                        .filter_map(|n| caps.name(n).map(|m| (n.to_owned(), m.as_str().to_owned())))
                        .collect();
                    Some(RouteMatch {
                        route: c.route,
                        matched: whole,
                        captures: Captures { positional, named },
                    })
                }
            }
        })
    }
}

/// The upstream path for a request: the service path, then the request path with the matched
/// part removed when the route strips it (Kong's `path_handling: v0` joining).
pub fn upstream_path(
    service_path: Option<&str>,
    matched: &str,
    strip_path: bool,
    path: &str,
) -> String {
    let rest = if strip_path {
        path.strip_prefix(matched).unwrap_or(path)
    } else {
        path
    };
    match service_path {
        None | Some("/") => {
            if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            }
        }
        Some(base) if rest.is_empty() => base.to_owned(),
        Some(base) => {
            if base.ends_with('/') && rest.starts_with('/') {
                format!("{base}{}", &rest[1..])
            } else if !base.ends_with('/') && !rest.starts_with('/') {
                format!("{base}/{rest}")
            } else {
                format!("{base}{rest}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_declarative;

    fn router(routes: &str) -> (Config, Router) {
        let text = format!(
            "_format_version: \"3.0\"\nservices: [{{name: s, host: s}}]\nroutes:\n{routes}"
        );
        let config = parse_declarative(&text).unwrap();
        let router = Router::new(&config);
        (config, router)
    }

    fn matched(
        config: &Config,
        router: &Router,
        method: &str,
        host: &str,
        path: &str,
    ) -> Option<String> {
        router
            .find(method, host, path, |_| Vec::new())
            .map(|m| config.routes[m.route].name.clone())
    }

    #[test]
    fn longer_prefixes_win() {
        let (c, r) = router("  - {name: short, service: s, paths: [/api]}\n  - {name: long, service: s, paths: [/api/v1]}\n");
        assert_eq!(
            matched(&c, &r, "GET", "x", "/api/v1/users").as_deref(),
            Some("long")
        );
        assert_eq!(
            matched(&c, &r, "GET", "x", "/api/v2").as_deref(),
            Some("short")
        );
        assert_eq!(matched(&c, &r, "GET", "x", "/other"), None);
    }

    #[test]
    fn more_criteria_win_then_regex_priority() {
        let (c, r) = router(
            "  - {name: any, service: s, paths: [/]}\n\
             \x20 - {name: post, service: s, paths: [/], methods: [POST]}\n\
             \x20 - {name: re0, service: s, paths: [\"~/v/\\\\d+\"]}\n\
             \x20 - {name: re9, service: s, paths: [\"~/v/1\"], regex_priority: 9}\n",
        );
        assert_eq!(
            matched(&c, &r, "POST", "x", "/v/1").as_deref(),
            Some("post")
        );
        assert_eq!(matched(&c, &r, "GET", "x", "/v/1").as_deref(), Some("re9"));
        assert_eq!(matched(&c, &r, "GET", "x", "/v/2").as_deref(), Some("re0"));
        assert_eq!(matched(&c, &r, "GET", "x", "/w").as_deref(), Some("any"));
    }

    #[test]
    fn the_port_comes_off_a_host_and_an_ipv6_literal_keeps_its_brackets() {
        for (host, bare) in [
            ("example.com", "example.com"),
            ("example.com:8000", "example.com"),
            ("[2001:db8::1]:8000", "[2001:db8::1]"),
            ("[2001:db8::1]", "[2001:db8::1]"),
            ("2001:db8::1", "2001:db8::1"),
            ("example.com:", "example.com:"),
            ("example.com:80a", "example.com:80a"),
            (":8000", ":8000"),
            ("[::1]:", "[::1]:"),
            ("[::1", "[::1"),
        ] {
            assert_eq!(host_without_port(host), bare, "{host}");
        }
        assert!(host_matches("[::1]", "[::1]:8000"));
        assert!(!host_matches("[::1]:9000", "[::1]:8000"));
        assert!(host_matches("[::1]:8000", "[::1]:8000"));
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard_and_ignore_the_port() {
        let (c, r) = router(
            "  - {name: exact, service: s, hosts: [api.example.com]}\n\
             \x20 - {name: wild, service: s, hosts: [\"*.example.com\"]}\n\
             \x20 - {name: tail, service: s, hosts: [\"example.*\"]}\n",
        );
        assert_eq!(
            matched(&c, &r, "GET", "api.example.com:8000", "/").as_deref(),
            Some("exact")
        );
        assert_eq!(
            matched(&c, &r, "GET", "a.b.example.com", "/").as_deref(),
            Some("wild")
        );
        assert_eq!(
            matched(&c, &r, "GET", "example.org", "/").as_deref(),
            Some("tail")
        );
        // Kong's wildcard stands for one or more labels.
        assert_eq!(
            matched(&c, &r, "GET", "example.co.uk", "/").as_deref(),
            Some("tail")
        );
        assert_eq!(matched(&c, &r, "GET", "example", "/"), None);
        assert_eq!(
            matched(&c, &r, "GET", "example.com", "/"),
            Some("tail".into())
        );
    }

    #[test]
    fn regex_captures_are_exposed_like_kong() {
        let (_, r) = router("  - {name: u, service: s, paths: [\"~/version/(?<version>\\\\d+)/users/(?<user>\\\\S+)\"]}\n");
        let m = r
            .find("GET", "x", "/version/1/users/john", |_| Vec::new())
            .unwrap();
        assert_eq!(m.captures.positional, vec!["1", "john"]);
        assert_eq!(
            m.captures.named,
            vec![
                ("version".to_owned(), "1".to_owned()),
                ("user".to_owned(), "john".to_owned())
            ]
        );
        assert_eq!(m.matched, "/version/1/users/john");
    }

    #[test]
    fn header_routes_match_any_accepted_value() {
        let (c, r) = router("  - {name: v1, service: s, headers: {version: [v1, v2]}}\n  - {name: all, service: s, paths: [/]}\n");
        let find = |value: &'static str| {
            r.find("GET", "x", "/", move |name| {
                if name == "version" {
                    vec![value]
                } else {
                    vec![]
                }
            })
            .map(|m| c.routes[m.route].name.clone())
        };
        assert_eq!(find("V2").as_deref(), Some("v1"));
        assert_eq!(find("v3").as_deref(), Some("all"));
    }

    #[test]
    fn upstream_paths_join_like_kong() {
        assert_eq!(upstream_path(None, "/api", true, "/api/users"), "/users");
        assert_eq!(upstream_path(None, "/api", true, "/api"), "/");
        assert_eq!(
            upstream_path(None, "/api", false, "/api/users"),
            "/api/users"
        );
        assert_eq!(
            upstream_path(Some("/base"), "/api", true, "/api/users"),
            "/base/users"
        );
        assert_eq!(upstream_path(Some("/base"), "/api", true, "/api"), "/base");
        assert_eq!(
            upstream_path(Some("/base/"), "/api", false, "/api/x"),
            "/base/api/x"
        );
        assert_eq!(
            upstream_path(Some("/base"), "/api", true, "/apix"),
            "/base/x"
        );
    }

    /// A wildcard needs at least one character of its own: `*.example.com` is no match for
    /// `.example.com`, `www.*` none for `www.` or a host that only is as long.
    #[test]
    fn wildcards_need_a_label_of_their_own() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "example.org.com"));
        assert!(host_matches("www.*", "www.a"));
        assert!(!host_matches("www.*", "www."));
        assert!(!host_matches("www.*", "example.org"));
        assert!(host_matches("www.*", "WWW.A:8000"));
        assert!(!host_matches(
            "www.example.com:8000",
            "www.example.com:8001"
        ));
    }

    /// What the Envoy translation reads of each candidate, in evaluation order: one candidate
    /// per path (or one without a path), carrying its route's hosts, methods and headers.
    #[test]
    fn candidates_expose_their_matchers_in_evaluation_order() {
        let (_, r) = router(
            "  - {name: a, service: s, paths: [/short, \"~/re/(?<id>\\\\d+)$\"], hosts: [x.test], methods: [GET], headers: {x-v: [\"1\", \"2\"]}}\n  - {name: b, service: s, hosts: [y.test]}\n",
        );
        let seen: Vec<_> = r
            .candidates()
            .iter()
            .map(|c| {
                (
                    c.route,
                    c.prefix().map(str::to_owned),
                    c.regex().map(str::to_owned),
                    c.hosts().to_vec(),
                    c.methods().to_vec(),
                    c.headers().to_vec(),
                )
            })
            .collect();
        let a_headers = vec![("x-v".to_owned(), vec!["1".to_owned(), "2".to_owned()])];
        assert_eq!(
            seen,
            [
                (
                    0,
                    None,
                    Some("^(?:/re/(?<id>\\d+)$)".to_owned()),
                    vec!["x.test".to_owned()],
                    vec!["GET".to_owned()],
                    a_headers.clone()
                ),
                (
                    0,
                    Some("/short".to_owned()),
                    None,
                    vec!["x.test".to_owned()],
                    vec!["GET".to_owned()],
                    a_headers
                ),
                (1, None, None, vec!["y.test".to_owned()], vec![], vec![]),
            ]
        );
    }

    #[test]
    fn more_headers_then_exact_hosts_then_declaration_order() {
        // Each pair has the same kinds of criteria, declared loser first.
        let (c, r) = router(
            "  - {name: one-header, service: s, paths: [/h], headers: {x-a: [\"1\"]}}\n\
             \x20 - {name: two-headers, service: s, paths: [/h], headers: {x-a: [\"1\"], x-b: [\"2\"]}}\n\
             \x20 - {name: wildcard, service: s, paths: [/w], hosts: [\"*.test\"]}\n\
             \x20 - {name: exact, service: s, paths: [/w], hosts: [a.test]}\n\
             \x20 - {name: first, service: s, paths: [/same]}\n\
             \x20 - {name: second, service: s, paths: [/same]}\n",
        );
        let find = |host: &str, path: &str, headers: &'static [(&'static str, &'static str)]| {
            r.find("GET", host, path, |name| {
                headers
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .collect()
            })
            .map(|m| c.routes[m.route].name.clone())
        };
        let both = &[("x-a", "1"), ("x-b", "2")];
        assert_eq!(find("x", "/h", both).as_deref(), Some("two-headers"));
        assert_eq!(
            find("x", "/h", &[("x-a", "1")]).as_deref(),
            Some("one-header")
        );
        assert_eq!(find("a.test", "/w", &[]).as_deref(), Some("exact"));
        assert_eq!(find("b.test", "/w", &[]).as_deref(), Some("wildcard"));
        assert_eq!(find("x", "/same", &[]).as_deref(), Some("first"));
    }
}
