//! request-transformer's URI and Host rewrites in a real Envoy started from the model's
//! translation of a Kong declarative file (issue #12, review item #4 of plugins.md).
//!
//! Kong: `replace.uri` sets the whole upstream path (`kong.service.request.set_path`): the
//! service path and strip_path are not applied again and the request is not routed again; a
//! replaced `host` header is the upstream Host (`upstream_host`), which wins over
//! `preserve_host`. In Envoy a downstream Wasm filter that changes `:path`/`:authority` makes
//! the router match the route again and apply that route's rewrites, so the translation runs
//! the transformer as an upstream filter of the router, enabled per route.

use std::net::SocketAddr;

use model::envoy::bootstrap;
use wasmgate_tests::client::send;
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy, Protocol, Request, RequestBody};

fn declarative(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: api
    url: http://{a}/base
    routes:
      - name: api
        paths: [/api]
        strip_path: true
        plugins:
          - name: request-transformer
            config: {{replace: {{uri: /v2/users}}, add: {{headers: ["x-transformed:api"]}}}}
      - name: nowhere
        paths: [/nowhere]
        plugins:
          - name: request-transformer
            config: {{replace: {{uri: /matches/no/route}}}}
      - name: host
        paths: [/host]
        plugins:
          - name: request-transformer
            config: {{replace: {{headers: ["host:internal.svc"]}}}}
      - name: host-preserved
        paths: [/preserved]
        preserve_host: true
        plugins:
          - name: request-transformer
            config: {{replace: {{headers: ["host:internal.svc"]}}}}
      - name: members
        paths: ["~/members/(?<id>\\d+)"]
        plugins:
          - name: request-transformer
            config: {{add: {{headers: ["x-member:$(uri_captures.id)"]}}}}
      - name: held
        paths: [/held]
        plugins:
          - name: request-transformer
            config:
              http_method: GET
              add: {{body: ["added:1"], querystring: ["q:1"]}}
              wasmgate: {{hold_headers: true}}
      - name: json
        paths: [/json]
        plugins:
          - name: request-transformer
            config: {{add: {{body: ["p:v"]}}}}
      - name: bad-uri
        paths: [/bad]
        plugins:
          - name: request-transformer
            config: {{replace: {{uri: "$(query_params.to)"}}}}
      - name: plain
        paths: [/plain]
      - name: client-host
        paths: [/client-host]
        plugins:
          - name: request-transformer
            config: {{add: {{headers: ["x-client-host:$(headers.host)"]}}}}
  - name: root
    url: http://{a}
    routes:
      - name: users
        paths: ["~/users/(?<id>\\d+)$"]
        strip_path: false
        plugins:
          - name: request-transformer
            config: {{replace: {{uri: "/v2/users/$(uri_captures.id)"}}}}
  - name: v2
    url: http://{b}
    routes:
      - name: v2
        paths: [/v2]
"#
    )
}

async fn start() -> (EchoUpstream, EchoUpstream, Envoy) {
    let a = EchoUpstream::start().await.unwrap();
    let b = EchoUpstream::start().await.unwrap();
    let config = model::parse_declarative(&declarative(a.addr(), b.addr())).unwrap();
    let options = wasmgate_tests::envoy::translation_options();
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 2)
        .await
        .unwrap();
    (a, b, envoy)
}

/// The echo's report of a 200 answer, else a panic with what came back.
fn report(response: &wasmgate_tests::Response, what: &str) -> EchoReport {
    assert_eq!(response.status, 200, "{what}: {}", response.text());
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{what}: not an echo report ({e}): {}", response.text()))
}

