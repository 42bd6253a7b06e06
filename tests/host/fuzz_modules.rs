//! The three real modules in the in-process host, each with a few configs, under generated
//! hostile requests: a seeded random driver (libFuzzer cannot see inside the wasm, and
//! wasmtime under coverage instrumentation is too heavy to build here; see docs/FUZZING.md).
//!
//! Requests: methods, paths with dot segments, doubled slashes, `%XX` and raw bytes, header
//! names and values of any bytes 0x00-0xFF (including CR, LF and NUL), Content-Length
//! present, absent, lying or not a number, bodies (JSON, form, multipart, random bytes) in
//! one piece or in chunks, trailers, HTTP/1.1 and HTTP/2. Each is driven through the
//! `HttpStream` of a `host::testing::Harness` chain (whose `TestRequest` takes text headers;
//! here they are bytes), and the upstream answers 200.
//!
//! Properties, per request:
//! - no trap: the plugin's failure count stays 0 (a failed module would answer 503), and the
//!   stream never stays paused once the request has ended (Envoy's 504 stream timeout);
//! - no 5xx unless the config calls for it (request-transformer's 500 for a rendered header
//!   value with control bytes), and only the statuses the plugin answers with (a model of
//!   request-size-limiting's decision, rate-limiting's per-identifier count, the
//!   transformer's fail-closed body refusals);
//! - the upstream never receives a header value the plugin made up with a control byte, and
//!   every client header the config does not touch arrives byte for byte;
//! - request-size-limiting never lets more than its limit through; request-transformer's
//!   `remove.body: [role]` never lets `role` through in a JSON, form or multipart body;
//!   bodies pass unchanged where no body operation applies.
//!
//! `WASMGATE_FUZZ_MODULES_N` requests per config (default 300: a few seconds in all), from
//! seed `WASMGATE_FUZZ_SEED` (default fixed; the seed is printed); the requests run and the
//! rate are printed per config and per module (`--nocapture`). Long run:
//! `WASMGATE_FUZZ_MODULES_N=100000 WASMGATE_FUZZ_SEED=$RANDOM cargo test -p wasmgate-tests
//! --test host_fuzz_modules --release`. `WASMGATE_FUZZ_STRICT=1` fails on known findings too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use host::clock::Clock;
use host::filter_chain::HttpFilter;
use host::state::StreamOp;
use host::testing::Harness;
use host::{Headers, HttpStream, Output, PluginConfig};

// ---------------------------------------------------------------- random generation

