//! Kong's route `protocols`: a route that leaves out `http` refuses cleartext requests once
//! it has matched, before any plugin runs and before a missing service is noticed, as Kong's
//! runloop does. TLS ended by a trusted proxy counts: its `X-Forwarded-Proto: https` stands
//! for the scheme.

use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use model::Route;

use super::body::ProxyBody;
use super::Downstream;

const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Kong's answer when `route` does not take this request's protocol: 426 with an `Upgrade`
/// to TLS, or the route's redirect to the same URL over https.
pub fn refusal(
    route: &Route,
    downstream: &Downstream,
    parts: &Parts,
    host: &str,
) -> Option<Response<ProxyBody>> {
    if !route.https_only
        || downstream.forwarded(
            &parts.headers,
            X_FORWARDED_PROTO,
            downstream.scheme().as_bytes(),
        ) == b"https"
    {
        return None;
    }
    if route.https_redirect_status_code == 426 {
        let mut response = Response::new(ProxyBody::full(
            &br#"{"message":"Please use HTTPS protocol"}"#[..],
        ));
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static("TLS/1.2, HTTP/1.1"),
        );
        return Some(response);
    }
    // nginx's `$host` (no port) unless a trusted proxy names the host, then the request
    // target as the client sent it (`$request_uri`, before normalisation).
    let host = model::router::host_without_port(host).as_bytes();
    let mut location = b"https://".to_vec();
    location.extend_from_slice(downstream.forwarded(&parts.headers, X_FORWARDED_HOST, host));
    location.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .as_bytes(),
    );
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::from_u16(route.https_redirect_status_code)
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    // A forwarded host that is no header value (it came in as one, so this is only a
    // guard) leaves the redirect without a Location rather than the request without an answer.
    if let Ok(location) = HeaderValue::from_bytes(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Some(response)
}
