//! The plugin's configuration: Kong's fields, defaults and messages, plus wasmgate's secret
//! references, body settings and the route paths a data plane ships for `uri_captures`.
//!
//! Entries are `name:value` strings parsed as Kong does (`^([^:]+):*(.-)$`: the name runs to
//! the first colon, the colons right after it are dropped, the rest is the value and may hold
//! colons). Every value is parsed as a template and its secret references are resolved here,
//! once, from the environment the caller passes (the module's WASI environment in Envoy).

use kit::schema::{self, ConfigError, Record};
use serde_json::Value;

use crate::captures::RoutePaths;
use crate::plan::HeaderPlan;
use crate::template::{Source, Template};

/// The five operations on one target (headers, query string or body), in Kong's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ops {
    /// Names (lower-case for headers).
    pub remove: Vec<String>,
    /// `(old, new)`: the new name is a template for the body and query string (Kong renders
    /// it), a plain lower-case name for headers.
    pub rename: Vec<(String, Template)>,
    /// `None` is Kong's entry without a value (`X-A:`), allowed for headers only: Kong's
    /// header table gets nil for it.
    pub replace: Vec<(String, Option<Template>)>,
    pub add: Vec<(String, Option<Template>)>,
    pub append: Vec<(String, Option<Template>)>,
}

impl Ops {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }

    /// Whether an operation removes or rewrites what the client sent (so a request whose
    /// body cannot be edited safely must not pass unchanged).
    pub fn sanitises(&self) -> bool {
        !(self.remove.is_empty() && self.rename.is_empty() && self.replace.is_empty())
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        self.rename.iter().map(|(_, t)| t).chain(
            self.replace
                .iter()
                .chain(&self.add)
                .chain(&self.append)
                .filter_map(|(_, t)| t.as_ref()),
        )
    }
}

/// The default `body_buffer_limit`: three quarters of Envoy's default per-connection buffer
/// limit (1 MiB), above which Envoy itself answers 413 to a filter that keeps buffering. The
/// slack matters for chunked bodies: the filter learns the running total only after Envoy has
/// buffered the chunk that crosses the limit, and one dispatch can carry many chunks.
pub const DEFAULT_BODY_BUFFER_LIMIT: u64 = 768 << 10;

/// `wasmgate.unparsable_body`: what happens to a body that a `remove`, `rename` or `replace`
/// applies to but that cannot be edited safely (too large, strict parse fails, ambiguous).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnparsableBody {
    /// Answer 413 / 415 / 400 (Kong's error format): the upstream never sees the body.
    #[default]
    Refuse,
    /// Pass it on unchanged, as Kong does with a body it cannot decode.
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The method to send upstream (upper-case letters).
    pub http_method: Option<String>,
    pub headers: Ops,
    pub querystring: Ops,
    pub body: Ops,
    /// `replace.uri`: the new upstream path.
    pub replace_uri: Option<Template>,
    /// wasmgate: bodies larger than this are never buffered whole.
    pub body_buffer_limit: u64,
    /// wasmgate: the data plane lets the filter hold the request headers until the body has
    /// arrived (Envoy: `allow_on_headers_stop_iteration: true`). Then a rewritten body gets an
    /// exact Content-Length, and `http_method` GET/HEAD/TRACE moves form fields to the query.
    pub hold_headers: bool,
    /// wasmgate: see [`UnparsableBody`].
    pub unparsable_body: UnparsableBody,
    /// wasmgate: each route's Kong regex paths, set by the data plane's translation; required
    /// when a template reads `uri_captures`.
    pub route_paths: Option<RoutePaths>,
    /// The header-only request path, derived from the fields above when the configuration
    /// is made ([`Config::parse`], [`Config::default`]).
    pub header_plan: Option<HeaderPlan>,
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Config {
            http_method: None,
            headers: Ops::default(),
            querystring: Ops::default(),
            body: Ops::default(),
            replace_uri: None,
            body_buffer_limit: DEFAULT_BODY_BUFFER_LIMIT,
            hold_headers: false,
            unparsable_body: UnparsableBody::Refuse,
            route_paths: None,
            header_plan: None,
        };
        config.header_plan = HeaderPlan::of(&config);
        config
    }
}

