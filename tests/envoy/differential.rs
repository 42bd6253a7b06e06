//! A randomised differential test (issue #12, item 8): generated plugin configs and requests,
//! sent to a real Envoy 1.40 and to `gateway` side by side, with the same `.wasm` modules and
//! the same Kong declarative config (Envoy's bootstrap is `model::envoy`'s translation of it),
//! both in front of one echo upstream on 127.0.0.1.
//!
//! Each case is a service with one route (`/p<n>` prefix, or `~/r<n>/(?<id>...)` regex;
//! strip_path, preserve_host and the service path drawn too) carrying one to three plugins
//! with generated configs: request-size-limiting (sizes, units, require_content_length),
//! rate-limiting (`year` and `day` windows only, never a window a run can straddle: `day`
//! is left out within 10 minutes of UTC midnight, and a run that would cross New Year waits
//! for it; limit_by ip/header/path/service/consumer/
//! credential, hide_client_headers, error_code, error_message) and request-transformer
//! (headers, querystring and JSON/form body remove/rename/replace/add/append with literal
//! values and templates, replace.uri, http_method, hold_headers, body_buffer_limit,
//! unparsable_body). Thirty cases share one Envoy and one gateway start; each case gets twelve
//! requests, in order on both data planes at once (so rate-limit counts line up), four cases
//! at a time. Requests: HTTP/1.1 written byte for byte from 127.0.0.1-3, or h2c; methods
//! including OPTIONS and PURGE; paths with `//`, `%XX` (valid or not) and dot segments;
//! query strings with odd escapes; header values with bytes 0x80-0xFF, inner spaces and
//! tabs; Accept variants; bodies with Content-Length, chunked, HTTP/2 DATA without
//! content-length, `content-length: 0`, a Content-Length over the size limit with no body
//! sent, JSON (valid, NaN, trailing comma, non-object), forms, filler; Content-Encoding and
//! `Expect: 100-continue` now and then.
//!
//! `WASMGATE_DIFF_SEED` (decimal or 0x hex) and `WASMGATE_DIFF_CASES` (default 60, about a
//! minute here) override the seed and the number of cases; the seed is printed first.
//! `WASMGATE_DIFF_PRINT` sets how many differences are printed in full (default 25), and
//! `WASMGATE_DIFF_UNMASK=F3,F5` (or `all`) turns off the exclusions and exceptions of those
//! findings, to see whether they still reproduce (and whether an exclusion can go).
//!
//! Compared, per request: the status; the rate-limit headers (`x-ratelimit-*`,
//! `ratelimit-*`, `retry-after`); for local replies their `content-type` and body bytes; for
//! requests that reached the upstream the method, path, query, body (length and SHA-256) and
//! every request header by name, each name's values in order, as exact bytes; for HTTP/1.1,
//! that the connection closes after the response (the request says `connection: close`).
//! gateway's count of failed module callbacks must stay at zero (a trap answers 503 in both
//! planes, which would compare equal).
//!
//! Normalised, because the two proxies differ there whatever the plugins do:
//! - `x-forwarded-for/-proto/-host/-port/-path/-prefix`, `x-real-ip` upstream: each proxy's
//!   own forwarding headers (Kong's set in gateway, Envoy's XFF handling).
//! - `x-envoy-*` upstream: Envoy's own (`x-envoy-external-address`, `-original-path`,
//!   `-original-host`, `-expected-rq-timeout-ms`).
//! - `x-request-id` upstream and on responses: each proxy generates its own; in a local
//!   reply's body (Kong's `request_id`) it is compared as `$(request_id)`.
//! - `via` upstream: gateway's proxy marker (not sent by Envoy).
//! - Response headers other than the plugins' (`date`, `server`, `content-length`,
//!   `connection`, `via`, `x-envoy-upstream-service-time`): the proxies' own; only the
//!   plugin headers and a local reply's `content-type` are compared.
//! - The echo's own report fields `version` and `headers` (lossy text; `raw_headers` is
//!   compared instead).
//! - The order of different header names: each proxy serialises its header map its own way;
//!   the order of one name's values is compared.
//! - `ratelimit-reset` and `retry-after` within 2 s: seconds to the end of the window, read
//!   by each plane at its own instant (a second boundary can fall between the two sends).
//! - Upstream `content-length: 0` from Envoy on a body-less request vs none from gateway:
//!   Envoy's HTTP/1.1 codec frames body-less requests whose method may carry a body
//!   (OPTIONS, PURGE, PATCH) that way, hyper sends no framing header; both mean no body.
//!
//! Known differences (each in `/work/notes/differential-findings.md`), excluded from
//! generation or tested as explicit exceptions, and switched off by `WASMGATE_DIFF_UNMASK`:
//! - F1 and F2 were fixed while this test was written (Envoy now normalises paths as Kong
//!   does; `uri_captures` match the client's path after a route rewrite): paths with `//`,
//!   `%XX` and dot segments and captures on stripping routes are compared exactly.
//! - F3 was fixed (a stripping regex route whose match is the whole path sent `/base/` in
//!   Envoy): such requests are generated.
//! - F4 was fixed (gateway lower-cased a preserved Host on routes with plugins): mixed-case
//!   hosts go to every route.
//! - F5 was fixed (gateway dropped a GET's body that had no Content-Length): such bodies
//!   are generated.
//! - F6 was fixed (gateway skipped later filters' response phase on a local reply sent from
//!   the body phase): over-limit bodies are streamed on routes with rate-limiting too.
//! - F7 (exception): after a local reply at the headers gateway lingers on the declared body,
//!   Envoy closes; whether the connection stays open is not compared for a declared body
//!   that is never sent.
//! - F8 (exception): Envoy joins values of an inline header (Accept, Content-Type,
//!   User-Agent) with `,`; gateway's values joined that way must equal Envoy's one value.
//! - F9 was fixed (Envoy's transformer rendered `$(headers.host)` from the rewritten Host):
//!   the template is generated on every route.
//! - F10 was fixed (a client's `x-envoy-original-path` chose `uri_captures` in gateway): the
//!   header is sent.
//!
//! Not generated, because the codecs (not the plugins) decide them or they cannot be
//! compared: CR, LF, NUL and other controls in header values, leading or trailing
//! whitespace, bytes outside ASCII in the request line, Content-Lengths that lie or are not
//! numbers, repeated client headers other than `x-` names (Envoy joins inline ones as it
//! parses), HEAD (no body to read the echo from), CONNECT/upgrades, trailers (Envoy has no
//! body buffer for HTTP/2 trailers without DATA: a documented difference), multipart bodies,
//! header names the proxies own (`x-forwarded-*`, `x-envoy-*`, `x-request-id`), templates
//! reading them, and dot segments that climb above the route's prefix (routing, not plugins).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway::{Gateway, GatewayOptions};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use model::envoy::bootstrap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy};

