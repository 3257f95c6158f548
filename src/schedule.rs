//! When a key is due: a pure function of (policy, observed key state, now), like a reconciler.
//! Timers only decide when to look again, so a missed tick (daemon down, machine asleep) is
//! caught up on the next pass, once. Also the deterministic per-policy jitter offset.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Cadence, KeyPolicy, MaintenanceWindow};

/// Stands in for "never": the last second that RFC 3339 can write with a four-digit year, so
/// `plan --output json` and the metrics stay printable. Every computed time saturates here.
pub const FAR_FUTURE: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(t) => t,
    None => DateTime::<Utc>::MAX_UTC,
};

/// What the rotator observed about one key (from ZenML, or the store for `replace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTimes {
    /// When ZenML created the key.
    pub created: DateTime<Utc>,
    /// ZenML's `last_rotated`; `None` when the key was never rotated.
    pub last_rotated: Option<DateTime<Utc>>,
    /// End of the previous value's validity: `last_rotated` + the retain of the *last* rotation
    /// (ZenML's `retain_period_minutes`), or for `replace` the retiring key's deactivation
    /// time. `None`: nothing is retained.
    pub retain_until: Option<DateTime<Utc>>,
}

impl KeyTimes {
    /// When the current value was issued, as far as the rotator can tell. A value cannot predate
    /// its key, so a `last_rotated` before `created` (clock skew between ZenML replicas, or a
    /// re-created key) counts from `created`.
    pub fn value_issued(&self) -> DateTime<Utc> {
        match self.last_rotated {
            Some(rotated) => rotated.max(self.created),
            None => self.created,
        }
    }
}

/// Why a key that can never be placed in time is never due. Config validation rules these out;
/// they exist so a bad state reads as a reason instead of a hang or a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unschedulable {
    /// The `schedule` cron expression has no fire time after the current value was issued.
    ScheduleNeverFires,
    /// The maintenance window never opens again, or has a zero duration.
    WindowNeverOpens,
}

/// The constraint that decides `next_due`, for `plan`'s `reason` column and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    /// The cadence does not make the key due until `at` (`next_due` may be later: the first
    /// maintenance window from then on).
    NotYetDue { at: DateTime<Utc> },
    /// The previous value stays valid until `until`; rotating before then would cut off every
    /// consumer still on it (invariant 1).
    RetainWindow { until: DateTime<Utc> },
    /// Due, but maintenance windows allow rotating only from `opens` on.
    OutsideMaintenanceWindow { opens: DateTime<Utc> },
    /// Due now, and has been since `since`.
    Due { since: DateTime<Utc> },
    /// Never due: see [`Unschedulable`].
    Unschedulable(Unschedulable),
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl DueReason {
    /// One sentence for people (`plan`'s `reason` column).
    pub fn describe(&self) -> String {
        match self {
            DueReason::NotYetDue { at } => {
                format!("Not due for rotation until {}.", rfc3339(*at))
            }
            DueReason::RetainWindow { until } => format!(
                "The previous value stays valid until {}; rotating earlier would cut off consumers still using it.",
                rfc3339(*until)
            ),
            DueReason::OutsideMaintenanceWindow { opens } => format!(
                "Due, but outside its maintenance window; the next window opens at {}.",
                rfc3339(*opens)
            ),
            DueReason::Due { since } => format!("Due since {}.", rfc3339(*since)),
            DueReason::Unschedulable(Unschedulable::ScheduleNeverFires) => {
                "Never due: its schedule has no fire time after the last rotation.".to_owned()
            }
            DueReason::Unschedulable(Unschedulable::WindowNeverOpens) => {
                "Never rotated: its maintenance window never opens.".to_owned()
            }
        }
    }
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The schedule's verdict on one key at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueDecision {
    /// When the cadence makes the key due, jitter included.
    pub due_at: DateTime<Utc>,
    /// When a rotation may actually start: at or after `due_at` and the end of the retain
    /// window, inside a maintenance window. While the key is due inside a window this is the
    /// later of those and the opening of the window it is in (so it is `<= now`); once a window
    /// is missed it moves on to the next opening. Non-decreasing in `now` for fixed key state.
    pub next_due: DateTime<Utc>,
    /// Whether a pass at `now` should rotate: `next_due <= now` (always false when unschedulable).
    pub due_now: bool,
    pub reason: DueReason,
}

