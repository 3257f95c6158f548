//! Per-key retry backoff (invariant 6): a failing key waits a capped, exponentially growing delay
//! with "equal jitter" before its next attempt, so it neither blocks the other keys nor burns
//! ZenML's or the store's quotas, and keys that fail together do not retry in lockstep.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::DaemonSettings;
use crate::schedule::{saturating_add, scale};

/// `daemon.backoff_initial` / `daemon.backoff_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The ceiling after the first failure.
    pub initial: Duration,
    /// The ceiling never grows past this.
    pub max: Duration,
}

impl BackoffPolicy {
    pub fn from_settings(daemon: &DaemonSettings) -> BackoffPolicy {
        BackoffPolicy {
            initial: daemon.backoff_initial,
            max: daemon.backoff_max,
        }
    }

    /// The ceiling after `failures` consecutive failures: `min(max, initial * 2^(failures-1))`,
    /// zero before the first failure.
    pub fn ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // Past 2^63 every real `initial` is far above any real `max`; this also keeps the
        // shift defined.
        let doublings = (failures - 1).min(63);
        let grown = self.initial.as_nanos().saturating_mul(1u128 << doublings);
        if grown >= self.max.as_nanos() {
            return self.max;
        }
        // Below `max`, which is a Duration; only a `max` beyond 584 years can miss u64 nanos.
        u64::try_from(grown).map_or(self.max, Duration::from_nanos)
    }

    /// The delay after `failures` consecutive failures, with "equal jitter": the upper half of
    /// the ceiling is fixed and `unit` (uniform over `u64`) picks the rest from
    /// `[0, ceiling/2]`. So the delay lies in `[ceiling/2, ceiling]`, and the fixed half is what
    /// makes the attempt rate provable (see [`BackoffPolicy::max_attempts_within`]).
    pub fn delay_with(&self, failures: u32, unit: u64) -> Duration {
        let ceiling = self.ceiling(failures);
        let random_part = ceiling / 2;
        let fixed_part = ceiling - random_part;
        let range = u64::try_from(random_part.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        fixed_part + Duration::from_nanos(scale(unit, range))
    }

    /// [`BackoffPolicy::delay_with`], its randomness drawn from SHA-256 of the key (the policy
    /// name) and the failure count: deterministic, so tests and `plan` can predict it, yet
    /// different keys that fail together spread out.
    pub fn delay(&self, key: &str, failures: u32) -> Duration {
        let mut hasher = Sha256::new();
        hasher.update(b"zenml-rotator/backoff/v1\0");
        hasher.update(key.as_bytes());
        hasher.update(b"\0");
        hasher.update(failures.to_be_bytes());
        let digest = hasher.finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        self.delay_with(failures, u64::from_be_bytes(head))
    }

    /// The most attempts one continuously failing key can make in any span of length `span`
    /// (half-open), whatever the randomness: every delay is at least half its ceiling, and
    /// ceilings never shrink, so the densest span starts at the first attempt with every delay
    /// at its minimum. `u64::MAX` when `initial` is zero (nothing bounds the rate).
    pub fn max_attempts_within(&self, span: Duration) -> u64 {
        let min_delay = |failures: u32| {
            let ceiling = self.ceiling(failures);
            ceiling - ceiling / 2
        };
        if span.is_zero() {
            return 0;
        }
        if min_delay(1).is_zero() {
            return u64::MAX;
        }
        // The attempt at the start of the span, then one per failure while the ceiling grows;
        // doubling reaches any cap within 128 steps.
        let mut attempts: u64 = 1;
        let mut elapsed = Duration::ZERO;
        let mut failures: u32 = 1;
        while self.ceiling(failures) < self.max && failures < 128 {
            elapsed = elapsed.saturating_add(min_delay(failures));
            if elapsed >= span {
                return attempts;
            }
            attempts += 1;
            failures += 1;
        }
        // From here every delay is at least max/2.
        let step = min_delay(failures).as_nanos();
        let left = span.as_nanos() - elapsed.as_nanos();
        let more = left.div_ceil(step) - 1;
        attempts.saturating_add(u64::try_from(more).unwrap_or(u64::MAX))
    }
}

