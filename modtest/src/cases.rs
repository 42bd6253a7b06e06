//! Case files: a proxy-wasm module's behaviour written as data, so that every data plane (the
//! in-process host, `gateway`, Envoy) runs the very same cases and any difference fails.
//!
//! A file names the module (a wasmgate plugin by its Kong name, or any `.wasm` with its plugin
//! name and root id) and lists cases. A case has a `config` (JSON, or `config_text` for a
//! module whose configuration is not JSON) and either one `request`/`expect` pair or a list of
//! `steps` sent in order on the same plugin instance; a case whose config must be refused has
//! `expect.config_error` (a substring of the error the data plane reports) and no request.
//! Headers are written as `"name: value"` strings, as in Kong's own configs. The schema:
//! `docs/TESTING.md` and `modtest/case-file.schema.json`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::client::{Protocol, Request, RequestBody, Response};
use crate::echo::{EchoReport, UpstreamRecord, ECHO_HEADER};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The plugin name the module is configured with (Envoy's `PluginConfig.name`); for
    /// wasmgate's own plugins, Kong's plugin name, whose module is `<name_with_underscores>.wasm`
    /// in the modules folder. Default: the module's file stem.
    #[serde(default)]
    pub plugin: Option<String>,
    /// The `.wasm` file, relative to the case file (or absolute).
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// Which root context serves the plugin (Envoy's `root_id`). Default: the plugin name.
    #[serde(default)]
    pub root_id: Option<String>,
    /// Envoy's `allow_on_headers_stop_iteration`. Default: on for wasmgate's own plugins (as
    /// the data planes set it), Envoy's default (off) for any other module.
    #[serde(default)]
    pub allow_on_headers_stop_iteration: Option<bool>,
    /// On the data planes with the real clock, start each case at least 3 s before a minute
    /// boundary: for a module that counts in minute, hour or day windows and cases that
    /// expect one budget. Default: on for `rate-limiting`.
    #[serde(default)]
    pub avoid_minute_boundary: Option<bool>,
    /// Response headers the differential mode does not compare, beyond each step's own
    /// `present_headers` and `header_ranges`: values that follow the clock differ between
    /// two data planes run seconds apart. Default: `ratelimit-reset` and `retry-after` for
    /// `rate-limiting`, none otherwise.
    #[serde(default)]
    pub diff_ignore_headers: Option<Vec<String>>,
    pub cases: Vec<Case>,
    /// Where the file was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The plugin configuration as JSON (Kong's `config` for wasmgate's plugins), handed to the
    /// module as its JSON text. Default: the command's `--config`, else `{}`.
    #[serde(default)]
    pub config: Option<Value>,
    /// The plugin configuration as text, handed to the module as it is (instead of `config`).
    #[serde(default)]
    pub config_text: Option<String>,
    /// Environment variables the data plane exposes to the module (secrets).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Protocols to run the case over; both by default.
    #[serde(default)]
    pub protocols: Option<Vec<Protocol>>,
    /// Kong `paths` of the plugin's route: every other path takes a route without the
    /// plugin. Only the data planes that route (gateway and the translation's Envoy) run such
    /// a case; the others put the plugin on every path.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub request: Option<CaseRequest>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Seconds that pass before this step: the in-process host moves its manual clock, the
    /// data planes with the real clock wait (up to the command's `--max-wait`, else the case
    /// is skipped there).
    #[serde(default)]
    pub advance: Option<f64>,
    #[serde(default)]
    pub request: CaseRequest,
    pub expect: Expect,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root")]
    pub path: String,
    /// `"name: value"` entries, in order; duplicates allowed.
    #[serde(default)]
    pub headers: Vec<String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A generated body of this many bytes.
    #[serde(default)]
    pub body_size: Option<u64>,
    /// Send the body without Content-Length (chunked on HTTP/1.1).
    #[serde(default)]
    pub chunked: bool,
    /// With `chunked` and a text `body`: send it in pieces of this many bytes, paced so that
    /// each reaches the plugin as its own body callback (1,024 unpaced by default).
    #[serde(default)]
    pub chunk_size: Option<usize>,
    /// The client's address: another loopback address (127.0.0.2) is another client IP.
    #[serde(default = "loopback")]
    pub source: IpAddr,
}

