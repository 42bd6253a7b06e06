//! Kong's https-only routes, as both data planes are tested with them: the declarative file,
//! cleartext requests, and what Kong answers them.

use std::net::SocketAddr;

/// An https-only route with a plugin (one request a minute: it must not run for a refused
/// request), one that redirects with 308, and one for both protocols.
pub fn config(echo: SocketAddr) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: echo
    url: http://{echo}
    routes:
      - name: tls
        paths: [/tls]
        protocols: [https]
        plugins:
          - name: rate-limiting
            config: {{minute: 1, policy: local}}
      - name: moved
        paths: [/moved]
        protocols: [https]
        https_redirect_status_code: 308
      - name: both
        paths: [/both]
"#
    )
}

/// A cleartext HTTP/1.1 GET of `path` for `GW.test:8000`, with `extra` header lines.
pub fn cleartext(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: GW.test:8000\r\n{extra}connection: close\r\n\r\n")
}

/// Kong's 426 for a raw HTTP/1.1 `answer`, before any plugin ran (no rate-limit headers);
/// with `Upgrade: TLS/1.2, HTTP/1.1` where the data plane can send it.
pub fn assert_https_required(answer: &str, with_upgrade: bool) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {answer:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 426"), "{answer}");
    assert_eq!(
        head.contains("\r\nupgrade: tls/1.2, http/1.1"),
        with_upgrade,
        "{answer}"
    );
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{answer}"
    );
    assert!(!head.contains("ratelimit"), "{answer}");
    assert!(
        body.ends_with(r#"{"message":"Please use HTTPS protocol"}"#),
        "{answer}"
    );
}
