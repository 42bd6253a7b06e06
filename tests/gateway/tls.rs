//! TLS on both sides of `gateway`: SNI-selected certificates (the configuration's
//! `certificates`, then the `--tls-cert` files) and ALPN h2 downstream, certificates renewed by
//! a new configuration; and an `https` service upstream (a second gateway terminating TLS in
//! front of the echo), with its certificate checked only under `tls_verify`; and an HTTP/2
//! upstream. On both proxy paths.

use std::sync::Arc;

use bytes::Bytes;
use gateway::tls::{CertificateFiles, TlsListener};
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

pub(crate) fn server_config(files: &[CertificateFiles]) -> TlsListener {
    TlsListener::new(files).unwrap()
}

pub(crate) fn start(text: &str, tls: Option<TlsListener>) -> Gateway {
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
    let tls = server_config(&[a.files.clone(), b.files.clone()]);
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
        Some(server_config(std::slice::from_ref(&cert.files))),
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
        server_config(std::slice::from_ref(&a.files)),
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
    let tls = server_config(std::slice::from_ref(&issued.files));
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

/// A CA of the test's own and the leaves it signs, in PEM, as a declarative file holds them.
pub(crate) struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf and its key, PEM.
pub(crate) struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// The leaf's DER, to compare with what a handshake presented.
    pub fn der(&self) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(self.cert.as_bytes())
            .unwrap()
            .to_vec()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasmgate test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        TestCa { issuer }
    }

    /// A leaf for `names` (DNS names, `*.` wildcards too), with a key of its own.
    pub fn issue(&self, names: &[&str]) -> Pem {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

/// How a test client judges the server's certificate.
#[derive(Clone, Copy)]
pub(crate) enum Trust<'a> {
    /// The test CA, for the name asked for: what a real client does.
    Ca(&'a TestCa),
    /// Anything: to see which certificate a name the server has none for gets, or that the
    /// server itself refuses the handshake.
    Anything,
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) type ClientBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// An HTTP/1.1 connection over TLS, and the leaf the server presented for it.
pub(crate) struct TlsConnection {
    pub leaf: Vec<u8>,
    pub send: hyper::client::conn::http1::SendRequest<ClientBody>,
}

/// Opens TLS to `addr` asking for `sni` (`None`: no SNI at all), judging the server's
/// certificate by `trust`; an error names the failed step.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
    trust: Trust<'_>,
) -> Result<TlsConnection, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match trust {
        Trust::Ca(ca) => builder
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // rustls sends no SNI for an address.
    let server_name = match sni {
        Some(name) => ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = (tls.get_ref().1.peer_certificates())
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.to_vec())
        .ok_or("no certificate presented")?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(TlsConnection { leaf, send })
}

pub(crate) fn empty() -> ClientBody {
    http_body_util::Full::new(Bytes::new()).boxed_unsync()
}

impl TlsConnection {
    /// Sends `request` on this connection; the status and the whole body.
    pub async fn exchange(
        &mut self,
        request: http::Request<ClientBody>,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
        // The previous exchange may still be winding down in the connection's task.
        self.send.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    pub async fn get(&mut self, path: &str) -> Result<(http::StatusCode, Bytes), String> {
        let request = http::Request::get(path)
            .header("host", "any.test")
            .body(empty())
            .unwrap();
        let (status, _, body) = self.exchange(request).await?;
        Ok((status, body))
    }
}

/// A declarative file with one route to `echo` and `certificates`.
pub(crate) fn with_certificates(
    echo: std::net::SocketAddr,
    certificates: serde_json::Value,
) -> String {
    serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "e", "url": format!("http://{echo}"), "routes": [{"name": "r", "paths": ["/"]}]}],
        "certificates": certificates,
    })
    .to_string()
}

fn certificate(id: &str, pem: &Pem, snis: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"id": id, "cert": pem.cert, "key": pem.key, "snis": snis})
}

