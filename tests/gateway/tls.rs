//! TLS on both sides of `gateway`: SNI-selected certificates and ALPN h2 downstream, and an
//! `https` service upstream (a second gateway terminating TLS in front of the echo).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway::tls::{server_config, CertificateFiles};
use gateway::{Gateway, GatewayOptions};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use wasmgate_tests::{EchoReport, EchoUpstream};

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
    let options = GatewayOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        workers: 2,
        drain_timeout: Duration::from_secs(2),
        access_log: false,
        config_path: None,
        tls: tls.map(|config| ("127.0.0.1:0".parse().unwrap(), config)),
        runtime: gateway::filters::RuntimeOptions::default(),
    };
    Gateway::start(options, text).unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    let a = issue(dir.path(), "a.test");
    let b = issue(dir.path(), "b.test");
    let echo = EchoUpstream::start().await.unwrap();
    let tls = server_config(&[a.files.clone(), b.files.clone()]).unwrap();
    let gateway = start(
        &format!("_format_version: \"3.0\"\nservices: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n", echo.addr()),
        Some(tls),
    );
    let addr = gateway.tls_addr().unwrap();
    let (alpn, body) = get(addr, "a.test", &a, "/x").await.unwrap();
    assert_eq!(alpn, "h2");
    let seen: EchoReport = serde_json::from_slice(&body).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let cert = issue(dir.path(), "localhost");
    let echo = EchoUpstream::start().await.unwrap();
    let terminator = start(
        &format!("_format_version: \"3.0\"\nservices: [{{name: e, url: \"http://{}\", routes: [{{name: r, paths: [/]}}]}}]\n", echo.addr()),
        Some(server_config(std::slice::from_ref(&cert.files)).unwrap()),
    );
    let front = start(
        &format!(
            "_format_version: \"3.0\"\nservices: [{{name: tls, url: \"https://{}\", routes: [{{name: r, paths: [/]}}]}}]\n",
            terminator.tls_addr().unwrap()
        ),
        None,
    );
    let response = wasmgate_tests::client::send(
        front.addr(),
        wasmgate_tests::Protocol::Http1,
        &wasmgate_tests::Request::get("/through"),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(seen.path, "/through");
    // The terminator saw a TLS client: its X-Forwarded-Proto is https.
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}
