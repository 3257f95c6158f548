//! Strategy `replace`: instead of rotating a key in place, create a new API key on the same service
//! account, verify and store it, and deactivate the replaced key once `retain` has passed (deleting
//! it `delete_after` later). Crash-safe without a journal of secrets: the old key keeps working until
//! the new one is stored, and keys an interrupted run created are found by name and removed.
//! Also the one function that takes a key out of service (`Engine::disable_key`) and its guard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use uuid::Uuid;

use crate::config::KeyPolicy;
use crate::decide::{self, Observed, ReplaceObserved};
use crate::fault;
use crate::metrics::{self, Stage};
use crate::rotation::{Engine, Force, KeyFailure, Outcome, refuse};
use crate::secret::fingerprint;
use crate::store::{RotationRecord, SecretStore, StoreSnapshot};
use crate::zenml::{
    ApiKey, ApiKeyUpdate, KeyCheck, KeyFilter, ServiceAccount, ZenmlError, key_id_from_value,
};

/// Descriptions of keys the rotator creates start with this: only such keys are ever treated as
/// orphans of an interrupted run (a person's key that happens to match the name is left alone).
pub const CREATED_MARK: &str = "zenml-rotator:";
/// Appended to the description of every key the rotator deactivates; `delete_after` deletes only
/// keys carrying it.
pub const DEACTIVATED_MARK: &str = "deactivated by zenml-rotator at";

/// The name of a replacement key: `<api_key>-<UTC yyyymmddHHMMSS>`.
pub fn generation_name(api_key: &str, at: DateTime<Utc>) -> String {
    format!("{api_key}-{}", at.format("%Y%m%d%H%M%S"))
}

/// Whether `name` is a replacement of `api_key`: exactly `<api_key>-` and 14 digits.
pub fn is_generation(api_key: &str, name: &str) -> bool {
    name.strip_prefix(api_key)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|stamp| stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()))
}

/// The keys a replace policy covers: the one named `api_key` (the seed) and its replacements.
pub fn in_family(api_key: &str, name: &str) -> bool {
    name == api_key || is_generation(api_key, name)
}

pub fn created_by_rotator(description: &str) -> bool {
    description.starts_with(CREATED_MARK)
}

