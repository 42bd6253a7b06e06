//! What the plugins mean on the gateway's own request path, beyond the case files: Kong's
//! `set_path` and `upstream_host` for the transformer's rewrites, headers held until the body
//! is in (`wasmgate.hold_headers`), and rate-limit counters that belong to the plugin instance
//! across reloads.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::client::send;
use wasmgate_tests::gateway::start;
use wasmgate_tests::{EchoUpstream, Protocol, Request, RequestBody};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A service with a path, a stripping route that runs `plugin`, and a second service on
/// `/v2` that must never see the first route's traffic.
fn rewrite_config(echo: std::net::SocketAddr, plugin: &str) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: users
    url: http://{echo}/base
    routes:
      - name: api
        paths: [/api]
        strip_path: true
        plugins:
          - name: request-transformer
            config: {plugin}
  - name: other
    url: http://{echo}/other
    routes:
      - name: v2
        paths: [/v2]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_uri_is_the_whole_upstream_path() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&rewrite_config(
        echo.addr(),
        r#"{"replace": {"uri": "/v2/users"}}"#,
    ));
    for protocol in Protocol::ALL {
        let response = send(gateway.addr(), protocol, &Request::get("/api/x?page=2"))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        // Kong: no second strip_path, no service path, no re-routing to /v2; the query stays.
        assert_eq!(seen.path, "/v2/users", "{protocol:?}");
        assert_eq!(seen.query.as_deref(), Some("page=2"), "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_host_is_the_upstream_host() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&rewrite_config(
        echo.addr(),
        r#"{"replace": {"headers": ["host:internal.svc"]}}"#,
    ));
    for protocol in Protocol::ALL {
        let response = send(
            gateway.addr(),
            protocol,
            &Request::get("/api/x").header("host", "public.example"),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        assert_eq!(
            seen.header_values("host"),
            vec!["internal.svc"],
            "{protocol:?}"
        );
        // The route still ran its own path rules: the service path and the stripped rest.
        assert_eq!(seen.path, "/base/x", "{protocol:?}");
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some("public.example"),
            "{protocol:?}: the client's host is what was forwarded"
        );
    }
}