impl Default for CaseRequest {
    fn default() -> Self {
        CaseRequest {
            method: get(),
            path: root(),
            headers: Vec::new(),
            body: None,
            body_size: None,
            chunked: false,
            chunk_size: None,
            source: loopback(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The configuration must be refused with an error containing this text.
    #[serde(default)]
    pub config_error: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    /// `"name: value"`: the response has this header with exactly this value.
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// Header names the response must carry, whatever their value.
    #[serde(default)]
    pub present_headers: Vec<String>,
    /// `"name: low..high"`: the response has this header with an integer value in the
    /// inclusive range (for values that depend on the clock, such as `Retry-After`).
    #[serde(default)]
    pub header_ranges: Vec<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub json: Option<Value>,
    /// What reached the upstream; `upstream: {reached: false}` when nothing may.
    #[serde(default)]
    pub upstream: Option<UpstreamExpect>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    /// `false`: not even the request head may reach it.
    #[serde(default = "yes")]
    pub reached: bool,
    /// `false`: the head (and part of the body) may reach it, the whole request never; the
    /// client gets a local reply. For refusals decided while the body streams, after the
    /// headers went on.
    #[serde(default = "yes")]
    pub whole: bool,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// The raw query string; `""` means none.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub json: Option<Value>,
    #[serde(default)]
    pub body_len: Option<u64>,
    /// The body is the generated filler of `request.body_size`, byte for byte.
    #[serde(default)]
    pub body_is_filler: bool,
}

fn get() -> String {
    "GET".into()
}
fn root() -> String {
    "/".into()
}
fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn yes() -> bool {
    true
}

/// What the command line sets for every file: the module and how it is configured, where
/// wasmgate's plugins are, the configuration of cases that give none.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub module: Option<PathBuf>,
    pub plugin_name: Option<String>,
    pub root_id: Option<String>,
    /// Where `<plugin_with_underscores>.wasm` is looked up for a file without `module`.
    pub modules_dir: Option<PathBuf>,
    /// The configuration text of cases without `config` or `config_text`.
    pub config: Option<String>,
}

/// The module under test and the settings every data plane loads it with.
#[derive(Clone, Debug)]
pub struct ModuleSpec {
    pub path: PathBuf,
    /// Envoy's `PluginConfig.name`.
    pub plugin_name: String,
    pub root_id: String,
    /// One of wasmgate's own plugins (by Kong name): the data planes' defaults apply to its
    /// config (`model::plugins::data_plane_defaults`), and `gateway` runs it as a plugin.
    pub wasmgate_plugin: bool,
    pub allow_on_headers_stop_iteration: bool,
    pub avoid_minute_boundary: bool,
    /// Response headers the differential mode leaves out.
    pub diff_ignore_headers: Vec<String>,
    /// The configuration of cases that set none.
    pub default_config: Option<String>,
}

impl ModuleSpec {
    /// The configuration `case` hands to the module, as the data planes hand it over.
    pub fn configuration(&self, case: &Case) -> String {
        if let Some(text) = &case.config_text {
            return text.clone();
        }
        match (&case.config, &self.default_config) {
            (None, Some(text)) => text.clone(),
            (config, _) => self.config_json(case, config.clone()).to_string(),
        }
    }

    /// The config a case gives one of wasmgate's plugins, as a user writes it in a Kong
    /// declarative file (`gateway` adds the data planes' defaults itself): `config`, else the
    /// text configuration read as JSON (a string when it is not JSON, which the plugin
    /// refuses, as it refuses it on the other data planes), else `{}`.
    pub fn kong_config(&self, case: &Case) -> Value {
        if let Some(config) = &case.config {
            return config.clone();
        }
        match case.config_text.as_ref().or(self.default_config.as_ref()) {
            Some(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            None => Value::Object(serde_json::Map::new()),
        }
    }

    /// The case's JSON config (`{}` when it gives none) with the data planes' defaults.
    pub fn config_json(&self, case: &Case, config: Option<Value>) -> Value {
        let mut config = config
            .or_else(|| case.config.clone())
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
        if self.wasmgate_plugin {
            model::plugins::data_plane_defaults(&self.plugin_name, &mut config);
        }
        config
    }
}

/// The case files' JSON Schema (draft-07, for editors; `modtest schema` prints it). Checked
/// against every case file and against the model by the tests.
pub const SCHEMA: &str = include_str!("../case-file.schema.json");

/// The file extensions read as case files.
pub const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

impl CaseFile {
    /// Reads and checks a case file. Errors name the file, the case (by number and name) and
    /// the field: `cases.yaml: case 2 "too big": cases[1].expect: unknown field `stauts`, …`.
    pub fn load(path: &Path) -> Result<CaseFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        CaseFile::parse(&text, path)
    }

    /// Parses a case file's text (YAML, of which JSON is a part); `path` names it in errors and
    /// anchors a relative `module`.
    pub fn parse(text: &str, path: &Path) -> Result<CaseFile, String> {
        let mut file: CaseFile = serde_yaml_ng::from_str(text).map_err(|e| {
            format!(
                "{}: {}",
                path.display(),
                with_case_name(text, &e.to_string())
            )
        })?;
        file.path = path.to_owned();
        for (i, case) in file.cases.iter().enumerate() {
            case.validate()
                .map_err(|e| format!("{}: case {} {:?}: {e}", path.display(), i + 1, case.name))?;
        }
        Ok(file)
    }

    /// Every case file in `dir` (by extension), sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<CaseFile>, String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| EXTENSIONS.contains(&x))
            })
            .collect();
        paths.sort();
        paths.iter().map(|p| CaseFile::load(p)).collect()
    }

    /// The module this file tests and how it is configured: the command line's choices
    /// first, then the file's.
    pub fn module_spec(&self, overrides: &Overrides) -> Result<ModuleSpec, String> {
        let here = self.path.parent().unwrap_or(Path::new(""));
        let from_file = self.module.as_ref().map(|m| here.join(m));
        let plugin_name = overrides
            .plugin_name
            .clone()
            .or_else(|| self.plugin.clone());
        let path = match (overrides.module.clone().or(from_file), &plugin_name) {
            (Some(path), _) => path,
            (None, Some(plugin)) => match &overrides.modules_dir {
                Some(dir) => dir.join(format!("{}.wasm", plugin.replace('-', "_"))),
                None => {
                    return Err(format!(
                        "{}: no module: give `module:` in the file, --module, or --modules-dir for plugin {plugin:?}",
                        self.path.display()
                    ))
                }
            },
            (None, None) => {
                return Err(format!(
                    "{}: no module: give `module:` (or `plugin:`) in the file, or --module",
                    self.path.display()
                ))
            }
        };
        let plugin_name = match plugin_name {
            Some(name) => name,
            None => path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned)
                .ok_or_else(|| format!("{}: no plugin name", path.display()))?,
        };
        let wasmgate_plugin = model::plugins::find(&plugin_name).is_some();
        Ok(ModuleSpec {
            root_id: overrides
                .root_id
                .clone()
                .or_else(|| self.root_id.clone())
                .unwrap_or_else(|| plugin_name.clone()),
            allow_on_headers_stop_iteration: self
                .allow_on_headers_stop_iteration
                .unwrap_or(wasmgate_plugin),
            avoid_minute_boundary: self
                .avoid_minute_boundary
                .unwrap_or(plugin_name == "rate-limiting"),
            diff_ignore_headers: self.diff_ignore_headers.clone().unwrap_or_else(|| {
                if plugin_name == "rate-limiting" {
                    vec!["ratelimit-reset".into(), "retry-after".into()]
                } else {
                    Vec::new()
                }
            }),
            default_config: overrides.config.clone(),
            wasmgate_plugin,
            plugin_name,
            path,
        })
    }

    /// The line of `case` in the file (1-based), for annotations; 1 when it cannot be told.
    pub fn line_of(&self, case: usize) -> usize {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return 1;
        };
        case_lines(&text).get(case).copied().unwrap_or(1)
    }
}

