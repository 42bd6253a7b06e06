//! `request_transformer::Config::parse` on any bytes, with an environment holding secrets:
//! total; an accepted config holds the schema's invariants (valid lower-case header names,
//! header values that cannot inject, an upper-case method, route paths when a template reads
//! `uri_captures`); and no secret value ever shows in an error or in the config's `Debug`
//! output (unless the input itself holds the text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_transformer::config::{is_header_name, is_header_value};
use request_transformer::template::Source;
use request_transformer::Config;

const MARK: &str = "S3CR3T-7e1f";

fn env(name: &str) -> Option<String> {
    assert!(
        !name.bytes().any(|b| b.is_ascii_lowercase() || b == b'-'),
        "env lookups use Kong's variable names: {name:?}"
    );
    match name {
        "TOKEN" => Some(format!("t0k3n-{MARK}")),
        "JSON" => Some(format!(r#"{{"user":"u-{MARK}","n":1,"e":""}}"#)),
        "CRLF" => Some(format!("a\r\n{MARK}")),
        "EMPTY" => Some(String::new()),
        "SPACE" => Some(format!(" {MARK} ")),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let echoed = data.windows(6).any(|w| w == b"S3CR3T");
    let config = match Config::parse(data, &env) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.fields.is_empty());
            let text = format!("{error} {}", error.to_kong_fields());
            assert!(
                echoed || !text.contains(MARK),
                "a secret in an error: {text}"
            );
            return;
        }
    };
    assert!(
        echoed || !format!("{config:?}").contains(MARK),
        "a secret in Debug output"
    );
    if let Some(method) = &config.http_method {
        assert!(!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()));
    }
    let h = &config.headers;
    for name in h
        .remove
        .iter()
        .chain(h.rename.iter().map(|(n, _)| n))
        .chain(
            h.replace
                .iter()
                .chain(&h.add)
                .chain(&h.append)
                .map(|(n, _)| n),
        )
    {
        assert!(is_header_name(name), "{name:?}");
        assert_eq!(*name, name.to_ascii_lowercase());
    }
    for (_, new) in &h.rename {
        let new = new.as_text().expect("a header rename target is plain text");
        assert!(
            is_header_name(new) && new == new.to_ascii_lowercase(),
            "{new:?}"
        );
    }
    for (_, template) in h.replace.iter().chain(&h.add).chain(&h.append) {
        if let Some(t) = template {
            for text in t.texts() {
                assert!(is_header_value(text.as_bytes()), "{text:?}");
            }
        }
    }
    for ops in [&config.body, &config.querystring] {
        for name in ops
            .remove
            .iter()
            .chain(ops.rename.iter().map(|(n, _)| n))
            .chain(
                ops.replace
                    .iter()
                    .chain(&ops.add)
                    .chain(&ops.append)
                    .map(|(n, _)| n),
            )
        {
            assert!(!name.is_empty());
        }
        for (_, t) in ops.replace.iter().chain(&ops.add).chain(&ops.append) {
            assert!(t.is_some(), "body and query entries always have a value");
        }
    }
    if config.reads_captures() {
        assert!(config.route_paths.is_some());
    }
    if let Some(uri) = &config.replace_uri {
        let _ = uri.reads(Source::UriCaptures);
    }
    assert_eq!(
        config.warning().is_some(),
        config.moves_form_to_query() && !config.hold_headers
    );
});
