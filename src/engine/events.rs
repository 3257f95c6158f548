//! What happened, said once: each event drives its log line and its metrics together, so the
//! two can never disagree. The engine, the strategies and the key guard emit; nothing else
//! writes the per-policy metrics.

use std::time::Duration;

use chrono::Utc;

use super::decide::KeyPlan;
use super::failure::{KeyError, KeyFailure, Outcome};
use crate::config::NoticeKind;
use crate::metrics::{self, Stage};
use crate::notify::{self, Notice};
use crate::zenml::ApiKey;

/// Who takes a key out of service: a policy, or hygiene. The `policy` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    Policy(&'a str),
    Hygiene,
}

impl Actor<'_> {
    /// The `policy` label and `plan` row name.
    pub fn label(&self) -> &str {
        match self {
            Actor::Policy(name) => name,
            Actor::Hygiene => HYGIENE,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Actor::Policy(name) => format!("policy {name}"),
            Actor::Hygiene => "hygiene".to_owned(),
        }
    }
}

/// The `policy` label and `plan` row name of hygiene's actions.
pub const HYGIENE: &str = "hygiene";

/// Why a key is deactivated: the `reason` label of `keys_deactivated_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivationReason {
    /// Strategy `replace`: the replaced key's retain window ended.
    Retired,
    /// A key an interrupted run created and never stored.
    Orphan,
    /// `[hygiene] deactivate_unused_after`.
    Unused,
    /// `revoke`: its value leaked.
    Revoked,
}

impl DeactivationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeactivationReason::Retired => "retired",
            DeactivationReason::Orphan => "orphan",
            DeactivationReason::Unused => "unused",
            DeactivationReason::Revoked => "revoked",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            DeactivationReason::Retired => "replaced; its retain window ended",
            DeactivationReason::Orphan => "created by an interrupted run and never stored",
            DeactivationReason::Unused => "unused for longer than hygiene allows",
            DeactivationReason::Revoked => "revoked: its value leaked",
        }
    }
}

pub enum Event<'a> {
    /// What a pass decided for a key: the times behind it become gauges.
    Decided {
        plan: &'a KeyPlan,
        key: Option<&'a ApiKey>,
    },
    /// A new value is stored, read back equal and accepted by ZenML.
    Rotated {
        policy: &'a str,
        /// The name of the ZenML key whose value is stored now.
        api_key: &'a str,
        key_id: &'a str,
        fingerprint: &'a str,
        store: &'static str,
        path: &'a str,
        took: Duration,
        /// `rotation stored and verified`, `replacement key stored and verified`, ...
        what: &'static str,
        /// Strategy-specific facts for the log line (the replaced key, its retire time).
        detail: String,
    },
    /// The previous value is confirmed rejected after its window.
    Finalized {
        policy: &'a str,
        /// The policy's service account and API key, for the notice.
        service_account: &'a str,
        api_key: &'a str,
        detail: &'a str,
        retired: bool,
    },
    /// The previous value still logs in after its window ended (the failure follows).
    PreviousStillAccepted {
        policy: &'a str,
    },
    /// Keys of a policy wait for deactivation until `due` (none: nothing waits).
    DeactivationsPending {
        policy: &'a str,
        pending: usize,
        due: Option<chrono::DateTime<Utc>>,
    },
    Deactivated {
        key: &'a ApiKey,
        reason: DeactivationReason,
        actor: Actor<'a>,
    },
    Deleted {
        key: &'a ApiKey,
        actor: Actor<'a>,
    },
    /// A key's part of a pass ended.
    KeyFinished {
        policy: &'a str,
        result: &'a Result<Vec<Outcome>, KeyFailure>,
    },
    /// Rotations in flight in the local journal, after a key finished.
    JournalSize(usize),
    /// Another rotator held the key's claim: this one left the key to it.
    ClaimedElsewhere {
        policy: &'a str,
    },
    /// The key's claim, as a pass saw it: held by someone since then, or by nobody.
    ClaimSeen {
        policy: &'a str,
        holder: Option<&'a str>,
        since: Option<chrono::DateTime<Utc>>,
    },
    /// A rotation whose new value nobody kept was healed.
    Recovered {
        policy: &'a str,
        api_key: &'a str,
        key_id: &'a str,
        fingerprint: &'a str,
        detail: &'a str,
        took: Duration,
    },
    /// `revoke`: a leaked value and every token minted from it are refused from now on.
    Revoked {
        policy: &'a str,
        api_key: &'a str,
        key_id: &'a str,
        fingerprint: &'a str,
        detail: &'a str,
    },
    /// A hook failed or timed out (the sentence says whether later passes retry it).
    HookFailed {
        policy: &'a str,
        hook: &'static str,
        key_id: &'a str,
        fingerprint: &'a str,
        detail: &'a str,
    },
    /// A recovery failed (the next pass tries again).
    RecoveryFailed {
        policy: &'a str,
        error: &'a str,
    },
    /// This rotator's claim expired or was taken over before it finished.
    ClaimLost {
        policy: &'a str,
        why: &'a str,
    },
}

