//! Findings of the fuzz targets (`fuzz/`, docs/FUZZING.md), each as the smallest request
//! that shows it. They fail until the plugin is fixed.

use request_transformer::transform::{on_headers, RequestHead};
use request_transformer::Config;

fn headers(list: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect()
}

/// `transformer_stream`: with `http_method: GET` and `hold_headers`, the fields of a form body
/// move to the query string with their raw bytes, so the body's CR, LF and spaces end up in
/// the upstream `:path` (a request line `GET /?a=1\r\nInjected: 1 HTTP/1.1` in HTTP/1.1).
/// Kong re-encodes the whole query (`set_uri_args`), moved fields included.
#[test]
fn moved_form_fields_are_encoded_in_the_path() {
    let config = Config::parse(
        br#"{"http_method":"GET","wasmgate":{"hold_headers":true}}"#,
        &|_| None,
    )
    .expect("config");
    let h = headers(&[
        (":method", b"POST"),
        (":path", b"/"),
        (":authority", b"upstream.test"),
        ("content-type", b"application/x-www-form-urlencoded"),
    ]);
    let head = RequestHead {
        headers: &h,
        end_of_stream: false,
        route: None,
        request_id: b"test-request-id",
    };
    let job = on_headers(&config, &head)
        .expect("no refusal")
        .body
        .expect("the form is buffered");
    let done = job.finish(b"a=1\r\nInjected: 1").expect("no refusal");
    let path = done
        .changes
        .iter()
        .find(|c| c.name == ":path")
        .map(|c| c.values[0].clone())
        .expect("the fields move to the query");
    assert!(
        path.iter().all(u8::is_ascii_graphic),
        "{:?}",
        String::from_utf8_lossy(&path)
    );
    assert!(
        path.ends_with(b"a=1%0D%0AInjected%3A%201"),
        "{:?}",
        String::from_utf8_lossy(&path)
    );
}
