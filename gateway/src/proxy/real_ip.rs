//! The client's address behind trusted proxies: Kong's `trusted_ips`, `real_ip_header` and
//! `real_ip_recursive` (nginx's realip module: `set_real_ip_from`, `real_ip_header`,
//! `real_ip_recursive`).
//!
//! Only a peer in `trusted_ips` may name the client. Its `real_ip_header` is read from the
//! right: the last address, or with `real_ip_recursive` the last one that is not itself a
//! trusted proxy. Anything unreadable leaves the last address read (at first, the peer's).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName};

/// An address block of `trusted_ips`: one address, or a CIDR (`10.0.0.0/8`, `::/0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let invalid = |why: &str| format!("{text:?} {why}");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| invalid("is not an IP address or CIDR"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| invalid(&format!("has a prefix length outside 0-{bits}")))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Written in either family, an IPv4 client on a dual-stack socket is the same client.
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), self.prefix, 128) == masked(ip.into(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The `prefix` leading bits of a `bits`-bit address.
fn masked(address: u128, prefix: u8, bits: u32) -> u128 {
    let host_bits = bits - u32::from(prefix);
    address.checked_shr(host_bits).unwrap_or(0)
}

/// Kong's `trusted_ips`, `real_ip_header` and `real_ip_recursive`; by default (as in Kong) no
/// proxy is trusted, so every client is its peer.
#[derive(Clone, Debug)]
pub struct RealIp {
    pub trusted_ips: Vec<Cidr>,
    pub header: HeaderName,
    pub recursive: bool,
}

impl Default for RealIp {
    fn default() -> Self {
        RealIp {
            trusted_ips: Vec::new(),
            header: HeaderName::from_static("x-real-ip"),
            recursive: false,
        }
    }
}

impl RealIp {
    /// Whether a proxy at `ip` is trusted to name the client and the forwarded scheme, host,
    /// port and path.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_ips.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client of a request from `peer`: the peer itself unless it is trusted and its
    /// `real_ip_header` names an address. An address without a port gets port 0, as in Envoy
    /// and nginx.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        // nginx reads every X-Forwarded-For line as one list, and the first line of any other
        // header.
        let lines: Vec<&[u8]> = if self.header == "x-forwarded-for" {
            headers
                .get_all(&self.header)
                .iter()
                .map(|v| v.as_bytes())
                .collect()
        } else {
            headers
                .get(&self.header)
                .map(|v| v.as_bytes())
                .into_iter()
                .collect()
        };
        let mut client = peer;
        let addresses = lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|element| !element.is_empty());
        for (n, element) in addresses.enumerate() {
            // Past the last address, only recursively and only through trusted hops: the
            // first untrusted one is the client.
            if n > 0 && (!self.recursive || !self.trusts(client.ip())) {
                break;
            }
            match parse_address(element) {
                Some(address) => client = address,
                None => break,
            }
        }
        client
    }
}

