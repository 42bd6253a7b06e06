//! Custom domains on a real Envoy 1.40 from `model::envoy::bootstrap_with_tls`: the TLS
//! listener picks a certificate by SNI (an exact name before a wildcard; no match, no
//! handshake), and ACME's HTTP-01 challenges are answered on the plain and the TLS listener
//! ahead of a plugin that would refuse them (a rate limit of one request a minute), while an
//! unknown token is routed like any path.

#[path = "tls_client.rs"]
mod tls_client;

use model::envoy::{bootstrap_with_tls, TLS_LISTENER};
use model::{AcmeChallenge, Certificate, Config};
use tls_client::{handshake, request, Client, Issued, TestCa};
use wasmgate_tests::client::send;
use wasmgate_tests::{EchoUpstream, Envoy, Protocol, Request, Response};

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

/// Route `/` (everything) with a rate limit of one request a minute, `/open` without it. The
/// same one request a day keeps the refusal when the test spans the end of a minute.
fn config(echo: std::net::SocketAddr) -> Config {
    model::parse_declarative(&format!(
        r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{echo}
    routes:
      - name: limited
        paths: [/]
        strip_path: false
        plugins:
          - name: rate-limiting
            config: {{minute: 1, day: 1, policy: local}}
      - name: open
        paths: [/open]
        strip_path: false
"#
    ))
    .unwrap()
}

fn certificate(id: &str, issued: &Issued, snis: &[&str]) -> Certificate {
    Certificate {
        id: id.to_owned(),
        cert: issued.cert.clone(),
        key: issued.key.clone(),
        snis: snis.iter().map(|s| (*s).to_owned()).collect(),
        tags: Vec::new(),
    }
}

async fn start(config: &Config) -> Envoy {
    let options = wasmgate_tests::envoy::translation_options();
    let bootstrap = bootstrap_with_tls(config, &options, Some(([127, 0, 0, 1], 0).into()));
    Envoy::start_bootstrap(&bootstrap, 1).await.unwrap()
}

