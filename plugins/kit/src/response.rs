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
    const ALL: [(&'static str, Format); 5] = [
        ("application/json", Format::Json),
        ("text/plain", Format::Text),
        ("text/html", Format::Html),
        ("application/xml", Format::Xml),
        ("text/xml", Format::Xml),
    ];

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
            Format::Html => "text/html; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
        }
    }

    /// The most preferred supported media type of an Accept header (highest q, then first
    /// listed); JSON when nothing supported is acceptable or the header is absent.
    fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Json;
        };
        let mut best: Option<(f32, Format)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            let format = if media == "*/*" || media == "application/*" {
                Some(Format::Json)
            } else if media == "text/*" {
                Some(Format::Text)
            } else {
                Format::ALL
                    .iter()
                    .find(|(name, _)| *name == media)
                    .map(|(_, f)| *f)
            };
            if let Some(format) = format {
                if best.is_none_or(|(best_q, _)| q > best_q) {
                    best = Some((q, format));
                }
            }
        }
        best.map_or(Format::Json, |(_, f)| f)
    }
}

/// Kong's error response for `status` with `message`, formatted for the client's `Accept`.
pub fn kong_error(status: u16, message: &str, accept: Option<&str>) -> LocalResponse {
    let format = Format::negotiate(accept);
    let body = match format {
        Format::Json => {
            let mut object = serde_json::Map::new();
            object.insert("message".into(), serde_json::Value::String(message.into()));
            serde_json::Value::Object(object).to_string()
        }
        Format::Text => format!("{message}\n"),
        Format::Html => format!(
            "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    \
             <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    \
             <p>{}.</p>\n  </body>\n</html>\n",
            escape_markup(message)
        ),
        Format::Xml => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{}</message>\n</error>\n",
            escape_markup(message)
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

    #[test]
    fn json_is_the_default() {
        let r = kong_error(413, "Request size limit exceeded", None);
        assert_eq!(r.status, 413);
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.body, br#"{"message":"Request size limit exceeded"}"#);
        assert_eq!(
            kong_error(413, "x", Some("*/*")).body,
            br#"{"message":"x"}"#
        );
        assert_eq!(
            kong_error(413, "x", Some("image/png")).body,
            br#"{"message":"x"}"#
        );
    }

    #[test]
    fn messages_are_escaped_in_every_format() {
        assert_eq!(kong_error(400, "a\"b", None).body, br#"{"message":"a\"b"}"#);
        let xml = kong_error(400, "<a&b>", Some("application/xml")).body;
        assert!(String::from_utf8(xml)
            .unwrap()
            .contains("<message>&lt;a&amp;b&gt;</message>"));
    }

    #[test]
    fn accept_selects_the_format_by_preference() {
        let r = kong_error(429, "API rate limit exceeded", Some("text/plain"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.body, b"API rate limit exceeded\n");
        let html = kong_error(429, "x", Some("text/html;q=0.9, application/json;q=0.1"));
        assert_eq!(
            html.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let json = kong_error(429, "x", Some("text/html;q=0, application/json"));
        assert_eq!(
            json.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
}
