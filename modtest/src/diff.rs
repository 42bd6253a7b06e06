//! The differential mode: every step's answer from `gateway` and from Envoy, compared field
//! by field whatever the case expects. What differs by design between two proxies and says
//! nothing about the module is left out: the request id each assigns (compared as a
//! placeholder where the body carries it), the headers each proxy adds of its own
//! ([`PROXY_HEADERS`], `x-envoy-*`, `x-forwarded-*`), framing (Content-Length,
//! Transfer-Encoding), and the response headers a step itself says vary (those it names in
//! `present_headers` or `header_ranges`: values that follow the clock, as a rate limit's
//! reset, differ between two runs a second apart).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cases::{split_header, CaseFile, Exchange, ModuleSpec};
use crate::planes::Observations;
use crate::report::{CaseResult, Verdict};

pub const TARGET: &str = "gateway-vs-envoy";

/// Headers a proxy adds or frames by itself, on responses or towards the upstream.
/// Envoy's own `x-envoy-*` and the `x-forwarded-*` family are left out by prefix.
pub const PROXY_HEADERS: [&str; 12] = [
    "date",
    "server",
    "x-request-id",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "via",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-real-ip",
    "x-wasmgate-case-step",
];

fn compared(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !PROXY_HEADERS.contains(&name.as_str())
        && !name.starts_with("x-forwarded-")
        && !name.starts_with("x-envoy-")
        && name != crate::in_gateway::CASE_HEADER
}

/// The headers compared, lower-cased, in order per name.
fn headers(list: &[(String, String)]) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = list
        .iter()
        .filter(|(k, _)| compared(k))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    // Names in any order (proxies order them differently), values of one name in order.
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    kept
}

/// Every way the two answers to one step differ; `varying`: response headers left out.
fn compare(gateway: &Exchange, envoy: &Exchange, varying: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (g, e) = (&gateway.response, &envoy.response);
    if g.status != e.status {
        out.push(format!("status: gateway {}, Envoy {}", g.status, e.status));
    }
    let id = |x: &Exchange| {
        x.response
            .header("x-request-id")
            .unwrap_or_default()
            .to_owned()
    };
    let body = |x: &Exchange| {
        let text = x.response.text();
        let id = id(x);
        if id.is_empty() {
            text
        } else {
            text.replace(&id, "$(request_id)")
        }
    };
    match (&gateway.upstream, &envoy.upstream) {
        (Some(gu), Some(eu)) => {
            let fields = [
                ("method", gu.method.clone(), eu.method.clone()),
                ("path", gu.path.clone(), eu.path.clone()),
                (
                    "query",
                    format!("{:?}", gu.query),
                    format!("{:?}", eu.query),
                ),
                ("body", gu.body_sha256.clone(), eu.body_sha256.clone()),
            ];
            for (name, a, b) in fields {
                if a != b {
                    out.push(format!("upstream {name}: gateway {a}, Envoy {b}"));
                }
            }
            header_diff("upstream", &gu.headers, &eu.headers, &[], &mut out);
        }
        (None, None) => {
            if body(gateway) != body(envoy) {
                out.push(format!(
                    "body: gateway {:?}, Envoy {:?}",
                    body(gateway),
                    body(envoy)
                ));
            }
        }
        (g, _) => out.push(format!(
            "upstream: {} answered, {} did not",
            if g.is_some() { "gateway's" } else { "Envoy's" },
            if g.is_some() { "Envoy's" } else { "gateway's" }
        )),
    }
    header_diff("response", &g.headers, &e.headers, varying, &mut out);
    out
}

fn header_diff(
    what: &str,
    g: &[(String, String)],
    e: &[(String, String)],
    varying: &[String],
    out: &mut Vec<String>,
) {
    let (g, e) = (headers(g), headers(e));
    let names: BTreeSet<&String> = g.iter().chain(e.iter()).map(|(k, _)| k).collect();
    for name in names {
        // The echo's answer header, and its report's length, are the upstream's own.
        if what == "response" && (name == crate::echo::ECHO_HEADER || name == "content-type") {
            continue;
        }
        if varying.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            continue;
        }
        let values = |list: &[(String, String)]| -> Vec<String> {
            list.iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let (a, b) = (values(&g), values(&e));
        if a != b {
            out.push(format!("{what} header {name}: gateway {a:?}, Envoy {b:?}"));
        }
    }
}

