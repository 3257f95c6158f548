//! What a pass would do for one key, as a pure function of (policy, observed state, now).
//! `plan` prints it and `once`/`run` act on it, so what `plan` says is what a pass does.
//! The checks every strategy shares live here; each strategy's own rules live in its file, reached
//! through the one exhaustive `match` in [`decide`].

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::{KeyPolicy, Strategy};
use crate::store::{ClaimPhase, StoreSnapshot, StoredClaim};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, ServiceAccount};

mod replace;
mod rotate;
#[cfg(test)]
mod tests;

pub use replace::{ReplaceWork, names, needs_stored_key, replace_work};

/// The actions a plan can say (README, "What a pass does for each key").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rotate,
    Finalize,
    /// Heal a rotation whose new value nobody kept, without cutting anyone off.
    Recover,
    Wait,
    Blocked,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rotate => "rotate",
            Action::Finalize => "finalize",
            Action::Recover => "recover",
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
    /// ZenML rotated but nobody kept the new value (a crash, a lost answer): recover with a
    /// rescue key while the stored value still works.
    LostRotation,
    /// Nothing observable yet (ZenML or the store could not be read).
    Unreadable,
    /// The service account or key is missing or inactive.
    Unusable,
    /// Someone rotated the key outside the rotator; the stored value dies with the window:
    /// recover like a lost answer.
    RotatedOutOfBand,
    /// The stored value no longer works (its window ended, its rescue key is gone): replace it
    /// at once; nobody can be using a working copy of it.
    StoredRefused,
    /// A rescue key stands in for the policy's key until the lost rotation's window ends.
    Rescued,
    /// The lost rotation's window ended: rotate the policy's key again and retire the rescue key.
    ReturnFromRescue,
    /// The strategy has clean-up due after a retain window: under `rotate`, confirm the previous
    /// value is dead; under `replace`, deactivate replaced keys, remove orphans of an interrupted
    /// run, repair a record behind its value, delete keys past `delete_after` ([`ReplaceWork`]).
    FinalizeDue,
    /// The store holds no value yet, or a value of another key.
    StoreEmpty,
    /// The cadence says so.
    Due,
    /// Not due yet, inside the retain window or outside a maintenance window.
    NotDue,
    /// Another rotator holds the key's claim: it is working on the key.
    Claimed,
}

/// How far a rotation in flight got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// About to call ZenML; no new value exists yet (or its answer never arrived).
    Intent,
    /// ZenML answered with the new value, which was kept; not yet stored.
    Rotated,
}

/// A rotation in flight, as the engine found it kept (the local journal, or the claim of a holder
/// that is gone): what `decide` needs of it, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// The claim's holder that began it; `None` for this host's journal.
    pub holder: Option<String>,
    pub phase: Phase,
    pub started_at: DateTime<Utc>,
    /// ZenML's `last_rotated` of the key when the rotation started: if it moved and no value was
    /// kept, ZenML rotated but the answer was lost.
    pub previous_last_rotated: Option<DateTime<Utc>>,
    /// Fingerprint of the kept value (phase `Rotated`).
    pub fingerprint: Option<String>,
}

/// Which upstream could not be read while observing a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Journal,
    Store,
    Zenml,
}

/// Why a key could not be observed. The message is the upstream error's, which never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", match .upstream { Upstream::Journal => "Journal", Upstream::Store => "Store", Upstream::Zenml => "ZenML" })]
pub struct ReadError {
    pub upstream: Upstream,
    pub message: String,
}

impl ReadError {
    pub fn new(upstream: Upstream, error: impl std::fmt::Display) -> ReadError {
        ReadError {
            upstream,
            message: error.to_string(),
        }
    }
}

/// The key's claim as observed (`store::claim`).
#[derive(Debug, Clone)]
pub struct ClaimSeen {
    pub stored: StoredClaim,
    /// When others may take it over: its expiry plus the clock skew allowed.
    pub stale_at: DateTime<Utc>,
    /// The claim this very step holds (taken before looking again): never in anyone's way.
    pub held_here: bool,
    /// Held by this process from an earlier pass that left it (a lost answer): not in the way.
    pub mine: bool,
}

impl ClaimSeen {
    /// Whether it keeps this rotator off the key at `now`.
    pub fn blocks(&self, now: DateTime<Utc>) -> bool {
        !self.held_here
            && !self.mine
            && self.stored.claim.phase != ClaimPhase::Released
            && now < self.stale_at
    }

    /// Whether it is in force at all (not released): `plan` shows its holder.
    pub fn active(&self) -> bool {
        self.stored.claim.phase != ClaimPhase::Released
    }
}

/// What was observed of one key, read-only.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub service_account: Option<ServiceAccount>,
    pub key: Option<ApiKey>,
    pub snapshot: Option<StoreSnapshot>,
    /// The key's claim, where the store keeps claims.
    pub claim: Option<ClaimSeen>,
    pub in_flight: Option<InFlight>,
    /// The policy's other keys, for strategies that use more than one key (`replace`).
    pub family: Option<Family>,
    /// Why ZenML or the store could not be read, if so.
    pub read_error: Option<ReadError>,
}

