//! The decisions per request, in Kong's order: `replace.uri` → `http_method` → headers → body
//! → query string, each remove → rename → replace → add → append.
//!
//! [`on_headers`] sees the request head and decides every header change (`:path`, `:method`
//! and `:authority` included), and whether the body must be buffered; [`BodyJob::finish`]
//! rewrites the buffered body. Every template is rendered at the headers, from the original
//! request, so a value that cannot render fails the request (500, as Kong) before anything
//! reaches the upstream.

use std::cell::OnceCell;

use kit::{kong_error, LocalResponse};
use serde_json::Value;

use crate::config::{is_header_value, Config, Ops};
use crate::json::Object;
use crate::multipart::{self, Multipart};
use crate::template::Lookup;
use crate::urlencoded::Params;

/// Kong's message for an error inside a plugin.
pub const UNEXPECTED: &str = "An unexpected error occurred";

/// The request head as the data plane gives it: lower-case names, pseudo-headers
/// (`:method`, `:path`, `:authority`) included, duplicates kept.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub headers: &'a [(String, Vec<u8>)],
    /// The headers end the stream: there is no body.
    pub end_of_stream: bool,
    /// The data plane's URI captures (the `wasmgate.uri_captures` property, a JSON object),
    /// when it provides them.
    pub captures: Option<&'a [u8]>,
}

/// The final values of one request header; no values: remove it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderChange {
    pub name: String,
    pub values: Vec<Vec<u8>>,
}

/// A request the plugin answers itself, and why (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub response: LocalResponse,
    pub log: String,
}

/// What to do at the request headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadDecision {
    pub changes: Vec<HeaderChange>,
    /// Buffer the body and finish it with this job.
    pub body: Option<BodyJob>,
}

/// Which body codec applies, from the Content-Type (Kong's substring matches, in its order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Multipart(Vec<u8>),
    Form,
}

impl BodyKind {
    fn of(content_type: Option<&[u8]>) -> Option<BodyKind> {
        let lower = content_type?.to_ascii_lowercase();
        let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
        if has(b"application/json") {
            Some(BodyKind::Json)
        } else if has(b"multipart/form-data") {
            multipart::boundary(content_type?).map(BodyKind::Multipart)
        } else if has(b"application/x-www-form-urlencoded") {
            Some(BodyKind::Form)
        } else {
            None
        }
    }
}

/// Operations with their values rendered for this request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    remove: Vec<Vec<u8>>,
    rename: Vec<(Vec<u8>, Vec<u8>)>,
    replace: Vec<(Vec<u8>, Vec<u8>)>,
    add: Vec<(Vec<u8>, Vec<u8>)>,
    append: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Rendered {
    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

/// The query string finished after the body, when form fields move into it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct QueryPlan {
    path: Vec<u8>,
    query: Params,
    ops: Rendered,
    original_path: Vec<u8>,
}

/// A buffered body's rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyJob {
    kind: Option<BodyKind>,
    ops: Rendered,
    query: Option<QueryPlan>,
    /// The headers are held until the body is done (Content-Length can be set).
    pub hold_headers: bool,
    /// Give up (pass the body on unchanged) above this many bytes.
    pub limit: u64,
    accept: Option<Vec<u8>>,
}

/// What to do once the whole body is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyDecision {
    /// The new body, when it changed.
    pub body: Option<Vec<u8>>,
    /// Header changes (only when the headers were held).
    pub changes: Vec<HeaderChange>,
}

/// Template lookups on the original request.
struct Env<'a> {
    head: &'a RequestHead<'a>,
    query: Params,
    captures: OnceCell<Result<serde_json::Map<String, Value>, String>>,
}

fn canonical(name: &str) -> &str {
    if name == "host" {
        ":authority"
    } else {
        name
    }
}

impl Env<'_> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        let name = canonical(name);
        self.head
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

impl Lookup for Env<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        if name.starts_with(':') {
            return None;
        }
        let values = self.values(name);
        (!values.is_empty()).then(|| values.join(&b", "[..]))
    }

    fn query(&self, name: &str) -> Option<Vec<u8>> {
        self.query
            .get(name.as_bytes())
            .map(|p| p.value_or_true().to_vec())
    }

    fn capture(&self, key: &str) -> Result<Option<String>, String> {
        let Some(raw) = self.head.captures else {
            // No captures from the data plane: an empty table, as Kong's for a route without
            // regex captures.
            return Ok(None);
        };
        let map = self
            .captures
            .get_or_init(|| match serde_json::from_slice::<Value>(raw) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(format!(
                    "the {} property is not a JSON object",
                    crate::URI_CAPTURES_PROPERTY
                )),
            });
        let map = map.as_ref().map_err(Clone::clone)?;
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("uri capture '{key}' is not a string")),
        }
    }
}

