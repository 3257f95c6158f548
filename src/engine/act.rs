//! What a pass does once `decide` has spoken. [`Live`] takes the key's claim, looks again under it
//! (the first look may be stale by then: another rotator may just have finished), and acts through
//! the policy's strategy; `--dry-run` swaps in [`super::dry_run::DryRun`], which pre-flights and
//! reports instead, so no code below the command line asks whether this is a dry run.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::Utc;

use super::claims::{After, ClaimError, ClaimHandle, Draft};
use super::context::Context;
use super::decide::{self, KeyPlan, Observed, Why};
use super::events::{self, Actor, DeactivationReason, Event};
use super::failure::{DisableError, Force, KeyError, KeyFailure, Outcome};
use super::guard::{self, Disable};
use super::hooks;
use super::observe::observe;
use super::writer::preflight_store;
use crate::config::KeyPolicy;
use crate::metrics::Stage;
use crate::strategy::{self, Recovery};
use crate::zenml::{ApiKey, ServiceAccount};

/// Where a key's pass goes after a step.
pub enum Step {
    /// Look again: the step may have made more work due (a finalize, then a rotation).
    Continue(Option<Outcome>),
    /// The key is done for this pass.
    Finish(Outcome),
    /// Nothing to do: the key waits (reported only when no step ran before).
    Wait(String),
}

/// What one step of a key's pass leaves for the next step, and for the look after the last.
#[derive(Default)]
pub struct Carry {
    /// The key's claim, kept from the step before when that step ended with `Continue` and its
    /// claim can go on (a finalize; see [`ClaimHandle::carries_on`]).
    pub held: Option<ClaimHandle>,
    /// What the last step's release of its claim knows of the key.
    pub after: After,
}

/// A hygiene deactivation: done, or what a dry run would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    Deactivated,
    WouldDeactivate,
}

/// One key's work in a pass: what every step needs besides the observation and the decision.
pub struct KeyWork<'a> {
    pub ctx: &'a Context,
    pub policy: &'a KeyPolicy,
    pub accounts: &'a BTreeMap<String, ServiceAccount>,
    /// `rotate NAME [--force]`.
    pub force: Option<Force>,
}

#[async_trait]
pub trait Act: Send + Sync {
    /// Carries out one decision. `carry.held`: the key's claim, kept from the step before;
    /// `obs` was then made under it, so no second look is needed. A step that ends with
    /// `Continue` may leave its claim there for the next one; the caller releases what is left
    /// when the key's pass ends. A step that releases its claim leaves what the release knows
    /// in `carry.after`.
    async fn step(
        &self,
        work: &KeyWork<'_>,
        obs: &Observed,
        plan: KeyPlan,
        carry: &mut Carry,
    ) -> Result<Step, KeyFailure>;

    /// Hygiene: takes keys no policy covers out of service, never one a store holds (`policies`
    /// say which stores to ask). One result per key, in order.
    async fn retire_unused(
        &self,
        ctx: &Context,
        policies: &[KeyPolicy],
        keys: &[&ApiKey],
    ) -> Vec<Result<Retired, DisableError>>;

    /// The key's hooks still pending for its stored value, after the pass's steps for it.
    /// None by default: only a live pass runs them.
    async fn run_hooks(&self, _ctx: &Context, _policy: &KeyPolicy) -> Vec<Outcome> {
        Vec::new()
    }
}

/// The decisions that need no claim: waiting, and what stops the key. `None`: act.
pub fn settled(plan: &KeyPlan, work: &KeyWork<'_>) -> Result<Option<Step>, KeyFailure> {
    Ok(Some(match (plan.why.clone(), work.force) {
        (Why::Unreadable | Why::Unusable, _) => {
            return Err(KeyFailure::blocked(plan.reason.clone()));
        }
        (Why::Claimed, _) => return claimed(work, plan.reason.clone()).map(Some),
        (Why::NotDue | Why::Rescued, None) => Step::Wait(plan.reason.clone()),
        // `rotate NAME` while a rescue key stands in: rotating now would cut off the key's old
        // value before its window ends, as invariant 1 would say of any rotation.
        (Why::Rescued, Some(Force::No)) => {
            return Err(KeyFailure::refused(format!(
                "refused: {} Pass --force to rotate the key now, cutting off its previous value.",
                plan.reason
            )));
        }
        _ => return Ok(None),
    }))
}