/// Filters see the Host as the client spelled it: `$(headers.host)` renders it, and
/// `preserve_host` forwards it unchanged on a route with plugins as on one without
/// (differential finding F4: it was lower-cased). A client's copy of the header Envoy's
/// translation uses to hand the Host over changes nothing and is not forwarded (F9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_see_the_host_as_the_client_sent_it() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&rewrite_config(
        echo.addr(),
        r#"{"add": {"headers": ["x-client-host:$(headers.host)"]}}"#,
    ));
    for protocol in Protocol::ALL {
        let request = Request::get("/api/x")
            .header("host", "Client.Test:8080")
            .header(model::envoy::CLIENT_HOST_HEADER, "spoofed.test");
        let response = send(gateway.addr(), protocol, &request).await.unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        assert_eq!(
            seen.header("x-client-host"),
            Some("Client.Test:8080"),
            "{protocol:?}"
        );
        assert_eq!(seen.header("host"), Some(echo.addr().to_string().as_str()));
        assert_eq!(seen.header(model::envoy::CLIENT_HOST_HEADER), None);
    }

    let preserved = format!(
        r#"
_format_version: "3.0"
services:
  - name: s
    url: http://{}
    routes:
      - name: kept
        paths: [/kept]
        preserve_host: true
        plugins:
          - name: rate-limiting
            config: {{minute: 1000}}
"#,
        echo.addr()
    );
    let gateway = start(&preserved);
    for protocol in Protocol::ALL {
        let request = Request::get("/kept").header("host", "Mixed.Case.Test:8080");
        let response = send(gateway.addr(), protocol, &request).await.unwrap();
        let seen = response.echo_report();
        assert_eq!(
            seen.header("host"),
            Some("Mixed.Case.Test:8080"),
            "{protocol:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_headers_wait_for_the_body_and_get_its_exact_length() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&rewrite_config(
        echo.addr(),
        r#"{"remove": {"body": ["role"]}, "wasmgate": {"hold_headers": true}}"#,
    ));
    for protocol in Protocol::ALL {
        let request = Request::post(
            "/api/users",
            RequestBody::Bytes(br#"{"role":"admin","name":"ann"}"#.to_vec()),
        )
        .header("content-type", "application/json");
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send(gateway.addr(), protocol, &request),
        )
        .await
        .unwrap_or_else(|_| panic!("{protocol:?}: the held request never went on"))
        .unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        assert_eq!(
            seen.body.as_deref(),
            Some(r#"{"name":"ann"}"#),
            "{protocol:?}"
        );
        assert_eq!(
            seen.header("content-length"),
            Some("14"),
            "{protocol:?}: the rewritten body's exact length, not chunked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_usage_survives_a_reload_that_edits_the_plugin() {
    let echo = EchoUpstream::start().await.unwrap();
    // A year window: the test never straddles one.
    let config = |message: &str, limit: u32, size_limit: bool| {
        let before = if size_limit {
            "  - name: request-size-limiting\n    config: {allowed_payload_size: 1}\n"
        } else {
            ""
        };
        format!(
            r#"
_format_version: "3.0"
services:
  - name: s
    url: http://{}
    routes:
      - name: r
        paths: [/]
plugins:
{before}  - name: rate-limiting
    config: {{year: {limit}, limit_by: service, error_message: "{message}"}}
"#,
            echo.addr()
        )
    };
    let gateway = start(&config("API rate limit exceeded", 3, false));
    let root = Request::get("/");
    let get = || send(gateway.addr(), Protocol::Http1, &root);
    for n in 0..3 {
        assert_eq!(get().await.unwrap().status, 200, "request {n}");
    }
    assert_eq!(get().await.unwrap().status, 429);

    // Kong keys its counters by route and service, not by config: a new message (and a
    // plugin added before this one in the file) keep the usage.
    gateway
        .shared()
        .apply(&config("Slow down", 3, true))
        .unwrap_or_else(|e| panic!("{e}"));
    let limited = get().await.unwrap();
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json().unwrap()["message"], "Slow down");

    // A raised limit counts on from the usage so far.
    gateway
        .shared()
        .apply(&config("Slow down", 4, true))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get().await.unwrap().status, 200);
    assert_eq!(get().await.unwrap().status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_module_sees_only_the_secrets_its_own_config_references() {
    let echo = EchoUpstream::start().await.unwrap();
    let filters = tempfile::tempdir().unwrap();
    let environ =
        wat::parse_file(wasmgate_tests::paths::workspace_root().join("tests/wat/environ.wat"))
            .expect("environ.wat compiles");
    std::fs::write(filters.path().join("environ.wasm"), &environ).unwrap();
    let text = format!(
        r#"
_format_version: "3.0"
services:
  - name: s
    url: http://{}
    routes:
      - name: plain
        paths: [/plain]
      - name: named
        paths: [/named]
plugins:
  - name: request-transformer
    config: {{add: {{headers: ["authorization:Bearer {{vault://env/backend-token}}"]}}}}
filter_chains:
  - route: plain
    filters:
      - name: environ
  - route: named
    filters:
      - name: environ
        config: "show {{vault://env/SHARED_FLAG}}"
"#,
        echo.addr()
    );
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 1;
    options.runtime.filters_dir = Some(filters.path().to_owned());
    options.runtime.env_values = vec![
        ("BACKEND_TOKEN".into(), "s3cr3t".into()),
        ("SHARED_FLAG".into(), "on".into()),
    ];
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    for (path, environ) in [("/plain", ""), ("/named", "SHARED_FLAG=on")] {
        let response = send(gateway.addr(), Protocol::Http1, &Request::get(path))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let seen = response.echo_report();
        // The transformer was given its secret; the third-party filter next to it was not.
        assert_eq!(
            seen.header("authorization"),
            Some("Bearer s3cr3t"),
            "{path}"
        );
        assert_eq!(seen.header("x-environ"), Some(environ), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_uri_captures() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&format!(
        r#"
_format_version: "3.0"
services:
  - name: users
    url: http://{}
    routes:
      - name: user
        paths: ["~/users/(?<id>\\d+)$"]
        strip_path: false
        plugins:
          - name: request-transformer
            config:
              add:
                headers: ["x-user:$(uri_captures.id or \"none\")"]
"#,
        echo.addr()
    ));
    // Envoy keeps the client's path in x-envoy-original-path for the transformer and drops a
    // client's own; the gateway must not let a client's own stand in for its path either.
    let request = Request::get("/users/42").header("x-envoy-original-path", "/users/666");
    let response = send(gateway.addr(), Protocol::Http1, &request)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.echo_report().header("x-user"), Some("42"));
}

/// A 10 MB limit on a gigabyte upload: the gateway answers 413 after about 10 MB, then lingers
/// (reads and drops) at most 64 MiB more and closes. Judged in bytes: what the client had
/// sent when it saw the answer, and what it managed to write in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_over_the_limit_is_cut_off_not_drained() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(&format!(
        "_format_version: \"3.0\"\nservices: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\nplugins: [{{name: request-size-limiting, config: {{allowed_payload_size: 10}}}}]\n",
        echo.addr()
    ));
    for protocol in Protocol::ALL {
        let response = send(
            gateway.addr(),
            protocol,
            &Request::post(
                "/upload",
                RequestBody::Filler {
                    len: GIB,
                    with_length: false,
                },
            ),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 413, "{protocol:?}: {}", response.text());
        assert_eq!(
            response.json().unwrap(),
            response.kong_error_json("Request size limit exceeded")
        );
        // The answer leaves at the limit, but the client may read it only after the gateway's
        // linger has taken its 64 MiB (a loaded machine schedules the client's reader late):
        // the limit, the linger and the socket buffers, far from the gigabyte a drain takes.
        assert!(
            response.body_sent < 10 * MIB + 64 * MIB + 16 * MIB,
            "{protocol:?}: {} MiB sent before the answer",
            response.body_sent / MIB
        );
    }

    // HTTP/1.1 with a declared gigabyte, written raw: after the 413 the client keeps writing;
    // a gateway that stopped reading lets it write only as much as the socket buffers hold.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1073741824\r\n\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let answer = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out).await;
        out
    });
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0u64;
    while written < GIB {
        let write = writer.write_all(&chunk);
        // A write that cannot proceed for long means the gateway stopped reading.
        match tokio::time::timeout(std::time::Duration::from_secs(10), write).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    drop(writer);
    assert!(
        written < 128 * MIB,
        "the client wrote {} MiB of a refused upload",
        written / MIB
    );
    let answer = String::from_utf8_lossy(&answer.await.unwrap()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.200}");
    for arrival in echo.arrivals() {
        assert!(
            !arrival.complete && arrival.body_bytes <= 10 * MIB,
            "the upstream got {} bytes of a refused upload",
            arrival.body_bytes
        );
    }
}

