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

    /// What the headers decide, from Content-Length and whether a body streams; the other
    /// headers only shape a refusal.
    fn outcome(&self, config: &Config) -> Outcome {
        match self.content_length() {
            Some(length) if length > config.limit() => Outcome::TooLarge,
            Some(_) => Outcome::Continue,
            // A data plane strips Transfer-Encoding before the filter sees it: an HTTP/1.1
            // request whose headers do not end the stream and carry no Content-Length is
            // chunked. Without require_content_length any body is counted as it streams.
            None if config.require_content_length && !self.chunked() => Outcome::LengthRequired,
            None => Outcome::Continue,
        }
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

/// What the request headers decide, before the refusal is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Continue,
    TooLarge,
    LengthRequired,
}

/// Whether a request whose headers end the stream (no body will follow) passes on its
/// Content-Length alone. Then nothing else of the head matters: Expect, Accept, the protocol
/// and the request id only shape a refusal or the counting of a body, so the adapter reads
/// them only when this is false.
pub fn passes_without_body(config: &Config, content_length: Option<&[u8]>) -> bool {
    let head = RequestHead {
        content_length,
        end_of_stream: true,
        ..RequestHead::default()
    };
    head.outcome(config) == Outcome::Continue
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
        match head.outcome(config) {
            Outcome::Continue => Verdict::Continue,
            Outcome::TooLarge => head.reject_size(),
            Outcome::LengthRequired => Verdict::Reject(kong_error(
                411,
                LENGTH_REQUIRED,
                head.accept,
                head.request_id,
            )),
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

    /// The adapter reads only Content-Length for a request without a body when this says it
    /// passes: that must be `on_headers`'s answer whatever the rest of the head holds.
    #[test]
    fn a_bodiless_request_is_decided_by_its_content_length_alone() {
        let lengths: [Option<&[u8]>; 7] = [
            None,
            Some(b"0"),
            Some(b" 1024 "),
            Some(b"1025"),
            Some(b""),
            Some(b"12x"),
            Some(b"99999999999999999999999"),
        ];
        for require in [false, true] {
            let config = Config::new(1, SizeUnit::Kilobytes, require);
            for content_length in lengths {
                let alone = passes_without_body(&config, content_length);
                for http11 in [false, true] {
                    for expect in [None, Some(b"100-continue".as_slice())] {
                        let head = RequestHead {
                            content_length,
                            expect,
                            accept: Some(b"text/html"),
                            request_id: b"id",
                            end_of_stream: true,
                            http11,
                        };
                        let verdict = BodyCounter::default().on_headers(&config, &head);
                        assert_eq!(
                            alone,
                            verdict == Verdict::Continue,
                            "{require} {content_length:?} {http11} {expect:?}"
                        );
                    }
                }
            }
        }
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
