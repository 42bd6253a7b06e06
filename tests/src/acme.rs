//! A real ACME server for tests: Debian's `pebble` (Let's Encrypt's test CA, RFC 8555), with
//! `pebble-challtestsrv` as its DNS server, which answers every `A` query with 127.0.0.1: a
//! test's domains (`api.shop.example.test`) resolve to loopback for Pebble's HTTP-01
//! validation, and nothing else on the machine is touched. Both processes run on free loopback
//! ports and are killed when the [`Pebble`] is dropped.
//!
//! Pebble's HTTP-01 port is fixed when it starts, while a provisioned gateway's proxy port is
//! chosen by the control plane. So a test first takes a [`PebbleSite`] (its ACME address and
//! the CA of its HTTPS certificate, for the control plane's `--acme-directory` and
//! `--acme-ca-file`), then learns the data plane's port, then [`PebbleSite::start`]s Pebble.
//!
//! Pebble makes a new issuing root at every start; [`Pebble::root_pem`] is it, read from the
//! management interface, for tests to verify served certificates against (trusted in tests
//! only).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long the two processes get to answer after starting: they do in milliseconds; the bound
/// is against a hang.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// What the Pebble of a test is told.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// The port Pebble's HTTP-01 validation connects to on 127.0.0.1: the data plane's
    /// cleartext proxy port.
    pub http_port: u16,
    /// The lifetime of the certificates it issues (its `certificateValidityPeriod`); `None`:
    /// Pebble's default, 5 years.
    pub validity_seconds: Option<u64>,
    /// Domains it refuses to issue for (its `domainBlocklist`: the name and its subdomains),
    /// with `rejectedIdentifier`.
    pub blocklist: Vec<String>,
}

/// Pebble's addresses and HTTPS certificate, chosen and written before it starts.
pub struct PebbleSite {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    management: SocketAddr,
    /// The CA that signed Pebble's HTTPS certificate: what an ACME client must trust.
    https_ca: CertificateDer<'static>,
}

