//! `--upstream-deny`: networks no upstream connection may reach, as a platform hosting other
//! tenants' services needs (a tenant's `http://127.0.0.1:<port>` service reached the platform's
//! own loopback services through the tenant's proxy). Checked on the address connected to, so
//! a name that resolves to a denied address is refused as the address is.

use std::sync::Arc;

use gateway::proxy::egress::EgressPolicy;
use wasmgate_tests::client::send;
use wasmgate_tests::gateway::{options, start, start_with, ProxyPath};
use wasmgate_tests::{EchoReport, EchoUpstream, Protocol, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_networks_are_refused_by_address_and_by_name() {
    for path in ProxyPath::ALL {
        let echo = EchoUpstream::start().await.unwrap();
        let port = echo.addr().port();
        let config = path.config(&format!(
            "_format_version: \"3.0\"\nservices:\n  \
             - {{name: ip, url: \"http://127.0.0.1:{port}\", routes: [{{name: ip, paths: [/ip]}}]}}\n  \
             - {{name: name, url: \"http://localhost:{port}\", routes: [{{name: name, paths: [/name]}}]}}\n"
        ));
        let mut denying = options();
        denying.upstream.egress = Arc::new(EgressPolicy::parse(&["private"]).unwrap());
        let denied = start_with(denying, &config);
        for route in ["/ip", "/name"] {
            let response = send(denied.addr(), Protocol::Http1, &Request::get(route))
                .await
                .unwrap();
            assert_eq!(
                response.status,
                502,
                "{path:?} {route}: {}",
                response.text()
            );
            assert_eq!(
                response.json().unwrap(),
                response
                    .kong_error_json("An invalid response was received from the upstream server"),
                "{path:?} {route}"
            );
        }
        assert!(
            echo.arrivals().is_empty(),
            "{path:?}: a denied upstream got a request"
        );

        // The same services, without the policy (the default): proxied.
        let open = start(&config);
        for route in ["/ip", "/name"] {
            let response = send(open.addr(), Protocol::Http1, &Request::get(route))
                .await
                .unwrap();
            assert_eq!(
                response.status,
                200,
                "{path:?} {route}: {}",
                response.text()
            );
            let seen: EchoReport = serde_json::from_slice(&response.body).unwrap();
            path.assert_taken(&seen);
        }
    }
}