pub fn emit(event: Event<'_>) {
    let m = metrics::get();
    match event {
        Event::Decided { plan, key } => decided(plan, key),
        Event::Rotated {
            policy,
            api_key,
            key_id,
            fingerprint,
            store,
            path,
            took,
            what,
            detail,
        } => {
            m.rotation_duration_seconds.observe(took.as_secs_f64());
            let sentence = if detail.is_empty() {
                what.to_owned()
            } else {
                format!("{what}: {detail}")
            };
            tracing::info!(policy, key_id, fingerprint, store, path, "{sentence}");
            told(
                NoticeKind::Rotated,
                policy,
                sentence,
                Some(api_key),
                key_id,
                fingerprint,
            );
        }
        Event::Finalized {
            policy,
            service_account,
            api_key,
            detail,
            retired,
        } => {
            m.previous_key_accepted.with_label_values(&[policy]).set(0);
            let sentence = format!("rotation finalized: {detail}");
            tracing::info!(policy, retired, "{sentence}");
            notify::publish(
                Notice::new(NoticeKind::Finalized, policy, sentence)
                    .service_account(service_account)
                    .key(Some(api_key), None),
            );
        }
        Event::PreviousStillAccepted { policy } => {
            m.previous_key_accepted.with_label_values(&[policy]).set(1);
        }
        Event::DeactivationsPending {
            policy,
            pending,
            due,
        } => m.set_deactivation_due(policy, pending, due),
        Event::Deactivated { key, reason, actor } => deactivated(key, reason, actor),
        Event::Deleted { key, actor } => deleted(key, actor),
        Event::KeyFinished { policy, result } => key_finished(policy, result),
        Event::JournalSize(n) => m.journal_entries.set(i64::try_from(n).unwrap_or(i64::MAX)),
        Event::ClaimedElsewhere { policy } => {
            m.claims.waits_total.with_label_values(&[policy]).inc();
        }
        Event::ClaimSeen {
            policy,
            holder,
            since,
        } => match (holder, since) {
            (Some(_), Some(t)) => m
                .claims
                .since_timestamp_seconds
                .with_label_values(&[policy])
                .set(t.timestamp() as f64),
            _ => {
                let _ = m
                    .claims
                    .since_timestamp_seconds
                    .remove_label_values(&[policy]);
            }
        },
        e @ (Event::Recovered { .. } | Event::Revoked { .. } | Event::HookFailed { .. }) => {
            value_event(e)
        }
        Event::RecoveryFailed { policy, error } => {
            m.recoveries_total
                .with_label_values(&[policy, "failure"])
                .inc();
            tracing::error!(policy, %error, "recovery failed; the next pass tries again");
        }
        Event::ClaimLost { policy, why } => {
            m.claims.lost_total.with_label_values(&[policy]).inc();
            tracing::warn!(policy, %why, "lost the claim on the key before finishing; another rotator finishes it");
        }
    }
}

/// The events about a key's new value beyond a rotation: recovered, revoked, a hook failed.
fn value_event(event: Event<'_>) {
    let m = metrics::get();
    match event {
        Event::Recovered {
            policy,
            api_key,
            key_id,
            fingerprint,
            detail,
            took,
        } => {
            m.recoveries_total
                .with_label_values(&[policy, "success"])
                .inc();
            m.rotation_duration_seconds.observe(took.as_secs_f64());
            let sentence = format!("recovered a rotation whose new value nobody kept: {detail}");
            tracing::warn!(policy, key_id, fingerprint, "{sentence}");
            told(
                NoticeKind::Recovered,
                policy,
                sentence,
                Some(api_key),
                key_id,
                fingerprint,
            );
        }
        Event::Revoked {
            policy,
            api_key,
            key_id,
            fingerprint,
            detail,
        } => {
            tracing::warn!(policy, key_id, fingerprint, "{detail}");
            told(
                NoticeKind::Revoked,
                policy,
                detail.to_owned(),
                Some(api_key),
                key_id,
                fingerprint,
            );
        }
        Event::HookFailed {
            policy,
            hook,
            key_id,
            fingerprint,
            detail,
        } => {
            m.hook_failures_total
                .with_label_values(&[policy, hook])
                .inc();
            tracing::error!(policy, hook, key_id, fingerprint, "{detail}");
            told(
                NoticeKind::HookFailed,
                policy,
                detail.to_owned(),
                None,
                key_id,
                fingerprint,
            );
        }
        _ => {}
    }
}

