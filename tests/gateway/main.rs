//! `gateway` processes and in-process gateways over real loopback sockets, one test binary
//! (see tests/envoy/main.rs for why). The seed's requests-per-second check and the gigabyte
//! streams, which measure this process's peak memory, keep binaries of their own.

mod cases;
mod failures;
mod grpc_calls;
mod lifecycle;
mod plugins;
mod proxy;
mod tls;
