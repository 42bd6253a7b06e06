//! Upstream connections: per worker, a pooled client per kind of upstream (HTTP/1.1 or
//! HTTP/2, certificate checked or not, connect timeout), and Kong's timeouts.
//!
//! `https`/`grpcs` services use rustls. Like Kong, the upstream certificate is only verified
//! when the service says `tls_verify: true` (against the Web PKI roots).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::body::ProxyBody;
use super::errors::ProxyError;
use model::Service;

type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout_ms: u64,
    http2: bool,
    tls_verify: bool,
}

/// This worker's connection pools.
#[derive(Default)]
pub struct Upstreams {
    clients: RefCell<HashMap<PoolKey, UpstreamClient>>,
}

/// The upstream URI: the service's scheme and authority with the computed path and the
/// client's query.
pub fn uri(service: &Service, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let host = if service.host.contains(':') && !service.host.starts_with('[') {
        format!("[{}]", service.host)
    } else {
        service.host.clone()
    };
    let scheme = if service.protocol.is_tls() {
        "https"
    } else {
        "http"
    };
    let text = match query {
        Some(q) => format!("{scheme}://{host}:{}{path}?{q}", service.port),
        None => format!("{scheme}://{host}:{}{path}", service.port),
    };
    text.parse()
        .map_err(|e| ProxyError::BadRequest(format!("upstream URI {text}: {e}")))
}

/// Accepts any upstream certificate (Kong's default, `tls_verify: false`); signatures are
/// still checked so the handshake is real.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(verify: bool) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    Ok(if verify {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    })
}

impl Upstreams {
    fn client(&self, service: &Service) -> Result<UpstreamClient, ProxyError> {
        let key = PoolKey {
            connect_timeout_ms: service.connect_timeout_ms,
            http2: service.protocol.is_http2(),
            tls_verify: service.tls_verify,
        };
        if let Some(client) = self.clients.borrow().get(&key) {
            return Ok(client.clone());
        }
        let tls = tls_config(key.tls_verify)
            .map_err(|e| ProxyError::BadGateway(format!("TLS client: {e}")))?;
        let client = {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.enforce_http(false);
            http.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .http2_only(key.http2)
                .build(connector)
        };
        self.clients.borrow_mut().insert(key, client.clone());
        Ok(client)
    }

    /// Sends the request; waits at most the service's read timeout for the response head.
    pub async fn send(
        &self,
        service: &Service,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let client = self.client(service)?;
        let read_timeout = Duration::from_millis(service.read_timeout_ms);
        match tokio::time::timeout(read_timeout, client.request(request)).await {
            Err(_) => Err(ProxyError::Timeout(format!(
                "no response within {read_timeout:?}"
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error)),
        }
    }
}

fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut detail = error.to_string();
    let mut timed_out = false;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        // The connector's own deadline (`connect_timeout`) is tokio's `Elapsed`; the
        // system's is an I/O error.
        timed_out |= cause.is::<tokio::time::error::Elapsed>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        source = cause.source();
    }
    if error.is_connect() {
        if timed_out {
            return ProxyError::Timeout(detail);
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("dns")
            || lower.contains("resolve")
            || lower.contains("lookup")
            || lower.contains("name or service")
        {
            return ProxyError::Unavailable(detail);
        }
    }
    ProxyError::BadGateway(detail)
}
