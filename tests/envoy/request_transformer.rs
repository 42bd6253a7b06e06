//! request-transformer in a real Envoy, beyond the case file: headers held for the body
//! (`allow_on_headers_stop_iteration`), the body buffer limit, bytes that are not UTF-8, deep
//! JSON, the seed's secret-injection example, and (ignored by default) the cost per request
//! next to Envoy's native `header_mutation` filter.

use std::time::Instant;

use serde_json::{json, Value};
use wasmgate_tests::client::{raw_exchange, send, Connection};
use wasmgate_tests::envoy::{load_example, ListenerSpec};
use wasmgate_tests::process::cpu_ns;
use wasmgate_tests::{
    paths, EchoReport, EchoUpstream, Envoy, EnvoyConfig, Protocol, Request, RequestBody, WasmFilter,
};

const MIB: u64 = 1 << 20;

fn transformer(config: Value) -> Vec<WasmFilter> {
    vec![WasmFilter::plugin("request-transformer", config)]
}

fn report(response: &wasmgate_tests::Response) -> EchoReport {
    assert_eq!(response.status, 200, "{}", response.text());
    response.echo_report()
}

fn form(path: &str, body: &str) -> Request {
    Request::post(path, RequestBody::Bytes(body.as_bytes().to_vec()))
        .header("content-type", "application/x-www-form-urlencoded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_headers_move_form_fields_to_the_query_and_get_an_exact_length() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener(
            "get",
            transformer(json!({
                "http_method": "GET",
                "add": {"body": ["added:1"], "querystring": ["q:1"]},
                "wasmgate": {"hold_headers": true},
            })),
        )
        .listener(
            "json",
            transformer(json!({"add": {"body": ["p:v"]}, "wasmgate": {"hold_headers": true}})),
        );
    let envoy = Envoy::start_bootstrap(&config.bootstrap(), 2)
        .await
        .unwrap();
    for protocol in Protocol::ALL {
        let got = report(
            &send(
                envoy.listener("get"),
                protocol,
                &form("/m?hello=world", "name=marco+p"),
            )
            .await
            .unwrap(),
        );
        assert_eq!(got.method, "GET", "{protocol:?}");
        assert_eq!(got.query.as_deref(), Some("hello=world&name=marco%20p&q=1"));
        assert_eq!(got.body.as_deref(), Some("name=marco+p&added=1"));
        assert_eq!(got.header("content-length"), Some("20"), "{protocol:?}");

        // Chunked in, exact length out.
        let chunked = Request::post(
            "/j",
            RequestBody::Chunks(vec![b"{\"a\":".to_vec(), b"1}".to_vec()]),
        )
        .header("content-type", "application/json");
        let got = report(
            &send(envoy.listener("json"), protocol, &chunked)
                .await
                .unwrap(),
        );
        assert_eq!(got.body.as_deref(), Some(r#"{"a":1,"p":"v"}"#));
        assert_eq!(got.header("content-length"), Some("15"), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_buffer_limit_pass_on_unchanged() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("default", transformer(json!({"add": {"body": ["p:v"]}})))
        .listener(
            "small",
            transformer(json!({"add": {"body": ["p:v"]}, "wasmgate": {"body_buffer_limit": 100}})),
        );
    let envoy = Envoy::start(&config).await.unwrap();
    for protocol in Protocol::ALL {
        // 2 MiB, above the 768 KiB default and Envoy's own buffer limit: the plugin stops
        // buffering as the running total passes its limit, so Envoy never answers 413, and
        // the bytes arrive unchanged. Without a length the chunks are paced, so that Envoy
        // hands them to the plugin one by one rather than reading a fast upload past its own
        // 1 MiB limit first (that 413 is Envoy's, documented in README).
        let filler = wasmgate_tests::client::filler_chunk(64 * 1024);
        let bodies = [
            RequestBody::Filler {
                len: 2 * MIB,
                with_length: true,
            },
            RequestBody::Paced {
                chunks: vec![filler; 32],
                pause: std::time::Duration::from_millis(5),
            },
        ];
        for body in bodies {
            let big = Request::post("/big", body).header("content-type", "application/json");
            let response = send(envoy.listener("default"), protocol, &big)
                .await
                .unwrap();
            let got = report(&response);
            assert_eq!(got.body_len, 2 * MIB, "{protocol:?}");
            assert_eq!(
                got.body_sha256,
                wasmgate_tests::echo::filler_sha256(2 * MIB)
            );
        }
        // Just under the default limit: rewritten.
        let pad = "x".repeat(700 * 1024);
        let body = format!(r#"{{"pad":"{pad}","a":1}}"#).into_bytes();
        let chunks = body.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
        let near = Request::post("/near", RequestBody::Chunks(chunks))
            .header("content-type", "application/json");
        let response = send(envoy.listener("default"), protocol, &near)
            .await
            .unwrap();
        let got = report(&response);
        let json: Value = serde_json::from_str(got.body.as_deref().unwrap_or("")).unwrap();
        assert_eq!(json["p"], "v", "{protocol:?}");
        assert_eq!(json["a"], 1);
        // A configured limit of 100 bytes: a 200-byte JSON body passes as sent.
        let body = format!(r#"{{"pad":"{}"}}"#, "y".repeat(190));
        let chunked = Request::post(
            "/small",
            RequestBody::Chunks(vec![
                body.as_bytes()[..50].to_vec(),
                body.as_bytes()[50..].to_vec(),
            ]),
        )
        .header("content-type", "application/json");
        let got = report(
            &send(envoy.listener("small"), protocol, &chunked)
                .await
                .unwrap(),
        );
        assert_eq!(got.body.as_deref(), Some(body.as_str()));
    }
}

fn raw_post(path: &str, headers: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("POST {path} HTTP/1.1\r\nhost: raw.test\r\nconnection: close\r\n").into_bytes();
    for header in headers {
        out.extend_from_slice(header);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_and_deep_json_never_trap() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr()).listener(
        "odd",
        transformer(json!({
            "add": {
                "headers": ["x-copy:$(headers.x_latin)", "x-q:$(query_params.q)"],
                "querystring": ["from-header:$(headers.x_latin)"],
                "body": ["p:v"],
            },
            "rename": {"body": ["\u{e9}:e"]},
        })),
    );
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("odd");

    // An obs-text header value (Latin-1 é) copied into a header and the query string.
    let text = raw_exchange(
        addr,
        &raw_post(
            "/o?q=%E9%ff",
            &[b"x-latin: caf\xe9", b"content-type: text/plain"],
            b"x",
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("from-header=caf%E9"), "{text}");

    // Form and JSON bodies that are not UTF-8.
    for (content_type, body, expected) in [(
        &b"application/x-www-form-urlencoded"[..],
        &b"%C3%A9=1&\xff=\xfe"[..],
        "\"body\":\"e=1&\u{fffd}=\u{fffd}&p=v\"",
    )] {
        let mut header = b"content-type: ".to_vec();
        header.extend_from_slice(content_type);
        let text = raw_exchange(addr, &raw_post("/b", &[&header], body)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(expected), "{expected} in {text}");
    }

    // JSON that is not UTF-8 is not JSON (RFC 8259): with a body rename configured it is
    // refused, never passed on with the field under its old name.
    let text = raw_exchange(
        addr,
        &raw_post(
            "/b",
            &[b"content-type: application/json"],
            b"{\"\xe9\":\"\xff\"}",
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // 100,000 levels of nesting inside a value: rewritten, nothing overflows.
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let request = Request::post("/deep", RequestBody::Bytes(deep.into_bytes()))
        .header("content-type", "application/json");
    let got = report(&send(addr, Protocol::Http2, &request).await.unwrap());
    assert!(got
        .body
        .as_deref()
        .unwrap_or("")
        .ends_with("]],\"p\":\"v\"}"));

    // Every worker still answers (a trap would turn into 503s).
    for _ in 0..8 {
        let got = report(
            &send(addr, Protocol::Http1, &Request::get("/after"))
                .await
                .unwrap(),
        );
        assert_eq!(got.header("x-copy"), Some(""));
    }
    let log = envoy.log();
    assert!(!log.contains("panicked") && !log.contains("trap"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_secret_injection_example_overrides_client_credentials() {
    let echo = EchoUpstream::start().await.unwrap();
    let bootstrap = load_example("seed-secret-injection.yaml", echo.addr());

    // The token comes from Envoy's own environment (host_env_keys): without it, Envoy
    // refuses to start rather than send requests with an empty credential.
    let refused = Envoy::start_bootstrap_env(&bootstrap, 2, &[("BACKEND_TOKEN", None)]).await;
    let log = refused
        .err()
        .expect("Envoy must refuse to start without BACKEND_TOKEN");
    assert!(
        log.contains("environment variable BACKEND_TOKEN is not set"),
        "{log}"
    );

    let envoy = Envoy::start_bootstrap_env(
        &bootstrap,
        2,
        &[("BACKEND_TOKEN", Some("example-backend-token"))],
    )
    .await
    .unwrap();
    let addr = envoy.listener("gateway");
    for protocol in Protocol::ALL {
        for client in [
            None,
            Some("Bearer client-supplied"),
            Some("Basic dXNlcjpwYXNz"),
        ] {
            let mut request = Request::get("/api");
            if let Some(value) = client {
                request = request.header("authorization", value);
            }
            let got = report(&send(addr, protocol, &request).await.unwrap());
            assert_eq!(
                got.header_values("authorization"),
                vec!["Bearer example-backend-token"],
                "{protocol:?} client {client:?}"
            );
        }
    }
    assert!(
        !envoy.log().contains("example-backend-token"),
        "the secret is never logged"
    );
}

/// Per-request cost in one Envoy: no filter, Envoy's native `header_mutation` doing the
/// header part of the seed's job, and request-transformer with the seed's config, measured as
/// Envoy CPU time per request (and client-side latency) over one kept HTTP/1.1 connection.
/// `cargo xtask test -p wasmgate-tests --test in_envoy request_transformer::bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn bench_per_request_cost_next_to_header_mutation() {
    let echo = EchoUpstream::start().await.unwrap();
    let token = "bench-token";
    let header_mutation = json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "authorization", "value": format!("Bearer {token}")},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }}]},
        },
    });
    let seed = json!({
        "replace": {"headers": ["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]},
        "add": {"headers": ["Authorization:Bearer {vault://env/BACKEND_TOKEN}"]},
    });
    let mut config = EnvoyConfig::new(echo.addr()).concurrency(1);
    let listeners = ["baseline", "header_mutation", "request_transformer"];
    config.listeners.push(ListenerSpec {
        name: listeners[0].into(),
        filters: vec![],
        native_filters: vec![],
    });
    config.listeners.push(ListenerSpec {
        name: listeners[1].into(),
        filters: vec![],
        native_filters: vec![header_mutation],
    });
    config.listeners.push(ListenerSpec {
        name: listeners[2].into(),
        filters: vec![WasmFilter::plugin("request-transformer", seed).env("BACKEND_TOKEN", token)],
        native_filters: vec![],
    });
    let envoy = Envoy::start(&config).await.unwrap();
    const ROUNDS: usize = 5;
    const N: usize = 10_000;
    let request = Request::get("/bench").header("authorization", "Bearer client");
    let mut connections = Vec::new();
    for name in listeners {
        let mut connection = Connection::open(envoy.listener(name), Protocol::Http1)
            .await
            .unwrap();
        for _ in 0..1_000 {
            connection.send(&request).await.unwrap();
        }
        let check = connection.send(&request).await.unwrap();
        let got: EchoReport = serde_json::from_slice(&check.body).unwrap();
        let expected = if name == "baseline" {
            "Bearer client"
        } else {
            "Bearer bench-token"
        };
        assert_eq!(got.header("authorization"), Some(expected), "{name}");
        connections.push(connection);
    }
    // cpu[listener] and p50[listener] per round, rounds interleaved.
    let mut cpu = vec![Vec::new(); listeners.len()];
    let mut p50 = vec![Vec::new(); listeners.len()];
    for _ in 0..ROUNDS {
        for (i, connection) in connections.iter_mut().enumerate() {
            let mut latencies = Vec::with_capacity(N);
            let before = cpu_ns(envoy.pid());
            for _ in 0..N {
                let t = Instant::now();
                let response = connection.send(&request).await.unwrap();
                latencies.push(t.elapsed());
                assert_eq!(response.status, 200);
            }
            let used = cpu_ns(envoy.pid()) - before;
            latencies.sort();
            cpu[i].push(used as f64 / N as f64 / 1000.0);
            p50[i].push(latencies[N / 2].as_secs_f64() * 1e6);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base_cpu = median(&mut cpu[0].clone());
    println!("| listener | Envoy CPU per request (median of {ROUNDS} x {N}) | over baseline | client p50 latency |");
    println!("| --- | --- | --- | --- |");
    for (i, name) in listeners.iter().enumerate() {
        let c = median(&mut cpu[i]);
        println!(
            "| {name} | {c:.1} µs | {:+.1} µs | {:.0} µs |",
            c - base_cpu,
            median(&mut p50[i])
        );
    }
    let module = paths::plugin_module("request-transformer");
    println!(
        "module: {} bytes",
        std::fs::metadata(module).map(|m| m.len()).unwrap_or(0)
    );
}
