//! `revoke NAME`: a leaked key. Under the key's claim, like any rotation: a rotation kept in
//! flight is finished first, then the policy's strategy issues and stores a new value and cuts
//! the leaked one off at once (`KeyStrategy::revoke`); the value the store held until then is
//! checked refused, the `revoked` event says so, and the key's hooks run (consumers reload).

use std::collections::BTreeMap;

use chrono::Utc;

use super::Engine;
use super::act::{KeyWork, settled, take_claim};
use super::claims::ClaimHandle;
use super::decide::{self, Observed, Why};
use super::events::{self, Event};
use super::failure::{Force, KeyError, KeyFailure, Outcome};
use super::observe::observe;
use super::writer::check_key;
use crate::config::KeyPolicy;
use crate::metrics::Stage;
use crate::secret::fingerprint;
use crate::strategy;
use crate::zenml::{KeyCheck, ServiceAccount};

/// What a revocation did.
pub struct Revocation {
    /// The fingerprint of the value the store held before (the leaked one), if it held one.
    pub leaked: Option<String>,
    /// The ZenML key the leaked value belonged to.
    pub old_key: Option<(String, String)>,
    /// The new key's name and id, and the new value's fingerprint.
    pub new_key: (String, String),
    pub new_fingerprint: String,
    /// The sentence of the `revoked` event.
    pub detail: String,
    /// The hooks that ran for the new value.
    pub hooks: Vec<Outcome>,
}

/// Revokes the policy's current value. The result also drives the key's metrics and the
/// `failed`/`blocked` notifications, like a pass over the key.
pub async fn revoke(engine: &Engine, policy: &KeyPolicy) -> Result<Revocation, KeyFailure> {
    let result = revoke_key(engine, policy).await;
    let summary = result.as_ref().map(|r| {
        let mut outcomes = vec![Outcome::Rotated {
            key_id: r.new_key.1.clone(),
            fingerprint: r.new_fingerprint.clone(),
        }];
        outcomes.extend(r.hooks.iter().cloned());
        outcomes
    });
    let summary = summary.map_err(Clone::clone);
    events::emit(Event::KeyFinished {
        policy: &policy.name,
        result: &summary,
    });
    result
}

async fn revoke_key(engine: &Engine, policy: &KeyPolicy) -> Result<Revocation, KeyFailure> {
    let ctx = engine.ctx();
    let accounts: BTreeMap<String, ServiceAccount> = ctx
        .service_accounts()
        .await
        .map_err(|e| KeyFailure::zenml_in(Stage::Preflight, "ZenML: ", e))?;
    let work = KeyWork {
        ctx,
        policy,
        accounts: &accounts,
        force: Some(Force::Yes),
    };
    let obs = observe(ctx, policy, &accounts, None).await;
    refuse_unless_usable(&work, &obs)?;
    let mut claim = match take_claim(ctx, policy, &obs).await? {
        Ok(c) => c,
        Err(held) => {
            return Err(KeyFailure::new(
                Stage::Preflight,
                KeyError::Claimed(format!(
                    "{held} Run revoke again once that rotation is done."
                )),
            ));
        }
    };
    let result = under_claim(&work, &mut claim).await;
    claim.release().await;
    let mut revocation = result?;
    revocation.hooks = engine.act().run_hooks(ctx, policy).await;
    Ok(revocation)
}

/// A key `decide` stops (missing, inactive, unreadable) cannot be revoked by the rotator.
fn refuse_unless_usable(work: &KeyWork<'_>, obs: &Observed) -> Result<(), KeyFailure> {
    let plan = decide::decide(work.policy, obs, Utc::now());
    match plan.why {
        Why::Unreadable | Why::Unusable | Why::Claimed => settled(&plan, work).map(|_| ()),
        _ => Ok(()),
    }
}

async fn under_claim(
    work: &KeyWork<'_>,
    claim: &mut ClaimHandle,
) -> Result<Revocation, KeyFailure> {
    let (ctx, policy) = (work.ctx, work.policy);
    let mut obs = observe(ctx, policy, work.accounts, Some(&*claim)).await;
    refuse_unless_usable(work, &obs)?;
    // A value kept in flight is a newer value than the stored one: store it first, so that the
    // revocation below cuts it off too rather than leaving it to a later pass.
    let plan = decide::decide(policy, &obs, Utc::now());
    if matches!(plan.why, Why::ResumeJournal) {
        strategy::rotate::resume(ctx, policy, &obs, claim).await?;
        obs = observe(ctx, policy, work.accounts, Some(&*claim)).await;
    }
    let store = ctx.store(&policy.store).await?;
    let leaked = store
        .read_current(&policy.path)
        .await
        .map_err(|e| KeyFailure::store(Stage::Preflight, e))?;
    let old_key = obs.key.as_ref().map(|k| (k.name.clone(), k.id.to_string()));
    let outcome = strategy::of(policy.strategy)
        .revoke(ctx, policy, &obs, claim)
        .await?;
    let Outcome::Rotated {
        key_id,
        fingerprint: new_fp,
    } = outcome
    else {
        return Err(KeyFailure::state(
            Stage::Rotate,
            "the strategy stored no new value",
        ));
    };
    if let Some(old) = &leaked
        && check_key(ctx, old).await? == KeyCheck::Accepted
    {
        return Err(KeyFailure::new(
            Stage::Verify,
            KeyError::Value(format!(
                "the new value {new_fp} is stored, but ZenML still accepts the leaked value {}: \
                 deactivate or delete the key by hand",
                fingerprint(old)
            )),
        ));
    }
    let new_key = ctx
        .zenml()
        .get_api_key(
            obs.service_account
                .as_ref()
                .map(|sa| sa.id)
                .unwrap_or_default(),
            &key_id,
        )
        .await
        .map(|k| k.name)
        .unwrap_or_else(|_| policy.api_key.clone());
    let leaked_fp = leaked.as_ref().map(fingerprint);
    let detail = format!(
        "revoked: the leaked value {} of key {} and every token minted from it are refused from now on; new value {new_fp} of key {new_key:?} ({key_id}) stored",
        leaked_fp.as_deref().unwrap_or("(none stored)"),
        old_key
            .as_ref()
            .map(|(name, id)| format!("{name:?} ({id})"))
            .unwrap_or_else(|| "?".into()),
    );
    events::emit(Event::Revoked {
        policy: &policy.name,
        api_key: &new_key,
        key_id: &key_id,
        fingerprint: &new_fp,
        detail: &detail,
    });
    Ok(Revocation {
        leaked: leaked_fp,
        old_key,
        new_key: (new_key, key_id),
        new_fingerprint: new_fp,
        detail,
        hooks: Vec::new(),
    })
}
