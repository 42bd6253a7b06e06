//! Every shared case file, run in a real Envoy (one test per plugin, so they run in parallel).

use wasmgate_tests::cases::{cases_dir, run_in_envoy, CaseFile};

/// The case files this target runs; a file added to `tests/cases` must be listed here.
const FILES: &[&str] = &[
    "request-size-limiting",
    "request-transformer",
    "rate-limiting",
];

async fn run(name: &str) {
    let file = CaseFile::load(&cases_dir().join(format!("{name}.yaml"))).expect("case file parses");
    let failures = run_in_envoy(&file).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limiting() {
    run("request-size-limiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_transformer() {
    run("request-transformer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting() {
    run("rate-limiting").await;
}

#[test]
fn every_case_file_is_run() {
    let files = CaseFile::load_all().expect("case files parse");
    for file in files {
        let stem = file
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            FILES.contains(&stem.as_str()),
            "{stem}.yaml is not run in Envoy: add it to FILES"
        );
    }
}
