//! A module's gRPC call (`proxy_grpc_call`, `proxy_grpc_stream`) over HTTP/2 to one of the
//! configuration's services, as Envoy's async gRPC client makes it: `POST /<service>/<method>`
//! with `application/grpc` and `te: trailers`, length-prefixed messages both ways, and the
//! call's status from `grpc-status` and `grpc-message` (trailers, or the headers of a
//! trailers-only answer). What happens comes back as [`GrpcInbound`] events, the last one
//! always a `Close`.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use host::callout::{GrpcCallout, GrpcInbound, GrpcOutbound};
use host::Headers;

use super::body::ProxyBody;
use super::channel::channel;
use crate::server::Worker;

/// The most one message may hold (a longer one ends the call); gRPC's own default is 4 MiB.
const MAX_MESSAGE: usize = 64 << 20;

/// gRPC status codes the call ends with when the peer gives none.
const UNKNOWN: u32 = 2;
const DEADLINE_EXCEEDED: u32 = 4;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// Makes the call and reports what happens on `events` until it is closed, or until the
/// module cancels it (then nothing more is reported, as in Envoy). `outbound` carries what the
/// module does on the call: on a stream it sends, closes its side or cancels; a unary call it
/// can only end, and `proxy_grpc_close` cancels it as `proxy_grpc_cancel` does (Envoy's
/// `grpcClose` cancels a call's request).
pub async fn exchange(
    worker: Rc<Worker>,
    call: GrpcCallout,
    outbound: mpsc::UnboundedReceiver<GrpcOutbound>,
    events: mpsc::UnboundedSender<GrpcInbound>,
) {
    // A deadline only for unary calls (0: none), as the ABI gives streams none.
    let deadline = (!call.streaming && !call.timeout.is_zero()).then_some(call.timeout);
    let run = run(&worker, &call, outbound, &events);
    let (status, message) = match deadline {
        Some(deadline) => match tokio::time::timeout(deadline, run).await {
            Ok(Some(end)) => end,
            Ok(None) => return,
            Err(_) => (DEADLINE_EXCEEDED, "the call's deadline passed".to_owned()),
        },
        None => match run.await {
            Some(end) => end,
            None => return,
        },
    };
    let _ = events.send(GrpcInbound::Close { status, message });
}

/// The call up to its end: `Some((status, message))`, or `None` when the module cancelled it.
async fn run(
    worker: &Rc<Worker>,
    call: &GrpcCallout,
    mut outbound: mpsc::UnboundedReceiver<GrpcOutbound>,
    events: &mpsc::UnboundedSender<GrpcInbound>,
) -> Option<(u32, String)> {
    let snapshot = worker.shared.snapshot.load_full();
    if crate::ratelimit::is_service(&call.upstream) {
        let trusted_cas = &worker.shared.options.upstream.trusted_cas;
        return Some(
            match crate::ratelimit::answer(&snapshot, trusted_cas, call).await {
                Ok(message) => {
                    let _ = events.send(GrpcInbound::Message(message));
                    (0, String::new())
                }
                Err(failure) => (failure.code, failure.message),
            },
        );
    }
    let Some(index) = super::filtered::callout_service(&snapshot.config, &call.upstream) else {
        return Some((UNAVAILABLE, format!("no upstream {}", call.upstream)));
    };
    let service = &snapshot.config.services[index];
    let path = format!("/{}/{}", call.service, call.method);
    let uri = match super::upstream::uri(&snapshot.targets[index], &path, None) {
        Ok(uri) => uri,
        Err(e) => return Some((INTERNAL, e.to_string())),
    };
    let mut headers = super::filtered::to_header_map(&call.initial_metadata);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if !call.timeout.is_zero() && !call.streaming {
        if let Ok(value) = HeaderValue::try_from(format!("{}m", call.timeout.as_millis())) {
            headers.insert("grpc-timeout", value);
        }
    }
    let (body_tx, body) = channel(16);
    let mut request = Request::post(uri);
    if let Some(h) = request.headers_mut() {
        *h = headers;
    }
    let request = match request.body(ProxyBody::streaming(body)) {
        Ok(request) => request,
        Err(e) => return Some((INTERNAL, e.to_string())),
    };
    // The request's messages: the one of a unary call, or what the module sends on its
    // stream until it closes its side. A cancel (or any end of a unary call) ends the whole
    // call, unreported.
    let (cancel_tx, mut cancelled) = tokio::sync::oneshot::channel::<()>();
    let unary = call.message.clone();
    tokio::task::spawn_local(async move {
        let mut body_tx = Some(body_tx);
        if let Some(message) = unary {
            if let Some(tx) = body_tx.take() {
                let _ = tx.send(Ok(Frame::data(framed(&message)))).await;
            }
        }
        while let Some(event) = outbound.recv().await {
            match event {
                GrpcOutbound::Send {
                    message,
                    end_stream,
                    ..
                } => {
                    let Some(tx) = &body_tx else { continue };
                    if tx.send(Ok(Frame::data(framed(&message)))).await.is_err() || end_stream {
                        body_tx = None;
                    }
                }
                GrpcOutbound::Close { .. } if body_tx.is_some() => body_tx = None,
                GrpcOutbound::Close { .. } | GrpcOutbound::Cancel { .. } => {
                    let _ = cancel_tx.send(());
                    return;
                }
            }
        }
    });
    tokio::select! {
        end = respond(worker, service, request, events) => Some(end),
        // (The sender is dropped, not used, when the module's side ends without a cancel.)
        Ok(()) = &mut cancelled => None,
    }
}

