//! A real gRPC server and client, tonic's, with messages as bytes (no generated code: the
//! framing and the statuses are tonic's own), for gRPC through the data planes.
//!
//! The server has `svc.Echo/Say` (unary) and `svc.Echo/Count` (server streaming), and refuses
//! calls without the `x-backend-token` a request-transformer plugin injects (or the client
//! brings).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use futures_util::stream::{self, BoxStream};
use http::uri::PathAndQuery;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status};

/// Messages as their bytes: no generated code, the framing and statuses are tonic's own.
#[derive(Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The credential request-transformer injects; the server refuses calls without it.
pub const TOKEN: &str = "backend-secret";

/// The server's refusal of a call without [`TOKEN`].
fn unauthorised<T>(request: &Request<T>) -> Option<Status> {
    match request.metadata().get("x-backend-token") {
        Some(token) if token == TOKEN => None,
        _ => Some(Status::unauthenticated("no backend token")),
    }
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// `svc.Echo/Say`: `re:<message>`; a message `fail` gets NOT_FOUND.
struct Say;

impl tower_service::Service<Request<Vec<u8>>> for Say {
    type Response = Response<Vec<u8>>;
    type Error = Status;
    type Future = Answer<Vec<u8>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            if let Some(refusal) = unauthorised(&request) {
                return Err(refusal);
            }
            let message = request.into_inner();
            if message == b"fail" {
                return Err(Status::not_found("no such greeting: fail"));
            }
            Ok(Response::new([b"re:".as_slice(), &message].concat()))
        })
    }
}

/// `svc.Echo/Count`: the message's decimal number N, answered with `1` .. `N` in N messages;
/// past 3 it sends three and then fails with RESOURCE_EXHAUSTED.
struct Count;

impl tower_service::Service<Request<Vec<u8>>> for Count {
    type Response = Response<BoxStream<'static, Result<Vec<u8>, Status>>>;
    type Error = Status;
    type Future = Answer<BoxStream<'static, Result<Vec<u8>, Status>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            if let Some(refusal) = unauthorised(&request) {
                return Err(refusal);
            }
            let n: usize = String::from_utf8_lossy(request.get_ref())
                .parse()
                .map_err(|_| Status::invalid_argument("not a number"))?;
            let mut items: Vec<Result<Vec<u8>, Status>> = Vec::new();
            for i in 1..=n.min(3) {
                items.push(Ok(i.to_string().into_bytes()));
            }
            if n > 3 {
                items.push(Err(Status::resource_exhausted("three is the most")));
            }
            Ok(Response::new(
                Box::pin(stream::iter(items)) as BoxStream<'static, _>
            ))
        })
    }
}

async fn serve(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::BoxBody>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(match request.uri().path() {
        "/svc.Echo/Say" => grpc.unary(Say, request).await,
        "/svc.Echo/Count" => grpc.server_streaming(Count, request).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// tonic's server on loopback (HTTP/2 cleartext).
pub async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), hyper::service::service_fn(serve)),
            );
        }
    });
    addr
}

pub type Channel = tonic::client::Grpc<Client<HttpConnector, tonic::body::BoxBody>>;

/// tonic's client, over h2c to `addr`.
pub fn grpc_client(addr: SocketAddr) -> Channel {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().unwrap();
    tonic::client::Grpc::with_origin(client, origin)
}

/// A request, with the credential when the client brings its own.
pub fn request(message: Vec<u8>, token: bool) -> Request<Vec<u8>> {
    let mut request = Request::new(message);
    if token {
        request
            .metadata_mut()
            .insert("x-backend-token", TOKEN.parse().unwrap());
    }
    request
}

pub async fn say(channel: &mut Channel, message: &[u8], token: bool) -> Result<Vec<u8>, Status> {
    channel
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let path = PathAndQuery::from_static("/svc.Echo/Say");
    let response = channel
        .unary(request(message.to_vec(), token), path, Raw)
        .await?;
    Ok(response.into_inner())
}

/// Every message of a Count call, and how the stream ended.
pub async fn count(
    channel: &mut Channel,
    n: usize,
    token: bool,
) -> (Vec<String>, Result<(), Status>) {
    if let Err(e) = channel.ready().await {
        return (Vec::new(), Err(Status::unknown(e.to_string())));
    }
    let path = PathAndQuery::from_static("/svc.Echo/Count");
    let request = request(n.to_string().into_bytes(), token);
    let mut stream = match channel.server_streaming(request, path, Raw).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(String::from_utf8_lossy(&message).into_owned()),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}

/// Unary and server-streaming calls, each answered and failed, through the data plane at
/// `addr`.
pub async fn calls(addr: SocketAddr, token: bool) {
    let mut channel = grpc_client(addr);

    // Unary.
    assert_eq!(say(&mut channel, b"hi", token).await.unwrap(), b"re:hi");
    let status = say(&mut channel, b"fail", token).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such greeting: fail"),
        "{status:?}"
    );

    // Server streaming: messages as they come, then the status in the trailers.
    let (messages, end) = count(&mut channel, 3, token).await;
    assert_eq!(messages, ["1", "2", "3"]);
    assert!(end.is_ok(), "{end:?}");
    let (messages, end) = count(&mut channel, 5, token).await;
    assert_eq!(messages, ["1", "2", "3"]);
    let status = end.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, "three is the most"),
        "{status:?}"
    );
}