/// Plugin configs (each on a route of its own) when `WASMGATE_DIFF_CASES` does not say.
const DEFAULT_CASES: usize = 60;
/// Requests sent to each config, on each data plane.
const REQUESTS_PER_CASE: usize = 12;
/// Configs per Envoy (and gateway) start: starting Envoy is the slow part.
const CASES_PER_START: usize = 30;
/// Cases driven at once; each case's requests go one after the other (rate-limit order).
const PARALLEL_CASES: usize = 4;
/// How long one exchange may take before it counts as a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Printed in full; the rest are counted.
const PRINTED_DIFFERENCES: usize = 25;

// ---------------------------------------------------------------------------------------------
// A small deterministic PRNG (SplitMix64): the same seed gives the same configs and requests.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Up to `max` distinct items, in a random order.
    fn some<T: Clone>(&mut self, items: &[T], max: usize) -> Vec<T> {
        let mut pool: Vec<T> = items.to_vec();
        let n = self.below(max as u64 + 1) as usize;
        let mut out = Vec::new();
        for _ in 0..n.min(pool.len()) {
            let i = self.below(pool.len() as u64) as usize;
            out.push(pool.remove(i));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Known differences.

/// Whether the exclusion or exception for a finding of `/work/notes/differential-findings.md`
/// applies: `WASMGATE_DIFF_UNMASK=F3,F5` (or `all`) turns them off, to check whether a finding
/// still reproduces (and whether its exclusion can go).
fn masked(finding: &str) -> bool {
    static UNMASKED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let unmasked = UNMASKED.get_or_init(|| {
        std::env::var("WASMGATE_DIFF_UNMASK")
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().to_ascii_uppercase())
            .filter(|f| !f.is_empty())
            .collect()
    });
    !unmasked.iter().any(|f| f == finding || f == "ALL")
}

// ---------------------------------------------------------------------------------------------
// Configs.

/// Header names shared by requests and configs, so that operations meet headers that exist.
const HEADER_NAMES: &[&str] = &["x-a", "x-b", "x-c", "x-key"];
/// Query argument names shared by requests and configs.
const QUERY_NAMES: &[&str] = &["q", "page", "a", "x"];
/// Body field names shared by requests and configs.
const BODY_KEYS: &[&str] = &["a", "b", "role", "name"];

/// One plugin config (or a few, stacked) on a route of its own, with its own service.
#[derive(Clone, Debug)]
struct Case {
    id: usize,
    /// A Kong regex path with a named capture instead of a prefix.
    regex: bool,
    strip_path: bool,
    preserve_host: bool,
    service_path: Option<&'static str>,
    plugins: Vec<(&'static str, Value)>,
    /// Seeds this case's requests.
    requests_seed: u64,
}

impl Case {
    /// The route's path: `/p<id>` (prefix) or `/r<id>/<id-capture>` (regex).
    fn prefix(&self) -> String {
        if self.regex {
            format!("/r{}", self.id)
        } else {
            format!("/p{}", self.id)
        }
    }

    fn service(&self, echo: SocketAddr) -> Value {
        let path = if self.regex {
            format!("~/r{}/(?<id>[a-z0-9]+)", self.id)
        } else {
            self.prefix()
        };
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|(name, config)| json!({"name": name, "config": config}))
            .collect();
        json!({
            "name": format!("s{}", self.id),
            "url": format!("http://{echo}{}", self.service_path.unwrap_or("")),
            "routes": [{
                "name": format!("r{}", self.id),
                "paths": [path],
                "strip_path": self.strip_path,
                "preserve_host": self.preserve_host,
                "plugins": plugins,
            }],
        })
    }

    fn plugin(&self, name: &str) -> Option<&Value> {
        self.plugins
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }

    /// The size limit in bytes, when request-size-limiting is on.
    fn size_limit(&self) -> Option<u64> {
        let config = self.plugin("request-size-limiting")?;
        let size = config["allowed_payload_size"].as_u64().unwrap_or(128);
        let unit = match config["size_unit"].as_str() {
            Some("bytes") => 1,
            Some("kilobytes") => 1 << 10,
            _ => 1 << 20,
        };
        Some(size * unit)
    }
}

fn size_limiting(rng: &mut Rng) -> Value {
    let mut config = serde_json::Map::new();
    let unit = *rng.pick(&["bytes", "kilobytes", "megabytes", "default"]);
    let size = match unit {
        "bytes" => rng.range(0, 3000),
        "kilobytes" => rng.range(0, 4),
        _ => rng.range(0, 1),
    };
    config.insert("allowed_payload_size".into(), json!(size));
    if unit != "default" {
        config.insert("size_unit".into(), json!(unit));
    }
    if rng.chance(50) {
        config.insert("require_content_length".into(), json!(rng.chance(60)));
    }
    Value::Object(config)
}

/// Messages with what JSON, HTML and XML must escape, and text outside ASCII.
const ERROR_MESSAGES: &[&str] = &[
    "API rate limit exceeded",
    "Slow down",
    "quote \" and <tag> & 'apos'",
    "caf\u{e9} \u{2603}",
    "back\\slash",
];

fn rate_limiting(rng: &mut Rng, case_prefix: &str, day_windows: bool) -> Value {
    let mut config = serde_json::Map::new();
    // Only windows no run can straddle: the year, and the day unless the UTC day ends soon.
    let year = rng.range(1, 6);
    config.insert("year".into(), json!(year));
    if day_windows && rng.chance(50) {
        config.insert("day".into(), json!(rng.range(1, year)));
    }
    let limit_by = *rng.pick(&[
        "ip",
        "header",
        "path",
        "service",
        "consumer",
        "credential",
        "default",
    ]);
    if limit_by != "default" {
        config.insert("limit_by".into(), json!(limit_by));
    }
    match limit_by {
        "header" => {
            config.insert("header_name".into(), json!(rng.pick(&["x-key", "x-a"])));
        }
        "path" => {
            let path = if rng.chance(80) {
                format!("{case_prefix}/items")
            } else {
                "/elsewhere".to_owned()
            };
            config.insert("path".into(), json!(path));
        }
        _ => {}
    }
    if rng.chance(30) {
        config.insert("hide_client_headers".into(), json!(rng.chance(50)));
    }
    if rng.chance(40) {
        let code = *rng.pick(&[429.0, 403.0, 503.0, 400.0, 599.0, 200.0, 1000.0, 429.7]);
        config.insert("error_code".into(), json!(code));
    }
    if rng.chance(40) {
        config.insert("error_message".into(), json!(rng.pick(ERROR_MESSAGES)));
    }
    Value::Object(config)
}

/// Values for header, query and body entries: literals and Kong templates.
fn entry_value(rng: &mut Rng, regex: bool, empty_ok: bool) -> String {
    let mut values = vec![
        "1",
        "v v",
        "caf\u{e9}",
        "12:00",
        "x,y",
        "/abs",
        "$(headers.x_a)",
        "$(headers.x_b)",
        "$(headers[\"x-c\"] or \"none\")",
        "$(query_params.q)",
        "$(query_params[\"page\"] or \"p0\")",
        "pre-$(headers.x_key)-post",
        "$(headers.x_missing or query_params.a or \"dflt\")",
        "$(headers.host)",
    ];
    if regex {
        values.extend(["$(uri_captures.id)", "$(uri_captures[1] or \"none\")"]);
    }
    if empty_ok && rng.chance(10) {
        return String::new();
    }
    (*rng.pick(&values)).to_owned()
}

fn entries(rng: &mut Rng, names: &[&str], max: usize, regex: bool, empty_ok: bool) -> Vec<Value> {
    rng.some(names, max)
        .into_iter()
        .map(|name| json!(format!("{name}:{}", entry_value(rng, regex, empty_ok))))
        .collect()
}

fn renames(rng: &mut Rng, names: &[&str], targets: &[&str], max: usize) -> Vec<Value> {
    rng.some(names, max)
        .into_iter()
        .map(|old| json!(format!("{old}:{}", rng.pick(targets))))
        .collect()
}

fn request_transformer(rng: &mut Rng, regex: bool) -> Value {
    let mut config = serde_json::Map::new();
    let header_names: Vec<&str> = HEADER_NAMES
        .iter()
        .copied()
        .chain(["x-new", "content-type", "accept"])
        .collect();
    let ops = |op: &str, rng: &mut Rng| -> Value {
        let mut record = serde_json::Map::new();
        if rng.chance(60) {
            let list = match op {
                "remove" => json!(rng.some(&header_names, 2)),
                "rename" => json!(renames(
                    rng,
                    &header_names,
                    &["x-renamed", "x-b", "x-new"],
                    2
                )),
                "replace" => {
                    let mut list = entries(rng, &header_names, 2, regex, true);
                    if rng.chance(15) {
                        list.push(json!("host:internal.test"));
                    }
                    json!(list)
                }
                _ => json!(entries(rng, &header_names, 2, regex, true)),
            };
            record.insert("headers".into(), list);
        }
        if rng.chance(50) {
            let list = match op {
                "remove" => json!(rng.some(QUERY_NAMES, 2)),
                "rename" => json!(renames(
                    rng,
                    QUERY_NAMES,
                    &["renamed", "page", "$(headers.x_a)"],
                    2
                )),
                _ => json!(entries(rng, QUERY_NAMES, 2, regex, false)),
            };
            record.insert("querystring".into(), list);
        }
        if rng.chance(40) {
            let list = match op {
                "remove" => json!(rng.some(BODY_KEYS, 2)),
                "rename" => json!(renames(rng, BODY_KEYS, &["renamed", "name"], 2)),
                _ => json!(entries(rng, BODY_KEYS, 2, regex, false)),
            };
            record.insert("body".into(), list);
        }
        if op == "replace" && rng.chance(20) {
            let mut uris = vec![
                "/new",
                "/new/$(query_params.q)",
                "/$(headers.x_a)",
                "$(headers.x_a)",
                "/u?x=1",
                "/sp ace/caf\u{e9}",
            ];
            if regex {
                uris.extend([
                    "/cap/$(uri_captures.id)",
                    "/cap/$(uri_captures[1] or \"none\")",
                ]);
            }
            record.insert("uri".into(), json!(rng.pick(&uris)));
        }
        Value::Object(record)
    };
    for op in ["remove", "rename", "replace", "add", "append"] {
        if rng.chance(55) {
            let record = ops(op, rng);
            if record.as_object().is_some_and(|r| !r.is_empty()) {
                config.insert(op.into(), record);
            }
        }
    }
    if rng.chance(15) {
        config.insert(
            "http_method".into(),
            json!(rng.pick(&["POST", "GET", "PUT", "PATCH", "DELETE"])),
        );
    }
    let mut wasmgate = serde_json::Map::new();
    if rng.chance(35) {
        wasmgate.insert("hold_headers".into(), json!(true));
    }
    if rng.chance(25) {
        wasmgate.insert("body_buffer_limit".into(), json!(rng.range(16, 4000)));
    }
    if rng.chance(20) {
        wasmgate.insert(
            "unparsable_body".into(),
            json!(rng.pick(&["pass", "refuse"])),
        );
    }
    if !wasmgate.is_empty() {
        config.insert("wasmgate".into(), Value::Object(wasmgate));
    }
    Value::Object(config)
}

fn generate_case(rng: &mut Rng, id: usize, day_windows: bool) -> Case {
    let mut case = Case {
        id,
        regex: rng.chance(20),
        strip_path: rng.chance(50),
        preserve_host: rng.chance(30),
        service_path: *rng.pick(&[None, None, Some("/base"), Some("/base/")]),
        plugins: Vec::new(),
        requests_seed: rng.next(),
    };
    let prefix = case.prefix();
    loop {
        if rng.chance(45) {
            case.plugins
                .push(("request-size-limiting", size_limiting(rng)));
        }
        if rng.chance(45) {
            case.plugins
                .push(("rate-limiting", rate_limiting(rng, &prefix, day_windows)));
        }
        if rng.chance(65) {
            case.plugins
                .push(("request-transformer", request_transformer(rng, case.regex)));
        }
        if !case.plugins.is_empty() {
            break;
        }
    }
    // Regex routes exist for their captures: most of their transformers read one.
    if case.regex && rng.chance(60) {
        for (name, config) in &mut case.plugins {
            if *name == "request-transformer" {
                let add = config
                    .as_object_mut()
                    .unwrap()
                    .entry("add")
                    .or_insert_with(|| json!({}));
                let headers = add
                    .as_object_mut()
                    .unwrap()
                    .entry("headers")
                    .or_insert_with(|| json!([]));
                headers
                    .as_array_mut()
                    .unwrap()
                    .push(json!("x-capture:$(uri_captures.id)"));
            }
        }
    }
    case
}

// ---------------------------------------------------------------------------------------------
// Requests.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

#[derive(Clone, Debug)]
enum Body {
    /// No body at all (HTTP/1.1: no Content-Length; HTTP/2: END_STREAM on the headers).
    None,
    /// With its Content-Length (`content-length: 0` for an empty one).
    Sized(Vec<u8>),
    /// Without a Content-Length: chunked on HTTP/1.1, DATA frames on HTTP/2.
    Streamed(Vec<Vec<u8>>),
    /// HTTP/1.1 only: a Content-Length over the route's size limit, and no body sent (the
    /// limit must answer at the headers).
    DeclaredOnly(u64),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Sized(b) => b.clone(),
            Body::Streamed(chunks) => chunks.concat(),
            Body::None | Body::DeclaredOnly(_) => Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Req {
    proto: Proto,
    /// The client's address: 127.0.0.<from>.
    from: u8,
    method: String,
    /// Path and query as sent (ASCII).
    target: String,
    host: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

/// Bytes shown readably: printable ASCII as is, the rest `\xNN`.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

impl std::fmt::Display for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  {:?} from 127.0.0.{}: {} {}  (host {})",
            self.proto, self.from, self.method, self.target, self.host
        )?;
        for (name, value) in &self.headers {
            writeln!(f, "    {name}: {}", show(value))?;
        }
        let body = self.body.bytes();
        let kind = match &self.body {
            Body::None => "no body".to_owned(),
            Body::Sized(b) => format!("content-length body of {}", b.len()),
            Body::Streamed(c) => format!("streamed body of {} in {} chunks", body.len(), c.len()),
            Body::DeclaredOnly(n) => format!("content-length {n}, no body sent"),
        };
        write!(f, "    [{kind}] {}", show(&body[..body.len().min(300)]))
    }
}