/// Where a rendered value goes, for its validation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dest {
    Header,
    Other,
}

fn render(ops: &Ops, env: &Env<'_>, dest: Dest) -> Result<Rendered, String> {
    let values = |list: &[(String, crate::template::Template)]| {
        list.iter()
            .map(|(name, t)| {
                let value = t.render(env)?;
                if dest == Dest::Header && !is_header_value(&value) {
                    return Err(format!(
                        "the value rendered for header {name} holds control characters"
                    ));
                }
                Ok((name.as_bytes().to_vec(), value))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(Rendered {
        remove: ops.remove.iter().map(|n| n.as_bytes().to_vec()).collect(),
        rename: ops
            .rename
            .iter()
            .map(|(o, n)| (o.as_bytes().to_vec(), n.as_bytes().to_vec()))
            .collect(),
        replace: values(&ops.replace)?,
        add: values(&ops.add)?,
        append: values(&ops.append)?,
    })
}

/// Request headers being edited: changed names with their final values.
struct HeaderEdit<'a> {
    original: &'a [(String, Vec<u8>)],
    changed: Vec<HeaderChange>,
}

impl<'a> HeaderEdit<'a> {
    fn new(original: &'a [(String, Vec<u8>)]) -> Self {
        HeaderEdit {
            original,
            changed: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Vec<Vec<u8>> {
        let name = canonical(name);
        if let Some(change) = self.changed.iter().find(|c| c.name == name) {
            return change.values.clone();
        }
        self.original
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Present as Kong's header table sees it: `host` never is (Kong removes it first).
    fn present(&self, name: &str) -> bool {
        name != "host" && !self.get(name).is_empty()
    }

    fn set(&mut self, name: &str, values: Vec<Vec<u8>>) {
        let name = canonical(name);
        match self.changed.iter_mut().find(|c| c.name == name) {
            Some(change) => change.values = values,
            None => self.changed.push(HeaderChange {
                name: name.to_owned(),
                values,
            }),
        }
    }

    fn apply(&mut self, ops: &Rendered) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        for name in &ops.remove {
            let name = text(name);
            if self.present(&name) {
                self.set(&name, Vec::new());
            }
        }
        for (old, new) in &ops.rename {
            let (old, new) = (text(old), text(new));
            if old != new && self.present(&old) {
                let values = self.get(&old);
                self.set(&old, Vec::new());
                self.set(&new, values);
            }
        }
        for (name, value) in &ops.replace {
            let name = text(name);
            if name == "host" || self.present(&name) {
                self.set(&name, vec![value.clone()]);
            }
        }
        for (name, value) in &ops.add {
            let name = text(name);
            if name != "host" && !self.present(&name) {
                self.set(&name, vec![value.clone()]);
            }
        }
        for (name, value) in &ops.append {
            let name = text(name);
            let mut values = if name == "host" {
                Vec::new()
            } else {
                self.get(&name)
            };
            values.push(value.clone());
            self.set(&name, values);
        }
    }
}

fn apply_params(params: &mut Params, ops: &Rendered, nonempty: bool) -> bool {
    let mut changed = false;
    if nonempty {
        for name in &ops.remove {
            changed |= params.remove(name);
        }
        for (old, new) in &ops.rename {
            changed |= params.rename(old, new);
        }
        for (name, value) in &ops.replace {
            changed |= params.replace(name, value);
        }
    }
    for (name, value) in &ops.add {
        changed |= params.add(name, value);
    }
    for (name, value) in &ops.append {
        params.append(name, value);
        changed = true;
    }
    changed
}

/// Kong's `set_path` escaping, plus `?` and `#` (which would otherwise end the path).
fn escape_path(path: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"!$&'()*+,/:;=@[]-_.~%".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

fn join_path(path: &[u8], query: &Params) -> Vec<u8> {
    let mut out = path.to_vec();
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&query.to_bytes());
    }
    out
}

fn first<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn refuse(accept: Option<&[u8]>, log: String) -> Refusal {
    Refusal {
        response: kong_error(500, UNEXPECTED, accept),
        log,
    }
}

/// The decision at the request headers.
pub fn on_headers(config: &Config, head: &RequestHead<'_>) -> Result<HeadDecision, Refusal> {
    let accept = first(head.headers, "accept").map(<[u8]>::to_vec);
    let fail = |log: String| refuse(accept.as_deref(), log);
    let original_path = first(head.headers, ":path").unwrap_or(b"/").to_vec();
    let (path, raw_query) = match original_path.iter().position(|&b| b == b'?') {
        Some(i) => (&original_path[..i], &original_path[i + 1..]),
        None => (&original_path[..], &b""[..]),
    };
    let env = Env {
        head,
        query: Params::parse(raw_query),
        captures: OnceCell::new(),
    };
    let mut edit = HeaderEdit::new(head.headers);

    // replace.uri
    let mut new_path = path.to_vec();
    if let Some(uri) = &config.replace_uri {
        let rendered = uri
            .render(&env)
            .map_err(|e| fail(format!("replace.uri: {e}")))?;
        if rendered.first() != Some(&b'/') {
            return Err(fail(
                "replace.uri: the rendered path must start with /".into(),
            ));
        }
        new_path = escape_path(&rendered);
    }

    // http_method
    if let Some(method) = &config.http_method {
        if first(head.headers, ":method") != Some(method.as_bytes()) {
            edit.set(":method", vec![method.as_bytes().to_vec()]);
        }
    }
    let original_kind = BodyKind::of(first(head.headers, "content-type"));
    let move_form = config.moves_form_to_query()
        && config.hold_headers
        && !head.end_of_stream
        && original_kind == Some(BodyKind::Form);

    // headers
    let header_ops =
        render(&config.headers, &env, Dest::Header).map_err(|e| fail(format!("headers: {e}")))?;
    edit.apply(&header_ops);

    // body (rendered now, applied when it has arrived)
    let content_type = edit.get("content-type").into_iter().next();
    let kind = if config.body.is_empty() {
        None
    } else {
        BodyKind::of(content_type.as_deref())
    };
    let body_ops = match kind {
        Some(_) => {
            render(&config.body, &env, Dest::Other).map_err(|e| fail(format!("body: {e}")))?
        }
        None => Rendered::default(),
    };

    // query string
    let query_ops = render(&config.querystring, &env, Dest::Other)
        .map_err(|e| fail(format!("querystring: {e}")))?;

    let declared_length = first(head.headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let fits = declared_length.is_none_or(|len| len <= config.body_buffer_limit);
    let buffer = !head.end_of_stream && fits && (kind.is_some() || move_form);

    let query_plan = QueryPlan {
        path: new_path,
        query: env.query.clone(),
        ops: query_ops,
        original_path: original_path.clone(),
    };
    let mut job = None;
    if buffer && move_form {
        // The path waits for the form fields.
        job = Some(query_plan);
    } else if let Some(change) = query_plan.finish(&[]) {
        edit.changed.push(change);
    }
    let body = buffer.then(|| BodyJob {
        kind,
        ops: body_ops,
        query: job,
        hold_headers: config.hold_headers,
        limit: config.body_buffer_limit,
        accept: accept.clone(),
    });
    if body.as_ref().is_some_and(|b| !b.hold_headers) && declared_length.is_some() {
        // The rewritten body goes on chunked.
        edit.set("content-length", Vec::new());
    }
    Ok(HeadDecision {
        changes: edit.changed,
        body,
    })
}

impl QueryPlan {
    /// The `:path` change, if the path or query changed; `moved` are form fields to append.
    fn finish(&self, moved: &[crate::urlencoded::Param]) -> Option<HeaderChange> {
        let mut query = self.query.clone();
        query.params.extend_from_slice(moved);
        if !self.ops.is_empty() {
            apply_params(&mut query, &self.ops, true);
        }
        let path = join_path(&self.path, &query);
        (path != self.original_path).then(|| HeaderChange {
            name: ":path".into(),
            values: vec![path],
        })
    }
}

impl BodyJob {
    /// Rewrites the whole body.
    pub fn finish(&self, body: &[u8]) -> Result<BodyDecision, Refusal> {
        let mut decision = BodyDecision::default();
        if let Some(plan) = &self.query {
            let fields = Params::parse(body);
            if let Some(change) = plan.finish(&fields.params) {
                decision.changes.push(change);
            }
        }
        let nonempty = !body.is_empty();
        let new_body = match &self.kind {
            None => None,
            Some(BodyKind::Form) => {
                let mut params = Params::parse(body);
                apply_params(&mut params, &self.ops, nonempty).then(|| params.to_bytes())
            }
            Some(BodyKind::Json) => {
                let object = match Object::parse(body) {
                    Some(object) => Some(object),
                    None if !nonempty => Some(Object::empty()),
                    None => None,
                };
                object.and_then(|mut object| {
                    apply_json(&mut object, &self.ops, nonempty).then(|| object.to_bytes())
                })
            }
            Some(BodyKind::Multipart(boundary)) => {
                let parts = match Multipart::parse(body, boundary) {
                    Some(parts) => Some(parts),
                    None if !nonempty => Some(Multipart::empty(boundary)),
                    None => None,
                };
                match parts {
                    None => None,
                    Some(mut parts) => {
                        let values = self
                            .ops
                            .replace
                            .iter()
                            .chain(&self.ops.add)
                            .chain(&self.ops.append);
                        if values
                            .clone()
                            .any(|(n, v)| parts.collides(v) || parts.collides(n))
                        {
                            return Err(refuse(
                                self.accept.as_deref(),
                                "body: a value holds the multipart boundary".into(),
                            ));
                        }
                        apply_multipart(&mut parts, &self.ops, nonempty).then(|| parts.to_bytes())
                    }
                }
            }
        };
        if self.hold_headers {
            if let Some(new) = &new_body {
                decision.changes.push(HeaderChange {
                    name: "content-length".into(),
                    values: vec![new.len().to_string().into_bytes()],
                });
            }
        }
        decision.body = new_body;
        Ok(decision)
    }
}

fn apply_json(object: &mut Object, ops: &Rendered, nonempty: bool) -> bool {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut changed = false;
    if nonempty {
        for name in &ops.remove {
            changed |= object.remove(&text(name));
        }
        for (old, new) in &ops.rename {
            changed |= object.rename(&text(old), &text(new));
        }
        for (name, value) in &ops.replace {
            changed |= object.replace(&text(name), &text(value));
        }
    }
    for (name, value) in &ops.add {
        changed |= object.add(&text(name), &text(value));
    }
    for (name, value) in &ops.append {
        object.append(&text(name), &text(value));
        changed = true;
    }
    changed
}

fn apply_multipart(parts: &mut Multipart, ops: &Rendered, nonempty: bool) -> bool {
    let mut changed = false;
    if nonempty {
        for name in &ops.remove {
            changed |= parts.remove(name);
        }
        for (old, new) in &ops.rename {
            changed |= parts.rename(old, new);
        }
        for (name, value) in &ops.replace {
            changed |= parts.replace(name, value);
        }
    }
    for (name, value) in &ops.add {
        changed |= parts.add(name, value);
    }
    for (name, value) in &ops.append {
        parts.append(name, value);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        let env = |name: &str| (name == "BACKEND_TOKEN").then(|| "s3cret".to_owned());
        Config::parse(json.as_bytes(), &env).unwrap()
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn base(path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut h = headers(&[
            (":method", "POST"),
            (":path", path),
            (":authority", "client.test"),
        ]);
        h.extend(headers(extra));
        h
    }

    fn decide(config: &Config, h: &[(String, Vec<u8>)], eos: bool) -> HeadDecision {
        on_headers(
            config,
            &RequestHead {
                headers: h,
                end_of_stream: eos,
                captures: None,
            },
        )
        .unwrap()
    }

    fn change(d: &[HeaderChange], name: &str) -> Option<Vec<String>> {
        d.iter().find(|c| c.name == name).map(|c| {
            c.values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
    }

    #[test]
    fn an_empty_config_changes_nothing() {
        let d = decide(
            &config("{}"),
            &base("/a?b=c", &[("content-type", "application/json")]),
            false,
        );
        assert_eq!(
            d,
            HeadDecision {
                changes: vec![],
                body: None
            }
        );
    }

    #[test]
    fn headers_follow_kongs_order_and_host_rules() {
        let c = config(
            r#"{"remove":{"headers":["x-a","host"]},"rename":{"headers":["x-b:x-a"]},
                "replace":{"headers":["x-a:replaced","host:new.test"]},
                "add":{"headers":["x-a:added","x-c:added","host:never"]},
                "append":{"headers":["x-c:appended"]}}"#,
        );
        let d = decide(&c, &base("/", &[("x-a", "orig"), ("x-b", "ren")]), true);
        assert_eq!(change(&d.changes, "x-a"), Some(vec!["replaced".into()]));
        assert_eq!(change(&d.changes, "x-b"), Some(vec![]));
        assert_eq!(
            change(&d.changes, "x-c"),
            Some(vec!["added".into(), "appended".into()])
        );
        assert_eq!(
            change(&d.changes, ":authority"),
            Some(vec!["new.test".into()])
        );
        assert_eq!(change(&d.changes, "host"), None);
    }

    #[test]
    fn the_seed_secret_cannot_be_overridden_by_the_client() {
        let c = config(
            r#"{"replace":{"headers":["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]},
                "add":{"headers":["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]}}"#,
        );
        for client in [&[][..], &[("authorization", "Bearer mine")][..]] {
            let d = decide(&c, &base("/", client), true);
            assert_eq!(
                change(&d.changes, "authorization"),
                Some(vec!["Bearer s3cret".into()])
            );
        }
        // Kong's add alone keeps the client's value.
        let kong =
            config(r#"{"add":{"headers":["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]}}"#);
        let d = decide(&kong, &base("/", &[("authorization", "Bearer mine")]), true);
        assert_eq!(change(&d.changes, "authorization"), None);
    }

    #[test]
    fn templates_read_the_original_request() {
        let c = config(
            r#"{"remove":{"headers":["x-src"],"querystring":["q"]},
                "add":{"headers":["x-copy:$(headers.x_src)","x-q:$(query_params.q or 'none')",
                                  "x-host:$(headers.host)","x-multi:$(headers['x-m'])"],
                       "querystring":["from-header:$(headers[\"x-src\"])"]}}"#,
        );
        let d = decide(
            &c,
            &base(
                "/p?q=1%202&keep=%2F",
                &[("x-src", "v"), ("x-m", "1"), ("x-m", "2")],
            ),
            true,
        );
        assert_eq!(change(&d.changes, "x-copy"), Some(vec!["v".into()]));
        assert_eq!(change(&d.changes, "x-q"), Some(vec!["1 2".into()]));
        assert_eq!(
            change(&d.changes, "x-host"),
            Some(vec!["client.test".into()])
        );
        assert_eq!(change(&d.changes, "x-multi"), Some(vec!["1, 2".into()]));
        assert_eq!(change(&d.changes, "x-src"), Some(vec![]));
        assert_eq!(
            change(&d.changes, ":path"),
            Some(vec!["/p?keep=%2F&from-header=v".into()])
        );
    }

    #[test]
    fn a_value_that_would_inject_a_header_fails_with_500() {
        let c = config(r#"{"add":{"headers":["x-q:$(query_params.q)"]}}"#);
        let err = on_headers(
            &c,
            &RequestHead {
                headers: &base("/?q=a%0D%0AInjected:%201", &[("accept", "text/plain")]),
                end_of_stream: true,
                captures: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.response.status, 500);
        assert_eq!(err.response.body, b"An unexpected error occurred\n");
        assert!(err.log.contains("x-q"));
    }

    #[test]
    fn uri_captures_come_from_the_data_plane() {
        let c = config(
            r#"{"replace":{"uri":"/users/$(uri_captures.id)/$(uri_captures[1] or 'x') é?"},
                "add":{"headers":["x-id:$(uri_captures['id'] or 'none')"]}}"#,
        );
        let h = base("/u/42?a=1", &[]);
        let run = |captures: Option<&[u8]>| {
            on_headers(
                &c,
                &RequestHead {
                    headers: &h,
                    end_of_stream: true,
                    captures,
                },
            )
        };
        let d = run(Some(br#"{"0":"/u/42","1":"42","id":"42"}"#)).unwrap();
        assert_eq!(
            change(&d.changes, ":path"),
            Some(vec!["/users/42/42%20%C3%A9%3F?a=1".into()])
        );
        assert_eq!(change(&d.changes, "x-id"), Some(vec!["42".into()]));
        // No captures from the data plane: an empty table, as Kong's for a plain route.
        let d = run(None).unwrap();
        assert_eq!(
            change(&d.changes, ":path"),
            Some(vec!["/users//x%20%C3%A9%3F?a=1".into()])
        );
        assert_eq!(change(&d.changes, "x-id"), Some(vec!["none".into()]));
        // Captures that cannot be read fail the request.
        assert_eq!(run(Some(b"not json")).unwrap_err().response.status, 500);
        let relative = config(r#"{"replace":{"uri":"$(headers.x)"}}"#);
        let err = on_headers(
            &relative,
            &RequestHead {
                headers: &h,
                end_of_stream: true,
                captures: None,
            },
        );
        assert_eq!(
            err.unwrap_err().response.status,
            500,
            "a path must start with /"
        );
    }

    #[test]
    fn query_operations_keep_untouched_arguments_as_sent() {
        let c = config(
            r#"{"remove":{"querystring":["toremove"]},"rename":{"querystring":["old:new"]},
                "replace":{"querystring":["rep:r v"]},"add":{"querystring":["rep:x","added:a&b"]},
                "append":{"querystring":["multi:2"]}}"#,
        );
        let d = decide(
            &c,
            &base(
                "/x?a=%2f+&toremove=1&old=o&rep=1&multi=1&rep=2&odd=%zz",
                &[],
            ),
            true,
        );
        assert_eq!(
            change(&d.changes, ":path"),
            Some(vec![
                "/x?a=%2f+&new=o&rep=r%20v&multi=1&odd=%zz&added=a%26b&multi=2".into()
            ])
        );
        let none = decide(&c, &base("/x?a=1", &[]), true);
        assert_eq!(
            change(&none.changes, ":path"),
            Some(vec!["/x?a=1&rep=x&added=a%26b&multi=2".into()])
        );
    }

    #[test]
    fn http_method_changes_the_method() {
        let c = config(r#"{"http_method":"POST"}"#);
        let mut h = base("/", &[]);
        h[0].1 = b"GET".to_vec();
        let d = decide(&c, &h, true);
        assert_eq!(change(&d.changes, ":method"), Some(vec!["POST".into()]));
        assert!(
            decide(&c, &base("/", &[]), true).changes.is_empty(),
            "already POST"
        );
    }

    fn finish(job: &BodyJob, body: &str) -> BodyDecision {
        job.finish(body.as_bytes()).unwrap()
    }

    fn body(d: &BodyDecision) -> Option<String> {
        d.body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    #[test]
    fn bodies_are_buffered_only_when_an_operation_applies() {
        let c = config(r#"{"add":{"body":["p:v"]}}"#);
        let json = [
            ("content-type", "application/json"),
            ("content-length", "7"),
        ];
        let d = decide(&c, &base("/", &json), false);
        assert!(d.body.is_some());
        assert_eq!(
            change(&d.changes, "content-length"),
            Some(vec![]),
            "goes on chunked"
        );
        assert!(
            decide(&c, &base("/", &[("content-type", "text/plain")]), false)
                .body
                .is_none()
        );
        assert!(
            decide(&c, &base("/", &json), true).body.is_none(),
            "no body at all"
        );
        assert!(decide(&config("{}"), &base("/", &json), false)
            .body
            .is_none());
        let big = config(r#"{"add":{"body":["p:v"]},"wasmgate":{"body_buffer_limit":6}}"#);
        let d = decide(&big, &base("/", &json), false);
        assert!(
            d.body.is_none(),
            "declared larger than the limit: passed on as is"
        );
        assert!(d.changes.is_empty());
        // The content type after the header operations decides (Kong reads the changed header).
        let retyped = config(
            r#"{"replace":{"headers":["content-type:application/x-www-form-urlencoded"]},
                "add":{"body":["p:v"]}}"#,
        );
        let d = decide(&retyped, &base("/", &json), false);
        assert_eq!(
            body(&finish(d.body.as_ref().unwrap(), "a=1")).as_deref(),
            Some("a=1&p=v")
        );
    }

    #[test]
    fn json_bodies_follow_kong() {
        let c = config(
            r#"{"remove":{"body":["gone"]},"rename":{"body":["old:new"]},
                "replace":{"body":["rep:r"]},"add":{"body":["added:$(headers.x)"]},
                "append":{"body":["arr:2","s:2"]}}"#,
        );
        let d = decide(
            &c,
            &base(
                "/",
                &[
                    ("content-type", "application/json; charset=utf-8"),
                    ("x", "hx"),
                ],
            ),
            false,
        );
        let job = d.body.unwrap();
        assert_eq!(
            body(&finish(
                &job,
                r#"{"gone":1,"old":{"k":[1]},"rep":"o","arr":[1],"s":"1","n":1.50}"#
            ))
            .as_deref(),
            Some(
                r#"{"new":{"k":[1]},"rep":"r","arr":[1,"2"],"s":["1","2"],"n":1.50,"added":"hx"}"#
            )
        );
        assert_eq!(
            finish(&job, "{not json").body,
            None,
            "malformed JSON passes unchanged"
        );
        assert_eq!(finish(&job, "[1]").body, None);
        assert_eq!(
            body(&finish(&job, "")).as_deref(),
            Some(r#"{"added":"hx","arr":["2"],"s":["2"]}"#),
            "an empty body only gets add and append, as Kong"
        );
    }

    #[test]
    fn form_and_multipart_bodies_follow_kong() {
        let c = config(
            r#"{"remove":{"body":["gone"]},"rename":{"body":["old:new"]},
                "replace":{"body":["rep:r"]},"add":{"body":["added:a b"]},"append":{"body":["m:2"]}}"#,
        );
        let form = decide(
            &c,
            &base(
                "/",
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
            false,
        );
        assert_eq!(
            body(&finish(
                form.body.as_ref().unwrap(),
                "gone=1&old=o%2F&rep=1&m=1&x=%ZZ"
            ))
            .as_deref(),
            Some("new=o%2F&rep=r&m=1&x=%ZZ&added=a%20b&m=2")
        );
        let multi = decide(
            &c,
            &base("/", &[("content-type", "multipart/form-data; boundary=B")]),
            false,
        );
        let job = multi.body.unwrap();
        let part = |n: &str, v: &str| {
            format!("--B\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n")
        };
        let input = format!(
            "{}{}{}--B--\r\n",
            part("gone", "1"),
            part("old", "o"),
            part("rep", "1")
        );
        let expected = format!(
            "{}{}{}{}--B--\r\n",
            part("new", "o"),
            part("rep", "r"),
            part("added", "a b"),
            part("m", "2")
        );
        assert_eq!(body(&finish(&job, &input)), Some(expected));
        assert_eq!(finish(&job, "garbage").body, None);
        let evil = config(r#"{"add":{"body":["x:$(headers.x)"]}}"#);
        let d = decide(
            &evil,
            &base(
                "/",
                &[
                    ("content-type", "multipart/form-data; boundary=B"),
                    ("x", "a\r\n--B--"),
                ],
            ),
            false,
        );
        assert_eq!(
            d.body
                .unwrap()
                .finish(b"--B--")
                .unwrap_err()
                .response
                .status,
            500
        );
    }

    #[test]
    fn get_with_a_form_body_moves_fields_to_the_query_when_headers_can_wait() {
        let c = config(
            r#"{"http_method":"GET","wasmgate":{"hold_headers":true},"add":{"querystring":["q:1"]}}"#,
        );
        let h = base(
            "/p?a=1",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "9"),
            ],
        );
        let d = decide(&c, &h, false);
        assert_eq!(change(&d.changes, ":method"), Some(vec!["GET".into()]));
        assert_eq!(change(&d.changes, ":path"), None, "waits for the body");
        assert_eq!(change(&d.changes, "content-length"), None);
        let job = d.body.unwrap();
        assert!(job.hold_headers);
        let done = finish(&job, "a=2&b=x+y");
        assert_eq!(done.body, None, "the body itself stays");
        assert_eq!(
            change(&done.changes, ":path"),
            Some(vec!["/p?a=1&a=2&b=x+y&q=1".into()])
        );
        // Without held headers the fields stay in the body (a configure-time warning says so).
        let c = config(r#"{"http_method":"GET","add":{"querystring":["q:1"]}}"#);
        let d = decide(&c, &h, false);
        assert!(d.body.is_none());
        assert_eq!(change(&d.changes, ":path"), Some(vec!["/p?a=1&q=1".into()]));
    }

    #[test]
    fn held_headers_get_an_exact_content_length() {
        let c = config(r#"{"add":{"body":["p:v"]},"wasmgate":{"hold_headers":true}}"#);
        let d = decide(
            &c,
            &base(
                "/",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "2"),
                ],
            ),
            false,
        );
        assert_eq!(change(&d.changes, "content-length"), None);
        let done = finish(d.body.as_ref().unwrap(), "{}");
        assert_eq!(body(&done).as_deref(), Some(r#"{"p":"v"}"#));
        assert_eq!(
            change(&done.changes, "content-length"),
            Some(vec!["9".into()])
        );
    }
}
