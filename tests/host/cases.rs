//! Every shared case file, run in the in-process host (wasmtime) with the same expectations
//! (`Expect::check`) as in Envoy: a data plane that answers differently fails here.

#[path = "runner.rs"]
mod runner;

use wasmgate_tests::cases::CaseFile;

/// Every case file in `tests/cases`, each on its own thread.
#[test]
fn every_case_file_in_the_host() {
    let files = CaseFile::load_all().expect("case files parse");
    assert!(!files.is_empty(), "no case files found");
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                scope.spawn(move || {
                    (
                        file.path.display().to_string(),
                        runner::run_file(file, None),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok((path, failures)) => failures
                    .into_iter()
                    .map(|f| format!("{path}: {f}"))
                    .collect::<Vec<_>>(),
                Err(_) => vec!["a case-file thread panicked".to_owned()],
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
