//! A key's hooks (`on_rotated`, `on_finalized`), run after the pass's steps for the key. Which
//! hooks still have to succeed for the stored value lives in the store's record beside that value
//! (`RotationRecord::hooks`): it is written together with the value (`writer::store_value`) or the
//! finalize, so a crash between storing and running loses no hook; it survives restarts, needs no
//! state directory (Vault and AWS keep it in their metadata and tags), any rotator of the key sees
//! it, and a new value's record starts afresh. Hooks run under the key's claim, so two rotators
//! never run one at once; a failure is reported (`hook_failed`, `hook_failures_total`, the pass's
//! exit code) and retried by the following passes, `MAX_ATTEMPTS` times in all.

use std::sync::Arc;
use std::time::Duration;

use super::claims::{ClaimError, ClaimHandle, Draft};
use super::context::Context;
use super::events::{self, Event};
use super::failure::Outcome;
use crate::config::{Hook, HookStdin, KeyPolicy};
use crate::secret::{SecretString, fingerprint};
use crate::store::{Coordination, RotationRecord, SecretStore};

mod process;

/// Runs of one hook for one value, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

/// The two hooks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Rotated,
    Finalized,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Rotated => "on_rotated",
            Which::Finalized => "on_finalized",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Which::Rotated => "rotated",
            Which::Finalized => "finalized",
        }
    }

    fn hook(self, policy: &KeyPolicy) -> Option<&Hook> {
        match self {
            Which::Rotated => policy.hooks.on_rotated.as_ref(),
            Which::Finalized => policy.hooks.on_finalized.as_ref(),
        }
    }

    fn mark(self, record: &mut RotationRecord) -> &mut Option<u32> {
        match self {
            Which::Rotated => &mut record.hooks.on_rotated,
            Which::Finalized => &mut record.hooks.on_finalized,
        }
    }
}

/// Runs the hooks pending for the key's stored value. Nothing when the policy has no hook, when
/// none is pending, or when another rotator holds the key (it runs them).
pub async fn run_pending(ctx: &Context, policy: &KeyPolicy) -> Vec<Outcome> {
    if policy.hooks.on_rotated.is_none() && policy.hooks.on_finalized.is_none() {
        return Vec::new();
    }
    let Ok(store) = ctx.store(&policy.store).await else {
        return Vec::new();
    };
    if !pending(&store, policy).await {
        return Vec::new();
    }
    let mut claim = match claim(ctx, &store, policy).await {
        Ok(c) => c,
        Err(ClaimError::Held { .. }) => return Vec::new(),
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "cannot claim the key to run its hooks; the next pass tries again");
            return Vec::new();
        }
    };
    let outcomes = run_claimed(ctx, policy, &store, &mut claim).await;
    claim.release().await;
    outcomes
}

/// Whether the stored record marks a hook pending (read without the claim: most passes stop here).
async fn pending(store: &Arc<dyn SecretStore>, policy: &KeyPolicy) -> bool {
    match store.inspect(&policy.path).await {
        Ok(snap) => snap
            .record
            .is_some_and(|r| r.hooks.on_rotated.is_some() || r.hooks.on_finalized.is_some()),
        Err(e) => {
            tracing::debug!(policy = %policy.name, error = %e, "cannot read the record for pending hooks");
            false
        }
    }
}

async fn claim(
    ctx: &Context,
    store: &Arc<dyn SecretStore>,
    policy: &KeyPolicy,
) -> Result<ClaimHandle, ClaimError> {
    let seen = match store.coordination() {
        Coordination::Shared => store
            .read_claim(&policy.path)
            .await
            .map_err(|e| ClaimError::Store(Arc::new(e)))?,
        Coordination::LockFile(_) => None,
    };
    let draft = Draft {
        policy: policy.name.clone(),
        service_account_id: String::new(),
        key_id: String::new(),
        previous_last_rotated: None,
        retain_minutes: 0,
    };
    ClaimHandle::acquire(
        ctx.claim_rules(),
        store.clone(),
        &policy.path,
        seen.as_ref(),
        draft,
    )
    .await
}

