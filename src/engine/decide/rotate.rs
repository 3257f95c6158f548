//! Strategy `rotate` (in place, ZenML's `rotate --retain`): the rules of a decision once the
//! shared checks passed. Pure.

use chrono::{DateTime, Utc};

use super::{
    Action, InFlight, KeyPlan, Observed, Phase, Why, resume, same_instant, store_unread,
    zenml_retain_until,
};
use crate::config::KeyPolicy;
use crate::schedule::{self, KeyTimes};
use crate::store::{RotationRecord, StoreSnapshot};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, ServiceAccount};

pub(super) fn decide(
    policy: &KeyPolicy,
    obs: &Observed,
    sa: &ServiceAccount,
    mut plan: KeyPlan,
    now: DateTime<Utc>,
) -> KeyPlan {
    let Some(key) = &obs.key else {
        let reason = format!(
            "API key {:?} does not exist on service account {:?}.",
            policy.api_key, sa.name
        );
        return plan.blocked(Why::Unusable, reason);
    };
    if !key.active {
        let reason = format!(
            "API key {:?} is deactivated; rotate only an active key.",
            key.name
        );
        return plan.blocked(Why::Unusable, reason);
    }
    let Some(snapshot) = &obs.snapshot else {
        return store_unread(plan);
    };
    let retain_until = zenml_retain_until(key);
    plan.retain_until = retain_until;
    let times = KeyTimes {
        created: key.created,
        last_rotated: key.last_rotated,
        retain_until,
    };
    let due = schedule::evaluate(policy, &times, now);
    plan.next_due = Some(due.next_due);

    // A rotation in flight comes first: its value must reach the store.
    if let Some(in_flight) = &obs.in_flight {
        return in_flight_first(policy, obs, key, in_flight, plan, now);
    }
    let key_id = key.id.to_string();
    if let Some(record) = snapshot
        .record
        .as_ref()
        .filter(|r| r.rescue_for.as_deref() == Some(key_id.as_str()))
    {
        return rescued(obs, record, plan, now);
    }
    if rotated_out_of_band(key, snapshot) {
        return lost(key, plan, Lost::OutOfBand, now);
    }
    let ours = snapshot
        .record
        .as_ref()
        .filter(|r| r.key_id == key_id && r.rotated_at.is_some());
    // The previous value's window ends (and a rescue key that stood in before is retired) then.
    let finalize_at = ours.and(retain_until).map(|until| {
        ours.and_then(|r| r.retire_at)
            .map_or(until, |retire| until.max(retire))
    });
    // While the key waits, the end of the window of an unfinalized rotation of ours needs a look.
    plan.follow_up_at = ours.filter(|r| r.finalized_at.is_none()).and(finalize_at);

    // The previous value's window has ended: confirm it is dead.
    if let Some(record) = ours.filter(|r| r.finalized_at.is_none())
        && finalize_at.is_some_and(|u| u <= now)
    {
        let then = if due.due_now {
            " The key is also due and rotates right after."
        } else {
            ""
        };
        let retiring = match &record.retiring_key_id {
            Some(id) => format!(" Retire the rescue key {id} that stood in before."),
            None => String::new(),
        };
        let reason = format!(
            "The retain window of the rotation at {} ended at {}: confirm the previous value is rejected.{retiring}{then}",
            record.rotated_at.map(rfc3339).unwrap_or_default(),
            finalize_at.map(rfc3339).unwrap_or_default(),
        );
        plan.set(Action::Finalize, Why::FinalizeDue, reason);
        return plan;
    }

    // No current version is no value, even where the path itself exists (an AWS secret created
    // without a value, as infrastructure-as-code tools do, waiting for the rotator to fill it).
    let no_value = snapshot.version.is_none() || snapshot.current_deleted;
    let store_empty = no_value
        || snapshot
            .record
            .as_ref()
            .is_some_and(|r| r.key_id != key.id.to_string());
    if store_empty {
        return fill_store(plan, retain_until, no_value, now);
    }

    let (action, why) = if due.due_now {
        (Action::Rotate, Why::Due)
    } else {
        (Action::Wait, Why::NotDue)
    };
    plan.set(action, why, due.reason.describe());
    plan
}

/// A journaled rotation: resume a kept value; an intent is either a lost answer (the key moved)
/// or a rotate call that never happened (drop it and decide afresh).
fn in_flight_first(
    policy: &KeyPolicy,
    obs: &Observed,
    key: &ApiKey,
    in_flight: &InFlight,
    plan: KeyPlan,
    now: DateTime<Utc>,
) -> KeyPlan {
    match in_flight.phase {
        Phase::Rotated => resume(plan, in_flight, now),
        Phase::Intent => {
            let moved = match (key.last_rotated, in_flight.previous_last_rotated) {
                (Some(now_rot), Some(before)) => !same_instant(now_rot, before),
                (Some(_), None) => true,
                _ => false,
            };
            if moved {
                return lost(key, plan, Lost::Answer, now);
            }
            // The rotate call never happened: the pass drops the intent and then does what a
            // decision without it says. Returned here, so no later rule overwrites the `why`
            // the engine needs to drop it (a key not due would otherwise keep it forever).
            let fresh = Observed {
                in_flight: None,
                ..obs.clone()
            };
            KeyPlan {
                why: Why::StaleIntent,
                follow_up_at: None,
                ..super::decide(policy, &fresh, now)
            }
        }
    }
}

