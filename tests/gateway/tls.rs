//! TLS on both sides of `gateway`: SNI-selected certificates and ALPN h2 downstream, and an
//! `https` service upstream (a second gateway terminating TLS in front of the echo), with its
//! certificate checked only under `tls_verify`; and an HTTP/2 upstream. On both proxy paths.

use std::sync::Arc;

use bytes::Bytes;
use gateway::tls::{server_config, CertificateFiles};
use gateway::Gateway;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use wasmgate_tests::client::raw_exchange;
use wasmgate_tests::gateway::ProxyPath;
use wasmgate_tests::https_only::{self, cleartext};
use wasmgate_tests::{EchoReport, EchoUpstream, Protocol, Request};

struct Issued {
    files: CertificateFiles,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn issue(dir: &std::path::Path, name: &str) -> Issued {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Issued {
        files: CertificateFiles { cert, key },
        der: certified.cert.der().clone(),
    }
}

fn start(text: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Gateway {
    let mut options = wasmgate_tests::gateway::options();
    options.tls = tls.map(|config| ("127.0.0.1:0".parse().unwrap(), config));
    wasmgate_tests::gateway::start_with(options, text)
}

fn one_service(url: &str) -> String {
    format!("_format_version: \"3.0\"\nservices: [{{name: e, url: \"{url}\", routes: [{{name: r, paths: [/]}}]}}]\n")
}

/// GET over TLS with SNI `name`, trusting only `trusted`; returns the ALPN protocol and body.
async fn get(
    addr: std::net::SocketAddr,
    name: &str,
    trusted: &Issued,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.der.clone()).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let alpn =
        String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap_or_default()).into_owned();
    let request = http::Request::get(path)
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if alpn == "h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(request)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(request)
            .await
            .map_err(|e| e.to_string())?
    };
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((alpn, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_and_h2_is_negotiated() {
    for path in ProxyPath::ALL {
        certificates_are_chosen_by_sni_and_h2_is_negotiated_on(path).await;
    }
}

async fn certificates_are_chosen_by_sni_and_h2_is_negotiated_on(path: ProxyPath) {
    let dir = tempfile::tempdir().unwrap();
    let a = issue(dir.path(), "a.test");
    let b = issue(dir.path(), "b.test");
    let echo = EchoUpstream::start().await.unwrap();
    let tls = server_config(&[a.files.clone(), b.files.clone()]).unwrap();
    let gateway = start(
        &path.config(&one_service(&format!("http://{}", echo.addr()))),
        Some(tls),
    );
    let addr = gateway.tls_addr().unwrap();
    let (alpn, body) = get(addr, "a.test", &a, "/x").await.unwrap();
    assert_eq!(alpn, "h2");
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
    path.assert_taken(&seen);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    get(addr, "b.test", &b, "/x").await.unwrap();
    // b.test's certificate does not cover a.test: the client must refuse it.
    assert!(get(addr, "b.test", &a, "/x")
        .await
        .unwrap_err()
        .contains("handshake"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_services_are_reached_over_tls() {
    for path in ProxyPath::ALL {
        https_services_are_reached_over_tls_on(path).await;
    }
}

async fn https_services_are_reached_over_tls_on(path: ProxyPath) {
    let dir = tempfile::tempdir().unwrap();
    let cert = issue(dir.path(), "localhost");
    let echo = EchoUpstream::start().await.unwrap();
    let terminator = start(
        &one_service(&format!("http://{}", echo.addr())),
        Some(server_config(std::slice::from_ref(&cert.files)).unwrap()),
    );
    let tls = terminator.tls_addr().unwrap();
    // Kong's default (tls_verify: false) accepts the self-signed certificate; with
    // tls_verify: true it is refused, as no trusted root signed it.
    let front = start(
        &path.config(&format!(
            "_format_version: \"3.0\"\nservices:\n  \
             - {{name: tls, url: \"https://{tls}\", routes: [{{name: r, paths: [/]}}]}}\n  \
             - {{name: verified, url: \"https://{tls}\", tls_verify: true, routes: [{{name: v, paths: [/verified]}}]}}\n"
        )),
        None,
    );
    let response =
        wasmgate_tests::client::send(front.addr(), Protocol::Http1, &Request::get("/through"))
            .await
            .unwrap();
    assert_eq!(response.status, 200, "{path:?}: {}", response.text());
    let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
    path.assert_taken(&seen);
    assert_eq!(seen.path, "/through");
    // The terminator saw a TLS client: its X-Forwarded-Proto is https.
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let arrived = echo.arrivals().len();
    let refused =
        wasmgate_tests::client::send(front.addr(), Protocol::Http1, &Request::get("/verified"))
            .await
            .unwrap();
    assert_eq!(refused.status, 502, "{path:?}: {}", refused.text());
    assert_eq!(
        refused.json().unwrap(),
        refused.kong_error_json("An invalid response was received from the upstream server")
    );
    assert_eq!(
        echo.arrivals().len(),
        arrived,
        "an unverified upstream got the request"
    );
}

/// `grpc` services are HTTP/2 upstreams (h2c): the upstream sees HTTP/2 whatever the client
/// spoke, and the client's `te: trailers`, which gRPC servers require (RFC 9113 §8.2.2
/// allows that one value; any other TE is hop-by-hop and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_are_reached_over_http2() {
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let gateway = start(
            &path.config(&one_service(&format!("grpc://{}", echo.addr()))),
            None,
        );
        for protocol in Protocol::ALL {
            let request = Request::get("/h2").header("te", "trailers");
            let response = wasmgate_tests::client::send(gateway.addr(), protocol, &request)
                .await
                .unwrap();
            assert_eq!(
                response.status,
                200,
                "{path:?} {protocol:?}: {}",
                response.text()
            );
            let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
            path.assert_taken(&seen);
            assert_eq!(seen.version, "HTTP/2.0", "{path:?} {protocol:?}");
            assert_eq!(
                seen.header_values("te"),
                ["trailers"],
                "{path:?} {protocol:?}"
            );
        }
        // Any other TE stays hop-by-hop.
        let request = Request::get("/h2").header("te", "gzip");
        let response = wasmgate_tests::client::send(gateway.addr(), Protocol::Http1, &request)
            .await
            .unwrap();
        let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
        assert!(seen.header_values("te").is_empty(), "{path:?}");
    }
}

/// A module reads the SNI the client asked for as Envoy's `connection.requested_server_name`
/// (here copied into a request header by a WAT filter); on a plaintext connection it is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_see_the_requested_server_name() {
    let module = wat::parse_str(
        r#"(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 100) "connection\00requested_server_name")
  (data (i32.const 200) "x-sni")
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
    (if (i32.eqz (call $get_property (i32.const 100) (i32.const 32) (i32.const 0) (i32.const 4)))
      (then (drop (call $add (i32.const 0) (i32.const 200) (i32.const 5)
        (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (i32.const 0)))"#,
    )
    .unwrap();
    let filters = tempfile::tempdir().unwrap();
    std::fs::write(filters.path().join("sni.wasm"), module).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = issue(dir.path(), "a.test");
    let echo = EchoUpstream::start().await.unwrap();
    let text = format!(
        "{}filter_chains: [{{route: r, filters: [{{name: sni}}]}}]\n",
        one_service(&format!("http://{}", echo.addr()))
    );
    let mut options = wasmgate_tests::gateway::options();
    options.tls = Some((
        "127.0.0.1:0".parse().unwrap(),
        server_config(std::slice::from_ref(&a.files)).unwrap(),
    ));
    options.runtime.filters_dir = Some(filters.path().to_owned());
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    let (_, body) = get(gateway.tls_addr().unwrap(), "a.test", &a, "/x")
        .await
        .unwrap();
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.header("x-sni"), Some("a.test"));
    let plain = wasmgate_tests::client::send(gateway.addr(), Protocol::Http1, &Request::get("/x"))
        .await
        .unwrap();
    assert_eq!(plain.echo_report().header("x-sni"), Some(""));
}

/// Kong's route `protocols`: an https-only route answers a cleartext request 426 (`Upgrade:
/// TLS/1.2, HTTP/1.1`) or redirects it to https (the host without its port, the target as
/// sent), before its plugins run; over TLS, or from a trusted proxy that ended TLS
/// (`X-Forwarded-Proto: https`), it is proxied. Before, every https-only route was served
/// in cleartext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_routes_refuse_cleartext_with_426_or_their_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let issued = issue(dir.path(), "gw.test");
    let echo = EchoUpstream::start().await.unwrap();
    let tls = server_config(std::slice::from_ref(&issued.files)).unwrap();
    let gateway = start(&https_only::config(echo.addr()), Some(tls));

    for extra in ["", "x-forwarded-proto: https\r\n"] {
        let answer = raw_exchange(gateway.addr(), cleartext("/tls/x", extra)).await;
        https_only::assert_https_required(&answer, true);
    }
    let answer = raw_exchange(gateway.addr(), cleartext("/moved/a%20b?q=1", "")).await;
    let head = answer.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 308"), "{answer}");
    assert!(
        answer.contains("location: https://gw.test/moved/a%20b?q=1\r\n"),
        "{answer}"
    );
    let answer = raw_exchange(gateway.addr(), cleartext("/both", "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(echo.arrivals().len(), 1, "only /both reached the upstream");

    let (_, body) = get(gateway.tls_addr().unwrap(), "gw.test", &issued, "/tls/x")
        .await
        .unwrap();
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.path, "/x", "strip_path");

    // Behind a trusted proxy that ended TLS: its X-Forwarded-Proto and -Host count.
    let mut options = wasmgate_tests::gateway::options();
    options.real_ip.trusted_ips = vec!["127.0.0.1".parse().unwrap()];
    let behind = wasmgate_tests::gateway::start_with(options, &https_only::config(echo.addr()));
    let answer = raw_exchange(
        behind.addr(),
        cleartext("/tls/y", "x-forwarded-proto: https\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw_exchange(
        behind.addr(),
        cleartext("/moved/z", "x-forwarded-host: public.test\r\n"),
    )
    .await;
    assert!(
        answer.contains("location: https://public.test/moved/z\r\n"),
        "{answer}"
    );
}