/// Kong's priority order: request-size-limiting (951), then rate-limiting (910), then
/// request-transformer (801). Each pair is pinned by a request whose answer depends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_in_kongs_priority_order() {
    let echo = EchoUpstream::start().await.unwrap();
    // Listed in the reverse of their priority: the file's order must not matter.
    let gateway = start(&format!(
        r#"
_format_version: "3.0"
services: [{{name: e, url: "http://{}", routes: [{{name: r, paths: [/]}}]}}]
plugins:
  - {{name: request-transformer, config: {{replace: {{headers: ["x-key:shared"]}}}}}}
  - {{name: rate-limiting, config: {{minute: 1, limit_by: header, header_name: x-key}}}}
  - {{name: request-size-limiting, config: {{allowed_payload_size: 1, size_unit: kilobytes}}}}
"#,
        echo.addr()
    ));
    let get = |key: &str| Request::get("/").header("x-key", key);
    let first = send(gateway.addr(), Protocol::Http1, &get("a"))
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.echo_report().header_values("x-key"), ["shared"]);
    // Counted by the client's key, so before the transformer replaced it.
    let second = send(gateway.addr(), Protocol::Http1, &get("b"))
        .await
        .unwrap();
    assert_eq!(
        second.status, 200,
        "rate-limiting must count before request-transformer"
    );
    // Key a's budget is spent, and the body is over the limit: the size limit answers first.
    let over = Request::post("/", RequestBody::Bytes(vec![b'x'; 2048])).header("x-key", "a");
    let third = send(gateway.addr(), Protocol::Http1, &over).await.unwrap();
    assert_eq!(
        third.status,
        413,
        "request-size-limiting must decide before rate-limiting: {}",
        third.text()
    );
    let fourth = send(gateway.addr(), Protocol::Http1, &get("a"))
        .await
        .unwrap();
    assert_eq!(fourth.status, 429, "{}", fourth.text());
}

/// Writes `<name>.wasm` into `dir`: a hand-written proxy-wasm module whose VM starts, with
/// `imports` and `body` (data segments and the exports the test needs, `proxy_on_configure`
/// among them).
fn write_filter(dir: &std::path::Path, name: &str, imports: &str, body: &str) {
    let wasm = wat::parse_str(format!(
        r#"(module
          {imports}
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
          {body})"#
    ))
    .unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
}

/// `proxy_on_configure` accepting any configuration.
const CONFIGURE_OK: &str =
    r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"#;

/// A gateway with `dir` as its filters directory, `workers` workers, serving `declarative`.
fn start_with_filters(
    dir: &std::path::Path,
    workers: usize,
    declarative: &str,
) -> gateway::Gateway {
    let mut options = wasmgate_tests::gateway::options();
    options.workers = workers;
    options.runtime.filters_dir = Some(dir.to_owned());
    wasmgate_tests::gateway::start_with(options, declarative)
}

