//! One request through `request_transformer::stream::Stream` against a mock host with
//! Envoy's header-map and body-buffer semantics (as the crate's own tests mock it), for a
//! handful of real configs and any request: header names and values of any bytes (but LF),
//! any method and path, a Content-Length that may lie or be missing (but is a number, as
//! Envoy requires), the body in chunks of any size, with or without trailers.
//!
//! What the upstream gets, when the filter lets the request through:
//! - never a header value the filter made up with CR, LF, NUL or another control byte (a
//!   client's value may move, as sent, under a renamed header);
//! - no header a `remove` names, no client duplicate of a replaced header, the renamed and
//!   replaced values Kong would set, the configured method and Host;
//! - with `remove.body: [role]`, no top-level `role` in a JSON, form or multipart body, as
//!   serde_json or the strict codecs read it (fail closed: a body that cannot be checked
//!   never passes; with `unparsable_body: pass`, only an unparsable one does), and never two
//!   Content-Types or a Content-Encoding around a body it should have edited;
//! - a Content-Length that is the rewritten body's length, or none;
//! - the body unchanged when no body operation applies;
//! - a `:path` whose bytes were either sent by the client or percent-encoded.
//!
//! And the stream: never left paused once the request has ended; a local response only with
//! a status the config and the request call for (400, 413, 415 for a body it must edit and
//! cannot; 500 only for the documented reasons, e.g. a rendered header value with a control
//! byte); nothing more after a local response.
//!
//! Input: `<config><flags><chunk>` bytes, then `METHOD\nPATH\n`, header lines `name:value`,
//! an empty line, the body. Flags: 1 the headers end the stream (when there is no body),
//! 2 trailers end it.
#![no_main]

use std::rc::Rc;

use kit::LocalResponse;
use libfuzzer_sys::fuzz_target;
use request_transformer::json::{Object, Parsed};
use request_transformer::multipart::{boundary, Multipart};
use request_transformer::stream::{Action, Host, Level, Status, Stream};
use request_transformer::transform::Headers;
use request_transformer::urlencoded::Params;
use request_transformer::Config;
use wasmgate_fuzz::{find, is_header_value, strict};

/// How a config's requests are judged.
struct Case {
    json: &'static str,
    /// `remove.body: [role]`, failing closed (`true`) or passing unparsable bodies.
    strips_role: Option<bool>,
    /// The config has body operations.
    edits_body: bool,
    /// Headers the upstream never gets.
    absent: &'static [&'static str],
    /// Log messages that make a 500 legitimate.
    legit_500: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        json: r#"{"remove":{"body":["role"]}}"#,
        strips_role: Some(true),
        edits_body: true,
        absent: &[],
        legit_500: &[],
    },
    Case {
        json: r#"{"remove":{"body":["role"]},"wasmgate":{"hold_headers":true}}"#,
        strips_role: Some(true),
        edits_body: true,
        absent: &[],
        legit_500: &[],
    },
    Case {
        json: r#"{"remove":{"body":["role"]},"rename":{"body":["user:login"]},
            "replace":{"body":["kind:$(headers.x_kind or 'k')"]},
            "add":{"body":["added:$(query_params.q or 'none')"]},"append":{"body":["tags:t1"]},
            "wasmgate":{"body_buffer_limit":512}}"#,
        strips_role: Some(true),
        edits_body: true,
        absent: &[],
        legit_500: &[],
    },
    Case {
        json: r#"{"remove":{"body":["role"]},"wasmgate":{"unparsable_body":"pass"}}"#,
        strips_role: Some(false),
        edits_body: true,
        absent: &[],
        legit_500: &[],
    },
    Case {
        json: r#"{"remove":{"headers":["x-secret"]},"rename":{"headers":["x-old:x-new"]},
            "replace":{"headers":["x-api-key:{vault://env/KEY}"]},
            "add":{"headers":["x-from:$(headers.x_in)"]},"append":{"headers":["x-list:v"]}}"#,
        strips_role: None,
        edits_body: false,
        absent: &["x-secret", "x-old"],
        legit_500: &["holds control characters"],
    },
    Case {
        json: r#"{"http_method":"GET","replace":{"uri":"/new"},
            "add":{"querystring":["a:$(headers.x_q or 'none')"]},
            "remove":{"querystring":["token"]},"wasmgate":{"hold_headers":true}}"#,
        strips_role: None,
        edits_body: false,
        absent: &[],
        legit_500: &[],
    },
    Case {
        json: r#"{"replace":{"uri":"/u/$(uri_captures.id or 'none')/$(headers.x_path or '')"},
            "add":{"headers":["x-id:$(uri_captures.id or 'none')"]},
            "wasmgate":{"route_paths":{"route":["/u/(?<id>[^/]+)"]}}}"#,
        strips_role: None,
        edits_body: false,
        absent: &[],
        legit_500: &["holds control characters"],
    },
    Case {
        json: r#"{"add":{"body":["p:v"]},"append":{"body":["q:$(headers.x_v or 'w')"]},
            "replace":{"headers":["host:upstream.test"]}}"#,
        strips_role: None,
        edits_body: true,
        absent: &[],
        legit_500: &[],
    },
];

