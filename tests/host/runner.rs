//! Runs a case file in the in-process host (wasmtime) with the same expectations
//! (`Expect::check`) as in Envoy. Shared by the tests of `in_host`.
//!
//! Each case runs on a fresh harness per protocol (like a listener per case in Envoy), with
//! the client at `127.0.0.1:<port>`, the route named after the listener and the cluster
//! `upstream`. An in-process echo answers with the same report the real echo upstream sends.

use std::net::SocketAddr;
use std::path::Path;

use host::testing::{Harness, TestBody, TestRequest, TestResponse, UpstreamRequest};
use host::{Error, PluginConfig};
use wasmgate_tests::cases::{Case, CaseFile, Exchange};
use wasmgate_tests::client::{filler_chunk, Protocol, RequestBody, Response};
use wasmgate_tests::echo::{EchoReport, UpstreamRecord, ECHO_HEADER};

/// The request as the host harness takes it.
fn test_request(
    case_request: &wasmgate_tests::cases::CaseRequest,
    protocol: Protocol,
) -> TestRequest {
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
    let path = req.path.clone();
    let report = EchoReport::from_parts(
        &req.method,
        &path,
        "HTTP/1.1",
        req.headers.0.clone(),
        &req.body,
    );
    let body = serde_json::to_vec(&report).unwrap_or_default();
    TestResponse::new(
        200,
        &[("content-type", "application/json"), (ECHO_HEADER, "1")],
        &body,
    )
}

fn harness(
    file: &CaseFile,
    module: Option<&Path>,
    case: &Case,
    listener: &str,
    port: u16,
) -> Result<Harness, Error> {
    let module = match module {
        Some(path) => path.to_owned(),
        None => wasmgate_tests::paths::plugin_module(&file.plugin),
    };
    let mut h = Harness::new()?;
    h.set_source(SocketAddr::from(([127, 0, 0, 1], port)));
    h.set_route(listener, "upstream");
    h.set_upstream(echo);
    // As the data planes hand it to the module.
    let mut plugin_config = case.config.clone();
    model::plugins::data_plane_defaults(&file.plugin, &mut plugin_config);
    // As `gateway` and the Envoy translation set it: only wasmgate's own plugins.
    let mut config = PluginConfig::new(&file.plugin, plugin_config.to_string())
        .vm_id(&format!("{}-{listener}", file.plugin))
        .allow_on_headers_stop_iteration(model::plugins::find(&file.plugin).is_some());
    for (k, v) in &case.env {
        config = config.env(k, v);
    }
    h.load_file(&module, config)?;
    Ok(h)
}

/// Runs a case file; returns every failure, naming case, protocol and step.
/// `module`: the `.wasm` to load instead of the plugin's built module.
pub fn run_file(file: &CaseFile, module: Option<&Path>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        // A case about routes: the host has none.
        if case.paths.is_some() {
            continue;
        }
        if let Some(expected) = case.config_error() {
            let name = format!("refused-{i}");
            match harness(file, module, case, &name, 40000) {
                Ok(_) => failures.push(format!(
                    "{:?}: the host accepted a config it must refuse",
                    case.name
                )),
                Err(Error::ConfigRefused { reason, .. })
                    if wasmgate_tests::cases::refusal_says(expected, &reason) => {}
                Err(e) => failures.push(format!(
                    "{:?}: refused, but not with {expected:?}: {e}",
                    case.name
                )),
            }
            continue;
        }
        for protocol in case.protocols() {
            let listener = format!("case-{i}-{protocol:?}").to_lowercase();
            let mut h = match harness(file, module, case, &listener, 40000 + i as u16) {
                Ok(h) => h,
                Err(e) => {
                    failures.push(format!("{:?} [{protocol:?}]: {e}", case.name));
                    continue;
                }
            };
            for (n, step) in case.steps().iter().enumerate() {
                h.set_source(SocketAddr::new(step.request.source, 40000 + i as u16));
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
                    failures.push(format!(
                        "{:?} [{protocol:?}] step {}: {problem}\nmodule log:\n{}",
                        case.name,
                        n + 1,
                        h.log_text()
                    ));
                }
            }
        }
    }
    failures
}

/// The case files compare text; byte-exact header checks live in `hostile.rs`.
fn lossy(headers: &host::Headers) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}