/// A filter that traps fails its request with 503 and is replaced; the gateway and every
/// other route go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_traps_fails_only_its_request() {
    let filters = tempfile::tempdir().unwrap();
    write_filter(
        filters.path(),
        "trap",
        "",
        &format!(
            r#"{CONFIGURE_OK}
            (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)"#
        ),
    );
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start_with_filters(
        filters.path(),
        2,
        &format!(
            r#"
_format_version: "3.0"
services:
  - name: e
    url: http://{}
    routes: [{{name: trapping, paths: [/trap]}}, {{name: fine, paths: [/fine]}}]
filter_chains:
  - {{route: trapping, filters: [{{name: trap}}]}}
"#,
            echo.addr()
        ),
    );
    for _ in 0..3 {
        let trapped = send(gateway.addr(), Protocol::Http1, &Request::get("/trap"))
            .await
            .unwrap();
        assert_eq!(trapped.status, 503, "{}", trapped.text());
        let fine = send(gateway.addr(), Protocol::Http2, &Request::get("/fine"))
            .await
            .unwrap();
        assert_eq!(fine.status, 200, "{}", fine.text());
    }
    assert_eq!(
        echo.arrivals().iter().filter(|a| a.path == "/trap").count(),
        0,
        "a trapped request reached the upstream"
    );
}

/// A filter that holds the request or the response head and never resumes is answered like an
/// upstream that does not answer: Kong's 504, after the service's `read_timeout` (Envoy's
/// translation sets the route's idle timeout from it too), not after Envoy's 300 s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_holds_a_stream_is_answered_504_after_the_read_timeout() {
    let filters = tempfile::tempdir().unwrap();
    for (file, callback) in [
        ("hold_request", "proxy_on_request_headers"),
        ("hold_response", "proxy_on_response_headers"),
    ] {
        write_filter(
            filters.path(),
            file,
            "",
            &format!(
                r#"{CONFIGURE_OK}
                (func (export "{callback}") (param i32 i32 i32) (result i32) (i32.const 1))"#
            ),
        );
    }
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start_with_filters(
        filters.path(),
        2,
        &format!(
            r#"
_format_version: "3.0"
services:
  - name: e
    url: http://{}
    read_timeout: 200
    routes: [{{name: request, paths: [/request]}}, {{name: response, paths: [/response]}}]
filter_chains:
  - {{route: request, filters: [{{name: hold_request}}]}}
  - {{route: response, filters: [{{name: hold_response}}]}}
"#,
            echo.addr()
        ),
    );
    for (path, reaches) in [("/request", 0), ("/response", 1)] {
        let before = echo.record();
        // Bounded well below the 300 s the gateway used to wait, so that a regression fails
        // rather than stalls the suite.
        let held = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            send(gateway.addr(), Protocol::Http1, &Request::get(path)),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 60 s"))
        .unwrap();
        assert_eq!(held.status, 504, "{path}: {}", held.text());
        assert_eq!(
            held.json(),
            Some(held.kong_error_json("The upstream server is timing out")),
            "{path}"
        );
        let seen = echo.record() - before;
        assert_eq!((seen.heads, seen.whole), (reaches, reaches), "{path}");
    }
}

/// A filter whose instance fails to start on a worker fails that worker's requests (503) only
/// until the next try, not for good. The module's start fails once: the first start (the
/// config's validation) succeeds, the second (the worker's instance) fails, later ones
/// succeed; it counts its starts in shared data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_failed_to_start_is_started_again() {
    let filters = tempfile::tempdir().unwrap();
    write_filter(
        filters.path(),
        "second_start_fails",
        r#"(import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "starts")
          (data (i32.const 108) "12")
          (func (export "proxy_on_configure") (param i32 i32) (result i32)
            (if (call $get (i32.const 100) (i32.const 6) (i32.const 0) (i32.const 4) (i32.const 8))
              (then
                (drop (call $set (i32.const 100) (i32.const 6) (i32.const 108) (i32.const 1) (i32.const 0)))
                (return (i32.const 1))))
            (if (i32.eq (i32.load8_u (i32.load (i32.const 0))) (i32.const 49))
              (then
                (drop (call $set (i32.const 100) (i32.const 6) (i32.const 109) (i32.const 1) (i32.const 0)))
                (return (i32.const 0))))
            (i32.const 1))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))"#,
    );
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start_with_filters(
        filters.path(),
        1,
        &format!(
            r#"
_format_version: "3.0"
services:
  - name: e
    url: http://{}
    routes: [{{name: r, paths: [/]}}]
filter_chains:
  - {{route: r, filters: [{{name: second_start_fails}}]}}
"#,
            echo.addr()
        ),
    );
    let first = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
        .await
        .unwrap();
    assert_eq!(first.status, 503, "{}", first.text());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
            .await
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance was never started again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(echo.record().whole, 1);
}

