//! Findings of the fuzz targets (`fuzz/`, docs/FUZZING.md), each as the smallest input that
//! shows it. They fail until the kit is fixed.

/// `kong_error`: Kong strips each Accept entry with Lua's `%s` (C `isspace`: space, \t, \n,
/// \v, \f, \r) and its pattern's `\s` matches \v too; `trim_ascii` leaves \v (0x0B), so the
/// entry no longer parses and the answer falls back to JSON.
#[test]
fn vertical_tab_is_whitespace_in_accept() {
    for (accept, expected) in [
        (&b"\x0btext/html"[..], "text/html"),
        (b"text/plain;q=0.9, text/html\x0b;q=0.1", "text/plain"),
    ] {
        let response = kit::kong_error(429, "x", Some(accept), b"id");
        let content_type = response.header("content-type").unwrap_or_default();
        assert_eq!(
            content_type.split(';').next(),
            Some(expected),
            "Accept {:?}",
            String::from_utf8_lossy(accept)
        );
    }
}