/// The line of each case's `name:` entry, in order: the lines that hold `name:` with the
/// case's name, searched after the previous case.
fn case_lines(text: &str) -> Vec<usize> {
    let names: Vec<String> = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| {
            let cases = v.get("cases")?.as_sequence()?.clone();
            Some(
                cases
                    .iter()
                    .map(|c| {
                        c.get("name")
                            .and_then(|n| n.as_str())
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect(),
            )
        })
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    let mut found = Vec::new();
    for name in names {
        let line = (at..lines.len())
            .find(|&i| lines[i].contains("name") && lines[i].contains(name.as_str()))
            .unwrap_or(at);
        found.push(line + 1);
        at = line + 1;
    }
    found
}

/// A parse error's `cases[N]` path, given the case's number and name when the text names it.
fn with_case_name(text: &str, error: &str) -> String {
    let Some(rest) = error.strip_prefix("cases[") else {
        return error.to_owned();
    };
    let Some(index) = rest.split(']').next().and_then(|n| n.parse::<usize>().ok()) else {
        return error.to_owned();
    };
    let name = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("cases")?
                .get(index)?
                .get("name")?
                .as_str()
                .map(str::to_owned)
        });
    match name {
        Some(name) => format!("case {} {name:?}: {error}", index + 1),
        None => format!("case {}: {error}", index + 1),
    }
}

impl Case {
    fn validate(&self) -> Result<(), String> {
        let single = self.request.is_some() || self.expect.is_some();
        match (single, self.steps.is_empty()) {
            (true, false) => return Err("has both request/expect and steps".into()),
            (false, true) => return Err("has neither expect nor steps".into()),
            _ => {}
        }
        if self.config.is_some() && self.config_text.is_some() {
            return Err("has both config and config_text".into());
        }
        for (n, step) in self.steps().iter().enumerate() {
            let at = |e: String| format!("steps[{n}].{e}");
            if let Some(seconds) = step.advance {
                if !(seconds.is_finite() && seconds >= 0.0) {
                    return Err(at(format!(
                        "advance: {seconds} is not a number of seconds >= 0"
                    )));
                }
            }
            step.request.validate().map_err(at)?;
        }
        Ok(())
    }

