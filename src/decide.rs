//! What a pass would do for one key, as a pure function of (policy, observed state, now).
//! `plan` prints it and `once`/`run` act on it, so what `plan` says is what a pass does.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use crate::config::{KeyPolicy, Strategy};
use crate::journal::{Entry, Phase};
use crate::schedule::{self, KeyTimes};
use crate::store::StoreSnapshot;
use crate::zenml::{ApiKey, ServiceAccount};

/// The four actions of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rotate,
    Finalize,
    Wait,
    Blocked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rotate => "rotate",
            Action::Finalize => "finalize",
            Action::Wait => "wait",
            Action::Blocked => "blocked",
        }
    }
}

/// Why a key gets its action; the engine dispatches on this, people read `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// A journaled new value waits to be stored.
    ResumeJournal,
    /// A journaled intent whose rotate call never happened: drop it and decide afresh.
    StaleIntent,
    /// ZenML rotated but the new value never reached the journal.
    LostRotation,
    /// Nothing observable yet (ZenML or the store could not be read).
    Unreadable,
    /// The service account or key is missing or inactive.
    Unusable,
    /// Someone rotated the key outside the rotator; the stored value dies with the window.
    RotatedOutOfBand,
    /// The retain window of the last rotation ended and the previous value is not yet confirmed dead.
    FinalizeDue,
    /// A replace-strategy key waits to be deactivated.
    RetireDue,
    /// The store holds no value yet, or a value of another key.
    StoreEmpty,
    /// The cadence says so.
    Due,
    /// Not due yet, inside the retain window or outside a maintenance window.
    NotDue,
}

/// What was observed of one key, read-only.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub service_account: Option<ServiceAccount>,
    pub key: Option<ApiKey>,
    pub snapshot: Option<StoreSnapshot>,
    pub journal: Option<Entry>,
    /// Why ZenML or the store could not be read, if so.
    pub read_error: Option<String>,
}

/// One row of `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyPlan {
    pub policy: String,
    pub service_account: String,
    pub api_key: String,
    pub key_id: Option<String>,
    pub strategy: &'static str,
    pub last_rotated: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    pub next_due: Option<DateTime<Utc>>,
    pub action: Action,
    pub reason: String,
    #[serde(skip)]
    pub why: Why,
    #[serde(skip)]
    pub retain_until: Option<DateTime<Utc>>,
    /// Also due for rotation right after a finalize.
    #[serde(skip)]
    pub then_rotate: bool,
    /// When this key next needs a look: the earlier of `next_due` and a pending finalize or
    /// deactivation. The daemon sleeps until the earliest of these over all keys.
    #[serde(skip)]
    pub wake_at: Option<DateTime<Utc>>,
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// End of the previous value's validity after the key's last in-place rotation (ZenML's own numbers).
pub fn zenml_retain_until(key: &ApiKey) -> Option<DateTime<Utc>> {
    let last = key.last_rotated?;
    let minutes = key.retain_period_minutes.unwrap_or(0).max(0);
    Some(last + ChronoDuration::minutes(minutes))
}

/// Two server timestamps are the same event (the store keeps seconds).
fn same_instant(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() < 1500
}

pub fn decide(policy: &KeyPolicy, obs: &Observed, now: DateTime<Utc>) -> KeyPlan {
    let mut plan = decide_action(policy, obs, now);
    plan.wake_at = wake_at(policy, &plan, obs, now);
    plan
}

/// A waiting key may still have work before its next rotation: the end of the retain window
/// (finalize) or of the retiring key's window (deactivate).
fn wake_at(
    policy: &KeyPolicy,
    plan: &KeyPlan,
    obs: &Observed,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if plan.action != Action::Wait {
        return plan.next_due;
    }
    let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
    let pending = record.and_then(|r| match policy.strategy {
        Strategy::Rotate if r.finalized_at.is_none() && r.rotated_at.is_some() => plan.retain_until,
        Strategy::Rotate => None,
        Strategy::Replace => r.retiring_key_id.as_ref().and(r.retire_at),
    });
    [plan.next_due, pending.filter(|t| *t > now)]
        .into_iter()
        .flatten()
        .min()
}