/// Someone rotated the key after the rotation the store records.
fn rotated_out_of_band(key: &ApiKey, snapshot: &StoreSnapshot) -> bool {
    let (Some(record), Some(last)) = (snapshot.record.as_ref(), key.last_rotated) else {
        return false;
    };
    record.key_id == key.id.to_string()
        && record
            .rotated_at
            .is_some_and(|recorded| last > recorded && !same_instant(last, recorded))
}

/// How the key came to hold a value nobody kept.
enum Lost {
    /// A rotation of ours whose answer never reached anyone (a crash, a cut connection).
    Answer,
    /// A rotation outside the rotator.
    OutOfBand,
}

/// ZenML holds a new value nobody kept. While the stored value still works (the previous
/// generation, until the window ends), a rescue key stands in; once it stopped working, nobody
/// can be using it, and the key is simply rotated again.
fn lost(key: &ApiKey, mut plan: KeyPlan, how: Lost, now: DateTime<Utc>) -> KeyPlan {
    let at = key.last_rotated.map(rfc3339).unwrap_or_default();
    let (what, why) = match how {
        Lost::Answer => (
            format!(
                "ZenML rotated the key at {at} but nobody kept the new value (a crash or a lost answer)"
            ),
            Why::LostRotation,
        ),
        Lost::OutOfBand => (
            format!("The key was rotated outside zenml-rotator at {at}"),
            Why::RotatedOutOfBand,
        ),
    };
    plan.next_due = Some(now);
    match plan.retain_until.filter(|u| *u > now) {
        Some(until) => {
            let reason = format!(
                "{what}; the stored value works until {}. Recover: store a rescue key (a new key of \
                 the service account) now; when that window ends, rotate the key again (cutting off \
                 the value nobody has) and retire the rescue key.",
                rfc3339(until)
            );
            plan.set(Action::Recover, why, reason);
        }
        None => {
            let reason = format!(
                "{what}, and the stored value stopped working at {}: the stored value is refused: \
                 replacing it.",
                plan.retain_until.map(rfc3339).unwrap_or_else(|| at.clone())
            );
            plan.set(Action::Rotate, Why::StoredRefused, reason);
        }
    }
    plan
}

/// A rescue key stands in for the policy's key (`record.key_id`, for `record.rescue_for`).
fn rescued(
    obs: &Observed,
    record: &RotationRecord,
    mut plan: KeyPlan,
    now: DateTime<Utc>,
) -> KeyPlan {
    let rescue = obs
        .family
        .as_ref()
        .and_then(|f| f.keys.iter().find(|k| k.id.to_string() == record.key_id));
    let until = record.rescue_until.unwrap_or(now);
    plan.retain_until = Some(until);
    match rescue {
        Some(r) if r.active && until > now => {
            plan.next_due = Some(until);
            plan.follow_up_at = Some(until);
            let reason = format!(
                "Rescue key {:?} ({}) stands in for the key until {}, when the window of the \
                 rotation nobody kept ends; then the key is rotated again and the rescue key retired.",
                r.name,
                r.id,
                rfc3339(until)
            );
            plan.set(Action::Wait, Why::Rescued, reason);
        }
        Some(r) if r.active => {
            plan.next_due = Some(now);
            let reason = format!(
                "The window of the rotation nobody kept ended at {}: rotate the key again (its \
                 unknown value is cut off), store it, and retire rescue key {:?} after the retain window.",
                rfc3339(until),
                r.name
            );
            plan.set(Action::Recover, Why::ReturnFromRescue, reason);
        }
        _ => {
            plan.next_due = Some(now);
            let reason = format!(
                "The stored rescue key {} is deleted or deactivated: the stored value is refused: replacing it.",
                record.key_id
            );
            plan.set(Action::Rotate, Why::StoredRefused, reason);
        }
    }
    plan
}

/// The store holds no working value for this key: fill it, unless that would cut off the
/// previous value inside its window.
fn fill_store(
    mut plan: KeyPlan,
    retain_until: Option<DateTime<Utc>>,
    no_value: bool,
    now: DateTime<Utc>,
) -> KeyPlan {
    if let Some(until) = retain_until.filter(|u| *u > now) {
        plan.next_due = Some(until);
        let reason = format!(
            "The store holds no working value for this key, but the previous value is valid until {}; rotating now would cut it off.",
            rfc3339(until)
        );
        plan.set(Action::Wait, Why::NotDue, reason);
        return plan;
    }
    plan.next_due = Some(now);
    let reason = if no_value {
        "The store holds no value for this key yet.".into()
    } else {
        "The store holds the value of another API key: rotate to store a working one.".into()
    };
    plan.set(Action::Rotate, Why::StoreEmpty, reason);
    plan
}
