//! `--dry-run`: reads everything a pass reads, pre-flights the store a rotation would write to
//! (so a dry run never promises what the store would refuse), and changes nothing: every step
//! ends the key's pass with what a real pass would have done.

use async_trait::async_trait;

use super::act::{Act, Carry, KeyWork, Retired, Step};
use super::context::Context;
use super::decide::{Action, KeyPlan, Observed};
use super::failure::{DisableError, KeyFailure, Outcome};
use crate::config::KeyPolicy;
use crate::metrics::Stage;
use crate::zenml::ApiKey;

pub struct DryRun;

#[async_trait]
impl Act for DryRun {
    async fn step(
        &self,
        work: &KeyWork<'_>,
        _obs: &Observed,
        plan: KeyPlan,
        _carry: &mut Carry,
    ) -> Result<Step, KeyFailure> {
        if plan.action == Action::Blocked {
            return Err(KeyFailure::blocked(plan.reason));
        }
        if matches!(plan.action, Action::Rotate | Action::Recover) {
            // A rotation would start with the store's pre-flight: it writes nothing (and no
            // claim is taken: a dry run changes nothing anywhere).
            let store = work.ctx.store(&work.policy.store).await?;
            store
                .preflight(&work.policy.path)
                .await
                .map_err(|e| KeyFailure::store(Stage::Preflight, e))?;
        }
        Ok(Step::Finish(Outcome::WouldDo {
            action: plan.action,
            reason: plan.reason,
        }))
    }

    async fn retire_unused(
        &self,
        _ctx: &Context,
        _policies: &[KeyPolicy],
        keys: &[&ApiKey],
    ) -> Vec<Result<Retired, DisableError>> {
        for key in keys {
            tracing::info!(service_account = %key.service_account_name, key = %key.name, key_id = %key.id,
                "hygiene (dry run): would deactivate an unused key");
        }
        keys.iter().map(|_| Ok(Retired::WouldDeactivate)).collect()
    }
}
