//! Konnect's custom-domains API without an ACME server: certificates from the control plane's
//! own CA (the embedded default), served by SNI on a provisioned gateway's TLS listener and
//! verified against that CA; the API's refusals; deletion taking the certificate off the
//! data plane; a restart resuming a domain left `initializing`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use wasmgate_tests::control_plane::{call_api, processes_under, signal, TestControlPlane, TOKEN};
use wasmgate_tests::{EchoReport, EchoUpstream};

const DOMAINS: &str = "/v2/cloud-gateways/custom-domains";
/// Against a hang only.
const DEADLINE: Duration = Duration::from_secs(90);

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn address(url: &Value) -> SocketAddr {
    let url = url.as_str().unwrap_or_else(|| panic!("not a URL: {url}"));
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Calls the API at `api`, insisting on `status`; the JSON body.
async fn expect(
    api: SocketAddr,
    status: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Value {
    let response = call_api(api, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(
        response.status,
        status,
        "{method} {path}: {}",
        response.text()
    );
    response.json().unwrap_or(Value::Null)
}

async fn control_plane(api: SocketAddr, name: &str, cluster_type: &str) -> String {
    let created = expect(
        api,
        201,
        "POST",
        "/v2/control-planes",
        Some(&json!({ "name": name, "cluster_type": cluster_type })),
    )
    .await;
    created["id"].as_str().expect("id").to_owned()
}

/// A serverless control plane proxying every path to `echo` through a request-transformer
/// that adds `x-through: plugins`, and its cloud gateway: the control plane's id and the
/// gateway's TLS address.
async fn provision(api: SocketAddr, echo: SocketAddr) -> (String, SocketAddr) {
    let id = control_plane(api, "shop", "CLUSTER_TYPE_SERVERLESS_V1").await;
    let service = format!("/v2/control-planes/{id}/core-entities/services");
    let url = format!("http://{echo}");
    expect(
        api,
        201,
        "POST",
        &service,
        Some(&json!({ "name": "shop", "url": url })),
    )
    .await;
    let route = json!({ "name": "all", "paths": ["/"] });
    expect(
        api,
        201,
        "POST",
        &format!("{service}/shop/routes"),
        Some(&route),
    )
    .await;
    expect(
        api,
        201,
        "POST",
        &format!("{service}/shop/plugins"),
        Some(&json!({
            "name": "request-transformer",
            "config": { "add": { "headers": ["x-through:plugins"] } },
        })),
    )
    .await;
    let configuration = expect(
        api,
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
    let tls = address(&group["https_proxy_url"]);
    assert_eq!(
        group["https_proxy_urls"],
        json!([format!("https://{tls}")]),
        "{group}"
    );
    (id, tls)
}

async fn post_domain(api: SocketAddr, control_plane_id: &str, domain: &str) -> Value {
    expect(
        api,
        201,
        "POST",
        DOMAINS,
        Some(&json!({
            "control_plane_id": control_plane_id,
            "control_plane_geo": "us",
            "domain": domain,
        })),
    )
    .await
}

/// Polls the domain until it is `ready`; fails on `error`.
async fn ready(api: SocketAddr, id: &str) -> Value {
    let path = format!("{DOMAINS}/{id}");
    wasmgate_tests::until(&format!("{path} ready"), DEADLINE, async || {
        let domain = expect(api, 200, "GET", &path, None).await;
        match domain["state"].as_str() {
            Some("ready") => Ok(domain),
            Some("error") => panic!("{path} failed: {domain}"),
            _ => Err(domain.to_string()),
        }
    })
    .await
}

fn client_trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("the CA's PEM")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// `GET /hello` for `sni` over TLS to `addr`, verifying the certificate for `sni`: what the
/// echo saw, or why not (the handshake refused, a status other than 200).
async fn get_over_tls(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> Result<EchoReport, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake for {sni}: {e}"))?;
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1 over TLS: {e}"))?;
    tokio::spawn(connection);
    let request = http::Request::get("/hello")
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("GET /hello: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the body: {e}"))?
        .to_bytes();
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not the echo's report: {e}"))
}

/// Until a request for `sni` over TLS reaches the echo through the plugins.
async fn served(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, sni: &str) {
    wasmgate_tests::until(
        &format!("{sni} served on {addr}"),
        DEADLINE,
        async || match get_over_tls(config, addr, sni).await {
            Ok(seen) if seen.header("x-through") == Some("plugins") => Ok(()),
            Ok(seen) => Err(format!("not through the plugins: {:?}", seen.headers)),
            Err(e) => Err(e),
        },
    )
    .await;
}

/// POST → `initializing` → `ready` from the control plane's CA (labelled as the embedded
/// default); a TLS client trusting that CA alone reaches the echo through the plugins on the
/// provisioned gateway's TLS listener with the domain as SNI. A domain left `initializing`
/// by a stopped control plane is issued after its restart, and the other keeps its
/// certificate and renewal time. DELETE takes the certificate off the data plane: the
/// handshake for that name fails, the other domain is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_from_the_control_planes_ca_is_served_by_sni_resumed_and_removed() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let mut cp = TestControlPlane::start(dir.path());
    let api = cp.endpoints().api;
    let (id, tls) = provision(api, echo.addr()).await;

    let created = post_domain(api, &id, "Shop.Example.TEST").await;
    assert_eq!(created["domain"], "shop.example.test");
    assert_eq!(created["state"], "initializing", "{created}");
    assert_eq!(created["state_metadata"], json!({}));
    assert_eq!(created["control_plane_id"], id.as_str());
    assert_eq!(
        created["certificate_authority"]["kind"], "control-plane-ca",
        "{created}"
    );
    let domain_id = created["id"].as_str().expect("id").to_owned();

    let domain = ready(api, &domain_id).await;
    assert_eq!(domain["certificate_id"], created["certificate_id"]);
    assert!(domain["entity_version"].as_i64() > created["entity_version"].as_i64());
    assert!(domain["not_after"].is_string() && domain["renew_at"].is_string());
    let ca_pem = domain["certificate_authority"]["ca_cert"]
        .as_str()
        .unwrap_or_else(|| panic!("the control plane CA's certificate: {domain}"))
        .to_owned();
    let client = client_trusting(&ca_pem);
    served(&client, tls, "shop.example.test").await;
    let status = cp
        .expect(
            200,
            "GET",
            &format!("{DOMAINS}/{domain_id}/online-status"),
            None,
        )
        .await;
    assert_eq!(status, json!({ "cname": "unverified", "ssl": "verified" }));
    let listed = cp
        .expect(
            200,
            "GET",
            &format!("{DOMAINS}?filter[control_plane_id]={id}&filter[state]=ready"),
            None,
        )
        .await;
    assert_eq!(listed["meta"]["page"]["total"], 1, "{listed}");
    assert_eq!(listed["data"][0], domain);
    // The API's views of the control plane never show the key.
    let export = cp
        .call(
            "GET",
            &format!("/v2/control-planes/{id}/declarative-config"),
            None,
        )
        .await;
    assert_eq!(export.status, 200);
    assert!(
        !export.text().contains("PRIVATE KEY") && !export.text().contains("certificates"),
        "{}",
        export.text()
    );

    // A domain left initializing when the control plane stopped (as after a crash mid
    // issuance) is issued when it starts again.
    cp.stop();
    {
        let db = rusqlite::Connection::open(dir.path().join("control-plane.db")).expect("db");
        db.execute(
            "INSERT INTO custom_domains (id, control_plane_id, control_plane_geo, domain,
                 certificate_id, sni_id, state, entity_version, created_at, updated_at)
             VALUES ('0d1c7a52-0000-4000-8000-000000000001', ?1, 'us', 'www.example.test',
                 '0d1c7a52-0000-4000-8000-000000000002', '0d1c7a52-0000-4000-8000-000000000003',
                 'initializing', 1, 1, 1)",
            [&id],
        )
        .expect("a domain left initializing");
    }
    cp.start_again();
    let resumed = ready(api, "0d1c7a52-0000-4000-8000-000000000001").await;
    assert_eq!(resumed["certificate_authority"]["kind"], "control-plane-ca");
    served(&client, tls, "www.example.test").await;
    let kept = cp
        .expect(200, "GET", &format!("{DOMAINS}/{domain_id}"), None)
        .await;
    assert_eq!(
        kept, domain,
        "the first domain's certificate and renewal time are kept"
    );
    served(&client, tls, "shop.example.test").await;

    let deleted = cp
        .call("DELETE", &format!("{DOMAINS}/{domain_id}"), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    cp.expect(404, "GET", &format!("{DOMAINS}/{domain_id}"), None)
        .await;
    cp.expect(404, "DELETE", &format!("{DOMAINS}/{domain_id}"), None)
        .await;
    wasmgate_tests::until(
        "the deleted domain's handshake refused",
        DEADLINE,
        async || match get_over_tls(&client, tls, "shop.example.test").await {
            Err(e) if e.starts_with("handshake") => Ok(()),
            other => Err(format!("{:?}", other.map(|seen| seen.headers))),
        },
    )
    .await;
    served(&client, tls, "www.example.test").await;
}

/// A configuration stored before gateways had a TLS listener (no `tls_port`) gets one when
/// the control plane starts, its running gateway is started again with it, and a custom
/// domain is served there without a new `PUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_stored_without_a_tls_port_gets_one_at_start() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let mut cp = TestControlPlane::start(dir.path());
    let api = cp.endpoints().api;
    let (id, _) = provision(api, echo.addr()).await;
    cp.stop();
    {
        let db = rusqlite::Connection::open(dir.path().join("control-plane.db")).expect("db");
        let changed = db
            .execute(
                "UPDATE cloud_gateways
                 SET doc = json_remove(doc, '$.dataplane_groups[0].tls_port')",
                [],
            )
            .expect("a configuration from before TLS ports");
        assert_eq!(changed, 1);
    }
    cp.start_again();
    let configurations = expect(api, 200, "GET", "/v3/cloud-gateways/configurations", None).await;
    let tls = address(&configurations["data"][0]["dataplane_groups"][0]["https_proxy_url"]);
    let created = post_domain(api, &id, "upgraded.example.test").await;
    let domain = ready(api, created["id"].as_str().expect("id")).await;
    let client = client_trusting(
        domain["certificate_authority"]["ca_cert"]
            .as_str()
            .expect("ca_cert"),
    );
    served(&client, tls, "upgraded.example.test").await;
}

/// Each refusal names its field, Konnect's way: an invalid domain name (an IP address, a
/// wildcard, a trailing dot, too long, not a DNS name), an unknown control plane, a domain
/// another control plane (or this one) already has (409); unknown ids are 404s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_are_refused_by_name() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let api = cp.endpoints().api;
    let first = control_plane(api, "first", "CLUSTER_TYPE_SERVERLESS").await;
    let second = control_plane(api, "second", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let body = |cp: &str, domain: &str| json!({ "control_plane_id": cp, "control_plane_geo": "us", "domain": domain });
    let long = format!("{}.example.test", vec!["a".repeat(60); 4].join("."));
    for bad in [
        "10.1.2.3",
        "::1",
        "*.example.test",
        "shop.example.test.",
        "localhost",
        "shop_1.example.test",
        "shop.example.test:8443",
        long.as_str(),
    ] {
        let refused = cp
            .expect(400, "POST", DOMAINS, Some(&body(&first, bad)))
            .await;
        let fields: Vec<&str> = refused["invalid_parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{bad}: {refused}"))
            .iter()
            .filter_map(|p| p["field"].as_str())
            .collect();
        assert_eq!(fields, ["domain"], "{bad}: {refused}");
    }
    let unknown = cp
        .expect(
            400,
            "POST",
            DOMAINS,
            Some(&body(
                "0b9b6b53-0000-4000-8000-000000000000",
                "a.example.test",
            )),
        )
        .await;
    assert_eq!(
        unknown["invalid_parameters"][0]["field"], "control_plane_id",
        "{unknown}"
    );
    let created = post_domain(api, &first, "API.example.test").await;
    assert_eq!(created["domain"], "api.example.test");
    for (owner, whose) in [
        (&second, "another control plane"),
        (&first, "this control plane"),
    ] {
        let conflict = cp
            .expect(409, "POST", DOMAINS, Some(&body(owner, "api.example.test")))
            .await;
        assert!(
            conflict["detail"]
                .as_str()
                .is_some_and(|d| d.contains(whose)),
            "{conflict}"
        );
    }
    // A self-managed control plane takes custom domains too (its Envoys get them over SDS).
    post_domain(api, &second, "other.example.test").await;
    let all = cp.expect(200, "GET", DOMAINS, None).await;
    assert_eq!(all["meta"]["page"]["total"], 2, "{all}");
    let page = cp
        .expect(
            200,
            "GET",
            &format!("{DOMAINS}?page[size]=1&page[number]=2"),
            None,
        )
        .await;
    assert_eq!(page["data"][0]["domain"], "other.example.test", "{page}");
    cp.expect(400, "GET", &format!("{DOMAINS}?page[size]=0"), None)
        .await;
    for method in ["GET", "DELETE"] {
        cp.expect(404, method, &format!("{DOMAINS}/nope"), None)
            .await;
    }
    cp.expect(404, "GET", &format!("{DOMAINS}/nope/online-status"), None)
        .await;
    // Its control plane deleted, a domain goes with it.
    cp.expect(204, "DELETE", &format!("/v2/control-planes/{second}"), None)
        .await;
    let left = cp.expect(200, "GET", DOMAINS, None).await;
    assert_eq!(left["meta"]["page"]["total"], 1, "{left}");
}

