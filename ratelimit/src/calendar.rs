//! Kong's calendar-aligned windows (UTC): a window starts at the current second, minute, hour,
//! midnight, the 1st of the month or January 1st. The arithmetic is the kit's
//! ([`kit::window`]), the module's own, on the service's clock; what is the service's is
//! reading and writing Envoy's `RateLimit.Unit`.

use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as PbUnit;

pub use kit::window::Period;

/// The period Envoy's `RateLimit.Unit` value names (`UNKNOWN` and anything newer: `None`).
pub fn from_proto(value: i32) -> Option<Period> {
    Some(match PbUnit::try_from(value).ok()? {
        PbUnit::Second => Period::Second,
        PbUnit::Minute => Period::Minute,
        PbUnit::Hour => Period::Hour,
        PbUnit::Day => Period::Day,
        PbUnit::Month => Period::Month,
        PbUnit::Year => Period::Year,
        PbUnit::Unknown => return None,
    })
}

/// Envoy's `RateLimit.Unit` value for `period`.
pub fn to_proto(period: Period) -> i32 {
    (match period {
        Period::Second => PbUnit::Second,
        Period::Minute => PbUnit::Minute,
        Period::Hour => PbUnit::Hour,
        Period::Day => PbUnit::Day,
        Period::Month => PbUnit::Month,
        Period::Year => PbUnit::Year,
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_units_round_trip() {
        for period in Period::ALL {
            assert_eq!(from_proto(to_proto(period)), Some(period));
        }
        assert_eq!(to_proto(Period::Second), PbUnit::Second as i32);
        assert_eq!(to_proto(Period::Year), PbUnit::Year as i32);
        assert_eq!(from_proto(0), None);
        assert_eq!(from_proto(99), None);
    }
}
