//! The decisions per request, in Kong's order: `replace.uri` → `http_method` → headers → body
//! → query string, each remove → rename → replace → add → append.
//!
//! [`on_headers`] sees the request head and decides every header change (`:path`, `:method`
//! and `:authority` included), and whether the body must be buffered; [`BodyJob::finish`]
//! rewrites the buffered body. Every template is rendered at the headers, from the original
//! request, so a value that cannot be used fails the request (500, as Kong) before anything
//! reaches the upstream.
//!
//! Body rules fail closed: when a `remove`, `rename` or `replace` applies to the body and the
//! body cannot be edited safely, the request is refused (unless `wasmgate.unparsable_body` is
//! `pass`): 413 when it is larger than `wasmgate.body_buffer_limit`, 415 when it has a
//! Content-Encoding, 400 when it does not parse strictly, is ambiguous, or comes with more
//! than one Content-Type. With only `add`/`append` such a body passes on unchanged.

use std::cell::OnceCell;

use kit::{kong_error, LocalResponse};

use crate::captures::Captures;
use crate::config::{is_header_value, Config, Ops, UnparsableBody};
use crate::json::{Object, Parsed};
use crate::multipart::{self, Multipart};
use crate::template::{Lookup, Template};
use crate::urlencoded::Params;
use crate::CLIENT_HOST_HEADER;

/// Kong's message for an error inside a plugin.
pub const UNEXPECTED: &str = "An unexpected error occurred";
/// Kong's message for a body over a size limit (request-size-limiting's).
pub const TOO_LARGE: &str = "Request size limit exceeded";
pub const NOT_JSON: &str = "The request body is not valid JSON";
pub const NOT_MULTIPART: &str = "The request body is not valid multipart/form-data";
pub const CONTENT_TYPES: &str = "The request has more than one Content-Type header";
pub const ENCODED: &str = "A request body with a Content-Encoding cannot be transformed";

/// Header `(name, value)` pairs, as bytes.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// The request head as the data plane gives it: lower-case names, pseudo-headers
/// (`:method`, `:path`, `:authority`) included, duplicates kept, everything bytes.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub headers: &'a [(Vec<u8>, Vec<u8>)],
    /// The headers end the stream: there is no body.
    pub end_of_stream: bool,
    /// The matched route's name (`xds.route_name`), which selects its regex paths for
    /// `uri_captures`.
    pub route: Option<&'a [u8]>,
    /// `request.id`: the data plane's request id, for Kong's error bodies.
    pub request_id: &'a [u8],
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
    /// With its boundary, `None` when the Content-Type has no valid one.
    Multipart(Option<Vec<u8>>),
    Form,
}

impl BodyKind {
    fn of(content_type: &[u8]) -> Option<BodyKind> {
        let lower = content_type.to_ascii_lowercase();
        let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
        if has(b"application/json") {
            Some(BodyKind::Json)
        } else if has(b"multipart/form-data") {
            Some(BodyKind::Multipart(multipart::boundary(content_type)))
        } else if has(b"application/x-www-form-urlencoded") {
            Some(BodyKind::Form)
        } else {
            None
        }
    }
}

/// Operations with their names and values rendered for this request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    remove: Vec<Vec<u8>>,
    rename: Vec<(Vec<u8>, Vec<u8>)>,
    replace: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    add: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    append: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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

/// The entries of a body or query operation that have a value (all of them: only header
/// entries may lack one).
fn valued(list: &[(Vec<u8>, Option<Vec<u8>>)]) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
    list.iter()
        .filter_map(|(name, value)| Some((name.as_slice(), value.as_deref()?)))
}

/// The names and values body operations write into a multipart body.
fn written(ops: &Rendered) -> Vec<&[u8]> {
    ops.rename
        .iter()
        .map(|(_, new)| new.as_slice())
        .chain(
            valued(&ops.replace)
                .chain(valued(&ops.add))
                .flat_map(|(name, value)| [name, value]),
        )
        .collect()
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
    /// Never buffer more than this many bytes.
    pub limit: u64,
    /// A body that cannot be edited safely is refused rather than passed on.
    fail_closed: bool,
    /// The boundary a multipart body is written with when a written value holds the
    /// client's (the Content-Type sent on says so).
    write_boundary: Option<Vec<u8>>,
    accept: Option<Vec<u8>>,
    request_id: Vec<u8>,
}

/// What to do once the whole body is there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyDecision {
    /// The new body, when it changed.
    pub body: Option<Vec<u8>>,
    /// Header changes (only when the headers were held).
    pub changes: Vec<HeaderChange>,
    /// Why the body went on unchanged although the plugin meant to edit it (it is not the
    /// JSON or multipart its Content-Type says, and the plugin is not fail-closed), for the
    /// operator's log.
    pub unusable: Option<String>,
}

/// Template lookups on the original request.
struct Env<'a> {
    head: &'a RequestHead<'a>,
    config: &'a Config,
    /// The client's path, which the route's regexes matched: Envoy runs this filter upstream,
    /// after the route rewrote `:path`, and keeps the client's in `x-envoy-original-path`.
    path: &'a [u8],
    query: Params,
    captures: OnceCell<Captures>,
}

/// Kong's `host` header is the upstream Host: `:authority` in proxy-wasm.
fn canonical(name: &str) -> &str {
    if name == "host" {
        ":authority"
    } else {
        name
    }
}

fn values_of<'h>(headers: &'h [(Vec<u8>, Vec<u8>)], name: &str) -> Vec<&'h [u8]> {
    let name = canonical(name).as_bytes();
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn first<'h>(headers: &'h [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    values_of(headers, name).into_iter().next()
}

impl Lookup for Env<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        if name.starts_with(':') {
            return None;
        }
        if canonical(name) == ":authority" {
            if let Some(client_host) = first(self.head.headers, CLIENT_HOST_HEADER) {
                return Some(client_host.to_vec());
            }
        }
        let values = values_of(self.head.headers, name);
        (!values.is_empty()).then(|| values.join(&b", "[..]))
    }

    fn query(&self, name: &str) -> Option<Vec<u8>> {
        self.query
            .get(name.as_bytes())
            .map(|p| p.value_or_true().to_vec())
    }

    fn capture(&self, key: &str) -> Option<Vec<u8>> {
        let captures = self
            .captures
            .get_or_init(|| match &self.config.route_paths {
                Some(paths) => paths.captures(self.head.route, self.path),
                None => Captures::default(),
            });
        captures.get(key).map(<[u8]>::to_vec)
    }
}

