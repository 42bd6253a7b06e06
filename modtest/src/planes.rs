//! What the targets with real sockets (`gateway`, Envoy) share: the run's settings, how a
//! case's steps are sent to a listener with the real clock, and the record of every answer
//! the differential mode compares.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cases::{
    clear_of_a_window_boundary, run_step, unaccounted, Accounting, Case, CaseFile, Exchange,
    ModuleSpec,
};
use crate::client::Protocol;
use crate::echo::EchoUpstream;
use crate::report::{CaseResult, Verdict};

/// How a run with the real clock goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The longest a step's `advance` may make a case wait; a case that needs more is
    /// skipped there (the in-process host runs it with its manual clock).
    pub max_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Every step's answer on one data plane, by case index, protocol and step index.
pub type Observations = BTreeMap<(usize, Protocol, usize), Result<Exchange, String>>;

/// A file's run on one data plane.
#[derive(Debug, Default)]
pub struct FileRun {
    pub results: Vec<CaseResult>,
    pub observed: Observations,
}

/// Why a case does not run on a data plane with the real clock and routes of its own, if it
/// does not.
pub fn skip_reason(case: &Case, settings: &Settings, routes: bool) -> Option<String> {
    if case.paths.is_some() && !routes {
        return Some("a case about routes (`paths`): this target has one route per case".into());
    }
    let wait: f64 = case.steps().iter().filter_map(|s| s.advance).sum();
    (wait > settings.max_wait.as_secs_f64()).then(|| {
        format!(
            "its steps advance the clock {wait} s, more than --max-wait ({} s) of real time: the host runs it",
            settings.max_wait.as_secs_f64()
        )
    })
}

/// Sends every step of `case` over `protocol` to `addr`, waiting out each step's
/// `advance`; returns the problems, each naming protocol and step.
#[allow(clippy::too_many_arguments)]
pub async fn run_case_steps(
    module: &ModuleSpec,
    echo: &EchoUpstream,
    accounting: &mut Accounting,
    observed: &mut Observations,
    (index, case): (usize, &Case),
    protocol: Protocol,
    addr: SocketAddr,
    extra_header: Option<(&str, &str)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    clear_of_a_window_boundary(module).await;
    for (n, step) in case.steps().iter().enumerate() {
        if let Some(seconds) = step.advance {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        }
        let mut request = step.request.to_request();
        if let Some((name, value)) = extra_header {
            request.headers.push((name.into(), value.into()));
        }
        let label = format!("[{protocol:?}] step {}", n + 1);
        let (exchange, found) = run_step(
            echo,
            step,
            &request,
            addr,
            protocol,
            accounting,
            index,
            format!("{:?} {label}", case.name),
        )
        .await;
        observed.insert((index, protocol, n), exchange);
        problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
    }
    problems
}

/// The case results of a file once every case ran: `verdicts` by case index (a case without
/// one failed to run at all), the upstream's late counts added.
pub fn results(
    file: &CaseFile,
    target: &str,
    mut verdicts: Vec<(Option<Verdict>, Duration)>,
    echo: &EchoUpstream,
    accounting: &Accounting,
) -> Vec<CaseResult> {
    let (general, by_case) = unaccounted(echo, accounting);
    for (case, problem) in by_case {
        if let Some((verdict, _)) = verdicts.get_mut(case) {
            match verdict {
                Some(Verdict::Failed(problems)) => problems.push(problem),
                _ => *verdict = Some(Verdict::Failed(vec![problem])),
            }
        }
    }
    let mut results: Vec<CaseResult> = file
        .cases
        .iter()
        .zip(verdicts)
        .enumerate()
        .map(|(i, (case, (verdict, time)))| {
            let verdict = verdict.unwrap_or_else(|| Verdict::Failed(vec!["did not run".into()]));
            CaseResult {
                file: file.path.clone(),
                line: file.line_of(i),
                case: case.name.clone(),
                target: target.into(),
                log: String::new(),
                verdict,
                time,
            }
        })
        .collect();
    // A head no step sent belongs to no case: every case that ran there is suspect.
    if !general.is_empty() {
        for result in &mut results {
            if let Verdict::Passed = result.verdict {
                result.verdict = Verdict::Failed(general.clone());
            }
        }
    }
    results
}

/// The last `lines` lines of a log.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A verdict from a case's problems.
pub fn verdict(problems: Vec<String>) -> Verdict {
    if problems.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(problems)
    }
}

/// A file none of whose cases could run: each fails with `why`.
pub fn all_failed(file: &CaseFile, target: &str, why: &str) -> FileRun {
    let results = file
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| CaseResult {
            file: file.path.clone(),
            line: file.line_of(i),
            case: case.name.clone(),
            target: target.into(),
            verdict: Verdict::Failed(vec![why.to_owned()]),
            time: Duration::ZERO,
            log: String::new(),
        })
        .collect();
    FileRun {
        results,
        observed: Observations::new(),
    }
}