/// A header value: printable ASCII, obs-text (0x80-0xFF) and inner spaces or tabs, never
/// CR, LF, NUL or other controls (the codecs refuse those) and never leading or trailing
/// whitespace (the codecs trim it).
fn header_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => b"/abs/path".to_vec(),
        1 => "caf\u{e9}".as_bytes().to_vec(),
        2 => b"a, b".to_vec(),
        3 => b"\xff\xfe".to_vec(),
        4 => b"admin".to_vec(),
        _ => {
            let len = rng.range(1, 12) as usize;
            let mut value = Vec::with_capacity(len);
            for i in 0..len {
                let b = match rng.below(10) {
                    0..=5 => rng.range(0x21, 0x7e) as u8,
                    6..=8 => rng.range(0x80, 0xff) as u8,
                    _ if i > 0 && i + 1 < len => *rng.pick(b" \t"),
                    _ => b'z',
                };
                value.push(b);
            }
            value
        }
    }
}

/// A path segment: plain, percent-encoded, or a dot segment.
fn path_suffix(rng: &mut Rng) -> String {
    let mut out = String::new();
    let mut depth = 0;
    let mut previous_empty = false;
    for _ in 0..rng.below(4) {
        let segment = match rng.below(12) {
            0 if depth > 0 && !previous_empty => {
                depth -= 1;
                ".."
            }
            1 if depth > 0 && !previous_empty => {
                depth -= 1;
                "%2e%2e"
            }
            2 => ".",
            3 => "%2E",
            4 => "",
            5 => "%41b",
            6 => "a%2Fb",
            7 => "%zz",
            8 => "x%20y",
            9 => "%C3%A9",
            _ => *rng.pick(&["x", "items", "v1", "a-b_c~d"]),
        };
        if !matches!(segment, ".." | "%2e%2e" | "." | "%2E" | "") {
            depth += 1;
        }
        previous_empty = segment.is_empty();
        out.push('/');
        out.push_str(segment);
    }
    out
}