async fn run_claimed(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    claim: &mut ClaimHandle,
) -> Vec<Outcome> {
    // Read again under the claim: a rotator that just finished may have run them.
    let mut record = match store.inspect(&policy.path).await {
        Ok(snap) => match snap.record {
            Some(r) => r,
            None => return Vec::new(),
        },
        Err(_) => return Vec::new(),
    };
    let before = record.hooks;
    let mut outcomes = Vec::new();
    for which in [Which::Rotated, Which::Finalized] {
        let Some(failed) = *which.mark(&mut record) else {
            continue;
        };
        let Some(hook) = which.hook(policy) else {
            // The policy no longer has the hook: nothing to run for this value.
            *which.mark(&mut record) = None;
            continue;
        };
        match attempt(ctx, policy, store, &record, which, hook, claim).await {
            Attempt::Skipped => {}
            Attempt::Ran(outcome) => {
                *which.mark(&mut record) = None;
                outcomes.push(outcome);
            }
            Attempt::Failed(error) => {
                let tries = failed.saturating_add(1);
                let detail = failure_sentence(which, &record, &error, tries);
                events::emit(Event::HookFailed {
                    policy: &policy.name,
                    hook: which.name(),
                    key_id: &record.key_id,
                    fingerprint: &record.fingerprint,
                    detail: &detail,
                });
                *which.mark(&mut record) = (tries < MAX_ATTEMPTS).then_some(tries);
                outcomes.push(Outcome::HookFailed {
                    hook: which.name(),
                    detail,
                });
            }
        }
    }
    if record.hooks != before {
        let saved = match claim.ensure().await {
            Ok(()) => store
                .set_record(&policy.path, &record)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = saved {
            tracing::warn!(policy = %policy.name, error = %e,
                "cannot record the hooks' results; the next pass may run them again");
        }
    }
    outcomes
}

enum Attempt {
    /// Not run (the stored value is not the recorded one).
    Skipped,
    Ran(Outcome),
    Failed(String),
}

fn failure_sentence(which: Which, record: &RotationRecord, error: &str, tries: u32) -> String {
    let next = if tries < MAX_ATTEMPTS {
        "the next pass runs it again".to_owned()
    } else {
        "given up: run it by hand".to_owned()
    };
    format!(
        "hook {} failed for value {} of key {}: {error} (attempt {tries} of {MAX_ATTEMPTS}; {next})",
        which.name(),
        record.fingerprint,
        record.key_id
    )
}

async fn attempt(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    record: &RotationRecord,
    which: Which,
    hook: &Hook,
    claim: &mut ClaimHandle,
) -> Attempt {
    let payload = match hook.stdin {
        HookStdin::None => None,
        HookStdin::Payload => match stored_value(store, policy, record).await {
            Ok(Some(value)) => Some(process::payload(ctx.zenml_url(), &value)),
            Ok(None) => return Attempt::Skipped,
            Err(e) => return Attempt::Failed(e),
        },
    };
    let cx = process::HookContext {
        policy: &policy.name,
        event: which.event(),
        hook: which.name(),
        key_id: &record.key_id,
        fingerprint: &record.fingerprint,
    };
    let renew_every = (ctx.claim_rules().ttl / 6).max(Duration::from_secs(1));
    let run = process::run(hook, &cx, payload.as_ref());
    match renewing(claim, renew_every, run).await {
        Ok(took) => {
            let detail = format!(
                "hook {} ran for value {} of key {} ({:.1}s)",
                which.name(),
                record.fingerprint,
                record.key_id,
                took.as_secs_f64()
            );
            tracing::info!(policy = %policy.name, hook = which.name(), "{detail}");
            Attempt::Ran(Outcome::HookRan {
                hook: which.name(),
                detail,
            })
        }
        Err(e) => Attempt::Failed(e),
    }
}

/// The value the record describes, read from the store; `None` when the store holds another
/// value (written behind the rotator's back): the hook is not for that one.
async fn stored_value(
    store: &Arc<dyn SecretStore>,
    policy: &KeyPolicy,
    record: &RotationRecord,
) -> Result<Option<SecretString>, String> {
    let value = store
        .read_current(&policy.path)
        .await
        .map_err(|e| format!("cannot read the stored value for the hook: {e}"))?;
    Ok(value.filter(|v| {
        let same = fingerprint(v) == record.fingerprint;
        if !same {
            tracing::warn!(policy = %policy.name, recorded = %record.fingerprint,
                "the stored value is not the one recorded; not running the hook for it");
        }
        same
    }))
}

/// Runs `work` while keeping the claim renewed; a claim that cannot be renewed lets the hook
/// finish, and its result is then not recorded (the next pass runs it again).
async fn renewing<F: std::future::Future>(
    claim: &mut ClaimHandle,
    every: Duration,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every) => {
                if let Err(e) = claim.ensure().await {
                    tracing::warn!(error = %e, "the key's claim could not be renewed while a hook ran");
                }
            }
        }
    }
}
