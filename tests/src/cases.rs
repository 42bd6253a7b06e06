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

/// Runs a case file in one real Envoy: a listener (and VM) per case and protocol, every step
/// over a fresh connection; refused-config cases each start an Envoy that must fail. Returns
/// every failure, each naming its case, protocol and step.
pub async fn run_in_envoy(file: &CaseFile) -> Vec<String> {
    use crate::envoy::{Envoy, EnvoyConfig, WasmFilter};

    let module = match module_of(file) {
        Ok(module) => module,
        Err(e) => return vec![e],
    };
    let mut failures = Vec::new();
    let echo = match crate::EchoUpstream::start().await {
        Ok(echo) => echo,
        Err(e) => return vec![format!("echo upstream: {e}")],
    };
    let mut accounting = Accounting::default();
    let filter = |case: &Case, listener: &str| {
        // As the data planes hand it to the module.
        let config = module.config_json(case, None);
        let mut filter = WasmFilter::plugin(&module.plugin_name, config)
            .vm_id(format!("{}-{listener}", module.plugin_name));
        for (k, v) in &case.env {
            filter = filter.env(k, v);
        }
        filter
    };

    let mut config = EnvoyConfig::new(echo.addr());
    let mut runs = Vec::new();
    let mut refusals = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        if let Some(expected) = case.config_error() {
            let name = format!("refused-{i}");
            let bad = EnvoyConfig::new(echo.addr()).listener(&name, vec![filter(case, &name)]);
            refusals.push((case, expected.to_owned(), bad));
            continue;
        }
        if case.paths.is_some() {
            continue;
        }
        for protocol in case.protocols() {
            let name = format!("case-{i}-{protocol:?}").to_lowercase();
            config = config.listener(&name, vec![filter(case, &name)]);
            runs.push((case, protocol, name));
        }
    }

    if !runs.is_empty() {
        match Envoy::start(&config).await {
            Err(e) => failures.push(format!("{}: Envoy did not start: {e}", file.path.display())),
            Ok(envoy) => {
                for (case, protocol, listener) in &runs {
                    clear_of_a_window_boundary(&module).await;
                    let addr = envoy.listener(listener);
                    for (n, step) in case.steps().iter().enumerate() {
                        let request = step.request.to_request();
                        let label = format!("{:?} [{protocol:?}] step {}", case.name, n + 1);
                        let (_, problems) = run_step(
                            &echo,
                            step,
                            &request,
                            addr,
                            *protocol,
                            &mut accounting,
                            label.clone(),
                        )
                        .await;
                        for problem in problems {
                            failures.push(format!("{label}: {problem}"));
                        }
                    }
                }
                check_unaccounted(&echo, &accounting, &mut failures);
                if !failures.is_empty() {
                    failures.push(format!("Envoy log:\n{}", envoy.log()));
                }
            }
        }
    }

    for (case, expected, bad) in refusals {
        match Envoy::start(&bad).await {
            Ok(_) => failures.push(format!(
                "{:?}: Envoy accepted a config it must refuse",
                case.name
            )),
            Err(log) if refusal_says(&expected, &log) => {}
            Err(log) => failures.push(format!(
                "{:?}: Envoy refused the config, but its log lacks {expected:?}:\n{log}",
                case.name
            )),
        }
    }
    failures
}
