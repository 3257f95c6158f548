//! Strategy `rotate`: in place, with ZenML's retain window (`zenml service-account api-key SA
//! rotate KEY --retain N`). The new value exists only in ZenML's answer, so it is journaled
//! (mode 0600, fsync) before anything else happens, then verified, stored and read back; after
//! the window, the previous value is confirmed rejected. A journaled value is replayed by the
//! next pass ([`resume`]), whatever the policy's strategy is by then.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{Duration as ChronoDuration, Utc};
use uuid::Uuid;

use super::KeyStrategy;
use crate::config::KeyPolicy;
use crate::engine::context::Context;
use crate::engine::decide::{Observed, zenml_retain_until};
use crate::engine::events::{self, Event};
use crate::engine::failure::{Force, KeyError, KeyFailure, Outcome};
use crate::engine::journal::{Entry, Phase};
use crate::engine::writer::{check_key, preflight_store, store_value};
use crate::fault;
use crate::metrics::Stage;
use crate::secret::{SecretString, fingerprint};
use crate::store::{RotationRecord, SecretStore, StoreError, StoreSnapshot};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, KeyCheck, ServiceAccount, ZenmlError};

pub struct InPlace;

#[async_trait]
impl KeyStrategy for InPlace {
    fn current_key(&self, policy: &KeyPolicy, _snapshot: &StoreSnapshot) -> String {
        policy.api_key.clone()
    }

    async fn issue(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
    ) -> Result<Outcome, KeyFailure> {
        rotate(ctx, policy, obs, force).await
    }

    async fn finalize(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
    ) -> Result<Outcome, KeyFailure> {
        finalize(ctx, policy, obs).await
    }
}

/// Invariant 1: a second rotation inside the window cuts off every consumer of the oldest value.
fn check_window(policy: &KeyPolicy, key: &ApiKey, force: Force) -> Result<(), KeyFailure> {
    let Some(until) = zenml_retain_until(key).filter(|u| *u > Utc::now()) else {
        return Ok(());
    };
    if force == Force::No {
        return Err(KeyFailure::refused(format!(
            "refused: the previous value is valid until {} (retain window of the rotation at {}); \
             rotating now would cut off every consumer still using it. Pass --force to override.",
            rfc3339(until),
            key.last_rotated.map(rfc3339).unwrap_or_default()
        )));
    }
    tracing::warn!(policy = %policy.name, "--force: rotating inside the retain window; the value from two rotations back stops working now");
    Ok(())
}

async fn rotate(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    force: Force,
) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    let (sa, key) = usable(obs)?;
    check_window(policy, key, force)?;
    // Invariant 2: the destination must be writable now, before ZenML changes anything.
    let store = ctx.store(&policy.store).await?;
    let snapshot = preflight_store(&store, policy).await?;

    let entry = entry_for(policy, sa, key, Uuid::new_v4().to_string());
    ctx.journal()
        .record(&entry)
        .map_err(|e| KeyFailure::journal(Stage::Preflight, "cannot journal the intent: ", e))?;
    fault::point("before_rotate");
    let new = match ctx
        .zenml()
        .rotate_api_key(sa.id, &key.id.to_string(), retain_minutes(policy))
        .await
    {
        Ok(new) => new,
        Err(e) => {
            if !outcome_unknown(&e) {
                // The server refused: nothing changed, so the intent goes.
                let _ = ctx.journal().remove(&policy.name);
            }
            return Err(KeyFailure::zenml(Stage::Rotate, e));
        }
    };
    // The value exists only in memory: journal it before anything else happens.
    let mut entry = entry.with_value(&new.value);
    entry.rotated_at = new.key.last_rotated;
    if let Err(e) = ctx.journal().record(&entry) {
        // Keep going: storing the value is now the only way to keep it.
        tracing::error!(policy = %policy.name, error = %e, "could not journal the new value; storing it directly");
    }
    tracing::info!(policy = %policy.name, key_id = %key.id, fingerprint = %fingerprint(&new.value), "rotated in ZenML");
    fault::point("after_rotate");
    complete(ctx, policy, &store, &entry, &new.value, snapshot, started).await
}

