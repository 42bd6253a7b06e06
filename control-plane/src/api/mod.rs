//! (being written)

use std::sync::Arc;

use tokio::sync::watch;

use crate::State;

pub async fn serve(
    listener: tokio::net::TcpListener,
    _state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = axum::Router::new();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
}
