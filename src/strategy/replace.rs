//! Strategy `replace`: instead of rotating a key in place, create a new API key on the same service
//! account, verify and store it, and deactivate the replaced key once `retain` has passed (deleting
//! it `delete_after` later). Crash-safe without a journal of secrets: the old key keeps working until
//! the new one is stored, and keys an interrupted run created are found by name and removed.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use uuid::Uuid;

use super::{KeyStrategy, still_ours};
use crate::config::KeyPolicy;
use crate::engine::claims::ClaimHandle;
use crate::engine::context::Context;
use crate::engine::decide::{
    self, Family, Observed, ReadError, ReplaceWork, Upstream, names, zenml_retain_until,
};
use crate::engine::events::{self, Actor, DeactivationReason, Event};
use crate::engine::failure::{Force, KeyError, KeyFailure, Outcome};
use crate::engine::guard::{self, Disable};
use crate::engine::writer::{check_key, preflight_store, store_value};
use crate::fault;
use crate::metrics::Stage;
use crate::naming::{CREATED_MARK, generation_name, in_family};
use crate::secret::fingerprint;
use crate::store::{PendingHooks, RotationRecord, SecretStore, StoreSnapshot};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, KeyCheck, KeyFilter, ServiceAccount, ZenmlError, key_id_from_value};

pub struct Replacement;

#[async_trait]
impl KeyStrategy for Replacement {
    /// The record keeps the current key's id; before the first replacement, the seed key's name.
    fn current_key(&self, policy: &KeyPolicy, snapshot: &StoreSnapshot) -> String {
        match snapshot.record.as_ref() {
            Some(r) if !r.key_id.is_empty() => r.key_id.clone(),
            _ => policy.api_key.clone(),
        }
    }

    /// The policy's keys on the service account and, after an interrupted run, which key the
    /// store really holds.
    async fn observe(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        sa: &ServiceAccount,
        store: &Arc<dyn SecretStore>,
        snapshot: &StoreSnapshot,
        obs: &mut Observed,
    ) {
        match family(ctx, policy, sa, store, snapshot, obs.key.as_ref()).await {
            Ok(family) => obs.family = Some(family),
            Err(e) => obs.read_error = Some(e),
        }
    }

