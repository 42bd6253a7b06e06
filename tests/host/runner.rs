//! Runs a case file in the in-process host through `modtest::in_host`, the runner of the
//! `modtest` command itself, and returns its failures as text for the tests' assertions.

use std::path::Path;

use wasmgate_tests::cases::{failures, module_of, CaseFile};

/// Runs a case file; returns every failure, naming case, protocol and step, with the
/// module's log. `module`: the `.wasm` to load instead of the plugin's built module.
pub fn run_file(file: &CaseFile, module: Option<&Path>) -> Vec<String> {
    let mut spec = match module_of(file) {
        Ok(spec) => spec,
        Err(e) => return vec![e],
    };
    if let Some(path) = module {
        spec.path = path.to_owned();
    }
    failures(modtest::in_host::run_file(file, &spec, |_| {}))
}
