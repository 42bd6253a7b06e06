//! Differential callback traces (issue #13, item 3): the same scripted proxy-wasm filters
//! (`tests/modules/trace-filter`, `wasmgate_trace_filter.wasm`) run in a real Envoy 1.40 and
//! in a real `gateway` process, from one Kong declarative file (Envoy's bootstrap is
//! `model::envoy`'s translation of it), in front of the same upstreams on 127.0.0.1.
//!
//! Each scenario is a route (`/s/<name>`) with a filter chain of one to three trace filters,
//! each scripted by its config, and one request. Every filter logs a line per callback (what
//! the host gave it: sizes, `end_of_stream`, `x-t-*` header names, trailers; what it did:
//! its return value, local replies, resumes, body and trailer edits, each with the host's
//! status); the test reads each plane's lines from its log (Envoy's log file, `gateway`'s
//! stderr), by the request's `x-t-id`, and adds what the client got (`= ...` lines: status,
//! `x-t-*` response headers, and what reached the upstream or the reply body).
//!
//! The two traces of a scenario must be equal, or be exactly the pair recorded for it in
//! [`DIFFERENCES`]: the table of known differences, each with the review finding it
//! belongs to (`../shared/reviews/host-gateway.md`). A fixed difference makes this test
//! fail until its row goes; a new one fails until it is understood and recorded.
//!
//! Set up so that the comparison is of the filter managers, not of timing or configuration:
//! - Request bodies are sent in chunks 250 ms apart (HTTP/1.1 chunked or HTTP/2 DATA), and
//!   the response upstream writes its chunks 250 ms apart: each chunk is its own read, its
//!   own body callback, on both planes.
//! - Envoy's HTTP/1.1 codecs drop trailers unless `enable_trailers` is set; the translation
//!   sets it downstream and for every HTTP/1.1 cluster, as gateway forwards HTTP/1.1 trailers
//!   (README, Proxying). Request trailers are sent over HTTP/2.
//! - Filter-chain filters get Envoy's default `allow_on_headers_stop_iteration: false` on both
//!   planes; the scenario `hold_until_body_allowed` sets it to true on its first filter's
//!   `filter_chains` entry, which both planes read.
//! - Services have a 3 s `read_timeout` (Envoy: the route's idle timeout; gateway: how long a
//!   filter may hold a head): a scenario where a plane never resumes ends in bounded time.
//! - One worker on each plane, one Envoy and one gateway for all scenarios, all requests in
//!   flight at once (each trace is one stream's, so they do not mix).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use model::envoy::{bootstrap, EnvoyOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wasmgate_tests::{paths, EchoReport, EchoUpstream, Envoy};

/// The module's file name in the filters folder (`cargo xtask build` puts it beside the
/// plugins).
const FILTER: &str = "wasmgate_trace_filter";
/// Between two body chunks sent by the client or the response upstream.
const PACE: Duration = Duration::from_millis(250);
/// How long the slow callout target takes to answer (longer than two paces: a body streams
/// in while a filter waits for it).
const SLOW_CALLOUT: Duration = Duration::from_millis(700);
/// The services' `read_timeout`, in ms.
const READ_TIMEOUT_MS: u64 = 3000;
/// The client's bound on one exchange (a plane that never answers).
const CLIENT_BOUND: Duration = Duration::from_secs(10);

/// How the client sends a request.
#[derive(Clone, Debug)]
enum Send {
    /// GET without a body, HTTP/1.1.
    Get,
    /// POST with a Content-Length, HTTP/1.1, in one write.
    Length(&'static str),
    /// POST chunked over HTTP/1.1, chunks [`PACE`] apart.
    Chunked(&'static [&'static str]),
    /// POST over HTTP/2: DATA frames [`PACE`] apart, then optionally trailers.
    H2(
        &'static [&'static str],
        Option<(&'static str, &'static str)>,
    ),
    /// A unary gRPC call over HTTP/2 (`application/grpc`, `te: trailers`, one message).
    Grpc,
}

/// Which upstream a scenario's route goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// The echo upstream: its report says what reached it.
    Echo,
    /// The response script: a chunked response in two paced chunks, with a trailer.
    Responder,
    /// The response script without the trailer: the last body callback has end_of_stream.
    ResponderPlain,
}

struct Scenario {
    name: &'static str,
    /// One trace filter script per filter, in chain order.
    filters: Vec<Value>,
    send: Send,
    upstream: Upstream,
}

