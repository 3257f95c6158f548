//! Strategy `rotate`: in place, with ZenML's retain window (`zenml service-account api-key SA
//! rotate KEY --retain N`), under the key's claim. The new value exists only in ZenML's answer,
//! so before anything else happens it is kept where another rotator will find it (the claim in
//! Vault, `AWSPENDING` in AWS; for the file store, the local journal, which is also the fallback
//! when the store cannot be reached), then verified, stored and read back; after the window the
//! previous value is confirmed rejected. A kept value is finished by the next pass ([`resume`]),
//! by whichever rotator holds the claim then, whatever the policy's strategy is by then.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

mod recover;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use uuid::Uuid;

use super::{KeyStrategy, Recovery, still_ours};
use crate::config::KeyPolicy;
use crate::engine::claims::ClaimHandle;
use crate::engine::context::Context;
use crate::engine::decide::{Family, Observed, ReadError, Upstream, zenml_retain_until};
use crate::engine::events::{self, Event};
use crate::engine::failure::{Force, KeyError, KeyFailure, Outcome};
use crate::engine::journal::{Entry, Phase};
use crate::engine::writer::{check_key, preflight_store_seen, store_value};
use crate::fault;
use crate::metrics::Stage;
use crate::secret::{ExposeSecret, SecretString, fingerprint};
use crate::store::{Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot, ValueKept};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, KeyCheck, ServiceAccount, ZenmlError};

pub struct InPlace;

#[async_trait]
impl KeyStrategy for InPlace {
    fn current_key(&self, policy: &KeyPolicy, _snapshot: &StoreSnapshot) -> String {
        policy.api_key.clone()
    }

