//! The one way a key is taken out of service (deactivated, or deleted once inactive), and its
//! guard: a key whose value a store holds as current is never touched, whoever asks and why.
//! Strategy `replace` (retired and orphaned keys) and hygiene (unused keys) both come here.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::context::Context;
use super::events::{self, Actor, DeactivationReason, Event};
use super::failure::DisableError;
use crate::config::KeyPolicy;
use crate::naming::DEACTIVATED_MARK;
use crate::store::{SecretStore, StoreError};
use crate::time::rfc3339;
use crate::zenml::{ApiKey, ApiKeyUpdate, ZenmlClient, ZenmlError, key_id_from_value};

/// What `disable_key` does to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disable {
    Deactivate(DeactivationReason),
    /// Only a key that is inactive when re-read right before the call is deleted.
    Delete,
}

impl Disable {
    fn verb(self) -> &'static str {
        match self {
            Disable::Deactivate(_) => "deactivate",
            Disable::Delete => "delete",
        }
    }
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

/// The keys of one policy that must stay in service, read fresh from its store: the key its
/// record names and the key whose value it holds. If the store cannot say, nothing is touched.
pub async fn protected_keys(
    policy: &KeyPolicy,
    store: &Arc<dyn SecretStore>,
) -> Result<ProtectedKeys, DisableError> {
    let mut protected = ProtectedKeys::default();
    let cannot = |e: StoreError| DisableError::StoreUnknown(Arc::new(e));
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

/// Every key any policy's store holds or records as current, read fresh: hygiene never
/// deactivates one, whatever its name. `Err` when a store cannot say.
pub async fn protected_everywhere(
    ctx: &Context,
    policies: &[KeyPolicy],
) -> Result<ProtectedKeys, DisableError> {
    let mut all = ProtectedKeys::default();
    for policy in policies {
        let unknown =
            |why: String| DisableError::StoresUnknown(format!("policy {:?}: {why}", policy.name));
        let store = ctx
            .store(&policy.store)
            .await
            .map_err(|e| unknown(e.message()))?;
        let protected = protected_keys(policy, &store)
            .await
            .map_err(|e| unknown(e.to_string()))?;
        all.extend(protected);
    }
    Ok(all)
}

/// The one place a key is taken out of service (deactivated, or deleted once inactive). The
/// guard comes first: a key in `protected` is refused, whoever asks and why.
pub async fn disable_key(
    zenml: &ZenmlClient,
    key: &ApiKey,
    how: Disable,
    actor: Actor<'_>,
    protected: &ProtectedKeys,
) -> Result<(), DisableError> {
    if let Err(why) = protected.check(key.id) {
        tracing::error!(policy = actor.label(), key = %key.name, key_id = %key.id, %why,
            "refused to {} a key that holds a stored current value", how.verb());
        return Err(DisableError::Protected {
            verb: how.verb(),
            name: key.name.clone(),
            id: key.id,
            why,
        });
    }
    match how {
        Disable::Deactivate(reason) => deactivate(zenml, key, reason, actor).await,
        Disable::Delete => delete(zenml, key, actor).await,
    }
}

fn zenml_error(verb: &'static str, key: &ApiKey, error: ZenmlError) -> DisableError {
    DisableError::Zenml {
        verb,
        name: key.name.clone(),
        id: key.id,
        error: Arc::new(error),
    }
}

async fn deactivate(
    zenml: &ZenmlClient,
    key: &ApiKey,
    reason: DeactivationReason,
    actor: Actor<'_>,
) -> Result<(), DisableError> {
    let note = format!(
        "{DEACTIVATED_MARK} {} ({}; {})",
        rfc3339(Utc::now()),
        reason.describe(),
        actor.describe()
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
    let id = key.id.to_string();
    let updated = match zenml
        .update_api_key(key.service_account_id, &id, &update)
        .await
    {
        Ok(k) => k,
        Err(ZenmlError::NotFound { .. }) => {
            // Deleted meanwhile: nobody can use it any more, which is the point.
            tracing::info!(policy = actor.label(), key = %key.name, key_id = %key.id,
                "the key to deactivate no longer exists");
            return Ok(());
        }
        Err(e) => return Err(zenml_error("deactivate", key, e)),
    };
    if updated.active {
        return Err(DisableError::StillActive {
            name: key.name.clone(),
            id: key.id,
        });
    }
    events::emit(Event::Deactivated { key, reason, actor });
    Ok(())
}

async fn delete(zenml: &ZenmlClient, key: &ApiKey, actor: Actor<'_>) -> Result<(), DisableError> {
    let sa = key.service_account_id;
    let id = key.id.to_string();
    match zenml.get_api_key(sa, &id).await {
        Ok(now) if now.active => {
            return Err(DisableError::ActiveAgain {
                name: key.name.clone(),
                id: key.id,
            });
        }
        Ok(_) => {}
        Err(ZenmlError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(zenml_error("read", key, e)),
    }
    match zenml.delete_api_key(sa, &id).await {
        Ok(()) | Err(ZenmlError::NotFound { .. }) => {}
        Err(e) => return Err(zenml_error("delete", key, e)),
    }
    events::emit(Event::Deleted { key, actor });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
