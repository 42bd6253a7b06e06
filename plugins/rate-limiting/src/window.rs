//! Kong's periods and their calendar-aligned windows: the kit's ([`kit::window`]), shared with
//! the rate-limit service, re-exported under the paths this crate has always had.

pub use kit::window::{civil_from_days, days_from_civil, Period};