/// What an entry names, for validation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Headers,
    Querystring,
    Body,
}

impl Target {
    const ALL: [(&'static str, Target); 3] = [
        ("body", Target::Body),
        ("headers", Target::Headers),
        ("querystring", Target::Querystring),
    ];
}

/// Kong's `validate_header_name`: `^[a-zA-Z0-9-_]+$`.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A header value may not hold CR, LF, NUL or other control characters (tab is allowed).
pub fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Kong's entry split: the name up to the first colon, then the value after any colons.
pub fn split_entry(entry: &str) -> (&str, &str) {
    match entry.find(':') {
        Some(i) => (&entry[..i], entry[i..].trim_start_matches(':')),
        None => (entry, ""),
    }
}

/// Resolves `env/NAME` (and `env/NAME/key` for a JSON object in the variable) with Kong's
/// env vault rules: the variable is NAME upper-cased with `-` as `_`. Errors never hold the
/// value.
pub fn resolve_secret(
    reference: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let shown = format!("{{vault://{reference}}}");
    let reference = reference.split('?').next().unwrap_or_default();
    let Some((vault, path)) = reference.split_once('/') else {
        return Err(format!("secret reference {shown} is malformed"));
    };
    if vault != "env" {
        return Err(format!(
            "secret reference {shown}: vault '{vault}' is not supported (only env)"
        ));
    }
    let (name, key) = match path.split_once('/') {
        Some((name, key)) => (name, Some(key)),
        None => (path, None),
    };
    if name.is_empty() {
        return Err(format!("secret reference {shown} names no variable"));
    }
    let variable = name.to_ascii_uppercase().replace('-', "_");
    let Some(value) = env(&variable) else {
        return Err(format!(
            "secret reference {shown}: environment variable {variable} is not set"
        ));
    };
    let value = match key {
        None => value,
        Some(key) => serde_json::from_str::<serde_json::Value>(&value)
            .ok()
            .and_then(|v| v.get(key).and_then(|v| v.as_str()).map(str::to_owned))
            .ok_or_else(|| {
                format!(
                    "secret reference {shown}: environment variable {variable} is not a JSON \
                     object with a string '{key}'"
                )
            })?,
    };
    if value.is_empty() {
        return Err(format!("secret reference {shown} is empty"));
    }
    Ok(value)
}

/// Shows an entry in a message with control characters escaped.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Which operation an array holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Remove,
    Rename,
    Value,
}

/// One operation's entries for the three targets, before they go to their [`Ops`].
#[derive(Default)]
struct Entries {
    remove: Vec<String>,
    rename: Vec<(String, Template)>,
    values: Vec<(String, Option<Template>)>,
}