/// A result per case: where the two data planes' answers differ, step by step.
pub fn compare_file(
    file: &CaseFile,
    module: &ModuleSpec,
    gateway: &Observations,
    envoy: &Observations,
) -> Vec<CaseResult> {
    file.cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let keys: BTreeSet<_> = gateway
                .keys()
                .chain(envoy.keys())
                .filter(|(c, _, _)| *c == i)
                .collect();
            let ran = |o: &Observations| o.keys().any(|(c, _, _)| *c == i);
            let steps = case.steps();
            let verdict = if case.config_error().is_some() {
                Verdict::Skipped("a refused config: compared by its expectation on each".into())
            } else if !ran(gateway) || !ran(envoy) {
                Verdict::Skipped("did not run on both data planes".into())
            } else {
                let mut problems = Vec::new();
                for key in keys {
                    let (_, protocol, step) = key;
                    let label = format!("[{protocol:?}] step {}", step + 1);
                    let varying: Vec<String> = steps
                        .get(*step)
                        .map(|s| {
                            let ranged = s.expect.header_ranges.iter().map(|r| split_header(r).0);
                            (s.expect.present_headers.iter().cloned())
                                .chain(ranged)
                                .chain(module.diff_ignore_headers.iter().cloned())
                                .collect()
                        })
                        .unwrap_or_default();
                    match (gateway.get(key), envoy.get(key)) {
                        (Some(Ok(g)), Some(Ok(e))) => problems.extend(
                            compare(g, e, &varying)
                                .into_iter()
                                .map(|p| format!("{label}: {p}")),
                        ),
                        (Some(Err(g)), Some(Err(e))) if g == e => {}
                        (g, e) => problems.push(format!(
                            "{label}: gateway {}, Envoy {}",
                            outcome(g),
                            outcome(e)
                        )),
                    }
                }
                crate::planes::verdict(problems)
            };
            CaseResult {
                file: file.path.clone(),
                line: file.line_of(i),
                case: case.name.clone(),
                target: TARGET.into(),
                verdict,
                time: Duration::ZERO,
                log: String::new(),
            }
        })
        .collect()
}

fn outcome(x: Option<&Result<Exchange, String>>) -> String {
    match x {
        None => "did not run it".into(),
        Some(Ok(e)) => format!("answered {}", e.response.status),
        Some(Err(e)) => format!("failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Response;
    use crate::echo::{EchoReport, UpstreamRecord, ECHO_HEADER};

    fn local(status: u16, headers: &[(&str, &str)], body: &str) -> Exchange {
        let response = Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
            ..Response::default()
        };
        Exchange::new(response, UpstreamRecord::default())
    }

    fn proxied(upstream_headers: &[(&str, &str)]) -> Exchange {
        let raw = upstream_headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        let report = EchoReport::from_parts("GET", "/a?b", "HTTP/1.1", raw, b"");
        local(
            200,
            &[(ECHO_HEADER, "1")],
            &serde_json::to_string(&report).unwrap_or_default(),
        )
    }

    #[test]
    fn what_each_proxy_adds_is_not_a_difference_and_what_the_module_did_is() {
        let g = local(
            403,
            &[("x-request-id", "g-1"), ("date", "Mon"), ("x-a", "1")],
            "denied g-1",
        );
        let e = local(
            403,
            &[
                ("x-request-id", "e-2"),
                ("server", "envoy"),
                ("x-envoy-upstream-service-time", "1"),
                ("X-A", "1"),
            ],
            "denied e-2",
        );
        assert_eq!(compare(&g, &e, &[]), Vec::<String>::new());

        let other = local(429, &[("x-request-id", "e-2"), ("x-a", "2")], "slow down");
        assert_eq!(
            compare(&g, &other, &[]),
            [
                "status: gateway 403, Envoy 429",
                "body: gateway \"denied $(request_id)\", Envoy \"slow down\"",
                "response header x-a: gateway [\"1\"], Envoy [\"2\"]",
            ]
        );
        // A header the step says varies (a reset that follows the clock) is left out.
        assert_eq!(compare(&g, &other, &["X-A".into()]).len(), 2);

        let a = proxied(&[("x-forwarded-for", "127.0.0.1"), ("x-added", "1")]);
        let b = proxied(&[("x-envoy-external-address", "127.0.0.1")]);
        assert_eq!(
            compare(&a, &b, &[]),
            ["upstream header x-added: gateway [\"1\"], Envoy []"]
        );
        assert_eq!(
            compare(&a, &g, &[]),
            [
                "status: gateway 200, Envoy 403",
                "upstream: gateway's answered, Envoy's did not",
                "response header x-a: gateway [], Envoy [\"1\"]",
            ]
        );
    }
}
