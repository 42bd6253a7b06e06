//! The request path of a configuration that only removes, replaces and adds request headers
//! to fixed values (the seed's backend secret, say): decided at configure time for each
//! header being absent or present, so that a request costs one header lookup per named
//! header and the writes, without reading the whole header map, rendering or allocating.
//!
//! It answers exactly as [`crate::transform::on_headers`] does (a test compares both on
//! every case): those operations depend on each header's presence only, except where a
//! header would end with the value it already has, which is no change only when the client
//! sent it once. A lookup sees the first value alone, so that case is left to the full path.

use crate::config::{is_header_value, Config};
use crate::stream::HeaderWrite;
use crate::CLIENT_HOST_HEADER;

/// Names a plan takes at most: each request looks every one up.
const MAX_NAMES: usize = 8;

/// What the operations leave of one header, for one presence of it in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Removed: a change when it was there.
    Removed,
    /// Exactly this one value.
    Set(String),
}

/// One header named by the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    /// Lower-case, as configured.
    name: String,
    /// When the request lacks it, then when it has it: the first operation that wrote it
    /// (changes go in that order, as Kong's table fills) and what it ends as; `None`: no
    /// operation touched it.
    ends: [Option<(usize, End)>; 2],
}

/// The header-only request path of a configuration, when it has one.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderPlan {
    headers: Vec<Planned>,
}

/// Names only: a value may be a resolved secret.
impl std::fmt::Debug for HeaderPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|h| h.name.as_str()).collect();
        f.debug_struct("HeaderPlan")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

/// A request header's first value, `None` when absent, or why the host refused the lookup.
pub type FirstValue<E> = Result<Option<Vec<u8>>, E>;

/// The header writes of one request, in order, or `None` when the full path must decide.
pub type Writes<'p> = Option<([Option<HeaderWrite<'p>>; 2 * MAX_NAMES + 1], usize)>;

