//! Kong's calendar-aligned windows (UTC): a window starts at the current second, minute, hour,
//! midnight, the 1st of the month or January 1st. The same arithmetic as the module's
//! `window` (a test checks they agree), on the service's clock.

use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;

const DAY: i64 = 86_400;

/// A window length Envoy's `RateLimit.Unit` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 6] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Month,
        Unit::Year,
    ];

    /// Envoy's enum value (`UNKNOWN` and anything newer: `None`).
    pub fn from_proto(value: i32) -> Option<Unit> {
        Some(match PbUnit::try_from(value).ok()? {
            PbUnit::Second => Unit::Second,
            PbUnit::Minute => Unit::Minute,
            PbUnit::Hour => Unit::Hour,
            PbUnit::Day => Unit::Day,
            PbUnit::Month => Unit::Month,
            PbUnit::Year => Unit::Year,
            PbUnit::Unknown => return None,
        })
    }

    pub fn to_proto(self) -> i32 {
        (match self {
            Unit::Second => PbUnit::Second,
            Unit::Minute => PbUnit::Minute,
            Unit::Hour => PbUnit::Hour,
            Unit::Day => PbUnit::Day,
            Unit::Month => PbUnit::Month,
            Unit::Year => PbUnit::Year,
        }) as i32
    }

    /// Kong's period name, part of every counter key.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The start of the window that contains `secs` (Unix seconds).
    pub fn start(self, secs: i64) -> i64 {
        let floor = |unit: i64| secs - secs.rem_euclid(unit);
        match self {
            Unit::Second => secs,
            Unit::Minute => floor(60),
            Unit::Hour => floor(3_600),
            Unit::Day => floor(DAY),
            Unit::Month => {
                let (y, m, _) = civil_from_days(secs.div_euclid(DAY));
                days_from_civil(y, m, 1) * DAY
            }
            Unit::Year => {
                let (y, _, _) = civil_from_days(secs.div_euclid(DAY));
                days_from_civil(y, 1, 1) * DAY
            }
        }
    }

    /// The start of the window after the one that contains `secs`.
    pub fn next(self, secs: i64) -> i64 {
        let start = self.start(secs);
        match self {
            Unit::Second => start + 1,
            Unit::Minute => start + 60,
            Unit::Hour => start + 3_600,
            Unit::Day => start + DAY,
            Unit::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY
            }
            Unit::Year => {
                let (y, _, _) = civil_from_days(start.div_euclid(DAY));
                days_from_civil(y + 1, 1, 1) * DAY
            }
        }
    }

    /// The start of the window before the one that contains `secs`.
    pub fn previous(self, secs: i64) -> i64 {
        self.start(self.start(secs) - 1)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
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
fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
    use rate_limiting::Period;

    /// The module's windows and these are the same, across leap years and month ends.
    #[test]
    fn windows_are_the_modules_windows() {
        let periods = [
            (Unit::Second, Period::Second),
            (Unit::Minute, Period::Minute),
            (Unit::Hour, Period::Hour),
            (Unit::Day, Period::Day),
            (Unit::Month, Period::Month),
            (Unit::Year, Period::Year),
        ];
        let mut secs = 946_684_700_i64; // 1999-12-31T23:58:20Z
        while secs < 4_200_000_000 {
            for (unit, period) in periods {
                assert_eq!(unit.start(secs), period.start(secs), "{unit:?} {secs}");
                assert_eq!(unit.next(secs), period.next(secs), "{unit:?} {secs}");
                assert_eq!(
                    unit.previous(secs),
                    period.previous(secs),
                    "{unit:?} {secs}"
                );
            }
            secs += 86_399 * 3 + 7;
        }
        for unit in Unit::ALL {
            assert_eq!(Unit::from_proto(unit.to_proto()), Some(unit));
        }
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::from_proto(99), None);
    }
}