    /// The rescue key standing in for the policy's key, or retiring since it returned.
    async fn observe(
        &self,
        ctx: &Context,
        _policy: &KeyPolicy,
        sa: &ServiceAccount,
        _store: &Arc<dyn SecretStore>,
        snapshot: &StoreSnapshot,
        obs: &mut Observed,
    ) {
        let Some(record) = snapshot.record.as_ref() else {
            return;
        };
        let rescue = record
            .rescue_for
            .is_some()
            .then_some(record.key_id.as_str());
        let ids: Vec<&str> = [rescue, record.retiring_key_id.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        for id in ids {
            match ctx.zenml().get_api_key(sa.id, id).await {
                Ok(k) => keys.push(k),
                Err(ZenmlError::NotFound { .. }) => {}
                Err(e) => {
                    obs.read_error = Some(ReadError::new(Upstream::Zenml, e));
                    return;
                }
            }
        }
        obs.family = Some(Family {
            keys,
            stored_key_id: None,
        });
    }

    async fn issue(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        let run = Run {
            retain_minutes: retain_minutes(policy),
            force,
        };
        rotate(ctx, policy, obs, run, claim).await
    }

    async fn finalize(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        finalize(ctx, policy, obs, claim).await
    }

    /// An in-place rotation with retain 0: ZenML keeps no previous value, and a token carries the
    /// key generation it was minted under, so the leaked value and every token minted from it
    /// (or from the value before it) stop working at once (measured on 0.96 and 0.98). A rescue
    /// key standing in or retiring goes out of service at once too.
    async fn revoke(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        let run = Run {
            retain_minutes: 0,
            force: Force::Yes,
        };
        let outcome = rotate(ctx, policy, obs, run, claim).await?;
        recover::retire_rescue_now(ctx, policy, obs, claim).await?;
        Ok(outcome)
    }

    async fn recover(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        how: Recovery,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        match how {
            Recovery::Rescue => recover::rescue(ctx, policy, obs, claim).await,
            Recovery::Return => {
                let run = Run {
                    // Its previous generation is the value nobody kept: cut off at once.
                    retain_minutes: 0,
                    force: Force::Yes,
                };
                let outcome = rotate(ctx, policy, obs, run, claim).await?;
                Ok(recover::returned(outcome))
            }
        }
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

/// One in-place rotation: the retain ZenML keeps the previous value for, and how invariant 1 is
/// treated.
pub(super) struct Run {
    pub retain_minutes: u32,
    pub force: Force,
}

async fn rotate(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    run: Run,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    let (sa, key) = usable(obs)?;
    check_window(policy, key, run.force)?;
    // Invariant 2: the destination must be writable now, before ZenML changes anything. `obs`
    // was made under the claim (or its take proved it current): the version it saw is the one
    // the write checks-and-sets against.
    let store = ctx.store(&policy.store).await?;
    let snapshot = preflight_store_seen(&store, policy, obs.snapshot.as_ref()).await?;

    claim.begin_rotation(key.last_rotated, run.retain_minutes);
    let entry = entry_for(
        policy,
        sa,
        key,
        claim.token().to_owned(),
        run.retain_minutes,
    );
    if store.keeps_value() == ValueKept::Journal {
        // No claim another host can read: the journal holds the intent.
        ctx.journal()
            .record(&entry)
            .map_err(|e| KeyFailure::journal(Stage::Preflight, "cannot journal the intent: ", e))?;
    }
    still_ours(claim, policy, Stage::Preflight).await?;
    claim.mark_in_flight();
    fault::point("before_rotate");
    let new = match ctx
        .zenml()
        .rotate_api_key(sa.id, &key.id.to_string(), run.retain_minutes)
        .await
    {
        Ok(new) => new.as_before(key),
        Err(e) => {
            if !outcome_unknown(&e) {
                // The server refused: nothing changed, so the intent goes.
                let _ = ctx.journal().remove(&policy.name);
                claim.clear_in_flight();
            }
            return Err(KeyFailure::zenml(Stage::Rotate, e));
        }
    };
    // The value exists only in memory: keep it before anything else happens.
    let mut entry = entry.with_value(&new.value);
    entry.rotated_at = new.key.last_rotated;
    keep(ctx, policy, &store, &snapshot, claim, &entry, &new.value).await;
    tracing::info!(policy = %policy.name, key_id = %key.id, fingerprint = %fingerprint(&new.value), "rotated in ZenML");
    fault::point("after_rotate");
    let kept = Kept {
        answered: Some(new.key.clone()),
        ..Kept::from_entry(&entry)
    };
    complete(
        ctx, policy, &store, &kept, &new.value, snapshot, started, claim,
    )
    .await
}

/// Keeps a new value where another rotator will find it (the claim, `AWSPENDING`) or, for the
/// file store and whenever that fails, in the local journal (0600, fsync). A value kept nowhere
/// leaves the claim to expire instead of being released, so the next pass sees a lost answer.
async fn keep(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    snapshot: &StoreSnapshot,
    claim: &mut ClaimHandle,
    entry: &Entry,
    value: &SecretString,
) {
    let fp = fingerprint(value);
    let kept = match store.keeps_value() {
        ValueKept::Journal => None,
        ValueKept::InClaim => claim
            .keep(Some(value), entry.rotated_at, &fp)
            .await
            .err()
            .map(|e| e.to_string()),
        ValueKept::Staged => {
            let payload = Payload {
                zenml_url: ctx.zenml_url().to_owned(),
                api_key: SecretString::from(value.expose_secret().to_owned()),
            };
            let record = provisional_record(policy, entry);
            store
                .stage(&policy.path, &payload, &record, snapshot, &entry.token)
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    let in_store = store.keeps_value() != ValueKept::Journal && kept.is_none();
    if let Some(why) = &kept {
        tracing::error!(policy = %policy.name, error = %why, "could not keep the new value in the store; journaling it locally");
    }
    if in_store {
        claim.clear_in_flight();
        return;
    }
    match ctx.journal().record(entry) {
        Ok(()) => claim.clear_in_flight(),
        // Keep going: storing the value is now the only way to keep it.
        Err(e) => {
            tracing::error!(policy = %policy.name, error = %e, "could not journal the new value; storing it directly")
        }
    }
}

/// The record a value is staged with before it is verified (AWS tags a secret it creates).
fn provisional_record(policy: &KeyPolicy, entry: &Entry) -> RotationRecord {
    RotationRecord {
        policy: policy.name.clone(),
        service_account: entry.service_account.clone(),
        api_key: entry.api_key.clone(),
        key_id: entry.key_id.clone(),
        fingerprint: entry.fingerprint.clone().unwrap_or_default(),
        rotated_at: entry.rotated_at,
        retain_until: None,
        finalized_at: None,
        retiring_key_id: None,
        retire_at: None,
        rescue_for: None,
        rescue_until: None,
        hooks: Default::default(),
    }
}

/// A rotation ZenML answered, as kept: in this host's journal or in a claim.
struct Kept {
    token: String,
    service_account: String,
    service_account_id: String,
    key_id: String,
    rotated_at: Option<DateTime<Utc>>,
    retain_minutes: u32,
    fingerprint: Option<String>,
    /// The key as ZenML described it just after this rotator's own rotate call; a rotation
    /// finished later (a replay, another holder's) reads the key again.
    answered: Option<ApiKey>,
}

impl Kept {
    fn from_entry(entry: &Entry) -> Kept {
        Kept {
            token: entry.token.clone(),
            service_account: entry.service_account.clone(),
            service_account_id: entry.service_account_id.clone(),
            key_id: entry.key_id.clone(),
            rotated_at: entry.rotated_at,
            retain_minutes: entry.retain_minutes,
            fingerprint: entry.fingerprint.clone(),
            answered: None,
        }
    }

    fn from_claim(policy: &KeyPolicy, claim: &crate::store::Claim) -> Kept {
        Kept {
            token: claim.token.clone(),
            service_account: policy.service_account.clone(),
            service_account_id: claim.service_account_id.clone(),
            key_id: claim.key_id.clone(),
            rotated_at: claim.rotated_at,
            retain_minutes: claim.retain_minutes,
            fingerprint: claim.fingerprint.clone(),
            answered: None,
        }
    }
}

fn entry_for(
    policy: &KeyPolicy,
    sa: &ServiceAccount,
    key: &ApiKey,
    token: String,
    retain_minutes: u32,
) -> Entry {
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
        retain_minutes,
        rotated_at: None,
        fingerprint: None,
        value: None,
    }
}

/// Verify, store, read back, promote, record; then forget the journal entry.
#[allow(clippy::too_many_arguments)]
async fn complete(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    kept: &Kept,
    value: &SecretString,
    snapshot: StoreSnapshot,
    started: Instant,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let sa_id = Uuid::parse_str(&kept.service_account_id).map_err(|_| {
        KeyFailure::state(
            Stage::Verify,
            format!(
                "malformed service account id {:?} kept for the rotation",
                kept.service_account_id
            ),
        )
    })?;
    if check_key(ctx, value).await? == KeyCheck::Rejected {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "ZenML rejects the new value ({}); it stays kept and the next pass checks again",
                fingerprint(value)
            )),
        ));
    }
    // ZenML's own timestamp, so later passes can tell our rotation from someone else's. The
    // kept one first: if the key was rotated again between a crash and this replay, the key's
    // timestamp is that other rotation's, and recording it would hide that the value stored
    // here is now the previous generation, alive only until that window ends.
    let key_now = match &kept.answered {
        Some(key) => key.clone(),
        None => ctx
            .zenml()
            .get_api_key(sa_id, &kept.key_id)
            .await
            .map_err(|e| KeyFailure::zenml(Stage::Verify, e))?,
    };
    let rotated_at = kept
        .rotated_at
        .or(key_now.last_rotated)
        .unwrap_or_else(Utc::now);
    let retain = ChronoDuration::minutes(i64::from(kept.retain_minutes));
    let (retiring_key_id, retire_at) = retiring(policy, &key_now, snapshot.record.as_ref());
    let record = RotationRecord {
        policy: policy.name.clone(),
        service_account: kept.service_account.clone(),
        api_key: key_now.name.clone(),
        key_id: key_now.id.to_string(),
        fingerprint: fingerprint(value),
        rotated_at: Some(rotated_at),
        retain_until: Some(rotated_at + retain),
        finalized_at: None,
        retiring_key_id,
        retire_at,
        rescue_for: None,
        rescue_until: None,
        hooks: Default::default(),
    };
    // Fenced twice: by the claim, and by the store's check-and-set against the pre-flight.
    still_ours(claim, policy, Stage::Store).await?;
    let stored = store_value(ctx, policy, store, &kept.token, value, &record, &snapshot).await?;
    // The look after the pass's steps takes the key (and the store, where the read-back showed
    // it whole) from here instead of reading them again.
    claim.settle_rotated(key_now.clone(), stored);
    ctx.journal().remove(&policy.name).map_err(|e| {
        KeyFailure::journal(Stage::Store, "stored, but the journal entry stays: ", e)
    })?;
    let key_id = key_now.id.to_string();
    events::emit(Event::Rotated {
        policy: &policy.name,
        api_key: &key_now.name,
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

/// The rescue key the new value takes over from, if any: the stored key when it stood in for
/// this one (it stays active `retain` from now, for consumers still on it), or a rescue key still
/// retiring from before.
fn retiring(
    policy: &KeyPolicy,
    key: &ApiKey,
    record: Option<&RotationRecord>,
) -> (Option<String>, Option<DateTime<Utc>>) {
    let Some(record) = record else {
        return (None, None);
    };
    if record.rescue_for.as_deref() == Some(key.id.to_string().as_str()) {
        let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
        return (
            Some(record.key_id.clone()),
            Utc::now().checked_add_signed(retain),
        );
    }
    (record.retiring_key_id.clone(), record.retire_at)
}

/// Finishes a rotation whose value was kept (by this rotator or one that is gone): stores it if
/// ZenML still accepts it, drops it if not.
pub async fn resume(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    // Where the policy stores the key now: `complete` writes to the policy's path, so the
    // pre-flight snapshot it checks-and-sets against must come from that same place, even if
    // the policy file moved the key since the crash.
    let store = ctx.store(&policy.store).await?;
    let from_claim = obs.in_flight.as_ref().is_some_and(|f| f.holder.is_some());
    let (kept, value) = if from_claim {
        kept_in_claim(policy, &store, claim).await?
    } else {
        kept_in_journal(ctx, policy).await?
    };
    if check_key(ctx, &value).await? == KeyCheck::Rejected {
        tracing::warn!(policy = %policy.name, fingerprint = kept.fingerprint.as_deref().unwrap_or("?"),
            "the kept value is no longer accepted by ZenML (rotated again or deactivated elsewhere); dropping it");
        ctx.journal()
            .remove(&policy.name)
            .map_err(|e| KeyFailure::journal(Stage::Store, "", e))?;
        claim.settle();
        return Ok(Outcome::Waited {
            reason: "dropped a kept value ZenML no longer accepts".into(),
        });
    }
    tracing::info!(policy = %policy.name, fingerprint = kept.fingerprint.as_deref().unwrap_or("?"), "storing a kept rotation");
    let fail = |e| KeyFailure::store(Stage::Store, e);
    let snapshot = store.preflight(&policy.path).await.map_err(fail)?;
    // A pending version with our own token is ours: staging again with it is idempotent.
    let snapshot = StoreSnapshot {
        pending: snapshot.pending.filter(|p| p != &kept.token),
        ..snapshot
    };
    if let Some(pending) = &snapshot.pending {
        store
            .discard_staged(&policy.path, pending)
            .await
            .map_err(fail)?;
    }
    complete(ctx, policy, &store, &kept, &value, snapshot, started, claim).await
}

/// The value a holder that is gone kept: in its claim (Vault), or staged under its token (AWS).
async fn kept_in_claim(
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    claim: &ClaimHandle,
) -> Result<(Kept, SecretString), KeyFailure> {
    let held = claim.claim();
    let value = match &held.value {
        Some(v) => Some(SecretString::from(v.expose_secret().to_owned())),
        None => store
            .read_staged(&policy.path, &held.token)
            .await
            .map_err(|e| KeyFailure::store(Stage::Store, e))?,
    };
    let value = value.ok_or_else(|| {
        KeyFailure::state(Stage::Store, "the claim's rotation kept no value after all")
    })?;
    let mut kept = Kept::from_claim(policy, held);
    kept.fingerprint.get_or_insert_with(|| fingerprint(&value));
    Ok((kept, value))
}

/// The value this host's journal kept.
async fn kept_in_journal(
    ctx: &Context,
    policy: &KeyPolicy,
) -> Result<(Kept, SecretString), KeyFailure> {
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
    if (entry.store.as_str(), entry.path.as_str()) != (policy.store.as_str(), policy.path.as_str())
    {
        tracing::warn!(policy = %policy.name, journaled_store = %entry.store, journaled_path = %entry.path,
            store = %policy.store, path = %policy.path,
            "the policy's store or path changed since the rotation started; replaying into the current one");
    }
    let value = SecretString::from(value.expose_secret().to_owned());
    Ok((Kept::from_entry(&entry), value))
}

/// After the window: confirm the previous value is rejected, then mark the rotation final.
async fn finalize(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let store = ctx.store(&policy.store).await?;
    let Some(mut record) = obs.snapshot.as_ref().and_then(|s| s.record.clone()) else {
        return Err(KeyFailure::state(
            Stage::Finalize,
            "the store has no rotation record",
        ));
    };
    let fail = |e: StoreError| KeyFailure::store(Stage::Finalize, e);
    if record.retiring_key_id.take().is_some() {
        recover::retire_rescue_keys(ctx, policy, obs, &store, claim).await?;
        record.retire_at = None;
    }
    // A version written on top that keeps the same key (an operator adding a field with
    // `vault kv patch`, a re-put of the same JSON) makes the "previous" version hold the
    // current value: that one is meant to work, and is no retired value to confirm dead.
    // Under the claim, the look this step was decided on says which version is current.
    let previous = match obs.snapshot.as_ref() {
        Some(seen) => store.read_previous_of(&policy.path, seen).await,
        None => store.read_previous(&policy.path).await,
    }
    .map_err(fail)?;
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
    still_ours(claim, policy, Stage::Finalize).await?;
    if policy.retire_previous {
        store.retire_previous(&policy.path).await.map_err(fail)?;
    }
    record.finalized_at = Some(Utc::now());
    record.hooks.on_finalized = policy.hooks.on_finalized.as_ref().map(|_| 0);
    let stored = store
        .set_record_seen(&policy.path, &record, obs.snapshot.as_ref())
        .await
        .map_err(fail)?;
    // A rotation may follow under the same claim: its look takes the key (a finalize leaves it
    // as it was) and the store as the record write showed it.
    if let Some(key) = obs.key.clone() {
        claim.note_known(key, stored);
    }
    events::emit(Event::Finalized {
        policy: &policy.name,
        service_account: &policy.service_account,
        api_key: &policy.api_key,
        detail: &detail,
        retired: policy.retire_previous,
    });
    Ok(Outcome::Finalized { detail })
}

pub(super) fn usable(obs: &Observed) -> Result<(&ServiceAccount, &ApiKey), KeyFailure> {
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
