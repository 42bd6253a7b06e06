//! Every shared case file, run through `gateway` over real sockets (one test per plugin). The
//! same files run in Envoy (`tests/envoy/cases.rs`): both must meet every expectation.

use wasmgate_tests::cases::{cases_dir, CaseFile};
use wasmgate_tests::gateway_cases::run_in_gateway;

async fn run(name: &str) {
    let file = CaseFile::load(&cases_dir().join(format!("{name}.yaml"))).expect("case file parses");
    let failures = run_in_gateway(&file).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limiting() {
    run("request-size-limiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting() {
    run("rate-limiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_transformer() {
    run("request-transformer").await;
}