/// Every worker gets its instance of every filter, whatever the number of workers: instances
/// are not taken from a fixed pool (one of 256 slots left the last of 90 workers with the
/// seed's 3 plugins answering 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_gets_its_instance_of_every_filter() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = wasmgate_tests::gateway::ProxyPath::Plugins.config(&format!(
        "_format_version: \"3.0\"\nservices:\n  - {{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}",
        echo.addr()
    ));
    let mut options = wasmgate_tests::gateway::options();
    options.workers = 90;
    let gateway = wasmgate_tests::gateway::start_with(options, &config);
    let addr = gateway.addr();
    // Fresh connections, spread over the workers by SO_REUSEPORT: 600 reach all 90 but for
    // a chance below 0.1 %.
    for batch in 0..12 {
        let sent: Vec<_> = (0..50)
            .map(|i| {
                tokio::spawn(async move {
                    let r = send(addr, Protocol::Http1, &Request::get("/")).await;
                    (batch * 50 + i, r)
                })
            })
            .collect();
        for task in sent {
            let (n, r) = task.await.unwrap();
            let r = r.unwrap();
            assert_eq!(r.status, 200, "request {n}: {}", r.text());
        }
    }
}

/// `--shared-data-max-bytes` reaches the modules' store: with no room, rate-limiting's store
/// fails and `fault_tolerant` decides (the arithmetic is in `tests/host/store.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_data_cap_makes_the_store_fail_as_fault_tolerant_says() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = |fault_tolerant: bool| {
        format!(
            "_format_version: \"3.0\"\nservices:\n  - {{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}\nplugins:\n  - name: rate-limiting\n    config: {{second: 100, fault_tolerant: {fault_tolerant}}}",
            echo.addr()
        )
    };
    for (fault_tolerant, status) in [(true, 200), (false, 500)] {
        let mut options = wasmgate_tests::gateway::options();
        options.runtime.shared_data_max_bytes = 0;
        let gateway = wasmgate_tests::gateway::start_with(options, &config(fault_tolerant));
        let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
            .await
            .unwrap();
        assert_eq!(response.status, status, "{}", response.text());
        assert_eq!(response.header("x-ratelimit-limit-second"), None);
    }
    // The default cap has room: the same plugin counts.
    let gateway = start(&config(false));
    let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-ratelimit-remaining-second"), Some("99"));
}

/// The listening sockets in LISTEN state on `port`, from the kernel's own table.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is "0100007F:1F90"; state 0A is LISTEN.
            fields.get(1).and_then(|a| a.rsplit(':').next()) == Some(&format!("{port:04X}"))
                && fields.get(3) == Some(&"0A")
        })
        .count()
}

/// Thread-per-core as in Envoy: each worker listens on its own socket of the shared port
/// (`SO_REUSEPORT`), so the kernel spreads connections over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_has_its_own_listening_socket() {
    let echo = EchoUpstream::start().await.unwrap();
    for workers in [1, 3] {
        let mut options = wasmgate_tests::gateway::options();
        options.workers = workers;
        let gateway = wasmgate_tests::gateway::start_with(
            options,
            &format!(
                "_format_version: \"3.0\"\nservices:\n  - {{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}",
                echo.addr()
            ),
        );
        assert_eq!(listening_sockets(gateway.addr().port()), workers);
        let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
}

/// `connection.id` is the downstream connection's, as in Envoy: the same for every request on
/// one connection, another on the next connection, whichever worker takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_id_is_one_per_downstream_connection() {
    let filters = tempfile::tempdir().unwrap();
    // Answers every request itself with the property's 8 bytes as the body.
    write_filter(
        filters.path(),
        "connection_id",
        r#"(import "env" "proxy_get_property" (func $property (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "connection\00id")
            {CONFIGURE_OK}
            (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
              (drop (call $property (i32.const 16) (i32.const 13) (i32.const 0) (i32.const 4)))
              (drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0)
                (i32.load (i32.const 0)) (i32.load (i32.const 4)) (i32.const 0) (i32.const 0)
                (i32.const -1)))
              (i32.const 1))"#
        ),
    );
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start_with_filters(
        filters.path(),
        2,
        &format!(
            r#"
_format_version: "3.0"
services:
  - {{name: e, url: "http://{}", routes: [{{name: any, paths: [/]}}]}}
filter_chains:
  - {{route: any, filters: [{{name: connection_id}}]}}
"#,
            echo.addr()
        ),
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(gateway.addr())
            .await
            .unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut on_this_connection = Vec::new();
        for _ in 0..3 {
            let request = http::Request::get("/")
                .header("host", "gateway.test")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            let id: [u8; 8] = body[..]
                .try_into()
                .unwrap_or_else(|_| panic!("not an 8-byte integer: {body:?}"));
            on_this_connection.push(u64::from_le_bytes(id));
        }
        assert!(
            on_this_connection
                .iter()
                .all(|id| *id == on_this_connection[0]),
            "one connection, several ids: {on_this_connection:?}"
        );
        ids.push(on_this_connection[0]);
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "connections share an id: {ids:?}"
    );
    assert!(!ids.contains(&0), "{ids:?}");
}

