//! Every shared case file, run in the in-process host (wasmtime) with the same expectations
//! (`Expect::check`) as in Envoy: a data plane that answers differently fails here.

use crate::runner;

use wasmgate_tests::cases::load_named;

async fn run(stem: &str) -> Vec<String> {
    match load_named(stem) {
        // The harness is synchronous; keep it off the async workers.
        Ok(file) => tokio::task::spawn_blocking(move || runner::run_file(&file, None))
            .await
            .unwrap_or_else(|e| vec![format!("the case-file runner panicked: {e}")]),
        Err(e) => vec![e],
    }
}

wasmgate_tests::case_file_tests!(run);