/// The challenge's answer: 200, `text/plain`, the key authorization (none for HEAD), and no
/// trace of the rate limit.
#[track_caller]
fn assert_challenge_answer(what: &str, response: &Response, head: bool) {
    assert_eq!(response.status, 200, "{what}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/plain"),
        "{what}: {:?}",
        response.headers
    );
    let expected = if head { "" } else { KEY_AUTHORIZATION };
    assert_eq!(response.text(), expected, "{what}");
    let limited: Vec<_> = response
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-ratelimit") || name.starts_with("ratelimit"))
        .collect();
    assert!(
        limited.is_empty(),
        "{what}: the rate limit ran: {limited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_chosen_by_sni_and_an_unknown_name_gets_no_handshake() {
    let echo = EchoUpstream::start().await.unwrap();
    let ca = TestCa::new("wasmgate-test-ca");
    let exact = ca.issue(&["api.example.test"]);
    let wildcard = ca.issue(&["*.example.test"]);
    let other = ca.issue(&["shop.other.test", "www.other.test"]);
    let mut config = config(echo.addr());
    config.certificates = vec![
        certificate("wild", &wildcard, &["*.example.test"]),
        certificate("exact", &exact, &["api.example.test"]),
        certificate("other", &other, &["shop.other.test", "www.other.test"]),
    ];
    let envoy = start(&config).await;
    let tls = envoy.listener(TLS_LISTENER);

    for (sni, expected) in [
        ("api.example.test", &exact),
        ("shop.example.test", &wildcard),
        ("shop.other.test", &other),
        ("www.other.test", &other),
    ] {
        let (leaf, response) = request(tls, sni, &ca.pem, "GET", "/open/x").await.unwrap();
        assert!(
            leaf == expected.der(),
            "{sni}: another certificate was presented"
        );
        assert_eq!(response.status, 200, "{sni}: {}", response.text());
        let report = response.echo_report();
        assert_eq!(report.path, "/open/x");
        // The route saw a TLS request: Envoy's own x-forwarded-proto.
        assert_eq!(report.header("x-forwarded-proto"), Some("https"), "{sni}");
    }

    // ALPN: HTTP/2 when offered, HTTP/1.1 otherwise.
    for (offered, chosen) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], b"h2".as_slice()),
        (&[b"http/1.1".as_slice()][..], b"http/1.1".as_slice()),
    ] {
        let handshake = handshake(tls, "api.example.test", &ca.pem, offered)
            .await
            .unwrap();
        assert_eq!(handshake.alpn.as_deref(), Some(chosen));
        let mut client = Client::over(handshake).await.unwrap();
        let response = client
            .send("GET", "api.example.test", "/open")
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }

    // No certificate for the name, or no name at all: no filter chain matches and Envoy
    // closes the connection during the handshake. (The apex is not under its wildcard.)
    let refusals = ["unknown.test", "example.test", "127.0.0.1"];
    for sni in refusals {
        let refused = handshake(tls, sni, &ca.pem, &[b"http/1.1"]).await;
        assert!(refused.is_err(), "{sni}: a handshake completed");
    }
    // The listener's stats are named by its configured address (port 0 here).
    let unmatched = "listener.127.0.0.1_0.no_filter_chain_match";
    assert_eq!(envoy.stat(unmatched).await, Some(refusals.len() as u64));
    // A name two labels under a wildcard: Envoy's chain matching takes the longest wildcard
    // suffix, so it presents `*.example.test`, which covers one label only (RFC 6125 §6.4.3)
    // and the client refuses it; `gateway` refuses the handshake itself. Neither connects.
    let deep = handshake(tls, "deep.shop.example.test", &ca.pem, &[b"http/1.1"]).await;
    let refused = deep.err().unwrap_or_default();
    assert!(refused.contains("not valid for name"), "{refused}");
    assert_eq!(envoy.stat(unmatched).await, Some(refusals.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenges_are_answered_on_both_listeners_before_the_rate_limit() {
    let echo = EchoUpstream::start().await.unwrap();
    let ca = TestCa::new("wasmgate-test-ca");
    let issued = ca.issue(&["api.example.test"]);
    let mut config = config(echo.addr());
    config.certificates = vec![certificate("api", &issued, &["api.example.test"])];
    config.acme_challenges = vec![AcmeChallenge {
        token: TOKEN.to_owned(),
        key_authorization: KEY_AUTHORIZATION.to_owned(),
    }];
    let envoy = start(&config).await;
    let plain = envoy.listener(model::envoy::LISTENER);
    let tls = envoy.listener(TLS_LISTENER);
    let challenge = format!("{}{TOKEN}", model::ACME_CHALLENGE_PREFIX);
    let unknown = format!("{}unknown-token", model::ACME_CHALLENGE_PREFIX);
    let get = |path: &str| Request::get(path).header("host", "any.host.test");

    // The limit's one request: through `/` to the upstream, then 429.
    let first = send(plain, Protocol::Http1, &get(&unknown)).await.unwrap();
    assert_eq!(
        first.status,
        200,
        "an unknown token is routed: {}",
        first.text()
    );
    assert_eq!(first.echo_report().path, unknown);
    let limited = send(plain, Protocol::Http1, &get(&unknown)).await.unwrap();
    assert_eq!(limited.status, 429, "{}", limited.text());

    // The challenge, however often, whatever the Host, with a query, by HEAD, over HTTP/2.
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for _ in 0..3 {
            let response = send(plain, protocol, &get(&challenge)).await.unwrap();
            assert_challenge_answer("GET on the plain listener", &response, false);
        }
    }
    let query = send(plain, Protocol::Http1, &get(&format!("{challenge}?x=1")))
        .await
        .unwrap();
    assert_challenge_answer("GET with a query", &query, false);
    let mut head = get(&challenge);
    head.method = "HEAD".into();
    let response = send(plain, Protocol::Http1, &head).await.unwrap();
    assert_challenge_answer("HEAD", &response, true);
    assert_eq!(
        response.header("content-length"),
        Some(KEY_AUTHORIZATION.len().to_string().as_str())
    );
    // Another method, a longer path: the routes (and the exhausted limit).
    let mut post = get(&challenge);
    post.method = "POST".into();
    for request in [post, get(&format!("{challenge}/more"))] {
        let response = send(plain, Protocol::Http1, &request).await.unwrap();
        assert_eq!(response.status, 429, "{} {}", request.method, request.path);
    }

    // On the TLS listener too.
    for _ in 0..3 {
        let (_, response) = request(tls, "api.example.test", &ca.pem, "GET", &challenge)
            .await
            .unwrap();
        assert_challenge_answer("GET on the TLS listener", &response, false);
    }
    let (_, response) = request(tls, "api.example.test", &ca.pem, "GET", &unknown)
        .await
        .unwrap();
    assert_eq!(response.status, 429, "{}", response.text());
    assert_eq!(echo.arrivals().len(), 1);
}

/// With a TLS address but no certificate there is no TLS listener: Envoy refuses a listener
/// without filter chains (the whole bootstrap, or over xDS the listener), so the translation
/// leaves it out and the plain listener serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_no_tls_listener() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = config(echo.addr());
    let options = wasmgate_tests::envoy::translation_options();
    let mut bootstrap = bootstrap_with_tls(&config, &options, Some(([127, 0, 0, 1], 0).into()));
    let plain_only = bootstrap["static_resources"]["listeners"].clone();
    assert_eq!(plain_only.as_array().map(Vec::len), Some(1), "{plain_only}");
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let plain = envoy.listener(model::envoy::LISTENER);
    let response = send(plain, Protocol::Http1, &Request::get("/open"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    drop(envoy);

    let mut empty = plain_only[0].clone();
    empty["name"] = TLS_LISTENER.into();
    empty["filter_chains"] = serde_json::json!([]);
    bootstrap["static_resources"]["listeners"] = serde_json::json!([plain_only[0], empty]);
    let refused = Envoy::start_bootstrap(&bootstrap, 1)
        .await
        .err()
        .unwrap_or_default();
    assert!(refused.contains("no filter chains specified"), "{refused}");
}

/// The gateway's binary beside this test's folder (`target/debug/deps/..`).
fn gateway_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target folder")
        .join("gateway");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build -p gateway --bin gateway (or cargo xtask test)",
        binary.display()
    );
    binary
}