pub fn deactivated_by_rotator(description: &str) -> bool {
    description.contains(DEACTIVATED_MARK)
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn names(keys: &[ApiKey]) -> String {
    keys.iter()
        .map(|k| format!("{:?}", k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a key is deactivated: the `reason` label of `keys_deactivated_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivationReason {
    /// Strategy `replace`: the replaced key's retain window ended.
    Retired,
    /// A key an interrupted run created and never stored.
    Orphan,
    /// `[hygiene] deactivate_unused_after`.
    Unused,
}

impl DeactivationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeactivationReason::Retired => "retired",
            DeactivationReason::Orphan => "orphan",
            DeactivationReason::Unused => "unused",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DeactivationReason::Retired => "replaced; its retain window ended",
            DeactivationReason::Orphan => "created by an interrupted run and never stored",
            DeactivationReason::Unused => "unused for longer than hygiene allows",
        }
    }
}

/// What `disable_key` does to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disable {
    Deactivate(DeactivationReason),
    /// Only a key that is inactive when re-read right before the call is deleted.
    Delete,
}

/// Keys whose value a store holds as current: never deactivated or deleted, whatever the caller
/// believes about them. Built from what the stores say right now, not from earlier observations.
#[derive(Debug, Clone, Default)]
pub struct ProtectedKeys {
    keys: BTreeMap<Uuid, String>,
}

impl ProtectedKeys {
    pub fn insert(&mut self, id: Uuid, why: impl Into<String>) {
        self.keys.entry(id).or_insert_with(|| why.into());
    }

    pub fn extend(&mut self, other: ProtectedKeys) {
        for (id, why) in other.keys {
            self.insert(id, why);
        }
    }

    pub fn contains(&self, id: Uuid) -> bool {
        self.keys.contains_key(&id)
    }

    /// The guard: `Err` with the reason when the key must stay in service.
    pub fn check(&self, id: Uuid) -> Result<(), String> {
        match self.keys.get(&id) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}

/// Per policy, how many keys wait for deactivation; `pending_deactivations` is the sum.
static PENDING: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Sets `deactivation_due_timestamp_seconds{policy}` while keys of the policy wait for their
/// deactivation (removed otherwise, so `time() > due + grace` alerts only while one is pending),
/// and `pending_deactivations`.
pub(crate) fn publish_deactivation(policy: &str, pending: usize, due: Option<DateTime<Utc>>) {
    use prometheus::core::Collector;
    let m = metrics::get();
    let mut map = match PENDING.lock() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    match due {
        Some(t) if pending > 0 => {
            m.deactivation_due_timestamp_seconds
                .with_label_values(&[policy])
                .set(t.timestamp() as f64);
            map.insert(policy.to_owned(), pending);
        }
        _ => {
            let _ = m
                .deactivation_due_timestamp_seconds
                .remove_label_values(&[policy]);
            map.remove(policy);
        }
    }
    // A policy dropped by a reload lost its series (`Metrics::forget_policy`): drop its count too.
    let live: BTreeSet<String> = m
        .deactivation_due_timestamp_seconds
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .flat_map(|metric| metric.get_label().iter().map(|l| l.value().to_owned()))
        .collect();
    map.retain(|p, _| live.contains(p));
    m.pending_deactivations
        .set(i64::try_from(map.values().sum::<usize>()).unwrap_or(i64::MAX));
}

/// When a key replaced now may be deactivated: `retain` from now, and never before the previous
/// value of an in-place rotation of that key (the policy may have been `rotate` before) has had
/// its own window.
fn retire_time(replaced: &ApiKey, retain: ChronoDuration) -> Option<DateTime<Utc>> {
    let ours = Utc::now().checked_add_signed(retain)?;
    Some(match decide::zenml_retain_until(replaced) {
        Some(zenml) => ours.max(zenml),
        None => ours,
    })
}

fn finalize_failure(message: impl Into<String>) -> KeyFailure {
    KeyFailure::new(Stage::Finalize, message)
}

impl Engine {
    /// The part of `observe` only strategy `replace` needs: the policy's keys on the service
    /// account and, after an interrupted run, which key the store really holds.
    pub(crate) async fn observe_replace(
        &self,
        policy: &KeyPolicy,
        sa: &ServiceAccount,
        store: &Arc<dyn SecretStore>,
        snapshot: &StoreSnapshot,
        obs: &mut Observed,
    ) {
        let filter = KeyFilter {
            name_startswith: Some(policy.api_key.clone()),
            active: None,
        };
        let mut family: Vec<ApiKey> = match self.zenml().list_api_keys(sa.id, &filter).await {
            Ok(keys) => keys
                .into_iter()
                .filter(|k| in_family(&policy.api_key, &k.name))
                .collect(),
            Err(e) => {
                obs.read_error = Some(format!("ZenML: {e}"));
                return;
            }
        };
        let record = snapshot.record.as_ref();
        // The retiring key is deactivated whatever its name (the policy's api_key may have changed).
        if let Some(id) = record.and_then(|r| r.retiring_key_id.as_deref())
            && !family.iter().any(|k| k.id.to_string() == id)
        {
            match self.zenml().get_api_key(sa.id, id).await {
                Ok(k) => family.push(k),
                Err(ZenmlError::NotFound { .. }) => {}
                Err(e) => {
                    obs.read_error = Some(format!("ZenML: {e}"));
                    return;
                }
            }
        }
        let mut observed = ReplaceObserved {
            family,
            stored_key_id: None,
        };
        if decide::needs_stored_key(policy, obs.key.as_ref(), record, &observed.family) {
            match store.read_current(&policy.path).await {
                Ok(value) => observed.stored_key_id = value.as_ref().and_then(key_id_from_value),
                Err(e) => {
                    obs.read_error = Some(format!("Store: {e}"));
                    return;
                }
            }
        }
        let work = decide::replace_work(policy, obs.key.as_ref(), record, &observed, Utc::now());
        publish_deactivation(&policy.name, work.retiring.len(), work.retire_at);
        obs.replace = Some(observed);
    }

    /// Creates a replacement key, verifies it (a key check: no token), stores it with a record
    /// naming the current and the retiring key. Nothing is journaled: until the store holds the
    /// new value, the old key is untouched; a key created but never stored is an orphan that the
    /// next pass removes.
    pub(crate) async fn replace(
        &self,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
    ) -> Result<Outcome, KeyFailure> {
        let started = Instant::now();
        let Some(sa) = obs.service_account.as_ref().filter(|sa| sa.active) else {
            return Err(KeyFailure::new(
                Stage::Preflight,
                "the service account is missing or inactive",
            ));
        };
        let Some(observed) = &obs.replace else {
            return Err(KeyFailure::new(
                Stage::Preflight,
                "the policy's API keys were not listed",
            ));
        };
        let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
        let now = Utc::now();
        let work = decide::replace_work(policy, obs.key.as_ref(), record, observed, now);
        // The key being replaced: the one the store holds (or, the first time, the seed key).
        let current = obs.key.as_ref().filter(|k| k.active);

        // Invariant 1. Under replace nothing is ever cut off early (the keys still retiring stay
        // active until the new replacement's window ends), but replacing again inside a window
        // means one more live key than the policy promises: only on request.
        if record.is_some()
            && current.is_some()
            && let Some(until) = work
                .retire_at
                .filter(|t| *t > now && !work.retiring.is_empty())
        {
            if force == Force::No {
                return Err(refuse(
                    policy,
                    format!(
                        "refused: replaced {} {} active until {} for consumers still on it; \
                         replacing again now would keep one more key alive. Pass --force to replace \
                         anyway (nothing is cut off: the replaced keys then stay active until the new \
                         replacement's window ends).",
                        if work.retiring.len() == 1 {
                            "key"
                        } else {
                            "keys"
                        },
                        if work.retiring.len() == 1 {
                            format!("{} stays", names(&work.retiring))
                        } else {
                            format!("{} stay", names(&work.retiring))
                        },
                        fmt_time(until)
                    ),
                ));
            }
            tracing::warn!(policy = %policy.name, retiring = %names(&work.retiring),
                "--force: replacing inside the retain window; the keys still retiring stay active until the new window ends");
        }

        // Invariant 2: the destination must be writable now, before ZenML changes anything.
        let store = self.store(&policy.store).await?;
        let snapshot = self.preflight_store(&store, policy).await?;

        let name = generation_name(&policy.api_key, now);
        let description = format!(
            "{CREATED_MARK} replacement key of policy {:?}, created {} to replace {}",
            policy.name,
            fmt_time(now),
            current
                .map(|k| format!("{:?} ({})", k.name, k.id))
                .unwrap_or_else(|| "no working key".into())
        );
        let new = self
            .zenml()
            .create_api_key(sa.id, &name, &description)
            .await
            .map_err(|e| {
                KeyFailure::new(
                    Stage::Rotate,
                    format!("cannot create API key {name:?} on {:?}: {e}", sa.name),
                )
            })?;
        let fp = fingerprint(&new.value);
        tracing::info!(policy = %policy.name, key = %name, key_id = %new.key.id, fingerprint = %fp, "created the replacement key");
        fault::point("after_create");

        if self.check_key(&new.value).await? == KeyCheck::Rejected {
            return Err(KeyFailure::new(
                Stage::Verify,
                format!(
                    "ZenML rejects the new key {name:?} ({fp}); it was not stored, and the next pass removes it"
                ),
            ));
        }

        // The window of the replaced key starts when its successor is stored: now, give or take
        // the few seconds the store takes.
        let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
        let retire_at = current.and_then(|k| retire_time(k, retain));
        let record = RotationRecord {
            policy: policy.name.clone(),
            service_account: sa.name.clone(),
            api_key: new.key.name.clone(),
            key_id: new.key.id.to_string(),
            fingerprint: fp.clone(),
            rotated_at: Some(new.key.created),
            retain_until: retire_at,
            finalized_at: None,
            retiring_key_id: current.map(|k| k.id.to_string()),
            retire_at,
        };
        self.store_value(
            policy,
            &store,
            &Uuid::new_v4().to_string(),
            &new.value,
            &record,
            &snapshot,
        )
        .await?;
        tracing::info!(policy = %policy.name, key = %name, key_id = %new.key.id, fingerprint = %fp,
            store = store.kind(), path = %policy.path,
            replaced = %current.map(|k| k.name.as_str()).unwrap_or("-"),
            retire_at = %retire_at.map(fmt_time).unwrap_or_default(),
            "replacement key stored and verified");
        // Every key still retiring (the one just replaced and any older) now waits for this window.
        publish_deactivation(
            &policy.name,
            work.retiring.len() + usize::from(current.is_some()),
            retire_at,
        );
        metrics::get()
            .rotation_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Outcome::Rotated {
            key_id: new.key.id.to_string(),
            fingerprint: fp,
        })
    }

    /// The clean-up `decide` found due (`Why::RetireDue`): record a value its record lags behind,
    /// remove orphans, deactivate replaced keys whose window ended, delete keys past `delete_after`.
    pub(crate) async fn retire(
        &self,
        policy: &KeyPolicy,
        obs: &Observed,
    ) -> Result<Outcome, KeyFailure> {
        let Some(observed) = &obs.replace else {
            return Err(finalize_failure("the policy's API keys were not listed"));
        };
        let store = self.store(&policy.store).await?;
        let record = obs.snapshot.as_ref().and_then(|s| s.record.as_ref());
        let now = Utc::now();
        let work = decide::replace_work(policy, obs.key.as_ref(), record, observed, now);
        if let Some(key) = &work.adopt {
            return self.adopt(policy, obs, &store, key).await;
        }
        let protected = self.protected_keys(policy, &store).await?;
        let mut done = Vec::new();

        for key in &work.orphans {
            if key.active {
                self.disable_key(
                    key,
                    Disable::Deactivate(DeactivationReason::Orphan),
                    &policy.name,
                    &protected,
                )
                .await
                .map_err(finalize_failure)?;
            }
            self.disable_key(key, Disable::Delete, &policy.name, &protected)
                .await
                .map_err(finalize_failure)?;
        }
        if !work.orphans.is_empty() {
            done.push(format!(
                "removed {} (created by an interrupted run, never stored)",
                names(&work.orphans)
            ));
        }

        let mut still_pending = work.retiring.len();
        if work.retire_due(now) {
            for key in &work.retiring {
                self.disable_key(
                    key,
                    Disable::Deactivate(DeactivationReason::Retired),
                    &policy.name,
                    &protected,
                )
                .await
                .map_err(finalize_failure)?;
                still_pending -= 1;
            }
            if let Some(record) = record {
                let mut record = record.clone();
                record.retiring_key_id = None;
                record.retire_at = None;
                record.finalized_at = Some(Utc::now());
                store
                    .set_record(&policy.path, &record)
                    .await
                    .map_err(|e| finalize_failure(e.to_string()))?;
            }
            done.push(format!(
                "deactivated {} (retain window ended {})",
                names(&work.retiring),
                work.retire_at.map(fmt_time).unwrap_or_default()
            ));
        }
        publish_deactivation(&policy.name, still_pending, work.retire_at);

        for key in &work.deletable {
            self.disable_key(key, Disable::Delete, &policy.name, &protected)
                .await
                .map_err(finalize_failure)?;
        }
        if !work.deletable.is_empty() {
            done.push(format!(
                "deleted {} (deactivated more than delete_after ago)",
                names(&work.deletable)
            ));
        }
        let detail = if done.is_empty() {
            "nothing left to clean up".to_owned()
        } else {
            done.join("; ")
        };
        tracing::info!(policy = %policy.name, %detail, "replace clean-up done");
        Ok(Outcome::Finalized { detail })
    }

    /// The store holds a newer key of ours than its record names (a run stopped between writing
    /// the value and the record): check the value still works and record it as current; the key
    /// it replaced gets a full retain window from now.
    async fn adopt(
        &self,
        policy: &KeyPolicy,
        obs: &Observed,
        store: &Arc<dyn SecretStore>,
        key: &ApiKey,
    ) -> Result<Outcome, KeyFailure> {
        let value = store
            .read_current(&policy.path)
            .await
            .map_err(|e| finalize_failure(e.to_string()))?;
        let Some(value) = value.filter(|v| key_id_from_value(v) == Some(key.id)) else {
            return Err(finalize_failure(format!(
                "the store no longer holds key {:?}; the next pass decides again",
                key.name
            )));
        };
        if self.check_key(&value).await? == KeyCheck::Rejected {
            return Err(KeyFailure::new(
                Stage::Verify,
                format!(
                    "ZenML rejects the stored value of key {:?} ({})",
                    key.name,
                    fingerprint(&value)
                ),
            ));
        }
        let previous = obs.key.as_ref().filter(|k| k.active && k.id != key.id);
        let retain = ChronoDuration::from_std(policy.retain).unwrap_or(ChronoDuration::MAX);
        let retire_at = previous.and_then(|k| retire_time(k, retain));
        let record = RotationRecord {
            policy: policy.name.clone(),
            service_account: policy.service_account.clone(),
            api_key: key.name.clone(),
            key_id: key.id.to_string(),
            fingerprint: fingerprint(&value),
            rotated_at: Some(key.created),
            retain_until: retire_at,
            finalized_at: None,
            retiring_key_id: previous.map(|k| k.id.to_string()),
            retire_at,
        };
        store
            .set_record(&policy.path, &record)
            .await
            .map_err(|e| finalize_failure(e.to_string()))?;
        let detail = format!(
            "recorded key {:?} ({}) as current: the store already held it{}",
            key.name,
            key.id,
            match (previous, retire_at) {
                (Some(p), Some(at)) =>
                    format!("; {:?} stays active until {}", p.name, fmt_time(at)),
                _ => String::new(),
            }
        );
        tracing::warn!(policy = %policy.name, %detail, "repaired a record left behind by an interrupted run");
        Ok(Outcome::Finalized { detail })
    }

    /// The keys of one policy that must stay in service, read fresh from its store: the key its
    /// record names and the key whose value it holds. If the store cannot say, nothing is touched.
    pub(crate) async fn protected_keys(
        &self,
        policy: &KeyPolicy,
        store: &Arc<dyn SecretStore>,
    ) -> Result<ProtectedKeys, KeyFailure> {
        let mut protected = ProtectedKeys::default();
        let cannot = |e: crate::store::StoreError| {
            finalize_failure(format!(
                "cannot read which key the store holds, so no key is deactivated: {e}"
            ))
        };
        let snapshot = store.inspect(&policy.path).await.map_err(cannot)?;
        if let Some(id) = snapshot
            .record
            .as_ref()
            .and_then(|r| Uuid::parse_str(&r.key_id).ok())
        {
            protected.insert(
                id,
                format!(
                    "the store record of policy {:?} names it current",
                    policy.name
                ),
            );
        }
        if let Some(id) = store
            .read_current(&policy.path)
            .await
            .map_err(cannot)?
            .as_ref()
            .and_then(key_id_from_value)
        {
            protected.insert(
                id,
                format!("the store of policy {:?} holds its value", policy.name),
            );
        }
        Ok(protected)
    }

    /// The one place a key is taken out of service (deactivated, or deleted once inactive). The
    /// guard comes first: a key in `protected` is refused, whoever asks and why.
    pub(crate) async fn disable_key(
        &self,
        key: &ApiKey,
        how: Disable,
        label: &str,
        protected: &ProtectedKeys,
    ) -> Result<(), String> {
        let verb = match how {
            Disable::Deactivate(_) => "deactivate",
            Disable::Delete => "delete",
        };
        if let Err(why) = protected.check(key.id) {
            tracing::error!(policy = label, key = %key.name, key_id = %key.id, %why,
                "refused to {verb} a key that holds a stored current value");
            return Err(format!(
                "refused to {verb} key {:?} ({}): {why}",
                key.name, key.id
            ));
        }
        let sa = key.service_account_id;
        let id = key.id.to_string();
        match how {
            Disable::Deactivate(reason) => {
                let note = format!(
                    "{DEACTIVATED_MARK} {} ({}; {})",
                    fmt_time(Utc::now()),
                    reason.describe(),
                    if label == crate::hygiene::LABEL {
                        "hygiene".to_owned()
                    } else {
                        format!("policy {label}")
                    }
                );
                let base = key
                    .description
                    .split(" | ")
                    .filter(|part| !part.starts_with(DEACTIVATED_MARK))
                    .collect::<Vec<_>>()
                    .join(" | ");
                let description = if base.trim().is_empty() {
                    note
                } else {
                    format!("{base} | {note}")
                };
                let update = ApiKeyUpdate {
                    name: None,
                    description: Some(description),
                    active: Some(false),
                };
                let updated = match self.zenml().update_api_key(sa, &id, &update).await {
                    Ok(k) => k,
                    Err(ZenmlError::NotFound { .. }) => {
                        // Deleted meanwhile: nobody can use it any more, which is the point.
                        tracing::info!(policy = label, key = %key.name, key_id = %key.id,
                            "the key to deactivate no longer exists");
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(format!("cannot deactivate key {:?} ({id}): {e}", key.name));
                    }
                };
                if updated.active {
                    return Err(format!(
                        "ZenML still reports key {:?} ({id}) active after deactivating it",
                        key.name
                    ));
                }
                metrics::get()
                    .keys_deactivated_total
                    .with_label_values(&[label, reason.as_str()])
                    .inc();
                tracing::warn!(policy = label, service_account = %key.service_account_name,
                    key = %key.name, key_id = %key.id, reason = reason.as_str(), "API key deactivated");
            }
            Disable::Delete => {
                match self.zenml().get_api_key(sa, &id).await {
                    Ok(now) if now.active => {
                        return Err(format!(
                            "key {:?} ({id}) is active (again): not deleting it",
                            key.name
                        ));
                    }
                    Ok(_) => {}
                    Err(ZenmlError::NotFound { .. }) => return Ok(()),
                    Err(e) => return Err(format!("cannot read key {:?} ({id}): {e}", key.name)),
                }
                match self.zenml().delete_api_key(sa, &id).await {
                    Ok(()) | Err(ZenmlError::NotFound { .. }) => {}
                    Err(e) => return Err(format!("cannot delete key {:?} ({id}): {e}", key.name)),
                }
                tracing::info!(policy = label, service_account = %key.service_account_name,
                    key = %key.name, key_id = %key.id, "API key deleted");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(generation_name("default", at), "default-20260304050607");
        assert!(is_generation("default", "default-20260304050607"));
        assert!(in_family("default", "default"));
        assert!(in_family("default", "default-20260304050607"));
        for other in [
            "default-admin",
            "default-2026030405060",
            "default-202603040506078",
            "default20260304050607",
            "defaults-20260304050607",
            "default-20260304050607-x",
            "x-default-20260304050607",
        ] {
            assert!(!in_family("default", other), "{other}");
        }
    }

    #[test]
    fn the_guard_refuses_protected_keys_only() {
        let current = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut p = ProtectedKeys::default();
        p.insert(current, "the store of policy \"t\" holds its value");
        assert!(p.check(other).is_ok());
        let why = p.check(current).unwrap_err();
        assert!(why.contains("holds its value"), "{why}");
        // The first reason recorded for a key wins; a second insert never lifts protection.
        p.insert(current, "again");
        assert!(p.check(current).unwrap_err().contains("holds its value"));
    }

    #[test]
    fn marks() {
        assert!(created_by_rotator(
            "zenml-rotator: replacement key of policy \"t\""
        ));
        assert!(!created_by_rotator("made by hand; zenml-rotator: no"));
        assert!(deactivated_by_rotator(
            "x | deactivated by zenml-rotator at 2026-01-01T00:00:00Z (unused)"
        ));
        assert!(!deactivated_by_rotator("deactivated by hand"));
    }
}
