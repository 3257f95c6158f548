//! Strategy `rotate` (in place, ZenML's `rotate --retain`): the rules of a decision once the
//! shared checks passed. Pure.

use chrono::{DateTime, Utc};

use super::{
    Action, InFlight, KeyPlan, Observed, Phase, Why, resume, same_instant, store_unread,
    zenml_retain_until,
};
use crate::config::KeyPolicy;
use crate::schedule::{self, KeyTimes};
use crate::store::StoreSnapshot;
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
    if let Some(reason) = rotated_out_of_band(policy, key, snapshot, retain_until) {
        return plan.blocked(Why::RotatedOutOfBand, reason);
    }
    let ours = snapshot
        .record
        .as_ref()
        .filter(|r| r.key_id == key.id.to_string() && r.rotated_at.is_some());
    // While the key waits, the end of the window of an unfinalized rotation of ours needs a look.
    plan.follow_up_at = ours.filter(|r| r.finalized_at.is_none()).and(retain_until);

    // The previous value's window has ended: confirm it is dead.
    if let Some(record) = ours.filter(|r| r.finalized_at.is_none())
        && retain_until.is_some_and(|u| u <= now)
    {
        let then = if due.due_now {
            " The key is also due and rotates right after."
        } else {
            ""
        };
        let reason = format!(
            "The retain window of the rotation at {} ended at {}: confirm the previous value is rejected.{then}",
            record.rotated_at.map(rfc3339).unwrap_or_default(),
            retain_until.map(rfc3339).unwrap_or_default(),
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
                let reason = format!(
                    "ZenML rotated the key at {} but the new value never reached the journal \
                     (the process stopped between the rotate call and the journal write); the \
                     stored value works until {}. Run `zenml-rotator rotate {} --force` to issue \
                     and store a new value.",
                    key.last_rotated.map(rfc3339).unwrap_or_default(),
                    plan.retain_until
                        .map(rfc3339)
                        .unwrap_or_else(|| "now".into()),
                    policy.name
                );
                return plan.blocked(Why::LostRotation, reason);
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

/// Someone rotated the key after the rotation the store records: the stored value dies with
/// that rotation's window.
fn rotated_out_of_band(
    policy: &KeyPolicy,
    key: &ApiKey,
    snapshot: &StoreSnapshot,
    retain_until: Option<DateTime<Utc>>,
) -> Option<String> {
    let record = snapshot.record.as_ref()?;
    let last = key.last_rotated?;
    let recorded = record.rotated_at?;
    if record.key_id != key.id.to_string() || last <= recorded || same_instant(last, recorded) {
        return None;
    }
    Some(format!(
        "The key was rotated outside zenml-rotator at {}; the stored value stops working at {}. \
         Run `zenml-rotator rotate {} --force` to issue and store a new value now.",
        rfc3339(last),
        retain_until
            .map(rfc3339)
            .unwrap_or_else(|| "once the window ends".into()),
        policy.name
    ))
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
