//! What a pass would do for one key, as a pure function of (policy, observed state, now).
//! `plan` prints it and `once`/`run` act on it, so what `plan` says is what a pass does.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use uuid::Uuid;

use crate::config::{KeyPolicy, Strategy};
use crate::journal::{Entry, Phase};
use crate::replace::{created_by_rotator, deactivated_by_rotator, is_generation};
use crate::schedule::{self, KeyTimes};
use crate::store::{RotationRecord, StoreSnapshot};
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
    /// Strategy `replace` has clean-up due: a replaced key's window ended (deactivate it), a run
    /// stopped half-way (orphaned keys, a record behind its value), or deactivated keys reached
    /// `delete_after`. See [`ReplaceWork`].
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
    /// Strategy `replace` only: the policy's other keys and what the store really holds.
    pub replace: Option<ReplaceObserved>,
    /// Why ZenML or the store could not be read, if so.
    pub read_error: Option<String>,
}

/// What strategy `replace` needs beyond the current key (`Observed::key`, found by the store
/// record's `key_id`, or by the policy's `api_key` name before the first replacement).
#[derive(Debug, Clone, Default)]
pub struct ReplaceObserved {
    /// The policy's keys on its service account, active or not: the one named `api_key` and
    /// every `<api_key>-<yyyymmddHHMMSS>` generation (plus the record's retiring key, whatever
    /// its name).
    pub family: Vec<ApiKey>,
    /// The ZenML id of the key whose value the store holds now (read from the value itself).
    /// Read only when the family has a key the record does not account for, since only then
    /// can the record be behind the value; `None` otherwise, or when the store holds no key.
    pub stored_key_id: Option<Uuid>,
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
    /// When the next pass must look at the key: the earlier of `next_due` and a pending finalize
    /// or deactivation. The daemon sleeps until the earliest of these over all keys.
    #[serde(skip)]
    pub wake_at: Option<DateTime<Utc>>,
    /// Strategy `rotate`: when the last rotation's retain window ends, if it is not finalized.
    #[serde(skip)]
    pub finalize_at: Option<DateTime<Utc>>,
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

/// Whether ZenML's timestamp `server` is the event the rotator kept as `kept`. ZenML reports
/// microseconds and the rotator keeps them (journal, store records), so any other rotation, even
/// one within the same second, differs; a record kept with whole seconds (older records) matches
/// anything within that second.
fn same_instant(server: DateTime<Utc>, kept: DateTime<Utc>) -> bool {
    if kept.timestamp_subsec_nanos() == 0 {
        server.timestamp() == kept.timestamp()
    } else {
        (server - kept)
            .num_microseconds()
            .is_some_and(|d| d.abs() < 1)
    }
}

pub fn decide(policy: &KeyPolicy, obs: &Observed, now: DateTime<Utc>) -> KeyPlan {
    let mut plan = decide_action(policy, obs, now);
    plan.wake_at = wake_at(policy, &plan, now);
    plan
}

/// When this key next needs a look. A waiting key may have work before its next rotation: the
/// end of the retain window (finalize), or of a replaced key's window (deactivate, which
/// `decide_replace` works out).
fn wake_at(policy: &KeyPolicy, plan: &KeyPlan, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if plan.action != Action::Wait {
        return plan.next_due;
    }
    let pending = match policy.strategy {
        Strategy::Rotate if plan.why == Why::NotDue => plan.finalize_at,
        Strategy::Rotate => None,
        Strategy::Replace => plan.wake_at,
    };
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
        finalize_at: None,
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
    if let Some(why) = obs.snapshot.as_ref().and_then(|s| s.unwritable.as_ref()) {
        return blocked(
            plan,
            Why::Unusable,
            format!("The store refuses writes to {:?}: {why}.", policy.path),
        );
    }
    if policy.strategy == Strategy::Replace {
        return decide_replace(policy, obs, plan, now);
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

    // From here on the strategy is `rotate`.
    let retain_until = zenml_retain_until(key);
    plan.retain_until = retain_until;
    plan.finalize_at = snapshot
        .record
        .as_ref()
        .filter(|r| {
            r.key_id == key.id.to_string() && r.finalized_at.is_none() && r.rotated_at.is_some()
        })
        .and(retain_until);
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
                if moved {
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

    if let (Some(record), Some(last)) = (&snapshot.record, key.last_rotated)
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

    // The previous value's window has ended: confirm it is dead.
    if let Some(record) = &snapshot.record
        && record.key_id == key.id.to_string()
        && record.finalized_at.is_none()
        && record.rotated_at.is_some()
        && retain_until.is_some_and(|u| u <= now)
    {
        plan.action = Action::Finalize;
        plan.why = Why::FinalizeDue;
        plan.then_rotate = due.due_now;
        let then = if due.due_now {
            " The key is also due and rotates right after."
        } else {
            ""
        };
        plan.reason = format!(
            "The retain window of the rotation at {} ended at {}: confirm the previous value is rejected.{then}",
            record.rotated_at.map(fmt_time).unwrap_or_default(),
            retain_until.map(fmt_time).unwrap_or_default(),
        );
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
        let names = |keys: &[ApiKey]| {
            keys.iter()
                .map(|k| format!("{:?}", k.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
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
                self.retire_at.map(fmt_time).unwrap_or_default(),
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
    observed: &ReplaceObserved,
    now: DateTime<Utc>,
) -> ReplaceWork {
    let mut work = ReplaceWork::default();
    let anchor = current
        .map(|c| c.created)
        .or_else(|| record.and_then(|r| r.rotated_at));
    for key in &observed.family {
        if current.is_some_and(|c| c.id == key.id) {
            continue;
        }
        if unaccounted(policy, key, current, record) {
            if observed.stored_key_id == Some(key.id) {
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

/// Strategy `replace`: a new key on the same service account, stored, and the replaced key
/// deactivated once `retain` has passed. No journal: the old key works until the new is stored.
fn decide_replace(
    policy: &KeyPolicy,
    obs: &Observed,
    mut plan: KeyPlan,
    now: DateTime<Utc>,
) -> KeyPlan {
    let blocked = |mut plan: KeyPlan, why: Why, reason: String| {
        plan.action = Action::Blocked;
        plan.why = why;
        plan.reason = reason;
        plan
    };
    let Some(snapshot) = &obs.snapshot else {
        return blocked(plan, Why::Unreadable, "The store could not be read.".into());
    };
    let Some(observed) = &obs.replace else {
        return blocked(
            plan,
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

    // A journal entry can only come from an in-place rotation (the policy was `rotate` before):
    // a value in it must still reach the store; a bare intent is dropped.
    if let Some(entry) = &obs.journal {
        plan.next_due = Some(now);
        if entry.phase == Phase::Rotated {
            plan.action = Action::Rotate;
            plan.why = Why::ResumeJournal;
            plan.reason = format!(
                "Resume the rotation started at {}: store the journaled new value ({}).",
                fmt_time(entry.started_at),
                entry.fingerprint.as_deref().unwrap_or("?")
            );
        } else {
            plan.action = Action::Wait;
            plan.why = Why::StaleIntent;
            plan.reason = "A journaled intent of an in-place rotation is left over: drop it, then decide again.".into();
        }
        return plan;
    }

    let work = replace_work(policy, current, record, observed, now);
    if !work.retiring.is_empty() {
        plan.retain_until = work.retire_at;
    }

    // Whether the store holds a working value of this policy.
    let missing = match (record, current) {
        (Some(r), Some(k)) if !k.active => {
            return blocked(
                plan,
                Why::Unusable,
                format!(
                    "The stored key {:?} ({}) is deactivated, so the stored value no longer works; \
                     re-activate it in ZenML, or delete it and the next pass creates and stores a new key.",
                    k.name, r.key_id
                ),
            );
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
        (None, _) => Some("The store holds no value for this key yet: create a new key and store it.".to_owned()),
    };

    if work.due(now) {
        plan.action = Action::Finalize;
        plan.why = Why::RetireDue;
        plan.next_due = Some(now);
        plan.reason = work.describe(policy, now);
        plan.then_rotate = missing.is_some();
        return plan;
    }
    if let Some(reason) = missing {
        plan.action = Action::Rotate;
        plan.why = Why::StoreEmpty;
        plan.next_due = Some(now);
        plan.reason = reason;
        return plan;
    }
    let Some(key) = current else {
        // Unreachable: `missing` is None only with a current key.
        return blocked(plan, Why::Unusable, "No current key.".into());
    };
    let times = KeyTimes {
        created: key.created,
        last_rotated: key.last_rotated,
        retain_until: plan.retain_until,
    };
    let due = schedule::evaluate(policy, &times, now);
    plan.next_due = Some(due.next_due);
    if due.due_now {
        plan.action = Action::Rotate;
        plan.why = Why::Due;
        plan.reason = due.reason.describe();
        return plan;
    }
    plan.action = Action::Wait;
    plan.why = Why::NotDue;
    plan.reason = match (work.retiring.is_empty(), work.retire_at) {
        (false, Some(at)) => {
            plan.wake_at = Some(at).filter(|t| *t < due.next_due);
            let names: Vec<String> = work
                .retiring
                .iter()
                .map(|k| format!("{:?}", k.name))
                .collect();
            let next = match due.reason {
                schedule::DueReason::RetainWindow { .. } => format!(
                    "The next replacement waits for that (not before {}).",
                    fmt_time(due.next_due)
                ),
                other => other.describe(),
            };
            let (noun, verb, pronoun) = if names.len() == 1 {
                ("key", "stays", "is")
            } else {
                ("keys", "stay", "are")
            };
            format!(
                "Replaced {noun} {} {verb} active for consumers still on them until {}, then {pronoun} deactivated. {next}",
                names.join(", "),
                fmt_time(at)
            )
        }
        _ => due.reason.describe(),
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy() -> KeyPolicy {
        let toml = "[zenml]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
                    [[key]]\nname = \"train\"\nservice_account = \"sa\"\napi_key = \"default\"\n\
                    path = \"t.env\"\nstrategy = \"replace\"\nretain = \"1h\"\nevery = \"30d\"\n\
                    delete_after = \"7d\"\n";
        crate::config::Config::parse(toml, std::path::Path::new("t.toml"))
            .unwrap()
            .keys
            .remove(0)
    }

    fn sa() -> ServiceAccount {
        ServiceAccount {
            id: Uuid::nil(),
            name: "sa".into(),
            active: true,
            created: at("2026-01-01T00:00:00Z"),
            description: String::new(),
        }
    }

    fn key(name: &str, created: &str, ours: bool) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            name: name.into(),
            description: if ours {
                "zenml-rotator: replacement key of policy \"train\"".into()
            } else {
                String::new()
            },
            active: true,
            created: at(created),
            updated: at(created),
            service_account_id: Uuid::nil(),
            service_account_name: "sa".into(),
            retain_period_minutes: None,
            last_login: None,
            last_rotated: None,
        }
    }

    fn record(
        current: &ApiKey,
        retiring: Option<&ApiKey>,
        retire_at: Option<&str>,
    ) -> RotationRecord {
        RotationRecord {
            policy: "train".into(),
            service_account: "sa".into(),
            api_key: current.name.clone(),
            key_id: current.id.to_string(),
            fingerprint: "00000000".into(),
            rotated_at: Some(current.created),
            retain_until: retire_at.map(at),
            finalized_at: None,
            retiring_key_id: retiring.map(|k| k.id.to_string()),
            retire_at: retire_at.map(at),
        }
    }

    fn observed(
        current: Option<&ApiKey>,
        record: Option<RotationRecord>,
        family: Vec<ApiKey>,
        stored: Option<Uuid>,
    ) -> Observed {
        Observed {
            service_account: Some(sa()),
            key: current.cloned(),
            snapshot: Some(StoreSnapshot {
                exists: record.is_some(),
                version: record.as_ref().map(|_| "1".into()),
                record,
                ..StoreSnapshot::default()
            }),
            journal: None,
            replace: Some(ReplaceObserved {
                family,
                stored_key_id: stored,
            }),
            read_error: None,
        }
    }

    #[test]
    fn the_first_pass_creates_a_key_and_retires_the_seed() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let obs = observed(Some(&seed), None, vec![seed.clone()], None);
        let plan = decide(&policy(), &obs, at("2026-01-02T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));
        assert_eq!(plan.api_key, "default");
    }

    #[test]
    fn inside_the_window_it_waits_and_wakes_for_the_deactivation() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let rec = record(&cur, Some(&seed), Some("2026-01-02T01:00:00Z"));
        let obs = observed(Some(&cur), Some(rec), vec![seed.clone(), cur.clone()], None);
        let now = at("2026-01-02T00:30:00Z");
        let plan = decide(&policy(), &obs, now);
        assert_eq!((plan.action, plan.why), (Action::Wait, Why::NotDue));
        assert_eq!(plan.retain_until, Some(at("2026-01-02T01:00:00Z")));
        assert_eq!(plan.wake_at, Some(at("2026-01-02T01:00:00Z")));
        assert_eq!(plan.api_key, "default-20260102000000");
        assert_eq!(plan.last_rotated, Some(cur.created));
        assert!(plan.reason.contains("stays active"), "{}", plan.reason);
        // Once the window ended: deactivate the seed.
        let plan = decide(&policy(), &obs, at("2026-01-02T01:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Finalize, Why::RetireDue));
        assert!(plan.reason.contains("\"default\""), "{}", plan.reason);
        let work = replace_work(
            &policy(),
            Some(&cur),
            obs.snapshot.as_ref().unwrap().record.as_ref(),
            obs.replace.as_ref().unwrap(),
            at("2026-01-02T01:00:00Z"),
        );
        assert_eq!(work.retiring, vec![seed]);
        assert!(work.orphans.is_empty() && work.deletable.is_empty() && work.adopt.is_none());
    }

    #[test]
    fn a_key_no_record_accounts_for_is_an_orphan_unless_stored() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let mut cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let orphan = key("default-20260301000000", "2026-03-01T00:00:00Z", true);
        let by_hand = key("default-20260301000001", "2026-03-01T00:00:01Z", false);
        let other = key("default-admin", "2026-03-01T00:00:00Z", true);
        // Retired long ago: the seed is inactive, deactivated by the rotator 2 days ago.
        let mut retired = seed.clone();
        retired.active = false;
        retired.description = "x | deactivated by zenml-rotator at 2026-02-27T00:00:00Z (r)".into();
        retired.updated = at("2026-02-27T00:00:00Z");
        cur.updated = cur.created;
        let rec = record(&cur, None, None);
        let family = vec![
            retired.clone(),
            cur.clone(),
            orphan.clone(),
            by_hand.clone(),
            other,
        ];
        let p = policy();
        assert!(needs_stored_key(&p, Some(&cur), Some(&rec), &family));
        assert!(!needs_stored_key(&p, Some(&cur), Some(&rec), &family[..2]));
        let now = at("2026-03-01T00:10:00Z");

        let obs = observed(Some(&cur), Some(rec.clone()), family.clone(), Some(cur.id));
        let plan = decide(&p, &obs, now);
        assert_eq!((plan.action, plan.why), (Action::Finalize, Why::RetireDue));
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.replace.as_ref().unwrap(),
            now,
        );
        assert_eq!(work.orphans, vec![orphan.clone()]);
        // A key made by hand with a matching name is not ours; nothing is retiring.
        assert!(work.retiring.is_empty(), "{:?}", work.retiring);
        // Deactivated 2 days ago, delete_after 7d: not yet.
        assert!(work.deletable.is_empty());
        let later = at("2026-03-06T00:00:00Z");
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.replace.as_ref().unwrap(),
            later,
        );
        assert_eq!(work.deletable, vec![retired]);

        // The store holds the newer key: the record lags behind the value; adopt it.
        let obs = observed(Some(&cur), Some(rec.clone()), family, Some(orphan.id));
        let plan = decide(&p, &obs, now);
        assert_eq!((plan.action, plan.why), (Action::Finalize, Why::RetireDue));
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.replace.as_ref().unwrap(),
            now,
        );
        assert_eq!(work.adopt, Some(orphan));
        assert!(work.orphans.is_empty());
        assert!(plan.reason.contains("record"), "{}", plan.reason);
    }

    #[test]
    fn older_keys_kept_by_a_forced_replacement_retire_with_the_newest_window() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let first = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let cur = key("default-20260102001000", "2026-01-02T00:10:00Z", true);
        let rec = record(&cur, Some(&first), Some("2026-01-02T01:10:00Z"));
        let obs = observed(
            Some(&cur),
            Some(rec.clone()),
            vec![seed.clone(), first.clone(), cur.clone()],
            None,
        );
        let work = replace_work(
            &policy(),
            Some(&cur),
            Some(&rec),
            obs.replace.as_ref().unwrap(),
            at("2026-01-02T00:20:00Z"),
        );
        assert_eq!(work.retiring, vec![seed, first]);
        assert_eq!(work.retire_at, Some(at("2026-01-02T01:10:00Z")));
    }

    #[test]
    fn a_dead_stored_key_blocks_or_is_replaced() {
        let cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let rec = record(&cur, None, None);
        let mut off = cur.clone();
        off.active = false;
        let obs = observed(Some(&off), Some(rec.clone()), vec![off.clone()], None);
        let plan = decide(&policy(), &obs, at("2026-01-03T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Blocked, Why::Unusable));
        // Deleted: the store holds a dead value; a new key is the only way back.
        let obs = observed(None, Some(rec), vec![], None);
        let plan = decide(&policy(), &obs, at("2026-01-03T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));
    }
}

#[cfg(test)]
mod rotate_tests {
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
            replace: None,
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
    fn a_rotation_by_someone_else_in_the_same_second_is_still_seen() {
        let ours_at = "2026-03-01T00:00:00.250123Z";
        let record = ours(ours_at, Some("2026-03-01T01:01:00Z"));
        let now = at("2026-03-02T00:00:00Z");
        // The same event, as ZenML reports it: nothing to see.
        let plan = decide(
            &policy(),
            &observed(Some(ours_at), Some(record.clone())),
            now,
        );
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        // Another rotation 0.5 s later.
        let plan = decide(
            &policy(),
            &observed(Some("2026-03-01T00:00:00.750000Z"), Some(record)),
            now,
        );
        assert_eq!(plan.why, Why::RotatedOutOfBand, "{}", plan.reason);
        // A record kept with whole seconds (older versions) matches its own second only.
        let legacy = ours("2026-03-01T00:00:00Z", Some("2026-03-01T01:01:00Z"));
        let plan = decide(
            &policy(),
            &observed(Some(ours_at), Some(legacy.clone())),
            now,
        );
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        let plan = decide(
            &policy(),
            &observed(Some("2026-03-01T00:00:01.100000Z"), Some(legacy)),
            now,
        );
        assert_eq!(plan.why, Why::RotatedOutOfBand, "{}", plan.reason);
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
