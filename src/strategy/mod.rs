//! How a policy gets a new value and retires the old one: `rotate` (in place, ZenML's retain
//! window) or `replace` (a new key; the old one deactivated after `retain`). Each is one file
//! implementing [`KeyStrategy`]; [`of`] is the one place that maps `strategy = "..."` to it. Their
//! pure decision rules live beside `decide` (`engine/decide/<strategy>.rs`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{KeyPolicy, Strategy};
use crate::engine::claims::{ClaimError, ClaimHandle};
use crate::engine::context::Context;
use crate::engine::decide::Observed;
use crate::engine::events::{self, Event};
use crate::engine::failure::{Force, KeyFailure, Outcome};
use crate::metrics::Stage;
use crate::store::{SecretStore, StoreSnapshot};
use crate::zenml::ServiceAccount;

pub mod replace;
pub mod rotate;

#[async_trait]
pub trait KeyStrategy: Send + Sync {
    /// The ZenML key (name or id) the policy uses now, given what its store records.
    fn current_key(&self, policy: &KeyPolicy, snapshot: &StoreSnapshot) -> String;

    /// What observing reads beyond the current key and the store, into `obs`. Read-only.
    /// Nothing by default.
    async fn observe(
        &self,
        _ctx: &Context,
        _policy: &KeyPolicy,
        _sa: &ServiceAccount,
        _store: &Arc<dyn SecretStore>,
        _snapshot: &StoreSnapshot,
        _obs: &mut Observed,
    ) {
    }

    /// The strategy's own metrics after a pass observed the key (`plan` never publishes).
    /// None by default.
    fn publish(&self, _policy: &KeyPolicy, _obs: &Observed) {}

    /// Issues a new value and stores it (`rotate`/`replace`), under the key's claim:
    /// invariants 1 to 3 and 7 hold on the way.
    async fn issue(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure>;

    /// The clean-up after a retain window ended (`finalize`), under the key's claim.
    async fn finalize(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure>;

    /// `revoke` (a leaked key): issues and stores a new value, then cuts the current value off
    /// at once, with every token minted from it (and any older value still working), under the
    /// key's claim, whatever the retain window says.
    async fn revoke(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure>;

    /// Heals a rotation whose new value nobody kept (`recover`), under the key's claim. Only a
    /// strategy whose rotations can lose a value needs it: by default there is nothing to heal.
    async fn recover(
        &self,
        _ctx: &Context,
        policy: &KeyPolicy,
        _obs: &Observed,
        _how: Recovery,
        _claim: &mut ClaimHandle,
    ) -> Result<Outcome, KeyFailure> {
        Err(KeyFailure::state(
            Stage::Rotate,
            format!(
                "strategy {:?} keeps no value that could be lost: nothing to recover",
                policy.strategy.as_str()
            ),
        ))
    }
}

/// What a recovery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The stored value still works: a rescue key stands in until its window ends.
    Rescue,
    /// The window ended (or the stored value is dead): rotate the policy's own key again, its
    /// previous generation (the value nobody kept) cut off at once, and retire any rescue key.
    Return,
}

/// Before a step that changes ZenML or the store: the claim must still be this rotator's
/// (renewed when due). A lost claim ends the key's work here; whoever holds it now finishes.
pub async fn still_ours(
    claim: &mut ClaimHandle,
    policy: &KeyPolicy,
    stage: Stage,
) -> Result<(), KeyFailure> {
    claim.ensure().await.map_err(|e| {
        if let ClaimError::Lost { why } = &e {
            events::emit(Event::ClaimLost {
                policy: &policy.name,
                why,
            });
        }
        KeyFailure::claim(stage, e)
    })
}

/// The strategy a policy names.
pub fn of(strategy: Strategy) -> &'static dyn KeyStrategy {
    match strategy {
        Strategy::Rotate => &rotate::InPlace,
        Strategy::Replace => &replace::Replacement,
    }
}