/// SplitMix64: small, seedable, good enough to spread requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Bytes of any value, biased towards the ones parsers care about.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| match self.below(8) {
                0 => *self.pick(b"\r\n\0\t\x0b\x7f\xff\x80"),
                1 => *self.pick(b"\"'\\;,=:&%+/?#. "),
                2 | 3 => self.next() as u8,
                _ => *self.pick(b"abcxyzAZ019-_"),
            })
            .collect()
    }

    fn token(&mut self, max: usize) -> String {
        let len = 1 + self.below(max);
        (0..len)
            .map(|_| *self.pick(b"abcdefghijklmnopqrstuvwxyz0123456789-_") as char)
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Length {
    Absent,
    Correct,
    Lying(u64),
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Request {
    method: Vec<u8>,
    path: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    length: Length,
    body: Vec<u8>,
    /// Sizes of the DATA pieces (their sum is the body length).
    pieces: Vec<usize>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    http2: bool,
    /// No body, no trailers: whether the headers end the stream (else an empty DATA does).
    headers_end: bool,
}

const HEADER_NAMES: &[&str] = &[
    "accept",
    "expect",
    "content-type",
    "content-encoding",
    "x-client",
    "x-in",
    "x_in",
    "x-q",
    "x-secret",
    "x-api-key",
    "x-old",
    "x-new",
    "x-list",
    "authorization",
    "cookie",
];

const CONTENT_TYPES: &[&[u8]] = &[
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=B",
    b"multipart/form-data",
    b"Multipart/Form-Data; boundary=\"q b\"",
    b"text/plain",
    b"application/jsonx\xff",
];

fn path(rng: &mut Rng) -> Vec<u8> {
    let mut p = Vec::new();
    if rng.chance(20) {
        p.extend_from_slice(rng.pick::<&[u8]>(&[
            b"/v1/items",
            b"/v1//items",
            b"/v1/%69tems",
            b"/v1/./items",
            b"//v1/x/../items",
            b"/v1/items?x=1",
        ]));
        return p;
    }
    for _ in 0..1 + rng.below(4) {
        p.push(b'/');
        let segment: &[u8] = rng.pick::<&[u8]>(&[
            b"a", b"..", b".", b"", b"%2e%2E", b"%2F", b"%ff", b"%0a", b"v1", b"items", b"u", b"7",
        ]);
        p.extend_from_slice(segment);
        if rng.chance(10) {
            p.extend(rng.bytes(4));
        }
    }
    if rng.chance(40) {
        p.push(b'?');
        let query: &[u8] = rng.pick::<&[u8]>(&[
            b"token=t&a=1",
            b"q=%2F+x&odd=%zz",
            b"token",
            b"",
            b"p=a%0d%0ab",
        ]);
        p.extend_from_slice(query);
        if rng.chance(20) {
            p.extend(rng.bytes(6));
        }
    }
    p
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(7) {
        0 => Vec::new(),
        1 => br#"{"role":"admin","user":"u","n":1}"#.to_vec(),
        2 => br#"{"role":1,"role":2,"x":NaN}"#.to_vec(),
        3 => b"role=admin&user=u&token=t".to_vec(),
        4 => b"--B\r\nContent-Disposition: form-data; name=\"role\"\r\n\r\nadmin\r\n\
               --B\r\nContent-Disposition: form-data; filename=\"a; name=zzz\"; name=\"f\"\r\n\r\n\
               x\r\n--B--\r\n"
            .to_vec(),
        5 => {
            let mut b = rng.bytes(64);
            if rng.chance(30) {
                b.extend(vec![b'x'; rng.below(3000)]);
            }
            b
        }
        _ => {
            let mut b = br#"{"role":"#.to_vec();
            b.extend(rng.bytes(16));
            b.push(b'}');
            b
        }
    }
}

fn request(rng: &mut Rng) -> Request {
    let method = match rng.below(10) {
        0..=3 => b"POST".to_vec(),
        4..=6 => b"GET".to_vec(),
        7 => b"PUT".to_vec(),
        8 => b"HEAD".to_vec(),
        _ => rng.token(8).to_uppercase().into_bytes(),
    };
    let mut headers = Vec::new();
    for _ in 0..rng.below(9) {
        let name = if rng.chance(75) {
            (*rng.pick(HEADER_NAMES)).to_owned()
        } else {
            rng.token(10)
        };
        let value = match (name.as_str(), rng.below(3)) {
            ("content-type", 0 | 1) => rng.pick(CONTENT_TYPES).to_vec(),
            ("expect", 0) => b" 100-Continue".to_vec(),
            ("accept", 0) => rng
                .pick(&[
                    &b"text/html;q=0.9, text/plain"[..],
                    b"application/xml",
                    b"*/*",
                ])
                .to_vec(),
            ("content-encoding", 0) => b"identity".to_vec(),
            _ => rng.bytes(24),
        };
        headers.push((name, value));
    }
    let body = body(rng);
    let length = match rng.below(8) {
        0..=3 => Length::Correct,
        4 | 5 => Length::Absent,
        6 => Length::Lying(match rng.below(3) {
            0 => 0,
            1 => rng.next() % 4096,
            _ => rng.next(),
        }),
        _ => Length::Garbage(rng.bytes(6)),
    };
    let mut pieces = Vec::new();
    let mut left = body.len();
    while left > 0 {
        let n = if rng.chance(30) {
            left
        } else {
            1 + rng.below(left.min(700))
        };
        pieces.push(n);
        left -= n;
    }
    let trailers = rng
        .chance(15)
        .then(|| vec![("x-trailer".to_owned(), rng.bytes(8))]);
    Request {
        method,
        path: path(rng),
        headers,
        length,
        body,
        pieces,
        trailers,
        http2: rng.chance(40),
        headers_end: rng.chance(60),
    }
}

// ---------------------------------------------------------------- driving a stream

#[derive(Debug, Default)]
struct Outcome {
    status: u16,
    response_headers: Headers,
    local: bool,
    reset: bool,
    /// The request ended and the stream stayed paused (Envoy would answer 504).
    stuck: bool,
    upstream_headers: Option<Headers>,
    upstream_body: Vec<u8>,
}

impl Request {
    fn ends_at_headers(&self) -> bool {
        self.body.is_empty() && self.trailers.is_none() && self.headers_end
    }

    fn head(&self) -> Headers {
        let mut h = Headers::new();
        h.add(":authority", "wasmgate.test");
        h.add(":path", &self.path);
        h.add(":method", &self.method);
        h.add(":scheme", "http");
        for (k, v) in &self.headers {
            h.add(k, v);
        }
        match &self.length {
            Length::Absent => {}
            Length::Correct => h.add("content-length", self.body.len().to_string()),
            Length::Lying(n) => h.add("content-length", n.to_string()),
            Length::Garbage(g) => h.add("content-length", g),
        }
        h
    }
}

fn send(h: &mut Harness, req: &Request) -> Outcome {
    let workers = h.plugins().to_vec();
    let filters: Vec<Box<dyn HttpFilter>> = workers
        .iter()
        .map(|w| Box::new(w.filter()) as Box<dyn HttpFilter>)
        .collect();
    let mut info = h.info.clone();
    info.protocol = if req.http2 { "HTTP/2" } else { "HTTP/1.1" }.into();
    let mut stream = HttpStream::new(filters, info);
    let mut out = Outcome::default();
    let mut upstream_done = false;
    let mut upstream_started = false;
    let mut client_done = false;

    let mut pump = |stream: &mut HttpStream, out: &mut Outcome, client_done: &mut bool| {
        for _ in 0..1000 {
            let mut progressed = false;
            for (i, w) in workers.iter().enumerate() {
                for (_, op) in w.take_stream_ops() {
                    progressed = true;
                    match op {
                        StreamOp::Close => out.reset = true,
                        StreamOp::ResumeRequest | StreamOp::ResumeResponse => stream.resume(i),
                        StreamOp::LocalReply(response) => stream.send_local_reply(*response),
                    }
                }
            }
            for output in stream.take_outputs() {
                progressed = true;
                match output {
                    Output::RequestHeaders {
                        headers,
                        end_of_stream,
                    } => {
                        out.upstream_headers = Some(headers);
                        upstream_done |= end_of_stream;
                    }
                    Output::RequestData {
                        data,
                        end_of_stream,
                    } => {
                        out.upstream_body.extend_from_slice(&data);
                        upstream_done |= end_of_stream;
                    }
                    Output::RequestTrailers(_) => upstream_done = true,
                    Output::ResponseHeaders {
                        headers,
                        end_of_stream,
                    } => {
                        out.status = headers
                            .get_str(":status")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        out.response_headers = headers;
                        *client_done |= end_of_stream;
                    }
                    Output::ResponseData { end_of_stream, .. } => *client_done |= end_of_stream,
                    Output::ResponseTrailers(_) => *client_done = true,
                    Output::Reset => out.reset = true,
                }
            }
            if upstream_done && !upstream_started {
                upstream_started = true;
                progressed = true;
                let mut response = Headers::new();
                response.add(":status", "200");
                response.add("content-length", "2");
                stream.response_headers(response, false);
                stream.response_data(b"ok".to_vec(), true);
            }
            if !progressed {
                break;
            }
        }
    };

    let eos = req.ends_at_headers();
    stream.request_headers(req.head(), eos);
    pump(&mut stream, &mut out, &mut client_done);
    if !eos {
        let mut at = 0;
        let n = req.pieces.len();
        for (i, &len) in req.pieces.iter().enumerate() {
            let end = i + 1 == n && req.trailers.is_none();
            stream.request_data(req.body[at..at + len].to_vec(), end);
            at += len;
            pump(&mut stream, &mut out, &mut client_done);
        }
        if n == 0 && req.trailers.is_none() {
            stream.request_data(Vec::new(), true);
            pump(&mut stream, &mut out, &mut client_done);
        }
        if let Some(trailers) = &req.trailers {
            let mut t = Headers::new();
            for (k, v) in trailers {
                t.add(k, v);
            }
            stream.request_trailers(t);
            pump(&mut stream, &mut out, &mut client_done);
        }
    }
    if !client_done && !out.reset {
        // The request is over; nothing else will come. A module waiting for a tick gets it.
        h.advance(Duration::from_millis(10));
        pump(&mut stream, &mut out, &mut client_done);
        out.stuck = !client_done && !out.reset;
    }
    stream.finish();
    h.poll();
    out.local = stream.local_reply_sent();
    if out.local || out.reset {
        out.upstream_headers = None;
    }
    out
}

// ---------------------------------------------------------------- properties

fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Lua's `%s` (C `isspace`: space, \t, \n, \v, \f, \r) trimmed at both ends, as Kong's
/// `tonumber` and the plugin read a Content-Length (the `body_counter` target's model).
fn lua_trim(bytes: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn strict() -> bool {
    std::env::var_os("WASMGATE_FUZZ_STRICT").is_some_and(|v| v == "1")
}

/// A request that hits a known finding: not checked further (unless strict).
const KNOWN: &str = "known";

/// Headers the host itself sets or drops: not compared byte for byte.
const HOST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

fn values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Json,
    Multipart,
    Form,
}

fn kind(content_type: &[u8]) -> Option<Kind> {
    let lower = content_type.to_ascii_lowercase();
    let has = |n: &[u8]| lower.windows(n.len()).any(|w| w == n);
    if has(b"application/json") {
        Some(Kind::Json)
    } else if has(b"multipart/form-data") {
        Some(Kind::Multipart)
    } else if has(b"application/x-www-form-urlencoded") {
        Some(Kind::Form)
    } else {
        None
    }
}

/// Whether a body of that kind holds a top-level `role`, as a lenient upstream reads it.
fn has_role(kind: Kind, content_type: &[u8], body: &[u8]) -> bool {
    match kind {
        Kind::Json => matches!(
            serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(body)),
            Ok(serde_json::Value::Object(map)) if map.contains_key("role")
        ),
        Kind::Form => body
            .split(|&b| b == b'&')
            .any(|arg| arg.split(|&b| b == b'=').next() == Some(b"role")),
        Kind::Multipart => {
            // Every part's headers, searched as loosely as a lenient parser would: a `name`
            // parameter `role` anywhere outside a quoted filename.
            let boundary = content_type
                .to_ascii_lowercase()
                .windows(9)
                .position(|w| w == b"boundary=")
                .map(|i| {
                    let raw = &content_type[i + 9..];
                    let raw = raw.strip_prefix(b"\"").unwrap_or(raw);
                    raw.iter()
                        .take_while(|&&b| b != b'"' && b != b';')
                        .copied()
                        .collect::<Vec<u8>>()
                });
            let Some(boundary) = boundary.filter(|b| !b.is_empty()) else {
                return false;
            };
            let mut dash = b"--".to_vec();
            dash.extend_from_slice(&boundary);
            body.windows(dash.len())
                .enumerate()
                .filter(|(_, w)| *w == dash.as_slice())
                .any(|(i, _)| {
                    let part = &body[i + dash.len()..];
                    let end = part
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .unwrap_or(part.len());
                    let head = String::from_utf8_lossy(&part[..end]).to_ascii_lowercase();
                    head.contains("name=\"role\"") && !head.contains("filename=\"role\"")
                        || head.contains("; name=role")
                })
        }
    }
}

/// One module with one config, and what its answers may be.
struct Plugin {
    module: &'static str,
    config: &'static str,
    env: &'static [(&'static str, &'static str)],
    hold_headers: bool,
    /// Known finding (docs/FUZZING.md): form fields moved to the query keep their raw bytes
    /// in `:path`; skipped unless `WASMGATE_FUZZ_STRICT=1`.
    moves_form: bool,
    /// Client headers the config may change.
    touched: &'static [&'static str],
    /// Every `.0` requests the clock moves `.1` seconds (rate-limiting's windows start again);
    /// `None`: it stands.
    clock_step: Option<(usize, u64)>,
    check: fn(&mut Model, &Request, &Outcome) -> Result<(), String>,
}

