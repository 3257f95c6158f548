//! How a policy gets a new value and retires the old one: `rotate` (in place, ZenML's retain
//! window) or `replace` (a new key; the old one deactivated after `retain`). Each is one file
//! implementing [`KeyStrategy`]; [`of`] is the one place that maps `strategy = "..."` to it. Their
//! pure decision rules live beside `decide` (`engine/decide/<strategy>.rs`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{KeyPolicy, Strategy};
use crate::engine::context::Context;
use crate::engine::decide::Observed;
use crate::engine::failure::{Force, KeyFailure, Outcome};
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

    /// Issues a new value and stores it (`rotate`/`replace`): invariants 1 to 3 hold on the way.
    async fn issue(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
    ) -> Result<Outcome, KeyFailure>;

    /// The clean-up after a retain window ended (`finalize`).
    async fn finalize(
        &self,
        ctx: &Context,
        policy: &KeyPolicy,
        obs: &Observed,
    ) -> Result<Outcome, KeyFailure>;
}

/// The strategy a policy names.
pub fn of(strategy: Strategy) -> &'static dyn KeyStrategy {
    match strategy {
        Strategy::Rotate => &rotate::InPlace,
        Strategy::Replace => &replace::Replacement,
    }
}
