//! Runs a case file through wasmgate's own data plane, `gateway`, and through a real Envoy
//! started from `gateway envoy-bootstrap`'s translation of the very same declarative file,
//! side by side over real sockets: both must meet every expectation, answer every step with
//! the same status, and refuse the same configurations with the same error. (The randomised
//! differential test, `tests/envoy/differential.rs`, compares the two planes' answers and
//! upstream requests byte for byte, on routes that strip paths and rewrite hosts.)
//!
//! Cases that share an environment (secrets) share one gateway and one Envoy; every case and
//! protocol gets its own route (selected by an `x-wasmgate-case` header) and its own plugin
//! instance, in the declarative file `modtest`'s gateway target writes
//! (`modtest::in_gateway::declarative`).

use std::collections::BTreeMap;
use std::time::Duration;

use modtest::in_gateway::{declarative, route_name, CASE_HEADER};

use crate::cases::{run_step, Case, CaseFile};
use crate::client::Protocol;

fn options(env: &BTreeMap<String, String>) -> gateway::GatewayOptions {
    let mut options = crate::gateway::options();
    options.admin_listen = None;
    options.drain_timeout = Duration::from_secs(2);
    options.runtime.env_values = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    options
}

/// Cases (with their index in the file) that run on one gateway.
type CaseGroup<'a> = Vec<(usize, &'a Case)>;

/// Runs every case of `file` in gateway and in Envoy, side by side; returns every failure.
pub async fn run_in_gateway(file: &CaseFile) -> Vec<String> {
    let module = match crate::cases::module_of(file) {
        Ok(module) => module,
        Err(e) => return vec![e],
    };
    let mut failures = Vec::new();
    let echo = match crate::EchoUpstream::start().await {
        Ok(echo) => echo,
        Err(e) => return vec![format!("echo upstream: {e}")],
    };
    let mut accounting = crate::cases::Accounting::default();
    // Refused configs: the whole declarative file is refused, naming the plugin's field, by
    // the gateway and by the Envoy translated from it alike.
    // Cases by the environment (secrets) they need: one gateway and one Envoy per group.
    let mut groups: BTreeMap<Vec<(String, String)>, CaseGroup<'_>> = BTreeMap::new();
    for (i, case) in file.cases.iter().enumerate() {
        if let Some(expected) = case.config_error() {
            // One route, so the error lists each of the case's fields once.
            let text = declarative(&module, &[(i, case, Protocol::Http1)], echo.addr());
            let refusals = [
                (
                    "gateway",
                    gateway::Gateway::start(options(&case.env), &text).map(drop),
                ),
                (
                    "Envoy from the translation",
                    start_envoy(&text, &case.env).await.map(drop),
                ),
            ];
            for (plane, refusal) in refusals {
                match refusal {
                    Ok(()) => failures.push(format!(
                        "{plane}: {:?}: accepted a config it must refuse",
                        case.name
                    )),
                    Err(e) if crate::cases::refusal_says(expected, &e) => {}
                    Err(e) => failures.push(format!(
                        "{plane}: {:?}: refused, but not with {expected:?}: {e}",
                        case.name
                    )),
                }
            }
            continue;
        }
        let env: Vec<(String, String)> = case
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        groups.entry(env).or_default().push((i, case));
    }
    for (env, cases) in groups {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let routes: Vec<_> = cases
            .iter()
            .flat_map(|(i, case)| case.protocols().into_iter().map(move |p| (*i, *case, p)))
            .collect();
        let text = declarative(&module, &routes, echo.addr());
        let gateway = match gateway::Gateway::start(options(&env), &text) {
            Ok(gateway) => gateway,
            Err(e) => {
                failures.push(format!(
                    "{}: the gateway did not start: {e}",
                    file.path.display()
                ));
                continue;
            }
        };
        let envoy = match start_envoy(&text, &env).await {
            Ok(envoy) => envoy,
            Err(e) => {
                failures.push(format!(
                    "{}: Envoy did not start from the translation: {e}",
                    file.path.display()
                ));
                continue;
            }
        };
        let targets = [
            ("gateway", gateway.addr()),
            ("Envoy", envoy.listener("wasmgate")),
        ];
        for (i, case) in &cases {
            for protocol in case.protocols() {
                let name = route_name(*i, protocol);
                crate::cases::clear_of_a_window_boundary(&module).await;
                for (n, step) in case.steps().iter().enumerate() {
                    let mut request = step.request.to_request();
                    request.headers.push((CASE_HEADER.into(), name.clone()));
                    let mut statuses = Vec::new();
                    for (plane, addr) in targets {
                        let label =
                            format!("{plane}: {:?} [{protocol:?}] step {}", case.name, n + 1);
                        let (exchange, problems) = run_step(
                            &echo,
                            step,
                            &request,
                            addr,
                            protocol,
                            &mut accounting,
                            *i,
                            label.clone(),
                        )
                        .await;
                        statuses.extend(exchange.map(|e| e.response.status));
                        for problem in problems {
                            failures.push(format!("{label}: {problem}"));
                        }
                    }
                    if statuses.len() == 2 && statuses[0] != statuses[1] {
                        failures.push(format!(
                            "{:?} [{protocol:?}] step {}: gateway answered {}, Envoy {}",
                            case.name,
                            n + 1,
                            statuses[0],
                            statuses[1]
                        ));
                    }
                }
            }
        }
        crate::cases::check_unaccounted(&echo, &accounting, &mut failures);
        if !failures.is_empty() {
            failures.push(format!("Envoy log:\n{}", envoy.log()));
        }
    }
    failures
}

/// A real Envoy from the model's translation of `declarative`.
async fn start_envoy(
    declarative: &str,
    env: &BTreeMap<String, String>,
) -> Result<crate::Envoy, String> {
    let config = model::parse_declarative_checked(declarative, &schemas::check)
        .map_err(|e| e.to_string())?;
    let options = model::envoy::EnvoyOptions {
        env_values: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..crate::envoy::translation_options()
    };
    crate::Envoy::start_bootstrap(&model::envoy::bootstrap(&config, &options), 2).await
}
