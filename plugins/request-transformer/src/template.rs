//! Kong's value templates, without Lua.
//!
//! Kong renders every value with Penlight templates: `$(expr)` is a Lua expression evaluated
//! in a sandbox. wasmgate accepts exactly the expressions Kong documents, and refuses anything
//! else at configure time (nothing in a config is ever executed):
//!
//! - `headers.name`, `headers["x-name"]` (a missing `headers.x_y` also tries `x-y`, as nginx's
//!   header table does), `query_params.name`, `query_params["name"]`,
//!   `uri_captures.name`, `uri_captures["name"]`, `uri_captures[1]`;
//! - quoted literals `"text"` / `'text'`;
//! - `a or b or "default"`: the first operand that exists (an empty value exists, as in Lua).
//!
//! An expression is `$(` up to the `)` that balances it, counting parentheses and ignoring
//! quotes (Penlight's `$%b()`). An expression whose operands are all missing renders as an
//! empty string, as Penlight's `(expr or '')`. Values come from the original request, as
//! bytes. A bare `$NAME` and an unbalanced `$(` are literal text, as in Kong. Sandboxed Lua
//! (`$(type(headers.x))`, arithmetic, `shared`) is refused: nothing in a config is executed.
//!
//! Beyond Kong, text may hold secret references `{vault://env/NAME}` (Kong's vault syntax,
//! also inside a longer value such as `Bearer {vault://env/TOKEN}`); they are resolved once,
//! when the configuration is parsed, by the caller's resolver.

use std::fmt;

/// Where a lookup reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Headers,
    QueryParams,
    UriCaptures,
}

impl Source {
    fn from_name(name: &str) -> Option<Source> {
        match name {
            "headers" => Some(Source::Headers),
            "query_params" => Some(Source::QueryParams),
            "uri_captures" => Some(Source::UriCaptures),
            _ => None,
        }
    }
}

/// One operand of an `or` chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A key of a request table; integer keys (`uri_captures[1]`) are kept as their digits.
    Lookup(Source, String),
    Literal(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Expr(Vec<Operand>),
}

/// A parsed value: literal text (secrets already resolved) and expressions.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// Whether any text came from a secret (so the value is never logged).
    secret: bool,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            return f.write_str("Template(<contains a secret>)");
        }
        f.debug_list().entries(&self.pieces).finish()
    }
}

/// The request values templates read, always from the original request.
pub trait Lookup {
    /// A request header by lower-case name (all values joined with ", "), if present.
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// A decoded query argument (the first of repeated ones), if present.
    fn query(&self, name: &str) -> Option<Vec<u8>>;
    /// A URI capture by name or by its index digits, if the route's regex captured it.
    fn capture(&self, key: &str) -> Option<Vec<u8>>;
}

/// Resolves a secret reference (the text between `{vault://` and `}`) to its value.
pub type SecretResolver<'a> = &'a dyn Fn(&str) -> Result<String, String>;

const VAULT_PREFIX: &str = "{vault://";

/// For each `(` of `text`, the index of the `)` that balances it, if any: Lua's `%b()`, which
/// Penlight uses to find `$(...)`, counts parentheses and ignores quotes. One pass, so a
/// value of many unbalanced `$(` stays linear.
fn balancing_parens(text: &[u8]) -> Vec<Option<usize>> {
    let mut closing = vec![None; text.len()];
    let mut open = Vec::new();
    for (i, &b) in text.iter().enumerate() {
        crate::steps::step();
        match b {
            b'(' => open.push(i),
            b')' => {
                if let Some(start) = open.pop() {
                    if let Some(slot) = closing.get_mut(start) {
                        *slot = Some(i);
                    }
                }
            }
            _ => {}
        }
    }
    closing
}

impl Template {
    /// A template of plain text (no expressions, no secrets).
    pub fn text(text: &str) -> Template {
        Template {
            pieces: vec![Piece::Text(text.to_owned())],
            secret: false,
        }
    }

