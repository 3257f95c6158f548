//! How a policy gets a new value and retires the old one: `rotate` (in place, ZenML's retain
//! window) or `replace` (a new key; the old one deactivated after `retain`). Each is one file
//! implementing [`KeyStrategy`]; [`of`] is the one place that maps `strategy = "..."` to it. Their
//! pure decision rules live beside `decide` (`engine/decide/<strategy>.rs`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{KeyPolicy, Strategy};
use crate::engine::Engine;
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
    async fn observe(
        &self,
        engine: &Engine,
        policy: &KeyPolicy,
        sa: &ServiceAccount,
        store: &Arc<dyn SecretStore>,
        snapshot: &StoreSnapshot,
        obs: &mut Observed,
    );

    /// The strategy's own metrics after a pass observed the key (`plan` never publishes).
    fn publish(&self, policy: &KeyPolicy, obs: &Observed);

    /// Issues a new value and stores it (`rotate`/`replace`): invariants 1 to 3 hold on the way.
    async fn issue(
        &self,
        engine: &Engine,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
    ) -> Result<Outcome, KeyFailure>;

    /// The clean-up after a retain window ended (`finalize`).
    async fn finalize(
        &self,
        engine: &Engine,
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
