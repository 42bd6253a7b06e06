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

/// `config_rate_limiting`: Kong reads a config's numbers with cjson (C `strtod`, the correctly
/// rounded double); serde_json's default parser multiplies by powers of ten and can be a few
/// units in the last place off for long mantissas and large exponents. So one number written
/// two ways (`1.1111111111111111e198` and its 199 digits) read as two different doubles.
#[test]
fn config_numbers_are_read_correctly_rounded() {
    let long = "1111111111111111111111111111111111111111111111111111111111111111111111111111111111\
                555555555555555555555555111111111111111111115555555555511111111111111111111111111\
                111111111111111111111111111115555520";
    for text in [
        "1.1111111111111111e198",
        long,
        "9007199254740993.0000000000000000001",
        "4.9406564584124654e-324",
        "1.7976931348623157e308",
    ] {
        let document = kit::schema::parse_document(format!("{{\"n\": {text}}}").as_bytes())
            .expect("valid JSON");
        let read = document["n"].as_f64().expect("a number");
        let exact: f64 = text.parse().expect("a float");
        assert_eq!(
            read.to_bits(),
            exact.to_bits(),
            "{text}: {read:e} != {exact:e}"
        );
    }
}