fn query(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=3 => String::new(),
        4 => "?".to_owned(),
        _ => {
            let mut args = Vec::new();
            for _ in 0..rng.range(1, 4) {
                let name = *rng.pick(&["q", "page", "a", "x", "other", "a%20b"]);
                let value = *rng.pick(&["1", "a+b", "%zz", "%C3%A9", "", "x%26y", "/s", "%FF"]);
                if rng.chance(10) {
                    args.push(name.to_owned());
                } else {
                    args.push(format!("{name}={value}"));
                }
            }
            format!("?{}", args.join("&"))
        }
    }
}

fn json_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(12) {
        0 => b"[1,2]".to_vec(),
        1 => br#"{"a":NaN}"#.to_vec(),
        2 => br#"{"a":1,}"#.to_vec(),
        3 => br#""text""#.to_vec(),
        _ => {
            let mut fields = Vec::new();
            for _ in 0..rng.below(4) {
                let key = *rng.pick(&["a", "b", "role", "name", "other"]);
                let value = *rng.pick(&[
                    r#""x""#,
                    "1",
                    "1.50",
                    "false",
                    "true",
                    "null",
                    "[1]",
                    r#"{"k":1}"#,
                    r#""caf\u00e9""#,
                    "\"caf\u{e9}\"",
                    r#""q\"uote""#,
                    "1e400",
                ]);
                fields.push(format!("\"{key}\":{value}"));
            }
            format!("{{{}}}", fields.join(",")).into_bytes()
        }
    }
}

fn form_body(rng: &mut Rng) -> Vec<u8> {
    let mut args = Vec::new();
    for _ in 0..rng.below(4) {
        let key = *rng.pick(&["a", "b", "role", "name", "other"]);
        let value = *rng.pick(&["1", "a+b", "%zz", "%C3%A9", "", "x%26y"]);
        args.push(format!("{key}={value}"));
    }
    args.join("&").into_bytes()
}