impl HeaderPlan {
    /// The plan of `config`, when everything it does to a request is a header `remove`,
    /// `replace` or `add` of a fixed value (not `host`, which is `:authority`).
    pub fn of(config: &Config) -> Option<HeaderPlan> {
        let ops = &config.headers;
        let header_only = config.http_method.is_none()
            && config.replace_uri.is_none()
            && config.body.is_empty()
            && config.querystring.is_empty()
            && ops.rename.is_empty()
            && ops.append.is_empty();
        if !header_only {
            return None;
        }
        // Every operation in Kong's order: the name and, for replace and add, the fixed value
        // (`None`: an entry without one).
        let mut steps: Vec<(Step, &str, Option<&str>)> = Vec::new();
        steps.extend(ops.remove.iter().map(|n| (Step::Remove, n.as_str(), None)));
        for (step, list) in [(Step::Replace, &ops.replace), (Step::Add, &ops.add)] {
            for (name, template) in list {
                let value = match template {
                    Some(template) => Some(template.as_text()?),
                    None => None,
                };
                steps.push((step, name.as_str(), value));
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for &(_, name, value) in &steps {
            if name == "host" || name == CLIENT_HOST_HEADER || name.starts_with(':') {
                return None;
            }
            if value.is_some_and(|v| !is_header_value(v.as_bytes())) {
                return None;
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.len() > MAX_NAMES {
            return None;
        }
        let headers = names
            .into_iter()
            .map(|name| Planned {
                name: name.to_owned(),
                ends: [false, true].map(|present| end(&steps, name, present)),
            })
            .collect();
        Some(HeaderPlan { headers })
    }

    /// The writes for a request, given a lookup of a request header's first value (`Err`:
    /// the host refused the lookup). `None`: the full path decides.
    pub fn writes<E>(&self, lookup: &mut dyn FnMut(&str) -> FirstValue<E>) -> Writes<'_> {
        let mut writes = [None; 2 * MAX_NAMES + 1];
        let mut count = 0;
        let mut push = |write| {
            if let Some(slot) = writes.get_mut(count) {
                *slot = Some(write);
                count += 1;
            }
        };
        // The client's Host the data plane handed over is never forwarded; Kong's table
        // starts with it.
        if lookup(CLIENT_HOST_HEADER).ok()?.is_some() {
            push(HeaderWrite::Remove(CLIENT_HOST_HEADER));
        }
        // (first write, header, present) of each header that changes.
        let mut changed = [(0, 0, false); MAX_NAMES];
        let mut changes = 0;
        for (at, planned) in self.headers.iter().enumerate() {
            let first = lookup(&planned.name).ok()?;
            let present = first.is_some();
            let Some((order, end)) = &planned.ends[usize::from(present)] else {
                continue;
            };
            let change = match (end, first) {
                (End::Removed, first) => first.is_some(),
                (End::Set(_), None) => true,
                // The same value: no change only if it is the client's only one.
                (End::Set(value), Some(first)) if first == value.as_bytes() => return None,
                (End::Set(_), Some(_)) => true,
            };
            if let (true, Some(slot)) = (change, changed.get_mut(changes)) {
                *slot = (*order, at, present);
                changes += 1;
            }
        }
        let changed = changed.get_mut(..changes).unwrap_or_default();
        changed.sort_unstable_by_key(|&(order, _, _)| order);
        for &(_, at, present) in changed.iter() {
            let Some(planned) = self.headers.get(at) else {
                continue;
            };
            let name = planned.name.as_str();
            match &planned.ends[usize::from(present)] {
                Some((_, End::Removed)) => push(HeaderWrite::Remove(name)),
                Some((_, End::Set(value))) => {
                    // Removing a header the request lacks changes nothing.
                    if present {
                        push(HeaderWrite::Remove(name));
                    }
                    push(HeaderWrite::Add(name, value.as_bytes()));
                }
                None => {}
            }
        }
        Some((writes, count))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Remove,
    Replace,
    Add,
}

/// Kong's table for one header through every step (`transform::HeaderEdit::apply` for these
/// three operations), when the request lacks it or has it: the first step that wrote it, and
/// what it ends as; `None` when it is left as the client sent it.
fn end(steps: &[(Step, &str, Option<&str>)], name: &str, present: bool) -> Option<(usize, End)> {
    // `None`: not in the table; `Some(None)`: nil.
    let mut entry: Option<Option<&str>> = None;
    let mut cleared = false;
    let mut first = None;
    for (at, &(step, step_name, value)) in steps.iter().enumerate() {
        if step_name != name {
            continue;
        }
        let seen = entry.map_or(present, |value| value.is_some());
        let written = match step {
            Step::Remove if seen => {
                cleared = true;
                Some(None)
            }
            Step::Replace if seen => Some(value),
            Step::Add if !seen => value.map(Some),
            _ => None,
        };
        if let Some(value) = written {
            entry = Some(value);
            first.get_or_insert(at);
        }
    }
    let end = match entry? {
        Some(value) => End::Set(value.to_owned()),
        // A nil that was not cleared leaves the client's values.
        None if cleared && present => End::Removed,
        None => return None,
    };
    Some((first?, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::header_writes;
    use crate::transform::{on_headers, RequestHead};

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn first(headers: &[(Vec<u8>, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.clone())
    }

    /// The writes the full path makes, rendered for comparison.
    fn full(config: &Config, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
        let head = RequestHead {
            headers,
            end_of_stream: true,
            route: None,
            request_id: b"id",
        };
        let decision = on_headers(config, &head).unwrap();
        assert!(decision.body.is_none());
        header_writes(&decision.changes)
            .iter()
            // The plan skips removing what the request lacks: that changes nothing.
            .filter(|w| !matches!(w, HeaderWrite::Remove(name) if first(headers, name).is_none()))
            .map(|w| format!("{w:?}"))
            .collect()
    }

    fn planned(plan: &HeaderPlan, headers: &[(Vec<u8>, Vec<u8>)]) -> Option<Vec<String>> {
        let mut lookup = |name: &str| Ok::<_, ()>(first(headers, name));
        let (writes, count) = plan.writes(&mut lookup)?;
        Some(
            writes
                .iter()
                .take(count)
                .flatten()
                .map(|w| format!("{w:?}"))
                .collect(),
        )
    }

    /// Every header of `names` absent, once, twice, with the configured value or another:
    /// the plan writes what the full path writes, or leaves the request to it.
    #[test]
    fn the_plan_writes_what_the_full_path_writes() {
        let configs = [
            r#"{"replace":{"headers":["authorization:Bearer x"]},"add":{"headers":["authorization:Bearer x"]}}"#,
            r#"{"add":{"headers":["x-a:1","x-b:2"]},"remove":{"headers":["x-b","x-c"]}}"#,
            r#"{"replace":{"headers":["x-b:9","x-a:","x-c:3"]},"add":{"headers":["x-a:1","x-c:4"]},"remove":{"headers":["x-a"]}}"#,
            r#"{"remove":{"headers":["x-a","x-a"]},"add":{"headers":["x-a:1","x-a:2","x-b:"]}}"#,
            r#"{}"#,
        ];
        let names = ["authorization", "x-a", "x-b", "x-c", CLIENT_HOST_HEADER];
        let variants: [&[&[u8]]; 5] = [
            &[],
            &[b"1"],
            &[b"Bearer x"],
            &[b"1", b"2"],
            &[b"Bearer x", b"y"],
        ];
        let mut compared = 0;
        let mut left = 0;
        for json in configs {
            let config = config(json);
            let plan = HeaderPlan::of(&config).unwrap();
            // Every combination of variants of the five names (5^5).
            for mut n in 0..variants.len().pow(names.len() as u32) {
                let mut headers = vec![
                    (b":path".to_vec(), b"/p?q=1&&r".to_vec()),
                    (b":method".to_vec(), b"GET".to_vec()),
                ];
                for name in names {
                    for value in variants[n % variants.len()] {
                        headers.push((name.as_bytes().to_vec(), value.to_vec()));
                    }
                    n /= variants.len();
                }
                let expected = full(&config, &headers);
                match planned(&plan, &headers) {
                    Some(writes) => {
                        assert_eq!(writes, expected, "{json} {headers:?}");
                        compared += 1;
                    }
                    None => left += 1,
                }
            }
        }
        // The full path is the exception (here 3,750 of 15,625): a header sent with the
        // value it ends as.
        assert!(compared > 3 * left, "{compared} compared, {left} left");
    }

    #[test]
    fn only_fixed_header_operations_have_a_plan() {
        for json in [
            r#"{"add":{"headers":["x-a:$(headers.b)"]}}"#,
            r#"{"append":{"headers":["x-a:1"]}}"#,
            r#"{"rename":{"headers":["x-a:x-b"]}}"#,
            r#"{"replace":{"headers":["host:example.com"]}}"#,
            r#"{"add":{"headers":["x-wasmgate-client-host:a"]}}"#,
            r#"{"add":{"querystring":["a:1"]}}"#,
            r#"{"add":{"body":["a:1"]}}"#,
            r#"{"replace":{"uri":"/a"}}"#,
            r#"{"http_method":"POST"}"#,
            r#"{"remove":{"headers":["a","b","c","d","e","f","g","h","i"]}}"#,
        ] {
            assert_eq!(HeaderPlan::of(&config(json)), None, "{json}");
        }
        assert!(HeaderPlan::of(&config(r#"{"remove":{"headers":["a"]}}"#)).is_some());
    }

    /// A lookup the host refuses leaves the request to the full path, which answers it.
    #[test]
    fn a_refused_lookup_leaves_the_request_to_the_full_path() {
        let plan = HeaderPlan::of(&config(r#"{"add":{"headers":["x-a:1"]}}"#)).unwrap();
        let mut refused = |_: &str| Err::<Option<Vec<u8>>, u32>(2);
        assert!(plan.writes(&mut refused).is_none());
    }
}
