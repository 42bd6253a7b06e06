//! `model::parse_declarative`, a data plane's reading of the Kong declarative document it is
//! given (by the control plane over sync, by `POST /config`, from its file), with any text,
//! certificates and ACME challenges included: it never panics, and what it accepts keeps the
//! rules the data planes rely on (checked here independently of the code under test): every
//! SNI lowercase and owned by one certificate, every certificate id unique, every challenge
//! token one path segment of base64url characters, and the bounds.
//!
//! Input: the document's text (YAML or JSON; invalid UTF-8 is skipped).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;

fn base64url(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = model::parse_declarative(text) else {
        return;
    };
    assert!(config.certificates.len() <= 1000 && config.acme_challenges.len() <= 1000);
    let (mut ids, mut snis) = (HashSet::new(), HashSet::new());
    for certificate in &config.certificates {
        assert!(ids.insert(certificate.id.as_str()), "{certificate:?}");
        assert!(certificate.cert.len() <= 64 << 10 && certificate.key.len() <= 64 << 10);
        for sni in &certificate.snis {
            assert!(snis.insert(sni.as_str()), "{sni} twice");
            assert!(!sni.is_empty() && sni.len() <= 253, "{sni}");
            assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()), "{sni}");
            assert!(!sni.contains(':') && !sni.contains('/'), "{sni}");
        }
    }
    let mut tokens = HashSet::new();
    for challenge in &config.acme_challenges {
        let token = challenge.token.as_str();
        assert!(base64url(token) && token.len() <= 128, "{token:?}");
        assert!(tokens.insert(token), "{token} twice");
        let rest = challenge
            .key_authorization
            .strip_prefix(token)
            .and_then(|rest| rest.strip_prefix('.'));
        assert!(rest.is_some_and(base64url), "{challenge:?}");
        assert!(challenge.key_authorization.len() <= 256);
    }
});
