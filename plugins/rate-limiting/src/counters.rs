//! One identifier's counters and the decision over them: Kong's usage check, the increment,
//! and Kong's response headers.
//!
//! The counters of every configured period live in ONE shared-data value per identifier, each
//! with the start of its window, so one compare-and-swap checks and counts all windows at once
//! and the key never changes when a window rolls over (the key space stays bounded).

use crate::config::{Config, WindowType};
use crate::Period;

/// One period's counter: the window it counts, its count, and the count of the window before
/// it (kept for sliding windows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Unix seconds.
    pub start: i64,
    pub count: u64,
    pub previous: u64,
}

/// Every period's counter of one identifier, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub windows: Vec<(Period, Window)>,
}

const VERSION: u8 = 1;
const ENTRY: usize = 1 + 8 + 8 + 8;

impl Counters {
    pub fn get(&self, period: Period) -> Option<Window> {
        self.windows
            .iter()
            .find(|(p, _)| *p == period)
            .map(|(_, w)| *w)
    }

    /// `[version][period code, start i64, count u64, previous u64]*`, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.windows.len() * ENTRY);
        out.push(VERSION);
        for (period, w) in &self.windows {
            out.push(period.code());
            out.extend_from_slice(&w.start.to_le_bytes());
            out.extend_from_slice(&w.count.to_le_bytes());
            out.extend_from_slice(&w.previous.to_le_bytes());
        }
        out
    }

    /// The stored counters; anything unreadable counts as no counters at all.
    pub fn decode(bytes: &[u8]) -> Counters {
        let Some((&VERSION, rest)) = bytes.split_first() else {
            return Counters::default();
        };
        if rest.len() % ENTRY != 0 {
            return Counters::default();
        }
        let word = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            a
        };
        let mut windows = Vec::with_capacity(rest.len() / ENTRY);
        for entry in rest.chunks_exact(ENTRY) {
            let Some(period) = Period::from_code(entry[0]) else {
                return Counters::default();
            };
            windows.push((
                period,
                Window {
                    start: i64::from_le_bytes(word(&entry[1..9])),
                    count: u64::from_le_bytes(word(&entry[9..17])),
                    previous: u64::from_le_bytes(word(&entry[17..25])),
                },
            ));
        }
        Counters { windows }
    }
}

/// The usage of one configured period at the time of a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub period: Period,
    pub limit: f64,
    /// Requests counted in the window (weighted previous window included when sliding).
    pub usage: f64,
    /// The window this request counts in, Unix seconds.
    pub start: i64,
}

impl Usage {
    /// Kong's `remaining = limit - usage`; the period stops the request when it is ≤ 0.
    pub fn remaining(&self) -> f64 {
        self.limit - self.usage
    }
}

/// What the counters say about one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Every configured period, shortest first.
    pub usages: Vec<Usage>,
    /// The shortest period whose limit is reached; `None`: the request is allowed.
    pub stop: Option<Period>,
    /// The counters after counting this request (only written when it is allowed).
    pub next: Counters,
}

/// Evaluates a request at `now_ms` (Unix milliseconds) against the stored counters.
pub fn evaluate(config: &Config, stored: &Counters, now_ms: i64) -> Evaluation {
    let now = now_ms.div_euclid(1000);
    let mut usages = Vec::with_capacity(config.limits.len());
    let mut next = Counters {
        windows: Vec::with_capacity(config.limits.len()),
    };
    let mut stop = None;
    for &(period, limit) in &config.limits {
        let current = period.start(now);
        let (start, count, previous) = match stored.get(period) {
            Some(w) if w.start == current => (current, w.count, w.previous),
            // Another worker read the clock a moment later and already moved the window on:
            // count in its window, never back in an older one.
            Some(w) if w.start > current => (w.start, w.count, w.previous),
            Some(w) if w.start == period.previous(now) => (current, 0, w.count),
            _ => (current, 0, 0),
        };
        let mut usage = count as f64;
        if config.window_type == WindowType::Sliding && previous > 0 {
            let start_ms = start.saturating_mul(1000);
            let end_ms = period.next(start).saturating_mul(1000);
            let length = (end_ms - start_ms).max(1) as f64;
            let left = (end_ms - now_ms).clamp(0, end_ms - start_ms) as f64;
            usage += previous as f64 * left / length;
        }
        let entry = Usage {
            period,
            limit,
            usage,
            start,
        };
        if stop.is_none() && entry.remaining() <= 0.0 {
            stop = Some(period);
        }
        usages.push(entry);
        next.windows.push((
            period,
            Window {
                start,
                count: count.saturating_add(1),
                previous,
            },
        ));
    }
    Evaluation { usages, stop, next }
}

