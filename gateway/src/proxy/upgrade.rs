//! HTTP/1.1 upgrades: WebSocket is proxied, as Kong proxies ws/wss and Envoy an
//! `upgrade_configs: websocket` listener; any other protocol switch is refused.
//!
//! A WebSocket handshake is an ordinary request up to its answer: it is routed, runs the
//! route's request filters (a plugin's 401 or 429 refuses the upgrade), and goes upstream
//! with `Connection: upgrade` and `Upgrade: websocket` (hop-by-hop, so re-added for this one
//! case). When the upstream switches protocols (101), both connections are handed over by
//! hyper and their bytes are copied both ways until either side closes or the tunnel idles
//! past the service's `read_timeout`.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::errors::ProxyError;

/// Whether `token` is one of a comma-separated header's elements, byte-wise and ignoring case.
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &[u8]) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|element| element.trim_ascii().eq_ignore_ascii_case(token))
}

/// An upgrade request, as Envoy's `Utility::isUpgrade`: `Connection` lists `upgrade` and an
/// `Upgrade` is given.
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && lists(headers, header::CONNECTION, b"upgrade")
}

/// A WebSocket handshake (RFC 6455 §4.1), the one upgrade that is proxied.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    is_upgrade(headers) && lists(headers, header::UPGRADE, b"websocket")
}

/// 403 for CONNECT and for an upgrade to anything but WebSocket, as Envoy answers an upgrade
/// its route has no `upgrade_configs` for (`upgrade_failed`, conn_manager_impl.cc; CONNECT
/// counts as an upgrade there), and then closes the connection. Envoy routes first (no route:
/// 404); no route here takes another protocol, so the refusal comes first. `h2c` is not
/// refused: Envoy's HTTP/1 codec drops an h2c upgrade's headers and serves the request as
/// HTTP/1.1 (envoy#7161), and so does the gateway, by dropping them as hop-by-hop.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::UpgradeRefused("CONNECT".into()));
    }
    if is_upgrade(headers) && !is_websocket(headers) && !lists(headers, header::UPGRADE, b"h2c") {
        let protocols: Vec<String> = headers
            .get_all(header::UPGRADE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        return Err(ProxyError::UpgradeRefused(protocols.join(", ")));
    }
    Ok(())
}

/// The hop-by-hop headers a WebSocket handshake needs on its next hop.
pub fn set_websocket_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The connection's slot of `worker_connections`, shared by its requests: a tunnel keeps it
/// until it closes, as the connection would have, so tunnels count against the bound.
#[derive(Clone, Debug)]
pub struct ConnectionSlot(pub Arc<OwnedSemaphorePermit>);

/// How long a tunnel may carry nothing either way before it is closed: the service's
/// `read_timeout`, as Kong (nginx's `proxy_read_timeout`) and Envoy (the route's idle timeout,
/// which the translation sets from it) close an idle WebSocket.
#[derive(Clone, Copy, Debug)]
pub struct TunnelIdle(pub Duration);

/// Completes a WebSocket handshake the upstream accepted: the client gets the 101 with its
/// upgrade headers, and once hyper has handed over both connections their bytes are copied
/// both ways. Any other answer goes to the client as it is.
pub fn switch(
    response: &mut Response<super::body::ProxyBody>,
    client: Option<OnUpgrade>,
    slot: Option<ConnectionSlot>,
) {
    let upstream = response.extensions_mut().remove::<OnUpgrade>();
    let idle = response.extensions_mut().remove::<TunnelIdle>();
    let (Some(client), Some(upstream), Some(TunnelIdle(idle))) = (client, upstream, idle) else {
        return;
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    set_websocket_headers(response.headers_mut());
    tokio::task::spawn_local(tunnel(client, upstream, idle, slot));
}

/// Copies bytes both ways until either side closes or nothing crosses for `idle`; dropping
/// both connections then closes them, and the connection's slot is free again.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    _slot: Option<ConnectionSlot>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            log::debug!("websocket: the upgrade did not complete: {error}");
            return;
        }
    };
    let last = Rc::new(Cell::new(Instant::now()));
    let mut client = Watched {
        io: TokioIo::new(client),
        last: Rc::clone(&last),
    };
    let mut upstream = Watched {
        io: TokioIo::new(upstream),
        last: Rc::clone(&last),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            ended = &mut copy => {
                if let Err(error) = ended {
                    log::debug!("websocket: the tunnel ended: {error}");
                }
                return;
            }
            () = tokio::time::sleep_until(last.get() + idle) => {
                if last.get() + idle <= Instant::now() {
                    log::debug!("websocket: nothing crossed the tunnel for {idle:?}: closed");
                    return;
                }
            }
        }
    }
}

/// One side of a tunnel, noting when bytes last came from it.
struct Watched<T> {
    io: T,
    last: Rc<Cell<Instant>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use http::Method;

    use super::*;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (name, value) in pairs {
            m.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        m
    }

    #[test]
    fn websocket_is_proxied_h2c_ignored_and_other_switches_refused() {
        let websocket = map(&[
            ("connection", b"keep-alive, Upgrade"),
            ("upgrade", b"WebSocket"),
        ]);
        assert!(is_websocket(&websocket));
        assert!(check(&Method::GET, &websocket).is_ok());
        // Upgrade without Connection naming it is no upgrade: both are dropped as hop-by-hop.
        let unnamed = map(&[("connection", b"keep-alive"), ("upgrade", b"websocket")]);
        assert!(!is_websocket(&unnamed));
        assert!(check(&Method::GET, &unnamed).is_ok());
        let h2c = map(&[
            ("connection", b"Upgrade, HTTP2-Settings"),
            ("upgrade", b"h2c"),
        ]);
        assert!(check(&Method::GET, &h2c).is_ok());
        let other = map(&[("connection", b"upgrade"), ("upgrade", b"foo/2, \xff")]);
        match check(&Method::GET, &other) {
            Err(ProxyError::UpgradeRefused(what)) => assert_eq!(what, "foo/2, \u{fffd}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check(&Method::CONNECT, &HeaderMap::new()),
            Err(ProxyError::UpgradeRefused(_))
        ));
    }
}