/// nginx's `ngx_parse_addr_port`: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_address(element: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(element).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address);
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    Some(SocketAddr::new(bracketed.parse().ok()?, 0))
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderMap, HeaderName, HeaderValue};

    use super::*;

    fn real_ip(trusted: &[&str], header: &str, recursive: bool) -> RealIp {
        RealIp {
            trusted_ips: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            recursive,
        }
    }

    fn client(real_ip: &RealIp, peer: &str, lines: &[(&str, &[u8])]) -> String {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        real_ip.client(peer.parse().unwrap(), &headers).to_string()
    }

    #[test]
    fn cidrs_parse_and_match_like_kongs_trusted_ips() {
        let cidr = |t: &str| t.parse::<Cidr>();
        assert!(cidr("10.0.0.0/8")
            .unwrap()
            .contains("10.9.8.7".parse().unwrap()));
        assert!(!cidr("10.0.0.0/8")
            .unwrap()
            .contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.1".parse().unwrap()));
        assert!(!cidr("0.0.0.0/0").unwrap().contains("::1".parse().unwrap()));
        assert!(cidr("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(cidr("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::1".parse().unwrap()));
        assert!(cidr("127.0.0.2")
            .unwrap()
            .contains("127.0.0.2".parse().unwrap()));
        assert!(!cidr("127.0.0.2")
            .unwrap()
            .contains("127.0.0.3".parse().unwrap()));
        // An IPv4 peer seen through a dual-stack socket.
        assert!(cidr("127.0.0.2")
            .unwrap()
            .contains("::ffff:127.0.0.2".parse().unwrap()));
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("::/129").is_err());
        assert!(cidr("example.com").is_err());
        assert!(cidr("10.0.0.0/x").is_err());
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let default = RealIp::default();
        assert_eq!(
            client(&default, "10.0.0.1:5000", &[("x-real-ip", b"1.1.1.1")]),
            "10.0.0.1:5000",
            "Kong trusts no proxy by default"
        );
        let trusted = real_ip(&["10.0.0.0/8"], "x-real-ip", false);
        assert_eq!(
            client(&trusted, "10.0.0.1:5000", &[("x-real-ip", b"1.1.1.1")]),
            "1.1.1.1:0"
        );
        assert_eq!(
            client(&trusted, "192.0.2.9:5000", &[("x-real-ip", b"1.1.1.1")]),
            "192.0.2.9:5000"
        );
        // No header, an unreadable one, or one outside UTF-8: the peer.
        assert_eq!(client(&trusted, "10.0.0.1:5000", &[]), "10.0.0.1:5000");
        assert_eq!(
            client(&trusted, "10.0.0.1:5000", &[("x-real-ip", b"unknown")]),
            "10.0.0.1:5000"
        );
        assert_eq!(
            client(&trusted, "10.0.0.1:5000", &[("x-real-ip", b"1.1.1.\xff")]),
            "10.0.0.1:5000"
        );
        // With a port, bracketed IPv6.
        assert_eq!(
            client(&trusted, "10.0.0.1:5000", &[("x-real-ip", b"1.1.1.1:8080")]),
            "1.1.1.1:8080"
        );
        assert_eq!(
            client(
                &trusted,
                "10.0.0.1:5000",
                &[("x-real-ip", b"[2001:db8::1]")]
            ),
            "[2001:db8::1]:0"
        );
        assert_eq!(
            client(&trusted, "10.0.0.1:5000", &[("x-real-ip", b"2001:db8::1")]),
            "[2001:db8::1]:0"
        );
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_right_across_its_lines() {
        let last = real_ip(&["10.0.0.0/8"], "x-forwarded-for", false);
        let lines: &[(&str, &[u8])] = &[
            ("x-forwarded-for", b"6.6.6.6, 1.1.1.1"),
            ("x-forwarded-for", b"10.0.0.5 ,10.0.0.6, "),
        ];
        // Not recursive: the last address, trusted or not.
        assert_eq!(client(&last, "10.0.0.1:5000", lines), "10.0.0.6:0");
        // Recursive: trusted hops are skipped up to the first untrusted address.
        let recursive = real_ip(&["10.0.0.0/8"], "x-forwarded-for", true);
        assert_eq!(client(&recursive, "10.0.0.1:5000", lines), "1.1.1.1:0");
        // Every hop trusted: the leftmost.
        assert_eq!(
            client(
                &recursive,
                "10.0.0.1:5000",
                &[("x-forwarded-for", b"10.1.1.1, 10.2.2.2")]
            ),
            "10.1.1.1:0"
        );
        // An unreadable hop ends the walk at the last address read.
        assert_eq!(
            client(
                &recursive,
                "10.0.0.1:5000",
                &[("x-forwarded-for", b"1.1.1.1, junk, 10.2.2.2")]
            ),
            "10.2.2.2:0"
        );
        // Another header than X-Forwarded-For: its first line only.
        let header = real_ip(&["10.0.0.0/8"], "x-client-ip", false);
        assert_eq!(
            client(
                &header,
                "10.0.0.1:5000",
                &[("x-client-ip", b"1.1.1.1"), ("x-client-ip", b"2.2.2.2")]
            ),
            "1.1.1.1:0"
        );
    }
}