    fn publish(&self, policy: &KeyPolicy, obs: &Observed) {
        let Some(family) = &obs.family else {
            return;
        };
        let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
        let work = decide::replace_work(policy, obs.key.as_ref(), record, family, Utc::now());
        events::emit(Event::DeactivationsPending {
            policy: &policy.name,
            pending: work.retiring.len(),
            due: work.retire_at,
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
        let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
        replace(ctx, policy, obs, force, retain, claim).await
    }

    /// A new key, stored; then every other active key of the policy deactivated at once (which
    /// also refuses every token minted from it) and rotated with retain 0 while inactive, so
    /// that re-activating it by mistake cannot bring the leaked value back.
    async fn revoke(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        let outcome = replace(ctx, policy, obs, Force::Yes, ChronoDuration::zero(), claim).await?;
        if let Outcome::Rotated { key_id, .. } = &outcome {
            cut_off_now(ctx, policy, obs, key_id, claim).await?;
        }
        Ok(outcome)
    }

    async fn finalize(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        retire(ctx, policy, obs, claim).await
    }
}

async fn family(
    ctx: &Context,
    policy: &KeyPolicy,
    sa: &ServiceAccount,
    store: &Arc<dyn SecretStore>,
    snapshot: &StoreSnapshot,
    current: Option<&ApiKey>,
) -> Result<Family, ReadError> {
    let zenml = |e| ReadError::new(Upstream::Zenml, e);
    let filter = KeyFilter {
        name_startswith: Some(policy.api_key.clone()),
        active: None,
    };
    let mut keys: Vec<ApiKey> = ctx
        .zenml()
        .list_api_keys(sa.id, &filter)
        .await
        .map_err(zenml)?
        .into_iter()
        .filter(|k| in_family(&policy.api_key, &k.name))
        .collect();
    let record = snapshot.record.as_ref();
    // The retiring key is deactivated whatever its name (the policy's api_key may have changed).
    if let Some(id) = record.and_then(|r| r.retiring_key_id.as_deref())
        && !keys.iter().any(|k| k.id.to_string() == id)
    {
        match ctx.zenml().get_api_key(sa.id, id).await {
            Ok(k) => keys.push(k),
            Err(ZenmlError::NotFound { .. }) => {}
            Err(e) => return Err(zenml(e)),
        }
    }
    let mut family = Family {
        keys,
        stored_key_id: None,
    };
    if decide::needs_stored_key(policy, current, record, &family.keys) {
        let value = store
            .read_current(&policy.path)
            .await
            .map_err(|e| ReadError::new(Upstream::Store, e))?;
        family.stored_key_id = value.as_ref().and_then(key_id_from_value);
    }
    Ok(family)
}

/// When a key replaced now may be deactivated: `retain` from now, and never before the previous
/// value of an in-place rotation of that key (the policy may have been `rotate` before) has had
/// its own window.
fn retire_time(replaced: &ApiKey, retain: ChronoDuration) -> Option<DateTime<Utc>> {
    let ours = Utc::now().checked_add_signed(retain)?;
    Some(match zenml_retain_until(replaced) {
        Some(zenml) => ours.max(zenml),
        None => ours,
    })
}

fn finalize_failure(error: impl Into<KeyError>) -> KeyFailure {
    KeyFailure::new(Stage::Finalize, error.into())
}

/// Invariant 1. Under replace nothing is ever cut off early (the keys still retiring stay active
/// until the new replacement's window ends), but replacing again inside a window means one more
/// live key than the policy promises: only on request.
fn check_window(
    policy: &KeyPolicy,
    work: &ReplaceWork,
    now: DateTime<Utc>,
    force: Force,
) -> Result<(), KeyFailure> {
    let Some(until) = work
        .retire_at
        .filter(|t| *t > now && !work.retiring.is_empty())
    else {
        return Ok(());
    };
    if force == Force::No {
        let one = work.retiring.len() == 1;
        return Err(KeyFailure::refused(format!(
            "refused: replaced {} {} {} active until {} for consumers still on it; \
             replacing again now would keep one more key alive. Pass --force to replace \
             anyway (nothing is cut off: the replaced keys then stay active until the new \
             replacement's window ends).",
            if one { "key" } else { "keys" },
            names(&work.retiring),
            if one { "stays" } else { "stay" },
            rfc3339(until)
        )));
    }
    tracing::warn!(policy = %policy.name, retiring = %names(&work.retiring),
        "--force: replacing inside the retain window; the keys still retiring stay active until the new window ends");
    Ok(())
}

/// Creates a replacement key, verifies it (a key check: no token), stores it with a record
/// naming the current and the retiring key. Nothing is journaled: until the store holds the
/// new value, the old key is untouched; a key created but never stored is an orphan that the
/// next pass removes.
async fn replace(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    force: Force,
    retain: ChronoDuration,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    let Some(sa) = obs.service_account.as_ref().filter(|sa| sa.active) else {
        return Err(KeyFailure::state(
            Stage::Preflight,
            "the service account is missing or inactive",
        ));
    };
    let Some(family) = &obs.family else {
        return Err(KeyFailure::state(
            Stage::Preflight,
            "the policy's API keys were not listed",
        ));
    };
    let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
    let now = Utc::now();
    let work = decide::replace_work(policy, obs.key.as_ref(), record, family, now);
    // The key being replaced: the one the store holds (or, the first time, the seed key).
    let current = obs.key.as_ref().filter(|k| k.active);
    if record.is_some() && current.is_some() {
        check_window(policy, &work, now, force)?;
    }
    // Invariant 2: the destination must be writable now, before ZenML changes anything.
    let store = ctx.store(&policy.store).await?;
    let snapshot = preflight_store(&store, policy).await?;

    still_ours(claim, policy, Stage::Preflight).await?;
    let name = generation_name(&policy.api_key, now);
    let description = format!(
        "{CREATED_MARK} replacement key of policy {:?}, created {} to replace {}",
        policy.name,
        rfc3339(now),
        current
            .map(|k| format!("{:?} ({})", k.name, k.id))
            .unwrap_or_else(|| "no working key".into())
    );
    let new = ctx
        .zenml()
        .create_api_key(sa.id, &name, &description)
        .await
        .map_err(|e| {
            let context = format!("cannot create API key {name:?} on {:?}: ", sa.name);
            KeyFailure::zenml_in(Stage::Rotate, context, e)
        })?;
    let fp = fingerprint(&new.value);
    tracing::info!(policy = %policy.name, key = %name, key_id = %new.key.id, fingerprint = %fp, "created the replacement key");
    fault::point("after_create");

    if check_key(ctx, &new.value).await? == KeyCheck::Rejected {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "ZenML rejects the new key {name:?} ({fp}); it was not stored, and the next pass removes it"
            )),
        ));
    }

    // The window of the replaced key starts when its successor is stored: now, give or take
    // the few seconds the store takes.
    let retire_at = current.and_then(|k| retire_time(k, retain));
    let record = RotationRecord {
        policy: policy.name.clone(),
        service_account: sa.name.clone(),
        api_key: new.key.name.clone(),
        key_id: new.key.id.to_string(),
        fingerprint: fp.clone(),
        rotated_at: Some(new.key.created),
        retain_until: retire_at,
        finalized_at: None,
        retiring_key_id: current.map(|k| k.id.to_string()),
        retire_at,
        rescue_for: None,
        rescue_until: None,
        hooks: Default::default(),
    };
    let token = Uuid::new_v4().to_string();
    still_ours(claim, policy, Stage::Store).await?;
    store_value(ctx, policy, &store, &token, &new.value, &record, &snapshot).await?;
    let key_id = new.key.id.to_string();
    events::emit(Event::Rotated {
        policy: &policy.name,
        api_key: &new.key.name,
        key_id: &key_id,
        fingerprint: &fp,
        store: store.kind(),
        path: &policy.path,
        took: started.elapsed(),
        what: "replacement key stored and verified",
        detail: format!(
            "key {name:?} replaces {}; retire at {}",
            current.map(|k| k.name.as_str()).unwrap_or("-"),
            retire_at.map(rfc3339).unwrap_or_default()
        ),
    });
    // Every key still retiring (the one just replaced and any older) now waits for this window.
    events::emit(Event::DeactivationsPending {
        policy: &policy.name,
        pending: work.retiring.len() + usize::from(current.is_some()),
        due: retire_at,
    });
    Ok(Outcome::Rotated {
        key_id,
        fingerprint: fp,
    })
}

