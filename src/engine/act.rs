//! What a pass does once `decide` has spoken. [`Live`] acts through the policy's strategy;
//! `--dry-run` swaps in [`super::dry_run::DryRun`], which pre-flights and reports instead, so no
//! code below the command line asks whether this is a dry run.

use async_trait::async_trait;

use super::context::Context;
use super::decide::{KeyPlan, Observed, Why};
use super::events::{Actor, DeactivationReason};
use super::failure::DisableError;
use super::failure::{Force, KeyFailure, Outcome};
use super::guard::{self, Disable};
use crate::config::KeyPolicy;
use crate::metrics::Stage;
use crate::strategy;
use crate::zenml::ApiKey;

/// Where a key's pass goes after a step.
pub enum Step {
    /// Look again: the step may have made more work due (a finalize, then a rotation).
    Continue(Option<Outcome>),
    /// The key is done for this pass.
    Finish(Outcome),
    /// Nothing to do: the key waits (reported only when no step ran before).
    Wait(String),
}

/// A hygiene deactivation: done, or what a dry run would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    Deactivated,
    WouldDeactivate,
}

#[async_trait]
pub trait Act: Send + Sync {
    /// Carries out one decision that is not `blocked`.
    async fn step(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        plan: KeyPlan,
        force: Option<Force>,
    ) -> Result<Step, KeyFailure>;

    /// Hygiene: takes keys no policy covers out of service, never one a store holds (`policies`
    /// say which stores to ask). One result per key, in order.
    async fn retire_unused(
        &self,
        ctx: &Context,
        policies: &[KeyPolicy],
        keys: &[&ApiKey],
    ) -> Vec<Result<Retired, DisableError>>;
}

pub struct Live;

#[async_trait]
impl Act for Live {
    async fn step(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        plan: KeyPlan,
        force: Option<Force>,
    ) -> Result<Step, KeyFailure> {
        let strategy = strategy::of(policy.strategy);
        let forced = force == Some(Force::Yes);
        Ok(match plan.why {
            Why::Unreadable | Why::Unusable => return Err(KeyFailure::blocked(plan.reason)),
            Why::LostRotation | Why::RotatedOutOfBand if !forced => {
                return Err(KeyFailure::blocked(plan.reason));
            }
            Why::LostRotation | Why::RotatedOutOfBand => {
                drop_journal_entry(ctx, policy)?;
                Step::Finish(strategy.issue(ctx, policy, obs, Force::Yes).await?)
            }
            Why::StaleIntent => {
                drop_journal_entry(ctx, policy)?;
                tracing::info!(policy = %policy.name, "dropped a journaled intent whose rotate call never happened");
                Step::Continue(None)
            }
            Why::ResumeJournal => {
                // The journaled value is the rotation `rotate NAME` asked for: stop there.
                let o = strategy::rotate::resume(ctx, policy).await?;
                if matches!(o, Outcome::Rotated { .. }) {
                    Step::Finish(o)
                } else {
                    Step::Continue(Some(o))
                }
            }
            Why::FinalizeDue if forced => match strategy.finalize(ctx, policy, obs).await {
                Ok(o) => Step::Continue(Some(o)),
                Err(e) => {
                    // The operator asked for a rotation whatever the state: a finalize that
                    // cannot complete (the old value still accepted) must not stand in its way.
                    tracing::warn!(policy = %policy.name, error = %e, "--force: rotating although the last rotation could not be finalized");
                    Step::Finish(strategy.issue(ctx, policy, obs, Force::Yes).await?)
                }
            },
            Why::FinalizeDue => Step::Continue(Some(strategy.finalize(ctx, policy, obs).await?)),
            Why::StoreEmpty | Why::Due => Step::Finish(
                strategy
                    .issue(ctx, policy, obs, force.unwrap_or(Force::No))
                    .await?,
            ),
            Why::NotDue => match force {
                Some(f) => Step::Finish(strategy.issue(ctx, policy, obs, f).await?),
                None => Step::Wait(plan.reason),
            },
        })
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
}

fn drop_journal_entry(ctx: &Context, policy: &KeyPolicy) -> Result<(), KeyFailure> {
    ctx.journal()
        .remove(&policy.name)
        .map_err(|e| KeyFailure::journal(Stage::Rotate, "", e))
}
