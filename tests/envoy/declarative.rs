//! A Kong declarative file, translated by `model::envoy`, runs in a real Envoy: routing with
//! Kong's precedence and path handling, and plugins only where they are attached.

use std::net::SocketAddr;

use model::envoy::{bootstrap, EnvoyOptions};
use wasmgate_tests::client::{raw_exchange, send};
use wasmgate_tests::https_only::{self, cleartext};
use wasmgate_tests::{paths, EchoUpstream, Envoy, Protocol, Request, RequestBody};

fn declarative(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: alpha
    url: http://{a}/base
    routes:
      - name: alpha-api
        paths: [/alpha]
      - name: alpha-users
        paths: ["~/users/(?<id>\\d+)$"]
        strip_path: false
        methods: [GET]
      - name: alpha-orders
        paths: ["~/orders/(?<id>[a-z0-9]+)"]
        strip_path: true
    plugins:
      - name: request-size-limiting
        config: {{allowed_payload_size: 1, size_unit: kilobytes}}
  - name: beta
    url: http://{b}
    routes:
      - name: beta-all
        paths: [/]
        preserve_host: true
      - name: beta-host
        hosts: ["*.beta.test"]
        paths: [/]
plugins:
  - name: request-size-limiting
    route: beta-host
    config: {{allowed_payload_size: 4, size_unit: bytes}}
"#
    )
}