/// `revoke`, once the new key is stored: every other active key of the policy out of service
/// now (the guard refuses the stored one), its value rotated away, and nothing left retiring.
async fn cut_off_now(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    new_id: &str,
    claim: &mut ClaimHandle,
) -> Result<(), KeyFailure> {
    let Some(sa) = obs.service_account.as_ref() else {
        return Ok(());
    };
    let mut old: Vec<&ApiKey> = obs
        .family
        .iter()
        .flat_map(|f| f.keys.iter())
        .chain(obs.key.as_ref())
        .filter(|k| k.active && k.id.to_string() != new_id)
        .collect();
    old.sort_by_key(|k| k.id);
    old.dedup_by_key(|k| k.id);
    let store = ctx.store(&policy.store).await?;
    still_ours(claim, policy, Stage::Finalize).await?;
    let protected = guard::protected_keys(policy, &store)
        .await
        .map_err(finalize_failure)?;
    let how = Disable::Deactivate(DeactivationReason::Revoked);
    for key in old {
        guard::disable_key(
            ctx.zenml(),
            key,
            how,
            Actor::Policy(&policy.name),
            &protected,
        )
        .await
        .map_err(finalize_failure)?;
        // Deactivation is undone by re-activation; a rotation with retain 0 is not.
        if let Err(e) = ctx
            .zenml()
            .rotate_api_key(sa.id, &key.id.to_string(), 0)
            .await
        {
            tracing::warn!(policy = %policy.name, key = %key.name, key_id = %key.id, error = %e,
                "deactivated, but its value could not be rotated away: re-activating this key would bring the leaked value back");
        }
    }
    let fail = |e| KeyFailure::store(Stage::Finalize, e);
    if let Some(mut record) = store.inspect(&policy.path).await.map_err(fail)?.record {
        record.retiring_key_id = None;
        record.retire_at = None;
        record.finalized_at = Some(Utc::now());
        still_ours(claim, policy, Stage::Finalize).await?;
        store
            .set_record(&policy.path, &record)
            .await
            .map_err(fail)?;
    }
    events::emit(Event::DeactivationsPending {
        policy: &policy.name,
        pending: 0,
        due: None,
    });
    Ok(())
}