impl PebbleSite {
    /// Picks free loopback ports and writes Pebble's HTTPS certificate (for `127.0.0.1` and
    /// `localhost`, signed by a CA made here, whose certificate is [`ca_file`](Self::ca_file)).
    pub fn new() -> Result<PebbleSite, String> {
        let dir = tempfile::Builder::new()
            .prefix("wasmgate-pebble-")
            .tempdir()
            .map_err(|e| format!("a temporary folder for pebble: {e}"))?;
        let ca_key = rcgen::KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("CA parameters: {e}"))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "wasmgate tests: pebble's HTTPS CA",
        );
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)
            .map_err(|e| format!("CA certificate: {e}"))?;
        let key = rcgen::KeyPair::generate().map_err(|e| format!("HTTPS key: {e}"))?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .and_then(|params| params.signed_by(&key, &ca))
            .map_err(|e| format!("HTTPS certificate: {e}"))?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| format!("{}: {e}", dir.path().join(name).display()))
        };
        write("https.crt", &cert.pem())?;
        write("https.key", &key.serialize_pem())?;
        write("https-ca.crt", &ca.pem())?;
        Ok(PebbleSite {
            listen: crate::free_port(),
            management: crate::free_port(),
            https_ca: ca.der().clone(),
            dir,
        })
    }

    /// The ACME directory, for the control plane's `--acme-directory`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The CA of Pebble's HTTPS certificate (PEM), for the control plane's `--acme-ca-file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("https-ca.crt")
    }

    /// Starts `pebble-challtestsrv` (DNS only), then `pebble` validating on
    /// `options.http_port`; returns once Pebble's directory and root answer.
    pub fn start(self, options: PebbleOptions) -> Result<Pebble, String> {
        let dns = free_udp_port()?;
        let dns_management = crate::free_port();
        let challtestsrv = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &dns.to_string()])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &dns_management.to_string()]),
            &self.dir.path().join("challtestsrv.log"),
        )?;
        let mut pebble = Pebble {
            site: self,
            dns,
            challtestsrv,
            pebble: None,
            root_pem: String::new(),
        };
        pebble.until_ready("pebble-challtestsrv's DNS", |pebble| {
            match pebble.resolve("ready.example.test")?[..] {
                [Ipv4Addr::LOCALHOST] => Ok(()),
                ref other => Err(format!("ready.example.test resolved to {other:?}")),
            }
        })?;

        let dir = pebble.site.dir.path();
        let mut config = serde_json::json!({
            "listenAddress": pebble.site.listen.to_string(),
            "managementListenAddress": pebble.site.management.to_string(),
            "certificate": dir.join("https.crt"),
            "privateKey": dir.join("https.key"),
            "httpPort": options.http_port,
            // TLS-ALPN-01 is not used; a port nothing listens on.
            "tlsPort": crate::free_port().port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "domainBlocklist": options.blocklist,
        });
        if let Some(seconds) = options.validity_seconds {
            config["certificateValidityPeriod"] = seconds.into();
        }
        let config_file = dir.join("pebble.json");
        std::fs::write(
            &config_file,
            serde_json::json!({ "pebble": config }).to_string(),
        )
        .map_err(|e| format!("{}: {e}", config_file.display()))?;
        pebble.pebble = Some(spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &dns.to_string()])
                // Validate at once (not after 0–15 s), accept every good nonce (an ACME client
                // retries badNonce, but the test's run would vary), and make a new
                // authorization for every order (a renewal is validated again).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            &dir.join("pebble.log"),
        )?);
        pebble.until_ready("pebble's ACME directory", |pebble| {
            let (status, body) = pebble.https_get(pebble.site.listen, "/dir")?;
            match status == 200 && body.contains("newOrder") {
                true => Ok(()),
                false => Err(format!("{status}: {body}")),
            }
        })?;
        let (status, root) = pebble.https_get(pebble.site.management, "/roots/0")?;
        if status != 200 || CertificateDer::from_pem_slice(root.as_bytes()).is_err() {
            return Err(format!("pebble's /roots/0 answered {status}: {root}"));
        }
        pebble.root_pem = root;
        Ok(pebble)
    }
}

/// `pebble` and `pebble-challtestsrv`, running; both are killed on drop.
pub struct Pebble {
    site: PebbleSite,
    dns: SocketAddr,
    challtestsrv: Child,
    pebble: Option<Child>,
    root_pem: String,
}

impl Pebble {
    /// A [`PebbleSite`] started at once: for a test whose HTTP-01 port is known beforehand.
    pub fn start(options: PebbleOptions) -> Result<Pebble, String> {
        PebbleSite::new()?.start(options)
    }

    /// See [`PebbleSite::directory_url`].
    pub fn directory_url(&self) -> String {
        self.site.directory_url()
    }

    /// See [`PebbleSite::ca_file`].
    pub fn ca_file(&self) -> PathBuf {
        self.site.ca_file()
    }

    /// The root this Pebble issues under (PEM), made when it started.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A TLS client that trusts Pebble's root and nothing else, offering h2 and http/1.1. It
    /// never resumes a session: a resumed handshake verifies nothing and reports the
    /// certificate of the session's first handshake, so a test would not see a renewal.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let root = CertificateDer::from_pem_slice(self.root_pem.as_bytes())
            .map_err(|e| format!("pebble's root: {e}"))?;
        let mut config = client_config(root, &[b"h2", b"http/1.1"])?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// What `pebble-challtestsrv` answers to an `A` query for `name`: the addresses Pebble
    /// validates `name` at.
    pub fn resolve(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        resolve(self.dns, name)
    }

