//! One identifier's counters and the decision over them: Kong's usage check, the increment,
//! and Kong's response headers.
//!
//! The counters of every configured period are stored together, each with the start of its
//! window, so one compare-and-swap checks and counts all windows at once and the shared-data
//! key never changes when a window rolls over (the key space stays bounded). Windows are
//! matched by period, never by position: a configuration that adds a window or changes a
//! limit keeps the usage of the others.

use crate::config::{Config, WindowType};
use crate::number::lua_tostring;
use crate::Period;

/// How far in the future a stored window may start and still be counted in. The writer of a
/// window read the clock after its read of the store and before its write, and a request
/// reads the clock after its own read, so on a clock that only moves forward a stored window
/// is never in the future; only a host that caches its clock per event-loop turn (as nginx
/// does) can be a little behind another worker. A window further ahead means the clock was
/// stepped back: its count is dropped and the current window starts from zero, so a client
/// is never blocked longer than one window by a step back (at the price of one window's
/// budget, once). One period as tolerance would block an hour window for up to two hours.
pub const CLOCK_TOLERANCE_MS: i64 = 1_000;

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

impl Counters {
    pub fn get(&self, period: Period) -> Option<Window> {
        self.windows
            .iter()
            .find(|(p, _)| *p == period)
            .map(|(_, w)| *w)
    }
}

/// What a stored window still counts at `now_ms`: the window the request counts in, its
/// count, and the count of the window before it.
fn carried(period: Period, stored: Option<Window>, now_ms: i64) -> Window {
    let now = now_ms.div_euclid(1000);
    let current = period.start(now);
    let fresh = Window {
        start: current,
        count: 0,
        previous: 0,
    };
    match stored {
        Some(w) if w.start == current => w,
        // Ahead by less than the tolerance: another worker's coarser clock already moved the
        // window on; count in its window, never back in an older one. Further ahead: the
        // clock was stepped back.
        Some(w) if w.start > current => {
            if w.start.saturating_mul(1000).saturating_sub(now_ms) <= CLOCK_TOLERANCE_MS {
                w
            } else {
                fresh
            }
        }
        Some(w) if w.start == period.previous(now) => Window {
            previous: w.count,
            ..fresh
        },
        _ => fresh,
    }
}

