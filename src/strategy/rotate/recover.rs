//! Healing a rotation whose new value nobody kept (invariant 8). ZenML rotated the key, but the
//! answer died with a crash or a cut connection (or someone rotated it outside the rotator): the
//! new value is unknown to everyone, and the stored value (now ZenML's previous generation) works
//! only until that rotation's window ends. Rotating again at once would drop it: ZenML keeps one
//! previous generation. Instead a rescue key, a new key of the same service account, is created,
//! checked and stored now, so consumers move to it as they reload; when the window ends, nobody
//! can hold the key's old value any more, and the key is rotated again with retain 0 (its
//! previous generation, the value nobody has, is cut off at once), stored, and the rescue key is
//! retired like a replaced key once `retain` has passed (`finalize`).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::usable;
use crate::config::KeyPolicy;
use crate::engine::claims::ClaimHandle;
use crate::engine::context::Context;
use crate::engine::decide::{Observed, zenml_retain_until};
use crate::engine::events::{self, Actor, DeactivationReason, Event};
use crate::engine::failure::{DisableError, KeyError, KeyFailure, Outcome};
use crate::engine::guard::{self, Disable};
use crate::engine::writer::{check_key, preflight_store, store_value};
use crate::fault;
use crate::metrics::Stage;
use crate::naming::{RESCUE_MARK, generation_name, is_generation};
use crate::secret::fingerprint;
use crate::store::{RotationRecord, SecretStore};
use crate::strategy::still_ours;
use crate::time::rfc3339;
use crate::zenml::{ApiKey, KeyCheck, KeyFilter, ServiceAccount, key_id_from_value};

/// A rescue key stands in: stored now, until the window of the rotation nobody kept ends.
pub(super) async fn rescue(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let started = Instant::now();
    let (sa, key) = usable(obs)?;
    let until = zenml_retain_until(key).unwrap_or_else(Utc::now);
    // Invariant 2: the destination must be writable now.
    let store = ctx.store(&policy.store).await?;
    let snapshot = preflight_store(&store, policy).await?;

    // An earlier attempt may have created a rescue key, and even stored it, then stopped.
    let earlier = rescue_keys(ctx, policy, sa).await?;
    let stored = store
        .read_current(&policy.path)
        .await
        .map_err(|e| KeyFailure::store(Stage::Preflight, e))?
        .as_ref()
        .and_then(key_id_from_value);
    if let Some(k) = earlier.iter().find(|k| k.active && Some(k.id) == stored) {
        let record = rescue_record(
            policy,
            sa,
            key,
            k,
            &fingerprint_of_stored(&store, policy).await?,
            until,
        );
        still_ours(claim, policy, Stage::Store).await?;
        store
            .set_record(&policy.path, &record)
            .await
            .map_err(|e| KeyFailure::store(Stage::Store, e))?;
        return done(ctx, policy, claim, k, &record.fingerprint, until, started);
    }
    remove_orphans(ctx, policy, &store, &earlier, claim).await?;

    still_ours(claim, policy, Stage::Rotate).await?;
    let now = Utc::now();
    let name = generation_name(&policy.api_key, now);
    let description = format!(
        "{RESCUE_MARK} of policy {:?}, created {}: stands in for {:?} ({}), which ZenML rotated \
         at {} without anyone keeping the new value; retired once that key is rotated again",
        policy.name,
        rfc3339(now),
        key.name,
        key.id,
        key.last_rotated.map(rfc3339).unwrap_or_default()
    );
    let new = ctx
        .zenml()
        .create_api_key(sa.id, &name, &description)
        .await
        .map_err(|e| {
            let context = format!("cannot create rescue key {name:?} on {:?}: ", sa.name);
            KeyFailure::zenml_in(Stage::Rotate, context, e)
        })?;
    fault::point("after_create");
    let fp = fingerprint(&new.value);
    if check_key(ctx, &new.value).await? == KeyCheck::Rejected {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "ZenML rejects the new rescue key {name:?} ({fp}); it was not stored, and the next pass removes it"
            )),
        ));
    }
    let record = rescue_record(policy, sa, key, &new.key, &fp, until);
    still_ours(claim, policy, Stage::Store).await?;
    let token = uuid::Uuid::new_v4().to_string();
    store_value(ctx, policy, &store, &token, &new.value, &record, &snapshot).await?;
    done(ctx, policy, claim, &new.key, &fp, until, started)
}

/// A rescue recorded: the journal entry and the claim of the lost rotation go.
fn done(
    ctx: &Context,
    policy: &KeyPolicy,
    claim: &mut ClaimHandle,
    rescue: &ApiKey,
    fp: &str,
    until: chrono::DateTime<Utc>,
    started: Instant,
) -> Result<Outcome, KeyFailure> {
    ctx.journal().remove(&policy.name).map_err(|e| {
        KeyFailure::journal(Stage::Store, "rescued, but the journal entry stays: ", e)
    })?;
    claim.settle();
    let detail = format!(
        "rescue key {:?} ({}) stored; it stands in until {}, when {:?} is rotated again",
        rescue.name,
        rescue.id,
        rfc3339(until),
        policy.api_key
    );
    let rescue_id = rescue.id.to_string();
    events::emit(Event::Recovered {
        policy: &policy.name,
        api_key: &rescue.name,
        key_id: &rescue_id,
        fingerprint: fp,
        detail: &detail,
        took: started.elapsed(),
    });
    Ok(Outcome::Recovered {
        key_id: rescue.id.to_string(),
        fingerprint: fp.to_owned(),
        detail,
    })
}