/// A control plane on `data_dir` (in this process) whose certificates come from `certificates`.
fn start_with(
    data_dir: &std::path::Path,
    certificates: control_plane::acme::Settings,
) -> control_plane::ControlPlane {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    control_plane::ControlPlane::start(control_plane::Options {
        listen: any,
        cluster_listen: any,
        xds_listen: any,
        data_dir: data_dir.to_path_buf(),
        token: Some(TOKEN.to_owned()),
        ping_interval: Duration::from_secs(10),
        modules_dir: wasmgate_tests::paths::wasm_dir(),
        allow_private_upstreams: true,
        certificates,
        ..control_plane::Options::default()
    })
    .unwrap_or_else(|e| panic!("starting the control plane: {e}"))
}

/// An ACME server that does not answer is not a refusal: the domain stays `initializing`
/// with the attempt's reason and is tried again later, and nothing reaches the data planes'
/// configuration meanwhile (no certificate, no challenge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_acme_server_is_retried_while_initializing() {
    let dir = dir();
    let closed = wasmgate_tests::free_port();
    let directory = format!("https://{closed}/dir");
    let running = start_with(
        dir.path(),
        control_plane::acme::Settings {
            acme: Some(control_plane::acme::AcmeSettings {
                directory: directory.clone(),
                ca_file: None,
                contact: Vec::new(),
            }),
            ..control_plane::acme::Settings::default()
        },
    );
    let api = running.endpoints().api;
    let id = control_plane(api, "self-managed", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let created = post_domain(api, &id, "retry.example.test").await;
    assert_eq!(
        created["certificate_authority"],
        json!({ "kind": "acme", "acme_directory": directory })
    );
    let path = format!("{DOMAINS}/{}", created["id"].as_str().expect("id"));
    let retrying = wasmgate_tests::until("a failed attempt", DEADLINE, async || {
        let domain = expect(api, 200, "GET", &path, None).await;
        match domain["state_metadata"]["reason"].as_str() {
            Some(reason) if reason.starts_with("attempt 1 of 5 failed") => Ok(domain),
            _ => Err(domain.to_string()),
        }
    })
    .await;
    assert_eq!(retrying["state"], "initializing", "{retrying}");
    assert_eq!(retrying["state_metadata"]["reported_status"], "ERROR");
    assert_eq!(retrying["not_after"], Value::Null);
    let pushed = running
        .state()
        .hub
        .current(&id)
        .expect("the control plane's version");
    assert!(
        !pushed.text.contains("certificates") && !pushed.text.contains("acme_challenges"),
        "{}",
        pushed.text
    );
    running.shutdown();
}

