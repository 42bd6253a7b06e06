//! gRPC end to end through `gateway`: tonic's client and server on loopback, the seed's three
//! plugins on the route (request-transformer injects the credential the server checks), unary
//! and server-streaming calls, and errors whose grpc-status and grpc-message reach the client
//! in the trailers.

use std::net::SocketAddr;

use tonic::Code;
use wasmgate_tests::gateway::start;
use wasmgate_tests::grpc_tonic::{calls, grpc_client, grpc_server, say};

fn config(server: SocketAddr, plugins: &str) -> String {
    format!(
        r#"
_format_version: "3.0"
services:
  - name: grpc
    url: grpc://{server}
    routes:
      - name: echo
        paths: [/svc.Echo]
        strip_path: false
{plugins}"#
    )
}

/// The seed's plugins, on the route.
const SEED_PLUGINS: &str = r#"        plugins:
          - {name: request-size-limiting, config: {allowed_payload_size: 10}}
          - {name: rate-limiting, config: {second: 100, policy: local}}
          - name: request-transformer
            config: {add: {headers: ["x-backend-token:backend-secret"]}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_go_through_the_routes_plugins_with_their_statuses() {
    let server = grpc_server().await;
    // Straight to the server: without the plugin's credential every call is refused.
    let mut direct = grpc_client(server);
    let refused = say(&mut direct, b"hi", false).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let gateway = start(&config(server, SEED_PLUGINS));
    calls(gateway.addr(), false).await;
}

/// The plain proxy path (no plugins): the client brings its own credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_go_through_the_plain_proxy_path_with_their_statuses() {
    let server = grpc_server().await;
    let gateway = start(&config(server, ""));
    calls(gateway.addr(), true).await;
    let status = say(&mut grpc_client(gateway.addr()), b"hi", false)
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "no backend token")
    );
}