fn entry_for(policy: &KeyPolicy, sa: &ServiceAccount, key: &ApiKey, token: String) -> Entry {
    Entry {
        policy: policy.name.clone(),
        token,
        phase: Phase::Intent,
        strategy: policy.strategy.as_str().into(),
        service_account: sa.name.clone(),
        service_account_id: sa.id.to_string(),
        api_key: key.name.clone(),
        key_id: key.id.to_string(),
        store: policy.store.clone(),
        path: policy.path.clone(),
        started_at: Utc::now(),
        previous_last_rotated: key.last_rotated,
        retain_minutes: retain_minutes(policy),
        rotated_at: None,
        fingerprint: None,
        value: None,
    }
}

/// Verify, store, read back, promote, record; then forget the journal entry.
async fn complete(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    entry: &Entry,
    value: &SecretString,
    snapshot: StoreSnapshot,
    started: Instant,
) -> Result<Outcome, KeyFailure> {
    let sa_id = Uuid::parse_str(&entry.service_account_id).map_err(|_| {
        KeyFailure::state(
            Stage::Verify,
            format!("malformed id {:?} in the journal", entry.service_account_id),
        )
    })?;
    if check_key(ctx, value).await? == KeyCheck::Rejected {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "ZenML rejects the new value ({}); it stays in the journal and the next pass checks again",
                fingerprint(value)
            )),
        ));
    }
    // ZenML's own timestamp, so later passes can tell our rotation from someone else's. The
    // journaled one first: if the key was rotated again between a crash and this replay, the
    // key's timestamp is that other rotation's, and recording it would hide that the value
    // stored here is now the previous generation, alive only until that window ends.
    let key_now = ctx
        .zenml()
        .get_api_key(sa_id, &entry.key_id)
        .await
        .map_err(|e| KeyFailure::zenml(Stage::Verify, e))?;
    let rotated_at = entry
        .rotated_at
        .or(key_now.last_rotated)
        .unwrap_or_else(Utc::now);
    let retain = ChronoDuration::minutes(i64::from(entry.retain_minutes));
    let record = RotationRecord {
        policy: policy.name.clone(),
        service_account: entry.service_account.clone(),
        api_key: key_now.name.clone(),
        key_id: key_now.id.to_string(),
        fingerprint: fingerprint(value),
        rotated_at: Some(rotated_at),
        retain_until: Some(rotated_at + retain),
        finalized_at: None,
        retiring_key_id: None,
        retire_at: None,
    };
    store_value(ctx, policy, store, &entry.token, value, &record, &snapshot).await?;
    ctx.journal().remove(&policy.name).map_err(|e| {
        KeyFailure::journal(Stage::Store, "stored, but the journal entry stays: ", e)
    })?;
    let key_id = key_now.id.to_string();
    events::emit(Event::Rotated {
        policy: &policy.name,
        key_id: &key_id,
        fingerprint: &record.fingerprint,
        store: store.kind(),
        path: &policy.path,
        took: started.elapsed(),
        what: "rotation stored and verified",
        detail: String::new(),
    });
    Ok(Outcome::Rotated {
        key_id,
        fingerprint: record.fingerprint,
    })
}

/// Replays a journaled value: store it if ZenML still accepts it, drop it if not.
pub async fn resume(ctx: &Context, policy: &KeyPolicy) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    let entry = ctx
        .journal()
        .get(&policy.name)
        .map_err(|e| KeyFailure::journal(Stage::Store, "", e))?
        .ok_or_else(|| KeyFailure::state(Stage::Store, "no journal entry to resume"))?;
    let Some(value) = entry.value.as_ref() else {
        return Err(KeyFailure::state(
            Stage::Store,
            "the journal entry holds no value",
        ));
    };
    // Where the policy stores the key now: `complete` writes to the policy's path, so the
    // pre-flight snapshot it checks-and-sets against must come from that same place, even if
    // the policy file moved the key since the crash.
    let store = ctx.store(&policy.store).await?;
    if (entry.store.as_str(), entry.path.as_str()) != (policy.store.as_str(), policy.path.as_str())
    {
        tracing::warn!(policy = %policy.name, journaled_store = %entry.store, journaled_path = %entry.path,
            store = %policy.store, path = %policy.path,
            "the policy's store or path changed since the rotation started; replaying into the current one");
    }
    if check_key(ctx, value).await? == KeyCheck::Rejected {
        tracing::warn!(policy = %policy.name, fingerprint = entry.fingerprint.as_deref().unwrap_or("?"),
            "the journaled value is no longer accepted by ZenML (rotated again or deactivated elsewhere); dropping it");
        ctx.journal()
            .remove(&policy.name)
            .map_err(|e| KeyFailure::journal(Stage::Store, "", e))?;
        return Ok(Outcome::Waited {
            reason: "dropped a journaled value ZenML no longer accepts".into(),
        });
    }
    tracing::info!(policy = %policy.name, fingerprint = entry.fingerprint.as_deref().unwrap_or("?"), "replaying a journaled rotation into the store");
    let fail = |e| KeyFailure::store(Stage::Store, e);
    let snapshot = store.preflight(&policy.path).await.map_err(fail)?;
    // A pending version with our own token is ours: staging again with it is idempotent.
    let snapshot = StoreSnapshot {
        pending: snapshot.pending.filter(|p| p != &entry.token),
        ..snapshot
    };
    if let Some(pending) = &snapshot.pending {
        store
            .discard_staged(&policy.path, pending)
            .await
            .map_err(fail)?;
    }
    complete(ctx, policy, &store, &entry, value, snapshot, started).await
}

