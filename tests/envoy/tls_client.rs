//! A test CA issuing certificates for a data plane's TLS listener, and a client that opens
//! TLS with a given SNI, says which certificate it was shown, and sends HTTP over it (shared by
//! `in_envoy`'s downstream_tls and `in_control_plane`'s xds).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wasmgate_tests::Response;

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM, as a `model::Certificate` carries them.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// The leaf's DER, to compare with what a handshake presented.
    pub fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes())
            .expect("a PEM certificate")
            .to_vec()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// A leaf for `names` (DNS SANs, `*.` wildcards allowed), each call a new key.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A TLS connection that completed its handshake.
pub struct Handshake {
    pub stream: TlsStream<TcpStream>,
    /// The leaf the server presented, DER.
    pub leaf: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
}

/// Opens TLS to `addr` with `sni` as the server name (an IP address sends no SNI), trusting
/// `ca_pem` only and offering `alpn`.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<Handshake, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("{sni}: {e}"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr} for {sni}: {e}"))?;
    let (_, session) = stream.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.to_vec())
        .ok_or("the server presented no certificate")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Ok(Handshake { stream, leaf, alpn })
}

/// An HTTP connection over TLS: HTTP/2 when ALPN chose it, else HTTP/1.1.
pub enum Client {
    Http1(hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>),
}

impl Client {
    pub async fn over(handshake: Handshake) -> Result<Client, String> {
        let h2 = handshake.alpn.as_deref() == Some(b"h2");
        let io = TokioIo::new(handshake.stream);
        if h2 {
            let (send, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Ok(Client::Http2(send))
        } else {
            let (send, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Ok(Client::Http1(send))
        }
    }

    /// `method path` for `host`, with no body.
    pub async fn send(&mut self, method: &str, host: &str, path: &str) -> Result<Response, String> {
        let mut builder = hyper::Request::builder().method(method);
        builder = match self {
            // HTTP/2 carries the host in `:authority`, from an absolute URI.
            Client::Http2(_) => builder.uri(format!("https://{host}{path}")),
            Client::Http1(_) => builder.uri(path).header("host", host),
        };
        let request = builder
            .body(Empty::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let response = match self {
            Client::Http1(send) => {
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(request).await
            }
            Client::Http2(send) => {
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(request).await
            }
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: the body: {e}"))?
            .to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            body_sent: 0,
        })
    }
}

/// One request on a new TLS connection with `sni`, which is also its Host; the certificate
/// presented and the answer.
pub async fn request(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
) -> Result<(Vec<u8>, Response), String> {
    let handshake = handshake(addr, sni, ca_pem, &[b"h2", b"http/1.1"]).await?;
    let leaf = handshake.leaf.clone();
    let response = Client::over(handshake)
        .await?
        .send(method, sni, path)
        .await?;
    Ok((leaf, response))
}