fn configs() -> &'static [Rc<Config>] {
    // Rc is not Sync: one set per thread (libFuzzer runs the target on one thread).
    thread_local! {
        static CONFIGS: &'static [Rc<Config>] = Box::leak(
            CASES
                .iter()
                .map(|c| {
                    let env = |name: &str| (name == "KEY").then(|| "s3cret".to_owned());
                    Rc::new(Config::parse(c.json.as_bytes(), &env).expect("case config"))
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
    }
    CONFIGS.with(|c| *c)
}

/// Envoy's request header map and body buffer, as the filter sees them.
#[derive(Default)]
struct Envoy {
    headers: Headers,
    /// The body buffered at the filter; `None` until DATA arrives (Envoy has no buffer for a
    /// request that ends with trailers and no DATA).
    buffer: Option<Vec<u8>>,
    sent: Vec<LocalResponse>,
    logs: Vec<(Level, String)>,
}

impl Host for Envoy {
    fn request_headers(&mut self) -> Result<Headers, Status> {
        Ok(self.headers.clone())
    }
    fn remove_request_header(&mut self, name: &str) -> Result<(), Status> {
        self.headers.retain(|(k, _)| k != name.as_bytes());
        Ok(())
    }
    fn add_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.headers
            .push((name.as_bytes().to_vec(), value.to_vec()));
        Ok(())
    }
    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        let key = name.as_bytes();
        match self.headers.iter().position(|(k, _)| k == key) {
            Some(first) => {
                self.headers[first].1 = value.to_vec();
                let mut i = 0;
                self.headers.retain(|(k, _)| {
                    i += 1;
                    k != key || i - 1 == first
                });
            }
            None => self.headers.push((key.to_vec(), value.to_vec())),
        }
        Ok(())
    }
    fn request_body(&mut self, size: usize) -> Result<Option<Vec<u8>>, Status> {
        Ok(self
            .buffer
            .as_ref()
            .map(|b| b[..size.min(b.len())].to_vec()))
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) -> Result<(), Status> {
        match &mut self.buffer {
            Some(buffer) => {
                let size = size.min(buffer.len());
                buffer.splice(..size, body.iter().copied());
                Ok(())
            }
            None => Err(2),
        }
    }
    fn route_name(&mut self) -> Option<Vec<u8>> {
        Some(b"route".to_vec())
    }
    fn request_id(&mut self) -> Vec<u8> {
        b"fuzz-request-id".to_vec()
    }
    fn send(&mut self, response: &LocalResponse) {
        self.sent.push(response.clone());
    }
    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }
}

fn values<'h>(headers: &'h Headers, name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Json,
    Multipart,
    Form,
}

/// The transformer's (and Kong's) body kind of a Content-Type: substring matches, in order.
fn kind(content_type: &[u8]) -> Option<Kind> {
    let lower = content_type.to_ascii_lowercase();
    if find(&lower, b"application/json").is_some() {
        Some(Kind::Json)
    } else if find(&lower, b"multipart/form-data").is_some() {
        Some(Kind::Multipart)
    } else if find(&lower, b"application/x-www-form-urlencoded").is_some() {
        Some(Kind::Form)
    } else {
        None
    }
}

/// `(has role, parses)` for a body of that kind.
fn role_in(kind: Kind, content_type: &[u8], body: &[u8]) -> (bool, bool) {
    match kind {
        Kind::Json => {
            // Bytes outside UTF-8 in a written value are written as they are (as cjson
            // does): a lenient upstream reads them as replacement characters.
            let text = String::from_utf8_lossy(body);
            let lenient = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(map)) => map.contains_key("role"),
                _ => false,
            };
            match Object::parse(body) {
                Parsed::Object(o) => {
                    let strict = match serde_json::from_slice(&o.to_bytes()) {
                        Ok(serde_json::Value::Object(map)) => map.contains_key("role"),
                        _ => false,
                    };
                    (lenient || strict, true)
                }
                Parsed::Other => (lenient, true),
                Parsed::Invalid => (lenient, false),
            }
        }
        Kind::Multipart => {
            match boundary(content_type).and_then(|b| Multipart::parse(body, &b).ok()) {
                Some(m) => (m.contains(b"role"), true),
                None => (false, false),
            }
        }
        Kind::Form => (Params::parse(body).contains(b"role"), true),
    }
}