/// Review finding 18: a filter holds the headers (a proxy-wasm pause from headers: Envoy's
/// StopAllIterationAndWatermark) while a 4 MiB upload arrives. Past the 1 MiB buffer limit the
/// gateway stops reading the client instead of answering 413; when the filter resumes (from
/// its root context's `on_tick`, 300 ms later) the whole body goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_headers_push_back_on_a_big_upload_instead_of_413() {
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: wasmgate_trace_filter, \
         config: {{name: A, request_headers: pause, resume: tick, tick_ms: 300}}}}]}}]\n",
        echo.addr()
    );
    let gateway =
        wasmgate_tests::gateway::start_with_filters(&wasmgate_tests::paths::wasm_dir(), &text);
    let len = 4 * MIB;
    let upload = Request::post(
        "/up",
        RequestBody::Filler {
            len,
            with_length: true,
        },
    );
    let response = send(gateway.addr(), Protocol::Http1, &upload)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = response.echo_report();
    assert_eq!(seen.body_len, len);
    assert_eq!(seen.body_sha256, wasmgate_tests::echo::filler_sha256(len));
}

/// Review finding 23: what a module does when its gRPC call closes — here it resumes the
/// request from `proxy_on_grpc_close`, with the stream's context made effective as the SDKs
/// do (the call's events come to the root context, as in Envoy) — goes out at once, not when
/// (or if) more input comes. The call goes to the echo service, no gRPC server: it closes
/// with an error as soon as the answer is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_module_does_when_its_grpc_call_closes_goes_out_at_once() {
    let module = wat::parse_str(
        r#"(module
  (import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $caller (mut i32) (i32.const 0))
  (data (i32.const 100) "e")
  (data (i32.const 110) "svc.Check")
  (data (i32.const 120) "Check")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $caller (local.get $ctx))
    (drop (call $grpc (i32.const 100) (i32.const 1) (i32.const 110) (i32.const 9)
      (i32.const 120) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 1000) (i32.const 200)))
    (i32.const 1))
  (func (export "proxy_on_grpc_close") (param i32 i32 i32)
    (drop (call $effective (global.get $caller)))
    (drop (call $continue (i32.const 0)))))"#,
    )
    .unwrap();
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(filters.path().join("grpc_closer.wasm"), module).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", read_timeout: 2000, routes: [{{name: r, paths: [/]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: grpc_closer}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let response = send(gateway.addr(), Protocol::Http1, &Request::get("/"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Review finding 38: filters see a request without its connection-specific headers, as in
/// Envoy (`transfer-encoding`, `connection` and the headers it names never reach a filter);
/// a WAT filter reports what it saw of them in `x-saw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_never_see_connection_specific_headers() {
    let module = wat::parse_str(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "transfer-encoding")
  (data (i32.const 120) "connection")
  (data (i32.const 140) "x-named")
  (data (i32.const 160) "x-saw")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func $report (param $name i32) (param $len i32)
    (if (i32.eqz (call $get (i32.const 0) (local.get $name) (local.get $len) (i32.const 0) (i32.const 4)))
      (then (drop (call $add (i32.const 0) (i32.const 160) (i32.const 5) (local.get $name) (local.get $len))))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $report (i32.const 100) (i32.const 17))
    (call $report (i32.const 120) (i32.const 10))
    (call $report (i32.const 140) (i32.const 7))
    (i32.const 0)))"#,
    )
    .unwrap();
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(filters.path().join("saw.wasm"), module).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: saw}}]}}]\n",
        echo.addr()
    );
    let mut options = wasmgate_tests::gateway::options();
    options.runtime.filters_dir = Some(filters.path().to_owned());
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    let request = Request::post(
        "/",
        RequestBody::Chunks(vec![b"hello".to_vec(), b" world".to_vec()]),
    )
    .header("connection", "keep-alive, x-named")
    .header("x-named", "1");
    let response = send(gateway.addr(), Protocol::Http1, &request)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = response.echo_report();
    assert_eq!(seen.header_values("x-saw"), Vec::<&str>::new());
    assert_eq!(seen.body_len, 11);
}