/// What a recovery that rotated the key again reports.
pub(super) fn returned(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Rotated {
            key_id,
            fingerprint,
        } => Outcome::Recovered {
            detail: format!(
                "key {key_id} rotated again (its unknown previous value cut off); new value {fingerprint} stored and verified"
            ),
            key_id,
            fingerprint,
        },
        other => other,
    }
}

fn rescue_record(
    policy: &KeyPolicy,
    sa: &ServiceAccount,
    key: &ApiKey,
    rescue: &ApiKey,
    fp: &str,
    until: chrono::DateTime<Utc>,
) -> RotationRecord {
    RotationRecord {
        policy: policy.name.clone(),
        service_account: sa.name.clone(),
        api_key: rescue.name.clone(),
        key_id: rescue.id.to_string(),
        fingerprint: fp.to_owned(),
        rotated_at: Some(rescue.created),
        retain_until: Some(until),
        finalized_at: None,
        retiring_key_id: None,
        retire_at: None,
        rescue_for: Some(key.id.to_string()),
        rescue_until: Some(until),
        hooks: Default::default(),
    }
}

async fn fingerprint_of_stored(
    store: &Arc<dyn SecretStore>,
    policy: &KeyPolicy,
) -> Result<String, KeyFailure> {
    let value = store
        .read_current(&policy.path)
        .await
        .map_err(|e| KeyFailure::store(Stage::Store, e))?;
    Ok(value.as_ref().map(fingerprint).unwrap_or_default())
}

/// The rescue keys earlier recoveries of this policy created: `<api_key>-<stamp>`, ours.
async fn rescue_keys(
    ctx: &Context,
    policy: &KeyPolicy,
    sa: &ServiceAccount,
) -> Result<Vec<ApiKey>, KeyFailure> {
    let filter = KeyFilter {
        name_startswith: Some(format!("{}-", policy.api_key)),
        active: None,
    };
    let keys = ctx
        .zenml()
        .list_api_keys(sa.id, &filter)
        .await
        .map_err(|e| KeyFailure::zenml(Stage::Preflight, e))?;
    Ok(keys
        .into_iter()
        .filter(|k| {
            is_generation(&policy.api_key, &k.name) && k.description.starts_with(RESCUE_MARK)
        })
        .collect())
}

/// Rescue keys an interrupted recovery created and never stored: nobody holds their value, so
/// they go (deactivated, then deleted), never one a store holds (the guard).
async fn remove_orphans(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    earlier: &[ApiKey],
    claim: &mut ClaimHandle,
) -> Result<(), KeyFailure> {
    if earlier.is_empty() {
        return Ok(());
    }
    let failure = |e: DisableError| KeyFailure::new(Stage::Preflight, e.into());
    still_ours(claim, policy, Stage::Preflight).await?;
    let protected = guard::protected_keys(policy, store)
        .await
        .map_err(failure)?;
    let actor = Actor::Policy(&policy.name);
    for key in earlier.iter().filter(|k| !protected.contains(k.id)) {
        if key.active {
            let how = Disable::Deactivate(DeactivationReason::Orphan);
            guard::disable_key(ctx.zenml(), key, how, actor, &protected)
                .await
                .map_err(failure)?;
        }
        guard::disable_key(ctx.zenml(), key, Disable::Delete, actor, &protected)
            .await
            .map_err(failure)?;
    }
    Ok(())
}

/// Once the key was rotated again and its window is over: every rescue key of the policy still
/// active goes out of service (the guard refuses any a store holds).
pub(super) async fn retire_rescue_keys(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    store: &Arc<dyn SecretStore>,
    claim: &mut ClaimHandle,
) -> Result<(), KeyFailure> {
    let Some(sa) = obs.service_account.as_ref() else {
        return Ok(());
    };
    let failure = |e: DisableError| KeyFailure::new(Stage::Finalize, e.into());
    let active: Vec<ApiKey> = rescue_keys(ctx, policy, sa)
        .await?
        .into_iter()
        .filter(|k| k.active)
        .collect();
    if active.is_empty() {
        return Ok(());
    }
    still_ours(claim, policy, Stage::Finalize).await?;
    let protected = guard::protected_keys(policy, store)
        .await
        .map_err(failure)?;
    let how = Disable::Deactivate(DeactivationReason::Retired);
    for key in active.iter().filter(|k| !protected.contains(k.id)) {
        guard::disable_key(
            ctx.zenml(),
            key,
            how,
            Actor::Policy(&policy.name),
            &protected,
        )
        .await
        .map_err(failure)?;
    }
    Ok(())
}

/// `revoke`: a rescue key the new value took over from (or one still retiring) is deactivated
/// now instead of a retain later, and the record says nothing is retiring.
pub(super) async fn retire_rescue_now(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
    claim: &mut ClaimHandle,
) -> Result<(), KeyFailure> {
    let store = ctx.store(&policy.store).await?;
    let fail = |e| KeyFailure::store(Stage::Finalize, e);
    let Some(mut record) = store.inspect(&policy.path).await.map_err(fail)?.record else {
        return Ok(());
    };
    if record.retiring_key_id.is_none() {
        return Ok(());
    }
    retire_rescue_keys(ctx, policy, obs, &store, claim).await?;
    record.retiring_key_id = None;
    record.retire_at = None;
    still_ours(claim, policy, Stage::Finalize).await?;
    store.set_record(&policy.path, &record).await.map_err(fail)
}