fn decide_action(policy: &KeyPolicy, obs: &Observed, now: DateTime<Utc>) -> KeyPlan {
    let mut plan = KeyPlan {
        policy: policy.name.clone(),
        service_account: policy.service_account.clone(),
        api_key: policy.api_key.clone(),
        key_id: obs.key.as_ref().map(|k| k.id.to_string()),
        strategy: policy.strategy.as_str(),
        last_rotated: obs.key.as_ref().and_then(|k| k.last_rotated),
        age_seconds: obs
            .key
            .as_ref()
            .map(|k| (now - k.last_rotated.unwrap_or(k.created)).num_seconds()),
        next_due: None,
        action: Action::Blocked,
        reason: String::new(),
        why: Why::Unreadable,
        retain_until: None,
        then_rotate: false,
        wake_at: None,
    };
    let blocked = |mut plan: KeyPlan, why: Why, reason: String| {
        plan.action = Action::Blocked;
        plan.why = why;
        plan.reason = reason;
        plan
    };

    if let Some(err) = &obs.read_error {
        return blocked(plan, Why::Unreadable, err.clone());
    }
    let Some(sa) = &obs.service_account else {
        return blocked(
            plan,
            Why::Unusable,
            format!(
                "Service account {:?} does not exist on the server.",
                policy.service_account
            ),
        );
    };
    if !sa.active {
        return blocked(
            plan,
            Why::Unusable,
            format!(
                "Service account {:?} is deactivated; its keys cannot log in.",
                sa.name
            ),
        );
    }
    let Some(key) = &obs.key else {
        return blocked(
            plan,
            Why::Unusable,
            format!(
                "API key {:?} does not exist on service account {:?}.",
                policy.api_key, sa.name
            ),
        );
    };
    if !key.active {
        return blocked(
            plan,
            Why::Unusable,
            format!(
                "API key {:?} is deactivated; rotate only an active key.",
                key.name
            ),
        );
    }
    let Some(snapshot) = &obs.snapshot else {
        return blocked(plan, Why::Unreadable, "The store could not be read.".into());
    };
    if let Some(why) = &snapshot.unwritable {
        return blocked(
            plan,
            Why::Unusable,
            format!("The store refuses writes to {:?}: {why}.", policy.path),
        );
    }

    let retain_until = match policy.strategy {
        Strategy::Rotate => zenml_retain_until(key),
        Strategy::Replace => snapshot.record.as_ref().and_then(|r| {
            if r.retiring_key_id.is_some() {
                r.retire_at
            } else {
                None
            }
        }),
    };
    plan.retain_until = retain_until;
    let times = KeyTimes {
        created: key.created,
        last_rotated: key.last_rotated,
        retain_until,
    };
    let due = schedule::evaluate(policy, &times, now);
    plan.next_due = Some(due.next_due);

    // A rotation in flight comes first: its value must reach the store.
    if let Some(entry) = &obs.journal {
        match entry.phase {
            Phase::Rotated => {
                plan.action = Action::Rotate;
                plan.why = Why::ResumeJournal;
                plan.next_due = Some(now);
                plan.reason = format!(
                    "Resume the rotation started at {}: store the journaled new value ({}).",
                    fmt_time(entry.started_at),
                    entry.fingerprint.as_deref().unwrap_or("?")
                );
                return plan;
            }
            Phase::Intent => {
                let moved = match (key.last_rotated, entry.previous_last_rotated) {
                    (Some(now_rot), Some(before)) => !same_instant(now_rot, before),
                    (Some(_), None) => true,
                    _ => false,
                };
                if moved && policy.strategy == Strategy::Rotate {
                    return blocked(
                        plan,
                        Why::LostRotation,
                        format!(
                            "ZenML rotated the key at {} but the new value never reached the journal \
                             (the process stopped between the rotate call and the journal write); the \
                             stored value works until {}. Run `zenml-rotator rotate {} --force` to issue \
                             and store a new value.",
                            key.last_rotated.map(fmt_time).unwrap_or_default(),
                            retain_until.map(fmt_time).unwrap_or_else(|| "now".into()),
                            policy.name
                        ),
                    );
                }
                // The rotate call never happened: the pass drops the intent and then does what a
                // decision without it says. Returned here, so no later rule overwrites the `why`
                // the engine needs to drop it (a key not due would otherwise keep it forever).
                let fresh = Observed {
                    journal: None,
                    ..obs.clone()
                };
                return KeyPlan {
                    why: Why::StaleIntent,
                    ..decide(policy, &fresh, now)
                };
            }
        }
    }

    if policy.strategy == Strategy::Rotate
        && let (Some(record), Some(last)) = (&snapshot.record, key.last_rotated)
        && record.key_id == key.id.to_string()
        && let Some(recorded) = record.rotated_at
        && last > recorded
        && !same_instant(last, recorded)
    {
        return blocked(
            plan,
            Why::RotatedOutOfBand,
            format!(
                "The key was rotated outside zenml-rotator at {}; the stored value stops working at {}. \
                 Run `zenml-rotator rotate {} --force` to issue and store a new value now.",
                fmt_time(last),
                retain_until
                    .map(fmt_time)
                    .unwrap_or_else(|| "once the window ends".into()),
                policy.name
            ),
        );
    }

    // The previous value's window has ended: confirm it is dead (rotate) or deactivate it (replace).
    if let Some(record) = &snapshot.record
        && record.key_id == key.id.to_string()
    {
        let finalize = match policy.strategy {
            Strategy::Rotate => {
                record.finalized_at.is_none()
                    && record.rotated_at.is_some()
                    && retain_until.is_some_and(|u| u <= now)
            }
            Strategy::Replace => {
                record.retiring_key_id.is_some() && record.retire_at.is_some_and(|t| t <= now)
            }
        };
        if finalize {
            plan.action = Action::Finalize;
            plan.then_rotate = due.due_now;
            let then = if due.due_now {
                " The key is also due and rotates right after."
            } else {
                ""
            };
            match policy.strategy {
                Strategy::Rotate => {
                    plan.why = Why::FinalizeDue;
                    plan.reason = format!(
                        "The retain window of the rotation at {} ended at {}: confirm the previous value is rejected.{then}",
                        record.rotated_at.map(fmt_time).unwrap_or_default(),
                        retain_until.map(fmt_time).unwrap_or_default(),
                    );
                }
                Strategy::Replace => {
                    plan.why = Why::RetireDue;
                    plan.reason = format!(
                        "The retain window of key {} ended at {}: deactivate it.{then}",
                        record.retiring_key_id.as_deref().unwrap_or("?"),
                        record.retire_at.map(fmt_time).unwrap_or_default(),
                    );
                }
            }
            return plan;
        }
    }

    // No current version is no value, even where the path itself exists (an AWS secret created
    // without a value, as infrastructure-as-code tools do, waiting for the rotator to fill it).
    let no_value = snapshot.version.is_none() || snapshot.current_deleted;
    let store_empty = no_value
        || snapshot
            .record
            .as_ref()
            .is_some_and(|r| r.key_id != key.id.to_string() && policy.strategy == Strategy::Rotate);
    if store_empty {
        if let Some(until) = retain_until.filter(|u| *u > now) {
            plan.action = Action::Wait;
            plan.why = Why::NotDue;
            plan.next_due = Some(until);
            plan.reason = format!(
                "The store holds no working value for this key, but the previous value is valid until {}; rotating now would cut it off.",
                fmt_time(until)
            );
            return plan;
        }
        plan.action = Action::Rotate;
        plan.why = Why::StoreEmpty;
        plan.next_due = Some(now);
        plan.reason = if no_value {
            "The store holds no value for this key yet.".into()
        } else {
            "The store holds the value of another API key: rotate to store a working one.".into()
        };
        return plan;
    }

    if due.due_now {
        plan.action = Action::Rotate;
        plan.why = Why::Due;
    } else {
        plan.action = Action::Wait;
        plan.why = Why::NotDue;
    }
    plan.reason = due.reason.describe();
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::config::Cadence;
    use crate::store::RotationRecord;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy() -> KeyPolicy {
        KeyPolicy {
            name: "p".into(),
            service_account: "sa".into(),
            api_key: "default".into(),
            store: "file".into(),
            path: "p.env".into(),
            strategy: Strategy::Rotate,
            cadence: Cadence::Every(Duration::from_secs(30 * 86400)),
            window: None,
            jitter: None,
            retain: Duration::from_secs(3600),
            retire_previous: false,
            delete_after: None,
        }
    }

    const KEY: &str = "6f1c1d2e-0000-4000-8000-000000000001";

    fn observed(last_rotated: Option<&str>, record: Option<RotationRecord>) -> Observed {
        let key = ApiKey {
            id: Uuid::parse_str(KEY).unwrap(),
            name: "default".into(),
            description: String::new(),
            active: true,
            created: at("2026-01-01T00:00:00Z"),
            updated: at("2026-01-01T00:00:00Z"),
            service_account_id: Uuid::nil(),
            service_account_name: "sa".into(),
            retain_period_minutes: Some(60),
            last_login: None,
            last_rotated: last_rotated.map(at),
        };
        Observed {
            service_account: Some(ServiceAccount {
                id: Uuid::nil(),
                name: "sa".into(),
                active: true,
                created: at("2026-01-01T00:00:00Z"),
                description: String::new(),
            }),
            key: Some(key),
            snapshot: Some(StoreSnapshot {
                exists: true,
                version: Some("1".into()),
                record,
                ..StoreSnapshot::default()
            }),
            journal: None,
            read_error: None,
        }
    }

    fn ours(rotated: &str, finalized: Option<&str>) -> RotationRecord {
        RotationRecord {
            policy: "p".into(),
            key_id: KEY.into(),
            rotated_at: Some(at(rotated)),
            retain_until: Some(at(rotated) + ChronoDuration::hours(1)),
            finalized_at: finalized.map(at),
            ..RotationRecord::default()
        }
    }

    #[test]
    fn the_actions_over_a_rotation_life() {
        let rotated = "2026-03-01T00:00:00Z";
        let cases = [
            // (now, last_rotated, record, action, why)
            (
                "2026-03-01T00:30:00Z",
                Some(rotated),
                Some(ours(rotated, None)),
                Action::Wait,
                Why::NotDue,
            ),
            (
                "2026-03-01T01:00:01Z",
                Some(rotated),
                Some(ours(rotated, None)),
                Action::Finalize,
                Why::FinalizeDue,
            ),
            (
                "2026-03-01T02:00:00Z",
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Wait,
                Why::NotDue,
            ),
            (
                "2026-04-01T00:00:00Z",
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Rotate,
                Why::Due,
            ),
            // Someone else rotated after us: our stored value is the old generation now.
            (
                "2026-03-02T00:00:00Z",
                Some("2026-03-01T12:00:00Z"),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Blocked,
                Why::RotatedOutOfBand,
            ),
        ];
        for (now, last, record, action, why) in cases {
            let plan = decide(&policy(), &observed(last, record), at(now));
            assert_eq!(
                (plan.action, plan.why.clone()),
                (action, why),
                "at {now}: {}",
                plan.reason
            );
            assert!(!plan.reason.is_empty());
        }
    }

    #[test]
    fn a_waiting_key_wakes_the_daemon_for_its_finalize() {
        let rotated = "2026-03-01T00:00:00Z";
        let plan = decide(
            &policy(),
            &observed(Some(rotated), Some(ours(rotated, None))),
            at("2026-03-01T00:30:00Z"),
        );
        assert_eq!(plan.action, Action::Wait);
        assert_eq!(plan.next_due, Some(at("2026-03-31T00:00:00Z")));
        assert_eq!(plan.wake_at, Some(at("2026-03-01T01:00:00Z")));
        // Once finalized, only the next rotation matters.
        let plan = decide(
            &policy(),
            &observed(
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
            ),
            at("2026-03-01T02:00:00Z"),
        );
        assert_eq!(plan.wake_at, plan.next_due);
    }

    #[test]
    fn an_empty_store_is_filled_but_never_inside_the_window() {
        let mut obs = observed(None, None);
        obs.snapshot = Some(StoreSnapshot::default());
        let plan = decide(&policy(), &obs, at("2026-01-02T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));

        let mut obs = observed(Some("2026-01-02T00:00:00Z"), None);
        obs.snapshot = Some(StoreSnapshot::default());
        let plan = decide(&policy(), &obs, at("2026-01-02T00:10:00Z"));
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        assert_eq!(plan.next_due, Some(at("2026-01-02T01:00:00Z")));
    }

    #[test]
    fn unusable_keys_and_stores_are_blocked_with_a_reason() {
        let now = at("2026-02-01T00:00:00Z");
        let mut obs = observed(None, None);
        obs.service_account = None;
        assert_eq!(decide(&policy(), &obs, now).why, Why::Unusable);

        let mut obs = observed(None, None);
        if let Some(k) = obs.key.as_mut() {
            k.active = false;
        }
        let plan = decide(&policy(), &obs, now);
        assert_eq!(plan.action, Action::Blocked);
        assert!(plan.reason.contains("deactivated"), "{}", plan.reason);

        let mut obs = observed(None, None);
        if let Some(s) = obs.snapshot.as_mut() {
            s.unwritable = Some("the secret is scheduled for deletion".into());
        }
        let plan = decide(&policy(), &obs, now);
        assert_eq!(plan.action, Action::Blocked);
        assert!(
            plan.reason.contains("scheduled for deletion"),
            "{}",
            plan.reason
        );

        let obs = Observed {
            read_error: Some("Store: unavailable".into()),
            ..Observed::default()
        };
        assert_eq!(decide(&policy(), &obs, now).why, Why::Unreadable);
    }

    #[test]
    fn a_journaled_value_is_resumed_before_anything_else() {
        let rotated = "2026-03-01T00:00:00Z";
        let mut obs = observed(Some(rotated), Some(ours(rotated, None)));
        obs.journal = Some(Entry {
            policy: "p".into(),
            token: "t".repeat(36),
            phase: Phase::Rotated,
            strategy: "rotate".into(),
            service_account: "sa".into(),
            service_account_id: Uuid::nil().to_string(),
            api_key: "default".into(),
            key_id: KEY.into(),
            store: "file".into(),
            path: "p.env".into(),
            started_at: at("2026-03-05T00:00:00Z"),
            previous_last_rotated: Some(at(rotated)),
            rotated_at: None,
            retain_minutes: 60,
            fingerprint: Some("abcd0123".into()),
            value: None,
        });
        let plan = decide(&policy(), &obs, at("2026-03-05T00:00:10Z"));
        assert_eq!(
            (plan.action, plan.why),
            (Action::Rotate, Why::ResumeJournal)
        );
    }
}