/// Sends the request and reads the answer, reporting metadata and messages on `events`.
async fn respond(
    worker: &Rc<Worker>,
    service: &model::Service,
    request: Request<ProxyBody>,
    events: &mpsc::UnboundedSender<GrpcInbound>,
) -> (u32, String) {
    let response = match worker.upstreams.send(service, request).await {
        Ok(response) => response,
        Err(e) => return (UNAVAILABLE, e.to_string()),
    };
    let (parts, mut body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return (status_of_http(parts.status), String::new());
    }
    if parts.headers.contains_key("grpc-status") {
        // Trailers-only: the headers are the trailers.
        let _ = events.send(GrpcInbound::TrailingMetadata(metadata(&parts.headers)));
        return end_of(&parts.headers);
    }
    let _ = events.send(GrpcInbound::InitialMetadata(metadata(&parts.headers)));
    let mut pending = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return (UNKNOWN, "the answer ended without grpc-status".to_owned()),
            Some(Err(e)) => return (UNAVAILABLE, e.to_string()),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                pending.extend_from_slice(&data);
                loop {
                    match next_message(&mut pending) {
                        Ok(Some(message)) => {
                            let _ = events.send(GrpcInbound::Message(message.to_vec()));
                        }
                        Ok(None) => break,
                        Err(why) => return (INTERNAL, why.to_owned()),
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = events.send(GrpcInbound::TrailingMetadata(metadata(&trailers)));
            return end_of(&trailers);
        }
    }
}

/// A message with gRPC's 5-byte prefix (uncompressed, length big-endian).
fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out.freeze()
}

/// The next whole message in `pending`, if one is there.
fn next_message(pending: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
    let Some(prefix) = pending.get(..5) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        // No compression was offered (no grpc-accept-encoding), so none may be used.
        return Err("a compressed message, though none was accepted");
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err("a message past 64 MiB");
    }
    if pending.len() < 5 + len {
        return Ok(None);
    }
    pending.advance(5);
    Ok(Some(pending.split_to(len).freeze()))
}

/// The call's end from its trailers: `grpc-status` (else UNKNOWN) and the percent-decoded
/// `grpc-message`.
fn end_of(trailers: &HeaderMap) -> (u32, String) {
    let status = trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(UNKNOWN);
    let message = trailers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    (status, message)
}

/// gRPC's percent-encoding of `grpc-message`, undone (bytes that are no UTF-8 become U+FFFD:
/// the module reads a string).
fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (value[i], value.get(i + 1), value.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A call's metadata as the module reads it: the headers' bytes as the peer sent them.
fn metadata(map: &HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in map {
        headers.add(name.as_str(), value.as_bytes());
    }
    headers
}

/// gRPC's mapping of an HTTP status that is not 200 to a call status.
fn status_of_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_split_across_frames() {
        let mut pending = BytesMut::new();
        let a = framed(b"hello");
        let b = framed(b"");
        pending.extend_from_slice(&a[..3]);
        assert_eq!(next_message(&mut pending), Ok(None));
        pending.extend_from_slice(&a[3..]);
        pending.extend_from_slice(&b);
        assert_eq!(
            next_message(&mut pending),
            Ok(Some(Bytes::from_static(b"hello")))
        );
        assert_eq!(next_message(&mut pending), Ok(Some(Bytes::new())));
        assert_eq!(next_message(&mut pending), Ok(None));
        let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert!(next_message(&mut compressed).is_err());
        let mut huge = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(next_message(&mut huge).is_err());
    }

    #[test]
    fn the_end_comes_from_grpc_status_and_the_decoded_message() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("7"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("no%20way%e2%9c%93"),
        );
        assert_eq!(end_of(&trailers), (7, "no way\u{2713}".to_owned()));
        assert_eq!(end_of(&HeaderMap::new()), (UNKNOWN, String::new()));
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(status_of_http(StatusCode::NOT_FOUND), 12);
        assert_eq!(status_of_http(StatusCode::IM_A_TEAPOT), UNKNOWN);
    }
}
