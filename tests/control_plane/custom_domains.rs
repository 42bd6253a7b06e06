//! Custom domains end to end (issue #18's "done when"), with real processes only: a real ACME
//! server (Debian's `pebble`, its DNS answering 127.0.0.1 for the test's domains), a
//! serverless control plane issuing through it, the `gateway` it provisions answering HTTP-01
//! and serving the certificate by SNI, and a client that trusts Pebble's root and nothing else;
//! then the same with a stock Envoy following a control plane over ADS (the certificate by
//! SDS).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use control_plane::acme::{AcmeSettings, BoxFuture, ChallengeSink, Issuer, Settings};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::acme::{Pebble, PebbleOptions, PebbleSite};
use wasmgate_tests::client::send;
use wasmgate_tests::control_plane::TestControlPlane;
use wasmgate_tests::{EchoReport, EchoUpstream, Envoy, Protocol, Request};

const DOMAIN: &str = "api.shop.example.test";
const BLOCKED: &str = "blocked.example.test";

/// Against a hang only: issuance through Pebble takes well under a second.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The harness itself: Pebble, its DNS, and HTTP-01 at a loopback server, with the control
// plane's ACME issuer and no data plane.
// ---------------------------------------------------------------------------------------

/// A loopback HTTP server answering `/.well-known/acme-challenge/<token>` for the tokens
/// published to it, and remembering which (host, path) were asked for.
#[derive(Clone, Default)]
struct ChallengeServer {
    tokens: Arc<Mutex<Vec<(String, String)>>>,
    asked: Arc<Mutex<Vec<(String, String)>>>,
}

impl ChallengeServer {
    /// Serves on a free loopback port; returns that port.
    async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = self.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let host = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("host")
                                .then(|| value.trim().to_owned())
                        })
                        .unwrap_or_default();
                    server.asked.lock().unwrap().push((host, path.clone()));
                    let answer =
                        path.strip_prefix(model::ACME_CHALLENGE_PREFIX)
                            .and_then(|token| {
                                let tokens = server.tokens.lock().unwrap();
                                tokens
                                    .iter()
                                    .find(|(t, _)| t == token)
                                    .map(|(_, k)| k.clone())
                            });
                    let response = match answer {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        port
    }
}

impl ChallengeSink for ChallengeServer {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.tokens
            .lock()
            .unwrap()
            .push((token.to_owned(), key_authorization.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, ()> {
        self.tokens.lock().unwrap().retain(|(t, _)| t != token);
        Box::pin(async {})
    }
}

/// `pem`'s chain (leaf first) verified for `name` against `root_pem` alone, as a TLS client
/// would verify it now.
fn verify_chain(pem: &str, root_pem: &str, name: &str) -> Result<(), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the chain: {e}"))?;
    let (leaf, intermediates) = chain.split_first().ok_or("an empty chain")?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("verifying for {name:?}: {e}"))
}

/// The control plane's ACME issuer against Pebble: Pebble resolves a test domain to loopback
/// through pebble-challtestsrv, fetches the HTTP-01 token from the loopback server the issuer
/// published it to, and issues a certificate that verifies against Pebble's root with the
/// lifetime the harness set; a blocklisted domain is refused, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_validates_http_01_at_loopback_for_a_test_domain() {
    let server = ChallengeServer::default();
    let http_port = server.start().await;
    let pebble = Pebble::start(PebbleOptions {
        http_port,
        validity_seconds: Some(3600),
        blocklist: vec![BLOCKED.to_owned()],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pebble.resolve("x.example.test").unwrap(),
        [Ipv4Addr::LOCALHOST]
    );

    let data = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(
        &Settings {
            acme: Some(AcmeSettings {
                directory: pebble.directory_url(),
                ca_file: Some(pebble.ca_file()),
                contact: Vec::new(),
            }),
            ..Settings::default()
        },
        data.path(),
    )
    .unwrap();
    let issued = issuer
        .issue("x.example.test", &server)
        .await
        .unwrap_or_else(|e| panic!("issuing: {e}\n--- pebble:\n{}", pebble.log()));
    let asked = server.asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|(host, path)| host.starts_with("x.example.test")
                && path.starts_with(model::ACME_CHALLENGE_PREFIX)),
        "pebble never fetched the token: {asked:?}"
    );
    verify_chain(&issued.cert_pem, pebble.root_pem(), "x.example.test").unwrap();
    verify_chain(&issued.cert_pem, pebble.root_pem(), "y.example.test").unwrap_err();
    let lifetime = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap()
        .as_secs();
    assert!((3590..=3610).contains(&lifetime), "lifetime {lifetime} s");
    assert_eq!(issued.authority, "acme");

    let refused = issuer
        .issue(&format!("shop.{BLOCKED}"), &server)
        .await
        .unwrap_err();
    assert!(refused.refused, "{refused:?}");
    assert!(
        refused.reason.contains("rejectedIdentifier"),
        "{}",
        refused.reason
    );
}