fn filler(rng: &mut Rng, max: u64) -> Vec<u8> {
    let len = rng.range(1, max) as usize;
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn split(rng: &mut Rng, body: Vec<u8>) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut rest = body.as_slice();
    while !rest.is_empty() {
        let n = if chunks.len() >= 3 {
            rest.len()
        } else {
            rng.range(1, rest.len() as u64) as usize
        };
        chunks.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    chunks
}

fn generate_request(rng: &mut Rng, case: &Case) -> Req {
    let proto = if rng.chance(30) {
        Proto::Http2
    } else {
        Proto::Http1
    };
    let mut target = case.prefix();
    if case.regex {
        target.push('/');
        target.push_str(rng.pick::<&str>(&["abc", "42", "x9", "items"]));
    }
    let limit_path = case
        .plugin("rate-limiting")
        .and_then(|c| c["path"].as_str())
        .is_some();
    if limit_path && !case.regex && rng.chance(60) {
        target.push_str(rng.pick::<&str>(&[
            "/items",
            "//items",
            "/%69tems",
            "/./items",
            "/x/../items",
            "/items/",
        ]));
    } else if rng.chance(70) {
        target.push_str(&path_suffix(rng));
    }
    target.push_str(&query(rng));

    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..rng.below(5) {
        let name = if rng.chance(75) {
            (*rng.pick(HEADER_NAMES)).to_owned()
        } else {
            format!("x-r{}", rng.below(1000))
        };
        // Repeated names only for names no data plane joins (Envoy merges repeated inline
        // headers such as Authorization or User-Agent into one).
        if headers.iter().any(|(n, _)| *n == name) && rng.chance(50) {
            continue;
        }
        headers.push((name, header_value(rng)));
    }
    if rng.chance(40) {
        let accept: &[u8] = rng.pick::<&[u8]>(&[
            b"application/json".as_slice(),
            b"text/plain",
            b"text/html",
            b"application/xml",
            b"*/*",
            b"text/\xff",
        ]);
        headers.push(("accept".into(), accept.to_vec()));
    }
    if rng.chance(20) {
        headers.push(("user-agent".into(), header_value(rng)));
    }
    // Finding F10 (fixed): a client's `x-envoy-original-path` must not choose the
    // transformer's `uri_captures` (Envoy drops it; gateway strips it).
    if case.regex && rng.chance(15) {
        let spoofed = format!("/r{}/spoofed", case.id);
        headers.push(("x-envoy-original-path".into(), spoofed.into_bytes()));
    }

    let method: String;
    let body: Body;
    let size_limit = case.size_limit();
    match rng.below(10) {
        0..=2 => {
            method = (*rng.pick(&["GET", "GET", "DELETE", "OPTIONS", "PURGE"])).to_owned();
            body = if rng.chance(15) {
                Body::Sized(Vec::new())
            } else {
                Body::None
            };
        }
        3 if proto == Proto::Http1 && size_limit.is_some_and(|l| l < 1 << 30) => {
            method = "POST".into();
            body = Body::DeclaredOnly(size_limit.unwrap_or(0) + rng.range(1, 1 << 20));
        }
        _ => {
            method = (*rng.pick(&["POST", "POST", "PUT", "PATCH", "GET", "DELETE"])).to_owned();
            let (content_type, bytes): (Option<&[u8]>, Vec<u8>) = match rng.below(8) {
                0..=2 => (
                    Some(*rng.pick(&[
                        b"application/json".as_slice(),
                        b"application/json; charset=utf-8",
                        b"application/vnd.api+json",
                    ])),
                    json_body(rng),
                ),
                3..=4 => (Some(b"application/x-www-form-urlencoded"), form_body(rng)),
                5 => (Some(b"text/plain"), filler(rng, 5000)),
                6 => (None, filler(rng, 3000)),
                _ => (Some(b"application/octet-stream"), filler(rng, 1500)),
            };
            if let Some(content_type) = content_type {
                headers.push(("content-type".into(), content_type.to_vec()));
            }
            if rng.chance(4) {
                headers.push(("content-encoding".into(), b"gzip".to_vec()));
            }
            if proto == Proto::Http1 && rng.chance(6) {
                headers.push(("expect".into(), b"100-continue".to_vec()));
            }
            body = if bytes.is_empty() || rng.chance(55) {
                Body::Sized(bytes)
            } else {
                Body::Streamed(split(rng, bytes))
            };
        }
    }
    // Shuffle the headers a little: order is not meaning, but each plane must keep each
    // name's own order.
    if headers.len() > 1 && rng.chance(50) {
        let i = rng.below(headers.len() as u64) as usize;
        let moved = headers.remove(i);
        headers.push(moved);
    }
    let hosts: &[&str] = &[
        "diff.test",
        "diff.test",
        "Diff.Test",
        "diff.test:8080",
        "other.example",
    ];
    let host = (*rng.pick(hosts)).to_owned();
    Req {
        proto,
        from: rng.range(1, 3) as u8,
        method,
        target,
        host,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Sending.

/// What came back: status, headers (lower-case names, value bytes), body.
#[derive(Clone, Debug, Default)]
struct Seen {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The exchange failed (no response head, or a hang).
    error: Option<String>,
    /// HTTP/1.1: the whole response came, but the connection stayed open (the request said
    /// `connection: close`).
    kept_open: bool,
}

impl Seen {
    fn failed(error: String) -> Seen {
        Seen {
            error: Some(error),
            ..Seen::default()
        }
    }

    /// The body with this response's `x-request-id` value written as `$(request_id)`.
    fn body_without_request_id(&self) -> Vec<u8> {
        let Some(id) = self.header("x-request-id").filter(|id| !id.is_empty()) else {
            return self.body.clone();
        };
        let mut out = Vec::with_capacity(self.body.len());
        let mut rest = self.body.as_slice();
        while let Some(at) = rest.windows(id.len()).position(|w| w == id) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"$(request_id)");
            rest = &rest[at + id.len()..];
        }
        out.extend_from_slice(rest);
        out
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn echo(&self) -> Option<EchoReport> {
        self.header(wasmgate_tests::echo::ECHO_HEADER)?;
        serde_json::from_slice(&self.body).ok()
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(error) = &self.error {
            return write!(f, "    error: {error}");
        }
        if self.kept_open {
            writeln!(f, "    (the connection stayed open after the response)")?;
        }
        writeln!(f, "    status {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "    {name}: {}", show(value))?;
        }
        match self.echo() {
            Some(report) => {
                writeln!(
                    f,
                    "    upstream saw: {} {} query {:?} ({} body bytes)",
                    report.method, report.path, report.query, report.body_len
                )?;
                for (name, value) in &report.raw_headers {
                    writeln!(f, "      {name}: {}", show(value))?;
                }
                let body = report.body.as_deref().unwrap_or("").as_bytes();
                write!(f, "      [body] {}", show(&body[..body.len().min(300)]))
            }
            None => write!(f, "    body: {}", show(&self.body)),
        }
    }
}

async fn connect(to: SocketAddr, from: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, from], 0)))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn http1_bytes(req: &Req) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\n",
        req.method, req.target, req.host
    )
    .into_bytes();
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n");
    match &req.body {
        Body::None => out.extend_from_slice(b"\r\n"),
        Body::Sized(bytes) => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
        }
        Body::Streamed(chunks) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in chunks {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Body::DeclaredOnly(length) => {
            out.extend_from_slice(format!("content-length: {length}\r\n\r\n").as_bytes());
        }
    }
    out
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&bytes[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        let start = eol + 2;
        if size == 0 || start + size > bytes.len() {
            break;
        }
        out.extend_from_slice(&bytes[start..start + size]);
        bytes = &bytes[(start + size + 2).min(bytes.len())..];
    }
    out
}

