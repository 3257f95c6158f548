//! The one way a new value reaches a store, for every strategy: pre-flight (invariant 2), then
//! stage, read back equal, promote, read back current equal, record (invariant 3); a store that
//! stages in place (the value and its record current at once) is read back once, after promote.
//! And the key check that proves ZenML accepts a value (no token is minted).

use std::sync::Arc;
use std::time::Duration;

use super::context::Context;
use super::failure::{KeyError, KeyFailure};
use crate::config::KeyPolicy;
use crate::fault;
use crate::metrics::Stage;
use crate::secret::{ExposeSecret, SecretString, secrets_equal};
use crate::store::{
    Payload, PendingHooks, RotationRecord, SecretStore, Staging, StoreError, StoreSnapshot,
};
use crate::zenml::KeyCheck;

/// Invariant 2: the store's snapshot proves a write to the policy's path would succeed now.
/// A staged value nobody will promote (a crashed run of ours whose journal entry is resolved, or
/// an abandoned rotation) would block this rotation: it is cleared first.
pub async fn preflight_store(
    store: &Arc<dyn SecretStore>,
    policy: &KeyPolicy,
) -> Result<StoreSnapshot, KeyFailure> {
    let fail = |e| KeyFailure::store(Stage::Preflight, e);
    let mut snapshot = store.preflight(&policy.path).await.map_err(fail)?;
    if let Some(pending) = snapshot.pending.clone() {
        tracing::warn!(policy = %policy.name, token = %pending, "clearing a stuck staged value");
        store
            .discard_staged(&policy.path, &pending)
            .await
            .map_err(fail)?;
        snapshot = store.preflight(&policy.path).await.map_err(fail)?;
    }
    Ok(snapshot)
}

/// `preflight_store`, right after a look at the key under its claim (or one the claim's
/// check-and-set proves current) saw `seen`: where the store can, it proves the write allowed
/// without reading the path again (`SecretStore::preflight_seen`), and `seen` is what the write
/// checks-and-sets against.
pub async fn preflight_store_seen(
    store: &Arc<dyn SecretStore>,
    policy: &KeyPolicy,
    seen: Option<&StoreSnapshot>,
) -> Result<StoreSnapshot, KeyFailure> {
    if let Some(seen) = seen.filter(|s| s.pending.is_none()) {
        let snapshot = store
            .preflight_seen(&policy.path, seen)
            .await
            .map_err(|e| KeyFailure::store(Stage::Preflight, e))?;
        if snapshot.pending.is_none() {
            return Ok(snapshot);
        }
    }
    preflight_store(store, policy).await
}

/// Stage, read back equal, promote, read back current equal, record (in-place stores: stage,
/// promote, read back current equal). Idempotent on retry. Returns what the store holds now when
/// the last read showed it whole (`ReadBack::snapshot`).
/// The record marks the policy's `on_rotated` hook pending for the new value (run after the
/// pass's steps, retried by later passes until it succeeds), and keeps an `on_finalized` still
/// pending from the record it replaces (a finalize and a rotation can share one pass).
pub async fn store_value(
    ctx: &Context,
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
    token: &str,
    value: &SecretString,
    record: &RotationRecord,
    snapshot: &StoreSnapshot,
) -> Result<Option<StoreSnapshot>, KeyFailure> {
    let fail = |e| KeyFailure::store(Stage::Store, e);
    let record = &RotationRecord {
        hooks: PendingHooks {
            on_rotated: policy.hooks.on_rotated.as_ref().map(|_| 0),
            on_finalized: snapshot
                .record
                .as_ref()
                .and_then(|r| r.hooks.on_finalized)
                .filter(|_| policy.hooks.on_finalized.is_some()),
        },
        ..record.clone()
    };
    let payload = Payload {
        zenml_url: ctx.zenml_url().to_owned(),
        api_key: SecretString::from(value.expose_secret().to_owned()),
    };
    // Staged in place, the value and its record are current at once: one read-back, after
    // `promote` has checked the current version is still this rotation's, covers both reads.
    let beside = store.staging() == Staging::Beside;
    fault::point("before_store");
    retry(|| store.stage(&policy.path, &payload, record, snapshot, token))
        .await
        .map_err(fail)?;
    if beside {
        let staged = retry(|| store.read_staged(&policy.path, token))
            .await
            .map_err(fail)?;
        read_back_equal(staged, value, "staged")?;
    }
    fault::point("after_stage");
    let current = retry(|| store.promote_and_read_current(&policy.path, token, snapshot))
        .await
        .map_err(fail)?;
    read_back_equal(current.value, value, "current")?;
    if beside {
        retry(|| store.set_record(&policy.path, record))
            .await
            .map_err(fail)?;
    }
    fault::point("after_store");
    // Beside: the record was written after the read, which says nothing of it.
    Ok(current.snapshot.filter(|_| !beside))
}

fn read_back_equal(
    read: Option<SecretString>,
    written: &SecretString,
    which: &str,
) -> Result<(), KeyFailure> {
    if read.as_ref().is_some_and(|s| secrets_equal(s, written)) {
        return Ok(());
    }
    Err(KeyFailure::new(
        Stage::Store,
        KeyError::ReadBack(format!(
            "the {which} value read back differs from what was written"
        )),
    ))
}

/// A key check that retries transient errors; the value is never logged.
pub async fn check_key(ctx: &Context, value: &SecretString) -> Result<KeyCheck, KeyFailure> {
    let mut delay = Duration::from_millis(300);
    let mut attempt = 1;
    loop {
        match ctx.zenml().check_key(value).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_retryable() && attempt < 3 => {
                tracing::debug!(error = %e, attempt, "key check failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(KeyFailure::zenml(Stage::Verify, e)),
        }
    }
}

/// Retries an idempotent store operation on `Unavailable`, briefly: a pass is not the place to wait
/// out an outage (the next pass, with backoff, is).
async fn retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StoreError::Unavailable { .. }) if attempt < 3 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}
