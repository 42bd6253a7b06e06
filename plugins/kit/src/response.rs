//! Kong's error responses (`kong.response.error`): the body format follows the client's
//! `Accept` header, JSON by default.

/// A response the filter answers itself instead of proxying the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Html,
    Xml,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
            Format::Html => "text/html; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
        }
    }

    /// Kong's `get_mime_type`: an exact, case-sensitive lookup of the media type; `type/*`
    /// by its type; anything else (`text/xml`, `Text/HTML`, `image/png`) is the default.
    fn of_media_type(media: &[u8]) -> Format {
        match media {
            b"text/html" => Format::Html,
            b"text/plain" | b"text/*" => Format::Text,
            b"application/xml" => Format::Xml,
            _ => Format::Json,
        }
    }

    /// Kong's `get_response_type`: walks the comma-separated entries in order and lets an
    /// entry replace the choice only when its q is strictly higher than the best so far
    /// (starting from 0, so q=0 never wins). An entry whose type Kong does not render still
    /// wins on q and then renders as the default, JSON. The header is bytes: anything that is
    /// not a well-formed media range is skipped, never an error.
    fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept else {
            return Format::Json;
        };
        let mut best = (0u16, Format::Json);
        for entry in accept.split(|&b| b == b',') {
            if let Some((media, q)) = media_range(trim_space(entry)) {
                if q > best.0 {
                    best = (q, Format::of_media_type(media));
                }
            }
        }
        best.1
    }
}

/// One Accept entry as Kong's pattern reads it: `type/subtype` (each a token of at least two
/// characters, or `*`), then `;` parameters of which the last well-formed `q` counts. The q is
/// returned in thousandths (1000 when absent).
fn media_range(entry: &[u8]) -> Option<(&[u8], u16)> {
    let (media, mut rest) = {
        let first = token_or_star(entry)?;
        let after = entry.get(first..)?.strip_prefix(b"/")?;
        let second = token_or_star(after)?;
        entry.split_at(first + 1 + second)
    };
    let mut q = 1000;
    while let Some(after) = trim_space_start(rest).strip_prefix(b";") {
        let after = trim_space_start(after);
        if let Some((value, len)) = quality(after) {
            q = value;
            rest = &after[len..];
        } else if let Some(len) = token(after) {
            // A parameter: `name`, or `name=` and everything up to the next `;`.
            let after = &after[len..];
            rest = match after.strip_prefix(b"=") {
                Some(value) => {
                    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
                    &value[end..]
                }
                None => after,
            };
        } else {
            break;
        }
    }
    Some((media, q))
}

/// Lua's `%s` and PCRE's `\s`, which Kong strips and skips with: C's `isspace`, so vertical
/// tab (0x0B) too, unlike `u8::is_ascii_whitespace`.
fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim_space_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