/// One key's retry state. Lives in memory only: a restart forgets it, which is fine because a
/// restart is rare and starts over from the smallest delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyBackoff {
    failures: u32,
    next_attempt: Option<DateTime<Utc>>,
}

impl KeyBackoff {
    pub fn new() -> KeyBackoff {
        KeyBackoff::default()
    }

    /// Records a failed attempt at `now` for `key` (the policy name); returns when the next
    /// attempt may happen.
    pub fn record_failure(
        &mut self,
        policy: &BackoffPolicy,
        key: &str,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        self.failures = self.failures.saturating_add(1);
        let at = saturating_add(now, policy.delay(key, self.failures));
        self.next_attempt = Some(at);
        at
    }

    /// A success clears the history: the next failure starts from the smallest delay.
    pub fn record_success(&mut self) {
        *self = KeyBackoff::default();
    }

    /// Whether the key may be attempted at `now`.
    pub fn ready(&self, now: DateTime<Utc>) -> bool {
        self.next_attempt.is_none_or(|at| at <= now)
    }

    /// When the key may be attempted next; `None` when it is not backing off.
    pub fn next_attempt(&self) -> Option<DateTime<Utc>> {
        self.next_attempt
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use proptest::prelude::*;

    const DEFAULTS: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(3600),
    };

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let ceilings: Vec<u64> = (0..=10).map(|f| DEFAULTS.ceiling(f).as_secs()).collect();
        assert_eq!(
            ceilings,
            [0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
        // No overflow however long a key keeps failing.
        assert_eq!(DEFAULTS.ceiling(u32::MAX), DEFAULTS.max);
        let huge = BackoffPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.ceiling(200), Duration::MAX);
        assert!(huge.delay("k", 200) >= Duration::MAX / 2);
    }

    #[test]
    fn equal_jitter_spans_the_upper_half_of_the_ceiling() {
        for failures in 1..=12 {
            let ceiling = DEFAULTS.ceiling(failures);
            assert_eq!(DEFAULTS.delay_with(failures, 0), ceiling - ceiling / 2);
            assert_eq!(DEFAULTS.delay_with(failures, u64::MAX), ceiling);
        }
        // The lowest delays double until the cap, like the ceilings.
        let lowest: Vec<u64> = (1..=9)
            .map(|f| DEFAULTS.delay_with(f, 0).as_secs())
            .collect();
        assert_eq!(lowest, [15, 30, 60, 120, 240, 480, 960, 1800, 1800]);
    }

    #[test]
    fn the_delay_is_deterministic_per_key_and_differs_between_keys() {
        assert_eq!(DEFAULTS.delay("training", 3), DEFAULTS.delay("training", 3));
        let spread: std::collections::BTreeSet<Duration> = (0..50)
            .map(|i| DEFAULTS.delay(&format!("key-{i}"), 5))
            .collect();
        assert!(spread.len() > 40, "keys retry in lockstep: {spread:?}");
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let mut backoff = KeyBackoff::new();
        let now = at("2026-01-01T00:00:00Z");
        assert!(backoff.ready(now));
        assert_eq!(backoff.next_attempt(), None);

        let next = backoff.record_failure(&DEFAULTS, "training", now);
        assert_eq!(backoff.failures(), 1);
        assert_eq!(backoff.next_attempt(), Some(next));
        assert_eq!(
            next,
            now + TimeDelta::from_std(DEFAULTS.delay("training", 1)).unwrap()
        );
        assert!(next >= now + TimeDelta::seconds(15) && next <= now + TimeDelta::seconds(30));
        assert!(!backoff.ready(now));
        assert!(!backoff.ready(next - TimeDelta::milliseconds(1)));
        assert!(backoff.ready(next));

        let second = backoff.record_failure(&DEFAULTS, "training", next);
        assert_eq!(backoff.failures(), 2);
        assert!(second - next >= TimeDelta::seconds(30));

        backoff.record_success();
        assert_eq!(backoff, KeyBackoff::new());
        assert!(backoff.ready(next));
        let again = backoff.record_failure(&DEFAULTS, "training", second);
        assert!(again - second <= TimeDelta::seconds(30));
    }

