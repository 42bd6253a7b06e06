//! What `gateway` tells the upstream and the plugins about the client: header values byte for
//! byte, and the client's address behind trusted proxies (Kong's `trusted_ips`,
//! `real_ip_header`, `real_ip_recursive`).

use std::net::{IpAddr, SocketAddr};

use wasmgate_tests::client::{raw_exchange, send_from};
use wasmgate_tests::gateway::{options, start_with, ProxyPath};
use wasmgate_tests::{EchoReport, EchoUpstream, Protocol, Request};

fn echo_config(echo: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{echo}
    routes:
      - name: api
        paths: [/api]
"#
    )
}

/// The echo report in a raw HTTP/1.1 answer (its JSON is ASCII: raw values are byte arrays).
fn report_in(answer: &str) -> EchoReport {
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no response head: {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo report ({e}): {answer}"))
}

/// Values outside UTF-8 (obs-text, 0x80-0xFF) reach the upstream as they were sent, on a route
/// without plugins and through the plugins; so do a trusted proxy's forwarding headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_text_header_values_reach_the_upstream_byte_for_byte() {
    let obs_text: &[u8] = b"\x80caf\xe9 \xff\tend";
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let mut options = options();
        options.real_ip.trusted_ips = vec!["127.0.0.1".parse().unwrap()];
        let gateway = start_with(options, &path.config(&echo_config(echo.addr())));
        let mut request = b"GET /api/x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n".to_vec();
        for name in ["x-latin", "x-forwarded-host"] {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(obs_text);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let answer = raw_exchange(gateway.addr(), &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path:?}: {answer}");
        let seen = report_in(&answer);
        path.assert_taken(&seen);
        for name in ["x-latin", "x-forwarded-host"] {
            let values: Vec<&[u8]> = seen
                .raw_headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(values, [obs_text], "{path:?}: {name}");
        }
    }
}

fn rate_limited_config(echo: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{echo}
    routes:
      - name: limited
        paths: [/limited]
        plugins:
          - name: rate-limiting
            config: {{minute: 1, limit_by: ip, policy: local}}
      - name: open
        paths: [/open]
"#
    )
}

const TRUSTED: [u8; 4] = [127, 0, 0, 2];
const UNTRUSTED: [u8; 4] = [127, 0, 0, 3];

async fn from(peer: [u8; 4], gateway: SocketAddr, request: &Request) -> wasmgate_tests::Response {
    send_from(IpAddr::from(peer), gateway, Protocol::Http1, request)
        .await
        .unwrap_or_else(|e| panic!("from {peer:?}: {e}"))
}

/// Behind a trusted balancer, `limit_by: ip` counts the client the balancer names; the same
/// header from anyone else names nobody, and the peer is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_by_ip_counts_the_client_a_trusted_proxy_names() {
    let echo = EchoUpstream::start().await.unwrap();
    let mut options = options();
    options.real_ip.trusted_ips = vec!["127.0.0.2".parse().unwrap()];
    let gateway = start_with(options, &rate_limited_config(echo.addr()));
    let addr = gateway.addr();
    let named = |ip: &str| Request::get("/limited").header("x-real-ip", ip);

    let statuses = [
        from(TRUSTED, addr, &named("198.51.100.1")).await.status,
        from(TRUSTED, addr, &named("198.51.100.2")).await.status,
        from(TRUSTED, addr, &named("198.51.100.1")).await.status,
    ];
    assert_eq!(
        statuses,
        [200, 200, 429],
        "two clients behind the trusted proxy"
    );

    let statuses = [
        from(UNTRUSTED, addr, &named("198.51.100.3")).await.status,
        from(UNTRUSTED, addr, &named("198.51.100.4")).await.status,
    ];
    assert_eq!(
        statuses,
        [200, 429],
        "an untrusted peer is one client, whatever it says"
    );
}