/// What a check remembers across requests (rate-limiting counts).
#[derive(Default)]
struct Model {
    /// The harness clock when the request is sent, in Unix seconds.
    now: u64,
    /// The fixed window the counts are of (Unix seconds / period).
    window: u64,
    counts: HashMap<(u8, Vec<u8>), u32>,
}

impl Model {
    /// The count of an identifier in the current fixed window of `period` seconds (Kong's
    /// windows start at multiples of the period); a new window starts every count at 0.
    fn count(&mut self, period: u64, key: (u8, Vec<u8>)) -> &mut u32 {
        let window = self.now / period;
        if window != self.window {
            self.counts.clear();
            self.window = window;
        }
        self.counts.entry(key).or_insert(0)
    }
}

fn expect_status(out: &Outcome, allowed: &[u16], why: &str) -> Result<(), String> {
    if allowed.contains(&out.status) {
        Ok(())
    } else {
        Err(format!(
            "status {} ({why}), expected one of {allowed:?}",
            out.status
        ))
    }
}

/// request-size-limiting: the plugin's decision (Content-Length at the headers, then the
/// streamed bytes), and never more than the limit upstream.
fn size_limiting(
    limit: u64,
    require_length: bool,
) -> impl Fn(&Request, &Outcome) -> Result<(), String> {
    move |req, out| {
        let expect = values(&req.headers, "expect")
            .first()
            .is_some_and(|e| lua_trim(e).eq_ignore_ascii_case(b"100-continue"));
        let too_large = if expect { 417 } else { 413 };
        let declared = match &req.length {
            Length::Absent => None,
            Length::Correct => Some(req.body.len() as u64),
            Length::Lying(n) => Some(*n),
            Length::Garbage(g) => {
                let t = lua_trim(g);
                (!t.is_empty() && t.iter().all(u8::is_ascii_digit)).then(|| {
                    t.iter().fold(0u64, |n, d| {
                        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                    })
                })
            }
        };
        let eos = req.ends_at_headers();
        let chunked = !req.http2 && !eos;
        let expected = match declared {
            Some(n) if n > limit => too_large,
            None if require_length && !chunked => 411,
            _ if req.body.len() as u64 > limit => too_large,
            _ => 200,
        };
        expect_status(out, &[expected], "size limit")?;
        if out.status == 200 && out.upstream_body != req.body {
            return Err("the body changed on its way".into());
        }
        Ok(())
    }
}