    /// Parses a configured value (fuzzing entry point): total on any text, linear in its
    /// length. Errors say what is wrong without echoing secret values.
    pub fn parse(value: &str, secrets: SecretResolver<'_>) -> Result<Template, String> {
        let closing = balancing_parens(value.as_bytes());
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut secret = false;
        let mut at = 0;
        while let Some(rest) = value.get(at..).filter(|r| !r.is_empty()) {
            crate::steps::step();
            if rest.starts_with("$(") {
                if let Some(end) = closing.get(at + 1).copied().flatten() {
                    let expr = value.get(at + 2..end).unwrap_or_default();
                    let operands = parse_expression(expr)?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Expr(operands));
                    at = end + 1;
                    continue;
                }
                // Unbalanced: literal text, as Penlight leaves it.
            } else if let Some(after) = rest.strip_prefix(VAULT_PREFIX) {
                let Some(end) = after.find('}') else {
                    return Err("unterminated secret reference (missing '}')".into());
                };
                text.push_str(&secrets(after.get(..end).unwrap_or_default())?);
                secret = true;
                at += VAULT_PREFIX.len() + end + 1;
                continue;
            }
            if let Some(c) = rest.chars().next() {
                text.push(c);
                at += c.len_utf8();
            }
        }
        if !text.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { pieces, secret })
    }

    /// Whether the value holds a resolved secret.
    pub fn has_secret(&self) -> bool {
        self.secret
    }

    /// Whether any expression reads `source`.
    pub fn reads(&self, source: Source) -> bool {
        self.pieces.iter().any(|p| match p {
            Piece::Expr(ops) => ops
                .iter()
                .any(|o| matches!(o, Operand::Lookup(s, _) if *s == source)),
            Piece::Text(_) => false,
        })
    }

    /// The literal text of a template without expressions.
    pub fn as_text(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The text pieces (for configure-time validation of literal parts).
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Text(t) => Some(t.as_str()),
            Piece::Expr(_) => None,
        })
    }

    /// Renders with request values (fuzzing entry point): the bytes as they are, never
    /// re-encoded; an expression whose operands are all missing renders empty.
    pub fn render(&self, lookup: &dyn Lookup) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Expr(operands) => {
                    for operand in operands {
                        let value = match operand {
                            Operand::Literal(s) => Some(s.as_bytes().to_vec()),
                            Operand::Lookup(Source::Headers, key) => {
                                let key = key.to_ascii_lowercase();
                                lookup
                                    .header(&key)
                                    .or_else(|| lookup.header(&key.replace('_', "-")))
                            }
                            Operand::Lookup(Source::QueryParams, key) => lookup.query(key),
                            Operand::Lookup(Source::UriCaptures, key) => lookup.capture(key),
                        };
                        if let Some(value) = value {
                            out.extend_from_slice(&value);
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Int(String),
    Dot,
    Open,
    Close,
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => tokens.push(Token::Dot),
            '[' => tokens.push(Token::Open),
            ']' => tokens.push(Token::Close),
            '"' | '\'' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, d)) = chars.next() {
                    match d {
                        '\\' => match chars.next() {
                            Some((_, e @ ('\\' | '"' | '\''))) => s.push(e),
                            _ => return Err("unsupported escape in a string literal".into()),
                        },
                        d if d == c => {
                            closed = true;
                            break;
                        }
                        d => s.push(d),
                    }
                }
                if !closed {
                    return Err("unterminated string literal".into());
                }
                tokens.push(Token::Str(s));
            }
            c if c.is_ascii_digit() => {
                let mut s = String::from(c);
                while let Some(&(_, d)) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                tokens.push(Token::Int(s));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&(_, d)) = chars.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                tokens.push(Token::Name(s));
            }
            _ => {
                return Err(format!(
                    "unexpected {c:?} at position {}: only lookups, quoted strings and 'or' \
                     are supported",
                    i + 1
                ))
            }
        }
    }
    Ok(tokens)
}

