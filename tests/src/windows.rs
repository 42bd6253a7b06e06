//! Rate-limit windows judged from what a test recorded, never from how fast things ran.
//!
//! A data plane decides on a request at some instant the test cannot see, but it can bound
//! it: after the client sent the request and before the client had the answer. A decision
//! whose bounds fall in one second is known to belong to that second; one whose bounds
//! straddle a boundary could belong to either. The checks below hold whatever the machine's
//! speed: a slow run only leaves more decisions unplaced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// One decision of the limiter, as the client saw it.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What the limit counts by (the client IP, a header value...).
    pub key: String,
    /// Seconds since the epoch when the request was sent.
    pub sent: f64,
    /// Seconds since the epoch when the answer was in.
    pub answered: f64,
    pub admitted: bool,
}

/// Seconds since the epoch, as a float.
pub fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Decision {
    /// The second the decision is known to belong to, when its bounds fall in one.
    fn second(&self) -> Option<u64> {
        let (from, to) = (self.sent.floor(), self.answered.floor());
        (from == to).then_some(from as u64)
    }

    /// Every second the decision may belong to.
    fn seconds(&self) -> std::ops::RangeInclusive<u64> {
        self.sent.floor() as u64..=self.answered.floor() as u64
    }
}

/// What [`check_fixed_window`] found.
#[derive(Debug, Default)]
pub struct WindowCheck {
    pub failures: Vec<String>,
    /// Seconds (per key) where a refusal pinned the count to exactly the limit: how often the
    /// exactness was put to the test.
    pub exact_seconds: usize,
    /// Admissions known to fall in each second, per key (for reports).
    pub admitted: BTreeMap<(String, u64), usize>,
}

/// A fixed one-second window of `limit` per key, counted exactly:
/// - no second holds more than `limit` admissions known to fall in it;
/// - a refusal known to fall in a second means its budget was spent there: the admissions
///   that may fall in that second are at least `limit`.
pub fn check_fixed_window(decisions: &[Decision], limit: usize) -> WindowCheck {
    let mut check = WindowCheck::default();
    let mut possible: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut refused: BTreeSet<(String, u64)> = BTreeSet::new();
    for decision in decisions {
        if decision.admitted {
            if let Some(second) = decision.second() {
                *check
                    .admitted
                    .entry((decision.key.clone(), second))
                    .or_default() += 1;
            }
            for second in decision.seconds() {
                *possible.entry((decision.key.clone(), second)).or_default() += 1;
            }
        } else if let Some(second) = decision.second() {
            refused.insert((decision.key.clone(), second));
        }
    }
    for ((key, second), n) in &check.admitted {
        if *n > limit {
            check
                .failures
                .push(format!("{key} at second {second}: {n} admitted > {limit}"));
        }
    }
    for (key, second) in &refused {
        let could = possible.get(&(key.clone(), *second)).copied().unwrap_or(0);
        if could < limit {
            check.failures.push(format!(
                "{key} at second {second}: refused after at most {could} admissions < {limit}"
            ));
        } else {
            check.exact_seconds += 1;
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str, sent: f64, answered: f64, admitted: bool) -> Decision {
        Decision {
            key: key.into(),
            sent,
            answered,
            admitted,
        }
    }

    #[test]
    fn over_admission_in_a_known_second_fails() {
        let decisions: Vec<Decision> = (0..3)
            .map(|i| {
                at(
                    "a",
                    10.1 + f64::from(i) * 0.1,
                    10.15 + f64::from(i) * 0.1,
                    true,
                )
            })
            .collect();
        assert!(check_fixed_window(&decisions, 3).failures.is_empty());
        assert_eq!(check_fixed_window(&decisions, 2).failures.len(), 1);
    }

    #[test]
    fn a_refusal_before_the_budget_is_spent_fails() {
        let mut decisions = vec![at("a", 10.1, 10.2, true), at("a", 10.3, 10.4, false)];
        let early = check_fixed_window(&decisions, 2);
        assert_eq!(early.failures.len(), 1, "{early:?}");
        // An admission that may have been in that second (it straddles the boundary) counts.
        decisions.push(at("a", 9.99, 10.01, true));
        let check = check_fixed_window(&decisions, 2);
        assert!(check.failures.is_empty(), "{check:?}");
        assert_eq!(check.exact_seconds, 1);
        // Keys are separate budgets.
        decisions.push(at("b", 10.5, 10.6, false));
        assert_eq!(check_fixed_window(&decisions, 2).failures.len(), 1);
    }

    #[test]
    fn a_refusal_that_straddles_a_boundary_pins_nothing() {
        let decisions = vec![at("a", 10.99, 11.01, false)];
        let check = check_fixed_window(&decisions, 5);
        assert!(check.failures.is_empty());
        assert_eq!(check.exact_seconds, 0);
    }
}
