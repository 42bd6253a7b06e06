//! Where the gateway may connect upstream (`--upstream-deny`). A serverless platform runs its
//! tenants' gateways beside each other and beside its own services: a tenant's service
//! `http://127.0.0.1:<port>` or `http://169.254.169.254` must reach none of them. The address
//! is checked once connected, after DNS: a name that resolves, or rebinds, to a denied address
//! is refused as an IP literal is.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::BoxError;
use super::real_ip::Cidr;

/// What `private` stands for: this host, private networks (RFC 1918, 6598, 4193), link-local
/// (cloud metadata services answer there) and the unspecified addresses.
const PRIVATE: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// The networks no upstream connection may reach; none by default, as in Kong and Envoy.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    denied: Vec<Cidr>,
}

impl EgressPolicy {
    /// From `--upstream-deny` values: addresses, CIDRs, or `private`.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<EgressPolicy, String> {
        let mut denied = Vec::new();
        for value in values {
            let value = value.as_ref();
            if value == "private" {
                for network in PRIVATE {
                    denied.push(network.parse()?);
                }
            } else {
                denied.push(value.parse()?);
            }
        }
        Ok(EgressPolicy { denied })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.denied.iter().any(|network| network.contains(ip))
    }

    pub fn is_open(&self) -> bool {
        self.denied.is_empty()
    }
}

/// A connector that drops a connection whose peer the policy denies.
#[derive(Clone)]
pub struct Guarded<C> {
    inner: C,
    policy: Arc<EgressPolicy>,
}

impl<C> Guarded<C> {
    pub fn new(inner: C, policy: Arc<EgressPolicy>) -> Guarded<C> {
        Guarded { inner, policy }
    }
}

impl<C> tower_service::Service<Uri> for Guarded<C>
where
    C: tower_service::Service<Uri, Response = TokioIo<TcpStream>>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            if policy.is_open() {
                return Ok(io);
            }
            let peer = io.inner().peer_addr()?;
            if policy.allows(peer.ip()) {
                Ok(io)
            } else {
                Err(format!("{peer} is denied by --upstream-deny").into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_covers_this_host_private_networks_and_link_local() {
        let policy = EgressPolicy::parse(&["private"]).unwrap();
        for denied in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            // An IPv4 address written as IPv6 is the same host.
            "::ffff:127.0.0.1",
        ] {
            assert!(!policy.allows(denied.parse().unwrap()), "{denied}");
        }
        for allowed in ["93.184.216.34", "172.32.0.1", "2001:db8::1", "100.128.0.1"] {
            assert!(policy.allows(allowed.parse().unwrap()), "{allowed}");
        }
        assert!(EgressPolicy::default().allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn values_are_addresses_cidrs_or_private() {
        let policy = EgressPolicy::parse(&["203.0.113.0/24", "2001:db8::7"]).unwrap();
        assert!(!policy.allows("203.0.113.9".parse().unwrap()));
        assert!(!policy.allows("2001:db8::7".parse().unwrap()));
        assert!(policy.allows("127.0.0.1".parse().unwrap()));
        let error = EgressPolicy::parse(&["loopback"]).unwrap_err();
        assert!(error.contains("\"loopback\""), "{error}");
    }
}
