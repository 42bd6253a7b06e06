//! Every shared case file, run in a real Envoy (one test per plugin, so they run in parallel).

use wasmgate_tests::cases::{load_named, run_in_envoy};

async fn run(stem: &str) -> Vec<String> {
    match load_named(stem) {
        Ok(file) => run_in_envoy(&file).await,
        Err(e) => vec![e],
    }
}

wasmgate_tests::case_file_tests!(run);