async fn start() -> (EchoUpstream, EchoUpstream, Envoy) {
    let alpha = EchoUpstream::start().await.unwrap();
    let beta = EchoUpstream::start().await.unwrap();
    let config = model::parse_declarative(&declarative(alpha.addr(), beta.addr())).unwrap();
    let options = wasmgate_tests::envoy::translation_options();
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 2)
        .await
        .unwrap();
    (alpha, beta, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_plugin_scopes_follow_kong() {
    let (alpha, beta, envoy) = start().await;
    let addr = envoy.listener("wasmgate");
    let get = |path: &str| Request::get(path).header("host", "gw.test");

    // strip_path: /alpha/x → service path + /x, Host = the service's.
    let r = send(addr, Protocol::Http1, &get("/alpha/x?q=1"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.echo_report();
    assert_eq!(
        (seen.path.as_str(), seen.query.as_deref()),
        ("/base/x", Some("q=1"))
    );
    assert_eq!(seen.header("host"), Some(alpha.addr().to_string().as_str()));
    let r = send(addr, Protocol::Http2, &get("/alpha")).await.unwrap();
    assert_eq!(r.echo_report().path, "/base");

    // A stripping regex route: the match goes, the rest is joined to the service path, and a
    // match that is the whole path leaves the service path as it is (Kong, path_handling v0).
    for (path, upstream) in [
        ("/orders/a1", "/base"),
        ("/orders/a1/items", "/base/items"),
        ("/orders/a1/", "/base/"),
    ] {
        let r = send(addr, Protocol::Http1, &get(path)).await.unwrap();
        assert_eq!(r.echo_report().path, upstream, "{path}");
    }

    // A regex route outranks the catch-all; strip_path false keeps the path.
    let r = send(addr, Protocol::Http1, &get("/users/42"))
        .await
        .unwrap();
    assert_eq!(r.echo_report().path, "/base/users/42");
    // ... but only for GET: a POST falls through to beta's catch-all, which preserves Host.
    let post =
        Request::post("/users/42", RequestBody::Bytes(b"x".to_vec())).header("host", "gw.test");
    let r = send(addr, Protocol::Http1, &post).await.unwrap();
    let seen = r.echo_report();
    assert_eq!(
        (seen.path.as_str(), seen.header("host")),
        ("/users/42", Some("gw.test"))
    );
    assert_eq!(beta.arrivals().len(), 1);

    // The service-scoped limit applies to alpha's routes only.
    let big = |path: &str, host: &str| {
        Request::post(path, RequestBody::Bytes(vec![b'z'; 2048])).header("host", host)
    };
    assert_eq!(
        send(addr, Protocol::Http1, &big("/alpha/up", "gw.test"))
            .await
            .unwrap()
            .status,
        413
    );
    assert_eq!(
        send(addr, Protocol::Http2, &big("/beta/up", "gw.test"))
            .await
            .unwrap()
            .status,
        200
    );
    // The route-scoped limit applies to its route only (host + path outranks path alone).
    assert_eq!(
        send(addr, Protocol::Http1, &big("/", "a.beta.test"))
            .await
            .unwrap()
            .status,
        413
    );
    let small =
        Request::post("/", RequestBody::Bytes(b"1234".to_vec())).header("host", "a.beta.test");
    assert_eq!(
        send(addr, Protocol::Http1, &small).await.unwrap().status,
        200
    );
    assert_eq!(
        alpha
            .arrivals()
            .iter()
            .filter(|a| a.path == "/base/up")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_kongs_404() {
    let alpha = EchoUpstream::start().await.unwrap();
    let text = format!(
        "_format_version: \"3.0\"\nservices: [{{name: a, url: \"http://{}\", routes: [{{name: r, paths: [/only]}}]}}]\n",
        alpha.addr()
    );
    let config = model::parse_declarative(&text).unwrap();
    let options = wasmgate_tests::envoy::translation_options();
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 1)
        .await
        .unwrap();
    let r = send(
        envoy.listener("wasmgate"),
        Protocol::Http1,
        &Request::get("/elsewhere"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.json().unwrap(),
        serde_json::json!({"message": "no Route matched with those values"})
    );
}

/// A filter chain's filter may name the root context and the plugin name its module is
/// configured with (Envoy's PluginConfig `root_id` and `name`), both its own name by default:
/// the module sees the same `plugin_root_id` and `plugin_name` in `gateway` and in Envoy
/// from the translation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_filter_gets_its_root_id_and_plugin_name_on_both_data_planes() {
    let filters = tempfile::tempdir().unwrap();
    let root = paths::workspace_root();
    let module = wat::parse_file(root.join("tests/wat/foreign.wat")).unwrap();
    std::fs::write(filters.path().join("wat_foreign.wasm"), module).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        r#"
_format_version: "3.0"
services:
  - name: s
    url: http://{}
    routes:
      - {{name: named, paths: [/named]}}
      - {{name: default, paths: [/default]}}
filter_chains:
  - route: named
    filters: [{{name: wat_foreign, root_id: custom_root, plugin_name: custom-plugin}}]
  - route: default
    filters: [{{name: wat_foreign}}]
"#,
        echo.addr()
    );
    let mut options = wasmgate_tests::gateway::options();
    options.runtime.filters_dir = Some(filters.path().to_owned());
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    let config = model::parse_declarative(&text).unwrap();
    let envoy_options = EnvoyOptions {
        filters_dir: Some(filters.path().to_owned()),
        ..wasmgate_tests::envoy::translation_options()
    };
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &envoy_options), 1)
        .await
        .unwrap();
    for (plane, addr) in [
        ("gateway", gateway.addr()),
        ("Envoy", envoy.listener("wasmgate")),
    ] {
        for (path, root_id, name) in [
            ("/named", "custom_root", "custom-plugin"),
            ("/default", "wat_foreign", "wat_foreign"),
        ] {
            let r = send(addr, Protocol::Http1, &Request::get(path))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{plane} {path}: {}", r.text());
            let seen = r.echo_report();
            assert_eq!(
                (seen.header("x-wat-root"), seen.header("x-wat-name")),
                (Some(root_id), Some(name)),
                "{plane} {path}"
            );
        }
    }
}

/// Kong's route `protocols` in Envoy from the translation, as in `gateway` (in_gateway
/// `tls::https_only_routes_refuse_cleartext_with_426_or_their_redirect`): the translation's
/// listener is cleartext, so an https-only route answers 426 before its plugins, or its
/// redirect; a client's own `X-Forwarded-Proto: https` does not count. Before, Envoy served
/// every https-only route in cleartext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_routes_refuse_cleartext_as_in_kong() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = model::parse_declarative(&https_only::config(echo.addr())).unwrap();
    let options = wasmgate_tests::envoy::translation_options();
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 1)
        .await
        .unwrap();
    let listener = envoy.listener("wasmgate");
    for extra in ["", "x-forwarded-proto: https\r\n"] {
        let answer = raw_exchange(listener, cleartext("/tls/x", extra)).await;
        // The one difference from Kong and `gateway`: Envoy's codec drops `Upgrade` from
        // any response but a 101.
        https_only::assert_https_required(&answer, false);
    }
    for _ in 0..2 {
        let answer = raw_exchange(listener, cleartext("/moved/a%20b?q=1", "")).await;
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        // The same URL as Kong's and `gateway`'s `https://gw.test/moved/a%20b?q=1`, written
        // with https's port and the host as the client sent it.
        assert!(
            answer.contains("location: https://GW.test:443/moved/a%20b?q=1\r\n"),
            "{answer}"
        );
    }
    let answer = raw_exchange(listener, cleartext("/both", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(echo.arrivals().len(), 1, "only /both reached the upstream");
}
