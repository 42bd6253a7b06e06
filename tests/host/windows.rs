//! rate-limiting's windows on the host's manual clock: the exact arithmetic that the real-clock
//! tests in Envoy can only bound (fixed second, minute and hour windows, the sliding weight,
//! Retry-After), with time moved by the test instead of waited for.

use std::time::{Duration, UNIX_EPOCH};

use host::testing::{Harness, TestRequest};
use host::PluginConfig;

/// A harness whose clock starts `into` after the start of an hour, with rate-limiting loaded.
fn limited(config: &str, into: Duration) -> Harness {
    // 2026-12-02T10:00:00Z: a fixed instant, so every window boundary is known.
    at(config, Duration::from_secs(1_796_205_600) + into)
}

/// A harness whose clock starts `since_epoch` after the Unix epoch, with rate-limiting loaded.
fn at(config: &str, since_epoch: Duration) -> Harness {
    let mut h = Harness::new().expect("harness");
    h.clock().set(UNIX_EPOCH + since_epoch);
    h.load_file(
        &wasmgate_tests::paths::plugin_module("rate-limiting"),
        PluginConfig::new("rate-limiting", config.to_owned()),
    )
    .expect("rate-limiting loads");
    h
}

fn statuses(h: &mut Harness, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| h.send(TestRequest::get("/")).response.status)
        .collect()
}

#[test]
fn a_fixed_second_refills_at_the_boundary_and_not_before() {
    let mut h = limited(r#"{"second": 3}"#, Duration::from_millis(100));
    assert_eq!(statuses(&mut h, 4), [200, 200, 200, 429]);
    // 899 ms on, still the same second.
    h.advance(Duration::from_millis(899));
    assert_eq!(statuses(&mut h, 1), [429]);
    let refused = h.send(TestRequest::get("/"));
    assert_eq!(refused.response.header("retry-after"), Some("1"));
    // The boundary.
    h.advance(Duration::from_millis(1));
    assert_eq!(statuses(&mut h, 4), [200, 200, 200, 429]);
}

#[test]
fn a_minute_budget_spans_its_seconds_and_retry_after_counts_to_its_end() {
    let mut h = limited(r#"{"minute": 3}"#, Duration::from_secs(10));
    assert_eq!(statuses(&mut h, 2), [200, 200]);
    h.advance(Duration::from_secs(5));
    let third = h.send(TestRequest::get("/"));
    assert_eq!(third.response.status, 200);
    assert_eq!(
        third.response.header("x-ratelimit-remaining-minute"),
        Some("0")
    );
    h.advance(Duration::from_millis(30_500));
    let blocked = h.send(TestRequest::get("/"));
    assert_eq!(blocked.response.status, 429);
    // 45.5 s into the minute: 14.5 s left, rounded up.
    assert_eq!(blocked.response.header("retry-after"), Some("15"));
    h.advance(Duration::from_millis(14_500));
    assert_eq!(statuses(&mut h, 1), [200], "a new minute");
}

#[test]
fn a_sliding_window_weighs_the_previous_one_by_what_is_left_of_the_current() {
    let mut h = limited(
        r#"{"second": 10, "window_type": "sliding"}"#,
        Duration::from_millis(100),
    );
    let admitted = |s: Vec<u16>| s.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted(statuses(&mut h, 15)), 10);
    // Halfway through the next second half of the previous 10 weighs: 5 more fit.
    h.advance(Duration::from_millis(1_400));
    assert_eq!(admitted(statuses(&mut h, 15)), 5);
    // A quarter into the one after: 5 x 0.75 = 3.75 weighs, so 7 more fit (9.75 < 10).
    h.advance(Duration::from_millis(750));
    assert_eq!(admitted(statuses(&mut h, 15)), 7);
    // Two windows on, nothing of the past weighs.
    h.advance(Duration::from_secs(2));
    assert_eq!(admitted(statuses(&mut h, 15)), 10);
}

#[test]
fn an_hour_window_ends_on_the_hour() {
    let mut h = limited(r#"{"hour": 1}"#, Duration::from_secs(3599));
    assert_eq!(statuses(&mut h, 2), [200, 429]);
    h.advance(Duration::from_secs(1));
    assert_eq!(statuses(&mut h, 1), [200]);
}

/// Kong counts each window from its calendar start (UTC) and resets it after a fixed length:
/// 3,600 s, 86,400 s, 30 days for a month and 365 days for a year, at least 1 s. The
/// case files can only bound these (`header_ranges`) on the real clock.
#[test]
fn each_window_resets_at_kongs_fixed_length_from_its_calendar_start() {
    // 2026-02-10T12:34:56.250Z: 2,096 s into the hour, 45,296 s into the day, 9 days and
    // 45,296 s into February, 40 days and 45,296 s into the year.
    let february = Duration::from_millis(1_770_726_896_250);
    // 2026-01-31T12:00:00Z: 30.5 days into January, past Kong's 30-day month.
    let january_31 = Duration::from_secs(1_769_860_800);
    for (window, now, reset) in [
        ("hour", february, 1_504),
        ("day", february, 41_104),
        ("month", february, 1_769_104),
        ("year", february, 28_034_704),
        ("month", january_31, 1),
    ] {
        let mut h = at(&format!(r#"{{"{window}": 1}}"#), now);
        let reset = reset.to_string();
        let admitted = h.send(TestRequest::get("/")).response;
        assert_eq!(admitted.status, 200, "{window}");
        assert_eq!(admitted.header("ratelimit-limit"), Some("1"), "{window}");
        assert_eq!(
            admitted.header("ratelimit-remaining"),
            Some("0"),
            "{window}"
        );
        assert_eq!(
            admitted.header("ratelimit-reset"),
            Some(&*reset),
            "{window}"
        );
        let refused = h.send(TestRequest::get("/")).response;
        assert_eq!(refused.status, 429, "{window}");
        assert_eq!(refused.header("retry-after"), Some(&*reset), "{window}");
        assert_eq!(refused.header("ratelimit-reset"), Some(&*reset), "{window}");
    }
}