/// Another rotator holds the key: a pass waits (and counts it); `rotate NAME` fails, since what
/// the operator asked for did not happen.
fn claimed(work: &KeyWork<'_>, reason: String) -> Result<Step, KeyFailure> {
    events::emit(Event::ClaimedElsewhere {
        policy: &work.policy.name,
    });
    match work.force {
        None => Ok(Step::Wait(reason)),
        Some(_) => Err(KeyFailure::new(
            Stage::Preflight,
            KeyError::Claimed(format!("{reason} Run it again once that rotation is done.")),
        )),
    }
}

/// What a fresh claim says: the key as observed when it was taken.
fn draft(policy: &KeyPolicy, obs: &Observed) -> Draft {
    Draft {
        policy: policy.name.clone(),
        service_account_id: obs
            .service_account
            .as_ref()
            .map(|sa| sa.id.to_string())
            .unwrap_or_default(),
        key_id: obs
            .key
            .as_ref()
            .map(|k| k.id.to_string())
            .unwrap_or_default(),
        previous_last_rotated: obs.key.as_ref().and_then(|k| k.last_rotated),
        // What an in-place rotation of the key gives ZenML, so taking the claim says it already.
        retain_minutes: u32::try_from(policy.retain.as_secs() / 60).unwrap_or(u32::MAX),
    }
}

/// Takes the key's claim, as every act on a key does (a pass's step, `revoke`). `Ok(Err(why))`:
/// another rotator holds it, and `why` says who.
pub async fn take_claim(
    ctx: &Context,
    policy: &KeyPolicy,
    obs: &Observed,
) -> Result<Result<ClaimHandle, String>, KeyFailure> {
    let store = ctx.store(&policy.store).await?;
    let seen = obs.claim.as_ref().map(|c| &c.stored);
    let rules = ctx.claim_rules();
    let taken = ClaimHandle::acquire(rules, store.clone(), &policy.path, seen, draft(policy, obs));
    match taken.await {
        Ok(c) => Ok(Ok(c)),
        Err(held @ ClaimError::Held { .. }) => Ok(Err(format!("{held}."))),
        Err(e) => {
            // The store refused the claim: its pre-flight names what is missing, if it can.
            preflight_store(&store, policy).await?;
            Err(KeyFailure::claim(Stage::Preflight, e))
        }
    }
}

pub struct Live;

#[async_trait]
impl Act for Live {
    async fn step(
        &self,
        work: &KeyWork<'_>,
        obs: &Observed,
        plan: KeyPlan,
        carry: &mut Carry,
    ) -> Result<Step, KeyFailure> {
        let (ctx, policy) = (work.ctx, work.policy);
        carry.after = After::default();
        let looked;
        let (mut claim, obs, plan) = match carry.held.take() {
            // The step before kept the claim, and `obs` was made under it.
            Some(claim) => (claim, obs, plan),
            None => {
                if let Some(step) = settled(&plan, work)? {
                    return Ok(step);
                }
                crate::fault::point("before_claim");
                let claim = match take_claim(ctx, policy, obs).await? {
                    Ok(c) => c,
                    Err(held) => return claimed(work, held),
                };
                if claim.look_stands() {
                    // Taken by check-and-set over the claim the look read: nothing changed since.
                    (claim, obs, plan)
                } else {
                    // Look again under the claim: another rotator may have finished the key
                    // meanwhile (a lock file proves nothing about that; a claim taken over from
                    // a gone holder is looked at as this process's now).
                    looked = observe(ctx, policy, work.accounts, Some(&claim)).await;
                    let plan = decide::decide(policy, &looked, Utc::now());
                    (claim, &looked, plan)
                }
            }
        };
        let result = match settled(&plan, work) {
            Ok(Some(step)) => Ok(step),
            Ok(None) => act(work, obs, plan, &mut claim).await,
            Err(e) => Err(e),
        };
        if matches!(result, Ok(Step::Continue(_))) && claim.carries_on() {
            // The next step (a rotation after a finalize) goes on under the same claim: no
            // release, no second take, and the look it starts with is made under it, taking
            // what this step left known (a finalize: the key, and the store as it wrote it).
            carry.after = claim.take_known();
            carry.held = Some(claim);
        } else {
            carry.after = claim.release().await;
        }
        result
    }

