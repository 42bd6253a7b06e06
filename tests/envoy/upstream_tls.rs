//! `tls_verify` against a real TLS upstream on loopback, on both data planes. The translated
//! Envoy checks an `https` service's certificate exactly when the service says
//! `tls_verify: true`: it must chain to the CA file the translation is given and name the
//! service's host (an IP SAN for an address, a DNS SAN for a name). `gateway` trusts the Web
//! PKI roots and the CAs of its `--upstream-ca-file`: without this test CA there it refuses
//! wherever it verifies, with it it answers as Envoy does. Both send SNI only for a DNS
//! name (RFC 6066 forbids IP literals there); the upstream reads it from the raw ClientHello,
//! since rustls would hide an IP literal.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use gateway::proxy::upstream::UpstreamOptions;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use model::envoy::{bootstrap, EnvoyOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use wasmgate_tests::client::send;
use wasmgate_tests::{Envoy, Protocol, Request, Response};

/// A CA of its own, its certificate written as PEM for Envoy.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, issuer.pem()).unwrap();
    Ca { issuer, pem }
}

/// A TLS server configuration with a certificate `ca` issued for `names` (DNS names and IP
/// addresses, as SANs).
fn server_config(ca: &Ca, names: &[&str]) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

/// The SNI of the connection each request came on, in arrival order.
type Arrivals = Arc<Mutex<Vec<Option<String>>>>;

/// A TCP stream that keeps the first bytes the client sent (its ClientHello).
struct Recorded {
    inner: TcpStream,
    head: Vec<u8>,
}

const HEAD_BYTES: usize = 16 * 1024;

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.head.len() < HEAD_BYTES {
            this.head.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn number(&mut self, width: usize) -> Option<usize> {
        Some(
            self.take(width)?
                .iter()
                .fold(0, |n, &b| (n << 8) | usize::from(b)),
        )
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = self.number(width)?;
        self.take(n)
    }
}