/// Evaluates one policy against the observed state of its key at `now`.
pub fn evaluate(policy: &KeyPolicy, times: &KeyTimes, now: DateTime<Utc>) -> DueDecision {
    let jitter = policy
        .jitter
        .map_or(Duration::ZERO, |j| jitter_offset(&policy.name, j));
    let issued = times.value_issued();
    let due_at = match &policy.cadence {
        Cadence::Every(every) => Some(saturating_add(saturating_add(issued, *every), jitter)),
        // Only the first fire time after the rotation counts: any number of missed ones make
        // the key due once, and the rotation then moves the anchor past all of them.
        Cadence::Schedule(spec) => spec
            .next_after(issued)
            .map(|fire| saturating_add(fire, jitter)),
    };
    let Some(due_at) = due_at else {
        return unschedulable(FAR_FUTURE, Unschedulable::ScheduleNeverFires);
    };
    let retain_until = times.retain_until.unwrap_or(due_at);
    // The earliest instant both the cadence and invariant 1 allow.
    let earliest = due_at.max(retain_until);
    let next_due = match &policy.window {
        None => earliest,
        Some(window) => match in_or_next_window(window, earliest, now) {
            Some(t) => t,
            None => return unschedulable(due_at, Unschedulable::WindowNeverOpens),
        },
    };
    let due_now = next_due <= now;
    let reason = if due_now {
        DueReason::Due { since: next_due }
    } else if now < earliest {
        if retain_until > due_at {
            DueReason::RetainWindow {
                until: retain_until,
            }
        } else {
            DueReason::NotYetDue { at: due_at }
        }
    } else {
        DueReason::OutsideMaintenanceWindow { opens: next_due }
    };
    DueDecision {
        due_at,
        next_due,
        due_now,
        reason,
    }
}

fn unschedulable(due_at: DateTime<Utc>, why: Unschedulable) -> DueDecision {
    DueDecision {
        due_at,
        next_due: FAR_FUTURE,
        due_now: false,
        reason: DueReason::Unschedulable(why),
    }
}

/// Places a key allowed from `earliest` into the maintenance windows, as seen at `now`.
/// Windows are `[open, open + duration)` for each fire time `open` of `window.opens`, so `t` is
/// inside one exactly when the first opening after `t - duration` is at or before `t`. With
/// `t = max(earliest, now)` and that opening `o`:
/// - `o <= t`: inside a window; the rotation may happen from `max(earliest, o)`;
/// - `o > t`: outside; `o` is the next opening (a window missed while the daemon was down is gone).
///
/// Both are `max(earliest, o)`: one cron look-up, nothing to loop on. `None`: never opens.
fn in_or_next_window(
    window: &MaintenanceWindow,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if window.duration.is_zero() {
        return None;
    }
    let t = earliest.max(now);
    let Some(lookback) = TimeDelta::from_std(window.duration)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
    else {
        // A window longer than the calendar is always open.
        return Some(earliest);
    };
    window
        .opens
        .next_after(lookback)
        .map(|open| earliest.max(open))
}

/// `t + d`, saturating at [`FAR_FUTURE`] instead of overflowing.
pub fn saturating_add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .map_or(FAR_FUTURE, |sum| sum.min(FAR_FUTURE))
}

/// The deterministic jitter offset of a policy, in `[0, jitter)`, the same on every run,
/// process, platform and version, so `plan` can show it. Recipe (documented so it can be
/// reproduced elsewhere): the first 8 bytes of SHA-256(`"zenml-rotator/jitter/v1\0"` + name),
/// big-endian, times the jitter in whole seconds (nanoseconds when under a second), shifted
/// right by 64.
pub fn jitter_offset(policy_name: &str, jitter: Duration) -> Duration {
    let mut hasher = Sha256::new();
    // A domain tag, so this offset is unrelated to any other hash of the same name.
    hasher.update(b"zenml-rotator/jitter/v1\0");
    hasher.update(policy_name.as_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let unit = u64::from_be_bytes(head);
    let secs = jitter.as_secs();
    if secs > 0 {
        Duration::from_secs(scale(unit, secs))
    } else {
        Duration::from_nanos(scale(unit, u64::from(jitter.subsec_nanos())))
    }
}

/// Maps a uniform `unit` onto `[0, n)` by multiply-shift (0 when `n` is 0): no division, and
/// every value of the range is hit (a float would round the top of large ranges).
pub(crate) fn scale(unit: u64, n: u64) -> u64 {
    // (unit * n) >> 64 < n because unit < 2^64; the result fits in u64.
    ((u128::from(unit) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests;