pub fn trim_space(bytes: &[u8]) -> &[u8] {
    let bytes = trim_space_start(bytes);
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Length of a `[a-z0-9][a-z0-9-!#$&^_+.]+` token (case-insensitive) at the start.
fn token(bytes: &[u8]) -> Option<usize> {
    let first = bytes.first()?;
    if !first.is_ascii_alphanumeric() {
        return None;
    }
    let len = 1 + bytes[1..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"-!#$&^_+.".contains(b))
        .count();
    (len >= 2).then_some(len)
}

fn token_or_star(bytes: &[u8]) -> Option<usize> {
    if bytes.first() == Some(&b'*') {
        Some(1)
    } else {
        token(bytes)
    }
}

/// `q=1`, `q=1.000`, `q=0`, `q=0.xyz` (up to three digits): the value in thousandths and the
/// length read.
fn quality(bytes: &[u8]) -> Option<(u16, usize)> {
    let rest = bytes
        .strip_prefix(b"q=")
        .or_else(|| bytes.strip_prefix(b"Q="))?;
    let (whole, rest) = rest.split_first()?;
    let mut len = 3;
    let mut value = match whole {
        b'1' => 1000,
        b'0' => 0,
        _ => return None,
    };
    if let Some(fraction) = rest.strip_prefix(b".") {
        len += 1;
        let digits: Vec<u8> = fraction
            .iter()
            .take(3)
            .take_while(|b| {
                if *whole == b'1' {
                    **b == b'0'
                } else {
                    b.is_ascii_digit()
                }
            })
            .copied()
            .collect();
        len += digits.len();
        for (i, d) in digits.iter().enumerate() {
            value += u16::from(d - b'0') * [100, 10, 1][i];
        }
    }
    Some((value, len))
}

/// Kong's error response (`kong.response.error`) for `status` with `message`, formatted for
/// the client's `Accept` (its raw bytes, as the client sent them), in Kong's templates with
/// the data plane's request id (`request.id`: Envoy's and `gateway`'s `x-request-id`).
///
/// Kong pastes both into its templates as they are; here they are escaped for the format, so
/// an `error_message` holding a quote still gives valid JSON. A request id that is not
/// visible ASCII (never one a data plane generates) renders empty, as a missing one does in
/// Kong.
pub fn kong_error(
    status: u16,
    message: &str,
    accept: Option<&[u8]>,
    request_id: &[u8],
) -> LocalResponse {
    let request_id = std::str::from_utf8(request_id)
        .ok()
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("");
    let format = Format::negotiate(accept);
    let body = match format {
        Format::Json => format!(
            "{{\n  \"message\":{},\n  \"request_id\":{}\n}}",
            serde_json::Value::from(message),
            serde_json::Value::from(request_id)
        ),
        Format::Text => format!("{message}\nrequest_id: {request_id}\n"),
        Format::Html => format!(
            "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    \
             <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    \
             <p>{}.</p>\n    <p>request_id: {}</p>\n  </body>\n</html>\n",
            escape_markup(message),
            escape_markup(request_id)
        ),
        Format::Xml => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{}</message>\n  \
             <requestid>{}</requestid>\n</error>\n",
            escape_markup(message),
            escape_markup(request_id)
        ),
    };
    LocalResponse {
        status,
        headers: vec![("content-type".into(), format.content_type().into())],
        body: body.into_bytes(),
    }
}

fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &[u8] = b"a92c2a50-42c0-4760-9e7b-ef457435bdf4";

    #[test]
    fn json_is_the_default() {
        let r = kong_error(413, "Request size limit exceeded", None, ID);
        assert_eq!(r.status, 413);
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
        for accept in [None, Some(&b"*/*"[..]), Some(b"image/png")] {
            assert_eq!(
                kong_error(413, "x", accept, ID).body,
                b"{\n  \"message\":\"x\",\n  \"request_id\":\"a92c2a50-42c0-4760-9e7b-ef457435bdf4\"\n}"
            );
        }
    }

    /// Kong 3.9's `ERROR_TEMPLATES` (kong/tools/http.lua), byte for byte.
    #[test]
    fn every_format_is_kongs_template_with_the_request_id() {
        let body = |accept: &[u8]| {
            String::from_utf8(kong_error(429, "API rate limit exceeded", Some(accept), ID).body)
                .unwrap()
        };
        assert_eq!(
            body(b"application/json"),
            "{\n  \"message\":\"API rate limit exceeded\",\n  \"request_id\":\"a92c2a50-42c0-4760-9e7b-ef457435bdf4\"\n}"
        );
        assert_eq!(
            body(b"text/plain"),
            "API rate limit exceeded\nrequest_id: a92c2a50-42c0-4760-9e7b-ef457435bdf4\n"
        );
        assert_eq!(
            body(b"text/html"),
            "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    <title>Error</title>\n  \
             </head>\n  <body>\n    <h1>Error</h1>\n    <p>API rate limit exceeded.</p>\n    \
             <p>request_id: a92c2a50-42c0-4760-9e7b-ef457435bdf4</p>\n  </body>\n</html>\n"
        );
        assert_eq!(
            body(b"application/xml"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>API rate limit exceeded</message>\n  \
             <requestid>a92c2a50-42c0-4760-9e7b-ef457435bdf4</requestid>\n</error>\n"
        );
    }

    #[test]
    fn a_missing_or_unprintable_request_id_renders_empty() {
        for id in [&b""[..], b"a b", b"\xff", b"x\r\ny"] {
            assert_eq!(
                kong_error(400, "x", Some(b"text/plain"), id).body,
                b"x\nrequest_id: \n"
            );
        }
        assert_eq!(
            kong_error(400, "x", Some(b"text/plain"), b"<&>").body,
            b"x\nrequest_id: <&>\n"
        );
        let xml = kong_error(400, "x", Some(b"application/xml"), b"<&>").body;
        assert!(String::from_utf8(xml)
            .unwrap()
            .contains("<requestid>&lt;&amp;&gt;</requestid>"));
    }

    #[test]
    fn messages_are_escaped_in_every_format() {
        let json = kong_error(400, "a\"b", None, ID).body;
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["message"], "a\"b");
        let xml = kong_error(400, "<a&b>", Some(b"application/xml"), ID).body;
        assert!(String::from_utf8(xml)
            .unwrap()
            .contains("<message>&lt;a&amp;b&gt;</message>"));
    }

    #[test]
    fn accept_selects_the_format_by_preference() {
        let r = kong_error(429, "API rate limit exceeded", Some(b"text/plain"), ID);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        let html = kong_error(
            429,
            "x",
            Some(b"text/html;q=0.9, application/json;q=0.1"),
            ID,
        );
        assert_eq!(
            html.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let json = kong_error(429, "x", Some(b"text/html;q=0, application/json"), ID);
        assert_eq!(
            json.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }

    #[test]
    fn negotiation_is_kongs() {
        let format = |accept: &[u8]| Format::negotiate(Some(accept));
        // A higher q wins even for a type Kong does not render: then it is JSON.
        assert_eq!(format(b"image/png, text/html;q=0.9"), Format::Json);
        assert_eq!(format(b"text/html;q=0.5, image/png"), Format::Json);
        // Equal q: the first stays.
        assert_eq!(format(b"text/html, application/xml"), Format::Html);
        assert_eq!(format(b"text/plain;q=0.2, text/html;q=0.3"), Format::Html);
        // Case-sensitive lookup, text/xml unknown, type/* by its type.
        assert_eq!(format(b"Text/HTML"), Format::Json);
        assert_eq!(format(b"text/xml"), Format::Json);
        assert_eq!(format(b"text/*"), Format::Text);
        assert_eq!(format(b"application/*"), Format::Json);
        // q=0 never wins; a parameter before q; an out-of-range q is ignored (q=1).
        assert_eq!(format(b"text/html;q=0"), Format::Json);
        assert_eq!(
            format(b"application/json;q=0.1, text/html;level=1;q=0.2"),
            Format::Html
        );
        assert_eq!(
            format(b"application/json;q=0.9, text/plain;q=2"),
            Format::Text
        );
        // Malformed entries are skipped; bytes outside ASCII are no problem.
        assert_eq!(format(b"\xff\xfe, text/plain;q=0.5"), Format::Text);
        assert_eq!(format(b"x/y, text/plain"), Format::Text);
        assert_eq!(format(b""), Format::Json);
    }

    /// Kong's pattern reads `q` wherever it stands among the parameters, with up to three
    /// decimals, and the last well-formed one counts.
    #[test]
    fn the_last_well_formed_q_counts_with_three_decimals() {
        let format = |accept: &[u8]| Format::negotiate(Some(accept));
        assert_eq!(
            format(b"text/html;level=1;q=0.1, application/xml;q=0.5"),
            Format::Xml
        );
        assert_eq!(
            format(b"text/plain;q=0.1;q=0.9, text/html;q=0.5"),
            Format::Text
        );
        assert_eq!(
            format(b"text/plain;q=0.5;q=1, text/html;q=0.8"),
            Format::Text
        );
        assert_eq!(
            format(b"text/plain;q=1.000;q=0.5, text/html;q=0.8"),
            Format::Html
        );
        assert_eq!(format(b"text/plain;q=0.25, text/html;q=0.3"), Format::Html);
        assert_eq!(format(b"text/plain;q=0.3, text/html;q=0.299"), Format::Text);
    }

    #[test]
    fn quotes_are_escaped_in_markup() {
        let html = kong_error(400, "a\"b'c", Some(b"text/html"), ID).body;
        assert!(String::from_utf8(html)
            .unwrap()
            .contains("<p>a&quot;b&#39;c.</p>"));
        let xml = kong_error(400, "a\"b'c", Some(b"application/xml"), ID).body;
        assert!(String::from_utf8(xml)
            .unwrap()
            .contains("<message>a&quot;b&#39;c</message>"));
    }
}