/// A module that answers each closed gRPC call with a new one does not hold its worker (each
/// call is a task of its own, answered when its service answers); its stream ends at the
/// read_timeout (504) and the same worker serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_calls_grpc_on_every_close_does_not_hold_its_worker() {
    let module = wat::parse_str(
        r#"(module
  (import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "e")
  (data (i32.const 110) "svc.Check")
  (data (i32.const 120) "Check")
  (func $call
    (drop (call $grpc (i32.const 100) (i32.const 1) (i32.const 110) (i32.const 9)
      (i32.const 120) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 1000) (i32.const 200))))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $call)
    (i32.const 1))
  (func (export "proxy_on_grpc_close") (param i32 i32 i32)
    (call $call)))"#,
    )
    .unwrap();
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(filters.path().join("grpc_looper.wasm"), module).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", read_timeout: 500, routes: [{{name: r, paths: [/loop]}}, {{name: plain, paths: [/plain]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: grpc_looper}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let request = Request::get("/loop");
    let looping = send(gateway.addr(), Protocol::Http1, &request);
    let looping = tokio::time::timeout(std::time::Duration::from_secs(10), looping)
        .await
        .expect("the looping stream ends")
        .unwrap();
    assert_eq!(looping.status, 504, "{}", looping.text());
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        send(gateway.addr(), Protocol::Http1, &Request::get("/plain")),
    )
    .await
    .expect("the worker serves the next request")
    .unwrap();
    assert_eq!(plain.status, 200);
}

/// Review finding 20 (#13), in the gateway: a module (`wasmgate_tests::modules::
/// edits_from_tick`, the in-process host's test module) that paused a stream edits that
/// stream's headers from `on_tick` after `proxy_set_effective_context`, reads them back, and
/// resumes it; what it wrote goes out.
/// After its `proxy_continue_stream` the map is no longer its to change (`x-late` is
/// refused, without a trap). Before, the add was refused and the read NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_streams_headers_are_edited_from_the_root_context() {
    let filters = tempfile::tempdir().unwrap();
    for (file, callback, map, direction) in [
        ("edit_request", "proxy_on_request_headers", 0, 0),
        ("edit_response", "proxy_on_response_headers", 2, 1),
    ] {
        let module = wasmgate_tests::modules::edits_from_tick(callback, map, direction);
        std::fs::write(filters.path().join(format!("{file}.wasm")), module).unwrap();
    }
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", read_timeout: 5000, routes: [{{name: request, paths: [/request]}}, {{name: response, paths: [/response]}}]}}]\n\
         filter_chains: [{{route: request, filters: [{{name: edit_request}}]}}, {{route: response, filters: [{{name: edit_response}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    let request = send(gateway.addr(), Protocol::Http1, &Request::get("/request"))
        .await
        .unwrap();
    assert_eq!(request.status, 200, "{}", request.text());
    let seen = request.echo_report();
    assert_eq!(seen.header_values("x-from-tick"), ["added"]);
    assert_eq!(seen.header_values("x-read-back"), ["added"]);
    assert_eq!(seen.header_values("x-late"), Vec::<&str>::new());
    let response = send(gateway.addr(), Protocol::Http2, &Request::get("/response"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-from-tick"), Some("added"));
    assert_eq!(response.header("x-read-back"), Some("added"));
    assert_eq!(response.header("x-late"), None);
}

/// Review finding 20 (#13), bodies, in the gateway: a module that buffers a body (its body
/// callback pauses until the end of it, Envoy's StopIterationAndBuffer) reads it whole from
/// `on_tick` after `proxy_set_effective_context`, replaces it with `replaced from tick: ` and
/// what it read, and resumes the stream; what goes on is the replaced body, framed by the
/// gateway (the module removed `content-length`, as a module that resizes a body must).
/// Before, the read was NOT_FOUND and the set too: the original body went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_body_is_replaced_from_the_root_context() {
    let filters = tempfile::tempdir().unwrap();
    for (file, headers, body, map, buffer) in [
        (
            "body_request",
            "proxy_on_request_headers",
            "proxy_on_request_body",
            0,
            0,
        ),
        (
            "body_response",
            "proxy_on_response_headers",
            "proxy_on_response_body",
            2,
            1,
        ),
    ] {
        let module = wat::parse_str(format!(
            r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $waiting (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 100) "content-length")
  (data (i32.const 1000) "replaced from tick: ")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 50)))
    (i32.const 1))
  (func (export "{headers}") (param i32 i32 i32) (result i32)
    (drop (call $remove (i32.const {map}) (i32.const 100) (i32.const 14)))
    (i32.const 0))
  (func (export "{body}") (param $ctx i32) (param i32) (param $eos i32) (result i32)
    (if (local.get $eos) (then (global.set $waiting (local.get $ctx))))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (local $len i32)
    (if (global.get $waiting)
      (then
        (drop (call $effective (global.get $waiting)))
        (i32.store (i32.const 200) (i32.const 0))
        (i32.store (i32.const 208) (i32.const 0))
        (drop (call $status (i32.const {buffer}) (i32.const 200) (i32.const 204)))
        (local.set $len (i32.load (i32.const 200)))
        (drop (call $get (i32.const {buffer}) (i32.const 0) (local.get $len) (i32.const 208) (i32.const 212)))
        (memory.copy (i32.const 1020) (i32.load (i32.const 208)) (i32.load (i32.const 212)))
        (drop (call $set (i32.const {buffer}) (i32.const 0) (local.get $len)
          (i32.const 1000) (i32.add (i32.const 20) (i32.load (i32.const 212)))))
        (drop (call $continue (i32.const {buffer})))
        (global.set $waiting (i32.const 0))))))"#
        ))
        .unwrap();
        std::fs::write(filters.path().join(format!("{file}.wasm")), module).unwrap();
    }
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", read_timeout: 5000, routes: [{{name: request, paths: [/request]}}, {{name: response, paths: [/response]}}]}}]\n\
         filter_chains: [{{route: request, filters: [{{name: body_request}}]}}, {{route: response, filters: [{{name: body_response}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    for protocol in Protocol::ALL {
        let request = Request::post("/request", RequestBody::Bytes(b"hello world".to_vec()));
        let response = send(gateway.addr(), protocol, &request).await.unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        assert_eq!(
            seen.body.as_deref(),
            Some("replaced from tick: hello world"),
            "{protocol:?}"
        );
        assert_eq!(seen.header("content-length"), None, "{protocol:?}");
        let response = send(gateway.addr(), protocol, &Request::get("/response"))
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let text = response.text();
        let report = text
            .strip_prefix("replaced from tick: ")
            .unwrap_or_else(|| panic!("{protocol:?}: {text}"));
        let seen: wasmgate_tests::EchoReport = serde_json::from_str(report).unwrap();
        assert_eq!(seen.method, "GET", "{protocol:?}");
        assert_eq!(response.header("content-length"), None, "{protocol:?}");
    }
}

