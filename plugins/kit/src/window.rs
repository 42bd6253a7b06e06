//! Kong's periods and their fixed windows, aligned to the UTC calendar: a window starts at the
//! current second, minute, hour, midnight, the 1st of the month or January 1st.
//!
//! Times are Unix seconds (or milliseconds where noted). Calendar arithmetic uses the proleptic
//! Gregorian calendar (Howard Hinnant's `days_from_civil`), so months and years have their real
//! lengths; only `RateLimit-Reset` uses Kong's fixed lengths ([`Period::expiration`]).
//!
//! Here rather than in the rate-limiting plugin because the rate-limit service (`ratelimit`,
//! linked into the gateway, which links no plugin crate but this kit) counts in the same
//! windows: one copy keeps the module's and the service's windows identical.

/// One of Kong's six periods, shortest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

const DAY: i64 = 86_400;

impl Period {
    /// Every period, shortest first (Kong's `ORDERED_PERIODS`).
    pub const ALL: [Period; 6] = [
        Period::Second,
        Period::Minute,
        Period::Hour,
        Period::Day,
        Period::Month,
        Period::Year,
    ];

    /// The config field name: `second` … `year`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    /// The header suffix: `Second` … `Year`.
    pub fn title(self) -> &'static str {
        match self {
            Period::Second => "Second",
            Period::Minute => "Minute",
            Period::Hour => "Hour",
            Period::Day => "Day",
            Period::Month => "Month",
            Period::Year => "Year",
        }
    }

    /// Kong's `X-RateLimit-Limit-<Period>` and `X-RateLimit-Remaining-<Period>`.
    pub fn header_names(self) -> (&'static str, &'static str) {
        match self {
            Period::Second => ("X-RateLimit-Limit-Second", "X-RateLimit-Remaining-Second"),
            Period::Minute => ("X-RateLimit-Limit-Minute", "X-RateLimit-Remaining-Minute"),
            Period::Hour => ("X-RateLimit-Limit-Hour", "X-RateLimit-Remaining-Hour"),
            Period::Day => ("X-RateLimit-Limit-Day", "X-RateLimit-Remaining-Day"),
            Period::Month => ("X-RateLimit-Limit-Month", "X-RateLimit-Remaining-Month"),
            Period::Year => ("X-RateLimit-Limit-Year", "X-RateLimit-Remaining-Year"),
        }
    }

    /// One byte in the stored counters.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Period> {
        Period::ALL.get(usize::from(code)).copied()
    }

    /// Kong's window length in seconds for `RateLimit-Reset` (`expiration.lua`): a month is
    /// 30 days and a year 365 days there, whatever the calendar says.
    pub fn expiration(self) -> i64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => DAY,
            Period::Month => 2_592_000,
            Period::Year => 31_536_000,
        }
    }

    /// The start of the window that contains `secs`.
    pub fn start(self, secs: i64) -> i64 {
        let floor = |unit: i64| secs - secs.rem_euclid(unit);
        match self {
            Period::Second => secs,
            Period::Minute => floor(60),
            Period::Hour => floor(3_600),
            Period::Day => floor(DAY),
            Period::Month => {
                let (y, m, _) = civil_from_days(secs.div_euclid(DAY));
                days_from_civil(y, m, 1) * DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(secs.div_euclid(DAY));
                days_from_civil(y, 1, 1) * DAY
            }
        }
    }

    /// The start of the window after the one that contains `secs`.
    pub fn next(self, secs: i64) -> i64 {
        let start = self.start(secs);
        match self {
            Period::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(start.div_euclid(DAY));
                days_from_civil(y + 1, 1, 1) * DAY
            }
            _ => start + self.expiration(),
        }
    }

    /// The start of the window before the one that contains `secs`.
    pub fn previous(self, secs: i64) -> i64 {
        self.start(self.start(secs) - 1)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY + h * 3_600 + mi * 60 + s
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(at(2024, 2, 29, 12, 0, 0), 1_709_208_000);
        for days in [-800_000, -1, 0, 59, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn windows_align_to_the_utc_calendar() {
        let now = at(2024, 2, 29, 13, 45, 27);
        assert_eq!(Period::Second.start(now), now);
        assert_eq!(Period::Minute.start(now), at(2024, 2, 29, 13, 45, 0));
        assert_eq!(Period::Hour.start(now), at(2024, 2, 29, 13, 0, 0));
        assert_eq!(Period::Day.start(now), at(2024, 2, 29, 0, 0, 0));
        assert_eq!(Period::Month.start(now), at(2024, 2, 1, 0, 0, 0));
        assert_eq!(Period::Year.start(now), at(2024, 1, 1, 0, 0, 0));
        // Boundaries belong to the window they start.
        let midnight = at(2024, 3, 1, 0, 0, 0);
        assert_eq!(Period::Month.start(midnight), midnight);
        assert_eq!(Period::Day.start(midnight - 1), at(2024, 2, 29, 0, 0, 0));
    }

    #[test]
    fn next_and_previous_windows_have_calendar_lengths() {
        let feb = at(2024, 2, 10, 0, 0, 0);
        assert_eq!(Period::Month.next(feb), at(2024, 3, 1, 0, 0, 0));
        assert_eq!(Period::Month.previous(feb), at(2024, 1, 1, 0, 0, 0));
        let dec = at(2023, 12, 31, 23, 59, 59);
        assert_eq!(Period::Month.next(dec), at(2024, 1, 1, 0, 0, 0));
        assert_eq!(Period::Year.next(dec), at(2024, 1, 1, 0, 0, 0));
        assert_eq!(Period::Year.previous(dec), at(2022, 1, 1, 0, 0, 0));
        // 2024 is a leap year (366 days), 2023 is not.
        assert_eq!(Period::Year.next(feb) - Period::Year.start(feb), 366 * DAY);
        assert_eq!(Period::Year.next(dec) - Period::Year.start(dec), 365 * DAY);
        assert_eq!(Period::Minute.next(feb + 59), feb + 60);
        assert_eq!(Period::Minute.previous(feb + 59), feb - 60);
        assert_eq!(Period::Second.previous(feb), feb - 1);
    }

    /// Kong's header names are `X-RateLimit-Limit-<Period>` and `X-RateLimit-Remaining-<Period>`
    /// with the period's config name capitalised.
    #[test]
    fn header_names_are_the_capitalised_period_names() {
        let titles: Vec<&str> = Period::ALL.iter().map(|p| p.title()).collect();
        assert_eq!(titles, ["Second", "Minute", "Hour", "Day", "Month", "Year"]);
        for period in Period::ALL {
            let title = period.title();
            assert_eq!(title.to_lowercase(), period.name());
            assert_eq!(
                period.header_names(),
                (
                    format!("X-RateLimit-Limit-{title}").as_str(),
                    format!("X-RateLimit-Remaining-{title}").as_str()
                )
            );
        }
    }

    #[test]
    fn codes_round_trip() {
        for period in Period::ALL {
            assert_eq!(Period::from_code(period.code()), Some(period));
        }
        assert_eq!(Period::from_code(6), None);
    }

    /// Every day from 1600-01-01 to 2400-12-31 against a plain day-by-day walk of the
    /// Gregorian calendar (a leap year every 4 years, except centuries not divisible by 400).
    #[test]
    fn civil_dates_match_a_day_by_day_calendar() {
        fn month_days(y: i64, m: u32) -> u32 {
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            }
        }
        // 370 years of 365 days and 90 leap days before 1970-01-01.
        let mut days = -135_140;
        let (mut y, mut m, mut d) = (1600, 1, 1);
        while y <= 2400 {
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert_eq!(civil_from_days(days), (y, m, d), "{days}");
            days += 1;
            d += 1;
            if d > month_days(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
