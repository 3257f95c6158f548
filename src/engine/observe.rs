//! Reads everything `decide` needs for one key, and nothing else: the journal, the store's
//! snapshot, the service account and the key in ZenML, plus what the policy's strategy reads.
//! Read-only, and publishes nothing: `plan` observes exactly as a pass does.

use std::collections::BTreeMap;

use super::context::Context;
use super::decide::{Observed, ReadError, Upstream};
use crate::config::KeyPolicy;
use crate::strategy;
use crate::zenml::{ServiceAccount, ZenmlError};

pub async fn observe(
    ctx: &Context,
    policy: &KeyPolicy,
    accounts: &BTreeMap<String, ServiceAccount>,
) -> Observed {
    let mut obs = Observed::default();
    match ctx.journal().get(&policy.name) {
        Ok(entry) => obs.in_flight = entry.as_ref().map(|e| e.in_flight()),
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Journal, e));
            return obs;
        }
    }
    let store = match ctx.store(&policy.store).await {
        Ok(s) => s,
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Store, e.message()));
            return obs;
        }
    };
    let snapshot = match store.inspect(&policy.path).await {
        Ok(s) => s,
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Store, e));
            return obs;
        }
    };
    let Some(sa) = accounts.get(&policy.service_account) else {
        obs.snapshot = Some(snapshot);
        return obs;
    };
    obs.service_account = Some(sa.clone());
    let strategy = strategy::of(policy.strategy);
    let key_ref = strategy.current_key(policy, &snapshot);
    match ctx.zenml().get_api_key(sa.id, &key_ref).await {
        Ok(key) => obs.key = Some(key),
        Err(ZenmlError::NotFound { .. }) => {}
        Err(e) => obs.read_error = Some(ReadError::new(Upstream::Zenml, e)),
    }
    if obs.read_error.is_none() {
        strategy
            .observe(ctx, policy, sa, &store, &snapshot, &mut obs)
            .await;
    }
    obs.snapshot = Some(snapshot);
    obs
}