/// Kong's rate-limiting response headers for an evaluation, and the `RateLimit-Reset` value
/// (also `Retry-After` on a rejection).
pub fn headers(config: &Config, eval: &Evaluation, now_ms: i64) -> (Vec<(String, String)>, i64) {
    let now = now_ms.div_euclid(1000);
    let mut out = Vec::with_capacity(2 * eval.usages.len() + 4);
    // (remaining, window length, limit, reset) of the window with the lowest remaining; ties go
    // to the longer window.
    let mut chosen: Option<(f64, i64, f64, i64)> = None;
    for u in &eval.usages {
        let mut remaining = u.remaining();
        if eval.stop.is_none() || eval.stop == Some(u.period) {
            remaining -= 1.0;
        }
        remaining = remaining.max(0.0);
        if config.window_type == WindowType::Sliding {
            remaining = remaining.floor();
        }
        let window = u.period.expiration();
        let better = match chosen {
            None => true,
            Some((best, best_window, _, _)) => {
                remaining < best || (remaining == best && window > best_window)
            }
        };
        if better {
            let elapsed = (now - u.period.start(now)).max(0);
            let reset = (window - elapsed).max(1);
            chosen = Some((remaining, window, u.limit, reset));
        }
        let (limit_name, remaining_name) = u.period.header_names();
        out.push((limit_name.into(), number(u.limit)));
        out.push((remaining_name.into(), number(remaining)));
    }
    let Some((remaining, _, limit, reset)) = chosen else {
        return (out, 1);
    };
    out.push(("RateLimit-Limit".into(), number(limit)));
    out.push(("RateLimit-Remaining".into(), number(remaining)));
    out.push(("RateLimit-Reset".into(), reset.to_string()));
    (out, reset)
}

