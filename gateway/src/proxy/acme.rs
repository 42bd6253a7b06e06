//! ACME's HTTP-01 challenges (RFC 8555, section 8.3): while the control plane validates a
//! custom domain, the configuration carries its token, and a `GET` (or `HEAD`) of
//! `/.well-known/acme-challenge/<token>` is answered with the key authorization on every
//! listener, for any Host, before routing and plugins: no route, rate limit or
//! authentication of the user's stands between the ACME server and the answer. A token the
//! configuration does not have is an ordinary request.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};

use super::body::ProxyBody;

/// The answer to a request for one of `config`'s challenges; `None` for any other request.
/// The path is compared as sent, without its query.
pub fn answer(config: &model::Config, method: &Method, path: &str) -> Option<Response<ProxyBody>> {
    // Every request passes here: with no challenge (nearly always), one comparison.
    if config.acme_challenges.is_empty() || (method != Method::GET && method != Method::HEAD) {
        return None;
    }
    let token = path.strip_prefix(model::ACME_CHALLENGE_PREFIX)?;
    let challenge = config
        .acme_challenges
        .iter()
        .find(|c| c.token.as_bytes() == token.as_bytes())?;
    let authorization = challenge.key_authorization.as_bytes();
    let body = if method == Method::HEAD {
        ProxyBody::empty()
    } else {
        ProxyBody::full(Bytes::copy_from_slice(authorization))
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(authorization.len()),
    );
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> model::Config {
        model::Config {
            acme_challenges: vec![model::AcmeChallenge {
                token: "tok-1_A".into(),
                key_authorization: "tok-1_A.thumb".into(),
            }],
            ..model::Config::default()
        }
    }

    #[test]
    fn only_a_get_or_head_of_a_configured_token_is_answered() {
        let config = config();
        let answered =
            answer(&config, &Method::GET, "/.well-known/acme-challenge/tok-1_A").unwrap();
        assert_eq!(answered.status(), StatusCode::OK);
        assert_eq!(answered.headers()["content-type"], "text/plain");
        assert_eq!(answered.headers()["content-length"], "13");
        let head = answer(
            &config,
            &Method::HEAD,
            "/.well-known/acme-challenge/tok-1_A",
        )
        .unwrap();
        assert_eq!(head.headers()["content-length"], "13");
        for (method, path) in [
            (Method::POST, "/.well-known/acme-challenge/tok-1_A"),
            (Method::GET, "/.well-known/acme-challenge/other"),
            (Method::GET, "/.well-known/acme-challenge/tok-1_A/x"),
            (Method::GET, "/.well-known/acme-challenge/"),
            (Method::GET, "/x/.well-known/acme-challenge/tok-1_A"),
            (Method::GET, "/.well-known/acme-challenge/TOK-1_A"),
        ] {
            assert!(answer(&config, &method, path).is_none(), "{method} {path}");
        }
    }
}