    async fn retire_unused(
        &self,
        ctx: &Context,
        policies: &[KeyPolicy],
        keys: &[&ApiKey],
    ) -> Vec<Result<Retired, DisableError>> {
        // Fail closed: without knowing every stored key, nothing is deactivated.
        let protected = guard::protected_everywhere(ctx, policies).await;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let result = match &protected {
                Ok(p) => guard::disable_key(
                    ctx.zenml(),
                    key,
                    Disable::Deactivate(DeactivationReason::Unused),
                    Actor::Hygiene,
                    p,
                )
                .await
                .map(|()| Retired::Deactivated),
                Err(e) => Err(e.clone()),
            };
            out.push(result);
        }
        out
    }

    async fn run_hooks(&self, ctx: &Context, policy: &KeyPolicy) -> Vec<Outcome> {
        hooks::run_pending(ctx, policy).await
    }
}

/// Carries out a decision under the key's claim.
async fn act(
    work: &KeyWork<'_>,
    obs: &Observed,
    plan: KeyPlan,
    claim: &mut ClaimHandle,
) -> Result<Step, KeyFailure> {
    let (ctx, policy, force) = (work.ctx, work.policy, work.force);
    let strategy = strategy::of(policy.strategy);
    let forced = force == Some(Force::Yes);
    Ok(match plan.why {
        Why::LostRotation | Why::RotatedOutOfBand => {
            Step::Finish(recover(work, obs, Recovery::Rescue, claim).await?)
        }
        Why::StoredRefused | Why::ReturnFromRescue | Why::Rescued => {
            Step::Finish(recover(work, obs, Recovery::Return, claim).await?)
        }
        Why::StaleIntent => {
            drop_journal_entry(ctx, policy)?;
            tracing::info!(policy = %policy.name, "dropped a journaled intent whose rotate call never happened");
            Step::Continue(None)
        }
        Why::ResumeJournal => {
            // The kept value is the rotation `rotate NAME` asked for: stop there.
            let o = strategy::rotate::resume(ctx, policy, obs, claim).await?;
            if matches!(o, Outcome::Rotated { .. }) {
                Step::Finish(o)
            } else {
                Step::Continue(Some(o))
            }
        }
        Why::FinalizeDue if forced => match strategy.finalize(ctx, policy, obs, claim).await {
            Ok(o) => Step::Continue(Some(o)),
            Err(e) => {
                // The operator asked for a rotation whatever the state: a finalize that
                // cannot complete (the old value still accepted) must not stand in its way.
                tracing::warn!(policy = %policy.name, error = %e, "--force: rotating although the last rotation could not be finalized");
                Step::Finish(strategy.issue(ctx, policy, obs, Force::Yes, claim).await?)
            }
        },
        Why::FinalizeDue => Step::Continue(Some(strategy.finalize(ctx, policy, obs, claim).await?)),
        Why::StoreEmpty | Why::Due | Why::NotDue => Step::Finish(
            strategy
                .issue(ctx, policy, obs, force.unwrap_or(Force::No), claim)
                .await?,
        ),
        // `settled` answered these.
        Why::Unreadable | Why::Unusable | Why::Claimed => {
            return Err(KeyFailure::blocked(plan.reason));
        }
    })
}

/// A recovery, counted whichever way it ends.
async fn recover(
    work: &KeyWork<'_>,
    obs: &Observed,
    how: Recovery,
    claim: &mut ClaimHandle,
) -> Result<Outcome, KeyFailure> {
    let strategy = strategy::of(work.policy.strategy);
    let result = strategy
        .recover(work.ctx, work.policy, obs, how, claim)
        .await;
    if let Err(e) = &result {
        events::emit(Event::RecoveryFailed {
            policy: &work.policy.name,
            error: &e.to_string(),
        });
    }
    result
}

fn drop_journal_entry(ctx: &Context, policy: &KeyPolicy) -> Result<(), KeyFailure> {
    ctx.journal()
        .remove(&policy.name)
        .map_err(|e| KeyFailure::journal(Stage::Rotate, "", e))
}
