//! The xDS listener's connections: TLS with a pinned client certificate (an unpinned one is
//! refused in the handshake), handed to tonic with the peer's certificate, so each stream
//! learns which control planes it may serve.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::trust::MAX_HANDSHAKES;

/// A client has this long to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a stream knows of its connection (a request extension).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

pub struct PeerStream(TlsStream<TcpStream>);

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        let (tcp, tls) = self.0.get_ref();
        Peer {
            addr: tcp.peer_addr().ok(),
            certificates: tls.peer_certificates().map(|c| Arc::new(c.to_vec())),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts connections and completes their handshakes (each on a task of its own, so a slow
/// client holds up nobody) until shutdown; established ones go to `incoming`.
pub async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    incoming: mpsc::Sender<Result<PeerStream, std::io::Error>>,
    shutdown: watch::Receiver<bool>,
) {
    accept_with(listener, acceptor, incoming, shutdown, MAX_HANDSHAKES).await;
}

async fn accept_with(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    incoming: mpsc::Sender<Result<PeerStream, std::io::Error>>,
    mut shutdown: watch::Receiver<bool>,
    max_handshakes: usize,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("xDS accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = super::stopping(&mut shutdown) => return,
        };
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            log::warn!("xDS: {max_handshakes} handshakes in progress, {addr} closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let incoming = incoming.clone();
        tokio::spawn(async move {
            let handshaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(handshake);
            match handshaken {
                Ok(Ok(tls)) => {
                    let _ = incoming.send(Ok(PeerStream(tls))).await;
                }
                Ok(Err(e)) => log::info!("xDS handshake with {addr} refused: {e}"),
                Err(_) => log::info!("xDS handshake with {addr} timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_handshake_limit_are_closed_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(crate::store::Store::open(dir.path()).expect("store"));
        let identity = crate::pki::ServerIdentity::load_or_create(dir.path()).expect("identity");
        let acceptor = TlsAcceptor::from(identity.server_config(store, &[b"h2"]).expect("tls"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (incoming, _streams) = mpsc::channel(1);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(accept_with(listener, acceptor, incoming, shutdown, 2));
        crate::trust::assert_the_handshake_limit_holds(addr, 2).await;
    }
}