/// After the window: confirm the previous value is rejected, then mark the rotation final.
async fn finalize(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
) -> Result<Outcome, KeyFailure> {
    let store = ctx.store(&policy.store).await?;
    let Some(mut record) = obs.snapshot.as_ref().and_then(|s| s.record.clone()) else {
        return Err(KeyFailure::state(
            Stage::Finalize,
            "the store has no rotation record",
        ));
    };
    let fail = |e: StoreError| KeyFailure::store(Stage::Finalize, e);
    // A version written on top that keeps the same key (an operator adding a field with
    // `vault kv patch`, a re-put of the same JSON) makes the "previous" version hold the
    // current value: that one is meant to work, and is no retired value to confirm dead.
    let previous = store.read_previous(&policy.path).await.map_err(fail)?;
    let detail = match previous {
        Some(prev) if fingerprint(&prev) == record.fingerprint => format!(
            "the previous version holds the current value {} (a version was written on top with the same key)",
            record.fingerprint
        ),
        Some(prev) => match check_key(ctx, &prev).await {
            Ok(KeyCheck::Rejected) => format!("previous value {} is rejected", fingerprint(&prev)),
            Ok(KeyCheck::Accepted) => {
                events::emit(Event::PreviousStillAccepted {
                    policy: &policy.name,
                });
                return Err(KeyFailure::new(
                    Stage::Finalize,
                    KeyError::Value(format!(
                        "the previous value {} is still accepted after its retain window ended",
                        fingerprint(&prev)
                    )),
                ));
            }
            Err(e) => return Err(KeyFailure::new(Stage::Finalize, e.error)),
        },
        None => "no previous value is stored".into(),
    };
    if policy.retire_previous {
        store.retire_previous(&policy.path).await.map_err(fail)?;
    }
    record.finalized_at = Some(Utc::now());
    store
        .set_record(&policy.path, &record)
        .await
        .map_err(fail)?;
    events::emit(Event::Finalized {
        policy: &policy.name,
        detail: &detail,
        retired: policy.retire_previous,
    });
    Ok(Outcome::Finalized { detail })
}

fn usable(obs: &Observed) -> Result<(&ServiceAccount, &ApiKey), KeyFailure> {
    match (&obs.service_account, &obs.key) {
        (Some(sa), Some(key)) if sa.active && key.active => Ok((sa, key)),
        _ => Err(KeyFailure::state(
            Stage::Preflight,
            "the service account or API key is missing or inactive",
        )),
    }
}

/// A rotate call whose outcome is unknown: the server may have rotated (timeout, dropped
/// connection, 5xx, an unreadable answer). Only a 4xx says for sure that nothing happened.
fn outcome_unknown(e: &ZenmlError) -> bool {
    !matches!(e.status(), Some(400..=499))
}

/// Whole minutes of retain, as ZenML takes them (config validation guarantees whole minutes).
fn retain_minutes(policy: &KeyPolicy) -> u32 {
    u32::try_from(policy.retain.as_secs() / 60).unwrap_or(u32::MAX)
}