fn parse_expression(expr: &str) -> Result<Vec<Operand>, String> {
    let tokens = tokenize(expr)?;
    let mut operands = Vec::new();
    let mut it = tokens.into_iter().peekable();
    loop {
        let operand = match it.next() {
            Some(Token::Str(s)) => Operand::Literal(s),
            Some(Token::Name(name)) => {
                let Some(source) = Source::from_name(&name) else {
                    return Err(format!(
                        "'{name}' is not supported: use headers, query_params, uri_captures \
                         or a quoted string"
                    ));
                };
                let key = match (it.next(), source) {
                    (Some(Token::Dot), _) => match it.next() {
                        Some(Token::Name(key)) => key,
                        _ => return Err(format!("expected a key after '{name}.'")),
                    },
                    (Some(Token::Open), _) => {
                        let key = match (it.next(), source) {
                            (Some(Token::Str(key)), _) => key,
                            (Some(Token::Int(index)), Source::UriCaptures) => index,
                            _ => {
                                return Err(format!("expected a quoted key in '{name}[...]'"));
                            }
                        };
                        if it.next() != Some(Token::Close) {
                            return Err(format!("expected ']' after the key of '{name}'"));
                        }
                        key
                    }
                    _ => return Err(format!("expected '.' or '[' after '{name}'")),
                };
                Operand::Lookup(source, key)
            }
            Some(_) => return Err("expected a lookup or a quoted string".into()),
            None => return Err("empty expression".into()),
        };
        operands.push(operand);
        match it.next() {
            None => return Ok(operands),
            Some(Token::Name(kw)) if kw == "or" => {}
            Some(_) => return Err("expected 'or' between operands".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Req {
        headers: HashMap<&'static str, &'static [u8]>,
        query: HashMap<&'static str, &'static str>,
        captures: HashMap<&'static str, &'static str>,
    }

    impl Lookup for Req {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).map(|v| v.to_vec())
        }
        fn query(&self, name: &str) -> Option<Vec<u8>> {
            self.query.get(name).map(|v| v.as_bytes().to_vec())
        }
        fn capture(&self, key: &str) -> Option<Vec<u8>> {
            self.captures.get(key).map(|v| v.as_bytes().to_vec())
        }
    }

    fn req() -> Req {
        Req {
            headers: HashMap::from([
                ("x-api-key", &b"k1"[..]),
                ("host", b"example.test"),
                ("e", b""),
                ("raw", b"\x80\xff\r\n\x00"),
            ]),
            query: HashMap::from([("q", "v q")]),
            captures: HashMap::from([("user", "bob"), ("1", "bob")]),
        }
    }

    fn no_secrets(r: &str) -> Result<String, String> {
        Err(format!("unexpected secret {r}"))
    }

    fn render(t: &str) -> String {
        let t = Template::parse(t, &no_secrets).unwrap();
        String::from_utf8(t.render(&req())).unwrap()
    }

    #[test]
    fn lookups_render_values_of_the_request() {
        assert_eq!(render("$(headers.x_api_key)"), "k1");
        assert_eq!(render("key=$(headers[\"x-api-key\"])!"), "key=k1!");
        assert_eq!(render("$(headers['X-Api-Key'])"), "k1");
        assert_eq!(render("$(query_params.q)"), "v q");
        assert_eq!(render("$(query_params[\"q\"])"), "v q");
        assert_eq!(
            render("/u/$(uri_captures.user)/$(uri_captures[1])"),
            "/u/bob/bob"
        );
        assert_eq!(render("$(uri_captures[\"user\"])"), "bob");
    }

    #[test]
    fn or_takes_the_first_present_operand() {
        assert_eq!(render("$(headers.missing or query_params.q)"), "v q");
        assert_eq!(render("$(headers.missing or 'dflt')"), "dflt");
        assert_eq!(
            render("$(headers.e or 'dflt')"),
            "",
            "an empty value exists"
        );
        assert_eq!(render("$(headers.missing)"), "");
        assert_eq!(render("$( uri_captures.nope or \"a\\\"b\" )"), "a\"b");
    }

    #[test]
    fn dollar_names_and_unbalanced_parentheses_are_text() {
        assert_eq!(
            render("Bearer $SECRET_TOKEN_VALUE"),
            "Bearer $SECRET_TOKEN_VALUE"
        );
        assert_eq!(render("a $(b"), "a $(b");
        assert_eq!(render("$"), "$");
        assert_eq!(render("é$(query_params.q)ü"), "év qü");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "$(ERROR())",
            "$(10 * uri_captures.user1)",
            "$(shared.written = true)",
            "$(type(headers.x))",
            "$(headers)",
            "$(headers.)",
            "$(headers[1])",
            "$(headers.a headers.b)",
            "$(headers.a or)",
            "$()",
            "$(os.execute('x'))",
            "$(uri_captures user2)",
            "$('unterminated)",
            "$(\"\\n\")",
        ] {
            assert!(
                Template::parse(bad, &no_secrets).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn sources_are_known_and_bytes_render_as_they_are() {
        let t = Template::parse("$(uri_captures.x)", &no_secrets).unwrap();
        assert!(t.reads(Source::UriCaptures));
        assert!(!t.reads(Source::Headers));
        let raw = Template::parse("<$(headers.raw)>", &no_secrets).unwrap();
        assert_eq!(raw.render(&req()), b"<\x80\xff\r\n\x00>");
    }

    #[test]
    fn configured_text_with_any_characters_is_kept() {
        let t = Template::parse("a\r\n\u{0}\u{ff}$(headers.raw)", &no_secrets).unwrap();
        assert_eq!(t.render(&req()), b"a\r\n\x00\xc3\xbf\x80\xff\r\n\x00");
        assert!(Template::parse("$(headers[\"\u{0}\u{ff}\"])", &no_secrets).is_ok());
    }

    #[test]
    fn expressions_end_at_the_balancing_parenthesis_like_penlight() {
        // Lua's %b() ignores quotes: the expression is `headers[")"`, which is refused.
        assert!(Template::parse("$(headers[\")\"])", &no_secrets).is_err());
        // Nested parentheses balance, and a parenthesised expression is refused as Lua.
        assert!(Template::parse("$((headers.x))", &no_secrets).is_err());
        // Many unbalanced `$(`: literal text, and linear.
        let many = "$(".repeat(100_000);
        let (rendered, steps) = crate::steps::counted(|| render(&many));
        assert_eq!(rendered, many);
        // One step per byte to balance the parentheses and one per character of text.
        assert!(steps <= 2 * many.len() as u64, "{steps} steps");
    }

    #[test]
    fn secrets_are_resolved_once_and_never_debug_printed() {
        let resolve = |r: &str| -> Result<String, String> {
            assert_eq!(r, "env/TOKEN");
            Ok("s3cr3t".into())
        };
        let t = Template::parse("Bearer {vault://env/TOKEN}", &resolve).unwrap();
        assert!(t.has_secret());
        assert_eq!(t.as_text(), Some("Bearer s3cr3t"));
        assert_eq!(format!("{t:?}"), "Template(<contains a secret>)");
        // Text after a reference follows it.
        let t = Template::parse("a{vault://env/TOKEN}b", &resolve).unwrap();
        assert_eq!(t.as_text(), Some("as3cr3tb"));
        let err = Template::parse("x {vault://env/TOKEN", &resolve).unwrap_err();
        assert!(err.contains("unterminated"));
        // A secret's value is never parsed as a template.
        let tricky = |_: &str| -> Result<String, String> { Ok("$(headers.x)".into()) };
        let t = Template::parse("{vault://env/T}", &tricky).unwrap();
        assert_eq!(t.as_text(), Some("$(headers.x)"));
    }

    #[test]
    fn only_or_joins_operands() {
        assert_eq!(render("$(headers.missing or 'fallback')"), "fallback");
        for bad in [
            "$(headers.a and 'x')",
            "$(headers.a OR 'x')",
            "$(headers.a xor 'x')",
        ] {
            let err = Template::parse(bad, &no_secrets).unwrap_err();
            assert!(
                err.contains("expected 'or' between operands"),
                "{bad}: {err}"
            );
        }
    }
}
