//! Runs a case file in the in-process host: `host::testing::Harness`, the host crate's own
//! filter chain, VMs and ABI, on wasmtime, with a manual clock (a step's `advance` moves it,
//! so minute and hour windows take no waiting). The same expectations (`Expect::check`) as in
//! Envoy and `gateway`.
//!
//! Each case runs on a fresh harness per protocol (like a listener per case in Envoy), with
//! the client at `127.0.0.1:<port>`, the route named after the listener and the cluster
//! `upstream`. An in-process echo answers with the same report the real echo upstream sends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use host::testing::{Harness, TestBody, TestRequest, TestResponse, UpstreamRequest};
use host::{Error, PluginConfig};

use crate::cases::{refusal_says, Case, CaseFile, CaseRequest, Exchange, ModuleSpec};
use crate::client::{filler_chunk, Protocol, RequestBody, Response};
use crate::echo::{EchoReport, UpstreamRecord, ECHO_HEADER};
use crate::report::{CaseResult, Verdict};

pub const TARGET: &str = "host";

/// The request as the host harness takes it.
fn test_request(case_request: &CaseRequest, protocol: Protocol) -> TestRequest {
    let request = case_request.to_request();
    let filler = |len: u64| -> Vec<Vec<u8>> {
        let chunk = filler_chunk(64 * 1024);
        let mut left = len as usize;
        let mut pieces = Vec::new();
        while left > 0 {
            let n = left.min(chunk.len());
            pieces.push(chunk[..n].to_vec());
            left -= n;
        }
        pieces
    };
    let body = match &request.body {
        RequestBody::Empty => TestBody::Empty,
        RequestBody::Bytes(b) => TestBody::Bytes(b.clone()),
        RequestBody::Chunks(c)
        | RequestBody::Paced { chunks: c, .. }
        | RequestBody::Gated { chunks: c, .. } => TestBody::Chunks(c.clone()),
        RequestBody::Filler {
            len,
            with_length: true,
        } => TestBody::Pieces(filler(*len)),
        RequestBody::Filler {
            len,
            with_length: false,
        } => TestBody::Chunks(filler(*len)),
    };
    let mut req = TestRequest::new(&request.method, &request.path).body(body);
    req.headers = request.headers.clone();
    req.protocol = match protocol {
        Protocol::Http1 => "HTTP/1.1".into(),
        Protocol::Http2 => "HTTP/2".into(),
    };
    req
}

/// What the echo upstream answers.
fn echo(req: &UpstreamRequest) -> TestResponse {
    let report = EchoReport::from_parts(
        &req.method,
        &req.path,
        "HTTP/1.1",
        req.headers
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_vec()))
            .collect(),
        &req.body,
    );
    let body = serde_json::to_vec(&report).unwrap_or_default();
    TestResponse::new(
        200,
        &[("content-type", "application/json"), (ECHO_HEADER, "1")],
        &body,
    )
}

fn harness(module: &ModuleSpec, case: &Case, listener: &str, port: u16) -> Result<Harness, Error> {
    let mut h = Harness::new()?;
    h.set_source(SocketAddr::from(([127, 0, 0, 1], port)));
    h.set_route(listener, "upstream");
    h.set_upstream(echo);
    let mut config = PluginConfig::new(&module.plugin_name, module.configuration(case))
        .root_id(&module.root_id)
        .vm_id(&format!("{}-{listener}", module.plugin_name))
        .allow_on_headers_stop_iteration(module.allow_on_headers_stop_iteration);
    for (k, v) in &case.env {
        config = config.env(k, v);
    }
    h.load_file(&module.path, config)?;
    Ok(h)
}

/// Whether the module compiles and links in this host: an error naming the file otherwise.
pub fn check_module(module: &ModuleSpec) -> Result<(), String> {
    host::testing::module_from_file(&module.path)
        .map(drop)
        .map_err(|e| format!("{}: the module does not load: {e}", module.path.display()))
}

/// Runs every case of `file`: one result per case, each failure naming protocol and step.
/// `done` is called after each case (progress).
pub fn run_file(
    file: &CaseFile,
    module: &ModuleSpec,
    mut done: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        let started = Instant::now();
        let mut log = String::new();
        let verdict = run_case(module, i, case, &mut log);
        let result = CaseResult {
            file: file.path.clone(),
            line: file.line_of(i),
            case: case.name.clone(),
            target: TARGET.into(),
            log: if matches!(verdict, Verdict::Failed(_)) {
                log
            } else {
                String::new()
            },
            verdict,
            time: started.elapsed(),
        };
        done(&result);
        results.push(result);
    }
    results
}

fn run_case(module: &ModuleSpec, i: usize, case: &Case, log: &mut String) -> Verdict {
    if case.paths.is_some() {
        return Verdict::Skipped("a case about routes (`paths`): the host has none".into());
    }
    let port = 40000 + (i % 20000) as u16;
    if let Some(expected) = case.config_error() {
        let name = format!("refused-{i}");
        return match harness(module, case, &name, port) {
            Ok(_) => Verdict::Failed(vec!["the host accepted a config it must refuse".into()]),
            Err(Error::ConfigRefused { reason, .. }) if refusal_says(expected, &reason) => {
                Verdict::Passed
            }
            // A module that traps while it configures is refused as well, as Envoy refuses it.
            Err(e) if refusal_says(expected, &e.to_string()) => Verdict::Passed,
            Err(e) => Verdict::Failed(vec![format!("refused, but not with {expected:?}: {e}")]),
        };
    }
    let mut failures = Vec::new();
    for protocol in case.protocols() {
        let listener = format!("case-{i}-{protocol:?}").to_lowercase();
        let mut h = match harness(module, case, &listener, port) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!("[{protocol:?}]: {e}"));
                continue;
            }
        };
        let mut failed = false;
        for (n, step) in case.steps().iter().enumerate() {
            if let Some(seconds) = step.advance {
                h.advance(Duration::from_secs_f64(seconds));
            }
            h.set_source(SocketAddr::new(step.request.source, port));
            let outcome = h.send(test_request(&step.request, protocol));
            let mut response = Response {
                status: outcome.response.status,
                headers: lossy(&outcome.response.headers),
                body: outcome.response.body.clone(),
                ..Response::default()
            };
            if outcome.reset {
                // Envoy resets the stream: the client sees no response at all.
                response = Response::default();
            }
            let forwarded = UpstreamRecord {
                heads: usize::from(outcome.forwarded),
                whole: usize::from(outcome.forwarded_whole),
            };
            let exchange = Exchange::new(response, forwarded);
            for problem in step.expect.check(&step.request, &exchange) {
                failed = true;
                failures.push(format!("[{protocol:?}] step {}: {problem}", n + 1));
            }
        }
        if failed {
            let text = h.log_text();
            if !text.is_empty() {
                log.push_str(&format!("module log [{protocol:?}]:\n{text}\n"));
            }
        }
    }
    if failures.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(failures)
    }
}

/// The case files compare text; byte-exact header checks live in the host's own tests.
fn lossy(headers: &host::Headers) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}