fn render_all(
    list: &[(String, Option<Template>)],
    env: &Env<'_>,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    list.iter()
        .map(|(name, t)| (name.as_bytes().to_vec(), t.as_ref().map(|t| t.render(env))))
        .collect()
}

fn render(ops: &Ops, env: &Env<'_>) -> Rendered {
    Rendered {
        remove: ops.remove.iter().map(|n| n.as_bytes().to_vec()).collect(),
        rename: ops
            .rename
            .iter()
            .map(|(old, new)| (old.as_bytes().to_vec(), new.render(env)))
            .collect(),
        replace: render_all(&ops.replace, env),
        add: render_all(&ops.add, env),
        append: render_all(&ops.append, env),
    }
}

/// Request headers as Kong's `transform_headers` edits them: a table of the client's headers
/// (without `host`) that the operations read and write, the names removed or renamed away
/// (`clear_header`), then `set_headers` of every name the table holds. A name an operation
/// set to nil (`replace` with an entry without a value) is left as the client sent it unless
/// it was also cleared.
struct HeaderEdit<'a> {
    original: &'a [(Vec<u8>, Vec<u8>)],
    /// Names an operation wrote into the table, in order; `None` is nil.
    table: Vec<(String, Option<Vec<Vec<u8>>>)>,
    cleared: Vec<String>,
}

impl<'a> HeaderEdit<'a> {
    fn new(original: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        HeaderEdit {
            original,
            table: Vec::new(),
            cleared: Vec::new(),
        }
    }