/// Parses an HTTP/1.1 response (skipping 1xx heads) from everything the connection gave.
fn parse_http1(mut bytes: &[u8]) -> Seen {
    loop {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Seen::failed(format!("no response head in {:?}", show(bytes)));
        };
        let mut lines = bytes[..end].split(|&b| b == b'\n');
        let status = lines
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let headers: Vec<(String, Vec<u8>)> = lines
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                Some((
                    String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase(),
                    line[colon + 1..].trim_ascii().to_vec(),
                ))
            })
            .collect();
        let rest = &bytes[end + 4..];
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
        let body = if chunked {
            dechunk(rest)
        } else {
            let length = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
            match length {
                Some(n) => rest[..n.min(rest.len())].to_vec(),
                None => rest.to_vec(),
            }
        };
        return Seen {
            status,
            headers,
            body,
            ..Seen::default()
        };
    }
}

/// Whether `bytes` hold a whole response (after any 1xx heads): its head, and its body by
/// Content-Length or to the last chunk.
fn complete_http1(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        let body = &rest[end + 4..];
        if status.is_some_and(|s| (100..200).contains(&s)) {
            rest = body;
            continue;
        }
        if head.contains("\r\ntransfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
        let length = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        return match length {
            Some(n) => body.len() >= n,
            // Read to the end of the connection.
            None => false,
        };
    }
}

/// How long a proxy may keep the connection open after a complete response to a request
/// that said `connection: close` before that counts against it.
/// (Envoy closes after its 1 s `delayed_close_timeout`.)
const CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn send_http1(to: SocketAddr, req: &Req) -> Seen {
    // Not compared for a declared body that never comes (finding F7): no need to wait.
    let wait_for_close = !(masked("F7") && matches!(req.body, Body::DeclaredOnly(_)));
    let exchange = async {
        let mut stream = connect(to, req.from)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // A proxy may answer (and close) before the whole request is written.
        let _ = stream.write_all(&http1_bytes(req)).await;
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut kept_open = false;
        loop {
            let read = match deadline {
                Some(at) => match tokio::time::timeout_at(at, stream.read(&mut buffer)).await {
                    Ok(read) => read,
                    Err(_) => {
                        kept_open = true;
                        break;
                    }
                },
                None => stream.read(&mut buffer).await,
            };
            match read {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
                // A reset after the response (the proxy closed with request bytes unread).
                Err(_) if !bytes.is_empty() => break,
                Err(e) => return Err(format!("reading: {e}")),
            }
            if deadline.is_none() && complete_http1(&bytes) {
                if !wait_for_close {
                    break;
                }
                deadline = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
        }
        let mut seen = parse_http1(&bytes);
        seen.kept_open = kept_open;
        Ok::<_, String>(seen)
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) => Seen::failed(e),
        Err(_) => Seen::failed(format!("no complete response within {EXCHANGE_TIMEOUT:?}")),
    }
}

type OutBody = BoxBody<Bytes, Infallible>;

async fn send_http2(to: SocketAddr, req: &Req) -> Seen {
    let exchange = async {
        let stream = connect(to, req.from)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2c handshake: {e}"))?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(format!("http://{}{}", req.host, req.target));
        for (name, value) in &req.headers {
            let value = http::HeaderValue::from_bytes(value)
                .map_err(|e| format!("header value {}: {e}", show(value)))?;
            builder = builder.header(name.as_str(), value);
        }
        let body: OutBody = match &req.body {
            Body::None => Full::new(Bytes::new()).boxed(),
            Body::Sized(bytes) => {
                builder = builder.header("content-length", bytes.len().to_string());
                Full::new(Bytes::from(bytes.clone())).boxed()
            }
            Body::Streamed(chunks) => {
                let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from(c.clone()))))
                    .collect();
                StreamBody::new(futures_util::stream::iter(frames)).boxed()
            }
            Body::DeclaredOnly(_) => return Err("a declared-only body over HTTP/2".to_owned()),
        };
        let request = builder
            .body(body)
            .map_err(|e| format!("building the request: {e}"))?;
        send.ready().await.map_err(|e| format!("h2c: {e}"))?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("h2c exchange: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("h2c body: {e}"))?
            .to_bytes();
        Ok::<_, String>(Seen {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            ..Seen::default()
        })
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) => Seen::failed(e),
        Err(_) => Seen::failed(format!("no complete response within {EXCHANGE_TIMEOUT:?}")),
    }
}

async fn send(to: SocketAddr, req: &Req) -> Seen {
    match req.proto {
        Proto::Http1 => send_http1(to, req).await,
        Proto::Http2 => send_http2(to, req).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing.

/// Headers each proxy adds or rewrites on its own, whatever the plugins do (see the module
/// documentation for why each is left out).
fn proxy_header(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-path"
            | "x-forwarded-prefix"
            | "x-real-ip"
            | "x-request-id"
            | "via"
    ) || name.starts_with("x-envoy-")
}

/// The rate-limit headers a plugin sets on responses.
fn plugin_response_header(name: &str) -> bool {
    name.starts_with("x-ratelimit-") || name.starts_with("ratelimit-") || name == "retry-after"
}

/// Request headers Envoy 1.40 keeps inline (one entry per name), among those this test sends
/// or lets the transformer write.
const ENVOY_INLINE: &[&str] = &["accept", "content-type", "user-agent"];

/// Envoy's `HeaderMapImpl::appendToHeader` for repeated values of an inline header: joined
/// with `,`, empty values skipped.
fn envoy_join(values: &[Vec<u8>]) -> Vec<u8> {
    let mut joined = Vec::new();
    for value in values.iter().filter(|v| !v.is_empty()) {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(value);
    }
    joined
}

fn numeric_close(a: &[u8], b: &[u8], tolerance: i64) -> bool {
    let parse = |v: &[u8]| std::str::from_utf8(v).ok()?.trim().parse::<i64>().ok();
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => (a - b).abs() <= tolerance,
        _ => a == b,
    }
}

/// A header list as name → values in arrival order, without the proxies' own headers.
fn by_name(
    headers: &[(String, Vec<u8>)],
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut map: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if keep(&name) {
            map.entry(name).or_default().push(value.clone());
        }
    }
    map
}

