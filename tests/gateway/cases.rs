//! Every shared case file, run through `gateway` and through a real Envoy started from
//! `gateway envoy-bootstrap`'s translation of the same declarative file, over real sockets (one
//! test per plugin). The same files run in Envoy's own bootstrap (`tests/envoy/cases.rs`) and
//! in the in-process host (`tests/host/cases.rs`).

use wasmgate_tests::cases::load_named;
use wasmgate_tests::gateway_cases::run_in_gateway;

async fn run(stem: &str) -> Vec<String> {
    match load_named(stem) {
        Ok(file) => run_in_gateway(&file).await,
        Err(e) => vec![e],
    }
}

wasmgate_tests::case_file_tests!(run);