    fn original(&self, name: &str) -> Vec<Vec<u8>> {
        values_of(self.original, name)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn entry(&self, name: &str) -> Option<&Option<Vec<Vec<u8>>>> {
        let name = canonical(name);
        self.table.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The table's value: what the operations so far see. Kong drops `host` first.
    fn view(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        match self.entry(name) {
            Some(value) => value.clone(),
            None if name == "host" => None,
            None => Some(self.original(name)).filter(|v| !v.is_empty()),
        }
    }

    fn assign(&mut self, name: &str, value: Option<Vec<Vec<u8>>>) {
        let name = canonical(name);
        match self.table.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => self.table.push((name.to_owned(), value)),
        }
    }

    /// A header the plugin sets outside Kong's table (`:path`, `:method`, Content-Length).
    fn set(&mut self, name: &str, values: Vec<Vec<u8>>) {
        self.assign(name, Some(values));
    }

    fn clear(&mut self, name: &str) {
        let name = canonical(name).to_owned();
        if !self.cleared.contains(&name) {
            self.cleared.push(name);
        }
    }

    /// The values the upstream gets (after `clear_header` and `set_headers`).
    fn current(&self, name: &str) -> Vec<Vec<u8>> {
        match self.entry(name) {
            Some(Some(values)) => values.clone(),
            _ if self.cleared.iter().any(|c| c == canonical(name)) => Vec::new(),
            _ => self.original(name),
        }
    }

    /// Kong's operations on the table; names come from the config, values rendered.
    fn apply(&mut self, ops: &Ops, values: &Rendered) {
        for name in &ops.remove {
            if self.view(name).is_some() {
                self.assign(name, None);
                self.clear(name);
            }
        }
        for (old, new) in &ops.rename {
            let new = new.as_text().unwrap_or_default();
            if old == new {
                continue;
            }
            if let Some(values) = self.view(old) {
                self.assign(old, None);
                self.assign(new, Some(values));
                self.clear(old);
            }
        }
        for ((name, _), (_, value)) in ops.replace.iter().zip(&values.replace) {
            if name == "host" || self.view(name).is_some() {
                self.assign(name, value.clone().map(|v| vec![v]));
            }
        }
        for ((name, _), (_, value)) in ops.add.iter().zip(&values.add) {
            if let Some(value) = value {
                if name != "host" && self.view(name).is_none() {
                    self.assign(name, Some(vec![value.clone()]));
                }
            }
        }
        for ((name, _), (_, value)) in ops.append.iter().zip(&values.append) {
            let mut list = self.view(name).unwrap_or_default();
            list.extend(value.iter().cloned());
            self.assign(name, Some(list));
        }
    }

    /// The names whose values change, with their final values.
    fn changes(&self) -> Vec<HeaderChange> {
        let names = self
            .table
            .iter()
            .map(|(name, _)| name)
            .chain(self.cleared.iter());
        let mut out: Vec<HeaderChange> = Vec::new();
        for name in names {
            if out.iter().any(|c| &c.name == name) {
                continue;
            }
            let values = self.current(name);
            if values != self.original(name) {
                out.push(HeaderChange {
                    name: name.clone(),
                    values,
                });
            }
        }
        out
    }
}

fn apply_params(params: &mut Params, ops: &Rendered) -> bool {
    let mut changed = false;
    for name in &ops.remove {
        changed |= params.remove(name);
    }
    for (old, new) in &ops.rename {
        changed |= params.rename(old, new);
    }
    for (name, value) in valued(&ops.replace) {
        changed |= params.replace(name, value);
    }
    for (name, value) in valued(&ops.add) {
        changed |= params.add(name, value);
    }
    for (name, value) in valued(&ops.append) {
        params.append(name, value);
        changed = true;
    }
    changed
}

/// Kong's `escape` for `set_path`: every byte but `A-Z a-z 0-9 - _ . ~ ! # $ & ' ( ) * + , /
/// : ; = ? @ [ ] %` becomes `%XX`. `?` and `#` stay, so `replace.uri: /a?x=1` gives the
/// upstream a query, as Kong's `upstream_uri` does.
fn escape_path(path: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"-_.~!#$&'()*+,/:;=?@[]%".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

impl QueryPlan {
    /// The `:path` change, if the path or query changed; `moved` are form fields to append.
    /// Kong appends `?args` to the upstream path when there are arguments, or when the
    /// client's request line ended with `?`.
    fn finish(&self, moved: &[crate::urlencoded::Param]) -> Option<HeaderChange> {
        let mut query = self.query.clone();
        // Kong re-encodes the whole query (`set_uri_args`); a moved field's body bytes never
        // reach the request line as they were.
        query
            .params
            .extend(moved.iter().map(crate::urlencoded::Param::reencoded));
        if !self.ops.is_empty() {
            apply_params(&mut query, &self.ops);
        }
        let mut path = self.path.clone();
        if !query.is_empty() || self.original_path.last() == Some(&b'?') {
            path.push(b'?');
            path.extend_from_slice(&query.to_bytes());
        }
        (path != self.original_path).then(|| HeaderChange {
            name: ":path".into(),
            values: vec![path],
        })
    }
}

fn refusal(
    status: u16,
    message: &str,
    accept: Option<&[u8]>,
    request_id: &[u8],
    log: String,
) -> Refusal {
    Refusal {
        response: kong_error(status, message, accept, request_id),
        log,
    }
}

/// The decision at the request headers.
pub fn on_headers(config: &Config, head: &RequestHead<'_>) -> Result<HeadDecision, Refusal> {
    let accept = first(head.headers, "accept").map(<[u8]>::to_vec);
    let refuse = |status: u16, message: &str, log: String| {
        refusal(status, message, accept.as_deref(), head.request_id, log)
    };
    let fail = |log: String| refuse(500, UNEXPECTED, log);
    let original_path = first(head.headers, ":path").unwrap_or(b"/").to_vec();
    let (path, raw_query) = match original_path.iter().position(|&b| b == b'?') {
        Some(i) => (&original_path[..i], &original_path[i + 1..]),
        None => (&original_path[..], &b""[..]),
    };
    let client_path = first(head.headers, "x-envoy-original-path").map_or(path, |original| {
        original
            .iter()
            .position(|&b| b == b'?')
            .map_or(original, |i| &original[..i])
    });
    let env = Env {
        head,
        config,
        path: client_path,
        query: Params::parse(raw_query),
        captures: OnceCell::new(),
    };
    let mut edit = HeaderEdit::new(head.headers);
    if first(head.headers, CLIENT_HOST_HEADER).is_some() {
        edit.set(CLIENT_HOST_HEADER, Vec::new());
    }

    // replace.uri
    let mut new_path = path.to_vec();
    if let Some(uri) = &config.replace_uri {
        let rendered = uri.render(&env);
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

    // headers
    let header_ops = render(&config.headers, &env);
    for (name, value) in header_ops
        .replace
        .iter()
        .chain(&header_ops.add)
        .chain(&header_ops.append)
    {
        if value.as_deref().is_some_and(|v| !is_header_value(v)) {
            return Err(fail(format!(
                "headers: the value rendered for header {} holds control characters",
                String::from_utf8_lossy(name)
            )));
        }
    }
    edit.apply(&config.headers, &header_ops);
    if matches!(edit.entry("host"), Some(Some(values)) if values.len() != 1) {
        // Kong fails setting the upstream Host to a list.
        return Err(fail("headers: host would get more than one value".into()));
    }

    // body (rendered now, applied when it has arrived)
    let content_types = edit.current("content-type");
    let content_type = content_types.first().map(Vec::as_slice).unwrap_or_default();
    let has_body = !head.end_of_stream;
    let mut kind = if config.body.is_empty() {
        None
    } else {
        BodyKind::of(content_type)
    };
    let move_form = config.moves_form_to_query()
        && config.hold_headers
        && has_body
        && BodyKind::of(first(head.headers, "content-type").unwrap_or_default())
            == Some(BodyKind::Form);
    let fail_closed = config.body.sanitises() && config.unparsable_body == UnparsableBody::Refuse;
    // A Content-Length that does not parse (not digits, past u64) is no length that fits: the
    // body cannot be trusted to be one the buffer holds, nor its length to be rewritten.
    let declared_length = first(head.headers, "content-length").map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let fits = match declared_length {
        None => true,
        Some(len) => len.is_some_and(|len| len <= config.body_buffer_limit),
    };
    // Kong reads the first Content-Type; an upstream may read another, so a body to sanitise
    // must have one.
    if fail_closed
        && has_body
        && content_types.len() > 1
        && content_types.iter().any(|t| BodyKind::of(t).is_some())
    {
        return Err(refuse(
            400,
            CONTENT_TYPES,
            "body: more than one Content-Type".into(),
        ));
    }
    if has_body && kind.is_some() {
        let encoded = values_of(head.headers, "content-encoding")
            .iter()
            .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let unusable = if encoded {
            Some((415, ENCODED, "the body has a Content-Encoding"))
        } else if kind == Some(BodyKind::Multipart(None)) {
            Some((
                400,
                NOT_MULTIPART,
                "the multipart Content-Type has no valid boundary",
            ))
        } else if !fits {
            Some((
                413,
                TOO_LARGE,
                "the declared Content-Length is over wasmgate.body_buffer_limit",
            ))
        } else {
            None
        };
        if let Some((status, message, why)) = unusable {
            if fail_closed {
                return Err(refuse(status, message, format!("body: {why}")));
            }
            // Nothing configured removes or rewrites a field: the body goes on as it is.
            kind = None;
        }
    }
    let body_ops = match kind {
        Some(_) => render(&config.body, &env),
        None => Rendered::default(),
    };
    // A written value that holds the client's boundary: the body goes on with another one,
    // decided now, while the Content-Type can still change (see `multipart::fresh_boundary`).
    let mut write_boundary = None;
    if let Some(BodyKind::Multipart(Some(boundary))) = &kind {
        let written = written(&body_ops);
        let mut dashed = b"--".to_vec();
        dashed.extend_from_slice(boundary);
        if written
            .iter()
            .any(|w| w.windows(dashed.len()).any(|x| x == dashed))
        {
            let Some(fresh) = multipart::fresh_boundary(boundary, &written) else {
                return Err(fail(
                    "body: no multipart boundary fits the written values".into(),
                ));
            };
            edit.set(
                "content-type",
                vec![multipart::with_boundary(content_type, &fresh)],
            );
            write_boundary = Some(fresh);
        }
    }

    // query string
    let query_ops = render(&config.querystring, &env);

    let buffer = has_body && fits && (kind.is_some() || move_form);
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
        edit.set(&change.name, change.values);
    }
    let body = buffer.then(|| BodyJob {
        kind,
        ops: body_ops,
        query: job,
        hold_headers: config.hold_headers,
        limit: config.body_buffer_limit,
        fail_closed,
        write_boundary,
        accept: accept.clone(),
        request_id: head.request_id.to_vec(),
    });
    if body.as_ref().is_some_and(|b| !b.hold_headers) && declared_length.is_some() {
        // The headers go on before the body is known: the body goes on chunked.
        edit.set("content-length", Vec::new());
    }
    Ok(HeadDecision {
        changes: edit.changes(),
        body,
    })
}

impl BodyJob {
    /// The body grew past `wasmgate.body_buffer_limit` while it streamed in: a refusal when
    /// it must not pass unchanged, else `None` (it goes on as it is).
    pub fn too_large(&self) -> Option<Refusal> {
        (self.fail_closed && self.kind.is_some()).then(|| {
            refusal(
                413,
                TOO_LARGE,
                self.accept.as_deref(),
                &self.request_id,
                "body: larger than wasmgate.body_buffer_limit".into(),
            )
        })
    }

    fn unusable(
        &self,
        status: u16,
        message: &str,
        why: String,
        decision: &mut BodyDecision,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        if self.fail_closed {
            Err(refusal(
                status,
                message,
                self.accept.as_deref(),
                &self.request_id,
                format!("body: {why}"),
            ))
        } else {
            decision.unusable = Some(why);
            Ok(None)
        }
    }

    /// Rewrites the whole body (fuzzing entry point): total on any bytes.
    pub fn finish(&self, body: &[u8]) -> Result<BodyDecision, Refusal> {
        let mut decision = BodyDecision::default();
        if let Some(plan) = &self.query {
            let fields = Params::parse(body);
            if let Some(change) = plan.finish(&fields.params) {
                decision.changes.push(change);
            }
        }
        let ops = &self.ops;
        // Kong: on an empty body only add and append apply.
        let empty_body = Rendered {
            add: ops.add.clone(),
            append: ops.append.clone(),
            ..Rendered::default()
        };
        let ops = if body.is_empty() { &empty_body } else { ops };
        let new_body = match &self.kind {
            None => None,
            Some(BodyKind::Form) => {
                let mut params = Params::parse(body);
                apply_params(&mut params, ops).then(|| params.to_bytes())
            }
            Some(BodyKind::Json) => match Object::parse(body) {
                Parsed::Object(mut object) => {
                    apply_json(&mut object, ops).then(|| object.to_bytes())
                }
                Parsed::Invalid if body.is_empty() => {
                    let mut object = Object::empty();
                    apply_json(&mut object, ops).then(|| object.to_bytes())
                }
                // Valid JSON without top-level keys: nothing to edit.
                Parsed::Other => None,
                Parsed::Invalid => self.unusable(
                    400,
                    NOT_JSON,
                    format!("not JSON by RFC 8259 ({} bytes)", body.len()),
                    &mut decision,
                )?,
            },
            Some(BodyKind::Multipart(None)) => None,
            Some(BodyKind::Multipart(Some(boundary))) => {
                let parts = match Multipart::parse(body, boundary) {
                    Ok(parts) => Some(parts),
                    Err(_) if body.is_empty() => Some(Multipart::empty(boundary)),
                    Err(why) => {
                        self.unusable(
                            400,
                            NOT_MULTIPART,
                            format!("multipart: {why}"),
                            &mut decision,
                        )?;
                        None
                    }
                };
                match parts {
                    None => None,
                    Some(mut parts) => {
                        let rewrite = match &self.write_boundary {
                            Some(fresh) => {
                                parts.set_boundary(fresh.clone());
                                true
                            }
                            None => false,
                        };
                        // Unreachable by construction (the boundary was chosen at the headers
                        // for these values); kept so that no body is ever written ambiguous.
                        if written(ops).iter().any(|w| parts.collides(w)) {
                            return Err(refusal(
                                500,
                                UNEXPECTED,
                                self.accept.as_deref(),
                                &self.request_id,
                                "body: a value holds the multipart boundary".into(),
                            ));
                        }
                        (apply_multipart(&mut parts, ops) || rewrite).then(|| parts.to_bytes())
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

fn apply_json(object: &mut Object, ops: &Rendered) -> bool {
    let mut changed = false;
    for name in &ops.remove {
        changed |= object.remove(name);
    }
    for (old, new) in &ops.rename {
        changed |= object.rename(old, new);
    }
    for (name, value) in valued(&ops.replace) {
        changed |= object.replace(name, value);
    }
    for (name, value) in valued(&ops.add) {
        changed |= object.add(name, value);
    }
    for (name, value) in valued(&ops.append) {
        object.append(name, value);
        changed = true;
    }
    changed
}

/// Kong's `transform_multipart_body`: rename → remove → replace → add; `append` does not
/// apply to multipart bodies.
fn apply_multipart(parts: &mut Multipart, ops: &Rendered) -> bool {
    let mut changed = false;
    for (old, new) in &ops.rename {
        changed |= parts.rename(old, new);
    }
    for name in &ops.remove {
        changed |= parts.remove(name);
    }
    for (name, value) in valued(&ops.replace) {
        changed |= parts.replace(name, value);
    }
    for (name, value) in valued(&ops.add) {
        changed |= parts.add(name, value);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        let env = |name: &str| match name {
            "BACKEND_TOKEN" => Some("s3cret".to_owned()),
            "DASHED_TOKEN" => Some("tok--en--cd".to_owned()),
            _ => None,
        };
        Config::parse(json.as_bytes(), &env).unwrap()
    }

    fn headers(list: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn base(path: &str, extra: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut h = headers(&[
            (":method", b"POST"),
            (":path", path.as_bytes()),
            (":authority", b"client.test"),
        ]);
        for (k, v) in extra {
            h.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        h
    }

    fn head<'a>(h: &'a [(Vec<u8>, Vec<u8>)], eos: bool) -> RequestHead<'a> {
        RequestHead {
            headers: h,
            end_of_stream: eos,
            route: None,
            request_id: b"test-request-id",
        }
    }

    fn decide(config: &Config, h: &[(Vec<u8>, Vec<u8>)], eos: bool) -> HeadDecision {
        on_headers(config, &head(h, eos)).unwrap()
    }

    fn refused(config: &Config, h: &[(Vec<u8>, Vec<u8>)], eos: bool) -> (u16, String) {
        let r = on_headers(config, &head(h, eos)).unwrap_err();
        (
            r.response.status,
            String::from_utf8_lossy(&r.response.body).into_owned(),
        )
    }

    fn change(d: &[HeaderChange], name: &str) -> Option<Vec<String>> {
        d.iter().find(|c| c.name == name).map(|c| {
            c.values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
    }

    /// Envoy runs the plugin after the router rewrote the Host; the translation hands the
    /// client's over in CLIENT_HOST_HEADER, which `$(headers.host)` reads and nobody
    /// upstream gets.
    #[test]
    fn headers_host_reads_the_clients_host_when_it_is_handed_over() {
        let config = config(r#"{"add":{"headers":["x-client-host:$(headers.host)"]}}"#);
        let h = base("/", &[(CLIENT_HOST_HEADER, "Client.Test:8080")]);
        let d = decide(&config, &h, true);
        assert_eq!(
            change(&d.changes, "x-client-host"),
            Some(vec!["Client.Test:8080".into()])
        );
        assert_eq!(change(&d.changes, CLIENT_HOST_HEADER), Some(vec![]));
        assert_eq!(change(&d.changes, ":authority"), None);
        // Without it (gateway), the Host is `:authority`.
        let d = decide(&config, &base("/", &[]), true);
        assert_eq!(
            change(&d.changes, "x-client-host"),
            Some(vec!["client.test".into()])
        );
        assert_eq!(change(&d.changes, CLIENT_HOST_HEADER), None);
    }

    fn raw_change(d: &[HeaderChange], name: &str) -> Option<Vec<Vec<u8>>> {
        d.iter().find(|c| c.name == name).map(|c| c.values.clone())
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
        let twice = config(r#"{"append":{"headers":["host:a","host:b"]}}"#);
        assert_eq!(refused(&twice, &base("/", &[]), true).0, 500);
    }

    #[test]
    fn every_client_value_of_a_changed_header_is_replaced() {
        // Review #2: the change carries the final list; a client's second value never stays.
        let c = config(
            r#"{"replace":{"headers":["X-Api-Key:{vault://env/BACKEND_TOKEN}"]},
                "add":{"headers":["X-Api-Key:{vault://env/BACKEND_TOKEN}"]},
                "rename":{"headers":["x-old:x-new"]},"append":{"headers":["x-list:v"]}}"#,
        );
        let d = decide(
            &c,
            &base(
                "/",
                &[
                    ("x-api-key", "a"),
                    ("x-api-key", "evil"),
                    ("x-old", "o"),
                    ("x-new", "n1"),
                    ("x-new", "n2"),
                    ("x-list", "a"),
                    ("x-list", "b"),
                ],
            ),
            true,
        );
        assert_eq!(change(&d.changes, "x-api-key"), Some(vec!["s3cret".into()]));
        assert_eq!(change(&d.changes, "x-new"), Some(vec!["o".into()]));
        assert_eq!(change(&d.changes, "x-old"), Some(vec![]));
        assert_eq!(
            change(&d.changes, "x-list"),
            Some(vec!["a".into(), "b".into(), "v".into()])
        );
    }

    #[test]
    fn header_entries_without_a_value_behave_as_in_kong() {
        // Review #18: `X-A:` is a valid Kong entry; Kong's table gets nil for it.
        let h = base("/", &[("x-a", "client")]);
        for json in [
            r#"{"add":{"headers":["X-A:"]}}"#,
            r#"{"replace":{"headers":["X-A:"]}}"#,
            r#"{"append":{"headers":["X-A:"]}}"#,
            r#"{"replace":{"headers":["host:"]},"add":{"headers":["X-B:"]}}"#,
        ] {
            assert_eq!(decide(&config(json), &h, true).changes, vec![], "{json}");
        }
        // A nil entry hides the client's value from the operations that follow.
        let c = config(r#"{"replace":{"headers":["X-A:"]},"add":{"headers":["x-a:mine"]}}"#);
        assert_eq!(
            change(&decide(&c, &h, true).changes, "x-a"),
            Some(vec!["mine".into()])
        );
        let c = config(r#"{"replace":{"headers":["X-A:"]},"append":{"headers":["x-a:"]}}"#);
        assert_eq!(change(&decide(&c, &h, true).changes, "x-a"), Some(vec![]));
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
            &head(
                &base("/?q=a%0D%0AInjected:%201", &[("accept", "text/plain")]),
                true,
            ),
        )
        .unwrap_err();
        assert_eq!(err.response.status, 500);
        assert_eq!(
            err.response.body,
            b"An unexpected error occurred\nrequest_id: test-request-id\n"
        );
        assert!(err.log.contains("x-q"));
    }

    #[test]
    fn bytes_outside_utf8_are_never_mangled() {
        // Every entry point gets 0x80-0xFF, CR, LF and NUL bytes: nothing panics, bytes are
        // copied as they are, and CR/LF/NUL never reach a header.
        let c = config(
            r#"{"add":{"headers":["x-copy:$(headers.src)","x-q:$(query_params.r)"],
                       "querystring":["c:$(headers.src)"],"body":["p:$(headers.src)"]},
                "replace":{"uri":"/$(headers.src)/$(query_params.q)"}}"#,
        );
        let high = b"\x80\xe9\xff";
        let mut h = headers(&[
            (":method", b"POST\xff"),
            (":path", b"/\xff?q=%FF%00&r=\xfe"),
            (":authority", b"h\xff"),
            ("src", high),
            ("accept", b"\xff"),
            ("content-type", b"application/json\xff"),
        ]);
        let d = on_headers(&c, &head(&h, false)).unwrap();
        assert_eq!(raw_change(&d.changes, "x-copy"), Some(vec![high.to_vec()]));
        assert_eq!(
            raw_change(&d.changes, ":path"),
            Some(vec![
                b"/%80%E9%FF/%FF%00?q=%FF%00&r=\xfe&c=%80%E9%FF".to_vec()
            ])
        );
        assert_eq!(raw_change(&d.changes, "x-q"), Some(vec![b"\xfe".to_vec()]));
        let job = d.body.unwrap();
        let done = job.finish(b"{\"k\":\"\xc3\xa9\"}").unwrap();
        assert_eq!(
            done.body.unwrap(),
            b"{\"k\":\"\xc3\xa9\",\"p\":\"\x80\xe9\xff\"}".to_vec()
        );
        // A header that carries CR, LF or NUL into a header fails the request.
        h[3].1 = b"a\r\nInjected: 1\x00".to_vec();
        let c = config(r#"{"add":{"headers":["x-copy:$(headers.src)"]}}"#);
        let err = on_headers(&c, &head(&h, true)).unwrap_err();
        assert_eq!(err.response.status, 500);
        assert_eq!(
            err.response.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        // A form and a multipart body get the bytes as their encodings carry them.
        let c = config(r#"{"add":{"body":["p:$(headers.src)"]}}"#);
        let mut form = base(
            "/",
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        form.push((b"src".to_vec(), high.to_vec()));
        let job = decide(&c, &form, false).body.unwrap();
        assert_eq!(
            job.finish(b"a=\xff%ZZ").unwrap().body.unwrap(),
            b"a=\xff%ZZ&p=%80%E9%FF"
        );
        let mut multi = base("/", &[("content-type", "multipart/form-data; boundary=B")]);
        multi.push((b"src".to_vec(), high.to_vec()));
        let job = decide(&c, &multi, false).body.unwrap();
        let done = job.finish(b"").unwrap().body.unwrap();
        assert!(done.windows(3).any(|w| w == high));
    }

    #[test]
    fn uri_captures_come_from_the_route_paths() {
        // Review #11: the route's regex paths from the data plane, on the normalised path.
        let c = config(
            r#"{"replace":{"uri":"/users/$(uri_captures.id)/$(uri_captures[1] or 'x') é"},
                "add":{"headers":["x-id:$(uri_captures['id'] or 'none')","x-all:$(uri_captures[0])"]},
                "wasmgate":{"route_paths":{"users":["/nope/(\\d+)","/u/(?<id>\\d+)$"],"plain":[]}}}"#,
        );
        let run = |path: &str, route: Option<&[u8]>| {
            let h = base(path, &[]);
            on_headers(
                &c,
                &RequestHead {
                    headers: &h,
                    end_of_stream: true,
                    route,
                    request_id: b"test-request-id",
                },
            )
            .unwrap()
            .changes
        };
        let d = run("/u/42?a=1", Some(b"users"));
        assert_eq!(
            change(&d, ":path"),
            Some(vec!["/users/42/42%20%C3%A9?a=1".into()])
        );
        assert_eq!(change(&d, "x-id"), Some(vec!["42".into()]));
        assert_eq!(change(&d, "x-all"), Some(vec!["/u/42".into()]));
        let d = run("/u/./%34%32", Some(b"users"));
        assert_eq!(
            change(&d, "x-id"),
            Some(vec!["42".into()]),
            "normalised first"
        );
        // A route without regex paths, or not in the map: Kong's empty table.
        for route in [Some(&b"plain"[..]), Some(b"other"), None, Some(b"\xff")] {
            let d = run("/u/42", route);
            assert_eq!(change(&d, ":path"), Some(vec!["/users//x%20%C3%A9".into()]));
            assert_eq!(change(&d, "x-id"), Some(vec!["none".into()]));
        }
        // Upstream in Envoy the route has already rewritten :path (strip_path, service path):
        // the regexes match the client's path, which Envoy keeps in x-envoy-original-path.
        let h = base("/base/42", &[("x-envoy-original-path", "/u/42?a=1")]);
        let rewritten = on_headers(
            &c,
            &RequestHead {
                headers: &h,
                end_of_stream: true,
                route: Some(b"users"),
                request_id: b"test-request-id",
            },
        )
        .unwrap()
        .changes;
        assert_eq!(change(&rewritten, "x-id"), Some(vec!["42".into()]));
        let relative = config(r#"{"replace":{"uri":"$(headers.x)"}}"#);
        assert_eq!(
            refused(&relative, &base("/", &[]), true).0,
            500,
            "a path must start with /"
        );
    }

    #[test]
    fn replace_uri_keeps_question_marks_and_hashes_as_kong() {
        // Review #22: Kong's `escape` keeps `?` and `#`; its runloop then appends `?args`.
        let c = config(r#"{"replace":{"uri":"/a?x=1#f"}}"#);
        let path = |p: &str| change(&decide(&c, &base(p, &[]), true).changes, ":path");
        assert_eq!(path("/p"), Some(vec!["/a?x=1#f".into()]));
        assert_eq!(path("/p?b=2"), Some(vec!["/a?x=1#f?b=2".into()]));
        assert_eq!(path("/p?"), Some(vec!["/a?x=1#f?".into()]));
        let spaces = config(r#"{"replace":{"uri":"/a b/%41/ü"}}"#);
        assert_eq!(
            change(&decide(&spaces, &base("/", &[]), true).changes, ":path"),
            Some(vec!["/a%20b/%41/%C3%BC".into()])
        );
        // Without replace.uri a trailing `?` stays, as Kong forwards it.
        let q = config(r#"{"add":{"headers":["x:1"]}}"#);
        assert_eq!(
            change(&decide(&q, &base("/p?", &[]), true).changes, ":path"),
            None
        );
        let rm = config(r#"{"remove":{"querystring":["a"]}}"#);
        assert_eq!(
            change(&decide(&rm, &base("/p?a=1", &[]), true).changes, ":path"),
            Some(vec!["/p".into()])
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
            "only adds, declared larger than the limit: passed on as is"
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
                "append":{"body":["arr:2","s:2","n:2"]}}"#,
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
                r#"{"new":{"k":[1]},"rep":"r","arr":[1,"2"],"s":["1","2"],"n":["2"],"added":"hx"}"#
            ),
            "review #19: a number is replaced by [value], as Kong's append_value"
        );
        assert_eq!(finish(&job, "[1]").body, None, "no keys to edit");
        assert_eq!(
            body(&finish(&job, "")).as_deref(),
            Some(r#"{"added":"hx","arr":["2"],"s":["2"],"n":["2"]}"#),
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
        // Review #19: Kong's order rename → remove → replace → add, set_simple parts, no
        // append for multipart.
        let expected = format!(
            "{}{}{}--B--\r\n",
            part("new", "o"),
            part("rep", "r"),
            part("added", "a b"),
        );
        assert_eq!(body(&finish(&job, &input)), Some(expected));
        let order = config(r#"{"remove":{"body":["a"]},"rename":{"body":["b:a"]}}"#);
        let job = decide(
            &order,
            &base("/", &[("content-type", "multipart/form-data; boundary=B")]),
            false,
        )
        .body
        .unwrap();
        let d = finish(&job, &format!("{}--B--", part("b", "bv")));
        assert_eq!(
            body(&d).as_deref(),
            Some("--B--"),
            "rename then remove drops both"
        );
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
        // A written value holding the client's boundary: the body goes on with a longer
        // one (refusing would tell the client whether a secret holds `--<its boundary>`).
        assert_eq!(
            change(&d.changes, "content-type"),
            Some(vec![r#"multipart/form-data; boundary="B0""#.into()])
        );
        let written = d.body.unwrap().finish(b"--B--").unwrap().body.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&written),
            "--B0\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\na\r\n--B--\r\n--B0--"
        );
        let parsed = Multipart::parse(&written, b"B0").unwrap();
        assert!(parsed.contains(b"x"));
    }

    /// Review #10: a client chooses the boundary; whether a secret the plugin writes holds
    /// `--<boundary>` must not change the answer, or the client learns the secret one guessed
    /// piece at a time.
    #[test]
    fn the_client_boundary_is_no_oracle_on_written_secrets() {
        let secret = config(r#"{"add":{"body":["token:{vault://env/DASHED_TOKEN}"]}}"#);
        let body = |boundary: &str| {
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--{boundary}--\r\n")
        };
        // `en` and `cd` are in the secret after `--`; `zz` and `tok` are not.
        let mut rewritten = Vec::new();
        for boundary in ["en", "zz", "cd", "tok"] {
            let h = base(
                "/",
                &[(
                    "content-type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )],
            );
            let d = decide(&secret, &h, false);
            let content_type = change(&d.changes, "content-type")
                .map(|v| v[0].clone())
                .unwrap_or_else(|| format!("multipart/form-data; boundary={boundary}"));
            let out = d
                .body
                .unwrap()
                .finish(body(boundary).as_bytes())
                .unwrap_or_else(|r| panic!("{boundary}: refused {}", r.response.status));
            let written_with = multipart::boundary(content_type.as_bytes()).unwrap();
            let parsed = Multipart::parse(&out.body.unwrap(), &written_with).unwrap();
            assert!(
                parsed.contains(b"a") && parsed.contains(b"token"),
                "{boundary}"
            );
            rewritten.push(written_with != boundary.as_bytes());
        }
        assert_eq!(rewritten, [true, false, true, false]);
    }

    #[test]
    fn bodies_that_cannot_be_sanitised_are_refused() {
        // Review #9: with a remove configured, a body the plugin cannot edit safely never
        // reaches the upstream unchanged.
        let c = config(r#"{"remove":{"body":["role"]},"wasmgate":{"body_buffer_limit":64}}"#);
        let job = |content_type: &str| {
            decide(&c, &base("/", &[("content-type", content_type)]), false)
                .body
                .unwrap()
        };
        let status = |job: &BodyJob, body: &[u8]| match job.finish(body) {
            Ok(d) => (200, body_or(&d, body)),
            Err(r) => (
                r.response.status,
                String::from_utf8_lossy(&r.response.body).into_owned(),
            ),
        };
        fn body_or(d: &BodyDecision, original: &[u8]) -> String {
            String::from_utf8_lossy(d.body.as_deref().unwrap_or(original)).into_owned()
        }
        let json = job("application/json");
        assert_eq!(
            status(&json, br#"{"role":"admin","x":NaN}"#),
            (
                400,
                "{\n  \"message\":\"The request body is not valid JSON\",\n  \"request_id\":\"test-request-id\"\n}"
                    .into()
            )
        );
        assert_eq!(
            status(&json, br#"{"role":"admin","x":1}"#),
            (200, r#"{"x":1}"#.into())
        );
        let multi = job("multipart/form-data; boundary=B");
        let hidden = b"--B\r\nContent-Disposition: form-data; filename=\"a; name=zzz\"; name=\"role\"\r\n\r\nadmin\r\n--B--\r\n";
        assert_eq!(status(&multi, hidden), (200, "--B--\r\n".into()));
        let unterminated = b"--B\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin\r\n";
        assert_eq!(
            status(&multi, unterminated),
            (
                400,
                "{\n  \"message\":\"The request body is not valid multipart/form-data\",\n  \"request_id\":\"test-request-id\"\n}"
                    .into()
            )
        );
        let twice = b"--B\r\nContent-Disposition: form-data; name=\"x\"; name=\"role\"\r\n\r\nadmin\r\n--B--";
        assert_eq!(status(&multi, twice).0, 400);
        // Streamed past the limit.
        assert_eq!(json.too_large().unwrap().response.status, 413);
        // Refused at the headers: declared too large, encoded, no boundary, two types.
        let cases: [(&[(&str, &str)], u16); 4] = [
            (
                &[
                    ("content-type", "application/json"),
                    ("content-length", "65"),
                ],
                413,
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ],
                415,
            ),
            (&[("content-type", "multipart/form-data")], 400),
            (
                &[
                    ("content-type", "text/plain"),
                    ("content-type", "application/json"),
                ],
                400,
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(
                refused(&c, &base("/", extra), false).0,
                expected,
                "{extra:?}"
            );
            assert!(
                decide(&c, &base("/", extra), true).body.is_none(),
                "no body: nothing to refuse"
            );
        }
        let identity = [
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ];
        assert!(decide(&c, &base("/", &identity), false).body.is_some());
        let hidden = [
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ];
        assert_eq!(refused(&c, &base("/", &hidden), false).0, 415);
        // `pass` keeps Kong's behaviour: such bodies go on unchanged.
        let pass = config(
            r#"{"remove":{"body":["role"]},"wasmgate":{"body_buffer_limit":64,"unparsable_body":"pass"}}"#,
        );
        let json = decide(
            &pass,
            &base("/", &[("content-type", "application/json")]),
            false,
        )
        .body
        .unwrap();
        assert_eq!(json.finish(b"{\"role\":NaN}").unwrap().body, None);
        assert!(json.too_large().is_none());
        for (extra, _) in cases {
            assert!(
                decide(&pass, &base("/", extra), false).body.is_none(),
                "{extra:?}"
            );
        }
        // With only add/append there is nothing to sanitise: pass-through is the default.
        let add = config(r#"{"add":{"body":["p:v"]},"wasmgate":{"body_buffer_limit":64}}"#);
        let json = decide(
            &add,
            &base("/", &[("content-type", "application/json")]),
            false,
        )
        .body
        .unwrap();
        assert_eq!(json.finish(b"{\"a\":NaN}").unwrap().body, None);
        assert!(json.too_large().is_none());
        for (extra, _) in &cases[..3] {
            assert!(
                decide(&add, &base("/", extra), false).body.is_none(),
                "{extra:?}"
            );
        }
        assert!(
            decide(&add, &base("/", cases[3].0), false).body.is_none(),
            "Kong reads the first Content-Type, text/plain"
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
            // Moved fields are re-encoded as Kong's set_uri_args does (a space is %20).
            Some(vec!["/p?a=1&a=2&b=x%20y&q=1".into()])
        );
        // Without held headers the fields stay in the body (a configure-time warning says so).
        let c = config(r#"{"http_method":"GET","add":{"querystring":["q:1"]}}"#);
        let d = decide(&c, &h, false);
        assert!(d.body.is_none());
        assert_eq!(change(&d.changes, ":path"), Some(vec!["/p?a=1&q=1".into()]));
    }

    #[test]
    fn held_headers_get_an_exact_content_length_or_keep_the_clients() {
        // Review #20: with held headers an unchanged body keeps its Content-Length.
        let c = config(
            r#"{"add":{"body":["p:v"]},"remove":{"body":["x"]},"wasmgate":{"hold_headers":true}}"#,
        );
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
        let job = d.body.unwrap();
        let done = finish(&job, "{}");
        assert_eq!(body(&done).as_deref(), Some(r#"{"p":"v"}"#));
        assert_eq!(
            change(&done.changes, "content-length"),
            Some(vec!["9".into()])
        );
        let unchanged = finish(&job, r#"{"p":"mine"}"#);
        assert_eq!(unchanged.body, None);
        assert!(
            unchanged.changes.is_empty(),
            "Content-Length stays the client's"
        );
    }

    #[test]
    fn a_content_length_that_does_not_parse_is_no_length_that_fits() {
        // Found by the transformer_stream fuzz target: a Content-Length of 20 digits did not
        // parse, so it counted as none; the body was rewritten and the old length went on.
        for length in ["30000000000000000000", "12x"] {
            let h = base(
                "/",
                &[
                    ("content-type", "application/json"),
                    ("content-length", length),
                ],
            );
            let adds = decide(&config(r#"{"add":{"body":["p:v"]}}"#), &h, false);
            assert!(adds.body.is_none(), "{length}: the body passes unchanged");
            assert_eq!(change(&adds.changes, "content-length"), None, "{length}");
            let (status, _) = refused(&config(r#"{"remove":{"body":["secret"]}}"#), &h, false);
            assert_eq!(
                status, 413,
                "{length}: a body that must be sanitised and cannot be is refused"
            );
        }
    }

    #[test]
    fn the_clients_host_is_not_in_kongs_table() {
        // Kong drops `host` from the table first: a rename finds nothing to move, and an
        // append starts from no value (one Host, not the client's and the appended one).
        let c = config(r#"{"rename":{"headers":["host:x-client-host"]}}"#);
        let d = decide(&c, &base("/", &[]), true);
        assert_eq!(change(&d.changes, "x-client-host"), None);
        assert_eq!(change(&d.changes, ":authority"), None);
        let c = config(r#"{"append":{"headers":["host:appended.test"]}}"#);
        let d = decide(&c, &base("/", &[]), true);
        assert_eq!(
            change(&d.changes, ":authority"),
            Some(vec!["appended.test".into()])
        );
    }

    #[test]
    fn each_form_operation_alone_rewrites_the_body() {
        let form = base(
            "/",
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        for (ops, edited) in [
            (r#"{"remove":{"body":["absent","b"]}}"#, "a=1"),
            (r#"{"rename":{"body":["absent:x","b:c"]}}"#, "a=1&c=2"),
            (r#"{"replace":{"body":["absent:x","b:3"]}}"#, "a=1&b=3"),
        ] {
            let job = decide(&config(ops), &form, false).body.unwrap();
            let done = job.finish(b"a=1&b=2").unwrap();
            assert_eq!(done.body.as_deref(), Some(edited.as_bytes()), "{ops}");
        }
    }

    #[test]
    fn each_json_and_multipart_operation_alone_rewrites_the_body() {
        let json = base("/", &[("content-type", "application/json")]);
        for (ops, edited) in [
            (r#"{"remove":{"body":["absent","b"]}}"#, r#"{"a":1}"#),
            (
                r#"{"rename":{"body":["absent:x","b:c"]}}"#,
                r#"{"a":1,"c":2}"#,
            ),
        ] {
            let job = decide(&config(ops), &json, false).body.unwrap();
            let done = job.finish(br#"{"a":1,"b":2}"#).unwrap();
            assert_eq!(done.body.as_deref(), Some(edited.as_bytes()), "{ops}");
        }
        let multipart = base("/", &[("content-type", "multipart/form-data; boundary=B")]);
        let body = b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--B--\r\n";
        for ops in [
            r#"{"rename":{"body":["absent:x","a:c"]}}"#,
            r#"{"replace":{"body":["absent:x","a:3"]}}"#,
        ] {
            let job = decide(&config(ops), &multipart, false).body.unwrap();
            let done = job.finish(body).unwrap();
            let edited = done
                .body
                .unwrap_or_else(|| panic!("{ops}: body not rewritten"));
            assert_ne!(edited, body.to_vec(), "{ops}");
        }
    }
}
