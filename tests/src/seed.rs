//! What the seed (`gateway/seed.kong.yaml`, what `cargo xtask run` serves) promises a
//! client, checked the same way on every data plane that serves it.

use std::net::SocketAddr;

use crate::client::{self, Protocol, Request};
use crate::EchoReport;

/// Sends `GET /hello` through `proxy` with the client's own `Authorization`: the backend must
/// see the seed's secret, `Bearer {token}`, in its place, and the answer must carry the seed's
/// limit of 100 requests a second.
pub async fn assert_secret_injected_and_rate_limited(
    proxy: SocketAddr,
    protocol: Protocol,
    token: &str,
) {
    let request = Request::get("/hello").header("authorization", "Bearer client");
    let response = client::send(proxy, protocol, &request)
        .await
        .unwrap_or_else(|e| panic!("GET /hello through {proxy} ({protocol:?}): {e}"));
    assert_eq!(response.status, 200, "{}", response.text());
    let seen: EchoReport = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not the backend's report ({e}): {}", response.text()));
    assert_eq!(
        seen.header_values("authorization"),
        [format!("Bearer {token}").as_str()]
    );
    assert_eq!(response.header("x-ratelimit-limit-second"), Some("100"));
}