    #[test]
    fn attempts_per_hour_are_bounded() {
        // Minimum delays 15, 30, 60, 120, 240, 480, 960 s put 8 attempts within the first
        // 1905 s; from then on every delay is at least 1800 s, so no hour holds a 9th.
        let hour = Duration::from_secs(3600);
        let day = Duration::from_secs(86_400);
        assert_eq!(DEFAULTS.max_attempts_within(hour), 8);
        // 8 in the first 1905 s, then one per 1800 s: 46 more before 86400 s.
        assert_eq!(DEFAULTS.max_attempts_within(day), 54);

        // Keys failing every attempt for 24 hours, retried the moment they are ready.
        let start = at("2026-01-01T00:00:00Z");
        let end = start + TimeDelta::from_std(day).unwrap();
        for i in 0..100 {
            let key = format!("key-{i}");
            let mut backoff = KeyBackoff::new();
            let mut attempts = Vec::new();
            let mut now = start;
            while now < end {
                assert!(backoff.ready(now));
                attempts.push(now);
                now = backoff.record_failure(&DEFAULTS, &key, now);
            }
            assert!(
                attempts.len() <= 54,
                "{key}: {} attempts in a day",
                attempts.len()
            );
            for (j, first) in attempts.iter().enumerate() {
                let in_hour = attempts[j..]
                    .iter()
                    .take_while(|t| **t - *first < TimeDelta::hours(1))
                    .count();
                assert!(
                    in_hour <= 8,
                    "{key}: {in_hour} attempts in the hour from {first}"
                );
            }
        }

        // The bound is tight: the smallest delays reach it.
        let mut t = Duration::ZERO;
        let mut within_hour = 1;
        for failures in 1.. {
            t += DEFAULTS.delay_with(failures, 0);
            if t >= hour {
                break;
            }
            within_hour += 1;
        }
        assert_eq!(within_hour, 8);
    }

    #[test]
    fn degenerate_policies_do_not_panic() {
        let zero = BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay("k", 1), Duration::ZERO);
        assert_eq!(zero.max_attempts_within(Duration::from_secs(1)), u64::MAX);
        assert_eq!(DEFAULTS.max_attempts_within(Duration::ZERO), 0);
        // A cap below the first delay: every delay is the cap's.
        let capped = BackoffPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(10),
        };
        assert_eq!(capped.ceiling(1), Duration::from_secs(10));
        assert_eq!(capped.max_attempts_within(Duration::from_secs(60)), 12);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn delays_stay_between_half_the_ceiling_and_the_ceiling(
            initial in 1u64..600,
            max in 1u64..86_400,
            failures in 1u32..200,
            key in "[a-z0-9-]{1,20}",
        ) {
            let policy = BackoffPolicy {
                initial: Duration::from_secs(initial),
                max: Duration::from_secs(max.max(initial)),
            };
            let ceiling = policy.ceiling(failures);
            let delay = policy.delay(&key, failures);
            prop_assert!(delay <= ceiling && delay <= policy.max);
            prop_assert!(delay * 2 >= ceiling);
            prop_assert!(delay * 2 >= policy.initial);
            prop_assert!(policy.ceiling(failures + 1) >= ceiling);
        }

        /// Whatever the randomness, a failing key never beats `max_attempts_within`.
        #[test]
        fn no_randomness_beats_the_attempt_bound(
            initial in 1u64..120,
            max_factor in 1u64..200,
            units in proptest::collection::vec(any::<u64>(), 1..120),
            span in 60u64..7_200,
        ) {
            let policy = BackoffPolicy {
                initial: Duration::from_secs(initial),
                max: Duration::from_secs(initial * max_factor),
            };
            let span = Duration::from_secs(span);
            let bound = policy.max_attempts_within(span);
            let mut times = vec![Duration::ZERO];
            for (i, unit) in units.iter().enumerate() {
                let last = times[times.len() - 1];
                times.push(last + policy.delay_with(i as u32 + 1, *unit));
            }
            for (j, first) in times.iter().enumerate() {
                let in_span = times[j..].iter().take_while(|t| **t - *first < span).count();
                prop_assert!(in_span as u64 <= bound, "{} attempts in {:?}, bound {}", in_span, span, bound);
            }
        }
    }
}