fn show_values(values: Option<&Vec<Vec<u8>>>) -> String {
    match values {
        None => "(absent)".into(),
        Some(values) => values
            .iter()
            .map(|v| format!("{:?}", show(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// What tests the exceptions to an exact comparison count.
#[derive(Default)]
struct Tally {
    requests: usize,
    /// Inline headers Envoy joined where gateway sent several (finding F8).
    joined_inline: usize,
    statuses: BTreeMap<u16, usize>,
    differences: usize,
}

/// Every way the two outcomes differ; empty when they agree.
fn compare(req: &Req, envoy: &Seen, gateway: &Seen, tally: &mut Tally) -> Vec<String> {
    let mut why = Vec::new();
    if envoy.error.is_some() || gateway.error.is_some() {
        why.push(format!(
            "exchange: envoy {:?}, gateway {:?}",
            envoy.error, gateway.error
        ));
        return why;
    }
    // Finding F7: after refusing a request at its headers, gateway keeps reading the body
    // the client declared (the connection stays open until it arrives), Envoy closes.
    // Whether gateway's read is still pending when the response is complete is a race, so
    // it is not compared for a declared body that never comes; everything else is.
    let declared_only = masked("F7") && matches!(req.body, Body::DeclaredOnly(_));
    if envoy.kept_open != gateway.kept_open && !declared_only {
        why.push(format!(
            "connection kept open after the response: envoy {}, gateway {}",
            envoy.kept_open, gateway.kept_open
        ));
    }
    if envoy.status != gateway.status {
        why.push(format!(
            "status: envoy {}, gateway {}",
            envoy.status, gateway.status
        ));
    }
    let plugin_e = by_name(&envoy.headers, plugin_response_header);
    let plugin_g = by_name(&gateway.headers, plugin_response_header);
    for name in plugin_e.keys().chain(plugin_g.keys()) {
        let (e, g) = (plugin_e.get(name), plugin_g.get(name));
        let same = match (e, g) {
            (Some(e), Some(g)) if name == "ratelimit-reset" || name == "retry-after" => {
                e.len() == g.len() && e.iter().zip(g).all(|(a, b)| numeric_close(a, b, 2))
            }
            (e, g) => e == g,
        };
        if !same
            && !why
                .iter()
                .any(|w| w.starts_with(&format!("response {name}:")))
        {
            why.push(format!(
                "response {name}: envoy {}, gateway {}",
                show_values(e),
                show_values(g)
            ));
        }
    }
    match (envoy.echo(), gateway.echo()) {
        (Some(e), Some(g)) => compare_upstream(&e, &g, &mut why, tally),
        (None, None) => {
            let (ce, cg) = (envoy.header("content-type"), gateway.header("content-type"));
            if ce != cg {
                why.push(format!(
                    "local reply content-type: envoy {:?}, gateway {:?}",
                    ce.map(show),
                    cg.map(show)
                ));
            }
            // Each plane's error body carries its own request id (its x-request-id).
            let (be, bg) = (
                envoy.body_without_request_id(),
                gateway.body_without_request_id(),
            );
            if be != bg {
                why.push(format!(
                    "local reply body: envoy {:?}, gateway {:?}",
                    show(&be),
                    show(&bg)
                ));
            }
        }
        (e, _) => why.push(format!(
            "only {} reached the upstream",
            if e.is_some() { "envoy" } else { "gateway" }
        )),
    }
    why
}

fn compare_upstream(
    envoy: &EchoReport,
    gateway: &EchoReport,
    why: &mut Vec<String>,
    tally: &mut Tally,
) {
    if envoy.method != gateway.method {
        why.push(format!(
            "upstream method: envoy {}, gateway {}",
            envoy.method, gateway.method
        ));
    }
    if envoy.path != gateway.path {
        why.push(format!(
            "upstream path: envoy {:?}, gateway {:?}",
            envoy.path, gateway.path
        ));
    }
    if envoy.query != gateway.query {
        why.push(format!(
            "upstream query: envoy {:?}, gateway {:?}",
            envoy.query, gateway.query
        ));
    }
    if envoy.body_len != gateway.body_len || envoy.body_sha256 != gateway.body_sha256 {
        why.push(format!(
            "upstream body: envoy {} bytes {:?}, gateway {} bytes {:?}",
            envoy.body_len,
            envoy
                .body
                .as_deref()
                .map(|b| show(&b.as_bytes()[..b.len().min(120)])),
            gateway.body_len,
            gateway
                .body
                .as_deref()
                .map(|b| show(&b.as_bytes()[..b.len().min(120)])),
        ));
    }
    let mut he = by_name(&envoy.raw_headers, |n| !proxy_header(n));
    let hg = by_name(&gateway.raw_headers, |n| !proxy_header(n));
    // Envoy's HTTP/1.1 codec frames a body-less request whose method may carry a body
    // (OPTIONS, PURGE, PATCH, ...) with `content-length: 0`; hyper sends no framing header.
    // Both say "no body".
    if envoy.body_len == 0
        && he.get("content-length") == Some(&vec![b"0".to_vec()])
        && !hg.contains_key("content-length")
    {
        he.remove("content-length");
    }
    let mut names: Vec<&String> = he.keys().chain(hg.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if masked("F8")
            && ENVOY_INLINE.contains(&name.as_str())
            && hg.get(name).is_some_and(|v| v.len() > 1)
        {
            // Finding F8 (inherent): Envoy keeps an inline header (Accept, Content-Type,
            // User-Agent, ...) as one entry, so a value the transformer appends is joined to
            // the existing one with `,` (an empty value adds nothing); gateway sends two
            // headers. Tested exception: Envoy's one value is gateway's values joined so.
            let joined = envoy_join(&hg[name]);
            if he.get(name) == Some(&vec![joined]) {
                tally.joined_inline += 1;
                continue;
            }
        }
        if he.get(name) != hg.get(name) {
            why.push(format!(
                "upstream header {name}: envoy {}, gateway {}",
                show_values(he.get(name)),
                show_values(hg.get(name))
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running.

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// How close to the end of a window a run may start: longer than a default run takes.
const WINDOW_MARGIN: u64 = 600;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UTC calendar year of a Unix time (Howard Hinnant's `civil_from_days`).
fn utc_year(secs: u64) -> i64 {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// Whether a day window can be used: not when the UTC day ends within the margin. A year
/// that ends within it is waited out (once a year, at most ten minutes).
async fn day_windows_safe() -> bool {
    let now = unix_now();
    if utc_year(now) != utc_year(now + WINDOW_MARGIN) {
        let wait = 86_400 - now % 86_400 + 2;
        println!("differential: the UTC year ends within {WINDOW_MARGIN} s; waiting {wait} s");
        tokio::time::sleep(Duration::from_secs(wait)).await;
        return true;
    }
    now % 86_400 < 86_400 - WINDOW_MARGIN
}

fn declarative(cases: &[Case], echo: SocketAddr) -> String {
    let services: Vec<Value> = cases.iter().map(|c| c.service(echo)).collect();
    json!({"_format_version": "3.0", "services": services}).to_string()
}

struct Planes {
    envoy: Envoy,
    gateway: Gateway,
}

async fn start_planes(text: &str) -> Planes {
    let config = model::parse_declarative_checked(text, &schemas::check)
        .unwrap_or_else(|e| panic!("the generated config does not validate: {e}\n{text}"));
    let options = wasmgate_tests::envoy::translation_options();
    let owned = text.to_owned();
    let gateway = tokio::task::spawn_blocking(move || {
        Gateway::start(
            GatewayOptions {
                admin_listen: None,
                drain_timeout: Duration::from_secs(1),
                ..wasmgate_tests::gateway::options()
            },
            &owned,
        )
    });
    let bootstrap = bootstrap(&config, &options);
    let envoy = Envoy::start_bootstrap(&bootstrap, 2)
        .await
        .unwrap_or_else(|e| panic!("Envoy did not start: {e}"));
    let gateway = gateway
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    Planes { envoy, gateway }
}

/// One difference, printed in full.
fn report(
    seed: u64,
    case: &Case,
    echo: SocketAddr,
    n: usize,
    req: &Req,
    (envoy, gateway): (&Seen, &Seen),
    why: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "=== difference (WASMGATE_DIFF_SEED={seed}): case {}, request {n}",
        case.id
    );
    for w in why {
        let _ = writeln!(out, "  - {w}");
    }
    let _ = writeln!(out, "  config: {}", case.service(echo));
    let _ = writeln!(out, "  request:\n{req}");
    let _ = writeln!(out, "  envoy:\n{envoy}");
    let _ = writeln!(out, "  gateway:\n{gateway}");
    out
}

async fn run_case(
    seed: u64,
    case: Case,
    echo: SocketAddr,
    envoy: SocketAddr,
    gateway: SocketAddr,
    tally: &mut Tally,
    out: &mut Vec<String>,
) {
    let mut rng = Rng(case.requests_seed);
    for n in 0..REQUESTS_PER_CASE {
        let req = generate_request(&mut rng, &case);
        let (e, g) = tokio::join!(send(envoy, &req), send(gateway, &req));
        tally.requests += 1;
        *tally.statuses.entry(e.status).or_default() += 1;
        let why = compare(&req, &e, &g, tally);
        if !why.is_empty() {
            tally.differences += 1;
            out.push(report(seed, &case, echo, n, &req, (&e, &g), &why));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_gateway_agree_on_random_configs_and_requests() {
    let seed = env_number("WASMGATE_DIFF_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let count = env_number("WASMGATE_DIFF_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    println!("differential: WASMGATE_DIFF_SEED={seed} WASMGATE_DIFF_CASES={count}");
    let started = Instant::now();
    let day_windows = day_windows_safe().await;
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..count)
        .map(|id| generate_case(&mut rng, id, day_windows))
        .collect();
    let echo = EchoUpstream::start().await.unwrap();
    let mut tally = Tally::default();
    let mut printed = Vec::new();
    let mut module_failures = Vec::new();
    for batch in cases.chunks(CASES_PER_START) {
        let text = declarative(batch, echo.addr());
        let planes = start_planes(&text).await;
        let envoy_addr = planes.envoy.listener(model::envoy::LISTENER);
        let gateway_addr = planes.gateway.addr();
        let queue = Arc::new(Mutex::new(batch.iter().cloned().collect::<VecDeque<_>>()));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..PARALLEL_CASES {
            let queue = Arc::clone(&queue);
            let echo_addr = echo.addr();
            workers.spawn(async move {
                let mut tally = Tally::default();
                let mut out = Vec::new();
                loop {
                    let next = queue.lock().unwrap().pop_front();
                    let Some(case) = next else { break };
                    run_case(
                        seed,
                        case,
                        echo_addr,
                        envoy_addr,
                        gateway_addr,
                        &mut tally,
                        &mut out,
                    )
                    .await;
                }
                (tally, out)
            });
        }
        while let Some(result) = workers.join_next().await {
            let (t, out) = result.unwrap();
            tally.requests += t.requests;
            tally.joined_inline += t.joined_inline;
            tally.differences += t.differences;
            for (status, n) in t.statuses {
                *tally.statuses.entry(status).or_default() += n;
            }
            printed.extend(out);
        }
        // A module that failed (trap, deadline, memory) answers 503 in both data planes, which
        // would compare equal: gateway's count of failed callbacks must stay at zero.
        let snapshot = planes.gateway.shared().snapshot.load_full();
        for plugin in snapshot.filters.plugins.iter().flatten() {
            if plugin.failures() > 0 {
                module_failures.push(format!(
                    "{}: {} failed callbacks",
                    plugin.config().name,
                    plugin.failures()
                ));
            }
        }
        let Planes { envoy, gateway } = planes;
        drop(envoy);
        tokio::task::spawn_blocking(move || drop(gateway))
            .await
            .unwrap();
    }
    if !module_failures.is_empty() {
        println!("differential: gateway module failures: {module_failures:?}");
    }
    let print = env_number("WASMGATE_DIFF_PRINT").map_or(PRINTED_DIFFERENCES, |n| n as usize);
    for text in printed.iter().take(print) {
        println!("{text}");
    }
    println!(
        "differential: seed {seed}: {} configs, {} requests on each data plane in {:.1?}; \
         statuses (Envoy) {:?}; {} inline headers joined by Envoy (F8); \
         {} differences",
        count,
        tally.requests,
        started.elapsed(),
        tally.statuses,
        tally.joined_inline,
        tally.differences
    );
    assert_eq!(
        tally.differences, 0,
        "{} of {} requests differ between Envoy and gateway (WASMGATE_DIFF_SEED={seed}); the first are printed above",
        tally.differences, tally.requests
    );
    assert!(
        module_failures.is_empty(),
        "gateway's modules failed (WASMGATE_DIFF_SEED={seed}): {module_failures:?}"
    );
}

#[test]
fn utc_years_follow_the_calendar() {
    // 2026-12-31T23:59:59Z and one second later.
    assert_eq!(utc_year(1_798_761_599), 2026);
    assert_eq!(utc_year(1_798_761_600), 2027);
    assert_eq!(utc_year(0), 1970);
    // 2024-02-29T12:00:00Z (a leap day).
    assert_eq!(utc_year(1_709_208_000), 2024);
}