/// Whether stored counters can no longer affect a decision: every configured window is over
/// (and, for sliding windows, so is the one before it). Such an identifier's slot is free.
pub fn is_stale(config: &Config, stored: &Counters, now_ms: i64) -> bool {
    config.limits.iter().all(|&(period, _)| {
        let w = carried(period, stored.get(period), now_ms);
        w.count == 0 && (config.window_type == WindowType::Fixed || w.previous == 0)
    })
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
    let mut usages = Vec::with_capacity(config.limits.len());
    let mut next = Counters {
        windows: Vec::with_capacity(config.limits.len()),
    };
    let mut stop = None;
    for &(period, limit) in &config.limits {
        let Window {
            start,
            count,
            previous,
        } = carried(period, stored.get(period), now_ms);
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

/// A response header's value before it is printed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeaderValue {
    /// Printed as Lua's `tostring` prints a number.
    Number(f64),
    Integer(i64),
}

impl HeaderValue {
    pub fn text(self) -> String {
        match self {
            HeaderValue::Number(n) => lua_tostring(n),
            HeaderValue::Integer(n) => n.to_string(),
        }
    }

    /// The text into `buf` when it fits there without allocating (an integer, which every
    /// header of an integer limit is); `None` otherwise.
    pub fn write(self, buf: &mut [u8; 24]) -> Option<&[u8]> {
        let n = match self {
            // `lua_tostring` prints -0 with its sign.
            HeaderValue::Number(n) if n == 0.0 && n.is_sign_negative() => return None,
            // It prints these as the integer.
            HeaderValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e14 => n as i64,
            HeaderValue::Number(_) => return None,
            HeaderValue::Integer(n) => n,
        };
        let mut at = buf.len();
        let mut rest = n.unsigned_abs();
        loop {
            at -= 1;
            *buf.get_mut(at)? = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            at -= 1;
            *buf.get_mut(at)? = b'-';
        }
        buf.get(at..)
    }
}

/// Kong's rate-limiting response headers for an evaluation, and the `RateLimit-Reset` value
/// (also `Retry-After` on a rejection).
pub fn headers(config: &Config, eval: &Evaluation, now_ms: i64) -> (Vec<(String, String)>, i64) {
    let mut out = Vec::with_capacity(2 * eval.usages.len() + 4);
    let reset = each_header(config, eval, now_ms, &mut |name, value| {
        out.push((name.to_owned(), value.text()))
    });
    (out, reset)
}

/// [`headers`], one call of `emit` per header, in order: the request path prints them
/// without allocating. Returns the `RateLimit-Reset` value.
pub fn each_header(
    config: &Config,
    eval: &Evaluation,
    now_ms: i64,
    emit: &mut dyn FnMut(&'static str, HeaderValue),
) -> i64 {
    let now = now_ms.div_euclid(1000);
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
        emit(limit_name, HeaderValue::Number(u.limit));
        emit(remaining_name, HeaderValue::Number(remaining));
    }
    let Some((remaining, _, limit, reset)) = chosen else {
        return 1;
    };
    emit("RateLimit-Limit", HeaderValue::Number(limit));
    emit("RateLimit-Remaining", HeaderValue::Number(remaining));
    emit("RateLimit-Reset", HeaderValue::Integer(reset));
    reset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::days_from_civil;

    const T0: i64 = 1_709_208_000; // 2024-02-29T12:00:00Z

    fn ms(secs: i64, millis: i64) -> i64 {
        secs * 1000 + millis
    }

    /// The request path prints a header value into a stack buffer: the same text as
    /// `lua_tostring`, or nothing (then it allocates the text as before).
    #[test]
    fn header_values_print_on_the_stack_as_lua_prints_them() {
        let numbers = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            9.0,
            10.0,
            999_999_999.0,
            1e13,
            99_999_999_999_999.0,
            1e14,
            -5e13,
            0.5,
            2.25,
            1e300,
            f64::INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
        ];
        let mut stacked = 0;
        for n in numbers {
            let value = HeaderValue::Number(n);
            let mut buf = [0; 24];
            if let Some(bytes) = value.write(&mut buf) {
                assert_eq!(bytes, value.text().as_bytes(), "{n}");
                stacked += 1;
            }
        }
        assert_eq!(stacked, 9);
        for n in [0, 1, -1, 59, 31_536_000, i64::MAX, i64::MIN] {
            let value = HeaderValue::Integer(n);
            let mut buf = [0; 24];
            assert_eq!(value.write(&mut buf), Some(value.text().as_bytes()), "{n}");
        }
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
        // So does one a whole second behind (the tolerance), for any period.
        let config = Config::with_limits(&[(Period::Minute, 2.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0 + 45, 0), 2), 2);
        assert_eq!(
            evaluate(&config, &counters, ms(T0 + 44, 0)).stop,
            Some(Period::Minute)
        );
    }

    /// Review #5: a stored window further in the future than the tolerance means the clock
    /// was stepped back; it must not block the client until the clock catches up.
    #[test]
    fn a_backward_clock_step_blocks_for_at_most_one_window() {
        for period in [Period::Second, Period::Minute, Period::Hour, Period::Day] {
            let config = Config::with_limits(&[(period, 2.0)]);
            let mut counters = Counters::default();
            let before = ms(T0 + 7_200, 0);
            assert_eq!(run(&config, &mut counters, before, 5), 2, "{period:?}");
            // The clock steps back one hour: the client counts in the window of the new time,
            // from zero unless it is the same window as before the step.
            let after = before - 3_600_000;
            let same = period.start(after / 1000) == period.start(before / 1000);
            let expected = if same { 0 } else { 2 };
            assert_eq!(
                run(&config, &mut counters, after, 5),
                expected,
                "{period:?}"
            );
            // Either way it is blocked only until that window ends.
            let end = period.next(after.div_euclid(1000));
            assert_eq!(
                run(&config, &mut counters, end * 1000 - 1, 5),
                0,
                "{period:?}"
            );
            assert_eq!(run(&config, &mut counters, end * 1000, 5), 2, "{period:?}");
        }
        // A step back by a year, with a sliding window: nothing of the future counts.
        let mut config = Config::with_limits(&[(Period::Hour, 3.0)]);
        config.window_type = WindowType::Sliding;
        let mut counters = Counters::default();
        run(&config, &mut counters, ms(T0, 0), 3);
        let eval = evaluate(&config, &counters, ms(T0 - 366 * 86_400, 0));
        assert_eq!(eval.usages[0].usage, 0.0);
    }

    #[test]
    fn counters_are_stale_once_every_window_is_over() {
        let config = Config::with_limits(&[(Period::Second, 5.0), (Period::Minute, 10.0)]);
        let mut counters = Counters::default();
        assert!(is_stale(&config, &counters, ms(T0, 0)));
        run(&config, &mut counters, ms(T0, 0), 1);
        assert!(!is_stale(&config, &counters, ms(T0, 500)));
        // The second is over, the minute is not.
        assert!(!is_stale(&config, &counters, ms(T0 + 30, 0)));
        assert!(is_stale(&config, &counters, ms(T0 + 60, 0)));
        // Sliding windows still weigh the window before the current one.
        let mut sliding = config.clone();
        sliding.window_type = WindowType::Sliding;
        assert!(!is_stale(&sliding, &counters, ms(T0 + 60, 0)));
        assert!(is_stale(&sliding, &counters, ms(T0 + 120, 0)));
        // Windows from a stepped-back future hold nothing.
        assert!(is_stale(&config, &counters, ms(T0 - 3_600, 0)));
        // Periods the configuration no longer has do not keep an identifier alive.
        let hourly = Config::with_limits(&[(Period::Hour, 10.0)]);
        assert!(is_stale(&hourly, &counters, ms(T0, 500)));
    }

    /// Review #6: limits are matched by period, so a new configuration keeps the usage.
    #[test]
    fn a_changed_configuration_keeps_the_usage_of_its_periods() {
        let before = Config::with_limits(&[(Period::Minute, 3.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&before, &mut counters, ms(T0, 0), 5), 3);
        let after = Config::with_limits(&[(Period::Second, 10.0), (Period::Minute, 5.0)]);
        let eval = evaluate(&after, &counters, ms(T0 + 1, 0));
        assert_eq!(eval.usages[1].usage, 3.0);
        assert_eq!(run(&after, &mut counters, ms(T0 + 1, 0), 5), 2);
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

    /// Review #25: header values are Lua's `tostring` (`%.14g`).
    #[test]
    fn fractional_limits_print_like_lua() {
        let config = Config::with_limits(&[(Period::Second, 1.5)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0, 0), 5), 2);
        let eval = evaluate(&config, &Counters::default(), ms(T0, 0));
        let (h, _) = headers(&config, &eval, ms(T0, 0));
        assert_eq!(header(&h, "x-ratelimit-limit-second"), Some("1.5"));
        assert_eq!(header(&h, "x-ratelimit-remaining-second"), Some("0.5"));
        let config = Config::with_limits(&[(Period::Minute, 2.0 / 3.0), (Period::Year, 1e300)]);
        let eval = evaluate(&config, &Counters::default(), ms(T0, 0));
        let (h, _) = headers(&config, &eval, ms(T0, 0));
        assert_eq!(
            header(&h, "x-ratelimit-limit-minute"),
            Some("0.66666666666667")
        );
        assert_eq!(header(&h, "x-ratelimit-limit-year"), Some("1e+300"));
        assert_eq!(header(&h, "x-ratelimit-remaining-year"), Some("1e+300"));
    }

    /// A sliding window another worker already moved on (ahead of this request's clock, within
    /// the tolerance) weighs its previous window at most fully, never more.
    #[test]
    fn a_sliding_window_ahead_of_the_clock_weighs_its_previous_window_fully() {
        let mut config = Config::with_limits(&[(Period::Second, 20.0)]);
        config.window_type = WindowType::Sliding;
        let counters = Counters {
            windows: vec![(
                Period::Second,
                Window {
                    start: T0 + 1,
                    count: 2,
                    previous: 10,
                },
            )],
        };
        let eval = evaluate(&config, &counters, ms(T0, 999));
        assert_eq!(eval.usages[0].start, T0 + 1);
        assert_eq!(eval.usages[0].usage, 12.0);
    }

    /// Kong's `RateLimit-*` headers describe the window with the least remaining, even when it
    /// is the longer one.
    #[test]
    fn ratelimit_headers_follow_the_window_with_the_least_remaining() {
        let config = Config::with_limits(&[(Period::Second, 10.0), (Period::Minute, 20.0)]);
        let mut counters = Counters::default();
        assert_eq!(run(&config, &mut counters, ms(T0 + 10, 0), 10), 10);
        assert_eq!(run(&config, &mut counters, ms(T0 + 11, 0), 8), 8);
        let now = ms(T0 + 15, 250);
        let (h, reset) = headers(&config, &evaluate(&config, &counters, now), now);
        assert_eq!(header(&h, "x-ratelimit-remaining-second"), Some("9"));
        assert_eq!(header(&h, "x-ratelimit-remaining-minute"), Some("1"));
        assert_eq!(header(&h, "ratelimit-limit"), Some("20"));
        assert_eq!(header(&h, "ratelimit-remaining"), Some("1"));
        assert_eq!((header(&h, "ratelimit-reset"), reset), (Some("45"), 45));
    }
}
