//! The proxy's own answers, in Kong's words and shape.

use std::fmt;

use http::{HeaderValue, Response, StatusCode};

use super::body::ProxyBody;

#[derive(Debug)]
pub enum ProxyError {
    NoRoute,
    NoService,
    BadRequest(String),
    /// The upstream could not be reached or answered badly.
    BadGateway(String),
    /// The upstream's name did not resolve.
    Unavailable(String),
    /// Connecting or waiting for the response took longer than the service allows.
    Timeout(String),
    /// The service has as many requests in flight and waiting as its circuit allows.
    Overloaded(String),
    /// A plugin's instance could not start on this worker: the request fails closed.
    FilterUnavailable(String),
    /// The request head's names and values, in bytes, past the bound.
    HeadersTooLarge(usize),
    /// A Transfer-Encoding the gateway does not implement (the header's value).
    NotImplemented(String),
    /// CONNECT, or an upgrade to a protocol other than WebSocket (which one).
    UpgradeRefused(String),
    /// The client sent nothing of its request body for the client body timeout.
    ClientTimeout(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoService
            | ProxyError::Unavailable(_)
            | ProxyError::FilterUnavailable(_)
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UpgradeRefused(_) => StatusCode::FORBIDDEN,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The message Kong answers with.
    pub fn message(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no Route matched with those values",
            ProxyError::NoService => "no Service found with those values",
            ProxyError::BadRequest(_) => "Bad request",
            ProxyError::BadGateway(_) => {
                "An invalid response was received from the upstream server"
            }
            ProxyError::Unavailable(_) => "name resolution failed",
            ProxyError::Timeout(_) => "The upstream server is timing out",
            ProxyError::Overloaded(_) => "The upstream server is currently unavailable",
            ProxyError::FilterUnavailable(_) => "A plugin is unavailable",
            ProxyError::HeadersTooLarge(_) => "Request header fields too large",
            ProxyError::NotImplemented(_) => "Not implemented",
            ProxyError::UpgradeRefused(_) => "Forbidden",
            ProxyError::ClientTimeout(_) => "Request timeout",
        }
    }

    pub fn into_response(self, accept: Option<&[u8]>, request_id: &[u8]) -> Response<ProxyBody> {
        kong_response(self.status().as_u16(), self.message(), accept, request_id)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::BadRequest(d)
            | ProxyError::BadGateway(d)
            | ProxyError::Unavailable(d)
            | ProxyError::Timeout(d)
            | ProxyError::Overloaded(d)
            | ProxyError::NotImplemented(d)
            | ProxyError::UpgradeRefused(d)
            | ProxyError::ClientTimeout(d) => {
                write!(f, "{}: {d}", self.message())
            }
            ProxyError::HeadersTooLarge(size) => write!(f, "{}: {size} bytes", self.message()),
            _ => f.write_str(self.message()),
        }
    }
}

/// Kong's error response (JSON unless the client's Accept prefers another format).
pub fn kong_response(
    status: u16,
    message: &str,
    accept: Option<&[u8]>,
    request_id: &[u8],
) -> Response<ProxyBody> {
    let local = kit::kong_error(status, message, accept, request_id);
    let mut response = Response::new(ProxyBody::full(local.body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in local.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}
