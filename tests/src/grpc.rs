//! A gRPC server on loopback for modules' gRPC calls: hyper's HTTP/2 server speaking gRPC's
//! framing, without generated code (the tests only need bytes in and out).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn messages(mut body: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.advance(5);
        out.push(body.split_to(len.min(body.len())));
    }
    out
}

/// `/svc.Echo/Say` answers each request message with `re:<message>` and status 0;
/// `/svc.Echo/Deny` answers trailers-only with status 7 (PERMISSION_DENIED).
async fn handle(
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let path = request.uri().path().to_owned();
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/grpc")
        && request.headers().get("te").is_some_and(|v| v == "trailers");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = hyper::Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    if path == "/svc.Echo/Say" && grpc {
        let mut out = BytesMut::new();
        for message in messages(body) {
            out.extend_from_slice(&framed(&[b"re:".as_slice(), &message].concat()));
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = Full::new(out.freeze())
            .with_trailers(async { Some(Ok(trailers)) })
            .boxed();
        return Ok(response.body(body).unwrap());
    }
    Ok(response
        .header("grpc-status", "7")
        .header("grpc-message", "no%20way")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap())
}

/// Starts the server; its address.
pub async fn start_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), hyper::service::service_fn(handle)),
            );
        }
    });
    addr
}