    /// Pebble's output so far (its requests, validations and refusals), for a failing test's
    /// message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.site.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Calls `check` every 20 ms until it succeeds; an error with the last failure and the
    /// processes' output once a process has exited or [`READY_WITHIN`] has passed.
    fn until_ready(
        &mut self,
        what: &str,
        check: impl Fn(&Pebble) -> Result<(), String>,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let last = match check(self) {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            let exited = [Some(&mut self.challtestsrv), self.pebble.as_mut()]
                .into_iter()
                .flatten()
                .find_map(|child| child.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > READY_WITHIN {
                let output = |name| {
                    std::fs::read_to_string(self.site.dir.path().join(name)).unwrap_or_default()
                };
                return Err(format!(
                    "{what} not ready ({}): {last}\n--- pebble-challtestsrv:\n{}\n--- pebble:\n{}",
                    exited.map_or("still running".to_owned(), |status| status.to_string()),
                    output("challtestsrv.log"),
                    output("pebble.log"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` over HTTPS from Pebble at `addr`, trusting its HTTPS CA; the status and
    /// body.
    fn https_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        let config = client_config(self.site.https_ca.clone(), &[b"http/1.1"])?;
        let name = ServerName::from(addr.ip());
        let connection = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .map_err(|e| format!("GET https://{addr}{path}: {e}"))?;
        let mut answer = Vec::new();
        match tls.read_to_end(&mut answer) {
            Ok(_) => {}
            // Closed without close_notify after a whole answer (`connection: close`).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
            Err(e) => return Err(format!("GET https://{addr}{path}: {e}")),
        }
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("GET https://{addr}{path}: no answer head: {answer}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| format!("GET https://{addr}{path}: {head}"))?;
        Ok((status, body.to_owned()))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [Some(&mut self.challtestsrv), self.pebble.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `command` with its output in `log`; a missing program names its Debian package.
fn spawn(command: &mut Command, log: &Path) -> Result<Child, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{program} is not installed: `apt-get install pebble` (Debian's package has \
                 pebble and pebble-challtestsrv)"
            ),
            _ => format!("starting {program}: {e}"),
        })
}

fn free_udp_port() -> Result<SocketAddr, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map_err(|e| format!("no free loopback UDP port: {e}"))
}

fn client_config(
    root: CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).map_err(|e| format!("a root: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The `A` records a DNS server at `server` answers for `name`, over UDP (RFC 1035).
fn resolve(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    const ID: [u8; 2] = [0x57, 0x47];
    let mut query = Vec::with_capacity(18 + name.len());
    // Header: the id, recursion desired, one question.
    query.extend_from_slice(&ID);
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    // The root, then QTYPE A, QCLASS IN.
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&query, server)
        .map_err(|e| format!("DNS query to {server}: {e}"))?;
    let mut answer = [0u8; 512];
    let len = socket
        .recv(&mut answer)
        .map_err(|e| format!("DNS answer from {server}: {e}"))?;
    let answer = &answer[..len];
    let malformed = || format!("a malformed DNS answer from {server}: {answer:?}");
    if answer.len() < 12 || answer[..2] != ID {
        return Err(malformed());
    }
    let rcode = answer[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("DNS answer for {name}: rcode {rcode}"));
    }
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    // The question comes back as asked.
    let mut at = query.len();
    let mut addresses = Vec::new();
    for _ in 0..count {
        at = skip_name(answer, at).ok_or_else(malformed)?;
        let fixed = answer.get(at..at + 10).ok_or_else(malformed)?;
        let (kind, len) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            usize::from(u16::from_be_bytes([fixed[8], fixed[9]])),
        );
        let data = answer.get(at + 10..at + 10 + len).ok_or_else(malformed)?;
        if let (1, [a, b, c, d]) = (kind, data) {
            addresses.push(Ipv4Addr::new(*a, *b, *c, *d));
        }
        at += 10 + len;
    }
    Ok(addresses)
}

/// Where the name at `at` of a DNS message ends: after its labels and root, or after a
/// compression pointer.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            len if len & 0xc0 == 0xc0 => return Some(at + 2),
            len => at += 1 + usize::from(len),
        }
    }
}