/// The keys of a policy beyond the current one (`Observed::key`, found by the store record's
/// `key_id`, or by the policy's `api_key` name before the first replacement).
#[derive(Debug, Clone, Default)]
pub struct Family {
    /// The policy's keys on its service account, active or not: the one named `api_key` and
    /// every `<api_key>-<yyyymmddHHMMSS>` generation (plus the record's retiring key, whatever
    /// its name).
    pub keys: Vec<ApiKey>,
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
    /// Who holds the key's claim and until when (by the holder's clock), while one is in force.
    pub claim_holder: Option<String>,
    pub claim_expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub why: Why,
    /// Until when the previous value (or the replaced keys) stays valid.
    #[serde(skip)]
    pub retain_until: Option<DateTime<Utc>>,
    /// When the strategy's clean-up falls due while the key waits (the end of a retain window):
    /// the daemon looks again then, not only at `next_due`.
    #[serde(skip)]
    pub follow_up_at: Option<DateTime<Utc>>,
    /// When the next pass must look at the key: the earlier of `next_due` and `follow_up_at`.
    /// The daemon sleeps until the earliest of these over all keys.
    #[serde(skip)]
    pub wake_at: Option<DateTime<Utc>>,
}

impl KeyPlan {
    fn set(&mut self, action: Action, why: Why, reason: String) {
        self.action = action;
        self.why = why;
        self.reason = reason;
    }

    /// Ends the decision with `blocked`.
    fn blocked(mut self, why: Why, reason: String) -> KeyPlan {
        self.set(Action::Blocked, why, reason);
        self
    }
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
    plan.wake_at = if plan.action == Action::Wait {
        [plan.next_due, plan.follow_up_at.filter(|t| *t > now)]
            .into_iter()
            .flatten()
            .min()
    } else {
        plan.next_due
    };
    plan
}

/// The checks every strategy shares, then the strategy's own rules.
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
        claim_holder: None,
        claim_expires_at: None,
        why: Why::Unreadable,
        retain_until: None,
        follow_up_at: None,
        wake_at: None,
    };
    if let Some(c) = obs.claim.as_ref().filter(|c| c.active() && !c.held_here) {
        plan.claim_holder = Some(c.stored.claim.holder.clone());
        plan.claim_expires_at = Some(c.stored.claim.expires_at);
    }

    if let Some(err) = &obs.read_error {
        return plan.blocked(Why::Unreadable, err.to_string());
    }
    if let Some(c) = obs.claim.as_ref().filter(|c| c.blocks(now)) {
        plan.next_due = Some(c.stale_at);
        let reason = format!(
            "Claimed by {} until {}: another rotator is working on this key.",
            c.stored.claim.holder,
            rfc3339(c.stored.claim.expires_at)
        );
        plan.set(Action::Wait, Why::Claimed, reason);
        return plan;
    }
    let Some(sa) = &obs.service_account else {
        let reason = format!(
            "Service account {:?} does not exist on the server.",
            policy.service_account
        );
        return plan.blocked(Why::Unusable, reason);
    };
    if !sa.active {
        let reason = format!(
            "Service account {:?} is deactivated; its keys cannot log in.",
            sa.name
        );
        return plan.blocked(Why::Unusable, reason);
    }
    if let Some(why) = obs.snapshot.as_ref().and_then(|s| s.unwritable.as_ref()) {
        let reason = format!("The store refuses writes to {:?}: {why}.", policy.path);
        return plan.blocked(Why::Unusable, reason);
    }
    match policy.strategy {
        Strategy::Rotate => rotate::decide(policy, obs, sa, plan, now),
        Strategy::Replace => replace::decide(policy, obs, plan, now),
    }
}

/// `blocked`: observing found no store snapshot.
fn store_unread(plan: KeyPlan) -> KeyPlan {
    plan.blocked(Why::Unreadable, "The store could not be read.".into())
}

/// A kept new value waits to be stored: that comes before anything else.
fn resume(mut plan: KeyPlan, in_flight: &InFlight, now: DateTime<Utc>) -> KeyPlan {
    plan.next_due = Some(now);
    let fingerprint = in_flight.fingerprint.as_deref().unwrap_or("?");
    let reason = match &in_flight.holder {
        None => format!(
            "Resume the rotation started at {}: store the journaled new value ({fingerprint}).",
            rfc3339(in_flight.started_at),
        ),
        Some(holder) => format!(
            "Finish the rotation {holder} started at {} and left unfinished: store its new value ({fingerprint}).",
            rfc3339(in_flight.started_at),
        ),
    };
    plan.set(Action::Rotate, Why::ResumeJournal, reason);
    plan
}