/// The configuration's certificates by exact SNI, then by a wildcard one label deep, then the
/// `--tls-cert` files by their names, then the first file; with no file, a name no
/// certificate has (or no SNI) is refused at the handshake. Every certificate a name has is
/// verified by a client that trusts only the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_certificates_are_chosen_by_exact_then_wildcard_sni_then_the_files() {
    let ca = TestCa::new();
    let exact = ca.issue(&["api.example.test"]);
    let wild = ca.issue(&["*.example.test"]);
    let aliased = ca.issue(&["alias.test"]);
    let file = ca.issue(&["static.test"]);
    let dir = tempfile::tempdir().unwrap();
    let files = CertificateFiles {
        cert: dir.path().join("static.pem"),
        key: dir.path().join("static.key"),
    };
    std::fs::write(&files.cert, &file.cert).unwrap();
    std::fs::write(&files.key, &file.key).unwrap();
    let echo = EchoUpstream::start().await.unwrap();
    let mut document: serde_json::Value = serde_json::from_str(&with_certificates(
        echo.addr(),
        serde_json::json!([
            certificate("exact", &exact, serde_json::json!(["api.example.test"])),
            certificate("wild", &wild, serde_json::json!([{"name": "*.Example.Test"}])),
            {"id": "aliased", "cert": aliased.cert, "key": aliased.key},
        ]),
    ))
    .unwrap();
    // Kong's top-level form: a name for a certificate by its id.
    document["snis"] =
        serde_json::json!([{"name": "alias.test", "certificate": {"id": "aliased"}}]);
    let text = document.to_string();

    let with_file = start(&text, Some(server_config(std::slice::from_ref(&files))));
    let addr = with_file.tls_addr().unwrap();
    for (name, expected) in [
        ("api.example.test", &exact),
        ("API.example.test", &exact),
        ("www.example.test", &wild),
        ("alias.test", &aliased),
        ("static.test", &file),
    ] {
        let mut connection = connect(addr, Some(name), Trust::Ca(&ca))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            connection.leaf == expected.der(),
            "{name}: another certificate"
        );
        let (status, body) = connection.get("/x").await.unwrap();
        assert_eq!(status, 200, "{name}");
        let seen: EchoReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen.path, "/x");
    }
    // One label only, and no SNI: the first file.
    for name in [
        Some("a.b.example.test"),
        Some("example.test"),
        Some("other.test"),
        None,
    ] {
        let connection = connect(addr, name, Trust::Anything).await.unwrap();
        assert!(
            connection.leaf == file.der(),
            "{name:?}: not the file's certificate"
        );
    }

    let without_files = start(&text, Some(server_config(&[])));
    let addr = without_files.tls_addr().unwrap();
    let mut connection = connect(addr, Some("api.example.test"), Trust::Ca(&ca))
        .await
        .unwrap();
    assert_eq!(connection.get("/").await.unwrap().0, 200);
    for name in [Some("static.test"), Some("example.test"), None] {
        let refused = connect(addr, name, Trust::Anything).await.err();
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.starts_with("handshake: ")),
            "{name:?}: {refused:?}"
        );
    }
}

/// A renewal is the same certificate id with a new PEM: handshakes after the new
/// configuration get the new certificate (verified against the CA), while a connection opened
/// before keeps going, a request in flight across the swap included. A renewal that does not
/// load is refused whole, naming the certificate, and the running one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_handshakes_and_open_connections_go_on() {
    let ca = TestCa::new();
    let first = ca.issue(&["api.example.test"]);
    let renewed = ca.issue(&["api.example.test"]);
    let other = ca.issue(&["api.example.test"]);
    let echo = EchoUpstream::start().await.unwrap();
    let document = |pem: &Pem| {
        with_certificates(
            echo.addr(),
            serde_json::json!([certificate(
                "c1",
                pem,
                serde_json::json!(["api.example.test"])
            )]),
        )
    };
    let gateway = start(&document(&first), Some(server_config(&[])));
    let addr = gateway.tls_addr().unwrap();
    let mut before = connect(addr, Some("api.example.test"), Trust::Ca(&ca))
        .await
        .unwrap();
    assert!(before.leaf == first.der());
    assert_eq!(before.get("/before").await.unwrap().0, 200);

    // A request whose body is still coming while the configuration changes.
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
                receiver,
            ))
        },
    ));
    let upload = http::Request::post("/upload")
        .header("host", "api.example.test")
        .body(body.boxed_unsync())
        .unwrap();
    before.send.ready().await.unwrap();
    let in_flight = before.send.send_request(upload);
    let in_flight = tokio::spawn(in_flight);
    chunks
        .send(Bytes::from_static(b"sent before "))
        .await
        .unwrap();

    gateway.shared().apply(&document(&renewed)).unwrap();
    let mut after = connect(addr, Some("api.example.test"), Trust::Ca(&ca))
        .await
        .unwrap();
    assert!(
        after.leaf == renewed.der(),
        "the renewed certificate is not served"
    );
    assert_eq!(after.get("/after").await.unwrap().0, 200);

    chunks.send(Bytes::from_static(b"and after")).await.unwrap();
    drop(chunks);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.body.as_deref(), Some("sent before and after"));
    // The connection from before the renewal is kept alive, on its own certificate.
    assert_eq!(before.get("/still").await.unwrap().0, 200);

    // A renewal whose key is another certificate's: refused, naming the certificate.
    let mismatched = Pem {
        cert: other.cert.clone(),
        key: renewed.key.clone(),
    };
    let error = gateway.shared().apply(&document(&mismatched)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "certificates.1: certificate does not match key"
    );
    let still = connect(addr, Some("api.example.test"), Trust::Ca(&ca))
        .await
        .unwrap();
    assert!(still.leaf == renewed.der());
}

