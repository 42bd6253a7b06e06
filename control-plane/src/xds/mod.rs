//! (being written)

use std::sync::Arc;

use tokio::sync::watch;

use crate::State;

pub async fn serve(
    _listener: tokio::net::TcpListener,
    _state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