fn rate_limiting_header(model: &mut Model, req: &Request, out: &Outcome) -> Result<(), String> {
    // limit_by header x-client (the first value when repeated, as Kong's `get_header` and
    // Envoy's header map give it), else the client IP; second: 3.
    let clients = values(&req.headers, "x-client");
    let key = match clients.first() {
        None => (1u8, b"127.0.0.1".to_vec()),
        Some(first) => (3u8, first.to_vec()),
    };
    let count = model.count(1, key);
    if *count < 3 {
        expect_status(out, &[200], "under the limit")?;
        *count += 1;
    } else {
        expect_status(out, &[429], "over the limit")?;
    }
    if out.response_headers.get("x-ratelimit-limit-second") != Some(b"3") {
        return Err(format!("headers: {:?}", out.response_headers));
    }
    Ok(())
}

/// Kong's `kong.tools.uri.normalize(path, true)` (as `kit::path::normalize`, whose fuzz
/// target checks it against Kong's code): decode `%XX` but reserved characters (upper-cased),
/// remove dot segments, merge slashes.
fn normalize(path: &[u8]) -> Vec<u8> {
    if path.is_empty() || path == b"/" {
        return path.to_vec();
    }
    const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                let byte = h << 4 | l;
                if RESERVED.contains(&byte) {
                    decoded.extend(path[i..i + 3].to_ascii_uppercase());
                } else {
                    decoded.push(byte);
                }
                i += 3;
                continue;
            }
        }
        decoded.push(path[i]);
        i += 1;
    }
    let mut rest = &decoded[..];
    let mut out: Vec<&[u8]> = Vec::new();
    while !rest.is_empty() {
        if rest == b"/." || rest == b"/.." {
            if rest == b"/.." {
                out.pop();
            }
            rest = b"/";
        } else if rest == b"." || rest == b".." {
            rest = b"";
        } else if rest.starts_with(b"../") {
            rest = &rest[3..];
        } else if rest.starts_with(b"./") || rest.starts_with(b"/./") {
            rest = &rest[2..];
        } else if rest.starts_with(b"/../") {
            rest = &rest[3..];
            out.pop();
        } else if rest.starts_with(b"//") {
            rest = &rest[1..];
        } else {
            let end = rest[1..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(rest.len(), |i| i + 1);
            out.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    out.concat()
}

fn rate_limiting_path(model: &mut Model, req: &Request, out: &Outcome) -> Result<(), String> {
    // limit_by path /v1/items (Kong's normalised path), else the IP; minute: 5.
    let raw = match req.path.iter().skip(1).position(|&b| b == b'?') {
        Some(i) => &req.path[..=i],
        None => &req.path[..],
    };
    let key = if normalize(raw) == b"/v1/items" {
        (4u8, b"/v1/items".to_vec())
    } else {
        (1u8, b"127.0.0.1".to_vec())
    };
    let count = model.count(60, key);
    if *count < 5 {
        expect_status(out, &[200], "under the limit")?;
        *count += 1;
    } else {
        expect_status(out, &[429], "over the limit")?;
    }
    Ok(())
}

fn rate_limiting_hidden(_: &mut Model, _: &Request, out: &Outcome) -> Result<(), String> {
    expect_status(out, &[200], "hour: 100000")?;
    if out
        .response_headers
        .iter()
        .any(|(k, _)| k.to_ascii_lowercase().contains("ratelimit"))
    {
        return Err("hide_client_headers".into());
    }
    Ok(())
}

fn transformer_body(_: &mut Model, req: &Request, out: &Outcome) -> Result<(), String> {
    // remove.body [role] (fail closed), remove x-secret, replace x-api-key, add x-from.
    let x_in = {
        let underscore = values(&req.headers, "x_in");
        let list = if underscore.is_empty() {
            values(&req.headers, "x-in")
        } else {
            underscore
        };
        list.join(&b", "[..])
    };
    let has_body = !req.ends_at_headers();
    if !is_header_value(&x_in) {
        return expect_status(out, &[500], "x-in renders control bytes");
    }
    if has_body {
        expect_status(out, &[200, 400, 413, 415], "a body to sanitise")?;
    } else {
        expect_status(out, &[200], "no body")?;
    }
    let Some(up) = &out.upstream_headers else {
        return Ok(());
    };
    if !up.get_all("x-secret").is_empty() {
        return Err("x-secret reached the upstream".into());
    }
    if !values(&req.headers, "x-api-key").is_empty() && up.get_all("x-api-key") != [b"s3cret"] {
        return Err(format!("x-api-key: {:?}", up.get_all("x-api-key")));
    }
    let types = up.get_all("content-type");
    if let Some(t) = types.first() {
        if let Some(k) = kind(t) {
            if has_role(k, t, &out.upstream_body) {
                return Err(format!("role reached the upstream in a {k:?} body"));
            }
        }
    }
    Ok(())
}

fn transformer_query(_: &mut Model, req: &Request, out: &Outcome) -> Result<(), String> {
    // http_method GET (form fields move to the query), add a, remove token, held headers.
    expect_status(out, &[200], "nothing to refuse")?;
    let Some(up) = &out.upstream_headers else {
        return Ok(());
    };
    if up.get_all(":method") != [b"GET"] {
        return Err(format!(":method {:?}", up.get_all(":method")));
    }
    let path = up
        .get_all(":path")
        .first()
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let query = match path.iter().position(|&b| b == b'?') {
        Some(i) => &path[i + 1..],
        None => &b""[..],
    };
    if query
        .split(|&b| b == b'&')
        .any(|a| a.split(|&b| b == b'=').next() == Some(b"token"))
    {
        return Err(format!("token in {:?}", String::from_utf8_lossy(&path)));
    }
    if out.upstream_body != req.body {
        return Err("the body changed".into());
    }
    Ok(())
}

fn transformer_headers(_: &mut Model, req: &Request, out: &Outcome) -> Result<(), String> {
    // rename x-old → x-new, append x-list, add a body field (unparsable bodies pass).
    expect_status(out, &[200], "nothing to refuse")?;
    let Some(up) = &out.upstream_headers else {
        return Ok(());
    };
    let old = values(&req.headers, "x-old");
    if !old.is_empty() && up.get_all("x-new") != old {
        return Err(format!("x-new {:?} for x-old {old:?}", up.get_all("x-new")));
    }
    let mut list = values(&req.headers, "x-list");
    list.push(b"v");
    if up.get_all("x-list") != list {
        return Err(format!("x-list {:?}", up.get_all("x-list")));
    }
    Ok(())
}

fn plugins() -> Vec<Plugin> {
    fn rsl_1k(_: &mut Model, r: &Request, o: &Outcome) -> Result<(), String> {
        size_limiting(1024, false)(r, o)
    }
    fn rsl_0(_: &mut Model, r: &Request, o: &Outcome) -> Result<(), String> {
        size_limiting(0, true)(r, o)
    }
    fn rsl_128(_: &mut Model, r: &Request, o: &Outcome) -> Result<(), String> {
        size_limiting(128, false)(r, o)
    }
    vec![
        Plugin {
            module: "request-size-limiting",
            config: r#"{"allowed_payload_size": 1, "size_unit": "kilobytes"}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            clock_step: None,
            check: rsl_1k,
        },
        Plugin {
            module: "request-size-limiting",
            config: r#"{"allowed_payload_size": 0, "size_unit": "bytes", "require_content_length": true}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            clock_step: None,
            check: rsl_0,
        },
        Plugin {
            module: "request-size-limiting",
            config: r#"{"allowed_payload_size": 128, "size_unit": "bytes"}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            clock_step: None,
            check: rsl_128,
        },
        Plugin {
            module: "rate-limiting",
            config: r#"{"second": 3, "limit_by": "header", "header_name": "x-client"}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            // A second every 1,000 requests: at most a few hundred live identifiers, far from
            // the per-bucket eviction that would make the count inexact (store.rs).
            clock_step: Some((1_000, 1)),
            check: rate_limiting_header,
        },
        Plugin {
            module: "rate-limiting",
            config: r#"{"minute": 5, "limit_by": "path", "path": "/v1/items"}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            clock_step: Some((1_000, 60)),
            check: rate_limiting_path,
        },
        Plugin {
            module: "rate-limiting",
            config: r#"{"hour": 100000, "hide_client_headers": true, "window_type": "sliding"}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &[],
            // An hour every 40,000 requests: the sliding estimate (this hour's count plus a
            // share of the last one's) stays under 100,000, so every request passes.
            clock_step: Some((40_000, 3_600)),
            check: rate_limiting_hidden,
        },
        Plugin {
            module: "request-transformer",
            config: r#"{"remove": {"body": ["role"], "headers": ["x-secret"]},
                "replace": {"headers": ["x-api-key:{vault://env/KEY}"]},
                "add": {"headers": ["x-from:$(headers.x_in or 'none')"]}}"#,
            env: &[("KEY", "s3cret")],
            hold_headers: false,
            moves_form: false,
            touched: &["x-secret", "x-api-key", "x-from"],
            clock_step: None,
            check: transformer_body,
        },
        Plugin {
            module: "request-transformer",
            config: r#"{"http_method": "GET", "add": {"querystring": ["a:$(headers.x_q or 'none')"]},
                "remove": {"querystring": ["token"]}, "wasmgate": {"hold_headers": true}}"#,
            env: &[],
            hold_headers: true,
            moves_form: true,
            touched: &[],
            clock_step: None,
            check: transformer_query,
        },
        Plugin {
            module: "request-transformer",
            config: r#"{"rename": {"headers": ["x-old:x-new"]}, "append": {"headers": ["x-list:v"]},
                "add": {"body": ["p:v"]}, "wasmgate": {"unparsable_body": "pass"}}"#,
            env: &[],
            hold_headers: false,
            moves_form: false,
            touched: &["x-old", "x-new", "x-list"],
            clock_step: None,
            check: transformer_headers,
        },
    ]
}

