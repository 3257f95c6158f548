//! One key's part of a pass: observe, decide, act; then decide again, since a finalize may be
//! followed by a rotation. At most three steps per key per pass, and at most one rotation.
//! `plan` runs the same observe and decide, and stops there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use super::Engine;
use super::act::{Carry, KeyWork, Step};
use super::claims::After;
use super::decide::{self, KeyPlan, Observed, ReadError, Upstream};
use super::events::{self, Event};
use super::failure::{Force, KeyFailure, KeyReport, Outcome};
use super::observe::{observe, observe_after};
use crate::config::KeyPolicy;
use crate::metrics::Stage;
use crate::strategy;
use crate::zenml::ServiceAccount;

/// `plan`: the decision for every key, read-only. The bool is false when a key could not be read.
pub async fn plan(engine: &Engine, keys: &[KeyPolicy], now: DateTime<Utc>) -> Vec<(KeyPlan, bool)> {
    let accounts = match engine.ctx().service_accounts().await {
        Ok(a) => Arc::new(a),
        Err(e) => {
            let error = ReadError::new(Upstream::Zenml, e);
            return keys
                .iter()
                .map(|k| {
                    let obs = Observed {
                        read_error: Some(error.clone()),
                        ..Observed::default()
                    };
                    (decide::decide(k, &obs, now), false)
                })
                .collect();
        }
    };
    engine
        .for_each_key(keys, |policy| {
            let accounts = accounts.clone();
            async move {
                let obs = observe(engine.ctx(), &policy, &accounts, None).await;
                let readable = obs.read_error.is_none();
                (decide::decide(&policy, &obs, now), readable)
            }
        })
        .await
}

/// Reconciles every key, `concurrency` at a time; `force` is `rotate NAME [--force]`. Once `stop`
/// is set, keys not yet started are skipped and those in flight finish.
pub async fn keys(
    engine: &Engine,
    keys: &[KeyPolicy],
    force: Option<Force>,
    stop: &AtomicBool,
) -> Vec<KeyReport> {
    let accounts = match engine.ctx().service_accounts().await {
        Ok(a) => Arc::new(a),
        Err(e) => {
            let failure = KeyFailure::zenml_in(Stage::Preflight, "ZenML: ", e);
            return keys
                .iter()
                .map(|k| finished(k, Err(failure.clone()), None, false))
                .collect();
        }
    };
    engine
        .for_each_key(keys, |policy| {
            let accounts = accounts.clone();
            async move {
                if stop.load(Ordering::SeqCst) {
                    let waited = Outcome::Waited {
                        reason: "shutting down: not started".into(),
                    };
                    return KeyReport {
                        policy: policy.name.clone(),
                        result: Ok(vec![waited]),
                        next_due: None,
                        zenml_reached: true,
                    };
                }
                let mut next_due = None;
                let mut after = After::default();
                let mut result =
                    reconcile(engine, &policy, &accounts, force, &mut next_due, &mut after).await;
                if rotated(&result) {
                    refresh(engine, &policy, &accounts, &mut next_due, &after).await;
                }
                // After the steps: the value they stored is verified, and a finalize is recorded.
                if let Ok(outcomes) = &mut result {
                    outcomes.extend(engine.act().run_hooks(engine.ctx(), &policy).await);
                }
                let report = finished(&policy, result, next_due, true);
                if let Ok(count) = engine.ctx().journal().count() {
                    events::emit(Event::JournalSize(count));
                }
                report
            }
        })
        .await
}

fn finished(
    policy: &KeyPolicy,
    result: Result<Vec<Outcome>, KeyFailure>,
    next_due: Option<DateTime<Utc>>,
    zenml_reached: bool,
) -> KeyReport {
    events::emit(Event::KeyFinished {
        policy: &policy.name,
        result: &result,
    });
    KeyReport {
        policy: policy.name.clone(),
        result,
        next_due,
        zenml_reached,
    }
}

fn rotated(result: &Result<Vec<Outcome>, KeyFailure>) -> bool {
    result
        .as_ref()
        .is_ok_and(|o| o.iter().any(|o| matches!(o, Outcome::Rotated { .. })))
}

/// What a pass publishes of a decision: the gauges of its times, the claim, and the strategy's own.
fn publish(policy: &KeyPolicy, plan: &KeyPlan, obs: &Observed) {
    events::emit(Event::Decided {
        plan,
        key: obs.key.as_ref(),
    });
    // A claim this step holds is gone by the time anyone reads the metrics: not published.
    let claim = obs.claim.as_ref().filter(|c| c.active() && !c.held_here);
    events::emit(Event::ClaimSeen {
        policy: &policy.name,
        holder: claim.map(|c| c.stored.claim.holder.as_str()),
        since: claim.map(|c| c.stored.claim.since),
    });
    strategy::of(policy.strategy).publish(policy, obs);
}

/// The decision that led to a rotation was published before it: last rotation, next due and
/// retain-until still describe the old value. Look once more so the metrics a one-shot run
/// exports, and the daemon's next wake, describe the new one. What the rotation and its release
/// know is not read again (`After`: the claim as the release wrote it, the key as the rotation
/// left it, and the store where the rotation's read-back showed it whole, as KV v2's does).
async fn refresh(
    engine: &Engine,
    policy: &KeyPolicy,
    accounts: &BTreeMap<String, ServiceAccount>,
    next_due: &mut Option<DateTime<Utc>>,
    after: &After,
) {
    let obs = observe_after(engine.ctx(), policy, accounts, None, after).await;
    if obs.read_error.is_none() {
        let plan = decide::decide(policy, &obs, Utc::now());
        publish(policy, &plan, &obs);
        *next_due = plan.wake_at.or(plan.next_due);
    }
}

async fn reconcile(
    engine: &Engine,
    policy: &KeyPolicy,
    accounts: &BTreeMap<String, ServiceAccount>,
    force: Option<Force>,
    next_due: &mut Option<DateTime<Utc>>,
    after: &mut After,
) -> Result<Vec<Outcome>, KeyFailure> {
    let work = KeyWork {
        ctx: engine.ctx(),
        policy,
        accounts,
        force,
    };
    let mut outcomes = Vec::new();
    // The claim a step kept for the next one (a finalize, then the rotation it made due).
    let mut carry = Carry::default();
    for _ in 0..3 {
        // The look under a claim the step before carried on takes what that step left known.
        let obs = observe_after(
            engine.ctx(),
            policy,
            accounts,
            carry.held.as_ref(),
            &carry.after,
        )
        .await;
        let plan = decide::decide(policy, &obs, Utc::now());
        publish(policy, &plan, &obs);
        *next_due = plan.wake_at.or(plan.next_due);
        match engine.act().step(&work, &obs, plan, &mut carry).await? {
            Step::Continue(outcome) => outcomes.extend(outcome),
            Step::Finish(outcome) => {
                outcomes.push(outcome);
                *after = carry.after;
                return Ok(outcomes);
            }
            Step::Wait(reason) => {
                if outcomes.is_empty() {
                    outcomes.push(Outcome::Waited { reason });
                }
                return Ok(outcomes);
            }
        }
    }
    if let Some(claim) = carry.held {
        claim.release().await;
    }
    Ok(outcomes)
}