struct Reader<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn template(&self, r: &Record<'_>, path: &str, value: &str) -> Option<Template> {
        let resolve = |reference: &str| resolve_secret(reference, self.env);
        match Template::parse(value, &resolve) {
            Ok(t) => Some(t),
            Err(e) if value.contains("{vault://") && !value.contains("$(") => {
                r.error_at(path.to_owned(), e);
                None
            }
            Err(e) => {
                r.error_at(
                    path.to_owned(),
                    format!(
                        "value '{}' is not in supported format, error: {e}",
                        shown(value)
                    ),
                );
                None
            }
        }
    }

    /// Reads one `{body, headers, querystring}` record of an operation, in that order.
    fn ops_record(
        &self,
        r: &mut Record<'_>,
        op: Op,
        with_uri: bool,
    ) -> ([Entries; 3], Option<Template>) {
        let mut out: [Entries; 3] = Default::default();
        for (i, (key, target)) in Target::ALL.iter().enumerate() {
            let entries = r.string_array(key);
            let base = r.path_of(key);
            for (n, entry) in entries.into_iter().enumerate() {
                let path = format!("{base}.{}", n + 1);
                if let Some(slot) = out.get_mut(i) {
                    self.entry(r, &path, entry, op, *target, slot);
                }
            }
        }
        let uri = if with_uri {
            r.string("uri").and_then(|uri| {
                let path = r.path_of("uri");
                self.template(r, &path, uri)
            })
        } else {
            None
        };
        (out, uri)
    }

    /// Kong's per-element checks, in its order: the string's length, the `match` pattern of
    /// header entries that need a colon, `validate_header_name` on names (and on rename
    /// targets), then the value's template.
    fn entry(
        &self,
        r: &Record<'_>,
        path: &str,
        entry: &str,
        op: Op,
        target: Target,
        out: &mut Entries,
    ) {
        let error = |message: String| r.error_at(path.to_owned(), message);
        if entry.is_empty() {
            return error("length must be at least 1".into());
        }
        let headers = target == Target::Headers;
        let needs_colon = headers && op != Op::Remove;
        if needs_colon && (entry.starts_with(':') || !entry.contains(':')) {
            return error(format!("invalid value: {}", shown(entry)));
        }
        let (name, value) = split_entry(entry);
        if name.is_empty() {
            // Kong's pattern captures no name: its header validator prints nil, and a body or
            // query entry fails at run time; refused here for both.
            return error(if headers {
                "'nil' is not a valid header".into()
            } else {
                format!("'{}' has no name", shown(entry))
            });
        }
        if headers && !is_header_name(name) {
            return error(format!("'{}' is not a valid header", shown(name)));
        }
        let name_key = if headers {
            name.to_ascii_lowercase()
        } else {
            name.to_owned()
        };
        match op {
            Op::Remove => out.remove.push(name_key),
            Op::Rename if headers => {
                if !is_header_name(value) {
                    return error(format!("'{}' is not a valid header", shown(value)));
                }
                out.rename
                    .push((name_key, Template::text(&value.to_ascii_lowercase())));
            }
            Op::Rename => {
                if value.is_empty() {
                    return error(format!("key '{}' has no value", shown(name)));
                }
                if let Some(template) = self.template(r, path, value) {
                    out.rename.push((name_key, template));
                }
            }
            Op::Value if headers && value.is_empty() => out.values.push((name_key, None)),
            Op::Value => {
                if value.is_empty() {
                    return error(format!("key '{}' has no value", shown(name)));
                }
                let Some(template) = self.template(r, path, value) else {
                    return;
                };
                if headers && !template.texts().all(|t| is_header_value(t.as_bytes())) {
                    return error(if template.has_secret() {
                        "a secret it references is not a valid header value".into()
                    } else {
                        format!("'{}' is not a valid header", shown(value))
                    });
                }
                out.values.push((name_key, Some(template)));
            }
        }
    }
}

/// Reads `wasmgate.route_paths`: `{"<route name>": ["<regex without ~>", ...]}`.
fn route_paths(w: &mut Record<'_>) -> Option<RoutePaths> {
    let value = w.value("route_paths")?;
    let base = w.path_of("route_paths");
    let Value::Object(map) = value else {
        w.error("route_paths", "expected a map");
        return None;
    };
    let mut paths = RoutePaths::default();
    for (route, list) in map {
        let at = format!("{base}.{route}");
        let Value::Array(items) = list else {
            w.error_at(at, "expected an array");
            continue;
        };
        let mut regexes = Vec::with_capacity(items.len());
        for (n, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(regex) => regexes.push(regex),
                None => w.error_at(format!("{at}.{}", n + 1), "expected a string"),
            }
        }
        if regexes.len() != items.len() {
            continue;
        }
        if let Err((n, why)) = paths.insert(route, &regexes) {
            let shown_regex = regexes.get(n).map(|r| shown(r)).unwrap_or_default();
            w.error_at(
                format!("{at}.{}", n + 1),
                format!("invalid regex '{shown_regex}': {why}"),
            );
        }
    }
    Some(paths)
}