/// The properties every module shares: no trap, not stuck, no made-up control bytes, and
/// untouched client headers byte for byte.
fn common(plugin: &Plugin, failures: u64, req: &Request, out: &Outcome) -> Result<(), String> {
    if failures > 0 {
        return Err(format!("the module failed {failures} time(s) (trap)"));
    }
    if out.stuck {
        // Known finding (docs/FUZZING.md, host/tests/fuzz_regressions.rs): the host keeps
        // request trailers from a filter that stopped in its body callback.
        if req.trailers.is_some() && !strict() {
            return Err(KNOWN.into());
        }
        return Err("the request ended and the stream stayed paused".into());
    }
    if out.reset {
        return Err("the stream was reset".into());
    }
    let Some(up) = &out.upstream_headers else {
        return Ok(());
    };
    let sent = req.head();
    let known_form_path = !strict() && plugin.moves_form;
    for (name, value) in up.iter() {
        if sent.iter().any(|(_, v)| v == value) {
            continue;
        }
        if name == ":path" && (known_form_path || !is_header_value(&req.path)) {
            continue;
        }
        if !is_header_value(value) {
            return Err(format!("{name} reached the upstream as {value:?}"));
        }
    }
    for (name, value) in &req.headers {
        if HOST_HEADERS.contains(&name.as_str()) || plugin.touched.contains(&name.as_str()) {
            continue;
        }
        if !up.get_all(name).contains(&value.as_slice()) {
            return Err(format!(
                "{name}: {value:?} did not reach the upstream as sent: {:?}",
                up.get_all(name)
            ));
        }
    }
    Ok(())
}