fn scenario(name: &'static str, filters: Vec<Value>, send: Send) -> Scenario {
    Scenario {
        name,
        filters,
        send,
        upstream: Upstream::Echo,
    }
}

fn responder(name: &'static str, filters: Vec<Value>) -> Scenario {
    Scenario {
        name,
        filters,
        send: Send::Get,
        upstream: Upstream::Responder,
    }
}

fn responder_plain(name: &'static str, filters: Vec<Value>) -> Scenario {
    Scenario {
        upstream: Upstream::ResponderPlain,
        ..responder(name, filters)
    }
}

const CHUNKS: &[&str] = &["{\"a\":1,", "\"b\":2,", "\"c\":3}"];

fn scenarios() -> Vec<Scenario> {
    let a = |extra: Value| script("A", extra);
    let b = |extra: Value| script("B", extra);
    let c = |extra: Value| script("C", extra);
    let plain = json!({});
    vec![
        // Everything continues: what each body shape looks like to a filter.
        scenario("continue_get", vec![a(plain.clone())], Send::Get),
        scenario(
            "continue_length",
            vec![a(plain.clone()), b(plain.clone())],
            Send::Length("hello, world"),
        ),
        scenario(
            "continue_chunked",
            vec![a(plain.clone()), b(plain.clone())],
            Send::Chunked(CHUNKS),
        ),
        scenario(
            "continue_h2",
            vec![a(plain.clone()), b(plain.clone())],
            Send::H2(CHUNKS, None),
        ),
        scenario(
            "continue_h2_trailers",
            vec![a(plain.clone()), b(plain.clone())],
            Send::H2(CHUNKS, Some(("x-t-trailer", "1"))),
        ),
        // One filter buffers the body until end of stream: running totals, then the filters
        // after it get the whole body once.
        scenario(
            "buffer_body",
            vec![
                a(plain.clone()),
                b(json!({"request_body": "buffer"})),
                c(plain.clone()),
            ],
            Send::Chunked(CHUNKS),
        ),
        scenario(
            "buffer_body_trailers",
            vec![a(json!({"request_body": "buffer"})), b(plain.clone())],
            Send::H2(CHUNKS, Some(("x-t-trailer", "1"))),
        ),
        // Headers held until a callout answers, or until a tick.
        scenario(
            "http_call_resume",
            vec![
                a(json!({"request_headers": "pause", "resume": "http_call"})),
                b(plain.clone()),
            ],
            Send::Chunked(CHUNKS),
        ),
        // A stream answered from the root context (review 20).
        scenario(
            "tick_reply",
            vec![
                a(json!({"request_headers": "pause", "resume": "tick_reply"})),
                b(plain.clone()),
            ],
            Send::Get,
        ),
        // A unary gRPC call to a gRPC server (item 2: gateway makes it itself) resumes the
        // request on its close.
        scenario(
            "grpc_call_resume",
            vec![
                a(
                    json!({"request_headers": "pause", "resume": "grpc_call", "callout": "service.grpcup"}),
                ),
                b(plain.clone()),
            ],
            Send::Get,
        ),
        // A call to an upstream the configuration does not have is refused at once
        // (BAD_ARGUMENT); nothing resumes the stream then.
        scenario(
            "http_call_unknown_upstream",
            vec![a(
                json!({"request_headers": "pause", "resume": "http_call", "callout": "service.nowhere"}),
            )],
            Send::Get,
        ),
        scenario(
            "tick_resume",
            vec![
                a(json!({"request_headers": "pause", "resume": "tick"})),
                b(plain.clone()),
            ],
            Send::Get,
        ),
        // Two filters pausing at once (review 17): a later filter holds the headers for a
        // slow callout while an earlier one buffers the body; and the reverse.
        scenario(
            "earlier_buffers_later_holds",
            vec![
                a(json!({"request_body": "buffer"})),
                b(
                    json!({"request_headers": "pause", "resume": "http_call", "callout": "service.slow"}),
                ),
            ],
            Send::Chunked(CHUNKS),
        ),
        scenario(
            "earlier_holds_later_buffers",
            vec![
                a(
                    json!({"request_headers": "pause", "resume": "http_call", "callout": "service.slow"}),
                ),
                b(json!({"request_body": "buffer"})),
            ],
            Send::Chunked(CHUNKS),
        ),
        // A filter holding the headers until its own body callback at end of stream:
        // Envoy's default never gives it the body.
        scenario(
            "hold_until_body_default",
            vec![
                a(json!({"request_headers": "pause", "resume": "body_eos"})),
                b(plain.clone()),
            ],
            Send::Length("hello, world"),
        ),
        scenario(
            "hold_until_body_allowed",
            vec![
                a(json!({"request_headers": "pause", "resume": "body_eos"})),
                b(plain.clone()),
            ],
            Send::Length("hello, world"),
        ),
        // Local replies from the middle filter: who sees which response callbacks.
        scenario(
            "reply_request_headers",
            vec![
                a(plain.clone()),
                b(json!({"request_headers": "reply"})),
                c(plain.clone()),
            ],
            Send::Get,
        ),
        scenario(
            "reply_request_body",
            vec![
                a(plain.clone()),
                b(json!({"request_body": "reply"})),
                c(plain.clone()),
            ],
            Send::Length("hello, world"),
        ),
        scenario(
            "reply_response_headers",
            vec![
                a(plain.clone()),
                b(json!({"response_headers": "reply"})),
                c(plain.clone()),
            ],
            Send::Get,
        ),
        // Response side: a chunked response in two paced chunks with a trailer.
        responder(
            "response_continue",
            vec![a(plain.clone()), b(plain.clone())],
        ),
        responder(
            "response_buffer_body",
            vec![a(plain.clone()), b(json!({"response_body": "buffer"}))],
        ),
        responder(
            "response_http_call",
            vec![
                a(plain.clone()),
                b(json!({"response_headers": "pause", "resume": "http_call"})),
            ],
        ),
        responder_plain(
            "response_buffer_body_plain",
            vec![a(plain.clone()), b(json!({"response_body": "buffer"}))],
        ),
        // A body to replace at end of stream: with trailers there is no such body callback.
        responder(
            "response_set_body_trailers",
            vec![
                a(plain.clone()),
                b(json!({"response_body": "buffer", "set_response_body": "replaced"})),
            ],
        ),
        responder_plain(
            "response_set_body",
            vec![
                a(plain.clone()),
                b(json!({"response_body": "buffer", "set_response_body": "replaced"})),
            ],
        ),
        // Edits at end of stream (review 26): a trailer added in the last body callback, and a
        // body replaced there.
        scenario(
            "add_request_trailer",
            vec![a(json!({"add_request_trailer": true})), b(plain.clone())],
            Send::Length("hello, world"),
        ),
        scenario(
            "set_request_body",
            vec![
                a(json!({"request_body": "buffer", "set_request_body": "replaced"})),
                b(plain.clone()),
            ],
            Send::Chunked(CHUNKS),
        ),
        responder_plain(
            "add_response_trailer",
            vec![a(plain.clone()), b(json!({"add_response_trailer": true}))],
        ),
        // Local replies to a gRPC call (review 24): trailers-only, with the filter's gRPC
        // status, or without one, the HTTP status mapped; from the stream's own callback and
        // from the root context.
        scenario(
            "grpc_reply_mapped",
            vec![a(json!({"request_headers": "reply", "reply_status": 429}))],
            Send::Grpc,
        ),
        scenario(
            "grpc_reply_given",
            vec![a(
                json!({"request_headers": "reply", "reply_status": 403, "reply_grpc_status": 16}),
            )],
            Send::Grpc,
        ),
        scenario(
            "grpc_tick_reply",
            vec![a(
                json!({"request_headers": "pause", "resume": "tick_reply", "reply_status": 503}),
            )],
            Send::Grpc,
        ),
    ]
}