/// `gateway envoy-bootstrap --tls-listen` on a declarative file with Kong's `certificates`
/// and wasmgate's `acme_challenges`: the bootstrap file is readable by its owner only, and
/// the Envoy it starts serves the certificate for its SNI and the challenge on the TLS
/// listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_envoy_bootstrap_writes_the_tls_listener_of_a_declarative_file() {
    let echo = EchoUpstream::start().await.unwrap();
    let ca = TestCa::new("wasmgate-test-ca");
    let issued = ca.issue(&["api.example.test"]);
    let document = serde_json::json!({
        "_format_version": "3.0",
        "services": [{
            "name": "echo",
            "url": format!("http://{}", echo.addr()),
            "routes": [{"name": "open", "paths": ["/open"], "strip_path": false}],
        }],
        "certificates": [{
            "id": "6f0c5b4e-0000-4000-8000-000000000001",
            "cert": issued.cert,
            "key": issued.key,
            "snis": ["api.example.test"],
        }],
        "acme_challenges": [{"token": TOKEN, "key_authorization": KEY_AUTHORIZATION}],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    std::fs::write(&file, document.to_string()).unwrap();
    // The bootstrap holds the key: its file is its owner's only, also one that was there.
    let out = dir.path().join("envoy.json");
    std::fs::write(&out, "").unwrap();
    let output = std::process::Command::new(gateway_binary())
        .args(["envoy-bootstrap", "--config"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--tls-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(format!("{:o}", mode & 0o777), "600");
    let bootstrap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    let tls = envoy.listener(TLS_LISTENER);
    let (leaf, response) = request(tls, "api.example.test", &ca.pem, "GET", "/open")
        .await
        .unwrap();
    assert!(leaf == issued.der(), "another certificate was presented");
    assert_eq!(response.status, 200, "{}", response.text());
    let challenge = format!("{}{TOKEN}", model::ACME_CHALLENGE_PREFIX);
    let (_, response) = request(tls, "api.example.test", &ca.pem, "GET", &challenge)
        .await
        .unwrap();
    assert_challenge_answer("GET on the TLS listener", &response, false);
}
