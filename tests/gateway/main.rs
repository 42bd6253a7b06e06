//! `gateway` processes and in-process gateways over real loopback sockets, one test binary
//! (see tests/envoy/main.rs for why). The seed's requests-per-second check and the gigabyte
//! streams, which measure this process's peak memory, keep binaries of their own, and so do the
//! shared case files (`gateway_cases`): their steps account for every request head the
//! upstream receives, and a head still in flight when a step is answered must not land in
//! the next step under another test's CPU load.

mod acme_challenge;
mod admin;
mod egress;
mod failures;
mod forwarding;
mod grpc_calls;
mod grpc_proxy;
mod lifecycle;
mod platform;
mod plugins;
mod proxy;
mod tls;
mod websocket;