/// The cases with `wasmgate.hold_headers`.
const CASES_HOLDING: &[usize] = &[1, 5];

const PATH_SAFE: &[u8] = b"-_.~!#$&'()*+,/:;=?@[]%";

fuzz_target!(|data: &[u8]| {
    let [config, flags, chunk, rest @ ..] = data else {
        return;
    };
    let case_index = usize::from(*config) % CASES.len();
    let case = &CASES[case_index];
    let config = Rc::clone(&configs()[case_index]);
    let chunk = match chunk {
        255 => usize::MAX,
        n => usize::from(*n) + 1,
    };
    let (head, body) = match find(rest, b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &b""[..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let mut original: Headers = vec![
        (b":method".to_vec(), method.to_vec()),
        (b":path".to_vec(), path.to_vec()),
        (b":authority".to_vec(), b"client.test".to_vec()),
    ];
    for line in lines {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) | None => continue,
            Some(i) => (&line[..i], &line[i + 1..]),
        };
        original.push((name.to_ascii_lowercase(), value.to_vec()));
    }
    // Envoy refuses a request whose Content-Length is not a decimal number (or whose
    // Content-Lengths differ) before any filter runs: so do we. A lying one is fine.
    let lengths: Vec<&[u8]> = values(&original, "content-length")
        .into_iter()
        .map(|v| v.trim_ascii())
        .collect();
    if lengths
        .iter()
        .any(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit) || *v != lengths[0])
    {
        return;
    }
    let trailers = flags & 2 != 0;
    let end_at_headers = body.is_empty() && !trailers && flags & 1 != 0;

    let mut host = Envoy {
        headers: original.clone(),
        ..Envoy::default()
    };
    let mut stream = Stream::new(config);
    let mut upstream_headers: Option<Headers> = None;
    let mut upstream_body: Vec<u8> = Vec::new();
    let mut action = stream.on_request_headers(&mut host, end_at_headers);
    let mut forward = |host: &mut Envoy, action: Action, upstream_headers: &mut Option<Headers>| {
        if action == Action::Continue {
            upstream_headers.get_or_insert_with(|| host.headers.clone());
            if let Some(buffer) = &mut host.buffer {
                upstream_body.append(buffer);
            }
        }
    };
    forward(&mut host, action, &mut upstream_headers);
    if host.sent.is_empty() && !end_at_headers {
        let pieces: Vec<&[u8]> = if body.is_empty() {
            if trailers {
                Vec::new()
            } else {
                vec![b""]
            }
        } else {
            body.chunks(chunk.min(body.len())).collect()
        };
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let end = i + 1 == n && !trailers;
            let buffer = host.buffer.get_or_insert_with(Vec::new);
            buffer.extend_from_slice(piece);
            let size = buffer.len();
            action = stream.on_request_body(&mut host, size, end);
            if !host.sent.is_empty() {
                break;
            }
            forward(&mut host, action, &mut upstream_headers);
        }
        if trailers && host.sent.is_empty() {
            action = stream.on_request_trailers(&mut host);
            forward(&mut host, action, &mut upstream_headers);
        }
    }

    // A local response: legitimate for this config and request, and final.
    if let Some(response) = host.sent.first() {
        assert_eq!(host.sent.len(), 1, "one local response");
        assert_eq!(action, Action::Pause);
        let reason = host
            .logs
            .iter()
            .rev()
            .find(|(level, _)| *level == Level::Error)
            .map(|(_, m)| m.as_str())
            .unwrap_or_default();
        match response.status {
            400 | 413 | 415 => assert!(
                case.strips_role == Some(true) && !end_at_headers,
                "{} for a config that need not refuse: {reason}",
                response.status
            ),
            500 => {
                assert!(
                    case.legit_500.iter().any(|r| reason.contains(r)),
                    "500: {reason}"
                );
                if reason.contains("control characters") && case_index == 4 {
                    // `$(headers.x_in)` reads a header named `x_in` when there is one (as the
                    // raw key of ngx's header table), else `x-in`.
                    let named = values(&original, "x_in");
                    let read = if named.is_empty() {
                        values(&original, "x-in")
                    } else {
                        named
                    };
                    let x_in = read.join(&b", "[..]);
                    assert!(!is_header_value(&x_in), "x_in/x-in {x_in:?} is a valid value");
                }
            }
            status => panic!("unexpected status {status}: {reason}"),
        }
        assert_eq!(stream.on_request_body(&mut host, 0, true), Action::Pause);
        assert_eq!(stream.on_request_trailers(&mut host), Action::Pause);
        return;
    }
    let Some(upstream) = upstream_headers else {
        panic!("the request ended and the stream is still paused");
    };
    assert_eq!(action, Action::Continue, "left paused at the end");

    // Headers.
    let original_path_valid = is_header_value(path);
    // Known finding (docs/FUZZING.md): form fields moved to the query keep their raw bytes.
    let moved_form = !strict() && case_index == 5 && !body.is_empty();
    for (name, value) in &upstream {
        // A client's value, as sent (possibly under a new name: `rename`).
        if original.iter().any(|(_, v)| v == value) {
            continue;
        }
        if name == b":path" && (!original_path_valid || moved_form) {
            continue;
        }
        assert!(
            is_header_value(value),
            "{} written as {value:?}",
            String::from_utf8_lossy(name)
        );
    }
    for name in case.absent {
        assert!(
            values(&upstream, name).is_empty(),
            "{name} reached the upstream"
        );
    }
    let up_path = values(&upstream, ":path")
        .first()
        .map(|p| p.to_vec())
        .unwrap_or_default();
    for &b in up_path.iter().filter(|_| !moved_form) {
        assert!(
            b.is_ascii_alphanumeric() || PATH_SAFE.contains(&b) || path.contains(&b),
            "{b:#x} in :path {up_path:?}"
        );
    }
    match case_index {
        4 => {
            if !values(&original, "x-api-key").is_empty() {
                assert_eq!(values(&upstream, "x-api-key"), [b"s3cret"]);
            }
            let old = values(&original, "x-old");
            if !old.is_empty() {
                assert_eq!(values(&upstream, "x-new"), old);
            }
        }
        5 => {
            assert_eq!(values(&upstream, ":method"), [b"GET"]);
            assert!(
                up_path == b"/new" || up_path.starts_with(b"/new?"),
                "{up_path:?}"
            );
            let query = up_path.get(5..).unwrap_or_default();
            assert!(!Params::parse(query).contains(b"token"), "{up_path:?}");
        }
        6 => assert!(up_path.starts_with(b"/u/"), "{up_path:?}"),
        7 => assert_eq!(values(&upstream, ":authority"), [b"upstream.test"]),
        _ => {}
    }

    // Body.
    let rewritten = upstream_body != body;
    if !case.edits_body {
        assert!(
            !rewritten,
            "a config without body operations changed the body"
        );
    }
    let lengths = values(&upstream, "content-length");
    if rewritten {
        assert!(
            lengths.is_empty() || lengths == [upstream_body.len().to_string().as_bytes()],
            "Content-Length {lengths:?} for a body of {}",
            upstream_body.len()
        );
    } else if CASES_HOLDING.contains(&case_index) {
        // Held headers keep the client's Content-Length for an unchanged body.
        assert_eq!(lengths, values(&original, "content-length"));
    } else {
        // Otherwise it goes when the body had to be buffered (the body goes on chunked).
        assert!(lengths.is_empty() || lengths == values(&original, "content-length"));
    }
    let content_types = values(&upstream, "content-type");
    let first_kind = content_types.first().and_then(|t| kind(t));
    if first_kind.is_none() {
        assert!(
            !rewritten,
            "a body without a known Content-Type was rewritten"
        );
    }
    let Some(fail_closed) = case.strips_role else {
        return;
    };
    if end_at_headers || (body.is_empty() && upstream_body.is_empty()) {
        return;
    }
    if fail_closed && content_types.iter().any(|t| kind(t).is_some()) {
        assert_eq!(
            content_types.len(),
            1,
            "a body to edit with several Content-Types"
        );
        let encoded = values(&upstream, "content-encoding")
            .iter()
            .any(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"));
        assert!(!encoded, "a body to edit with a Content-Encoding");
    }
    let (Some(kind), Some(content_type)) = (first_kind, content_types.first()) else {
        return;
    };
    let (role, parses) = role_in(kind, content_type, &upstream_body);
    if fail_closed {
        // What the client sent passes unchanged only when it could be checked.
        assert!(
            parses || rewritten || upstream_body.is_empty(),
            "an unparsable {kind:?} body passed"
        );
        assert!(!role, "role reached the upstream in a {kind:?} body");
    } else {
        let declared = values(&original, "content-length")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let skipped = declared.is_some_and(|n| n > 768 << 10)
            || content_types.len() > 1
            || !values(&upstream, "content-encoding").is_empty()
            || (kind == Kind::Multipart && boundary(content_type).is_none());
        if parses && !skipped {
            assert!(
                !role,
                "role reached the upstream in a parsable {kind:?} body"
            );
        }
    }
});
