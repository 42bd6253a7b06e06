//! What a run found, case by case, and the forms it is reported in: a line per case for
//! people, JUnit XML for CI systems, and GitHub Actions' workflow commands (annotations on the
//! case's line of its file).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// How one case went on one target.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Passed,
    /// Every way the data plane differed from the case (or from the other data plane).
    Failed(Vec<String>),
    /// Not run there, and why.
    Skipped(String),
}

/// One case on one target.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    /// The case's line in its file (1-based).
    pub line: usize,
    pub case: String,
    /// `host`, `gateway`, `envoy`, or `gateway-vs-envoy` for the differential run.
    pub target: String,
    pub verdict: Verdict,
    pub time: Duration,
    /// What the module logged, kept when the case failed.
    pub log: String,
}

impl CaseResult {
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Failed(_))
    }

    /// `PASS host rate-limiting.yaml: "a case"`, and for a failure an indented line per
    /// difference, then the log kept with it (`| `).
    pub fn line(&self) -> String {
        let name = format!(
            "{:<8} {}:{}: {:?}",
            self.target,
            self.file.display(),
            self.line,
            self.case
        );
        match &self.verdict {
            Verdict::Passed => format!("PASS {name}"),
            Verdict::Skipped(why) => format!("SKIP {name}: {why}"),
            Verdict::Failed(problems) => {
                let mut text = format!("FAIL {name}");
                for problem in problems {
                    for (i, line) in problem.lines().enumerate() {
                        let indent = if i == 0 { "    - " } else { "      " };
                        let _ = write!(text, "\n{indent}{line}");
                    }
                }
                for line in self.log.lines() {
                    let _ = write!(text, "\n    | {line}");
                }
                text
            }
        }
    }

    /// The GitHub Actions workflow command that annotates the case's line with its failure.
    pub fn github_annotation(&self) -> Option<String> {
        let Verdict::Failed(problems) = &self.verdict else {
            return None;
        };
        Some(format!(
            "::error file={},line={},title={}::{}",
            escape_property(&self.file.display().to_string()),
            self.line,
            escape_property(&format!("modtest {}: {}", self.target, self.case)),
            escape_data(&problems.join("\n"))
        ))
    }
}

/// Workflow command data: `%`, CR and LF escaped, as the runner reads them.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Workflow command properties: also `:` and `,`, which end them.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

pub fn totals(results: &[CaseResult]) -> Totals {
    let mut totals = Totals::default();
    for result in results {
        match result.verdict {
            Verdict::Passed => totals.passed += 1,
            Verdict::Failed(_) => totals.failed += 1,
            Verdict::Skipped(_) => totals.skipped += 1,
        }
    }
    totals
}

/// JUnit XML as Jenkins, GitLab and the GitHub test-report actions read it: a `testsuite` per
/// file and target, a `testcase` per case (`classname` the file and target, `name` the case),
/// a `failure` with every difference, `skipped` with its reason, the module's log as
/// `system-out` of a failed case.
pub fn junit(results: &[CaseResult]) -> String {
    let mut suites: Vec<(String, Vec<&CaseResult>)> = Vec::new();
    for result in results {
        let suite = format!("{} [{}]", result.file.display(), result.target);
        match suites.iter_mut().find(|(name, _)| *name == suite) {
            Some((_, members)) => members.push(result),
            None => suites.push((suite, vec![result])),
        }
    }
    let all = totals(results);
    let seconds =
        |results: &[&CaseResult]| -> f64 { results.iter().map(|r| r.time.as_secs_f64()).sum() };
    let everything: Vec<&CaseResult> = results.iter().collect();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"modtest\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">",
        results.len(),
        all.failed,
        all.skipped,
        seconds(&everything)
    );
    for (name, members) in &suites {
        let counts = totals(&members.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">",
            escape_xml(name),
            members.len(),
            counts.failed,
            counts.skipped,
            seconds(members)
        );
        for result in members {
            let _ = write!(
                xml,
                "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\" time=\"{:.3}\"",
                escape_xml(name),
                escape_xml(&result.case),
                escape_xml(&result.file.display().to_string()),
                result.line,
                result.time.as_secs_f64()
            );
            match &result.verdict {
                Verdict::Passed => xml.push_str("/>\n"),
                Verdict::Skipped(why) => {
                    let _ = writeln!(
                        xml,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        escape_xml(why)
                    );
                }
                Verdict::Failed(problems) => {
                    let first = problems
                        .first()
                        .map_or("", |p| p.lines().next().unwrap_or(""));
                    let _ = writeln!(
                        xml,
                        ">\n      <failure message=\"{}\" type=\"mismatch\">{}</failure>",
                        escape_xml(first),
                        escape_xml(&problems.join("\n"))
                    );
                    if !result.log.is_empty() {
                        let _ = writeln!(
                            xml,
                            "      <system-out>{}</system-out>",
                            escape_xml(&result.log)
                        );
                    }
                    xml.push_str("    </testcase>\n");
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// Text for XML attributes and content. Characters XML 1.0 cannot carry at all (controls
/// other than tab, LF, CR; a module may log anything) become U+FFFD.
fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push('\t'),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: &str, verdict: Verdict) -> CaseResult {
        CaseResult {
            file: "cases/a,b.yaml".into(),
            line: 7,
            case: case.into(),
            target: "host".into(),
            verdict,
            time: Duration::from_millis(12),
            log: "[Info] a \u{1} log <line>".into(),
        }
    }

    #[test]
    fn a_failure_is_one_line_per_difference_and_an_annotation_on_its_line() {
        let failed = result(
            "x: y",
            Verdict::Failed(vec!["status: expected 200, got 413".into(), "a\nb".into()]),
        );
        assert_eq!(
            failed.line(),
            "FAIL host     cases/a,b.yaml:7: \"x: y\"\n    - status: expected 200, got 413\n    - a\n      b\n    | [Info] a \u{1} log <line>"
        );
        assert_eq!(
            failed.github_annotation().as_deref(),
            Some("::error file=cases/a%2Cb.yaml,line=7,title=modtest host%3A x%3A y::status: expected 200, got 413%0Aa%0Ab")
        );
        assert_eq!(result("ok", Verdict::Passed).github_annotation(), None);
    }

    #[test]
    fn xml_text_is_escaped_and_never_carries_what_xml_cannot() {
        assert_eq!(
            escape_xml("<a href=\"x\">&'\u{1}\n"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;\u{FFFD}&#10;"
        );
    }
}