/// Review finding 20 (#13), the stream's own callbacks, in the gateway: a module that
/// buffers the request body until its end (its body callback pauses, Envoy's
/// StopIterationAndBuffer), calls the echo service there (an auth check) and stays paused,
/// reads that body in its `on_http_call_response` (with its stream's context effective, as
/// the SDKs make it), replaces it with `read: ` and what it read, and resumes: the upstream
/// gets the replaced body, framed by the gateway (the module removed `content-length`).
/// Before, the read there was empty and the set went nowhere: the upstream got `hello world`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_body_is_edited_in_the_call_response() {
    let module = wat::parse_str(
        r#"(module
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $stream (mut i32) (i32.const 0))
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 100) "content-length")
  (data (i32.const 140) "service.e")
  ;; The call's headers: :method GET, :path /auth, :authority auth (68 bytes).
  (data (i32.const 300) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\05\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/auth\00:authority\00auth\00")
  (data (i32.const 1000) "read: ")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $remove (i32.const 0) (i32.const 100) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param i32) (param $eos i32) (result i32)
    (if (local.get $eos)
      (then
        (global.set $stream (local.get $ctx))
        (drop (call $call (i32.const 140) (i32.const 9) (i32.const 300) (i32.const 68)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 216)))))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (local $len i32)
    (drop (call $effective (global.get $stream)))
    (i32.store (i32.const 200) (i32.const 0))
    (i32.store (i32.const 208) (i32.const 0))
    (i32.store (i32.const 212) (i32.const 0))
    (drop (call $status (i32.const 0) (i32.const 200) (i32.const 204)))
    (local.set $len (i32.load (i32.const 200)))
    (drop (call $get (i32.const 0) (i32.const 0) (local.get $len) (i32.const 208) (i32.const 212)))
    (memory.copy (i32.const 1006) (i32.load (i32.const 208)) (i32.load (i32.const 212)))
    (drop (call $set (i32.const 0) (i32.const 0) (local.get $len)
      (i32.const 1000) (i32.add (i32.const 6) (i32.load (i32.const 212)))))
    (drop (call $continue (i32.const 0)))))"#,
    )
    .unwrap();
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(filters.path().join("auth_body.wasm"), module).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\n\
         services: [{{name: e, url: \"http://{}\", read_timeout: 5000, routes: [{{name: r, paths: [/]}}]}}]\n\
         filter_chains: [{{route: r, filters: [{{name: auth_body}}]}}]\n",
        echo.addr()
    );
    let gateway = wasmgate_tests::gateway::start_with_filters(filters.path(), &text);
    for protocol in Protocol::ALL {
        let request = Request::post("/upload", RequestBody::Bytes(b"hello world".to_vec()));
        let response = send(gateway.addr(), protocol, &request).await.unwrap();
        assert_eq!(response.status, 200, "{protocol:?}: {}", response.text());
        let seen = response.echo_report();
        assert_eq!(seen.path, "/upload", "{protocol:?}");
        assert_eq!(
            seen.body.as_deref(),
            Some("read: hello world"),
            "{protocol:?}"
        );
        assert_eq!(seen.header("content-length"), None, "{protocol:?}");
    }
}
