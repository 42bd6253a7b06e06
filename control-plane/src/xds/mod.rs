//! Envoy's configuration over ADS (gRPC, state of the world): listeners, routes, clusters,
//! the plugin filters by ECDS and the TLS listener's certificates by SDS, built by the
//! model's Envoy translation from the same config versions the gateways get.
//!
//! Each Envoy connects with a client certificate pinned for its control plane ([`tls`]) and
//! names itself in its bootstrap ([`bootstrap`]): `node.id`, the control plane in
//! `node.cluster`, its listeners' addresses (plain, and TLS if it has one) and the
//! environment variables its plugins may read in `node.metadata`. Each stream ([`stream`])
//! follows its control plane's versions in the hub, translates each one for its node
//! ([`resources`], [`snapshot`]) and records in [`crate::nodes`] what the node applied or
//! refused.

mod bootstrap;
mod descriptors;
pub mod resources;
pub mod snapshot;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

pub use bootstrap::{bootstrap, BootstrapOptions};

use crate::State;
use resources::Translator;
use stream::{AdsStream, Envoys, NodeIdentity};
use tls::Peer;

const UNPINNED: &str = "this certificate was unpinned";

struct Ads {
    state: Arc<State>,
    translator: Arc<Translator>,
    envoys: Arc<Envoys>,
    shutdown: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let certificate = crate::pki::peer(
            &self.state.store,
            peer.as_ref()
                .and_then(|p| p.certificates.as_deref())
                .map(Vec::as_slice),
        )
        .map_err(Status::unauthenticated)?;
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first
            .node
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first request names no node"))?;
        let identity = NodeIdentity::new(node, &certificate.control_planes)?;
        let pin = self
            .state
            .store
            .trust()
            .hold(&identity.control_plane_id, &certificate.fingerprint)
            .ok_or_else(|| Status::permission_denied(UNPINNED))?;
        let (cp, id) = (identity.control_plane_id.clone(), identity.id.clone());
        self.state
            .nodes
            .admit(&cp, &id)
            .map_err(Status::resource_exhausted)?;
        let (responses, receiver) = mpsc::channel(16);
        let revoked = responses.clone();
        let stream = AdsStream::new(
            Arc::clone(&self.state),
            Arc::clone(&self.translator),
            Arc::clone(&self.envoys),
            identity,
            responses,
        );
        let ip = peer.and_then(|p| p.addr).map(|a| a.ip().to_string());
        let run = stream.run(first, requests, ip, self.shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                // Before the stream's next push: nothing published after the unpin reaches it.
                biased;
                () = pin.revoked() => {
                    log::warn!("xDS node {id} of {cp}: {UNPINNED}, stream closed");
                    // Dropping the stream's future releases its node like any ending.
                    let _ = revoked.send(Err(Status::permission_denied(UNPINNED))).await;
                }
                () = run => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served: use state of the world (api_type GRPC)",
        ))
    }
}

/// Resolves once the control plane shuts down.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves ADS on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    if let Err(e) = run(listener, state, shutdown).await {
        log::error!("xDS server: {e}");
    }
}

async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let translator = Arc::new(Translator::new()?);
    let tls = state
        .identity
        .server_config(Arc::clone(&state.store), &[b"h2"])?;
    let (incoming, connections) = mpsc::channel(64);
    tokio::spawn(tls::accept(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        incoming,
        shutdown.clone(),
    ));
    let ping = state.options.ping_interval;
    let ads = Ads {
        state,
        translator,
        envoys: Arc::default(),
        shutdown: shutdown.clone(),
    };
    tonic::transport::Server::builder()
        // A vanished Envoy ends its stream (and shows disconnected) within two pings.
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping))
        .add_service(AggregatedDiscoveryServiceServer::new(ads))
        .serve_with_incoming_shutdown(ReceiverStream::new(connections), async move {
            stopping(&mut shutdown).await;
        })
        .await
        .map_err(|e| format!("serving: {e}"))
}