/// What the gateway refuses of a configuration's certificates names the field, at start as
/// at a reload: what rustls cannot load as well as what the declarative rules refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_keys_and_snis_are_refused_naming_the_field() {
    let ca = TestCa::new();
    let one = ca.issue(&["one.test"]);
    let two = ca.issue(&["two.test"]);
    let echo = EchoUpstream::start().await.unwrap();
    let not_der = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
    let cases = [
        (
            serde_json::json!([{"cert": one.cert, "key": two.key, "snis": ["one.test"]}]),
            "certificates.1: certificate does not match key",
        ),
        (
            serde_json::json!([{"cert": not_der, "key": one.key}]),
            "certificates.1.cert: invalid certificate: ",
        ),
        (
            serde_json::json!([{"cert": one.cert, "key": "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n"}]),
            "certificates.1.key: invalid key: ",
        ),
        (
            serde_json::json!([{"cert": one.cert, "key": one.cert}]),
            "certificates.1.key: invalid key: ",
        ),
        (
            serde_json::json!([{"cert": one.cert, "key": one.key, "snis": ["one.test:443"]}]),
            "certificates.1.snis.1: invalid value 'one.test:443': must not have a port",
        ),
        (
            serde_json::json!([
                {"id": "a", "cert": one.cert, "key": one.key, "snis": ["one.test"]},
                {"id": "b", "cert": two.cert, "key": two.key, "snis": ["two.test", "one.test"]},
            ]),
            "certificates.2.snis.2: one.test already associated with existing certificate 'a'",
        ),
    ];
    let gateway = start(
        &with_certificates(echo.addr(), serde_json::json!([])),
        Some(server_config(&[])),
    );
    for (certificates, expected) in cases {
        let text = with_certificates(echo.addr(), certificates);
        let at_start = Gateway::start(wasmgate_tests::gateway::options(), &text)
            .err()
            .unwrap_or_default();
        assert!(
            at_start.starts_with(&format!("invalid configuration: {expected}")),
            "{at_start}"
        );
        let at_reload = gateway.shared().apply(&text).unwrap_err().to_string();
        assert!(at_reload.starts_with(expected), "{at_reload}");
    }
}

/// The admin API shows the configuration without its private keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_the_configuration_without_private_keys() {
    let ca = TestCa::new();
    let one = ca.issue(&["one.test"]);
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = start(
        &with_certificates(
            echo.addr(),
            serde_json::json!([certificate("c1", &one, serde_json::json!(["one.test"]))]),
        ),
        None,
    );
    let shown = raw_exchange(
        gateway.admin_addr().unwrap(),
        "GET /config HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(shown.starts_with("HTTP/1.1 200"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let (_, body) = shown.split_once("\r\n\r\n").unwrap();
    let document: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(document["certificates"][0]["key"], "<redacted>");
    assert_eq!(document["certificates"][0]["cert"], one.cert);
}

/// `gateway run --tls-listen` with no `--tls-cert`: the declarative file's certificates are
/// the listener's, and a renewal written to the file (same id, new PEM) is served after the
/// reload (SIGHUP here; the file watcher does the same) while a connection opened before goes
/// on. (Before, `--tls-listen` needed `--tls-cert` and the file could hold no certificate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_run_with_tls_listen_alone_serves_and_renews_the_files_certificates() {
    let ca = TestCa::new();
    let first = ca.issue(&["api.example.test"]);
    let renewed = ca.issue(&["api.example.test"]);
    let echo = EchoUpstream::start().await.unwrap();
    let document = |pem: &Pem| {
        with_certificates(
            echo.addr(),
            serde_json::json!([certificate(
                "c1",
                pem,
                serde_json::json!(["api.example.test"])
            )]),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kong.json");
    std::fs::write(&file, document(&first)).unwrap();
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("gateway");
    assert!(
        binary.is_file(),
        "build it: cargo build -p gateway --bin gateway"
    );
    let mut child = std::process::Command::new(&binary)
        .args([
            "run",
            "--workers",
            "1",
            "--no-access-log",
            "--admin-listen",
            "off",
        ])
        .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .arg("--modules-dir")
        .arg(wasmgate_tests::paths::wasm_dir())
        .arg("--config")
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let _child = Kill(child);
    // The startup line: `wasmgate: gateway on http://ADDR and https://ADDR (admin off), ...`.
    let (lines, mut startup) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let tls: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), startup.recv())
            .await
            .expect("no startup line within 60 s")
            .expect("the gateway exited before its startup line");
        if let Some((_, rest)) = line.split_once(" and https://") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };

    let mut before = connect(tls, Some("api.example.test"), Trust::Ca(&ca))
        .await
        .unwrap();
    assert!(before.leaf == first.der());
    assert_eq!(before.get("/before").await.unwrap().0, 200);

    std::fs::write(&file, document(&renewed)).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    // The reload is done when a new handshake gets the renewed certificate.
    let mut served = Vec::new();
    for _ in 0..200 {
        served = connect(tls, Some("api.example.test"), Trust::Ca(&ca))
            .await
            .unwrap()
            .leaf;
        if served == renewed.der() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        served == renewed.der(),
        "the renewed certificate is not served"
    );
    assert_eq!(before.get("/after").await.unwrap().0, 200);
}
