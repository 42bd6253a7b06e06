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

/// The request headers the decision depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    pub content_length: Option<&'a str>,
    pub expect: Option<&'a str>,
    pub accept: Option<&'a str>,
    /// The headers end the stream: there is no body at all.
    pub end_of_stream: bool,
}

impl RequestHead<'_> {
    fn expects_continue(&self) -> bool {
        self.expect
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"))
    }

    fn reject_size(&self) -> Verdict {
        let status = if self.expects_continue() { 417 } else { 413 };
        Verdict::Reject(kong_error(status, SIZE_EXCEEDED, self.accept))
    }
}

/// Per-request state: how many body bytes have streamed past.
#[derive(Clone, Debug, Default)]
pub struct BodyCounter {
    received: u64,
    expect_continue: bool,
    accept: Option<String>,
}

impl BodyCounter {
    /// The decision at the request headers. A rejection here is answered before any body byte
    /// is read.
    pub fn on_headers(&mut self, config: &Config, head: &RequestHead<'_>) -> Verdict {
        self.expect_continue = head.expects_continue();
        self.accept = head.accept.map(str::to_owned);
        match head
            .content_length
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(length) if length > config.limit() => head.reject_size(),
            Some(_) => Verdict::Continue,
            // A data plane strips Transfer-Encoding before the filter sees it: a request whose
            // headers do not end the stream and carry no Content-Length is chunked (HTTP/1.1) or
            // an HTTP/2 stream with DATA frames, and is counted as it streams.
            None if config.require_content_length && head.end_of_stream => {
                Verdict::Reject(kong_error(411, LENGTH_REQUIRED, head.accept))
            }
            None => Verdict::Continue,
        }
    }

    /// Counts a body chunk of `len` bytes; rejects as soon as the total passes the limit.
    pub fn on_body_chunk(&mut self, config: &Config, len: usize) -> Verdict {
        self.received = self.received.saturating_add(len as u64);
        if self.received > config.limit() {
            let status = if self.expect_continue { 417 } else { 413 };
            Verdict::Reject(kong_error(status, SIZE_EXCEEDED, self.accept.as_deref()))
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
        let head = |cl| RequestHead {
            content_length: Some(cl),
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
            br#"{"message":"Request size limit exceeded"}"#
        );
    }

    #[test]
    fn expect_continue_turns_413_into_417() {
        let head = RequestHead {
            content_length: Some("2048"),
            expect: Some(" 100-Continue "),
            ..Default::default()
        };
        assert_eq!(
            status(&BodyCounter::default().on_headers(&kb(1), &head)),
            417
        );
        let mut counter = BodyCounter::default();
        let chunked = RequestHead {
            expect: Some("100-continue"),
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
            content_length: Some("10"),
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
        let chunked = RequestHead::default();
        assert_eq!(
            status(&BodyCounter::default().on_headers(&config, &chunked)),
            0
        );
        let with_length = RequestHead {
            content_length: Some("0"),
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
            content_length: Some("lots"),
            ..Default::default()
        };
        assert_eq!(status(&counter.on_headers(&config, &head)), 0);
        assert_eq!(status(&counter.on_body_chunk(&config, 1025)), 413);
    }
}