fn script(name: &str, extra: Value) -> Value {
    let mut script = json!({ "name": name });
    if let (Some(script), Value::Object(extra)) = (script.as_object_mut(), extra) {
        script.extend(extra);
    }
    script
}

/// A difference between Envoy's and gateway's traces, recorded exactly.
struct Difference {
    scenario: &'static str,
    /// The review finding (`../shared/reviews/host-gateway.md`) it belongs to, and why.
    finding: &'static str,
    envoy: &'static [&'static str],
    gateway: &'static [&'static str],
}

/// Every known difference. Envoy's trace is Envoy 1.40's behaviour; gateway's is what the
/// filter manager does today.
const DIFFERENCES: &[Difference] = &[
    Difference {
        scenario: "http_call_unknown_upstream",
        finding: "Review 22: both refuse the call at once with BAD_ARGUMENT, nothing resumes, both answer 504 at the read_timeout through A's response callbacks. Only the 504's body differs, as in hold_until_body_default: Kong's JSON in gateway, 'stream timeout' in Envoy.",
        envoy: &[
            r#"A request_headers eos=true hdrs=x-t-id -> pause http_call BadArgument"#,
            r#"A response_headers eos=false hdrs= status=504 -> continue"#,
            r#"A response_body size=14 read=14 eos=true -> continue"#,
            r#"A log"#,
            r#"= status 504 hdrs=x-t-a"#,
        ],
        gateway: &[
            r#"A request_headers eos=true hdrs=x-t-id -> pause http_call BadArgument"#,
            r#"A response_headers eos=false hdrs= status=504 -> continue"#,
            r#"A response_body size=106 read=106 eos=true -> continue"#,
            r#"A log"#,
            r#"= status 504 hdrs=x-t-a"#,
        ],
    },
    Difference {
        scenario: "continue_h2_trailers",
        finding: "Not the filter manager (README, Proxying): the filters see the same trailers, but gateway's HTTP/1.1 upstream request loses trailers that the HTTP/2 client did not announce in a `trailer` header (hyper sends only announced trailers); Envoy (with enable_trailers) forwards them.",
        envoy: &[
            r#"A request_headers eos=false hdrs=x-t-id -> continue"#,
            r#"B request_headers eos=false hdrs=x-t-a,x-t-id -> continue"#,
            r#"A request_body size=7 read=7 eos=false -> continue"#,
            r#"B request_body size=7 read=7 eos=false -> continue"#,
            r#"A request_body size=6 read=6 eos=false -> continue"#,
            r#"B request_body size=6 read=6 eos=false -> continue"#,
            r#"A request_body size=6 read=6 eos=false -> continue"#,
            r#"B request_body size=6 read=6 eos=false -> continue"#,
            r#"A request_trailers names=x-t-trailer -> continue"#,
            r#"B request_trailers names=x-t-trailer -> continue"#,
            r#"B response_headers eos=false hdrs= status=200 -> continue"#,
            r#"A response_headers eos=false hdrs=x-t-b status=200 -> continue"#,
            r#"B response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"A response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"B response_body size=0 read=0 eos=true -> continue"#,
            r#"A response_body size=0 read=0 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 200 hdrs=x-t-a,x-t-b"#,
            r#"= upstream hdrs=x-t-a,x-t-b,x-t-id body="{\"a\":1,\"b\":2,\"c\":3}" trailers=x-t-trailer:1"#,
        ],
        gateway: &[
            r#"A request_headers eos=false hdrs=x-t-id -> continue"#,
            r#"B request_headers eos=false hdrs=x-t-a,x-t-id -> continue"#,
            r#"A request_body size=7 read=7 eos=false -> continue"#,
            r#"B request_body size=7 read=7 eos=false -> continue"#,
            r#"A request_body size=6 read=6 eos=false -> continue"#,
            r#"B request_body size=6 read=6 eos=false -> continue"#,
            r#"A request_body size=6 read=6 eos=false -> continue"#,
            r#"B request_body size=6 read=6 eos=false -> continue"#,
            r#"A request_trailers names=x-t-trailer -> continue"#,
            r#"B request_trailers names=x-t-trailer -> continue"#,
            r#"B response_headers eos=false hdrs= status=200 -> continue"#,
            r#"A response_headers eos=false hdrs=x-t-b status=200 -> continue"#,
            r#"B response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"A response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"B response_body size=0 read=0 eos=true -> continue"#,
            r#"A response_body size=0 read=0 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 200 hdrs=x-t-a,x-t-b"#,
            r#"= upstream hdrs=x-t-a,x-t-b,x-t-id body="{\"a\":1,\"b\":2,\"c\":3}" trailers="#,
        ],
    },
    Difference {
        scenario: "buffer_body_trailers",
        finding: "As continue_h2_trailers, with a filter buffering the body: the callbacks (running totals, the trailers ending the body) are equal; only the upstream's trailers differ.",
        envoy: &[
            r#"A request_headers eos=false hdrs=x-t-id -> continue"#,
            r#"B request_headers eos=false hdrs=x-t-a,x-t-id -> continue"#,
            r#"A request_body size=7 read=7 eos=false -> pause"#,
            r#"A request_body size=13 read=13 eos=false -> pause"#,
            r#"A request_body size=19 read=19 eos=false -> pause"#,
            r#"A request_trailers names=x-t-trailer -> continue"#,
            r#"B request_body size=19 read=19 eos=false -> continue"#,
            r#"B request_trailers names=x-t-trailer -> continue"#,
            r#"B response_headers eos=false hdrs= status=200 -> continue"#,
            r#"A response_headers eos=false hdrs=x-t-b status=200 -> continue"#,
            r#"B response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"A response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"B response_body size=0 read=0 eos=true -> continue"#,
            r#"A response_body size=0 read=0 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 200 hdrs=x-t-a,x-t-b"#,
            r#"= upstream hdrs=x-t-a,x-t-b,x-t-id body="{\"a\":1,\"b\":2,\"c\":3}" trailers=x-t-trailer:1"#,
        ],
        gateway: &[
            r#"A request_headers eos=false hdrs=x-t-id -> continue"#,
            r#"B request_headers eos=false hdrs=x-t-a,x-t-id -> continue"#,
            r#"A request_body size=7 read=7 eos=false -> pause"#,
            r#"A request_body size=13 read=13 eos=false -> pause"#,
            r#"A request_body size=19 read=19 eos=false -> pause"#,
            r#"A request_trailers names=x-t-trailer -> continue"#,
            r#"B request_body size=19 read=19 eos=false -> continue"#,
            r#"B request_trailers names=x-t-trailer -> continue"#,
            r#"B response_headers eos=false hdrs= status=200 -> continue"#,
            r#"A response_headers eos=false hdrs=x-t-b status=200 -> continue"#,
            r#"B response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"A response_body size=<echo> read=<echo> eos=false -> continue"#,
            r#"B response_body size=0 read=0 eos=true -> continue"#,
            r#"A response_body size=0 read=0 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 200 hdrs=x-t-a,x-t-b"#,
            r#"= upstream hdrs=x-t-a,x-t-b,x-t-id body="{\"a\":1,\"b\":2,\"c\":3}" trailers="#,
        ],
    },
    Difference {
        scenario: "hold_until_body_default",
        finding: "Envoy hangs too: a headers Pause without allow_on_headers_stop_iteration stops all iteration (cpp-host: StopAllIterationAndWatermark), so A never gets the body and never resumes. Both answer 504 at the 3 s read_timeout (Envoy: route idle timeout), through A's response callbacks, and both call on_log on B, which was never reached. Only the body differs, on purpose: gateway answers in Kong's words (its JSON error, 106 bytes here), Envoy with its own 'stream timeout'.",
        envoy: &[
            r#"A request_headers eos=false hdrs=x-t-id -> pause"#,
            r#"A response_headers eos=false hdrs= status=504 -> continue"#,
            r#"A response_body size=14 read=14 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 504 hdrs=x-t-a"#,
        ],
        gateway: &[
            r#"A request_headers eos=false hdrs=x-t-id -> pause"#,
            r#"A response_headers eos=false hdrs= status=504 -> continue"#,
            r#"A response_body size=106 read=106 eos=true -> continue"#,
            r#"A log"#,
            r#"B log"#,
            r#"= status 504 hdrs=x-t-a"#,
        ],
    },
];

