//! The size decisions, per request: at the headers (Content-Length, Expect) and per body chunk.
//!
//! Unlike Kong before its fixes for chunked (Kong PR #13303) and HTTP/2 (Kong #12604) bodies,
//! a missing Content-Length is never trusted: the streamed bytes are counted, and so are they
//! when a Content-Length was given, so a header that lies cannot carry extra bytes past the
//! limit. Nothing is buffered: memory stays flat whatever the upload size.

use kit::{kong_error, LocalResponse};

use crate::Config;

pub const SIZE_EXCEEDED: &str = "Request size limit exceeded";
pub const LENGTH_REQUIRED: &str = "A valid Content-Length header is required";

/// What the filter should do with the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Reject(LocalResponse),
}

/// The request headers the decision depends on, as the client sent them: header values are
/// bytes, and none of them can make the decision fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    pub content_length: Option<&'a [u8]>,
    pub expect: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
    /// `request.id`: the data plane's request id, for Kong's error bodies.
    pub request_id: &'a [u8],
    /// The headers end the stream: there is no body at all.
    pub end_of_stream: bool,
    /// The request is HTTP/1.1, where a body without Content-Length is chunked. Over HTTP/2
    /// (and HTTP/3) there is no Transfer-Encoding, so Kong's `require_content_length` refuses
    /// any request there that lacks a Content-Length.
    pub http11: bool,
}

impl RequestHead<'_> {
    fn expects_continue(&self) -> bool {
        self.expect
            .is_some_and(|e| kit::trim_space(e).eq_ignore_ascii_case(b"100-continue"))
    }

    /// Kong's `tonumber(content-length)` for the values a data plane lets through: decimal
    /// digits, surrounding whitespace allowed.
    fn content_length(&self) -> Option<u64> {
        let digits = kit::trim_space(self.content_length?);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // More digits than u64 holds is still a number, and larger than any limit.
        Some(
            digits
                .iter()
                .try_fold(0u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .unwrap_or(u64::MAX),
        )
    }

    /// Kong's `headers["Transfer-Encoding"] ~= "chunked"`: the body streams without a length.
    fn chunked(&self) -> bool {
        self.http11 && !self.end_of_stream
    }

    fn reject_size(&self) -> Verdict {
        let status = if self.expects_continue() { 417 } else { 413 };
        Verdict::Reject(kong_error(
            status,
            SIZE_EXCEEDED,
            self.accept,
            self.request_id,
        ))
    }
}

/// Per-request state: how many body bytes have streamed past.
#[derive(Clone, Debug, Default)]
pub struct BodyCounter {
    received: u64,
    expect_continue: bool,
    accept: Option<Vec<u8>>,
    request_id: Vec<u8>,
}

impl BodyCounter {
    /// The decision at the request headers. A rejection here is answered before any body byte
    /// is read.
    pub fn on_headers(&mut self, config: &Config, head: &RequestHead<'_>) -> Verdict {
        self.expect_continue = head.expects_continue();
        self.accept = head.accept.map(<[u8]>::to_vec);
        self.request_id = head.request_id.to_vec();
        match head.content_length() {
            Some(length) if length > config.limit() => head.reject_size(),
            Some(_) => Verdict::Continue,
            // A data plane strips Transfer-Encoding before the filter sees it: an HTTP/1.1
            // request whose headers do not end the stream and carry no Content-Length is
            // chunked. Without require_content_length any body is counted as it streams.
            None if config.require_content_length && !head.chunked() => Verdict::Reject(
                kong_error(411, LENGTH_REQUIRED, head.accept, head.request_id),
            ),
            None => Verdict::Continue,
        }
    }

