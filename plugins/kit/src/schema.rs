//! Reading a plugin's JSON `config` the way Kong's schema validator does.
//!
//! Kong reports every invalid field at once, each under its dotted path
//! (`config.allowed_payload_size: expected an integer`), and treats `null` as "not set".
//! A [`Record`] hands out typed fields, records an error per bad field (falling back to the
//! default so reading can go on), and flags any field nobody asked for as `unknown field`.

use std::cell::RefCell;
use std::fmt;

use serde_json::{Map, Value};

/// One invalid field: its dotted path from `config` and Kong's message for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Every invalid field of a configuration, in the order they were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub fields: Vec<FieldError>,
}

impl ConfigError {
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            fields: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// Kong's nested `fields` object of a schema violation: `{"config":{"x":"expected ..."}}`.
    pub fn to_kong_fields(&self) -> Value {
        let mut root = Map::new();
        for field in &self.fields {
            let mut node = &mut root;
            let mut segments = field.path.split('.').peekable();
            while let Some(segment) = segments.next() {
                if segments.peek().is_none() {
                    node.insert(segment.to_owned(), Value::String(field.message.clone()));
                    break;
                }
                let child = node
                    .entry(segment.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !child.is_object() {
                    // A record and one of its fields are both invalid: keep the record's message.
                    break;
                }
                node = match child.as_object_mut() {
                    Some(map) => map,
                    None => break,
                };
            }
        }
        Value::Object(root)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", field.path, field.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What separates the plugin's name from an invalid field in a refusal line.
const INVALID_CONFIGURATION: &str = ": invalid configuration: ";

/// How a module reports a refused configuration in its log: one line per invalid field,
/// `<plugin>: invalid configuration: <path>: <message>`, readable in Envoy's log and
/// unambiguous to read back ([`refused_field`]) whatever a message holds.
pub fn refusal_lines(plugin: &str, error: &ConfigError) -> Vec<String> {
    error
        .fields
        .iter()
        .map(|field| {
            format!(
                "{plugin}{INVALID_CONFIGURATION}{}: {}",
                field.path, field.message
            )
        })
        .collect()
}

/// The plugin name and field of one of [`refusal_lines`]; `None` for any other line.
pub fn refused_field(line: &str) -> Option<(&str, FieldError)> {
    let (plugin, rest) = line.split_once(INVALID_CONFIGURATION)?;
    let (path, message) = rest.split_once(": ")?;
    if plugin.is_empty() || path.is_empty() || path.contains(char::is_whitespace) {
        return None;
    }
    Some((
        plugin,
        FieldError {
            path: path.to_owned(),
            message: message.to_owned(),
        },
    ))
}

/// Parses a plugin configuration document. Empty input means `{}` (every default), as for a
/// Kong plugin created without `config`.
pub fn parse_document(bytes: &[u8]) -> Result<Value, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::single("config", format!("invalid JSON: {e}")))
}

/// Reads a whole configuration: `read` pulls fields out of the `config` record; the result is
/// its value when no field was invalid, else every field error.
pub fn read_config<T>(
    document: &Value,
    read: impl FnOnce(&mut Record<'_>) -> T,
) -> Result<T, ConfigError> {
    read_record("config", document, read)
}

/// Reads any record (a plugin `config`, a declarative file) whose errors are reported under
/// `path`.
pub fn read_record<T>(
    path: &str,
    document: &Value,
    read: impl FnOnce(&mut Record<'_>) -> T,
) -> Result<T, ConfigError> {
    let errors = RefCell::new(Vec::new());
    let value = match document.as_object() {
        Some(map) => {
            let mut record = Record::new(path.to_owned(), map, &errors);
            let value = read(&mut record);
            record.finish();
            value
        }
        None => {
            return Err(ConfigError::single(path, "expected a record"));
        }
    };
    let fields = errors.into_inner();
    if fields.is_empty() {
        Ok(value)
    } else {
        Err(ConfigError { fields })
    }
}

/// A JSON object being read against a schema.
pub struct Record<'a> {
    path: String,
    map: &'a Map<String, Value>,
    read: Vec<&'a str>,
    errors: &'a RefCell<Vec<FieldError>>,
}

impl<'a> Record<'a> {
    fn new(
        path: String,
        map: &'a Map<String, Value>,
        errors: &'a RefCell<Vec<FieldError>>,
    ) -> Self {
        Record {
            path,
            map,
            read: Vec::new(),
            errors,
        }
    }

    /// The dotted path of a field of this record.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Records an error against a field of this record.
    pub fn error(&self, key: &str, message: impl Into<String>) {
        self.error_at(self.path_of(key), message);
    }

    /// Records an error against any path (for checks that span several fields).
    pub fn error_at(&self, path: String, message: impl Into<String>) {
        self.errors.borrow_mut().push(FieldError {
            path,
            message: message.into(),
        });
    }

    /// Whether any error has been recorded so far, in this record or elsewhere.
    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// The raw value of a field; `None` when absent or `null`. Marks the field as known.
    pub fn value(&mut self, key: &'a str) -> Option<&'a Value> {
        self.read.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn integer(&mut self, key: &'a str) -> Option<i64> {
        let value = self.value(key)?;
        let int = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        });
        if int.is_none() {
            self.error(key, "expected an integer");
        }
        int
    }

    pub fn number(&mut self, key: &'a str) -> Option<f64> {
        let value = self.value(key)?;
        let number = value.as_f64();
        if number.is_none() {
            self.error(key, "expected a number");
        }
        number
    }

    pub fn boolean(&mut self, key: &'a str, default: bool) -> bool {
        match self.value(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(key, "expected a boolean");
                default
            }
        }
    }

    pub fn string(&mut self, key: &'a str) -> Option<&'a str> {
        match self.value(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => {
                self.error(key, "expected a string");
                None
            }
        }
    }

    /// A string restricted to `choices`, each mapped to its value.
    pub fn one_of<T: Copy>(&mut self, key: &'a str, choices: &[(&str, T)], default: T) -> T {
        let Some(value) = self.value(key) else {
            return default;
        };
        if let Some(s) = value.as_str() {
            if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
                return *t;
            }
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.error(key, format!("expected one of: {}", names.join(", ")));
        default
    }

    /// An array of strings; each element that is not a string is reported under `key.N`
    /// (1-based, as Kong counts).
    pub fn string_array(&mut self, key: &'a str) -> Vec<&'a str> {
        let Some(value) = self.value(key) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.error(key, "expected an array");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s),
                None => self.error_at(
                    format!("{}.{}", self.path_of(key), i + 1),
                    "expected a string",
                ),
            }
        }
        out
    }

