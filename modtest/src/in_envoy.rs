//! Runs a case file in a real Envoy 1.40: one Envoy per file with a listener (and VM) per
//! case and protocol, every step over a fresh connection to it, the real echo upstream
//! behind; a case whose config must be refused starts an Envoy of its own that must fail,
//! with the expected text in its log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cases::{refusal_says, Accounting, Case, CaseFile, ModuleSpec};
use crate::envoy::{Envoy, EnvoyConfig, ListenerSpec};
use crate::planes::{self, FileRun, Observations, Settings};
use crate::report::Verdict;

pub const TARGET: &str = "envoy";

/// The `envoy.filters.http.wasm` filter of a case on `listener`: the module as it is given,
/// with its plugin name (one instance per listener, as every instance of a translated
/// config), root id, configuration, environment and VM of its own.
fn wasm_filter(module: &ModuleSpec, case: &Case, listener: &str, runtime: &str) -> Value {
    let env: serde_json::Map<String, Value> = case
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let path = std::path::absolute(&module.path).unwrap_or_else(|_| module.path.clone());
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": format!("{}@{listener}", module.plugin_name),
                "root_id": module.root_id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": module.configuration(case),
                },
                // Envoy's default (FAIL_CLOSED) answers 503 on that worker forever after one
                // trap; FAIL_RELOAD rebuilds the VM, as wasmgate does.
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": module.allow_on_headers_stop_iteration,
                "vm_config": {
                    "vm_id": format!("{}-{listener}", module.plugin_name),
                    "runtime": runtime,
                    "code": {"local": {"filename": path.to_string_lossy()}},
                    "environment_variables": {"key_values": env},
                },
            },
        },
    })
}

fn listener(config: &mut EnvoyConfig, module: &ModuleSpec, case: &Case, name: &str) {
    let filter = wasm_filter(module, case, name, &config.runtime);
    config.listeners.push(ListenerSpec {
        name: name.to_owned(),
        filters: Vec::new(),
        native_filters: vec![filter],
    });
}

/// Runs every case of `file` in Envoy; `done` is called with each result.
pub async fn run_file(
    file: &CaseFile,
    module: &ModuleSpec,
    settings: &Settings,
    mut done: impl FnMut(&crate::report::CaseResult),
) -> FileRun {
    let echo = match crate::EchoUpstream::start().await {
        Ok(echo) => echo,
        Err(e) => return planes::all_failed(file, TARGET, &format!("echo upstream: {e}")),
    };
    let mut accounting = Accounting::default();
    let mut observed = Observations::new();
    let mut verdicts: Vec<(Option<Verdict>, Duration)> =
        file.cases.iter().map(|_| (None, Duration::ZERO)).collect();

    let mut config = EnvoyConfig::new(echo.addr());
    let mut runs = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        if case.config_error().is_some() {
            continue;
        }
        if let Some(why) = planes::skip_reason(case, settings, false) {
            verdicts[i].0 = Some(Verdict::Skipped(why));
            continue;
        }
        runs.push(i);
        for protocol in case.protocols() {
            listener(&mut config, module, case, &listener_name(i, protocol));
        }
    }

    let mut log = String::new();
    if !runs.is_empty() {
        match Envoy::start(&config).await {
            Err(e) => {
                for &i in &runs {
                    verdicts[i].0 =
                        Some(Verdict::Failed(vec![format!("Envoy did not start: {e}")]));
                }
            }
            Ok(envoy) => {
                for &i in &runs {
                    let case = &file.cases[i];
                    let started = Instant::now();
                    let mut problems = Vec::new();
                    for protocol in case.protocols() {
                        let addr = envoy.listener(&listener_name(i, protocol));
                        problems.extend(
                            planes::run_case_steps(
                                module,
                                &echo,
                                &mut accounting,
                                &mut observed,
                                (i, case),
                                protocol,
                                addr,
                                None,
                            )
                            .await,
                        );
                    }
                    verdicts[i] = (Some(planes::verdict(problems)), started.elapsed());
                }
                log = envoy.log();
            }
        }
    }

    for (i, case) in file.cases.iter().enumerate() {
        let Some(expected) = case.config_error() else {
            continue;
        };
        let started = Instant::now();
        let name = format!("refused-{i}");
        let mut bad = EnvoyConfig::new(echo.addr());
        listener(&mut bad, module, case, &name);
        let verdict = match Envoy::start(&bad).await {
            Ok(_) => Verdict::Failed(vec!["Envoy accepted a config it must refuse".into()]),
            Err(log) if refusal_says(expected, &log) => Verdict::Passed,
            Err(log) => Verdict::Failed(vec![format!(
                "Envoy refused the config, but its log lacks {expected:?}:\n{}",
                planes::tail(&log, 30)
            )]),
        };
        verdicts[i] = (Some(verdict), started.elapsed());
    }

    let mut results = planes::results(file, TARGET, verdicts, &echo, &accounting);
    // Envoy names each filter instance `<plugin>@<listener>` in the lines its modules log.
    for (i, result) in results.iter_mut().enumerate() {
        let mark = format!("@case-{i}-http");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&mark)).collect();
        if result.failed() && !lines.is_empty() {
            result.log = format!("Envoy's lines of this case:\n{}", lines.join("\n"));
        }
    }
    results.iter().for_each(&mut done);
    FileRun { results, observed }
}

fn listener_name(i: usize, protocol: crate::Protocol) -> String {
    format!("case-{i}-{protocol:?}").to_lowercase()
}