// ---------------------------------------------------------------------------------------
// The done-when: a serverless control plane and its cloud gateway, a custom domain issued by
// Pebble, served by SNI through the plugins, renewed without a failed request, refused when
// Pebble refuses, and gone once deleted.
// ---------------------------------------------------------------------------------------

/// The control plane (its ACME server Pebble) and its data directory, which outlives it.
struct Site {
    control_plane: TestControlPlane,
    _data_dir: tempfile::TempDir,
}

impl Site {
    fn start(acme: &PebbleSite) -> Site {
        let data_dir = tempfile::tempdir().unwrap();
        let control_plane = TestControlPlane::start_with_certificates(
            data_dir.path(),
            Settings {
                acme: Some(AcmeSettings {
                    directory: acme.directory_url(),
                    ca_file: Some(acme.ca_file()),
                    contact: Vec::new(),
                }),
                ..Settings::default()
            },
        );
        Site {
            control_plane,
            _data_dir: data_dir,
        }
    }

    async fn expect(&self, status: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.control_plane.expect(status, method, path, body).await
    }
}

/// The cloud gateway's cleartext and TLS proxy addresses.
struct Gateway {
    control_plane_id: String,
    proxy: SocketAddr,
    tls: SocketAddr,
}

fn address(url: &Value) -> SocketAddr {
    let url = url.as_str().unwrap_or_else(|| panic!("not a URL: {url}"));
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// A control plane of `cluster_type` whose one service (the echo) has a request-transformer
/// adding `x-custom-domain: through-the-plugins` and a rate limit of 50 a second (a serverless
/// gateway's own limit hides its headers); its id.
async fn configure(site: &Site, echo: SocketAddr, cluster_type: &str) -> String {
    let created = site
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "shop", "cluster_type": cluster_type })),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let base = format!("/v2/control-planes/{id}/core-entities");
    site.expect(
        201,
        "POST",
        &format!("{base}/services"),
        Some(&json!({ "name": "shop", "url": format!("http://{echo}") })),
    )
    .await;
    site.expect(
        201,
        "POST",
        &format!("{base}/services/shop/routes"),
        Some(&json!({ "name": "all", "paths": ["/"] })),
    )
    .await;
    site.expect(
        201,
        "POST",
        &format!("{base}/services/shop/plugins"),
        Some(&json!({
            "name": "request-transformer",
            "config": { "add": { "headers": ["x-custom-domain:through-the-plugins"] } },
        })),
    )
    .await;
    site.expect(
        201,
        "POST",
        &format!("{base}/services/shop/plugins"),
        Some(&json!({ "name": "rate-limiting", "config": { "second": 50, "policy": "local" } })),
    )
    .await;
    id
}