/// A certificate renewed two thirds into its life (the control plane's CA issuing for 12 s,
/// valid from 4 s before): the same certificate id, a later `not_after`, still `ready`, and
/// the domain served by new handshakes throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_in_place_two_thirds_into_its_life() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let running = start_with(
        dir.path(),
        control_plane::acme::Settings {
            acme: None,
            ca_validity: Duration::from_secs(12),
        },
    );
    let api = running.endpoints().api;
    let (id, tls) = provision(api, echo.addr()).await;
    let domain = post_domain(api, &id, "renew.example.test").await;
    let path = format!("{DOMAINS}/{}", domain["id"].as_str().expect("id"));
    let first = ready(api, domain["id"].as_str().expect("id")).await;
    let client = client_trusting(
        first["certificate_authority"]["ca_cert"]
            .as_str()
            .expect("ca_cert"),
    );
    served(&client, tls, "renew.example.test").await;
    let renewed = wasmgate_tests::until("a renewal", DEADLINE, async || {
        let domain = expect(api, 200, "GET", &path, None).await;
        if domain["not_after"] != first["not_after"] {
            Ok(domain)
        } else {
            Err(domain.to_string())
        }
    })
    .await;
    assert_eq!(renewed["state"], "ready", "{renewed}");
    assert_eq!(renewed["state_metadata"], json!({}), "{renewed}");
    assert_eq!(renewed["certificate_id"], first["certificate_id"]);
    assert!(renewed["not_after"].as_str() > first["not_after"].as_str());
    assert!(renewed["entity_version"].as_i64() > first["entity_version"].as_i64());
    served(&client, tls, "renew.example.test").await;
    running.shutdown();
    for pid in processes_under(dir.path()) {
        signal(pid, "-KILL");
    }
}
