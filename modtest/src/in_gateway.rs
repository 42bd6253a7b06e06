//! Runs a case file through `gateway`, wasmgate's data plane (the gateway crate's own server,
//! started in this process), over real sockets with the real echo upstream behind.
//!
//! Cases that share an environment (secrets) share one gateway; every case and protocol gets
//! its own service and route (selected by an `x-wasmgate-case` header) and its own module
//! instance: wasmgate's plugins as Kong `plugins`, any other module as a `filter_chains`
//! filter from the module's folder, with its root id and plugin name. A case about routes
//! (`paths`) gets the module on those paths only, and a route without it on every other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cases::{refusal_says, Accounting, Case, CaseFile, ModuleSpec};
use crate::client::Protocol;
use crate::planes::{self, FileRun, Observations, Settings};
use crate::report::Verdict;

pub const TARGET: &str = "gateway";

/// The header that selects a case's route.
pub const CASE_HEADER: &str = "x-wasmgate-case";

fn options(module: &ModuleSpec, env: &BTreeMap<String, String>) -> gateway::GatewayOptions {
    let dir = module
        .path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    gateway::GatewayOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: None,
        workers: 2,
        drain_timeout: Duration::from_secs(2),
        // The access log would interleave with the report on stdout.
        access_log: false,
        runtime: gateway::filters::RuntimeOptions {
            modules_dir: dir.clone(),
            filters_dir: Some(dir),
            env_values: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Default::default()
        },
        ..gateway::GatewayOptions::default()
    }
}

/// The name of a case's service and route for one protocol.
pub fn route_name(i: usize, protocol: Protocol) -> String {
    format!("case-{i}-{protocol:?}").to_lowercase()
}

/// The declarative configuration of a group of cases: a service and route per case and
/// protocol, the module on that route.
pub fn declarative(
    module: &ModuleSpec,
    routes: &[(usize, &Case, Protocol)],
    upstream: SocketAddr,
) -> String {
    let mut services = Vec::new();
    let mut filter_chains = Vec::new();
    for (i, case, protocol) in routes {
        let name = route_name(*i, *protocol);
        let mut route = json!({
            "name": name,
            "paths": case.paths.clone().unwrap_or_else(|| vec!["/".into()]),
            "headers": {CASE_HEADER: [name]},
            "strip_path": false,
            "preserve_host": true,
        });
        if module.wasmgate_plugin {
            let config = module.kong_config(case);
            route["plugins"] = json!([{"name": module.plugin_name, "config": config}]);
        } else {
            let stem = module
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            filter_chains.push(json!({
                "route": name,
                "filters": [{
                    "name": stem,
                    "config": module.configuration(case),
                    "root_id": module.root_id,
                    "plugin_name": module.plugin_name,
                    "allow_on_headers_stop_iteration": module.allow_on_headers_stop_iteration,
                }],
            }));
        }
        let mut routes = vec![route];
        if case.paths.is_some() {
            routes.push(json!({
                "name": format!("{name}-open"),
                "paths": ["/"],
                "headers": {CASE_HEADER: [name]},
                "strip_path": false,
                "preserve_host": true,
            }));
        }
        services.push(json!({
            "name": name,
            "url": format!("http://{upstream}"),
            "routes": routes,
        }));
    }
    let mut config = json!({"_format_version": "3.0", "services": services});
    if !filter_chains.is_empty() {
        config["filter_chains"] = json!(filter_chains);
    }
    config.to_string()
}

/// Runs every case of `file` in `gateway`; `done` is called with each result.
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
    let mut logs: Vec<String> = vec![String::new(); file.cases.len()];
    // Cases by the environment (secrets) they need: one gateway per group.
    let mut groups: BTreeMap<Vec<(String, String)>, Vec<usize>> = BTreeMap::new();
    for (i, case) in file.cases.iter().enumerate() {
        if let Some(expected) = case.config_error() {
            // One route, so the error lists each of the case's fields once.
            let started = Instant::now();
            let text = declarative(module, &[(i, case, Protocol::Http1)], echo.addr());
            let verdict = match gateway::Gateway::start(options(module, &case.env), &text) {
                Ok(_) => {
                    Verdict::Failed(vec!["the gateway accepted a config it must refuse".into()])
                }
                Err(e) if refusal_says(expected, &e) => Verdict::Passed,
                Err(e) => Verdict::Failed(vec![format!("refused, but not with {expected:?}: {e}")]),
            };
            verdicts[i] = (Some(verdict), started.elapsed());
            continue;
        }
        if let Some(why) = planes::skip_reason(case, settings, true) {
            verdicts[i].0 = Some(Verdict::Skipped(why));
            continue;
        }
        let env = case
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        groups.entry(env).or_default().push(i);
    }
    for (env, cases) in groups {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let routes: Vec<_> = cases
            .iter()
            .flat_map(|&i| {
                let case = &file.cases[i];
                case.protocols().into_iter().map(move |p| (i, case, p))
            })
            .collect();
        let text = declarative(module, &routes, echo.addr());
        let gateway = match gateway::Gateway::start(options(module, &env), &text) {
            Ok(gateway) => gateway,
            Err(e) => {
                for &i in &cases {
                    verdicts[i].0 = Some(Verdict::Failed(vec![format!(
                        "the gateway did not start: {e}"
                    )]));
                }
                continue;
            }
        };
        for &i in &cases {
            let case = &file.cases[i];
            let started = Instant::now();
            let mark = crate::capture::mark();
            let mut problems = Vec::new();
            for protocol in case.protocols() {
                let name = route_name(i, protocol);
                problems.extend(
                    planes::run_case_steps(
                        module,
                        &echo,
                        &mut accounting,
                        &mut observed,
                        (i, case),
                        protocol,
                        gateway.addr(),
                        Some((CASE_HEADER, &name)),
                    )
                    .await,
                );
            }
            verdicts[i] = (Some(planes::verdict(problems)), started.elapsed());
            logs[i] = crate::capture::since(mark);
        }
    }
    let mut results = planes::results(file, TARGET, verdicts, &echo, &accounting);
    // What the modules logged while each case ran (cases run one after the other).
    for (result, log) in results.iter_mut().zip(logs) {
        if result.failed() && !log.is_empty() {
            result.log = format!("module log:\n{log}");
        }
    }
    results.iter().for_each(&mut done);
    FileRun { results, observed }
}