/// A number as Lua's `tostring` writes it for the values limits take: integers without a
/// decimal point, fractions with up to 6 decimals (Lua prints up to 14 significant digits).
/// Hand-written: core's float formatting would add ~40 KB to the module.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return (value as i64).to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let scaled = (value.abs() * 1e6 + 0.5).floor();
    if scaled.is_nan() || scaled >= 1e18 {
        return format!("{sign}{}", value.abs() as u64);
    }
    let scaled = scaled as u64;
    let mut fraction = format!("{:06}", scaled % 1_000_000);
    while fraction.ends_with('0') {
        fraction.pop();
    }
    if fraction.is_empty() {
        format!("{sign}{}", scaled / 1_000_000)
    } else {
        format!("{sign}{}.{fraction}", scaled / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::days_from_civil;

    const T0: i64 = 1_709_208_000; // 2024-02-29T12:00:00Z

    fn ms(secs: i64, millis: i64) -> i64 {
        secs * 1000 + millis
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Runs `n` requests at `now_ms`, counting the allowed ones as the store would.
    fn run(config: &Config, counters: &mut Counters, now_ms: i64, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            let eval = evaluate(config, counters, now_ms);
            if eval.stop.is_none() {
                *counters = eval.next;
                allowed += 1;
            }
        }
        allowed
    }

    #[test]
    fn counters_round_trip_and_garbage_is_empty() {
        let counters = Counters {
            windows: vec![
                (
                    Period::Second,
                    Window {
                        start: T0,
                        count: 3,
                        previous: 9,
                    },
                ),
                (
                    Period::Year,
                    Window {
                        start: -5,
                        count: u64::MAX,
                        previous: 0,
                    },
                ),
            ],
        };
        assert_eq!(Counters::decode(&counters.encode()), counters);
        assert_eq!(counters.encode().len(), 1 + 2 * 25);
        for garbage in [&b""[..], b"\x02", b"\x01\x00", b"\x09"] {
            assert_eq!(Counters::decode(garbage), Counters::default());
        }
        let mut bad_period = counters.encode();
        bad_period[1] = 7;
        assert_eq!(Counters::decode(&bad_period), Counters::default());
    }

    #[test]
    fn a_fixed_window_admits_the_limit_then_stops_until_the_next_window() {
        let config = Config::with_limits(&[(Period::Second, 3.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 10), 10), 3);
        assert_eq!(run(&config, &mut counters, ms(T0, 999), 10), 0);
        assert_eq!(run(&config, &mut counters, ms(T0 + 1, 0), 10), 3);
        // A gap of several windows starts from zero, with no previous window.
        assert_eq!(run(&config, &mut counters, ms(T0 + 5, 500), 10), 3);
        assert_eq!(counters.get(Period::Second).unwrap().previous, 0);
    }

    #[test]
    fn rejected_requests_are_not_counted() {
        let config = Config::with_limits(&[(Period::Second, 1.0), (Period::Minute, 10.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 0), 5), 1);
        assert_eq!(counters.get(Period::Minute).unwrap().count, 1);
        assert_eq!(run(&config, &mut counters, ms(T0 + 1, 0), 5), 1);
        assert_eq!(counters.get(Period::Minute).unwrap().count, 2);
    }

    #[test]
    fn every_window_must_have_room() {
        let config = Config::with_limits(&[(Period::Second, 5.0), (Period::Minute, 7.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 0), 10), 5);
        assert_eq!(run(&config, &mut counters, ms(T0 + 1, 0), 10), 2);
        let eval = evaluate(&config, &counters, ms(T0 + 2, 0));
        assert_eq!(eval.stop, Some(Period::Minute));
        // The next minute starts over.
        assert_eq!(run(&config, &mut counters, ms(T0 + 60, 0), 10), 5);
    }

    #[test]
    fn minute_hour_day_month_and_year_windows_roll_on_the_calendar() {
        for (period, last, first) in [
            (Period::Minute, T0 + 59, T0 + 60),
            (Period::Hour, T0 + 3_599, T0 + 3_600),
            (Period::Day, T0 + 43_199, T0 + 43_200),
            (
                Period::Month,
                days_from_civil(2024, 3, 1) * 86_400 - 1,
                days_from_civil(2024, 3, 1) * 86_400,
            ),
            (
                Period::Year,
                days_from_civil(2025, 1, 1) * 86_400 - 1,
                days_from_civil(2025, 1, 1) * 86_400,
            ),
        ] {
            let config = Config::with_limits(&[(period, 2.0)]);
            let mut counters = Counters::default();
            assert_eq!(run(&config, &mut counters, ms(T0, 0), 1), 1, "{period:?}");
            assert_eq!(
                run(&config, &mut counters, ms(last, 999), 5),
                1,
                "{period:?}"
            );
            assert_eq!(
                run(&config, &mut counters, ms(first, 0), 5),
                2,
                "{period:?}"
            );
        }
    }

    #[test]
    fn a_window_moved_on_by_another_worker_is_never_moved_back() {
        let config = Config::with_limits(&[(Period::Second, 2.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0 + 1, 0), 2), 2);
        // A request whose clock read T0.999 after that still counts in T0+1.
        let eval = evaluate(&config, &counters, ms(T0, 999));
        assert_eq!(eval.stop, Some(Period::Second));
    }

    #[test]
    fn sliding_windows_weight_the_previous_window() {
        let mut config = Config::with_limits(&[(Period::Second, 10.0)]);
        config.window_type = WindowType::Sliding;
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 100), 20), 10);
        // Halfway through the next second, half the previous window still counts:
        // 10 * 0.5 + current < 10 admits 5.
        let eval = evaluate(&config, &counters, ms(T0 + 1, 500));
        assert_eq!(eval.usages[0].usage, 5.0);
        assert_eq!(run(&config, &mut counters, ms(T0 + 1, 500), 20), 5);
        // A quarter into the window after: 5 * 0.75 = 3.75 counts, so 7 more fit (9.75).
        assert_eq!(run(&config, &mut counters, ms(T0 + 2, 250), 20), 7);
        let w = counters.get(Period::Second).unwrap();
        assert_eq!((w.start, w.count, w.previous), (T0 + 2, 7, 5));
        // Two windows later nothing of the past counts.
        assert_eq!(run(&config, &mut counters, ms(T0 + 4, 0), 20), 10);
        // Fixed windows would have admitted 10 at T0+1.
        config.window_type = WindowType::Fixed;
        let mut fixed = Counters::default();
        run(&config, &mut fixed, ms(T0, 100), 20);
        assert_eq!(run(&config, &mut fixed, ms(T0 + 1, 500), 20), 10);
    }

    #[test]
    fn sliding_months_weight_by_the_calendar_length() {
        let mut config = Config::with_limits(&[(Period::Month, 290.0)]);
        config.window_type = WindowType::Sliding;
        let feb = days_from_civil(2024, 2, 1) * 86_400;
        let mar = days_from_civil(2024, 3, 1) * 86_400;
        let counters = Counters {
            windows: vec![(
                Period::Month,
                Window {
                    start: feb,
                    count: 290,
                    previous: 0,
                },
            )],
        };
        // March has 31 days; 10 days in, 21/31 of February's 290 still count.
        let eval = evaluate(&config, &counters, ms(mar + 10 * 86_400, 0));
        assert!((eval.usages[0].usage - 290.0 * 21.0 / 31.0).abs() < 1e-9);
    }

    #[test]
    fn headers_are_kongs_on_an_allowed_request() {
        let config = Config::with_limits(&[(Period::Second, 5.0), (Period::Minute, 10.0)]);
        let mut counters = Counters::default();
        let now = ms(T0 + 15, 250);
        run(&config, &mut counters, now, 2);
        let eval = evaluate(&config, &counters, now);
        assert_eq!(eval.stop, None);
        let (h, reset) = headers(&config, &eval, now);
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "X-RateLimit-Limit-Second",
                "X-RateLimit-Remaining-Second",
                "X-RateLimit-Limit-Minute",
                "X-RateLimit-Remaining-Minute",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset"
            ]
        );
        assert_eq!(header(&h, "x-ratelimit-remaining-second"), Some("2"));
        assert_eq!(header(&h, "x-ratelimit-remaining-minute"), Some("7"));
        // Lowest remaining is the second window: reset 1.
        assert_eq!(header(&h, "ratelimit-limit"), Some("5"));
        assert_eq!(header(&h, "ratelimit-remaining"), Some("2"));
        assert_eq!((header(&h, "ratelimit-reset"), reset), (Some("1"), 1));
    }

    #[test]
    fn ties_go_to_the_longer_window_and_reset_counts_down() {
        let config = Config::with_limits(&[(Period::Second, 1.0), (Period::Minute, 1.0)]);
        let now = ms(T0 + 15, 900);
        let eval = evaluate(&config, &Counters::default(), now);
        let (h, reset) = headers(&config, &eval, now);
        assert_eq!(header(&h, "ratelimit-remaining"), Some("0"));
        assert_eq!(reset, 45);
        assert_eq!(header(&h, "ratelimit-reset"), Some("45"));
    }

    #[test]
    fn a_block_decrements_only_the_stopping_window() {
        let config = Config::with_limits(&[(Period::Second, 2.0), (Period::Hour, 10.0)]);
        let mut counters = Counters::default();
        let now = ms(T0 + 600, 0);
        run(&config, &mut counters, now, 2);
        let eval = evaluate(&config, &counters, now);
        assert_eq!(eval.stop, Some(Period::Second));
        let (h, reset) = headers(&config, &eval, now);
        assert_eq!(header(&h, "x-ratelimit-remaining-second"), Some("0"));
        // Not decremented: Kong's arithmetic on a block.
        assert_eq!(header(&h, "x-ratelimit-remaining-hour"), Some("8"));
        assert_eq!(header(&h, "ratelimit-limit"), Some("2"));
        assert_eq!(reset, 1);
    }

    #[test]
    fn reset_uses_kongs_fixed_lengths_and_is_at_least_one() {
        // 20 days into a 31-day month: 30 days minus 20.
        let config = Config::with_limits(&[(Period::Month, 5.0)]);
        let now = ms(days_from_civil(2024, 3, 21) * 86_400, 0);
        let (_, reset) = headers(&config, &evaluate(&config, &Counters::default(), now), now);
        assert_eq!(reset, 10 * 86_400);
        // Day 31 is past Kong's 30-day month: reset is clamped to 1.
        let late = ms(days_from_civil(2024, 3, 31) * 86_400 + 5, 0);
        let (_, reset) = headers(
            &config,
            &evaluate(&config, &Counters::default(), late),
            late,
        );
        assert_eq!(reset, 1);
    }

    #[test]
    fn fractional_limits_print_like_lua() {
        let config = Config::with_limits(&[(Period::Second, 1.5)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 0), 5), 2);
        let eval = evaluate(&config, &Counters::default(), ms(T0, 0));
        let (h, _) = headers(&config, &eval, ms(T0, 0));
        assert_eq!(header(&h, "x-ratelimit-limit-second"), Some("1.5"));
        assert_eq!(header(&h, "x-ratelimit-remaining-second"), Some("0.5"));
        assert_eq!(number(100.0), "100");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(2.0 / 3.0), "0.666667");
        assert_eq!(number(-1.5), "-1.5");
        assert_eq!(number(1e300), "18446744073709551615");
    }
}