/// The Kong declarative file: one route per scenario, with its chain.
fn declarative(
    (echo, responder, grpc): (SocketAddr, SocketAddr, SocketAddr),
    scenarios: &[Scenario],
) -> Value {
    let service = |name: &str, addr: SocketAddr, routes: Vec<Value>| {
        json!({
            "name": name,
            "url": format!("http://{addr}"),
            "read_timeout": READ_TIMEOUT_MS,
            "routes": routes,
        })
    };
    let routes = |upstream: Upstream| -> Vec<Value> {
        scenarios
            .iter()
            .filter(|s| s.upstream == upstream)
            .map(|s| json!({"name": s.name, "paths": [format!("/s/{}", s.name)]}))
            .collect()
    };
    let chains: Vec<Value> = scenarios
        .iter()
        .map(|s| {
            json!({
                "route": s.name,
                "filters": s.filters.iter().enumerate().map(|(i, f)| json!({
                    "name": FILTER,
                    "config": f,
                    "allow_on_headers_stop_iteration": s.name == "hold_until_body_allowed" && i == 0,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "_format_version": "3.0",
        "services": [
            service("echo", echo, routes(Upstream::Echo)),
            service("responder", responder, {
                let mut both = routes(Upstream::Responder);
                both.extend(routes(Upstream::ResponderPlain));
                both
            }),
            service("callee", echo, vec![]),
            service("slow", responder, vec![]),
            json!({"name": "grpcup", "url": format!("grpc://{grpc}"), "read_timeout": READ_TIMEOUT_MS}),
        ],
        "filter_chains": chains,
    })
}

/// Envoy's bootstrap from the translation.
fn envoy_bootstrap(config: &model::Config, filters_dir: &Path) -> Value {
    let options = EnvoyOptions {
        filters_dir: Some(filters_dir.to_owned()),
        ..wasmgate_tests::envoy::translation_options()
    };
    bootstrap(config, &options)
}

/// A `gateway` process (the binary `cargo build -p gateway` makes), its stderr in a file.
struct GatewayProcess {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

fn gateway_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMGATE_GATEWAY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|debug| debug.join("gateway"))
        .unwrap_or_default();
    assert!(
        binary.is_file(),
        "{} is missing: build it (`cargo build -p gateway --bin gateway`, or run `cargo xtask test`)",
        binary.display()
    );
    binary
}

impl GatewayProcess {
    async fn start(dir: &Path, config: &str, filters_dir: &Path) -> GatewayProcess {
        let config_path = dir.join("kong.json");
        std::fs::write(&config_path, config).expect("writing the gateway's config");
        let log = dir.join("gateway.log");
        let stderr = std::fs::File::create(&log).expect("gateway log file");
        let listen = wasmgate_tests::free_port();
        let admin = wasmgate_tests::free_port();
        let child = Command::new(gateway_binary())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--workers", "1", "--no-access-log"])
            .arg("--filters-dir")
            .arg(filters_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting gateway");
        let mut gateway = GatewayProcess { child, listen, log };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", gateway.log_text());
            }
            if TcpStream::connect(listen).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "gateway did not listen within 60 s:\n{}",
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- gateway's log, last lines ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// The response script upstream: answers `/callout` after [`SLOW_CALLOUT`] with `called`,
/// and anything else with a chunked `hello ` + `world` ([`PACE`] apart) and the trailer
/// `x-up-trailer: 1` (none when the request says `x-t-respond: plain`); `connection: close`
/// either way (no pooled connection to reason about).
async fn start_responder() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("responder");
    let addr = listener.local_addr().expect("responder address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(respond(stream));
        }
    });
    (addr, task)
}

async fn respond(mut stream: TcpStream) {
    stream.set_nodelay(true).ok();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    if text.starts_with("GET /callout") {
        tokio::time::sleep(SLOW_CALLOUT).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ncalled")
            .await;
        return;
    }
    let plain = text
        .to_ascii_lowercase()
        .contains("\r\nx-t-respond: plain\r\n");
    let parts: [&[u8]; 3] = if plain {
        [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n6\r\nhello \r\n",
            b"5\r\nworld\r\n",
            b"0\r\n\r\n",
        ]
    } else {
        [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ntrailer: x-up-trailer\r\nconnection: close\r\n\r\n6\r\nhello \r\n",
            b"5\r\nworld\r\n",
            b"0\r\nx-up-trailer: 1\r\n\r\n",
        ]
    };
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(PACE).await;
        }
        if stream.write_all(part).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// A request body as frames, [`PACE`] apart after the first.
struct PacedBody {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    exact: Option<u64>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    started: bool,
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        } else if self.started && !self.frames.is_empty() {
            self.wait = Some(Box::pin(tokio::time::sleep(PACE)));
            return self.poll_frame(cx);
        }
        self.started = true;
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// What the client saw.
struct Seen {
    /// As trace lines (`= ...`).
    lines: Vec<String>,
    /// The length of the echo's report, when the answer is one: it quotes the request's
    /// headers, which are each proxy's own, so its size is normalised in the traces.
    echo_len: Option<usize>,
}

async fn exchange(addr: SocketAddr, scenario: &Scenario) -> Seen {
    let failed = |line: String| Seen {
        lines: vec![line],
        echo_len: None,
    };
    match tokio::time::timeout(CLIENT_BOUND, exchange_once(addr, scenario)).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) => failed(format!("= error {e}")),
        Err(_) => failed(format!("= no answer within {CLIENT_BOUND:?}")),
    }
}

async fn exchange_once(addr: SocketAddr, scenario: &Scenario) -> Result<Seen, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let io = TokioIo::new(stream);
    let path = format!("/s/{}", scenario.name);
    let mut request = hyper::Request::builder()
        .uri(path.as_str())
        .header("host", "traces.test")
        .header("x-t-id", scenario.name);
    if scenario.upstream == Upstream::ResponderPlain {
        request = request.header("x-t-respond", "plain");
    }
    let (method, frames, exact): (&str, Vec<Frame<Bytes>>, Option<u64>) = match &scenario.send {
        Send::Get => ("GET", vec![], Some(0)),
        Send::Length(body) => (
            "POST",
            vec![Frame::data(Bytes::from_static(body.as_bytes()))],
            Some(body.len() as u64),
        ),
        Send::Chunked(chunks) | Send::H2(chunks, None) => (
            "POST",
            chunks
                .iter()
                .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
                .collect(),
            None,
        ),
        Send::Grpc => {
            request = request
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            // One uncompressed message of 5 bytes.
            let message = Bytes::from_static(b"\0\0\0\0\x05hello");
            ("POST", vec![Frame::data(message)], None)
        }
        Send::H2(chunks, Some((name, value))) => {
            let mut frames: Vec<Frame<Bytes>> = chunks
                .iter()
                .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
                .collect();
            let mut trailers = http::HeaderMap::new();
            trailers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
            frames.push(Frame::trailers(trailers));
            ("POST", frames, None)
        }
    };
    if let Some(len) = exact.filter(|&l| l > 0) {
        request = request.header("content-length", len.to_string());
    }
    let body = PacedBody {
        frames: frames.into(),
        exact,
        wait: None,
        started: false,
    };
    let request = request
        .method(method)
        .body(body)
        .map_err(|e| format!("request: {e}"))?;
    let response = if matches!(scenario.send, Send::H2(..) | Send::Grpc) {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2c handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(request).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let mut names: Vec<&str> = parts
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-t-"))
        .collect();
    names.sort_unstable();
    let mut echo_len = None;
    let mut lines = vec![format!(
        "= status {} hdrs={}",
        parts.status.as_u16(),
        names.join(",")
    )];
    if parts
        .headers
        .contains_key(wasmgate_tests::echo::ECHO_HEADER)
    {
        echo_len = Some(body.len());
        let report: EchoReport =
            serde_json::from_slice(&body).map_err(|e| format!("echo report: {e}"))?;
        let mut upstream_names: Vec<&str> = report
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("x-t-"))
            .collect();
        upstream_names.sort_unstable();
        let trailers: Vec<String> = report
            .trailers
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        lines.push(format!(
            "= upstream hdrs={} body={:?} trailers={}",
            upstream_names.join(","),
            report.body.unwrap_or_default(),
            trailers.join(",")
        ));
    } else if parts.status.is_success() || parts.headers.contains_key("x-t-reply") {
        lines.push(format!("= body {:?}", String::from_utf8_lossy(&body)));
    }
    if matches!(scenario.send, Send::Grpc) {
        // Where a gRPC client reads the call's status: the headers of a trailers-only
        // response, or the trailers.
        let grpc = |map: &http::HeaderMap| {
            ["content-type", "grpc-status", "grpc-message"]
                .iter()
                .filter_map(|name| Some(format!("{name}:{}", map.get(*name)?.to_str().ok()?)))
                .collect::<Vec<_>>()
                .join(",")
        };
        lines.push(format!(
            "= grpc hdrs={} trailers={}",
            grpc(&parts.headers),
            grpc(&trailers)
        ));
    }
    Ok(Seen { lines, echo_len })
}

