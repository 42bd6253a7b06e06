//! The shared case files of `tests/cases`, run on every data plane: the model, its checks and
//! the in-process host's runner are `modtest`'s (the command users run on their own modules),
//! re-exported here; this adds what only this workspace needs: where its case files and
//! modules are, the macro that makes a test per file on every target, and the Envoy runner of
//! the test's own bootstrap.

use std::path::PathBuf;

pub use modtest::cases::*;

/// The module a case file of this workspace tests: a wasmgate plugin from the built modules
/// (`WASMGATE_WASM_DIR`), or the file's own `module`.
pub fn module_of(file: &CaseFile) -> Result<ModuleSpec, String> {
    file.module_spec(&Overrides {
        modules_dir: Some(crate::paths::wasm_dir()),
        ..Overrides::default()
    })
}

/// Generates, in a data plane's test target, one test per case file (named after the plugin)
/// that calls `$run(stem).await` and fails on any failure it returns, and a guard test that
/// the list here is every file in `tests/cases`. Every target that runs case files uses it, so
/// a new case file runs on every data plane or fails every guard.
#[macro_export]
macro_rules! case_file_tests {
    ($run:path) => {
        $crate::case_file_tests!(@each $run;
            rate_limiting => "rate-limiting",
            request_size_limiting => "request-size-limiting",
            request_transformer => "request-transformer");
    };
    (@each $run:path; $($test:ident => $stem:literal),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let failures: Vec<String> = $run($stem).await;
                assert!(
                    failures.is_empty(),
                    "{} failures:\n{}",
                    failures.len(),
                    failures.join("\n\n")
                );
            }
        )*

        #[test]
        fn every_case_file_is_run() {
            $crate::cases::assert_every_file_listed(&[$($stem),*]);
        }
    };
}

/// Fails unless `listed` names every case file in `tests/cases` (and no other).
pub fn assert_every_file_listed(listed: &[&str]) {
    let files = CaseFile::load_dir(&cases_dir()).unwrap_or_else(|e| panic!("case files: {e}"));
    let mut stems: Vec<String> = files
        .iter()
        .filter_map(|f| f.path.file_stem()?.to_str().map(str::to_owned))
        .collect();
    stems.sort();
    let mut listed: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(
        stems, listed,
        "tests/cases holds other files than case_file_tests! lists: add the new file there"
    );
}

/// Loads `tests/cases/<stem>.yaml`.
pub fn load_named(stem: &str) -> Result<CaseFile, String> {
    CaseFile::load(&cases_dir().join(format!("{stem}.yaml")))
}

/// The folder with the shared case files.
pub fn cases_dir() -> PathBuf {
    crate::paths::workspace_root().join("tests/cases")
}

/// Runs a case file in one real Envoy through `modtest::in_envoy`, the `modtest` command's
/// own Envoy target: a listener (and VM) per case and protocol, every step over a fresh
/// connection; refused-config cases each start an Envoy that must fail. Returns every
/// failure, each naming its case, protocol and step, with Envoy's log.
pub async fn run_in_envoy(file: &CaseFile) -> Vec<String> {
    let module = match module_of(file) {
        Ok(module) => module,
        Err(e) => return vec![e],
    };
    let run = modtest::in_envoy::run_file(file, &module, &Default::default(), |_| {}).await;
    failures(run.results)
}

/// The failures among `results`, one text each with the case's name and the data plane's log.
pub fn failures(results: Vec<modtest::report::CaseResult>) -> Vec<String> {
    results
        .into_iter()
        .filter_map(|result| match result.verdict {
            modtest::report::Verdict::Failed(problems) => Some(format!(
                "{:?}: {}\n{}",
                result.case,
                problems.join("\n"),
                result.log
            )),
            _ => None,
        })
        .collect()
}
