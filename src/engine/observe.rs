//! Reads everything `decide` needs for one key, and nothing else: the journal, the key's claim,
//! the store's snapshot, the service account and the key in ZenML, plus what the policy's
//! strategy reads. Read-only, and publishes nothing: `plan` observes exactly as a pass does.

use std::collections::BTreeMap;

use super::claims::{After, ClaimHandle, holder_id};
use super::context::Context;
use super::decide::{ClaimSeen, InFlight, Observed, Phase, ReadError, Upstream};
use crate::config::KeyPolicy;
use crate::store::{ClaimPhase, Coordination, StoreSnapshot};
use crate::strategy;
use crate::zenml::{ServiceAccount, ZenmlError};

/// `held`: the claim this step holds on the key, when it looks again before acting.
pub async fn observe(
    ctx: &Context,
    policy: &KeyPolicy,
    accounts: &BTreeMap<String, ServiceAccount>,
    held: Option<&ClaimHandle>,
) -> Observed {
    observe_after(ctx, policy, accounts, held, &After::default()).await
}

/// The look after a step: what it left known (the claim as its release wrote it, the key as
/// its rotation or finalize left it, the store as its last write showed it) is taken as read;
/// the rest is read as always. `held`: as for `observe`.
pub async fn observe_after(
    ctx: &Context,
    policy: &KeyPolicy,
    accounts: &BTreeMap<String, ServiceAccount>,
    held: Option<&ClaimHandle>,
    after: &After,
) -> Observed {
    let mut obs = Observed::default();
    let journaled = match ctx.journal().get(&policy.name) {
        Ok(entry) => entry.as_ref().map(|e| e.in_flight()),
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Journal, e));
            return obs;
        }
    };
    let store = match ctx.store(&policy.store).await {
        Ok(s) => s,
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Store, e.message()));
            return obs;
        }
    };
    // The claim first, then the store and the key: whatever another rotator did to them after
    // this read, it did under a claim it wrote after it, so a take checked-and-set against the
    // claim read here fails (see `ClaimHandle::look_stands`).
    if store.coordination() == Coordination::Shared {
        // Under the claim this step just wrote, or after its release, what the store holds is
        // known: no read.
        let known = held
            .and_then(ClaimHandle::as_stored)
            .or_else(|| after.claim.clone());
        let claim = match known {
            Some(stored) => Ok(Some(stored)),
            None => store.read_claim(&policy.path).await,
        };
        match claim {
            Ok(stored) => {
                obs.claim = stored.map(|stored| ClaimSeen {
                    stale_at: ctx.claim_rules().stale_at(&stored.claim),
                    held_here: held.is_some_and(|h| h.version() == Some(stored.version.as_str())),
                    mine: stored.claim.holder == holder_id(),
                    stored,
                })
            }
            Err(e) => {
                obs.read_error = Some(ReadError::new(Upstream::Store, e));
                return obs;
            }
        }
    }
    // After a write that showed the store whole, it is not read again.
    let snapshot = match after.snapshot.clone() {
        Some(s) => Ok(s),
        None => store.inspect(&policy.path).await,
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            obs.read_error = Some(ReadError::new(Upstream::Store, e));
            return obs;
        }
    };
    let inherited = held.is_some_and(ClaimHandle::inherited);
    obs.in_flight = in_flight(obs.claim.as_ref(), &snapshot, journaled, inherited);
    let Some(sa) = accounts.get(&policy.service_account) else {
        obs.snapshot = Some(snapshot);
        return obs;
    };
    obs.service_account = Some(sa.clone());
    let strategy = strategy::of(policy.strategy);
    let key_ref = strategy.current_key(policy, &snapshot);
    let known = after.key.as_ref().filter(|k| {
        k.service_account_id == sa.id && (k.name == key_ref || k.id.to_string() == key_ref)
    });
    match known {
        Some(key) => obs.key = Some(key.clone()),
        None => match ctx.zenml().get_api_key(sa.id, &key_ref).await {
            Ok(key) => obs.key = Some(key),
            Err(ZenmlError::NotFound { .. }) => {}
            Err(e) => obs.read_error = Some(ReadError::new(Upstream::Zenml, e)),
        },
    }
    if obs.read_error.is_none() {
        strategy
            .observe(ctx, policy, sa, &store, &snapshot, &mut obs)
            .await;
    }
    obs.snapshot = Some(snapshot);
    obs
}

/// The rotation in flight, if any: a claim whose holder left a rotation unfinished (its value kept
/// in the claim, or staged under its token), else this host's journal. A value beats an intent.
/// The claim this step holds counts for the value it carries over, and for the intent it was
/// taken over with (`inherited`: a rotation whose answer may be lost, which looking again under
/// the claim must not forget); its own intent is the rotation about to happen.
fn in_flight(
    claim: Option<&ClaimSeen>,
    snapshot: &StoreSnapshot,
    journaled: Option<InFlight>,
    inherited: bool,
) -> Option<InFlight> {
    let from_claim = claim.filter(|c| c.active()).and_then(|c| {
        let claim = &c.stored.claim;
        let staged = snapshot.pending.as_deref() == Some(claim.token.as_str());
        let kept = claim.phase == ClaimPhase::Rotated || staged;
        (kept || !c.held_here || inherited).then(|| InFlight {
            holder: Some(claim.holder.clone()),
            phase: if kept { Phase::Rotated } else { Phase::Intent },
            started_at: claim.since,
            previous_last_rotated: claim.previous_last_rotated,
            fingerprint: claim.fingerprint.clone(),
        })
    });
    match (from_claim, journaled) {
        (Some(c), Some(j)) if c.phase == Phase::Intent && j.phase == Phase::Rotated => Some(j),
        (Some(c), _) => Some(c),
        (None, j) => j,
    }
}
