//! `request_size_limiting::BodyCounter`: any request head (Content-Length, Expect and Accept
//! as arbitrary bytes; with or without a body; HTTP/1.1 or not) and any chunk sizes, checked
//! against a model of the plugin's decision:
//!
//! - at the headers: 413 (417 with `Expect: 100-continue`) when a numeric Content-Length is
//!   over the limit, 411 when `require_content_length` and there is no usable length and the
//!   body is not chunked, else continue;
//! - per chunk: the running total is compared with the limit, whatever Content-Length said:
//!   the bytes admitted never exceed the limit, and the first chunk that crosses it is
//!   refused (so nothing under the limit is ever refused);
//! - every refusal is Kong's error format for the client's Accept.
//!
//! Input: size (2 bytes), unit, flags, then Content-Length, Expect and Accept as
//! length-prefixed fields (255: absent), then chunk sizes (2 bytes each, scaled by the
//! flags).
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_size_limiting::limiter::{LENGTH_REQUIRED, SIZE_EXCEEDED};
use request_size_limiting::{BodyCounter, Config, RequestHead, SizeUnit, Verdict};
use wasmgate_fuzz::Bytes;

/// Lua's `isspace` (Kong's `tonumber` and `strip`): vertical tab too.
fn lua_trim(bytes: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// A Content-Length the plugin trusts: decimal digits, optional surrounding whitespace;
/// saturating (a number too large for u64 is over any limit).
fn content_length(value: Option<&[u8]>) -> Option<u64> {
    let digits = lua_trim(value?);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn status(verdict: &Verdict, accept: Option<&[u8]>, message: &str) -> u16 {
    match verdict {
        Verdict::Continue => 0,
        Verdict::Reject(response) => {
            let expected = kit::kong_error(response.status, message, accept, b"fuzz-request-id");
            assert_eq!(*response, expected, "Kong's error for the client's Accept");
            response.status
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes(data);
    let size = u64::from(r.u16());
    let unit =
        [SizeUnit::Bytes, SizeUnit::Kilobytes, SizeUnit::Megabytes][usize::from(r.byte() % 3)];
    let flags = r.byte();
    let config = Config::new(size, unit, flags & 1 != 0);
    let head = RequestHead {
        content_length: r.field(),
        expect: r.field(),
        accept: r.field(),
        request_id: b"fuzz-request-id",
        end_of_stream: flags & 2 != 0,
        http11: flags & 4 != 0,
    };
    let scale: u64 = [1, 1 << 10, 1 << 16, 1 << 20][usize::from(flags >> 3 & 3)];
    let limit = size * unit.bytes();
    assert_eq!(config.limit(), limit);

    let expect_continue = head
        .expect
        .is_some_and(|e| lua_trim(e).eq_ignore_ascii_case(b"100-continue"));
    let too_large = if expect_continue { 417 } else { 413 };
    let length = content_length(head.content_length);
    let chunked = head.http11 && !head.end_of_stream;
    let expected = match length {
        Some(n) if n > limit => too_large,
        Some(_) => 0,
        None if config.require_content_length && !chunked => 411,
        None => 0,
    };

    let mut counter = BodyCounter::default();
    let verdict = counter.on_headers(&config, &head);
    let message = if expected == 411 {
        LENGTH_REQUIRED
    } else {
        SIZE_EXCEEDED
    };
    assert_eq!(
        status(&verdict, head.accept, message),
        expected,
        "at the headers"
    );
    if expected != 0 || head.end_of_stream {
        return;
    }
    let mut admitted: u64 = 0;
    while !r.is_empty() {
        let len = u64::from(r.u16()) * scale;
        let verdict = counter.on_body_chunk(&config, len as usize);
        let total = admitted + len;
        assert_eq!(counter.received(), total);
        let expected = if total > limit { too_large } else { 0 };
        assert_eq!(
            status(&verdict, head.accept, SIZE_EXCEEDED),
            expected,
            "chunk"
        );
        if expected != 0 {
            return;
        }
        admitted = total;
        assert!(admitted <= limit, "over-admitted");
    }
});