fn get(path: &str) -> Request {
    Request::get(path).header("host", "gw.test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_uri_is_the_whole_upstream_path_and_never_reroutes() {
    let (a, b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        // Service path /base and strip_path are not applied to the replaced URI, and /v2/users
        // does not go to the /v2 route's service.
        let r = send(addr, protocol, &get("/api/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /api/x"));
        assert_eq!(seen.path, "/v2/users", "{protocol:?}");
        assert_eq!(seen.query, None, "{protocol:?}");
        assert_eq!(seen.header("x-transformed"), Some("api"), "{protocol:?}");
        assert_eq!(seen.header("host"), Some(a.addr().to_string().as_str()));
        // The client's query string goes along, as Kong appends the arguments.
        let r = send(addr, protocol, &get("/api/x?q=1")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /api/x?q=1"));
        assert_eq!(
            (seen.path.as_str(), seen.query.as_deref()),
            ("/v2/users", Some("q=1")),
            "{protocol:?}"
        );
        // A replaced URI that no route matches is still proxied, not Kong's 404.
        let r = send(addr, protocol, &get("/nowhere/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /nowhere/x"));
        assert_eq!(seen.path, "/matches/no/route", "{protocol:?}");
        // uri_captures from the route's regex path (the filter finds its route by
        // xds.route_name), and the result is final too.
        let r = send(addr, protocol, &get("/users/42")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /users/42"));
        assert_eq!(seen.path, "/v2/users/42", "{protocol:?}");
    }
    assert_eq!(
        b.arrivals().len(),
        0,
        "the /v2 service got a request: {:?}",
        b.arrivals().iter().map(|a| &a.path).collect::<Vec<_>>()
    );
    assert_eq!(a.arrivals().len(), 4 * Protocol::ALL.len());
}

/// `$(headers.host)` is the Host the client sent (Kong's template reads the request as it
/// came), although the transformer runs after the router rewrote it to the service's; the
/// header that hands the client's Host over never reaches the upstream, and a client's own
/// copy of it changes nothing (differential finding F9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_host_is_the_clients_host() {
    let (a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        let request = Request::get("/client-host/x")
            .header("host", "Client.Test:8080")
            .header(model::envoy::CLIENT_HOST_HEADER, "spoofed.test");
        let r = send(addr, protocol, &request).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /client-host"));
        assert_eq!(
            seen.header("x-client-host"),
            Some("Client.Test:8080"),
            "{protocol:?}"
        );
        assert_eq!(seen.header("host"), Some(a.addr().to_string().as_str()));
        assert_eq!(
            seen.header(model::envoy::CLIENT_HOST_HEADER),
            None,
            "{protocol:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transformer_runs_only_on_its_routes() {
    let (a, b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        // The /v2 route: its own service, its own strip_path, no transformer.
        let r = send(addr, protocol, &get("/v2/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /v2/x"));
        assert_eq!(seen.path, "/x", "{protocol:?}");
        assert_eq!(seen.header("x-transformed"), None, "{protocol:?}");
        assert_eq!(seen.header("host"), Some(b.addr().to_string().as_str()));
        // A route of the same service without the plugin: Kong's path handling only.
        let r = send(addr, protocol, &get("/plain/x?q=1")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /plain/x"));
        assert_eq!(
            (seen.path.as_str(), seen.query.as_deref()),
            ("/base/x", Some("q=1")),
            "{protocol:?}"
        );
        assert_eq!(seen.header("x-transformed"), None, "{protocol:?}");
        assert_eq!(seen.header("host"), Some(a.addr().to_string().as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_filter_answers_locally() {
    let (a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        // A rendered URI that does not start with / fails the request with Kong's 500.
        let r = send(addr, protocol, &get("/bad/x?to=elsewhere"))
            .await
            .unwrap();
        assert_eq!(r.status, 500, "{protocol:?}: {}", r.text());
        assert_eq!(
            r.json(),
            Some(r.kong_error_json("An unexpected error occurred")),
            "{protocol:?}"
        );
        let r = send(addr, protocol, &get("/bad/x?to=/fine")).await.unwrap();
        assert_eq!(report(&r, &format!("{protocol:?} /bad")).path, "/fine");
    }
    assert_eq!(a.arrivals().len(), Protocol::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_host_is_the_upstream_host() {
    let (a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        // preserve_host: false would send the service's host; the replaced Host wins.
        let r = send(addr, protocol, &get("/host/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /host/x"));
        assert_eq!(seen.header("host"), Some("internal.svc"), "{protocol:?}");
        // The path is Kong's for the route (strip_path, service path), no re-routing on Host.
        assert_eq!(seen.path, "/base/x", "{protocol:?}");
        // preserve_host: true would send the client's Host; the replaced one wins here too.
        let r = send(addr, protocol, &get("/preserved/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /preserved/x"));
        assert_eq!(seen.header("host"), Some("internal.svc"), "{protocol:?}");
        assert_eq!(seen.path, "/base/x", "{protocol:?}");
    }
    assert_eq!(a.arrivals().len(), 2 * Protocol::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_headers_and_bodies_work_in_the_translation() {
    let (_a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        // hold_headers (allow_on_headers_stop_iteration): the form body moves to the query,
        // the method and Content-Length follow; Kong's strip_path and service path stay.
        let form = Request::post(
            "/held/m?hello=world",
            RequestBody::Bytes(b"name=marco+p".to_vec()),
        )
        .header("host", "gw.test")
        .header("content-type", "application/x-www-form-urlencoded");
        let r = send(addr, protocol, &form).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} form"));
        assert_eq!(seen.method, "GET", "{protocol:?}");
        assert_eq!(seen.path, "/base/m", "{protocol:?}");
        assert_eq!(
            seen.query.as_deref(),
            Some("hello=world&name=marco%20p&q=1"),
            "{protocol:?}"
        );
        assert_eq!(seen.body.as_deref(), Some("name=marco+p&added=1"));
        assert_eq!(seen.header("content-length"), Some("20"), "{protocol:?}");
        // Chunked, then a request without a body: both are released.
        let chunked = Request::post(
            "/held/c",
            RequestBody::Chunks(vec![b"a=".to_vec(), b"1".to_vec()]),
        )
        .header("host", "gw.test")
        .header("content-type", "application/x-www-form-urlencoded");
        let r = send(addr, protocol, &chunked).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} chunked"));
        assert_eq!(seen.body.as_deref(), Some("a=1&added=1"), "{protocol:?}");
        assert_eq!(seen.header("content-length"), Some("11"), "{protocol:?}");
        let r = send(addr, protocol, &get("/held/g")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} GET"));
        assert_eq!(
            (seen.path.as_str(), seen.query.as_deref()),
            ("/base/g", Some("q=1")),
            "{protocol:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_limit_are_rewritten_and_bigger_ones_pass_unchanged() {
    let (_a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    let mib = 1u64 << 20;
    for protocol in Protocol::ALL {
        // Under the 768 KiB default, in 64 KiB chunks: buffered in the upstream filter chain
        // and rewritten.
        let body = format!(r#"{{"pad":"{}","a":1}}"#, "x".repeat(700 * 1024)).into_bytes();
        let near = Request::post(
            "/json/near",
            RequestBody::Chunks(body.chunks(64 * 1024).map(<[u8]>::to_vec).collect()),
        )
        .header("host", "gw.test")
        .header("content-type", "application/json");
        let r = send(addr, protocol, &near).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} near"));
        let json: serde_json::Value =
            serde_json::from_str(seen.body.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(json["p"], "v", "{protocol:?}");
        assert_eq!(json["a"], 1, "{protocol:?}");
        // 2 MiB with a length: never buffered, never cut.
        let big = Request::post(
            "/json/big",
            RequestBody::Filler {
                len: 2 * mib,
                with_length: true,
            },
        )
        .header("host", "gw.test")
        .header("content-type", "application/json");
        let r = send(addr, protocol, &big).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} big"));
        assert_eq!(seen.body_len, 2 * mib, "{protocol:?}");
        assert_eq!(
            seen.body_sha256,
            wasmgate_tests::echo::filler_sha256(2 * mib)
        );
    }
}

/// Kong's `uri_captures` come from the client's path. Upstream, Envoy has already applied the
/// route's strip_path and service path to `:path` (here `/members/42/x` → `/base/x`), so the
/// filter must match its routes' regexes on `x-envoy-original-path` (the client's path, set by
/// the router whenever it rewrites the path; Envoy strips a client's own) when it is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_captures_come_from_the_clients_path_on_a_rewritten_route() {
    let (_a, _b, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    for protocol in Protocol::ALL {
        let r = send(addr, protocol, &get("/members/42/x")).await.unwrap();
        let seen = report(&r, &format!("{protocol:?} /members/42/x"));
        assert_eq!(seen.path, "/base/x", "{protocol:?}");
        assert_eq!(seen.header("x-member"), Some("42"), "{protocol:?}");
    }
}

/// An upstream whose accept queue is full until [`LateUpstream::open`]: Envoy's connection
/// attempt waits (its SYN is dropped and retried) while the request goes through the filters.
struct LateUpstream {
    listener: Option<tokio::net::TcpListener>,
    _queued: tokio::net::TcpStream,
    addr: SocketAddr,
}

impl LateUpstream {
    async fn start() -> LateUpstream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        // Backlog 0 holds one connection: this one, which nobody accepts yet.
        let listener = socket.listen(0).unwrap();
        let queued = tokio::net::TcpStream::connect(addr).await.unwrap();
        LateUpstream {
            listener: Some(listener),
            _queued: queued,
            addr,
        }
    }

    /// Starts accepting (the queued connection first), as an echo upstream.
    fn open(&mut self) -> EchoUpstream {
        EchoUpstream::serve_on(self.listener.take().unwrap()).unwrap()
    }
}

/// Envoy resumes the router's upstream filter chain when the upstream connection becomes
/// ready, and that sends on the body a filter holds if the headers had already gone on
/// (envoyproxy/envoy#37087). The default the data planes give the transformer,
/// `hold_headers`, keeps the headers, so the whole body is edited; a user who turns it off
/// gets a 500 rather than a body whose first part escaped the edit (here a `role` that
/// `remove` should have taken out). Made certain: the upstream accepts only after Envoy has
/// read the first 64 KiB of the body, and the rest is sent once it has accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_held_while_the_upstream_connects_is_never_sent_on_unedited() {
    // A bound against hanging, not a latency claim.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let mut upstreams = Vec::new();
    let mut services = String::new();
    let cases: Vec<(&str, Protocol)> = ["held", "streamed"]
        .into_iter()
        .flat_map(|route| Protocol::ALL.map(|protocol| (route, protocol)))
        .collect();
    for (i, (route, _)) in cases.iter().enumerate() {
        let upstream = LateUpstream::start().await;
        let hold = if *route == "streamed" {
            ", wasmgate: {hold_headers: false}"
        } else {
            ""
        };
        services.push_str(&format!(
            r#"
  - name: late{i}
    url: http://{addr}
    routes:
      - name: late{i}
        paths: [/late{i}]
        plugins:
          - name: request-transformer
            config: {{remove: {{body: [role]}}{hold}}}
"#,
            addr = upstream.addr
        ));
        upstreams.push(upstream);
    }
    let config =
        model::parse_declarative(&format!("_format_version: \"3.0\"\nservices:{services}"))
            .unwrap();
    let options = wasmgate_tests::envoy::translation_options();
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 2)
        .await
        .unwrap();
    let addr = envoy.listener("wasmgate");
    let first = format!(r#"{{"role":"admin","pad":"{}"#, "x".repeat(64 * 1024 - 23)).into_bytes();
    assert_eq!(first.len(), 64 * 1024);
    let mut chunks = vec![first];
    chunks.extend((0..4).map(|_| "x".repeat(16 * 1024).into_bytes()));
    chunks.push(br#"","a":1}"#.to_vec());
    let whole: usize = chunks.iter().map(Vec::len).sum();
    for (index, ((route, protocol), upstream)) in cases.iter().zip(&mut upstreams).enumerate() {
        let what = format!("{route} over {protocol:?}");
        let read_before = envoy
            .stat("http.wasmgate.downstream_cx_rx_bytes_total")
            .await
            .unwrap_or(0);
        let (open, gate) = tokio::sync::watch::channel(false);
        let request = Request::post(
            &format!("/late{index}"),
            RequestBody::Gated {
                chunks: chunks.clone(),
                gate,
            },
        )
        .header("host", "gw.test")
        .header("content-type", "application/json");
        let protocol = *protocol;
        let sending = tokio::spawn(async move { send(addr, protocol, &request).await });
        // Envoy has read the head and the first 64 KiB: the filter holds them.
        wasmgate_tests::until(
            &format!("{what}: Envoy reading the first 64 KiB"),
            WAIT,
            async || {
                let read = envoy
                    .stat("http.wasmgate.downstream_cx_rx_bytes_total")
                    .await
                    .unwrap_or(0);
                (read >= read_before + 64 * 1024)
                    .then_some(())
                    .ok_or(format!("{} bytes read", read - read_before))
            },
        )
        .await;
        let echo = upstream.open();
        // The queued connection, then Envoy's.
        wasmgate_tests::until(
            &format!("{what}: the upstream accepting Envoy's connection"),
            WAIT,
            async || {
                (echo.accepted() >= 2)
                    .then_some(())
                    .ok_or(format!("{} accepted", echo.accepted()))
            },
        )
        .await;
        open.send(true).unwrap();
        let response = sending.await.unwrap().unwrap();
        wasmgate_tests::until(
            &format!("{what}: the upstream recording the request"),
            WAIT,
            async || {
                (!echo.arrivals().is_empty())
                    .then_some(())
                    .ok_or("nothing yet".to_owned())
            },
        )
        .await;
        let arrivals = echo.arrivals();
        assert_eq!(arrivals.len(), 1, "{what}: {arrivals:?}");
        if *route == "held" {
            let seen = report(&response, &what);
            let json: serde_json::Value =
                serde_json::from_str(seen.body.as_deref().unwrap_or_default()).unwrap();
            assert_eq!(json.get("role"), None, "{what}");
            assert_eq!(json["a"], 1, "{what}");
            assert!(arrivals[0].complete, "{what}");
        } else {
            assert_eq!(response.status, 500, "{what}: {}", response.text());
            assert_eq!(
                response.json(),
                Some(response.kong_error_json("An unexpected error occurred")),
                "{what}"
            );
            // The part Envoy sent on reached the upstream, never the whole request.
            assert!(!arrivals[0].complete, "{what}: {arrivals:?}");
            assert!(arrivals[0].body_bytes < whole as u64, "{what}");
        }
    }
    assert_eq!(
        envoy
            .log()
            .matches("held request body bytes upstream")
            .count(),
        2,
        "{}",
        envoy.log()
    );
}