/// A serverless control plane ([`configure`]d) and its cloud gateway.
async fn provision(site: &Site, echo: SocketAddr) -> Gateway {
    let id = configure(site, echo, "CLUSTER_TYPE_SERVERLESS_V1").await;
    let configuration = site
        .expect(
            201,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&json!({
                "control_plane_id": id,
                "control_plane_geo": "us",
                "dataplane_groups": [{ "region": "us", "provider": "aws" }],
                "kind": "serverless.v1",
            })),
        )
        .await;
    let group = &configuration["dataplane_groups"][0];
    Gateway {
        control_plane_id: id,
        proxy: address(&group["proxy_url"]),
        tls: address(&group["https_proxy_url"]),
    }
}

/// Posts `domain` for control plane `control_plane_id`; returns the custom domain's id.
async fn post_domain(site: &Site, control_plane_id: &str, domain: &str) -> String {
    let created = site
        .expect(
            201,
            "POST",
            "/v2/cloud-gateways/custom-domains",
            Some(&json!({
                "control_plane_id": control_plane_id,
                "control_plane_geo": "us",
                "domain": domain,
            })),
        )
        .await;
    assert_eq!(created["domain"], domain, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Polls custom domain `id` until its state is no longer `initializing`; returns it.
async fn settled(site: &Site, pebble: &Pebble, id: &str) -> Value {
    let path = format!("/v2/cloud-gateways/custom-domains/{id}");
    wasmgate_tests::until(
        &format!("{path} leaving initializing"),
        DEADLINE,
        async || {
            let domain = site.expect(200, "GET", &path, None).await;
            match domain["state"].as_str() {
                Some("initializing") => Err(format!("{domain}\n--- pebble:\n{}", pebble.log())),
                _ => Ok(domain),
            }
        },
    )
    .await
}

/// A TLS client trusting Pebble's root only, offering HTTP/1.1 alone in ALPN (the client
/// speaks HTTP/1.1; Envoy holds a client that negotiated h2 to it).
fn http1_client(pebble: &Pebble) -> Arc<rustls::ClientConfig> {
    let mut config = pebble.client_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 connection over TLS to `addr`, naming `sni`, trusting what `config` trusts.
struct TlsConnection {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    /// The certificate the data plane presented.
    leaf: CertificateDer<'static>,
}

async fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> Result<TlsConnection, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake with {addr} for {sni}: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no certificate presented")?
        .clone()
        .into_owned();
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 over TLS: {e}"))?;
    tokio::spawn(connection);
    Ok(TlsConnection { send, leaf })
}

impl TlsConnection {
    /// `GET path` for `host`; the status, the rate-limit header and what the echo saw.
    async fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        let request = http::Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status().as_u16();
        let limit = response
            .headers()
            .get("x-ratelimit-limit-second")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path}: the body: {e}"))?
            .to_bytes();
        if status != 200 {
            return Err(format!(
                "GET {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let seen: EchoReport = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "not the echo's report ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        Ok(Answer { limit, seen })
    }
}

struct Answer {
    limit: Option<String>,
    seen: EchoReport,
}

/// Through the plugins: the service's request-transformer reached the upstream and its rate
/// limit counted the request.
fn assert_through_the_plugins(answer: &Answer) {
    assert_eq!(
        answer.seen.header("x-custom-domain"),
        Some("through-the-plugins"),
        "{:?}",
        answer.seen.headers
    );
    assert_eq!(answer.limit.as_deref(), Some("50"));
}

/// Requests over TLS for `DOMAIN` until stopped: one client on a single keep-alive
/// connection, one with a fresh handshake per request (what it presented is recorded), each
/// about 10 a second (the service's limit is 50).
struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    leaves: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    clients: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Traffic {
    async fn start(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Traffic {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let leaves = Arc::new(Mutex::new(Vec::new()));
        let mut kept = connect(config, addr, DOMAIN).await.unwrap();
        let kept = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match kept.get(DOMAIN, "/kept").await {
                        Ok(_) => answered += 1,
                        Err(e) => failed.push(format!("keep-alive: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (answered, failed)
            })
        };
        let fresh = {
            let (stop, leaves, config) =
                (Arc::clone(&stop), Arc::clone(&leaves), Arc::clone(config));
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let outcome = match connect(&config, addr, DOMAIN).await {
                        Ok(mut connection) => {
                            leaves.lock().unwrap().push(connection.leaf.clone());
                            connection.get(DOMAIN, "/fresh").await.map(|_| ())
                        }
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(()) => answered += 1,
                        Err(e) => failed.push(format!("fresh: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (answered, failed)
            })
        };
        Traffic {
            stop,
            leaves,
            clients: vec![kept, fresh],
        }
    }

    /// Stops the clients; insists that every request was answered. Returns how many were.
    async fn stop_all_answered(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut answered, mut failed) = (0, Vec::new());
        for client in self.clients {
            let (n, f) = client.await.unwrap();
            answered += n;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            answered + failed.len(),
            &failed[..failed.len().min(10)]
        );
        answered
    }
}

/// A handshake the data plane refused for want of a certificate for the name, rather than
/// one presenting some other certificate.
fn assert_refused(handshake: Result<TlsConnection, String>) {
    match handshake {
        Ok(connection) => panic!("a certificate was served: {:?}", connection.leaf),
        Err(e) => assert!(!e.contains("invalid peer certificate"), "{e}"),
    }
}

/// The certificate lifetime Pebble gives in the done-when tests: short enough to see a
/// renewal (two thirds into it) within the test.
const VALIDITY_SECONDS: u64 = 30;

/// Custom domain `id` (for [`DOMAIN`]) reaching `ready`, served on the data plane's TLS
/// listener `tls` through the plugins, then renewed while requests run throughout, none
/// failing. Returns the API's path of the domain.
async fn ready_served_and_renewed(
    site: &Site,
    pebble: &Pebble,
    client: &Arc<rustls::ClientConfig>,
    id: &str,
    tls: SocketAddr,
) -> String {
    let path = format!("/v2/cloud-gateways/custom-domains/{id}");
    let domain = settled(site, pebble, id).await;
    assert_eq!(
        domain["state"],
        "ready",
        "{domain}\n--- pebble:\n{}",
        pebble.log()
    );
    assert_eq!(domain["certificate_authority"]["kind"], "acme", "{domain}");

    // Over TLS for the domain, verified against Pebble's root, through the plugins, at once:
    // `ready` comes once the data planes run the certificate (an Envoy's TLS listener comes
    // by LDS, after the push).
    let mut first = connect(client, tls, DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("{DOMAIN} is ready, so served: {e}"));
    assert_through_the_plugins(&first.get(DOMAIN, "/").await.unwrap());
    let issued = first.leaf.clone();
    drop(first);

    // Renewal: requests throughout, until a fresh handshake gets another certificate. Every
    // fresh handshake verifies the certificate's dates (no session is resumed), so a renewal
    // that came after the first certificate's end would show as failed requests.
    let traffic = Traffic::start(client, tls).await;
    let renewal = Duration::from_secs(VALIDITY_SECONDS) + DEADLINE;
    let watching = SystemTime::now();
    wasmgate_tests::until("the certificate renewed", renewal, async || {
        let leaves = traffic.leaves.lock().unwrap();
        match leaves.iter().any(|leaf| *leaf != issued) {
            true => Ok(()),
            false => Err(format!(
                "{} handshakes, all with the first certificate",
                leaves.len()
            )),
        }
    })
    .await;
    // A few more on the new certificate, then the count.
    let seen = traffic.leaves.lock().unwrap().len();
    wasmgate_tests::until("handshakes after the renewal", DEADLINE, async || {
        match traffic.leaves.lock().unwrap().len() >= seen + 5 {
            true => Ok(()),
            false => Err("waiting".to_owned()),
        }
    })
    .await;
    let answered = traffic.stop_all_answered().await;
    assert!(answered > 20, "too little traffic: {answered}");
    eprintln!(
        "renewed within {:?} of traffic; {answered} requests answered across it",
        watching.elapsed().unwrap_or_default()
    );
    let renewed = site.expect(200, "GET", &path, None).await;
    assert_eq!(renewed["state"], "ready", "{renewed}");
    assert_ne!(renewed["not_after"], domain["not_after"], "{renewed}");
    assert_eq!(
        renewed["certificate_id"], domain["certificate_id"],
        "{renewed}"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_is_issued_by_acme_served_by_sni_renewed_and_removed() {
    let echo = EchoUpstream::start().await.unwrap();
    let acme = PebbleSite::new().unwrap();
    let site = Site::start(&acme);
    let gateway = provision(&site, echo.addr()).await;
    // Pebble validates HTTP-01 at the gateway's cleartext port, known only now.
    let pebble = acme
        .start(PebbleOptions {
            http_port: gateway.proxy.port(),
            validity_seconds: Some(VALIDITY_SECONDS),
            blocklist: vec![BLOCKED.to_owned()],
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let client = http1_client(&pebble);

    let id = post_domain(&site, &gateway.control_plane_id, DOMAIN).await;
    let path = ready_served_and_renewed(&site, &pebble, &client, &id, gateway.tls).await;

    // Refused by the ACME server: error with Pebble's reason, and no certificate served.
    let blocked = post_domain(&site, &gateway.control_plane_id, BLOCKED).await;
    let refused = settled(&site, &pebble, &blocked).await;
    assert_eq!(refused["state"], "error", "{refused}");
    let reason = refused["state_metadata"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("rejectedIdentifier"), "{refused}");
    assert_refused(connect(&client, gateway.tls, BLOCKED).await);

    // Deleted: the DELETE answers once the data plane has dropped the certificate.
    site.expect(204, "DELETE", &path, None).await;
    site.expect(404, "GET", &path, None).await;
    assert_refused(connect(&client, gateway.tls, DOMAIN).await);
}

/// The same domain on a stock Envoy 1.40 following a control plane over ADS (a self-managed
/// one: a serverless control plane's data planes are its cloud gateways only). Envoy's plain
/// listener answers HTTP-01, its TLS listener gets the certificate by SDS, and the renewal
/// reaches new handshakes without a failed request; once the domain is deleted, the
/// handshake is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_a_custom_domain_by_sds_and_its_renewal() {
    let echo = EchoUpstream::start().await.unwrap();
    let acme = PebbleSite::new().unwrap();
    let site = Site::start(&acme);
    let id = configure(&site, echo.addr(), "CLUSTER_TYPE_CONTROL_PLANE").await;
    let (listen, tls) = (wasmgate_tests::free_port(), wasmgate_tests::free_port());
    let bootstrap = site
        .expect(
            201,
            "POST",
            &format!("/v2/control-planes/{id}/envoy-bootstrap"),
            Some(&json!({
                "node_id": "envoy-shop",
                "listen": listen.to_string(),
                "tls_listen": tls.to_string(),
            })),
        )
        .await;
    let _envoy = Envoy::start_bootstrap(&bootstrap, 1).await.unwrap();
    wasmgate_tests::until("Envoy serving the service", DEADLINE, async || {
        let response = send(listen, Protocol::Http1, &Request::get("/"))
            .await
            .map_err(|e| e.to_string())?;
        match response.status {
            200 => Ok(()),
            status => Err(format!("{status}: {}", response.text())),
        }
    })
    .await;
    let pebble = acme
        .start(PebbleOptions {
            http_port: listen.port(),
            validity_seconds: Some(VALIDITY_SECONDS),
            blocklist: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let client = http1_client(&pebble);

    let domain = post_domain(&site, &id, DOMAIN).await;
    let path = ready_served_and_renewed(&site, &pebble, &client, &domain, tls).await;

    site.expect(204, "DELETE", &path, None).await;
    assert_refused(connect(&client, tls, DOMAIN).await);
}
