//! 5-field cron expressions read in a time zone: parsing for validation and the times they fire.
//! Used by config validation (bad expressions, gaps shorter than `retain`) and by the scheduler.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A 5-field cron expression and the time zone it is read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    pub expr: String,
    pub timezone: Tz,
}

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

    /// The wall-clock time of `t` in the zone, whole seconds, dressed as UTC: croner only ever
    /// sees these, so its own DST handling never runs (croner 3.0.1, asked in a zone, returns
    /// times before its argument during a fall-back hour and invents fire times right after a
    /// spring-forward gap). `instant_of` maps wall-clock times back to instants.
    fn wall_clock(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let wall = t.with_timezone(&self.timezone).naive_local();
        Utc.from_utc_datetime(&wall.with_nanosecond(0).unwrap_or(wall))
    }

    /// The instant a wall-clock fire time stands for. Read on the zone's clock: a time the clock
    /// shows twice (autumn) fires once, at its first occurrence; a time it skips (spring) fires
    /// once, at the first instant after the gap. This mapping never goes backwards as the
    /// wall-clock time advances, which is what lets the scans below stop at the first hit.
    fn instant_of(&self, wall: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let wall = wall.naive_utc();
        if let Some(t) = self.timezone.from_local_datetime(&wall).earliest() {
            return Some(t.with_timezone(&Utc));
        }
        let valid = |w: NaiveDateTime| self.timezone.from_local_datetime(&w).earliest();
        // In a gap: find its end by minutes, then by seconds (offsets of old zones had seconds).
        let minute = TimeDelta::minutes(1);
        let mut below = wall;
        for _ in 0..GAP_SEARCH_MINUTES {
            let probe = below.checked_add_signed(minute)?;
            if valid(probe).is_some() {
                return (1..=60)
                    .find_map(|s| valid(below.checked_add_signed(TimeDelta::seconds(s))?))
                    .map(|t| t.with_timezone(&Utc));
            }
            below = probe;
        }
        None
    }

    fn next_with(&self, cron: &Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Every wall-clock time up to t's own maps to an instant <= t, so the scan starts there;
        // it only repeats across wall-clock times that map to <= t (the second pass of an
        // autumn hour, or the fire times of a spring gap that all map to its end).
        let mut wall = self.wall_clock(t);
        for _ in 0..SCAN_LIMIT {
            wall = cron.find_next_occurrence(&wall, false).ok()?;
            let at = self.instant_of(wall)?;
            if at > t {
                return Some(at);
            }
        }
        None
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_with(&self.cron()?, t)
    }

    /// The last fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = self.cron()?;
        // While clocks are set back, wall-clock times later than t's still map to instants
        // before t: start above them, by the larger of the offsets now and a day ago.
        let offset = |at: DateTime<Utc>| {
            i64::from(
                self.timezone
                    .offset_from_utc_datetime(&at.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        };
        let day_ago = t.checked_sub_signed(TimeDelta::hours(25)).unwrap_or(t);
        let set_back = (offset(day_ago) - offset(t)).max(0);
        let mut wall = self
            .wall_clock(t)
            .checked_add_signed(TimeDelta::seconds(set_back))?;
        let mut inclusive = true;
        for _ in 0..SCAN_LIMIT {
            wall = cron.find_previous_occurrence(&wall, inclusive).ok()?;
            inclusive = false;
            let at = self.instant_of(wall)?;
            if at <= t {
                return Some(at);
            }
        }
        None
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
        let mut prev = self.next_with(&cron, from)?;
        // A bound on the work for pathological inputs: one fire per minute for a year is 525,600.
        for _ in 0..600_000 {
            let next = self.next_with(&cron, prev)?;
            let gap = (next - prev).to_std().ok()?;
            if gap < threshold {
                return Some((prev, gap));
            }
            if next > end {
                return None;
            }
            prev = next;
        }
        None
    }
}

/// Wall-clock fire times one scan may pass over before giving up: a minutely schedule meets
/// 60 per hour of a set-back; no zone in use sets its clocks back by more than a few hours.
const SCAN_LIMIT: usize = 10_000;
/// The longest gap to look across: a whole day (Samoa skipped 2011-12-30).
const GAP_SEARCH_MINUTES: usize = 25 * 60;

#[cfg(test)]
mod tests;
