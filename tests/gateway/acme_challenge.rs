//! ACME's HTTP-01 challenges on `gateway`: a configured token is answered with its key
//! authorization on the plain and the TLS listener, for any Host, before routing and plugins
//! (here a rate limit of one request an hour that answers anything else 429); a token the
//! configuration does not have is routed as any request.

use bytes::Bytes;
use wasmgate_tests::client::raw_exchange;
use wasmgate_tests::{EchoReport, EchoUpstream};

use crate::tls::{connect, empty, server_config, TestCa, Trust};

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_answered_on_both_listeners_before_plugins_and_other_tokens_are_routed() {
    let ca = TestCa::new();
    let domain = ca.issue(&["shop.example.test"]);
    let echo = EchoUpstream::start().await.unwrap();
    let text = serde_json::json!({
        "_format_version": "3.0",
        "services": [{"name": "e", "url": format!("http://{}", echo.addr()), "routes": [
            {"name": "r", "paths": ["/"], "hosts": ["shop.example.test"]},
        ]}],
        "plugins": [{"name": "rate-limiting", "config": {"hour": 1}}],
        "certificates": [{"id": "shop", "cert": domain.cert, "key": domain.key, "snis": ["shop.example.test"]}],
        "acme_challenges": [
            {"token": TOKEN, "key_authorization": KEY_AUTHORIZATION},
            {"token": "other-token", "key_authorization": "other-token.thumbprint"},
        ],
    })
    .to_string();
    let gateway = crate::tls::start(&text, Some(server_config(&[])));
    let path = format!("/.well-known/acme-challenge/{TOKEN}");

    // Plain listener: GET (any Host, a query too) and HEAD, more times than the limit.
    for (target, host) in [
        (path.clone(), "shop.example.test"),
        (format!("{path}?ignored=1"), "unknown.test"),
        (path.clone(), "shop.example.test"),
    ] {
        let answer = raw_exchange(
            gateway.addr(),
            format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
        )
        .await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{answer}");
        assert!(
            head.contains("\r\ncontent-type: text/plain\r\n"),
            "{answer}"
        );
        assert!(
            head.contains(&format!(
                "\r\ncontent-length: {}\r\n",
                KEY_AUTHORIZATION.len()
            )),
            "{answer}"
        );
        assert_eq!(body, KEY_AUTHORIZATION);
    }
    let head = raw_exchange(
        gateway.addr(),
        format!("HEAD {path} HTTP/1.1\r\nhost: shop.example.test\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "\r\ncontent-length: {}\r\n",
            KEY_AUTHORIZATION.len()
        )),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "a body after HEAD: {head}");

    // TLS listener, on one kept-alive connection.
    let mut tls = connect(
        gateway.tls_addr().unwrap(),
        Some("shop.example.test"),
        Trust::Ca(&ca),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let request = http::Request::get(&path)
            .header("host", "shop.example.test")
            .body(empty())
            .unwrap();
        let (status, headers, body) = tls.exchange(request).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(body, Bytes::from_static(KEY_AUTHORIZATION.as_bytes()));
    }
    assert_eq!(echo.arrivals().len(), 0, "a challenge reached the upstream");

    // A token the configuration does not have is the user's: routed, through the plugins.
    // None of the challenges above counted: the limit's one request is still there.
    let unknown = "/.well-known/acme-challenge/not-a-configured-token";
    let routed = |answer: &str| answer.starts_with("HTTP/1.1 200");
    let first = raw_exchange(
        gateway.addr(),
        format!("GET {unknown} HTTP/1.1\r\nhost: shop.example.test\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(routed(&first), "{first}");
    let (_, body) = first.split_once("\r\n\r\n").unwrap();
    let seen: EchoReport = serde_json::from_str(body).unwrap();
    assert_eq!(seen.path, unknown);
    let second = raw_exchange(
        gateway.addr(),
        format!("GET {unknown} HTTP/1.1\r\nhost: shop.example.test\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    // Past the limit, a configured token is still answered; a POST of it is a request.
    let (status, body) = tls.get(&path).await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_ref()),
        (200, KEY_AUTHORIZATION.as_bytes())
    );
    let post = raw_exchange(
        gateway.addr(),
        format!("POST {path} HTTP/1.1\r\nhost: shop.example.test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 429"), "{post}");
}
