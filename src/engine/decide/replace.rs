//! Strategy `replace` (a new API key on the same service account, stored, and the replaced key
//! deactivated once `retain` has passed): the rules of a decision once the shared checks passed,
//! and the clean-up a pass owes a policy ([`ReplaceWork`]). Pure.

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::{Action, Family, KeyPlan, Observed, Phase, Why, resume, store_unread};
use crate::config::KeyPolicy;
use crate::naming::{created_by_rotator, deactivated_by_rotator, is_generation};
use crate::schedule::{self, DueDecision, KeyTimes};
use crate::store::{RotationRecord, StoreSnapshot};
use crate::time::rfc3339;
use crate::zenml::ApiKey;

/// Strategy `replace`: the clean-up a pass owes one policy, besides creating a new key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaceWork {
    /// The store holds this newer key of ours while its record still names an older one (a run
    /// stopped between writing the value and writing its record): record it as current. While
    /// this is pending nothing else is done, since the rest depends on which key is current.
    pub adopt: Option<ApiKey>,
    /// Keys a run created but never stored (it stopped, or the store refused): nobody can hold
    /// their value, so they are deactivated and deleted at once.
    pub orphans: Vec<ApiKey>,
    /// Active keys the current one replaced, kept for consumers still on them until `retire_at`.
    pub retiring: Vec<ApiKey>,
    /// When the retiring keys are deactivated: the latest promise made for any of them.
    pub retire_at: Option<DateTime<Utc>>,
    /// Keys the rotator deactivated more than `delete_after` ago.
    pub deletable: Vec<ApiKey>,
}

