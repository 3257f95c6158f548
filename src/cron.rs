//! 5-field cron expressions read in a time zone: parsing for validation and the times they fire.
//! Used by config validation (bad expressions, gaps shorter than `retain`) and by the scheduler.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::config::CronSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronSpecError {
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), found {0}; seconds are not supported"
    )]
    FieldCount(usize),
    #[error("invalid cron expression: {0}")]
    Invalid(String),
    #[error("the expression never fires")]
    NeverFires,
    #[error("unknown time zone {0:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    UnknownTimeZone(String),
}

/// Parses an IANA time-zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, CronSpecError> {
    Tz::from_str(name).map_err(|_| CronSpecError::UnknownTimeZone(name.to_owned()))
}

fn compile(expr: &str) -> Result<Cron, CronSpecError> {
    let trimmed = expr.trim();
    // Nicknames (@daily, @weekly, ...) are one field; anything else must be exactly five.
    if !trimmed.starts_with('@') {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(CronSpecError::FieldCount(fields));
        }
    }
    Cron::from_str(trimmed).map_err(|e| CronSpecError::Invalid(e.to_string()))
}

impl CronSpec {
    /// Validates `expr` (5 fields, or a nickname such as `@daily`) and that it fires at all.
    pub fn parse(expr: &str, timezone: Tz) -> Result<CronSpec, CronSpecError> {
        let cron = compile(expr)?;
        let spec = CronSpec {
            expr: expr.trim().to_owned(),
            timezone,
        };
        // A pattern such as "0 0 31 2 *" parses but never matches.
        let probe = Utc::now().with_timezone(&timezone);
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(CronSpecError::NeverFires);
        }
        Ok(spec)
    }

    fn cron(&self) -> Option<Cron> {
        compile(&self.expr).ok()
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron()?
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron()?
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The first gap between consecutive fire times in `[from, from + horizon]` that is shorter
    /// than `threshold`, as (fire time, gap). Stops at the first one, so dense schedules are cheap.
    /// A year's horizon covers every month length and both DST changes of the zone.
    pub fn gap_shorter_than(
        &self,
        threshold: Duration,
        from: DateTime<Utc>,
        horizon: Duration,
    ) -> Option<(DateTime<Utc>, Duration)> {
        let cron = self.cron()?;
        let end = from + chrono::Duration::from_std(horizon).ok()?;
        let mut prev = cron
            .find_next_occurrence(&from.with_timezone(&self.timezone), false)
            .ok()?;
        // A bound on the work for pathological inputs: one fire per minute for a year is 525,600.
        for _ in 0..600_000 {
            let next = cron.find_next_occurrence(&prev, false).ok()?;
            let gap = (next - prev).to_std().ok()?;
            if gap < threshold {
                return Some((prev.with_timezone(&Utc), gap));
            }
            if next.with_timezone(&Utc) > end {
                return None;
            }
            prev = next;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_only() {
        assert_eq!(
            CronSpec::parse("0 0 3 * * SUN", Tz::UTC),
            Err(CronSpecError::FieldCount(6))
        );
        assert_eq!(
            CronSpec::parse("0 3 *", Tz::UTC),
            Err(CronSpecError::FieldCount(3))
        );
        assert!(matches!(
            CronSpec::parse("61 3 * * *", Tz::UTC),
            Err(CronSpecError::Invalid(_))
        ));
        assert!(CronSpec::parse("0 3 * * SUN", Tz::UTC).is_ok());
        assert!(CronSpec::parse("@daily", Tz::UTC).is_ok());
    }

    #[test]
    fn never_firing_is_rejected() {
        assert_eq!(
            CronSpec::parse("0 0 31 2 *", Tz::UTC),
            Err(CronSpecError::NeverFires)
        );
    }

    #[test]
    fn next_and_previous_in_utc_and_a_zone() {
        let s = CronSpec::parse("0 3 * * SUN", Tz::UTC).unwrap();
        // 2026-11-28 is a Saturday.
        assert_eq!(
            s.next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-29T03:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-11-29T03:00:00Z")),
            Some(at("2026-12-06T03:00:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-11-29T03:00:00Z")),
            Some(at("2026-11-29T03:00:00Z"))
        );
        let berlin =
            CronSpec::parse("0 3 * * *", parse_timezone("Europe/Berlin").unwrap()).unwrap();
        // 03:00 in Berlin is 02:00 UTC in winter.
        assert_eq!(
            berlin.next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-29T02:00:00Z"))
        );
    }

    #[test]
    fn gaps_shorter_than_retain_are_found() {
        let hourly = CronSpec::parse("0 * * * *", Tz::UTC).unwrap();
        let year = Duration::from_secs(366 * 86400);
        let from = at("2026-01-01T00:00:00Z");
        assert!(
            hourly
                .gap_shorter_than(Duration::from_secs(3600), from, year)
                .is_none()
        );
        assert!(
            hourly
                .gap_shorter_than(Duration::from_secs(3601), from, year)
                .is_some()
        );
        // Uneven: 02:00 and 03:00 are an hour apart even though the schedule is "daily-ish".
        let uneven = CronSpec::parse("0 2,3 * * *", Tz::UTC).unwrap();
        let (_, gap) = uneven
            .gap_shorter_than(Duration::from_secs(2 * 3600), from, year)
            .unwrap();
        assert_eq!(gap, Duration::from_secs(3600));
    }

    #[test]
    fn bad_time_zone() {
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
    }
}