#[test]
fn hostile_requests_through_every_module() {
    let n: usize = std::env::var("WASMGATE_FUZZ_MODULES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("WASMGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    eprintln!("WASMGATE_FUZZ_SEED={seed} WASMGATE_FUZZ_MODULES_N={n}");
    let mut failures = Vec::new();
    // Requests driven and time taken, per module (summed over its configs).
    let mut totals: Vec<(&str, usize, Duration)> = Vec::new();
    for (index, plugin) in plugins().iter().enumerate() {
        let mut h = Harness::new().expect("harness");
        h.set_source(SocketAddr::from(([127, 0, 0, 1], 40000)));
        h.set_route("route", "upstream");
        let mut config = PluginConfig::new(plugin.module, plugin.config)
            .vm_id(&format!("fuzz-{index}"))
            .allow_on_headers_stop_iteration(plugin.hold_headers);
        for (k, v) in plugin.env {
            config = config.env(k, v);
        }
        let path = wasmgate_tests::paths::plugin_module(plugin.module);
        let worker = h.load_file(&path, config).expect("the config loads");
        let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut model = Model::default();
        let mut known = 0;
        let mut run = 0;
        let started = Instant::now();
        for i in 0..n {
            run = i + 1;
            if let Some((every, secs)) = plugin.clock_step {
                if i > 0 && i % every == 0 {
                    h.advance(Duration::from_secs(secs));
                }
            }
            model.now = h
                .clock()
                .now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let req = request(&mut rng);
            let out = send(&mut h, &req);
            let result = common(plugin, worker.plugin().failures(), &req, &out)
                .and_then(|()| (plugin.check)(&mut model, &req, &out));
            if let Err(problem) = result {
                if problem == KNOWN {
                    known += 1;
                    continue;
                }
                failures.push(format!(
                    "{} {} — request {i}: {problem}\n  {req:?}\n  upstream: {:?}\n  log: {}",
                    plugin.module,
                    plugin.config,
                    out.upstream_headers,
                    h.log_text()
                ));
                break;
            }
        }
        let took = started.elapsed();
        eprintln!(
            "{} {index}: {run} request(s) in {:.1} s ({:.0}/s){}",
            plugin.module,
            took.as_secs_f64(),
            run as f64 / took.as_secs_f64().max(1e-9),
            if known > 0 {
                format!(", {known} hit known findings")
            } else {
                String::new()
            }
        );
        match totals.iter_mut().find(|(m, _, _)| *m == plugin.module) {
            Some((_, r, t)) => {
                *r += run;
                *t += took;
            }
            None => totals.push((plugin.module, run, took)),
        }
    }
    for (module, run, took) in &totals {
        eprintln!(
            "{module}: {run} request(s) in {:.1} s ({:.0}/s)",
            took.as_secs_f64(),
            *run as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} config(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