    /// A nested record; `read` sees an empty record when the field is absent, so nested
    /// defaults still apply.
    pub fn record<T>(&mut self, key: &'a str, read: impl FnOnce(&mut Record<'a>) -> T) -> T {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Map::new);
        let map = match self.value(key) {
            None => empty,
            Some(Value::Object(map)) => map,
            Some(_) => {
                self.error(key, "expected a record");
                empty
            }
        };
        let mut nested = Record::new(self.path_of(key), map, self.errors);
        let value = read(&mut nested);
        nested.finish();
        value
    }

    /// An array of records; each element is read by `read` under `key.<label>`, where the
    /// label is the element's `name` when it has one (so errors name the entity) and its
    /// 1-based index otherwise.
    pub fn records<T>(
        &mut self,
        key: &'a str,
        mut read: impl FnMut(&mut Record<'a>) -> T,
    ) -> Vec<T> {
        let Some(value) = self.value(key) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.error(key, "expected an array");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let label = item
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| (i + 1).to_string(), str::to_owned);
            let path = format!("{}.{label}", self.path_of(key));
            match item.as_object() {
                Some(map) => {
                    let mut nested = Record::new(path, map, self.errors);
                    out.push(read(&mut nested));
                    nested.finish();
                }
                None => self.error_at(path, "expected a record"),
            }
        }
        out
    }

    /// The field names present in this record (for records keyed by user data, such as
    /// header names).
    pub fn keys(&self) -> impl Iterator<Item = &'a str> {
        self.map.keys().map(String::as_str)
    }

    /// This record's own path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Flags every field that was not read.
    fn finish(self) {
        for key in self.map.keys() {
            if !self.read.contains(&key.as_str()) {
                self.error(key, "unknown field");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Unit {
        A,
        B,
    }

    fn read(doc: Value) -> Result<(i64, Unit, bool, Vec<String>), ConfigError> {
        read_config(&doc, |r| {
            let n = r.integer("n").unwrap_or(7);
            let unit = r.one_of("unit", &[("a", Unit::A), ("b", Unit::B)], Unit::A);
            let flag = r.boolean("flag", false);
            let list = r.record("nested", |n| {
                n.string_array("list")
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            });
            (n, unit, flag, list)
        })
    }

    #[test]
    fn defaults_apply_to_absent_and_null_fields() {
        assert_eq!(read(json!({})).unwrap(), (7, Unit::A, false, vec![]));
        assert_eq!(
            read(json!({"n": null, "unit": null})).unwrap(),
            (7, Unit::A, false, vec![])
        );
    }

    #[test]
    fn values_are_read() {
        let got = read(json!({"n": 3.0, "unit": "b", "flag": true, "nested": {"list": ["x"]}}));
        assert_eq!(got.unwrap(), (3, Unit::B, true, vec!["x".to_owned()]));
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let err = read(json!({
            "n": "ten", "unit": "c", "flag": 1, "extra": 1, "nested": {"list": ["x", 2], "y": 0}
        }))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.n: expected an integer; config.unit: expected one of: a, b; \
             config.flag: expected a boolean; config.nested.list.2: expected a string; \
             config.nested.y: unknown field; config.extra: unknown field"
        );
        assert_eq!(
            err.to_kong_fields(),
            json!({"config": {
                "n": "expected an integer", "unit": "expected one of: a, b",
                "flag": "expected a boolean", "extra": "unknown field",
                "nested": {"list": {"2": "expected a string"}, "y": "unknown field"}
            }})
        );
    }

    #[test]
    fn documents_that_are_not_records_are_refused() {
        assert_eq!(parse_document(b"  ").unwrap(), json!({}));
        assert_eq!(
            read(json!([1])).unwrap_err().to_string(),
            "config: expected a record"
        );
        assert!(parse_document(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("config: invalid JSON"));
    }

    #[test]
    fn fractional_numbers_are_not_integers() {
        assert_eq!(
            read(json!({"n": 1.5})).unwrap_err().to_string(),
            "config.n: expected an integer"
        );
    }

    /// The readers the plugins use beyond the ones above: numbers, strings, arrays of records
    /// (labelled by `name`, else by 1-based index), nested records with user-data keys.
    #[test]
    fn numbers_strings_and_arrays_of_records_are_read_with_kongs_paths() {
        let doc = json!({
            "x": 1.5, "s": "v", "bad_number": "1", "bad_string": 2,
            "list": [{"name": "a", "n": "one"}, {"n": 2}, 3],
            "headers": {"x-b": "2", "x-a": "1"}
        });
        let err = read_config(&doc, |r| {
            assert_eq!(r.path(), "config");
            assert_eq!(r.number("x"), Some(1.5));
            assert_eq!(r.string("s"), Some("v"));
            assert!(!r.has_errors());
            let items = r.records("list", |item| {
                item.string("name");
                item.integer("n")
            });
            assert_eq!(items, [None, Some(2)]);
            assert!(r.has_errors());
            assert_eq!(r.number("bad_number"), None);
            assert_eq!(r.string("bad_string"), None);
            let headers = r.record("headers", |h| {
                assert_eq!(h.path(), "config.headers");
                let mut keys: Vec<&str> = h.keys().collect();
                keys.sort_unstable();
                keys.into_iter().map(|k| h.string(k)).collect::<Vec<_>>()
            });
            assert_eq!(headers, [Some("1"), Some("2")]);
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.list.a.n: expected an integer; config.list.3: expected a record; \
             config.bad_number: expected a number; config.bad_string: expected a string"
        );
    }

    #[test]
    fn a_record_read_at_the_root_names_its_fields_alone() {
        let err = read_record("", &json!({"n": "x"}), |r| r.integer("n")).unwrap_err();
        assert_eq!(err.to_string(), "n: expected an integer");
    }

    /// A number written as a double is an integer only below 9e15 in magnitude, where a
    /// double holds every integer exactly.
    #[test]
    fn integers_must_be_exact_in_a_double() {
        assert_eq!(read(json!({"n": 8.0e15})).unwrap().0, 8_000_000_000_000_000);
        for n in [9.0e15, -9.0e15, 1e300] {
            assert_eq!(
                read(json!({ "n": n })).unwrap_err().to_string(),
                "config.n: expected an integer",
                "{n}"
            );
        }
    }

    /// A refusal is logged one field per line, and each line reads back as that field, even
    /// when a message holds `: ` or `; `.
    #[test]
    fn refusal_lines_read_back_as_their_fields() {
        let error = ConfigError {
            fields: vec![
                FieldError {
                    path: "config.add.headers.1".into(),
                    message:
                        "secret reference {vault://env/X}: environment variable X is not set; sorry"
                            .into(),
                },
                FieldError {
                    path: "@entity".into(),
                    message: "at least one of these fields must be non-empty: 'config.second'"
                        .into(),
                },
            ],
        };
        let lines = refusal_lines("rate-limiting", &error);
        assert_eq!(
            lines[1],
            "rate-limiting: invalid configuration: @entity: at least one of these fields must be non-empty: 'config.second'"
        );
        let read: Vec<_> = lines.iter().map(|l| refused_field(l).unwrap()).collect();
        assert_eq!(read[0], ("rate-limiting", error.fields[0].clone()));
        assert_eq!(read[1], ("rate-limiting", error.fields[1].clone()));
        assert_eq!(
            refused_field("rate-limiting: reading the configuration: host status 2"),
            None
        );
        assert_eq!(
            refused_field("x: invalid configuration: not a path: y"),
            None
        );
    }
}
