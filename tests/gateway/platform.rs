//! The operator's platform plugins (`--platform-plugins`): a layer of their own, run on every
//! proxied request before the route's chain and apart from it. Nothing in the configuration
//! lifts them (Kong's one-instance-per-name precedence does not join the two), a platform
//! rate limit by `service` counts the whole gateway under one key, and what they answer is
//! the plugins' own Kong answer.

use gateway::filters::Platform;
use gateway::Gateway;
use wasmgate_tests::client::{send, Response};
use wasmgate_tests::{EchoUpstream, Protocol, Request, RequestBody};

/// 1 KiB per request, and 8 requests a year for the whole gateway (a year: no test straddles
/// one), its headers hidden so that the configuration's own rate-limiting answers with its
/// own, as in Kong.
const PLATFORM: &str = r#"
plugins:
  - name: request-size-limiting
    config: {allowed_payload_size: 1, size_unit: kilobytes}
  - name: rate-limiting
    config: {year: 8, limit_by: service, policy: local, hide_client_headers: true}
"#;

fn platform(text: &str) -> Platform {
    Platform {
        file: "platform.yaml".into(),
        plugins: model::parse_platform_plugins(text, None).unwrap_or_else(|e| panic!("{e}")),
        modules_dir: wasmgate_tests::paths::wasm_dir(),
    }
}

fn start(platform_text: &str, declarative: &str) -> Result<Gateway, String> {
    let mut options = wasmgate_tests::gateway::options();
    options.runtime.platform = Some(platform(platform_text));
    Gateway::start(options, declarative)
}

/// Three services, each with a route, and the configuration's own plugins of the platform's
/// names on every scope: a lifted size limit on a route (1000 MB), a lifted rate limit on a
/// service (100000 a second) and globally, and a stricter one (2 a year) on a route.
fn config(echo: std::net::SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: s1
    url: http://{echo}
    routes:
      - name: r1
        paths: [/s1]
        plugins:
          - name: rate-limiting
            config: {{year: 2}}
          - name: request-size-limiting
            config: {{allowed_payload_size: 1000, size_unit: megabytes}}
  - name: s2
    url: http://{echo}
    routes:
      - {{name: r2, paths: [/s2]}}
    plugins:
      - name: rate-limiting
        config: {{second: 100000, limit_by: service}}
  - name: s3
    url: http://{echo}
    routes:
      - {{name: r3, paths: [/s3]}}
plugins:
  - name: rate-limiting
    instance_name: global-generous
    config: {{second: 100000}}
"#
    )
}

async fn get(gateway: &Gateway, path: &str) -> Response {
    send(gateway.addr(), Protocol::Http1, &Request::get(path))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the rate limit headers say, whoever set them.
fn rate_headers(response: &Response) -> Vec<(String, String)> {
    response
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name.starts_with("x-ratelimit")
                || name.starts_with("ratelimit")
                || name == "retry-after"
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_the_configuration_lifts_the_platform_size_limit() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(
        // Only the size limit: this test sends more than 8 requests.
        "plugins:\n  - {name: request-size-limiting, config: {allowed_payload_size: 1, size_unit: kilobytes}}\n",
        // The route's own rate limit out of the way.
        &config(echo.addr()).replace("year: 2", "year: 1000"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (path, with_length) in [("/s1", true), ("/s1", false), ("/s2", true)] {
        for protocol in Protocol::ALL {
            let at_limit = Request::post(
                path,
                RequestBody::Filler {
                    len: 1024,
                    with_length,
                },
            );
            let response = send(gateway.addr(), protocol, &at_limit).await.unwrap();
            assert_eq!(
                response.status,
                200,
                "{path} {protocol:?}: {}",
                response.text()
            );
            let over = Request::post(
                path,
                RequestBody::Filler {
                    len: 1025,
                    with_length,
                },
            );
            let response = send(gateway.addr(), protocol, &over).await.unwrap();
            // The route's own 1000 MB limit would have let it through: Kong's precedence
            // picks one request-size-limiting per request, the route's.
            assert_eq!(
                response.status,
                413,
                "{path} {protocol:?}: {}",
                response.text()
            );
            assert_eq!(
                response.json(),
                Some(response.kong_error_json("Request size limit exceeded")),
                "{path} {protocol:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_rate_limit_counts_the_whole_gateway_under_the_routes_own() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(PLATFORM, &config(echo.addr())).unwrap_or_else(|e| panic!("{e}"));

    // The route's own, stricter limit answers as it would alone: its 429, its headers.
    for remaining in ["1", "0"] {
        let response = get(&gateway, "/s1").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-ratelimit-limit-year"), Some("2"));
        assert_eq!(
            response.header("x-ratelimit-remaining-year"),
            Some(remaining)
        );
    }
    let refused = get(&gateway, "/s1").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(
        refused.json(),
        Some(refused.kong_error_json("API rate limit exceeded"))
    );
    assert_eq!(refused.header("x-ratelimit-limit-year"), Some("2"));
    assert_eq!(refused.header("x-ratelimit-remaining-year"), Some("0"));
    assert!(refused.header("retry-after").is_some());

    // The platform counted those 3; 5 more on the other services, whose own plugins would
    // each allow 100000 a second, and every service is refused: one budget for the gateway.
    for path in ["/s2", "/s2", "/s2", "/s3", "/s3"] {
        let response = get(&gateway, path).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        // Only the route's own plugin's headers: the platform hides its own.
        assert_eq!(
            response.header("x-ratelimit-limit-second"),
            Some("100000"),
            "{path}"
        );
        assert!(
            response.header("x-ratelimit-limit-year").is_none(),
            "{path}"
        );
    }
    for path in ["/s3", "/s2", "/s1"] {
        let refused = get(&gateway, path).await;
        assert_eq!(refused.status, 429, "{path}: {}", refused.text());
        // Kong's rate-limiting answer with the platform's config (hide_client_headers).
        assert_eq!(
            refused.json(),
            Some(refused.kong_error_json("API rate limit exceeded")),
            "{path}"
        );
        assert_eq!(
            refused.header("content-type"),
            Some("application/json; charset=utf-8"),
            "{path}"
        );
        assert_eq!(rate_headers(&refused), [], "{path}");
    }
    assert_eq!(
        echo.record().whole,
        7,
        "every 200 reached the upstream, no 429 did"
    );

    // A new configuration (the platform's plugins are the same ones) keeps the count.
    gateway
        .shared()
        .apply(&config(echo.addr()).replace("year: 2", "year: 3"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&gateway, "/s3").await.status, 429);
}

/// The platform's file is checked when the gateway starts, by the model and by the modules,
/// each error naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_plugin_its_module_refuses_stops_the_start() {
    let refused = start(
        "plugins:\n  - {name: rate-limiting, config: {second: -1}}\n",
        "_format_version: \"3.0\"\n",
    )
    .err()
    .expect("a refused platform plugin");
    assert_eq!(
        refused,
        "platform.yaml is invalid: plugins.rate-limiting.config.second: value must be greater \
         than 0"
    );
}