/// `"a", "b"`: key names as a list in a sentence.
pub fn names(keys: &[ApiKey]) -> String {
    keys.iter()
        .map(|k| format!("{:?}", k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ReplaceWork {
    pub fn retire_due(&self, now: DateTime<Utc>) -> bool {
        !self.retiring.is_empty() && self.retire_at.is_some_and(|t| t <= now)
    }

    /// Whether a pass has anything to clean up now.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.adopt.is_some()
            || !self.orphans.is_empty()
            || self.retire_due(now)
            || !self.deletable.is_empty()
    }

    /// One sentence per piece of work, for `plan`.
    pub fn describe(&self, policy: &KeyPolicy, now: DateTime<Utc>) -> String {
        if let Some(k) = &self.adopt {
            return format!(
                "The store holds key {:?} ({}) but its record names an older key (a run stopped between \
                 writing the value and its record): record {:?} as current.",
                k.name, k.id, k.name
            );
        }
        let mut out = Vec::new();
        if !self.orphans.is_empty() {
            out.push(format!(
                "Deactivate and delete {}: created by an interrupted run, never stored.",
                names(&self.orphans)
            ));
        }
        if self.retire_due(now) {
            out.push(format!(
                "The retain window of {} ended at {}: deactivate {}.",
                names(&self.retiring),
                self.retire_at.map(rfc3339).unwrap_or_default(),
                if self.retiring.len() == 1 {
                    "it"
                } else {
                    "them"
                }
            ));
        }
        if !self.deletable.is_empty() {
            out.push(format!(
                "Delete {}: deactivated more than {} ago.",
                names(&self.deletable),
                policy
                    .delete_after
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_default()
            ));
        }
        out.join(" ")
    }
}

/// Whether `key` is a replacement a run of the rotator created for this policy that no record
/// accounts for and that is newer than the current key: an orphan, unless the store holds it.
fn unaccounted(
    policy: &KeyPolicy,
    key: &ApiKey,
    current: Option<&ApiKey>,
    record: Option<&RotationRecord>,
) -> bool {
    let id = key.id.to_string();
    let referenced = current.is_some_and(|c| c.id == key.id)
        || record.is_some_and(|r| r.key_id == id || r.retiring_key_id.as_deref() == Some(&id));
    let anchor = current
        .map(|c| c.created)
        .or_else(|| record.and_then(|r| r.rotated_at));
    !referenced
        && anchor.is_none_or(|a| key.created > a)
        && is_generation(&policy.api_key, &key.name)
        && created_by_rotator(&key.description)
}

/// Whether observing must read which key the store holds: only when a key exists that no record
/// accounts for (the rare aftermath of an interrupted run), so a normal `plan` reads no secret.
pub fn needs_stored_key(
    policy: &KeyPolicy,
    current: Option<&ApiKey>,
    record: Option<&RotationRecord>,
    family: &[ApiKey],
) -> bool {
    family
        .iter()
        .any(|k| unaccounted(policy, k, current, record))
}

/// Sorts a replace policy's keys into what a pass must do with them. `current` is the key the
/// record names (or, before the first replacement, the key named `api_key`).
pub fn replace_work(
    policy: &KeyPolicy,
    current: Option<&ApiKey>,
    record: Option<&RotationRecord>,
    family: &Family,
    now: DateTime<Utc>,
) -> ReplaceWork {
    let mut work = ReplaceWork::default();
    let anchor = current
        .map(|c| c.created)
        .or_else(|| record.and_then(|r| r.rotated_at));
    for key in &family.keys {
        if current.is_some_and(|c| c.id == key.id) {
            continue;
        }
        if unaccounted(policy, key, current, record) {
            if family.stored_key_id == Some(key.id) {
                // The store holds it: never an orphan. Active, it becomes the current key.
                if key.active && work.adopt.as_ref().is_none_or(|a| a.created < key.created) {
                    work.adopt = Some(key.clone());
                }
            } else {
                work.orphans.push(key.clone());
            }
            continue;
        }
        let id = key.id.to_string();
        let named_retiring = record.is_some_and(|r| r.retiring_key_id.as_deref() == Some(&id));
        let older = anchor.is_some_and(|a| key.created <= a);
        if key.active {
            // Newer keys nobody accounts for and that are not ours stay untouched.
            if named_retiring || older {
                work.retiring.push(key.clone());
            }
        } else if let Some(after) = policy.delete_after
            && deactivated_by_rotator(&key.description)
            && ChronoDuration::from_std(after)
                .ok()
                .and_then(|after| key.updated.checked_add_signed(after))
                .is_some_and(|t| t <= now)
        {
            work.deletable.push(key.clone());
        }
    }
    if !work.retiring.is_empty() {
        // Each retiring key stays until at least `retain` after its successor was stored; the
        // record holds the promise made when the current key was stored.
        let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
        let by_anchor = anchor.and_then(|a| a.checked_add_signed(retain));
        work.retire_at = match (record.and_then(|r| r.retire_at), by_anchor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    work
}

/// A new key on the same service account, stored, and the replaced key deactivated once
/// `retain` has passed. No journal: the old key works until the new one is stored.
pub(super) fn decide(
    policy: &KeyPolicy,
    obs: &Observed,
    mut plan: KeyPlan,
    now: DateTime<Utc>,
) -> KeyPlan {
    let Some(snapshot) = &obs.snapshot else {
        return store_unread(plan);
    };
    let Some(family) = &obs.family else {
        return plan.blocked(
            Why::Unreadable,
            "The policy's API keys could not be listed.".into(),
        );
    };
    let record = snapshot.record.as_ref();
    let current = obs.key.as_ref();
    if let Some(k) = current {
        plan.api_key = k.name.clone();
        // A replacement is a new key: it was "rotated" when it was created.
        plan.last_rotated = if is_generation(&policy.api_key, &k.name) {
            Some(k.created)
        } else {
            k.last_rotated
        };
        plan.age_seconds = Some((now - plan.last_rotated.unwrap_or(k.created)).num_seconds());
    }

    // A kept value can only come from an in-place rotation (the policy was `rotate` before): it
    // must still reach the store; a bare journaled intent is dropped. A claim left without a value
    // by an interrupted replacement says nothing the orphan rules do not see.
    if let Some(in_flight) = obs
        .in_flight
        .as_ref()
        .filter(|f| f.phase == Phase::Rotated || f.holder.is_none())
    {
        if in_flight.phase == Phase::Rotated {
            return resume(plan, in_flight, now);
        }
        plan.next_due = Some(now);
        let reason =
            "A journaled intent of an in-place rotation is left over: drop it, then decide again.";
        plan.set(Action::Wait, Why::StaleIntent, reason.into());
        return plan;
    }

    let work = replace_work(policy, current, record, family, now);
    if !work.retiring.is_empty() {
        plan.retain_until = work.retire_at;
    }
    let missing = match missing_value(policy, snapshot, current) {
        Ok(missing) => missing,
        Err(reason) => return plan.blocked(Why::Unusable, reason),
    };
    if work.due(now) {
        plan.next_due = Some(now);
        plan.set(
            Action::Finalize,
            Why::FinalizeDue,
            work.describe(policy, now),
        );
        return plan;
    }
    if let Some(reason) = missing {
        plan.next_due = Some(now);
        plan.set(Action::Rotate, Why::StoreEmpty, reason);
        return plan;
    }
    let Some(key) = current else {
        // Unreachable: `missing` is None only with a current key.
        return plan.blocked(Why::Unusable, "No current key.".into());
    };
    let times = KeyTimes {
        created: key.created,
        last_rotated: key.last_rotated,
        retain_until: plan.retain_until,
    };
    let due = schedule::evaluate(policy, &times, now);
    plan.next_due = Some(due.next_due);
    if due.due_now {
        plan.set(Action::Rotate, Why::Due, due.reason.describe());
        return plan;
    }
    let reason = waiting(&mut plan, &work, &due);
    plan.set(Action::Wait, Why::NotDue, reason);
    plan
}

/// Whether the store holds a working value of this policy: `Ok(None)` when it does, `Ok(Some(why
/// not))` when a new key must be created, `Err` when a person must act.
fn missing_value(
    policy: &KeyPolicy,
    snapshot: &StoreSnapshot,
    current: Option<&ApiKey>,
) -> Result<Option<String>, String> {
    Ok(match (snapshot.record.as_ref(), current) {
        (Some(r), Some(k)) if !k.active => {
            return Err(format!(
                "The stored key {:?} ({}) is deactivated, so the stored value no longer works; \
                 re-activate it in ZenML, or delete it and the next pass creates and stores a new key.",
                k.name, r.key_id
            ));
        }
        (Some(_), Some(_)) => None,
        (Some(r), None) => Some(format!(
            "The stored key {} no longer exists on service account {:?}: create and store a new key.",
            r.key_id, policy.service_account
        )),
        (None, _) if snapshot.exists => Some(
            "The store holds a value the rotator did not write: create a new key and store it on top."
                .to_owned(),
        ),
        (None, _) => Some(
            "The store holds no value for this key yet: create a new key and store it.".to_owned(),
        ),
    })
}

/// Why a replace policy waits, and when its replaced keys' deactivation wakes the daemon.
fn waiting(plan: &mut KeyPlan, work: &ReplaceWork, due: &DueDecision) -> String {
    let (false, Some(at)) = (work.retiring.is_empty(), work.retire_at) else {
        return due.reason.describe();
    };
    plan.follow_up_at = Some(at).filter(|t| *t < due.next_due);
    let next = match due.reason {
        schedule::DueReason::RetainWindow { .. } => format!(
            "The next replacement waits for that (not before {}).",
            rfc3339(due.next_due)
        ),
        other => other.describe(),
    };
    let (noun, verb, pronoun) = if work.retiring.len() == 1 {
        ("key", "stays", "is")
    } else {
        ("keys", "stay", "are")
    };
    format!(
        "Replaced {noun} {} {verb} active for consumers still on them until {}, then {pronoun} deactivated. {next}",
        names(&work.retiring),
        rfc3339(at)
    )
}