/// The `host_name` in a ClientHello's server_name extension (RFC 6066 §3), byte for byte:
/// `Some(None)` when there is none, `None` when `bytes` do not start with a ClientHello.
fn sni_of(bytes: &[u8]) -> Option<Option<String>> {
    let mut record = Wire(bytes);
    // A handshake record whose first message is a ClientHello.
    if record.number(1)? != 22 {
        return None;
    }
    record.take(2)?;
    let mut handshake = Wire(record.vector(2)?);
    if handshake.number(1)? != 1 {
        return None;
    }
    let mut hello = Wire(handshake.vector(3)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    let mut extensions = Wire(hello.vector(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.number(2)?;
        let data = extensions.vector(2)?;
        if kind == 0 {
            let mut names = Wire(Wire(data).vector(2)?);
            if names.number(1)? != 0 {
                return None;
            }
            let name = names.vector(2)?;
            return Some(Some(String::from_utf8_lossy(name).into_owned()));
        }
    }
    Some(None)
}

/// A TLS upstream answering `200 upstream` to every request, recording its SNI: on
/// 127.0.0.1 and on [::1] at the same port, so that `localhost` reaches it whichever address
/// a data plane resolves first.
async fn tls_upstream(config: Arc<rustls::ServerConfig>, arrivals: &Arrivals) -> u16 {
    let (v4, v6) = loop {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = TcpListener::bind(("::1", port)).await {
            break (v4, v6);
        }
    };
    let port = v4.local_addr().unwrap().port();
    for listener in [v4, v6] {
        serve(listener, Arc::clone(&config), Arc::clone(arrivals));
    }
    port
}

fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, arrivals: Arrivals) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let arrivals = Arc::clone(&arrivals);
            tokio::spawn(async move {
                let recorded = Recorded {
                    inner: tcp,
                    head: Vec::new(),
                };
                // A client that refuses the certificate ends here, before any request.
                let Ok(tls) = acceptor.accept(recorded).await else {
                    return;
                };
                let sni = sni_of(&tls.get_ref().0.head).expect("a ClientHello");
                let service = service_fn(move |_request| {
                    arrivals.lock().unwrap().push(sni.clone());
                    async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"upstream",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The upstream answers, and saw this SNI.
    Through(Option<&'static str>),
    /// The data plane refuses the certificate; the upstream gets nothing.
    Refused,
}
use Expect::{Refused, Through};

/// Sends each case's request through `addr`; `refused` checks a refusal's answer.
async fn check(
    plane: &str,
    addr: SocketAddr,
    arrivals: &Arrivals,
    cases: &[(&str, Expect)],
    refused: impl Fn(&Response) -> Result<(), String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for &(service, expect) in cases {
        let before = arrivals.lock().unwrap().len();
        let response = send(addr, Protocol::Http1, &Request::get(&format!("/{service}")))
            .await
            .unwrap();
        let arrived: Vec<Option<String>> = arrivals.lock().unwrap()[before..].to_vec();
        let outcome = match expect {
            Through(sni) => {
                let expected = vec![sni.map(str::to_owned)];
                if response.status != 200 || response.text() != "upstream" {
                    Err(format!("{} {}", response.status, response.text()))
                } else if arrived != expected {
                    Err(format!(
                        "the upstream saw SNI {arrived:?}, not {expected:?}"
                    ))
                } else {
                    Ok(())
                }
            }
            Refused => {
                if !arrived.is_empty() {
                    Err(format!(
                        "{} {}: the upstream got the request (SNI {arrived:?})",
                        response.status,
                        response.text()
                    ))
                } else {
                    refused(&response)
                }
            }
        };
        if let Err(e) = outcome {
            failures.push(format!("{plane}, {service} ({expect:?}): {e}"));
        }
    }
    failures
}

/// Envoy's answer when the upstream's certificate fails its validation context: the one it
/// gives for any failed connection (which it was is in [`verify_failures`]).
fn envoy_refusal(response: &Response) -> Result<(), String> {
    let expected =
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    if response.status == 503 && response.text() == expected {
        Ok(())
    } else {
        Err(format!("{} {}", response.status, response.text()))
    }
}

/// Envoy's counts of certificates each service's cluster refused, as `failed`: the chain
/// (`fail_verify_error`) or the name (`fail_verify_san`); 0 for every other pair.
async fn verify_failures(
    plane: &str,
    envoy: &Envoy,
    services: &[&str],
    failed: &[(&str, &str)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for service in services {
        for counter in ["fail_verify_error", "fail_verify_san"] {
            let name = format!("cluster.service.{service}.ssl.{counter}");
            let expected = u64::from(failed.contains(&(*service, counter)));
            let count = envoy.stat(&name).await;
            if count != Some(expected) {
                failures.push(format!("{plane}: {name} is {count:?}, not {expected}"));
            }
        }
    }
    failures
}

/// The gateway's: Kong's 502.
fn gateway_refusal(response: &Response) -> Result<(), String> {
    let expected =
        response.kong_error_json("An invalid response was received from the upstream server");
    if response.status == 502 && response.json().as_ref() == Some(&expected) {
        Ok(())
    } else {
        Err(format!("{} {}", response.status, response.text()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_checks_the_upstream_certificate_and_sni_is_sent_only_for_names() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca(dir.path(), "wasmgate-test-ca");
    let unrelated = ca(dir.path(), "unrelated-ca");
    let arrivals = Arrivals::default();
    let port = tls_upstream(
        server_config(&trusted, &["localhost", "127.0.0.1", "::1"]),
        &arrivals,
    )
    .await;
    // Signed by the trusted CA, for other names than the service's.
    let misnamed = tls_upstream(
        server_config(&trusted, &["other.test", "127.0.0.2"]),
        &arrivals,
    )
    .await;
    let services = [
        ("verified-ip", format!("127.0.0.1:{port}"), true),
        ("verified-v6", format!("[::1]:{port}"), true),
        ("verified-dns", format!("localhost:{port}"), true),
        ("unverified-ip", format!("127.0.0.1:{port}"), false),
        ("unverified-dns", format!("localhost:{port}"), false),
        ("misnamed", format!("127.0.0.1:{misnamed}"), true),
    ];
    let mut text = String::from("_format_version: \"3.0\"\nservices:\n");
    for (name, authority, verify) in &services {
        text += &format!(
            "  - {{name: {name}, url: \"https://{authority}\", tls_verify: {verify}, \
             routes: [{{name: {name}, paths: [/{name}]}}]}}\n"
        );
    }
    let config = model::parse_declarative(&text).unwrap();
    let names: Vec<&str> = services.iter().map(|(name, ..)| *name).collect();
    let mut failures = Vec::new();

    // Envoy trusting the CA that signed the upstream's certificates: a verified service
    // goes through when the certificate names its host, and is refused when it does not.
    let options = EnvoyOptions {
        upstream_ca_file: Some(trusted.pem.clone()),
        ..wasmgate_tests::envoy::translation_options()
    };
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 1)
        .await
        .unwrap();
    let with_the_ca = [
        ("verified-ip", Through(None)),
        ("verified-v6", Through(None)),
        ("verified-dns", Through(Some("localhost"))),
        ("unverified-ip", Through(None)),
        ("unverified-dns", Through(Some("localhost"))),
        ("misnamed", Refused),
    ];
    failures.extend(
        check(
            "Envoy with the upstream's CA",
            envoy.listener("wasmgate"),
            &arrivals,
            &with_the_ca,
            envoy_refusal,
        )
        .await,
    );
    failures.extend(
        verify_failures(
            "Envoy with the upstream's CA",
            &envoy,
            &names,
            &[("misnamed", "fail_verify_san")],
        )
        .await,
    );
    drop(envoy);

    // Envoy trusting another CA: every verified service is refused; the unverified ones
    // (Kong's default) still go through.
    let options = EnvoyOptions {
        upstream_ca_file: Some(unrelated.pem.clone()),
        ..wasmgate_tests::envoy::translation_options()
    };
    let envoy = Envoy::start_bootstrap(&bootstrap(&config, &options), 1)
        .await
        .unwrap();
    let cases = [
        ("verified-ip", Refused),
        ("verified-v6", Refused),
        ("verified-dns", Refused),
        ("unverified-ip", Through(None)),
        ("unverified-dns", Through(Some("localhost"))),
        ("misnamed", Refused),
    ];
    failures.extend(
        check(
            "Envoy with another CA",
            envoy.listener("wasmgate"),
            &arrivals,
            &cases,
            envoy_refusal,
        )
        .await,
    );
    failures.extend(
        verify_failures(
            "Envoy with another CA",
            &envoy,
            &names,
            &[
                ("verified-ip", "fail_verify_error"),
                ("verified-v6", "fail_verify_error"),
                ("verified-dns", "fail_verify_error"),
                ("misnamed", "fail_verify_error"),
            ],
        )
        .await,
    );
    drop(envoy);

    // The gateway trusts the Web PKI roots, which did not sign the test CA: the same as
    // Envoy with another CA, in Kong's 502, and the same SNI.
    let gateway = wasmgate_tests::gateway::start(&text);
    failures.extend(
        check(
            "gateway",
            gateway.addr(),
            &arrivals,
            &cases,
            gateway_refusal,
        )
        .await,
    );
    drop(gateway);

    // The gateway trusting the test CA too (`--upstream-ca-file`, Kong's
    // `lua_ssl_trusted_certificate`): the same as Envoy with it.
    let mut options = wasmgate_tests::gateway::options();
    options.upstream.trusted_cas = UpstreamOptions::read_cas(&trusted.pem).unwrap();
    let gateway = wasmgate_tests::gateway::start_with(options, &text);
    failures.extend(
        check(
            "gateway with the upstream's CA",
            gateway.addr(),
            &arrivals,
            &with_the_ca,
            gateway_refusal,
        )
        .await,
    );

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