    /// The steps to send, in order (a single request/expect is one step).
    pub fn steps(&self) -> Vec<Step> {
        if self.steps.is_empty() {
            vec![Step {
                advance: None,
                request: self.request.clone().unwrap_or_default(),
                expect: self.expect.clone().unwrap_or_default(),
            }]
        } else {
            self.steps.clone()
        }
    }

    /// The refusal a configuration must meet, if this case is about a bad config.
    pub fn config_error(&self) -> Option<&str> {
        self.expect.as_ref()?.config_error.as_deref()
    }

    pub fn protocols(&self) -> Vec<Protocol> {
        self.protocols
            .clone()
            .unwrap_or_else(|| Protocol::ALL.to_vec())
    }
}

/// Splits `"name: value"` at the first colon. Whitespace around the value is not part of it
/// (RFC 9110 §5.5: a field value has no leading or trailing whitespace, and every proxy drops
/// it), so it is trimmed; whitespace inside the value is kept and compared.
pub fn split_header(entry: &str) -> (String, String) {
    match entry.split_once(':') {
        Some((name, value)) => (name.trim().to_owned(), value.trim().to_owned()),
        None => (entry.trim().to_owned(), String::new()),
    }
}

impl CaseRequest {
    /// Only loopback addresses: tests never leave the machine.
    fn validate(&self) -> Result<(), String> {
        if !self.source.is_loopback() {
            return Err(format!(
                "request.source {} is not a loopback address",
                self.source
            ));
        }
        match self.chunk_size {
            Some(0) => Err("request.chunk_size must be at least 1".into()),
            Some(_) if !self.chunked || self.body.is_none() => {
                Err("request.chunk_size needs chunked: true and a text body".into())
            }
            _ => Ok(()),
        }
    }

    /// The request the client sends.
    pub fn to_request(&self) -> Request {
        let headers: Vec<(String, String)> = self.headers.iter().map(|h| split_header(h)).collect();
        let bytes = self.body.as_ref().map(|b| b.clone().into_bytes());
        let body = match (bytes, self.body_size) {
            (Some(bytes), _) if self.chunked => match self.chunk_size {
                // Long enough for a proxy to pass each piece on before the next arrives.
                Some(size) => RequestBody::Paced {
                    chunks: bytes.chunks(size).map(<[u8]>::to_vec).collect(),
                    pause: std::time::Duration::from_millis(20),
                },
                None => RequestBody::Chunks(bytes.chunks(1024).map(<[u8]>::to_vec).collect()),
            },
            (Some(bytes), _) => RequestBody::Bytes(bytes),
            (None, Some(len)) => RequestBody::Filler {
                len,
                with_length: !self.chunked,
            },
            (None, None) => RequestBody::Empty,
        };
        Request {
            method: self.method.clone(),
            path: self.path.clone(),
            headers,
            body,
        }
    }
}

/// What one step produced: the response, what the upstream itself recorded while the step ran,
/// and, when the upstream answered, its report of what it received.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub response: Response,
    /// What reached the upstream during the step, by the upstream's own record (a head
    /// forwarded before a local reply counts, whatever the response says).
    pub forwarded: UpstreamRecord,
    pub upstream: Option<EchoReport>,
}

impl Exchange {
    pub fn new(response: Response, forwarded: UpstreamRecord) -> Exchange {
        let upstream = response
            .header(ECHO_HEADER)
            .and_then(|_| serde_json::from_slice(&response.body).ok());
        Exchange {
            response,
            forwarded,
            upstream,
        }
    }
}

/// `wanted` lists every value a header must have: the values of each name mentioned, in
/// order, must be exactly those listed (an extra or duplicate value fails).
fn check_headers(
    what: &str,
    wanted: &[String],
    absent: &[String],
    get: impl Fn(&str) -> Vec<String>,
    failures: &mut Vec<String>,
) {
    let mut expected: Vec<(String, Vec<String>)> = Vec::new();
    for entry in wanted {
        let (name, value) = split_header(entry);
        let name = name.to_ascii_lowercase();
        match expected.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => expected.push((name, vec![value])),
        }
    }
    for (name, values) in expected {
        let got = get(&name);
        if got != values {
            failures.push(format!(
                "{what} header {name}: expected exactly {values:?}, got {got:?}"
            ));
        }
    }
    for name in absent {
        let got = get(name);
        if !got.is_empty() {
            failures.push(format!("{what} header {name} must be absent, got {got:?}"));
        }
    }
}

/// The placeholder of case files for the request id of an error body.
const REQUEST_ID: &str = "$(request_id)";

fn mentions_request_id(value: &Value) -> bool {
    match value {
        Value::String(s) => s == REQUEST_ID,
        Value::Array(items) => items.iter().any(mentions_request_id),
        Value::Object(members) => members.values().any(mentions_request_id),
        _ => false,
    }
}