/// One plane's trace of a scenario: its filters' lines, the echo report's size replaced by
/// `<echo>`, then what the client saw.
fn plane_trace(filters: Option<&Vec<String>>, seen: Seen) -> Vec<String> {
    let mut lines: Vec<String> = filters.cloned().unwrap_or_default();
    if let Some(len) = seen.echo_len {
        let size = format!("response_body size={len} read={len} ");
        for line in &mut lines {
            *line = line.replace(&size, "response_body size=<echo> read=<echo> ");
        }
    }
    lines.extend(seen.lines);
    lines
}

/// Every trace line of a log, by the request's tag, in order.
fn traces(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in log.lines() {
        let Some(at) = line.find("TRACE|") else {
            continue;
        };
        let rest = &line[at + "TRACE|".len()..];
        if let Some((tag, event)) = rest.split_once('|') {
            by_tag
                .entry(tag.to_owned())
                .or_default()
                .push(event.trim_end().to_owned());
        }
    }
    by_tag
}

/// Waits until every scenario has a `log` line (its stream is over on that plane) and the log
/// stops growing; returns it.
async fn settled_log(read: impl Fn() -> String, scenarios: &[Scenario]) -> String {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let log = read();
        let by_tag = traces(&log);
        let done = scenarios.iter().all(|s| {
            let lines = by_tag.get(s.name).map(Vec::as_slice).unwrap_or_default();
            lines.iter().any(|l| l.ends_with(" log"))
        });
        if (done && log == last) || started.elapsed() > Duration::from_secs(15) {
            return log;
        }
        last = log;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_gateway_trace_the_same_callbacks() {
    let filters_dir = paths::wasm_dir();
    assert!(
        filters_dir.join(format!("{FILTER}.wasm")).is_file(),
        "{}/{FILTER}.wasm is missing: run `cargo xtask build`",
        filters_dir.display()
    );
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let (responder_addr, responder_task) = start_responder().await;
    let scenarios = scenarios();
    let grpc = wasmgate_tests::grpc::start_echo().await;
    let text = declarative((echo.addr(), responder_addr, grpc), &scenarios).to_string();
    let config = model::parse_declarative(&text)
        .unwrap_or_else(|e| panic!("the scenarios' declarative file: {e:?}"));
    let envoy = Envoy::start_bootstrap(&envoy_bootstrap(&config, &filters_dir), 1)
        .await
        .unwrap_or_else(|e| panic!("Envoy refused the translation: {e}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start(dir.path(), &text, &filters_dir).await;

    // Every scenario on both planes at once: each trace is one stream's own.
    let envoy_addr = envoy.listener("wasmgate");
    let gateway_addr = gateway.listen;
    let sends = scenarios
        .iter()
        .map(|s| async move { tokio::join!(exchange(envoy_addr, s), exchange(gateway_addr, s)) });
    let clients = futures_util::future::join_all(sends).await;

    let envoy_log = settled_log(|| envoy.log(), &scenarios).await;
    let gateway_log = settled_log(|| gateway.log_text(), &scenarios).await;
    let envoy_traces = traces(&envoy_log);
    let gateway_traces = traces(&gateway_log);
    responder_task.abort();

    let mut failures = Vec::new();
    let mut report = String::new();
    for (s, (envoy_client, gateway_client)) in scenarios.iter().zip(clients) {
        let on_envoy = plane_trace(envoy_traces.get(s.name), envoy_client);
        let on_gateway = plane_trace(gateway_traces.get(s.name), gateway_client);
        report.push_str(&format!(
            "\n=== {}\n--- Envoy\n{}\n--- gateway\n{}\n",
            s.name,
            on_envoy.join("\n"),
            on_gateway.join("\n")
        ));
        // A trace without the first filter's request headers means the log was not read.
        let first = s.filters[0]["name"].as_str().unwrap_or_default();
        if !on_envoy
            .iter()
            .any(|l| l.starts_with(&format!("{first} request_headers")))
        {
            failures.push(format!("{}: no trace from Envoy", s.name));
        }
        let recorded = DIFFERENCES.iter().find(|d| d.scenario == s.name);
        match recorded {
            None if on_envoy == on_gateway => {}
            None => failures.push(format!(
                "{}: Envoy and gateway differ, and DIFFERENCES has no row for it",
                s.name
            )),
            Some(d) => {
                if on_envoy == on_gateway {
                    failures.push(format!(
                        "{}: the traces are now equal ({}): remove its DIFFERENCES row",
                        s.name, d.finding
                    ));
                } else if on_envoy != d.envoy || on_gateway != d.gateway {
                    failures.push(format!(
                        "{}: the traces differ otherwise than DIFFERENCES records ({})",
                        s.name, d.finding
                    ));
                }
            }
        }
    }
    for (plane, by_tag) in [("Envoy", &envoy_traces), ("gateway", &gateway_traces)] {
        if let Some(lines) = by_tag.get("-") {
            failures.push(format!("{plane}: trace lines of no request: {lines:?}"));
        }
    }
    for d in DIFFERENCES {
        if !scenarios.iter().any(|s| s.name == d.scenario) {
            failures.push(format!("DIFFERENCES names no scenario: {}", d.scenario));
        }
    }
    if std::env::var_os("WASMGATE_TRACES_PRINT").is_some() || !failures.is_empty() {
        eprintln!("{report}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
