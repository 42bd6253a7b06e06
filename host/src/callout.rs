//! Calls a module makes to other services (`proxy_http_call`, `proxy_grpc_call`,
//! `proxy_grpc_stream`) and the answers the host delivers back. The host runtime only records
//! them: whoever drives the VM (the gateway's worker, or a test through `host::testing`)
//! performs them and delivers the outcome.

use std::time::Duration;

use crate::headers::Headers;

/// An HTTP call a module dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallout {
    pub token: u32,
    /// The cluster (upstream) name the module asked for.
    pub upstream: String,
    /// Including the pseudo-headers `:method`, `:path`, `:authority`.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// `None`: the module passed 0, which Envoy takes as no timeout at all.
    pub timeout: Option<Duration>,
}

/// What answered an HTTP call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Including `:status`.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

impl HttpCallResponse {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> HttpCallResponse {
        let mut map = Headers::new();
        map.add(":status", status.to_string());
        for (k, v) in headers {
            map.add(k, v);
        }
        HttpCallResponse {
            headers: map,
            body: body.to_vec(),
            trailers: Headers::new(),
        }
    }
}

/// The outcome of an HTTP call. A failure (timeout, reset, unknown upstream) reaches the
/// module as a response with no headers and no body, as in Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpCallResult {
    Response(HttpCallResponse),
    Failed,
}

/// A gRPC call or stream a module opened. The module encodes its own messages; the host
/// frames them (5-byte gRPC prefix) on HTTP/2 to the named upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCallout {
    pub token: u32,
    pub upstream: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
    /// The request message of a unary call (a stream sends with [`GrpcEvent`]s instead).
    pub message: Option<Vec<u8>>,
    /// Zero for streams.
    pub timeout: Duration,
    pub streaming: bool,
}

/// Something the module did on an open gRPC stream after opening it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcOutbound {
    Send {
        token: u32,
        message: Vec<u8>,
        end_stream: bool,
    },
    Cancel {
        token: u32,
    },
    Close {
        token: u32,
    },
}

/// Something the remote side of a gRPC call did, delivered to the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcInbound {
    InitialMetadata(Headers),
    Message(Vec<u8>),
    TrailingMetadata(Headers),
    Close { status: u32, message: String },
}

/// Everything a VM asked for during a callback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Callouts {
    pub http: Vec<HttpCallout>,
    pub grpc: Vec<GrpcCallout>,
    pub grpc_outbound: Vec<GrpcOutbound>,
}

impl Callouts {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.grpc.is_empty() && self.grpc_outbound.is_empty()
    }

    /// Moves every call of `other` here, leaving it empty (with its buffers, so the VM's
    /// list allocates nothing on the next callback). Most callbacks make no call: that costs
    /// three length checks.
    #[inline]
    pub fn append(&mut self, other: &mut Callouts) {
        if !other.is_empty() {
            self.move_from(other);
        }
    }

    fn move_from(&mut self, other: &mut Callouts) {
        self.http.append(&mut other.http);
        self.grpc.append(&mut other.grpc);
        self.grpc_outbound.append(&mut other.grpc_outbound);
    }
}
