//! `policy: redis`: the request to the rate-limit service (Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, served by the
//! `wasmgate-ratelimit` crate on Redis) and its answer, as protobuf encoded and decoded by hand:
//! the few fields used are not worth a protobuf runtime in the module.
//!
//! The request has the plugin instance as its domain and one descriptor per configured period,
//! shortest first: the identifier as its one entry (`ip`, `service`, `header` or `path`, with
//! the identifier as text; `<source>.hex` and hex digits for bytes outside UTF-8), the limit as
//! its `limit` override (`requests_per_unit`, the ceiling of Kong's limit, and the period as
//! `unit`), and wasmgate's own entries when needed: `wasmgate.limit` (the exact limit, when it
//! is not an integer) and `wasmgate.window: sliding`. The answer's statuses, one per
//! descriptor in order, give each period's code and `limit_remaining`.

use crate::limiter::Source;
use crate::{Period, WindowType};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Envoy's `RateLimitResponse.Code`.
pub const CODE_OK: u64 = 1;
pub const CODE_OVER_LIMIT: u64 = 2;

/// One descriptor's status in the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub code: u64,
    pub limit_remaining: u64,
}

/// The service's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub overall_code: u64,
    pub statuses: Vec<Status>,
}

/// Envoy's `RateLimit.Unit` of a period.
pub fn unit(period: Period) -> u64 {
    match period {
        Period::Second => 1,
        Period::Minute => 2,
        Period::Hour => 3,
        Period::Day => 4,
        Period::Month => 5,
        Period::Year => 6,
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    tag(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint_field(out: &mut Vec<u8>, field: u64, n: u64) {
    tag(out, field, 0);
    varint(out, n);
}

fn entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let mut e = Vec::with_capacity(key.len() + value.len() + 4);
    bytes_field(&mut e, 1, key);
    bytes_field(&mut e, 2, value);
    bytes_field(out, 1, &e);
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Ip => "ip",
        Source::Service => "service",
        Source::Header => "header",
        Source::Path => "path",
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect()
}

/// Kong's limit as text that parses back to the same number (Rust prints the shortest such).
fn exact(limit: f64) -> Vec<u8> {
    format!("{limit}").into_bytes()
}

/// The encoded `RateLimitRequest` for one request of identifier `(source, identifier)`.
pub fn encode_request(
    domain: &[u8],
    limits: &[(Period, f64)],
    window_type: WindowType,
    (source, identifier): (Source, &[u8]),
) -> Vec<u8> {
    // A domain outside UTF-8 (a plugin name is the host's bytes) would make the request
    // undecodable: such bytes are replaced, which only merges instances with such names.
    let domain = String::from_utf8_lossy(domain);
    let (key, value): (Vec<u8>, Vec<u8>) = match std::str::from_utf8(identifier) {
        Ok(text) => (source_name(source).into(), text.into()),
        Err(_) => (
            format!("{}.hex", source_name(source)).into_bytes(),
            hex(identifier),
        ),
    };
    let mut out = Vec::with_capacity(64 + limits.len() * (key.len() + value.len() + 40));
    bytes_field(&mut out, 1, domain.as_bytes());
    for &(period, limit) in limits {
        let mut descriptor = Vec::with_capacity(key.len() + value.len() + 40);
        entry(&mut descriptor, &key, &value);
        let requests = limit.ceil();
        if requests != limit || requests > f64::from(u32::MAX) {
            entry(&mut descriptor, b"wasmgate.limit", &exact(limit));
        }
        if window_type == WindowType::Sliding {
            entry(&mut descriptor, b"wasmgate.window", b"sliding");
        }
        let mut limit_override = Vec::with_capacity(12);
        varint_field(
            &mut limit_override,
            1,
            requests.min(f64::from(u32::MAX)) as u64,
        );
        varint_field(&mut limit_override, 2, unit(period));
        bytes_field(&mut descriptor, 2, &limit_override);
        bytes_field(&mut out, 2, &descriptor);
    }
    out
}

/// A protobuf reader over one message.
struct Reader<'a> {
    bytes: &'a [u8],
}

/// A field's value: a varint, or the bytes of a length-delimited field (fixed-width fields are
/// skipped as `Skipped`).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.bytes.split_first().ok_or("truncated varint")?;
            self.bytes = rest;
            n |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.bytes.len() {
            return Err("truncated field");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next field's number and value; `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, &'static str> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Skipped
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Skipped
            }
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn decode_status(bytes: &[u8]) -> Result<Status, &'static str> {
    let mut status = Status::default();
    let mut reader = Reader { bytes };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Varint(code)) => status.code = code,
            (3, Value::Varint(remaining)) => status.limit_remaining = remaining,
            (1 | 3, _) => return Err("a status field of the wrong type"),
            _ => {}
        }
    }
    Ok(status)
}

/// Decodes a `RateLimitResponse`: its overall code and statuses; every other field is skipped.
/// Total: any bytes give an answer or an error.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, &'static str> {
    let mut answer = Answer::default();
    let mut reader = Reader { bytes };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Varint(code)) => answer.overall_code = code,
            (2, Value::Bytes(status)) => answer.statuses.push(decode_status(status)?),
            (1 | 2, _) => return Err("a response field of the wrong type"),
            _ => {}
        }
    }
    Ok(answer)
}
