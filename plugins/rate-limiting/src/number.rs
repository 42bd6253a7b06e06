//! Numbers printed as Kong prints them: Lua's `tostring` (C's `%.14g`) for the header values,
//! and `%.1f` in the periods-order message of the schema.
//!
//! Both round the exact binary value of the double (ties to even, as glibc does), so the
//! decimal expansion is computed exactly with a small base-10⁹ bignum. Hand-written: core's
//! float formatting would add ~40 KB to the module, and it has no `%g`.

/// Lua's `tostring(value)`: `%.14g`.
pub fn lua_tostring(value: f64) -> String {
    if let Some(special) = special(value) {
        return special;
    }
    if value == 0.0 {
        return format!("{}0", sign(value));
    }
    // Integers of up to 14 digits print as themselves (the common case: every header value
    // of an integer limit).
    if value.fract() == 0.0 && value.abs() < 1e14 {
        return (value as i64).to_string();
    }
    const PRECISION: usize = 14;
    let (mut digits, mut point) = exact_digits(value.abs());
    round_at(&mut digits, &mut point, PRECISION);
    // The exponent %e would print: the first digit is at 10^(point - 1).
    let exponent = point - 1;
    let mut out = String::from(sign(value));
    if exponent < -4 || exponent >= PRECISION as i32 {
        let (first, rest) = digits.split_first().unwrap_or((&0, &[]));
        out.push(char::from(b'0' + first));
        if !rest.is_empty() {
            out.push('.');
            push_digits(&mut out, rest);
        }
        out.push('e');
        out.push(if exponent < 0 { '-' } else { '+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        out.push_str(&magnitude.to_string());
    } else {
        push_fixed(&mut out, &digits, point);
    }
    out
}

/// C's `%.1f`.
pub fn one_decimal(value: f64) -> String {
    if let Some(special) = special(value) {
        return special;
    }
    let (mut digits, mut point) = exact_digits(value.abs());
    if point < 1 {
        // Leading zeros up to the units digit, so that rounding sees every position.
        let zeros = (1 - point) as usize;
        digits.splice(0..0, std::iter::repeat_n(0, zeros));
        point = 1;
    }
    let keep = point as usize + 1;
    round_at(&mut digits, &mut point, keep);
    let units = point.max(1) as usize;
    digits.resize(units + 1, 0);
    let first_significant = digits
        .iter()
        .take(units - 1)
        .position(|&d| d != 0)
        .unwrap_or(units - 1);
    let mut out = String::from(sign(value));
    push_digits(
        &mut out,
        digits.get(first_significant..units).unwrap_or(&[0]),
    );
    out.push('.');
    push_digits(&mut out, digits.get(units..).unwrap_or(&[0]));
    out
}

fn sign(value: f64) -> &'static str {
    if value.is_sign_negative() {
        "-"
    } else {
        ""
    }
}

/// What C prints for infinities and NaN.
fn special(value: f64) -> Option<String> {
    if value.is_nan() {
        Some(format!("{}nan", sign(value)))
    } else if value.is_infinite() {
        Some(format!("{}inf", sign(value)))
    } else {
        None
    }
}

fn push_digits(out: &mut String, digits: &[u8]) {
    out.extend(digits.iter().map(|&d| char::from(b'0' + d)));
}

/// `digits` (no trailing zeros) with the decimal point after `point` of them.
fn push_fixed(out: &mut String, digits: &[u8], point: i32) {
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        push_digits(out, digits);
        return;
    }
    let point = point as usize;
    match digits.split_at_checked(point) {
        Some((whole, fraction)) => {
            push_digits(out, whole);
            if !fraction.is_empty() {
                out.push('.');
                push_digits(out, fraction);
            }
        }
        None => {
            push_digits(out, digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
        }
    }
}

/// Keeps the first `keep` digits, rounding the exact value to nearest, ties to even; a carry
/// out of the first digit moves the point. Trailing zeros are dropped.
fn round_at(digits: &mut Vec<u8>, point: &mut i32, keep: usize) {
    if digits.len() > keep {
        let next = digits.get(keep).copied().unwrap_or(0);
        let beyond = digits.iter().skip(keep + 1).any(|&d| d != 0);
        let last_odd = keep
            .checked_sub(1)
            .and_then(|i| digits.get(i))
            .is_some_and(|d| d % 2 == 1);
        let up = next > 5 || (next == 5 && (beyond || last_odd));
        digits.truncate(keep);
        if up {
            let mut carried = true;
            for digit in digits.iter_mut().rev() {
                if *digit == 9 {
                    *digit = 0;
                } else {
                    *digit += 1;
                    carried = false;
                    break;
                }
            }
            if carried {
                digits.insert(0, 1);
                *point += 1;
            }
        }
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
}

/// The exact decimal expansion of a finite, non-negative double: its digits (no leading or
/// trailing zeros; empty for zero) and `point`, with value = 0.d₁d₂d₃… × 10^point.
fn exact_digits(value: f64) -> (Vec<u8>, i32) {
    const BASE: u64 = 1_000_000_000;
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | 1 << 52, biased - 1075)
    };
    if mantissa == 0 {
        return (Vec::new(), 0);
    }
    // value = mantissa × 2^exponent = mantissa × 5^-exponent × 10^exponent when negative.
    let mut limbs: Vec<u64> = vec![mantissa % BASE, mantissa / BASE];
    let mut multiply = |factor: u64, times: u32| {
        for _ in 0..times {
            let mut carry = 0;
            for limb in limbs.iter_mut() {
                let product = *limb * factor + carry;
                *limb = product % BASE;
                carry = product / BASE;
            }
            while carry > 0 {
                limbs.push(carry % BASE);
                carry /= BASE;
            }
        }
    };
    let mut shift = 0;
    if exponent >= 0 {
        let e = exponent.unsigned_abs();
        multiply(1 << 29, e / 29);
        multiply(1 << (e % 29), 1);
    } else {
        let e = exponent.unsigned_abs();
        multiply(244_140_625, e / 12); // 5^12
        multiply(5u64.pow(e % 12), 1);
        shift = exponent;
    }
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut text = String::new();
    for (i, limb) in limbs.iter().rev().enumerate() {
        if i == 0 {
            text.push_str(&limb.to_string());
        } else {
            text.push_str(&format!("{limb:09}"));
        }
    }
    let mut digits: Vec<u8> = text.bytes().map(|b| b - b'0').collect();
    let point = digits.len() as i32 + shift;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    (digits, point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tostring_is_percent_14g() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (100.0, "100"),
            (0.25, "0.25"),
            (1.5, "1.5"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.3"),
            (2.0 / 3.0, "0.66666666666667"),
            (1.0 / 3.0, "0.33333333333333"),
            (123_456.789, "123456.789"),
            (99_999_999_999_999.0, "99999999999999"),
            (1e14, "1e+14"),
            // An exact tie at the 15th digit goes to the even digit.
            (123_456_789_012_345.0, "1.2345678901234e+14"),
            (123_456_789_012_355.0, "1.2345678901236e+14"),
            (99_999_999_999_999.5, "1e+14"),
            (1e300, "1e+300"),
            (f64::MAX, "1.7976931348623e+308"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (5e-324, "4.9406564584125e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for &(value, expected) in cases {
            assert_eq!(lua_tostring(value), expected, "{value:e}");
        }
        assert_eq!(lua_tostring(f64::NAN), "nan");
    }

    #[test]
    fn one_decimal_is_percent_1f() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (10.0, "10.0"),
            (2.26, "2.3"),
            (0.06, "0.1"),
            (0.04, "0.0"),
            // 0.05 is a little above 0.05 in binary; 0.25 is an exact tie (to even); 0.35 is
            // a little below.
            (0.05, "0.1"),
            (0.25, "0.2"),
            (0.35, "0.3"),
            (9.96, "10.0"),
            (999.95, "1000.0"),
            (1e20, "100000000000000000000.0"),
            (1.5e-300, "0.0"),
        ];
        for &(value, expected) in cases {
            assert_eq!(one_decimal(value), expected, "{value:e}");
        }
        let huge = one_decimal(1e300);
        assert!(
            huge.starts_with("10000000000000000525047602552044202487"),
            "{huge}"
        );
        assert!(huge.ends_with(".0") && huge.len() == 303, "{huge}");
    }

    #[test]
    fn exact_digits_of_extremes() {
        assert_eq!(exact_digits(1.0), (vec![1], 1));
        assert_eq!(exact_digits(0.5), (vec![5], 0));
        assert_eq!(exact_digits(1024.0), (vec![1, 0, 2, 4], 4));
        let (digits, point) = exact_digits(f64::MAX);
        assert_eq!(point, 309);
        assert_eq!(digits.len(), 309);
        let (digits, point) = exact_digits(5e-324);
        assert_eq!(point, -323);
        assert_eq!(digits.first(), Some(&4));
        assert_eq!(digits.len(), 751);
    }

    /// Rust's own exact formatting as the oracle, on doubles spread over every magnitude
    /// (exact ties, where C and Rust may differ, have probability zero here).
    #[test]
    fn agrees_with_an_exact_formatter() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = f64::from_bits(state & !(1 << 63));
            if !value.is_finite() {
                continue;
            }
            let scaled = value * 1e-280 * 1e-20;
            for v in [
                value,
                scaled,
                value.fract(),
                (state % 1_000_000) as f64 / 7.0,
            ] {
                assert_eq!(one_decimal(v), format!("{v:.1}"), "{v:e}");
                let oracle = format!("{v:.13e}");
                let (mantissa, exponent) = oracle.split_once('e').unwrap();
                let exponent: i32 = exponent.parse().unwrap();
                let ours = lua_tostring(v);
                let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
                let digits = digits.trim_end_matches('0');
                let ours_digits: String = ours
                    .split('e')
                    .next()
                    .unwrap()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                let ours_digits = ours_digits.trim_start_matches('0').trim_end_matches('0');
                assert_eq!(ours_digits, digits, "{v:e} -> {ours}");
                if (-4..14).contains(&exponent) {
                    assert!(!ours.contains('e'), "{v:e} -> {ours}");
                } else {
                    assert!(
                        ours.ends_with(&format!("{:+03}", exponent)),
                        "{v:e} -> {ours}"
                    );
                }
            }
        }
    }

    /// A fraction that rounds up to a whole number at 14 digits prints as that number, with
    /// every zero of its integer part (C's `%.14g`).
    #[test]
    fn tostring_rounding_up_to_a_whole_number_keeps_its_zeros() {
        assert_eq!(lua_tostring(99.999_999_999_999_9), "100");
        assert_eq!(lua_tostring(9_999_999_999.999_99), "10000000000");
        assert_eq!(lua_tostring(0.000_999_999_999_999_999), "0.001");
    }
}