fn with_request_id(value: &Value, id: &str) -> Value {
    match value {
        Value::String(s) if s == REQUEST_ID => Value::String(id.to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_request_id(v, id)).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), with_request_id(v, id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn check_json(what: &str, expected: &Value, body: &[u8], failures: &mut Vec<String>) {
    match serde_json::from_slice::<Value>(body) {
        Ok(got) if got == *expected => {}
        Ok(got) => failures.push(format!("{what} JSON: expected {expected}, got {got}")),
        Err(e) => failures.push(format!(
            "{what} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )),
    }
}

impl Expect {
    /// Every way `exchange` differs from this expectation (none: the step passed).
    pub fn check(&self, request: &CaseRequest, exchange: &Exchange) -> Vec<String> {
        let mut failures = Vec::new();
        let response = &exchange.response;
        if let Some(status) = self.status {
            if response.status != status {
                failures.push(format!(
                    "status: expected {status}, got {} (body {:?})",
                    response.status,
                    response.text()
                ));
            }
        }
        let response_values = |name: &str| {
            response
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect::<Vec<String>>()
        };
        for name in &self.present_headers {
            if response_values(name).is_empty() {
                failures.push(format!("response header {name} must be present"));
            }
        }
        for entry in &self.header_ranges {
            let (name, range) = split_header(entry);
            let bounds = range.split_once("..").and_then(|(lo, hi)| {
                Some((
                    lo.trim().parse::<i64>().ok()?,
                    hi.trim().parse::<i64>().ok()?,
                ))
            });
            let Some((low, high)) = bounds else {
                failures.push(format!(
                    "header_ranges entry {entry:?} is not \"name: low..high\""
                ));
                continue;
            };
            let got: Vec<String> = response_values(&name);
            if !got.iter().any(|v| {
                v.trim()
                    .parse::<i64>()
                    .is_ok_and(|n| (low..=high).contains(&n))
            }) {
                failures.push(format!(
                    "response header {name}: expected an integer in {low}..={high}, got {got:?}"
                ));
            }
        }
        check_headers(
            "response",
            &self.headers,
            &self.absent_headers,
            response_values,
            &mut failures,
        );
        // `$(request_id)` in an expected body stands for the request id the data plane
        // assigned, which it also sends as the response's `x-request-id`.
        let uses_id = self.body.as_ref().is_some_and(|b| b.contains(REQUEST_ID))
            || self.json.as_ref().is_some_and(mentions_request_id);
        let request_id = response_values("x-request-id").into_iter().next();
        if uses_id && request_id.as_deref().is_none_or(str::is_empty) {
            failures.push(
                "response header x-request-id (the body's request id) must be present".into(),
            );
        }
        let request_id = request_id.unwrap_or_default();
        if let Some(body) = &self.body {
            let body = body.replace(REQUEST_ID, &request_id);
            if response.text() != body {
                failures.push(format!(
                    "body: expected {body:?}, got {:?}",
                    response.text()
                ));
            }
        }
        if let Some(json) = &self.json {
            check_json(
                "body",
                &with_request_id(json, &request_id),
                &response.body,
                &mut failures,
            );
        }
        if let Some(upstream) = &self.upstream {
            upstream.check(request, exchange, &mut failures);
        }
        failures
    }
}

impl UpstreamExpect {
    /// What may reach the upstream, by count: nothing, a head without its whole body, or
    /// exactly one whole request.
    fn check_counts(&self, forwarded: UpstreamRecord, failures: &mut Vec<String>) {
        if !self.reached || !self.whole {
            if !self.reached && forwarded.heads != 0 {
                failures.push(format!(
                    "upstream: must not be reached, but {} request head(s) reached it",
                    forwarded.heads
                ));
            }
            if forwarded.whole != 0 || forwarded.heads > 1 {
                failures.push(format!(
                    "upstream: must not receive the whole request, but received {forwarded:?}"
                ));
            }
        } else if forwarded != (UpstreamRecord { heads: 1, whole: 1 }) {
            failures.push(format!(
                "upstream: exactly one whole request must reach it, got {forwarded:?}"
            ));
        }
    }

    fn check(&self, request: &CaseRequest, exchange: &Exchange, failures: &mut Vec<String>) {
        self.check_counts(exchange.forwarded, failures);
        if !self.reached || !self.whole {
            if let Some(report) = &exchange.upstream {
                failures.push(format!(
                    "upstream: must not answer, but it answered {} {}",
                    report.method, report.path
                ));
            }
            return;
        }
        let Some(report) = &exchange.upstream else {
            failures.push("upstream: its answer did not reach the client".into());
            return;
        };
        let mut field = |name: &str, expected: &Option<String>, got: Option<&str>| {
            if let Some(expected) = expected {
                let got = got.unwrap_or("");
                if got != expected {
                    failures.push(format!(
                        "upstream {name}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
        };
        field("method", &self.method, Some(&report.method));
        field("path", &self.path, Some(&report.path));
        field("query", &self.query, report.query.as_deref());
        field("body", &self.body, report.body.as_deref());
        let values = |name: &str| {
            report
                .header_values(name)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        check_headers(
            "upstream",
            &self.headers,
            &self.absent_headers,
            values,
            failures,
        );
        if let Some(json) = &self.json {
            check_json(
                "upstream body",
                json,
                report.body.as_deref().unwrap_or("").as_bytes(),
                failures,
            );
        }
        if let Some(len) = self.body_len {
            if report.body_len != len {
                failures.push(format!(
                    "upstream body_len: expected {len}, got {}",
                    report.body_len
                ));
            }
        }
        if self.body_is_filler {
            let len = request.body_size.unwrap_or(0);
            if report.body_len != len || report.body_sha256 != crate::echo::filler_sha256(len) {
                failures.push(format!(
                    "upstream body: expected the {len}-byte filler, got {} bytes with another hash",
                    report.body_len
                ));
            }
        }
    }
}

/// Whether a data plane's refusal says what a case expects, judged alike on every data plane:
/// each `"; "`-separated part of `expected` appears in `error`, in the order given. A data
/// plane may say where the plugin sits before a part (the gateway names the route), but may
/// not leave a field out or reorder them.
pub fn refusal_says(expected: &str, error: &str) -> bool {
    let mut rest = error;
    expected.split("; ").all(|part| match rest.find(part) {
        Some(at) => {
            rest = &rest[at + part.len()..];
            true
        }
        None => false,
    })
}

/// Before a rate-limiting case on a data plane with the real clock: its steps count in minute,
/// hour or day windows and expect one budget, so they must not straddle a boundary. Every
/// hour and day boundary is a minute boundary; a case takes a few requests, far less than
/// the margin.
/// Before a case on a data plane with the real clock, for a module that counts in minute,
/// hour or day windows ([`ModuleSpec::avoid_minute_boundary`]): its steps expect one budget,
/// so they must not straddle a boundary. Every hour and day boundary is a minute boundary; a
/// case takes a few requests, far less than the margin.
pub async fn clear_of_a_window_boundary(module: &ModuleSpec) {
    const MARGIN: f64 = 3.0;
    if !module.avoid_minute_boundary {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let left = 60.0 - now % 60.0;
    if left < MARGIN {
        tokio::time::sleep(std::time::Duration::from_secs_f64(left + 0.05)).await;
    }
}

const STEP_HEADER: &str = "x-wasmgate-case-step";

/// Every step run so far against one upstream, by tag: counted again once all have run.
#[derive(Default)]
pub struct Accounting {
    /// Tag, case index, label, what the step allows.
    steps: Vec<(String, usize, String, Option<UpstreamExpect>)>,
}

/// Sends a step's request to `addr` over real sockets and checks the answer against the
/// step, with what reached the upstream with the step's tag. `case` (its index in the file)
/// and `label` name the step in the problems found once every step has run. Returns the
/// exchange when there was an answer (the error otherwise), and every problem.
#[allow(clippy::too_many_arguments)]
pub async fn run_step(
    echo: &crate::echo::EchoUpstream,
    step: &Step,
    request: &Request,
    addr: std::net::SocketAddr,
    protocol: Protocol,
    accounting: &mut Accounting,
    case: usize,
    label: String,
) -> (Result<Exchange, String>, Vec<String>) {
    let tag = accounting.steps.len().to_string();
    let request = request.clone().header(STEP_HEADER, &tag);
    let sent = crate::client::send_from(step.request.source, addr, protocol, &request).await;
    let forwarded = echo.record_tagged(STEP_HEADER, &tag);
    accounting
        .steps
        .push((tag, case, label, step.expect.upstream.clone()));
    match sent {
        Ok(response) => {
            let exchange = Exchange::new(response, forwarded);
            let problems = step.expect.check(&step.request, &exchange);
            (Ok(exchange), problems)
        }
        Err(e) => (Err(e.clone()), vec![e]),
    }
}

/// Once every step has run: every request head the upstream received came from a step, and
/// what reached it for each step, counted again now (a head forwarded before a local answer
/// may arrive after it), is still what the step allows. A head forwarded after its step was
/// answered locally, where none may reach the upstream, fails here. Returns the problems of
/// no step, and those of each step by its case's index.
pub fn unaccounted(
    echo: &crate::echo::EchoUpstream,
    accounting: &Accounting,
) -> (Vec<String>, Vec<(usize, String)>) {
    let mut general = Vec::new();
    let untagged = echo
        .arrivals()
        .iter()
        .filter(|a| !a.headers.iter().any(|(name, _)| name == STEP_HEADER))
        .count();
    if untagged != 0 {
        general.push(format!(
            "the upstream received {untagged} request head(s) no step sent"
        ));
    }
    let mut by_case = Vec::new();
    for (tag, case, label, expect) in &accounting.steps {
        let Some(expect) = expect else {
            continue;
        };
        let mut problems = Vec::new();
        expect.check_counts(echo.record_tagged(STEP_HEADER, tag), &mut problems);
        for problem in problems {
            by_case.push((
                *case,
                format!("{label}, counted once every step had run: {problem}"),
            ));
        }
    }
    (general, by_case)
}

/// [`unaccounted`], every problem in `failures`.
pub fn check_unaccounted(
    echo: &crate::echo::EchoUpstream,
    accounting: &Accounting,
    failures: &mut Vec<String>,
) {
    let (general, by_case) = unaccounted(echo, accounting);
    failures.extend(general);
    failures.extend(by_case.into_iter().map(|(_, problem)| problem));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(headers: &[(&str, &str)], body: &[u8]) -> Response {
        Response {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
            ..Response::default()
        }
    }

    /// An echo answer to `GET /`.
    fn echoed() -> Response {
        let report = EchoReport::from_parts("GET", "/", "HTTP/1.1", Vec::new(), b"");
        let body = serde_json::to_vec(&report).unwrap_or_default();
        response(&[(ECHO_HEADER, "1")], &body)
    }

    fn expect(yaml: &str) -> Expect {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        for (yaml, field) in [
            ("plugin: x\ncases: []\nextra: 1", "extra"),
            (
                "plugin: x\ncases: [{name: a, expect: {}, stauts: 200}]",
                "stauts",
            ),
            (
                "plugin: x\ncases: [{name: a, expect: {status: 200, header: []}}]",
                "header",
            ),
            (
                "plugin: x\ncases: [{name: a, request: {heders: []}, expect: {}}]",
                "heders",
            ),
            (
                "plugin: x\ncases: [{name: a, expect: {upstream: {reachd: false}}}]",
                "reachd",
            ),
            (
                "plugin: x\ncases: [{name: a, steps: [{expect: {}, x: 1}]}]",
                "x",
            ),
        ] {
            let error = serde_yaml_ng::from_str::<CaseFile>(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml} parsed"));
            assert!(
                error
                    .to_string()
                    .contains(&format!("unknown field `{field}`")),
                "{yaml}: {error}"
            );
        }
    }

    #[test]
    fn header_checks_compare_every_value() {
        let check = |expect: &Expect, headers: &[(&str, &str)]| {
            expect.check(
                &CaseRequest::default(),
                &Exchange::new(response(headers, b""), UpstreamRecord::default()),
            )
        };
        let one = expect("headers: ['x-a: 1']");
        assert!(check(&one, &[("x-a", "1")]).is_empty());
        assert!(!check(&one, &[("x-a", "1"), ("x-a", "2")]).is_empty());
        assert!(!check(&one, &[("x-a", "2"), ("X-A", "1")]).is_empty());
        assert!(!check(&one, &[]).is_empty());
        let two = expect("headers: ['x-a: 1', 'X-A: 2']");
        assert!(check(&two, &[("x-a", "1"), ("x-a", "2")]).is_empty());
        assert!(!check(&two, &[("x-a", "2"), ("x-a", "1")]).is_empty());
        assert!(!check(&two, &[("x-a", "1")]).is_empty());
    }

    #[test]
    fn not_reached_is_judged_by_the_upstreams_own_record() {
        let expect = expect("upstream: {reached: false}");
        let local = response(&[("content-type", "text/plain")], b"refused");
        let check = |heads, whole| {
            let record = UpstreamRecord { heads, whole };
            expect.check(
                &CaseRequest::default(),
                &Exchange::new(local.clone(), record),
            )
        };
        assert!(check(0, 0).is_empty());
        // A local reply whose request head had already been forwarded.
        assert!(!check(1, 0).is_empty());
        let cut = super::tests::expect("upstream: {whole: false}");
        let check_cut = |heads, whole| {
            let record = UpstreamRecord { heads, whole };
            cut.check(
                &CaseRequest::default(),
                &Exchange::new(local.clone(), record),
            )
        };
        assert!(check_cut(0, 0).is_empty());
        assert!(check_cut(1, 0).is_empty());
        assert!(!check_cut(1, 1).is_empty());
        assert!(!check_cut(2, 0).is_empty());
        // An echo answer is a reach, whatever the record says.
        assert!(!expect
            .check(
                &CaseRequest::default(),
                &Exchange::new(echoed(), UpstreamRecord::default())
            )
            .is_empty());
    }

    #[test]
    fn a_reach_is_exactly_one_request_head() {
        let expect = expect("upstream: {reached: true}");
        for (heads, whole, ok) in [(0, 0, false), (1, 0, false), (1, 1, true), (2, 2, false)] {
            let record = UpstreamRecord { heads, whole };
            let failures = expect.check(&CaseRequest::default(), &Exchange::new(echoed(), record));
            assert_eq!(failures.is_empty(), ok, "{record:?}: {failures:?}");
        }
    }

    #[test]
    fn a_refusal_must_name_every_field_in_order() {
        let expected =
            "config.second: value must be greater than 0; config.minute: expected a number";
        // As Envoy logs it, and as the gateway says it with the route before each field.
        assert!(refusal_says(
            expected,
            &format!("[critical] wasm log: {expected}")
        ));
        assert!(refusal_says(
            expected,
            "route 'r': config.second: value must be greater than 0; route 'r': config.minute: expected a number"
        ));
        // A field left out, the fields reordered, or only a prefix of a part: not what the
        // case expects.
        assert!(!refusal_says(
            expected,
            "config.second: value must be greater than 0"
        ));
        assert!(!refusal_says(
            expected,
            "config.minute: expected a number; config.second: value must be greater than 0"
        ));
        assert!(!refusal_says(
            expected,
            "config.second: value must be; config.minute: expected a number"
        ));
        assert!(!refusal_says(expected, ""));
    }

    #[test]
    fn the_command_line_comes_before_the_file_and_defaults_follow_the_plugin() {
        let parse = |yaml: &str| {
            CaseFile::parse(yaml, "dir/cases.yaml".as_ref()).unwrap_or_else(|e| panic!("{e}"))
        };
        let any = parse("module: build/f.wasm\nroot_id: r\ncases: [{name: a, expect: {}}]");
        let spec = any
            .module_spec(&Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.path, PathBuf::from("dir/build/f.wasm"));
        assert_eq!(spec.plugin_name, "f");
        assert_eq!(spec.root_id, "r");
        assert!(!spec.wasmgate_plugin && !spec.allow_on_headers_stop_iteration);
        let overrides = Overrides {
            module: Some("/m/g.wasm".into()),
            plugin_name: Some("n".into()),
            root_id: Some("q".into()),
            config: Some("raw text".into()),
            ..Overrides::default()
        };
        let spec = any
            .module_spec(&overrides)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                spec.path.to_str(),
                spec.plugin_name.as_str(),
                spec.root_id.as_str()
            ),
            (Some("/m/g.wasm"), "n", "q")
        );
        // The command's configuration is for cases without one of their own.
        let cases = parse(
            "module: f.wasm\ncases: [{name: a, expect: {}}, {name: b, config: {x: 1}, expect: {}}, {name: c, config_text: t, expect: {}}]",
        );
        let spec = cases
            .module_spec(&overrides)
            .unwrap_or_else(|e| panic!("{e}"));
        let configs: Vec<String> = cases.cases.iter().map(|c| spec.configuration(c)).collect();
        assert_eq!(configs, ["raw text", r#"{"x":1}"#, "t"]);
        // As gateway's declarative file takes one of wasmgate's plugins' config.
        let kong: Vec<Value> = cases.cases.iter().map(|c| spec.kong_config(c)).collect();
        assert_eq!(
            kong,
            [
                Value::String("raw text".into()),
                serde_json::json!({"x": 1}),
                Value::String("t".into())
            ]
        );
        let spec = cases
            .module_spec(&Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.configuration(&cases.cases[0]), "{}");
        assert_eq!(spec.kong_config(&cases.cases[0]), serde_json::json!({}));

        // One of wasmgate's plugins: its module by name, the data planes' settings.
        let kong = parse("plugin: rate-limiting\ncases: [{name: a, expect: {}}]");
        assert!(kong.module_spec(&Overrides::default()).is_err());
        let spec = kong
            .module_spec(&Overrides {
                modules_dir: Some("/w".into()),
                ..Overrides::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.path, PathBuf::from("/w/rate_limiting.wasm"));
        assert_eq!(spec.root_id, "rate-limiting");
        assert!(spec.wasmgate_plugin && spec.allow_on_headers_stop_iteration);
        assert!(spec.avoid_minute_boundary);
        assert_eq!(spec.diff_ignore_headers, ["ratelimit-reset", "retry-after"]);
    }

    #[test]
    fn chunk_size_paces_a_chunked_text_body_and_nothing_else() {
        let request = |yaml: &str| -> CaseRequest {
            serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
        };
        let paced = request("{body: abcde, chunked: true, chunk_size: 2}");
        assert_eq!(paced.validate(), Ok(()));
        match paced.to_request().body {
            RequestBody::Paced { chunks, .. } => {
                assert_eq!(chunks, [b"ab".to_vec(), b"cd".to_vec(), b"e".to_vec()])
            }
            other => panic!("{other:?}"),
        }
        for (yaml, error) in [
            ("{body: abc, chunked: true, chunk_size: 0}", "at least 1"),
            ("{body: abc, chunk_size: 2}", "needs chunked"),
            (
                "{body_size: 9, chunked: true, chunk_size: 2}",
                "needs chunked",
            ),
        ] {
            let refused = request(yaml).validate().unwrap_err();
            assert!(refused.contains(error), "{yaml}: {refused}");
        }
    }
}