/// The upstream's view: a trusted proxy's client and X-Forwarded-* go on (X-Forwarded-For
/// gets the proxy appended, as Kong's); an untrusted peer's are replaced, and it is the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_follow_kongs_trusted_ips() {
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let mut options = options();
        options.real_ip.trusted_ips = vec!["127.0.0.2".parse().unwrap()];
        options.real_ip.header = http::HeaderName::from_static("x-forwarded-for");
        options.real_ip.recursive = true;
        let gateway = start_with(options, &path.config(&echo_config(echo.addr())));
        let request = Request::get("/api/x")
            .header("host", "gw.test")
            .header("x-forwarded-for", "203.0.113.7, 127.0.0.2")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "public.example")
            .header("x-forwarded-port", "443")
            .header("x-forwarded-path", "/edge/api/x");

        let trusted = from(TRUSTED, gateway.addr(), &request).await;
        assert_eq!(trusted.status, 200, "{path:?}: {}", trusted.text());
        let seen = trusted.echo_report();
        path.assert_taken(&seen);
        assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"), "{path:?}");
        assert_eq!(
            seen.header_values("x-forwarded-for"),
            ["203.0.113.7, 127.0.0.2, 127.0.0.2"],
            "{path:?}"
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{path:?}");
        assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));
        assert_eq!(seen.header("x-forwarded-port"), Some("443"));
        assert_eq!(seen.header("x-forwarded-path"), Some("/edge/api/x"));

        let untrusted = from(UNTRUSTED, gateway.addr(), &request).await;
        assert_eq!(untrusted.status, 200, "{path:?}: {}", untrusted.text());
        let seen = untrusted.echo_report();
        assert_eq!(seen.header("x-real-ip"), Some("127.0.0.3"), "{path:?}");
        assert_eq!(
            seen.header_values("x-forwarded-for"),
            ["203.0.113.7, 127.0.0.2, 127.0.0.3"],
            "{path:?}"
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{path:?}");
        assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
        assert_eq!(
            seen.header("x-forwarded-port"),
            Some(gateway.addr().port().to_string().as_str())
        );
        assert_eq!(seen.header("x-forwarded-path"), Some("/api/x"));
    }
}

/// The command line refuses a `--trusted-ips` entry that is neither an address nor a CIDR,
/// and a `--real-ip-header` that is no header name, naming the flag.
#[test]
fn the_command_line_refuses_what_is_no_trusted_proxy() {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("gateway")))
        .filter(|binary| binary.is_file())
        .expect("the gateway binary: build it (`cargo build -p gateway --bin gateway`)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kong.yaml");
    std::fs::write(&config, "_format_version: \"3.0\"\n").unwrap();
    let refusal = |flags: &[&str]| {
        let output = std::process::Command::new(&binary)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
                "--config",
            ])
            .arg(&config)
            .args(flags)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{flags:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let said = refusal(&["--trusted-ips", "10.0.0.0/8,10.0.0.0/33"]);
    assert!(said.contains("--trusted-ips"), "{said}");
    assert!(said.contains("prefix length outside 0-32"), "{said}");
    let said = refusal(&["--trusted-ips", "balancer.internal"]);
    assert!(said.contains("is not an IP address or CIDR"), "{said}");
    let said = refusal(&["--real-ip-header", "x real ip"]);
    assert!(said.contains("--real-ip-header"), "{said}");
}

/// Kong's X-Forwarded-Prefix: the prefix strip_path took off (none for `/` or without
/// strip_path); a trusted proxy's own goes on, anyone else's is never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_prefix_is_the_stripped_prefix_or_a_trusted_proxys() {
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let mut options = options();
        options.real_ip.trusted_ips = vec!["127.0.0.2".parse().unwrap()];
        let declarative = format!(
            r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{}
    routes:
      - {{name: stripped, paths: [/api]}}
      - {{name: kept, paths: [/keep], strip_path: false}}
"#,
            echo.addr()
        );
        let gateway = start_with(options, &path.config(&declarative));
        let prefix = |peer: [u8; 4], target: &'static str| {
            let request = Request::get(target).header("x-forwarded-prefix", "/evil");
            let addr = gateway.addr();
            async move {
                let response = from(peer, addr, &request).await;
                assert_eq!(response.status, 200, "{}", response.text());
                let seen = response.echo_report();
                path.assert_taken(&seen);
                seen.header_values("x-forwarded-prefix")
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(prefix(UNTRUSTED, "/api/x").await, ["/api"], "{path:?}");
        assert!(prefix(UNTRUSTED, "/keep/x").await.is_empty(), "{path:?}");
        assert_eq!(prefix(TRUSTED, "/api/x").await, ["/evil"], "{path:?}");
        assert_eq!(prefix(TRUSTED, "/keep/x").await, ["/evil"], "{path:?}");
    }
}