    /// Counts a body chunk of `len` bytes; rejects as soon as the total passes the limit.
    pub fn on_body_chunk(&mut self, config: &Config, len: usize) -> Verdict {
        self.received = self.received.saturating_add(len as u64);
        if self.received > config.limit() {
            let status = if self.expect_continue { 417 } else { 413 };
            Verdict::Reject(kong_error(
                status,
                SIZE_EXCEEDED,
                self.accept.as_deref(),
                &self.request_id,
            ))
        } else {
            Verdict::Continue
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SizeUnit;

    fn status(verdict: &Verdict) -> u16 {
        match verdict {
            Verdict::Continue => 0,
            Verdict::Reject(r) => r.status,
        }
    }

    fn kb(n: u64) -> Config {
        Config::new(n, SizeUnit::Kilobytes, false)
    }

    #[test]
    fn content_length_is_compared_at_the_headers() {
        let config = kb(1);
        let head = |cl: &'static str| RequestHead {
            content_length: Some(cl.as_bytes()),
            request_id: b"4c0d6b52-6f1e-4a2b-9a8e-0d1c2b3a4f5e",
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &head("1024"))),
            0
        );
        let over = BodyCounter::default().on_headers(&config, &head("1025"));
        assert_eq!(status(&over), 413);
        let Verdict::Reject(response) = over else {
            unreachable!()
        };
        assert_eq!(
            response.body,
            b"{\n  \"message\":\"Request size limit exceeded\",\n  \
              \"request_id\":\"4c0d6b52-6f1e-4a2b-9a8e-0d1c2b3a4f5e\"\n}"
        );
    }

    #[test]
    fn expect_continue_turns_413_into_417() {
        let head = RequestHead {
            content_length: Some(b"2048".as_slice()),
            expect: Some(b" 100-Continue ".as_slice()),
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&kb(1), &head)),
            417
        );
        let mut counter = BodyCounter::default();
        let chunked = RequestHead {
            expect: Some(b"100-continue".as_slice()),
            ..Default::default()
        };
        assert_eq!(status(&counter.on_headers(&kb(1), &chunked)), 0);
        assert_eq!(status(&counter.on_body_chunk(&kb(1), 1025)), 417);
    }

    #[test]
    fn streamed_bytes_are_counted_even_with_a_content_length() {
        let config = kb(1);
        let mut counter = BodyCounter::default();
        let head = RequestHead {
            content_length: Some(b"10".as_slice()),
            ..Default::default()
        };
        assert_eq!(status(&counter.on_headers(&config, &head)), 0);
        assert_eq!(status(&counter.on_body_chunk(&config, 1000)), 0);
        assert_eq!(status(&counter.on_body_chunk(&config, 24)), 0);
        assert_eq!(counter.received(), 1024);
        assert_eq!(status(&counter.on_body_chunk(&config, 1)), 413);
    }

    #[test]
    fn require_content_length_refuses_bodiless_requests_without_one() {
        let config = Config::new(1, SizeUnit::Kilobytes, true);
        let bodiless = RequestHead {
            end_of_stream: true,
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &bodiless)),
            411
        );
        let chunked = RequestHead {
            http11: true,
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &chunked)),
            0
        );
        // HTTP/2 has no chunked encoding: a body without Content-Length is refused (Kong).
        let h2_stream = RequestHead::default();
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &h2_stream)),
            411
        );
        let with_length = RequestHead {
            content_length: Some(b"0".as_slice()),
            end_of_stream: true,
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &with_length)),
            0
        );
    }

    #[test]
    fn a_non_numeric_content_length_falls_back_to_counting() {
        let config = kb(1);
        let mut counter = BodyCounter::default();
        let head = RequestHead {
            content_length: Some(b"lots".as_slice()),
            ..Default::default()
        };
        assert_eq!(status(&counter.on_headers(&config, &head)), 0);
        assert_eq!(status(&counter.on_body_chunk(&config, 1025)), 413);
    }

    #[test]
    fn header_bytes_outside_utf8_never_fail_the_decision() {
        let config = kb(1);
        let head = RequestHead {
            content_length: Some(b"\xff12"),
            expect: Some(b"\xff100-continue"),
            accept: Some(b"\xfftext/plain"),
            ..Default::default()
        };
        let mut counter = BodyCounter::default();
        assert_eq!(status(&counter.on_headers(&config, &head)), 0);
        assert_eq!(status(&counter.on_body_chunk(&config, 2048)), 413);
    }

    #[test]
    fn content_lengths_beyond_u64_are_over_any_limit() {
        let head = RequestHead {
            content_length: Some(b" 99999999999999999999999 "),
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&kb(1), &head)),
            413
        );
    }
}