impl Config {
    /// Parses Kong's JSON `config`; `env` reads the data plane's environment for secrets.
    pub fn parse(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let document = schema::parse_document(bytes)?;
        let reader = Reader { env };
        schema::read_config(&document, |r| {
            let http_method = r.string("http_method").and_then(|m| {
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
                    Some(m.to_owned())
                } else {
                    r.error("http_method", format!("invalid value: {}", shown(m)));
                    None
                }
            });
            let mut config = Config {
                http_method,
                ..Config::default()
            };
            for (key, op) in [
                ("remove", Op::Remove),
                ("rename", Op::Rename),
                ("replace", Op::Value),
                ("add", Op::Value),
                ("append", Op::Value),
            ] {
                let (entries, uri) = r.record(key, |r| reader.ops_record(r, op, key == "replace"));
                let targets = [
                    &mut config.body,
                    &mut config.headers,
                    &mut config.querystring,
                ];
                for (ops, entries) in targets.into_iter().zip(entries) {
                    match key {
                        "remove" => ops.remove = entries.remove,
                        "rename" => ops.rename = entries.rename,
                        "replace" => ops.replace = entries.values,
                        "add" => ops.add = entries.values,
                        _ => ops.append = entries.values,
                    }
                }
                if uri.is_some() {
                    config.replace_uri = uri;
                }
            }
            r.record("wasmgate", |w| {
                if let Some(limit) = w.integer("body_buffer_limit") {
                    match u64::try_from(limit) {
                        Ok(limit) => config.body_buffer_limit = limit,
                        Err(_) => w.error(
                            "body_buffer_limit",
                            "value must be greater than or equal to 0",
                        ),
                    }
                }
                config.hold_headers = w.boolean("hold_headers", false);
                config.unparsable_body = w.one_of(
                    "unparsable_body",
                    &[
                        ("refuse", UnparsableBody::Refuse),
                        ("pass", UnparsableBody::Pass),
                    ],
                    UnparsableBody::Refuse,
                );
                config.route_paths = route_paths(w);
                if config.reads_captures() && config.route_paths.is_none() {
                    w.error(
                        "route_paths",
                        "required: a template reads uri_captures, and the data plane must \
                         provide each route's regex paths here",
                    );
                }
            });
            config.header_plan = HeaderPlan::of(&config);
            config
        })
    }

    /// Whether any template reads the route's URI captures.
    pub fn reads_captures(&self) -> bool {
        [&self.headers, &self.querystring, &self.body]
            .iter()
            .flat_map(|ops| ops.templates())
            .chain(self.replace_uri.iter())
            .any(|t| t.reads(Source::UriCaptures))
    }

    /// `http_method` GET, HEAD or TRACE: form fields move to the query string (Kong).
    pub fn moves_form_to_query(&self) -> bool {
        matches!(self.http_method.as_deref(), Some("GET" | "HEAD" | "TRACE"))
    }

    /// A warning worth logging at configure time, if any.
    pub fn warning(&self) -> Option<String> {
        (self.moves_form_to_query() && !self.hold_headers).then(|| {
            "http_method moves form fields to the query string only when the data plane can \
             hold request headers (set wasmgate.hold_headers and, in Envoy, \
             allow_on_headers_stop_iteration); without it the fields stay in the body"
                .to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Lookup;

    fn env(name: &str) -> Option<String> {
        match name {
            "BACKEND_TOKEN" => Some("t0k3n".into()),
            "MY_SECRET" => Some("from-dash".into()),
            "EMPTY" => Some(String::new()),
            "JSON" => Some(r#"{"user":"u1","n":1}"#.into()),
            "CRLF" => Some("a\r\nInjected: 1".into()),
            _ => None,
        }
    }

    fn parse(json: &str) -> Result<Config, String> {
        Config::parse(json.as_bytes(), &env).map_err(|e| e.to_string())
    }

    struct Empty;
    impl Lookup for Empty {
        fn header(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn query(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn capture(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
    }

    fn text(t: &Template) -> String {
        String::from_utf8(t.render(&Empty)).unwrap()
    }

    fn value(entry: &(String, Option<Template>)) -> String {
        text(entry.1.as_ref().unwrap())
    }

    #[test]
    fn defaults_are_empty() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.body_buffer_limit, 768 << 10);
        assert!(!c.hold_headers);
        assert_eq!(c.unparsable_body, UnparsableBody::Refuse);
        assert_eq!(c.route_paths, None);
        assert_eq!(parse("{}").unwrap(), c);
        assert_eq!(
            parse(r#"{"remove":null,"add":{"headers":null}}"#).unwrap(),
            c
        );
    }

    #[test]
    fn entries_split_like_kong() {
        assert_eq!(split_entry("h2:value:2"), ("h2", "value:2"));
        assert_eq!(split_entry("h::v"), ("h", "v"));
        assert_eq!(split_entry("h"), ("h", ""));
        assert_eq!(split_entry("h:"), ("h", ""));
        let c = parse(
            r#"{"add":{"headers":["X-Added:a:b"],"querystring":["q::1"],"body":["p:v"]},
                "rename":{"headers":["X-Old:X-New"],"body":["a:b"]},
                "remove":{"headers":["X-Gone"],"querystring":["q"]},
                "replace":{"uri":"/new","headers":["Host:h"]},
                "append":{"headers":["x-a:1","x-a:2"]},
                "http_method":"POST"}"#,
        )
        .unwrap();
        assert_eq!(c.headers.add[0].0, "x-added");
        assert_eq!(value(&c.headers.add[0]), "a:b");
        assert_eq!(value(&c.querystring.add[0]), "1");
        assert_eq!(c.headers.rename[0].0, "x-old");
        assert_eq!(text(&c.headers.rename[0].1), "x-new");
        assert_eq!(c.body.rename[0].0, "a");
        assert_eq!(text(&c.body.rename[0].1), "b");
        assert_eq!(c.headers.remove, vec!["x-gone".to_owned()]);
        assert_eq!(c.headers.replace[0].0, "host");
        assert_eq!(c.headers.append.len(), 2);
        assert_eq!(text(c.replace_uri.as_ref().unwrap()), "/new");
        assert_eq!(c.http_method.as_deref(), Some("POST"));
        assert!(c.body.sanitises() && c.headers.sanitises());
        assert!(!c.querystring.is_empty() && c.querystring.sanitises());
        let only_add = parse(r#"{"add":{"body":["p:v"]},"append":{"body":["q:v"]}}"#).unwrap();
        assert!(!only_add.body.sanitises());
    }

    #[test]
    fn header_entries_follow_kongs_schema() {
        // Review #18: Kong's validate_header_name is `^[a-zA-Z0-9-_]+$`, and an entry with a
        // colon but no value is valid (a no-op at run time).
        let c = parse(
            r#"{"add":{"headers":["X-A:","x_b:1"]},"replace":{"headers":["X-A:"]},
                "append":{"headers":["X-A:"]},"remove":{"headers":["x-r:ignored"]}}"#,
        )
        .unwrap();
        assert_eq!(c.headers.add[0], ("x-a".to_owned(), None));
        assert_eq!(c.headers.replace[0], ("x-a".to_owned(), None));
        assert_eq!(c.headers.append[0], ("x-a".to_owned(), None));
        assert_eq!(c.headers.remove, ["x-r"]);
        let cases = [
            (
                r#"{"add":{"headers":["X.Foo:v"]}}"#,
                "config.add.headers.1: 'X.Foo' is not a valid header",
            ),
            (
                r#"{"add":{"headers":["X!:v"]}}"#,
                "config.add.headers.1: 'X!' is not a valid header",
            ),
            (
                r#"{"remove":{"headers":["a","b@c"]}}"#,
                "config.remove.headers.2: 'b@c' is not a valid header",
            ),
            (
                r#"{"remove":{"headers":[":x"]}}"#,
                "config.remove.headers.1: 'nil' is not a valid header",
            ),
            (
                r#"{"remove":{"headers":[""]}}"#,
                "config.remove.headers.1: length must be at least 1",
            ),
            (
                r#"{"add":{"headers":["X-A"]}}"#,
                "config.add.headers.1: invalid value: X-A",
            ),
            (
                r#"{"add":{"headers":[":v"]}}"#,
                "config.add.headers.1: invalid value: :v",
            ),
            (
                r#"{"rename":{"headers":["a"]}}"#,
                "config.rename.headers.1: invalid value: a",
            ),
            (
                r#"{"rename":{"headers":["a:"]}}"#,
                "config.rename.headers.1: '' is not a valid header",
            ),
            (
                r#"{"rename":{"headers":["a:not valid"]}}"#,
                "config.rename.headers.1: 'not valid' is not a valid header",
            ),
            (
                r#"{"add":{"headers":["X-A:a\r\nb"]}}"#,
                "config.add.headers.1: 'a\\r\\nb' is not a valid header",
            ),
            (
                r#"{"add":{"headers":["X-A:a\u0000"]}}"#,
                "config.add.headers.1: 'a\\0' is not a valid header",
            ),
        ];
        for (json, message) in cases {
            assert_eq!(parse(json).unwrap_err(), message, "{json}");
        }
    }

    #[test]
    fn rename_targets_of_bodies_and_queries_are_templates() {
        let c = parse(r#"{"rename":{"body":["a:$(headers.x or 'b')"],"querystring":["q:p"]}}"#)
            .unwrap();
        assert_eq!(text(&c.body.rename[0].1), "b");
        assert_eq!(text(&c.querystring.rename[0].1), "p");
    }

    #[test]
    fn secrets_resolve_from_the_environment() {
        let c = parse(
            r#"{"replace":{"headers":["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]},
                "add":{"headers":["Authorization:Bearer {vault://env/backend-token}",
                                  "X-User:{vault://env/JSON/user}",
                                  "X-Dash:{vault://env/my-secret}"]}}"#,
        )
        .unwrap();
        assert_eq!(value(&c.headers.replace[0]), "Bearer t0k3n");
        assert_eq!(value(&c.headers.add[0]), "Bearer t0k3n");
        assert_eq!(value(&c.headers.add[1]), "u1");
        assert_eq!(value(&c.headers.add[2]), "from-dash");
        assert!(
            !format!("{c:?}").contains("t0k3n"),
            "secrets are not debug-printed"
        );
    }

    #[test]
    fn missing_or_unusable_secrets_refuse_the_config() {
        let cases = [
            (
                r#"{"add":{"headers":["Authorization:Bearer {vault://env/MISSING}"]}}"#,
                "config.add.headers.1: secret reference {vault://env/MISSING}: environment variable MISSING is not set",
            ),
            (
                r#"{"add":{"headers":["A:{vault://env/EMPTY}"]}}"#,
                "config.add.headers.1: secret reference {vault://env/EMPTY} is empty",
            ),
            (
                r#"{"add":{"body":["a:{vault://hcv/x}"]}}"#,
                "config.add.body.1: secret reference {vault://hcv/x}: vault 'hcv' is not supported (only env)",
            ),
            (
                r#"{"add":{"headers":["A:{vault://env/JSON/nope}"]}}"#,
                "config.add.headers.1: secret reference {vault://env/JSON/nope}: environment variable JSON is not a JSON object with a string 'nope'",
            ),
            (
                r#"{"add":{"headers":["A:{vault://env/CRLF}"]}}"#,
                "config.add.headers.1: a secret it references is not a valid header value",
            ),
        ];
        for (json, message) in cases {
            let err = parse(json).unwrap_err();
            assert_eq!(err, message);
            assert!(
                !err.contains("Injected"),
                "secret values never appear in errors"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"http_method":"get"}"#, "config.http_method: invalid value: get"),
            (r#"{"http_method":"HELLO!"}"#, "config.http_method: invalid value: HELLO!"),
            (r#"{"http_method":1}"#, "config.http_method: expected a string"),
            (r#"{"rename":{"querystring":["a"]}}"#, "config.rename.querystring.1: key 'a' has no value"),
            (r#"{"append":{"body":["p"]}}"#, "config.append.body.1: key 'p' has no value"),
            (r#"{"add":{"querystring":["q:"]}}"#, "config.add.querystring.1: key 'q' has no value"),
            (r#"{"add":{"querystring":[":v"]}}"#, "config.add.querystring.1: ':v' has no name"),
            (r#"{"add":{"body":[""]}}"#, "config.add.body.1: length must be at least 1"),
            (r#"{"add":{"headers":[1]}}"#, "config.add.headers.1: expected a string"),
            (r#"{"add":{"headers":"x:y"}}"#, "config.add.headers: expected an array"),
            (r#"{"add":{"uri":"/x"}}"#, "config.add.uri: unknown field"),
            (r#"{"replace":{"uri":1}}"#, "config.replace.uri: expected a string"),
            (r#"{"remove":{"cookies":[]}}"#, "config.remove.cookies: unknown field"),
            (r#"{"prepend":{}}"#, "config.prepend: unknown field"),
            (r#"{"wasmgate":{"body_buffer_limit":-1}}"#, "config.wasmgate.body_buffer_limit: value must be greater than or equal to 0"),
            (r#"{"wasmgate":{"unparsable_body":"drop"}}"#, "config.wasmgate.unparsable_body: expected one of: refuse, pass"),
            (r#"{"wasmgate":{"route_paths":[]}}"#, "config.wasmgate.route_paths: expected a map"),
            (r#"{"wasmgate":{"route_paths":{"r":"/x"}}}"#, "config.wasmgate.route_paths.r: expected an array"),
            (r#"{"wasmgate":{"route_paths":{"r":["/x",1]}}}"#, "config.wasmgate.route_paths.r.2: expected a string"),
            (r#"{"wasmgate":{"uri_captures":{}}}"#, "config.wasmgate.uri_captures: unknown field"),
            (
                r#"{"add":{"querystring":["q:$(uri_captures user2)"]}}"#,
                "config.add.querystring.1: value '$(uri_captures user2)' is not in supported format, error: expected '.' or '[' after 'uri_captures'",
            ),
            (
                r#"{"replace":{"uri":"/$(ERROR())"}}"#,
                "config.replace.uri: value '/$(ERROR())' is not in supported format, error: unexpected '(' at position 6: only lookups, quoted strings and 'or' are supported",
            ),
            (
                r#"{"add":{"headers":["x:$(type(headers.x))"]}}"#,
                "config.add.headers.1: value '$(type(headers.x))' is not in supported format, error: unexpected '(' at position 5: only lookups, quoted strings and 'or' are supported",
            ),
            // A secret reference inside a template value: Kong's template wording, not the
            // bare secret error a value holding only references gets.
            (
                r#"{"add":{"headers":["x:{vault://env/KEY}$(type(headers.x))"]}}"#,
                "config.add.headers.1: value '{vault://env/KEY}$(type(headers.x))' is not in supported format, error: secret reference {vault://env/KEY}: environment variable KEY is not set",
            ),
        ];
        for (json, message) in cases {
            assert_eq!(parse(json).unwrap_err(), message, "{json}");
        }
    }

    #[test]
    fn uri_captures_need_the_route_paths_from_the_data_plane() {
        // Review #11: never a silent empty value where the data plane cannot provide them.
        assert_eq!(
            parse(r#"{"replace":{"uri":"/u/$(uri_captures.id or 'x')"}}"#).unwrap_err(),
            "config.wasmgate.route_paths: required: a template reads uri_captures, and the data \
             plane must provide each route's regex paths here"
        );
        let c = parse(
            r#"{"replace":{"uri":"/u/$(uri_captures.id)"},"http_method":"GET",
                "wasmgate":{"route_paths":{"users":["/u/(?<id>\\d+)$"],"plain":[]}}}"#,
        )
        .unwrap();
        assert!(c.reads_captures());
        assert!(c.moves_form_to_query());
        assert!(c.warning().is_some());
        let err = parse(r#"{"wasmgate":{"route_paths":{"r":["/ok","/(open"]}}}"#).unwrap_err();
        assert!(
            err.starts_with("config.wasmgate.route_paths.r.2: invalid regex '/(open': "),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let c = parse(
            r#"{"http_method":"GET","wasmgate":{"hold_headers":true,"body_buffer_limit":10,
                "unparsable_body":"pass"}}"#,
        )
        .unwrap();
        assert!(!c.reads_captures());
        assert!(c.warning().is_none());
        assert_eq!(c.body_buffer_limit, 10);
        assert_eq!(c.unparsable_body, UnparsableBody::Pass);
    }

    #[test]
    fn only_get_head_and_trace_move_form_fields_to_the_query() {
        for (method, moves) in [
            (None, false),
            (Some("POST"), false),
            (Some("PUT"), false),
            (Some("GET"), true),
            (Some("HEAD"), true),
            (Some("TRACE"), true),
        ] {
            let json = match method {
                Some(m) => format!(r#"{{"http_method":"{m}"}}"#),
                None => "{}".to_owned(),
            };
            let c = parse(&json).unwrap();
            assert_eq!(c.moves_form_to_query(), moves, "{json}");
            // The warning is about moving without held headers: none when nothing moves.
            assert_eq!(c.warning().is_some(), moves && !c.hold_headers, "{json}");
        }
    }
}