/// The clean-up `decide` found due: record a value its record lags behind, remove orphans,
/// deactivate replaced keys whose window ended, delete keys past `delete_after`.
async fn retire(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let Some(family) = &obs.family else {
        return Err(KeyFailure::state(
            Stage::Finalize,
            "the policy's API keys were not listed",
        ));
    };
    let store = ctx.store(&policy.store).await?;
    let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
    let now = Utc::now();
    let work = decide::replace_work(policy, obs.key.as_ref(), record, family, now);
    still_ours(claim, policy, Stage::Finalize).await?;
    if let Some(key) = &work.adopt {
        return adopt(ctx, policy, obs, &store, key).await;
    }
    let protected = guard::protected_keys(policy, &store)
        .await
        .map_err(finalize_failure)?;
    let actor = Actor::Policy(&policy.name);
    let disable = |key: &ApiKey, how: Disable| {
        let (zenml, protected) = (ctx.zenml(), &protected);
        let key = key.clone();
        async move {
            guard::disable_key(zenml, &key, how, actor, protected)
                .await
                .map_err(finalize_failure)
        }
    };
    let mut done = Vec::new();

    for key in &work.orphans {
        if key.active {
            disable(key, Disable::Deactivate(DeactivationReason::Orphan)).await?;
        }
        disable(key, Disable::Delete).await?;
    }
    if !work.orphans.is_empty() {
        done.push(format!(
            "removed {} (created by an interrupted run, never stored)",
            names(&work.orphans)
        ));
    }

    let mut still_pending = work.retiring.len();
    let finalized = work.retire_due(now) && !work.retiring.is_empty();
    if work.retire_due(now) {
        for key in &work.retiring {
            disable(key, Disable::Deactivate(DeactivationReason::Retired)).await?;
            still_pending -= 1;
        }
        if let Some(record) = record {
            let mut record = record.clone();
            record.retiring_key_id = None;
            record.retire_at = None;
            record.finalized_at = Some(Utc::now());
            record.hooks.on_finalized = policy.hooks.on_finalized.as_ref().map(|_| 0);
            store
                .set_record(&policy.path, &record)
                .await
                .map_err(|e| KeyFailure::store(Stage::Finalize, e))?;
        }
        done.push(format!(
            "deactivated {} (retain window ended {})",
            names(&work.retiring),
            work.retire_at.map(rfc3339).unwrap_or_default()
        ));
    }
    events::emit(Event::DeactivationsPending {
        policy: &policy.name,
        pending: still_pending,
        due: work.retire_at,
    });

    for key in &work.deletable {
        disable(key, Disable::Delete).await?;
    }
    if !work.deletable.is_empty() {
        done.push(format!(
            "deleted {} (deactivated more than delete_after ago)",
            names(&work.deletable)
        ));
    }
    let detail = if done.is_empty() {
        "nothing left to clean up".to_owned()
    } else {
        done.join("; ")
    };
    if finalized {
        events::emit(Event::Finalized {
            policy: &policy.name,
            service_account: &policy.service_account,
            api_key: &policy.api_key,
            detail: &detail,
            retired: true,
        });
    }
    tracing::info!(policy = %policy.name, %detail, "replace clean-up done");
    Ok(Outcome::Finalized { detail })
}

/// The store holds a newer key of ours than its record names (a run stopped between writing
/// the value and the record): check the value still works and record it as current; the key
/// it replaced gets a full retain window from now.
async fn adopt(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    store: &Arc<dyn SecretStore>,
    key: &ApiKey,
) -> Result<Outcome, KeyFailure> {
    let value = store
        .read_current(&policy.path)
        .await
        .map_err(|e| KeyFailure::store(Stage::Finalize, e))?;
    let Some(value) = value.filter(|v| key_id_from_value(v) == Some(key.id)) else {
        return Err(KeyFailure::state(
            Stage::Finalize,
            format!(
                "the store no longer holds key {:?}; the next pass decides again",
                key.name
            ),
        ));
    };
    if check_key(ctx, &value).await? == KeyCheck::Rejected {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "ZenML rejects the stored value of key {:?} ({})",
                key.name,
                fingerprint(&value)
            )),
        ));
    }
    let previous = obs.key.as_ref().filter(|k| k.active && k.id != key.id);
    let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
    let retire_at = previous.and_then(|k| retire_time(k, retain));
    let record = RotationRecord {
        policy: policy.name.clone(),
        service_account: policy.service_account.clone(),
        api_key: key.name.clone(),
        key_id: key.id.to_string(),
        fingerprint: fingerprint(&value),
        rotated_at: Some(key.created),
        retain_until: retire_at,
        finalized_at: None,
        retiring_key_id: previous.map(|k| k.id.to_string()),
        retire_at,
        rescue_for: None,
        rescue_until: None,
        // The run that stored this value stopped before its record: its hook never ran.
        hooks: PendingHooks {
            on_rotated: policy.hooks.on_rotated.as_ref().map(|_| 0),
            on_finalized: None,
        },
    };
    store
        .set_record(&policy.path, &record)
        .await
        .map_err(|e| KeyFailure::store(Stage::Finalize, e))?;
    let detail = format!(
        "recorded key {:?} ({}) as current: the store already held it{}",
        key.name,
        key.id,
        match (previous, retire_at) {
            (Some(p), Some(at)) => format!("; {:?} stays active until {}", p.name, rfc3339(at)),
            _ => String::new(),
        }
    );
    tracing::warn!(policy = %policy.name, %detail, "repaired a record left behind by an interrupted run");
    Ok(Outcome::Finalized { detail })
}