/// The notification of an event about one key's value.
fn told(
    kind: NoticeKind,
    policy: &str,
    sentence: String,
    api_key: Option<&str>,
    key_id: &str,
    fingerprint: &str,
) {
    notify::publish(
        Notice::new(kind, policy, sentence)
            .key(api_key, Some(key_id))
            .fingerprint(fingerprint),
    );
}

fn deactivated(key: &ApiKey, reason: DeactivationReason, actor: Actor<'_>) {
    metrics::get()
        .keys_deactivated_total
        .with_label_values(&[actor.label(), reason.as_str()])
        .inc();
    let sentence = format!(
        "API key {:?} ({}) of service account {:?} deactivated: {}",
        key.name,
        key.id,
        key.service_account_name,
        reason.describe()
    );
    tracing::warn!(
        policy = actor.label(),
        reason = reason.as_str(),
        "{sentence}"
    );
    publish_key(NoticeKind::Deactivated, key, actor, sentence);
}

fn deleted(key: &ApiKey, actor: Actor<'_>) {
    metrics::get()
        .keys_deleted_total
        .with_label_values(&[actor.label()])
        .inc();
    let sentence = format!(
        "API key {:?} ({}) of service account {:?} deleted",
        key.name, key.id, key.service_account_name
    );
    tracing::info!(policy = actor.label(), "{sentence}");
    publish_key(NoticeKind::Deleted, key, actor, sentence);
}

/// The notice of something done to an API key itself: its name, id and account, no value.
fn publish_key(kind: NoticeKind, key: &ApiKey, actor: Actor<'_>, sentence: String) {
    let key_id = key.id.to_string();
    notify::publish(
        Notice::new(kind, actor.label(), sentence)
            .service_account(&key.service_account_name)
            .key(Some(&key.name), Some(&key_id)),
    );
}

fn decided(plan: &KeyPlan, key: Option<&ApiKey>) {
    let m = metrics::get();
    let name = plan.policy.as_str();
    if let Some(key) = key {
        let t = key.last_rotated.unwrap_or(key.created);
        m.last_rotation_timestamp_seconds
            .with_label_values(&[name])
            .set(t.timestamp() as f64);
    }
    if let Some(t) = plan.next_due {
        m.next_rotation_timestamp_seconds
            .with_label_values(&[name])
            .set(t.timestamp() as f64);
    }
    if let Some(t) = plan.retain_until {
        m.retain_until_timestamp_seconds
            .with_label_values(&[name])
            .set(t.timestamp() as f64);
    }
}

fn key_finished(policy: &str, result: &Result<Vec<Outcome>, KeyFailure>) {
    let m = metrics::get();
    match result {
        Ok(outcomes) => {
            m.policy_healthy.with_label_values(&[policy]).set(1);
            m.last_success_timestamp_seconds
                .with_label_values(&[policy])
                .set(Utc::now().timestamp() as f64);
            let rotated = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Rotated { .. } | Outcome::Recovered { .. }))
                .count();
            if rotated > 0 {
                m.rotations_total
                    .with_label_values(&[policy, "success"])
                    .inc_by(rotated as u64);
            }
        }
        Err(f) => {
            m.policy_healthy.with_label_values(&[policy]).set(0);
            m.error(policy, f.stage);
            let result = match (&f.error, f.stage) {
                (KeyError::Refused(_), _) => Some("refused"),
                (_, Stage::Rotate | Stage::Verify | Stage::Store) => Some("failure"),
                _ => None,
            };
            if let Some(result) = result {
                m.rotations_total.with_label_values(&[policy, result]).inc();
            }
            let sentence = f.error.to_string();
            tracing::warn!(policy, stage = f.stage.as_str(), "{sentence}");
            let kind = match f.error {
                KeyError::Blocked(_) => NoticeKind::Blocked,
                _ => NoticeKind::Failed,
            };
            notify::publish(Notice::new(kind, policy, sentence));
        }
    }
}
