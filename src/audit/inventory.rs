//! `inventory`: every service account and API key on the server, the policy that manages each key
//! (if any), and when a workload last used it. Read-only; `output::inventory` shows it. `[hygiene]` works on
//! the same listing. The rotator's own key checks write `last_login` too: see `last_workload_login`.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::{KeyPolicy, Strategy};
use crate::naming::in_family;
use crate::zenml::{ApiKey, KeyFilter, ServiceAccount, ZenmlClient, ZenmlError};

/// A login this soon after a key's value was issued (created or rotated) is taken for the
/// issuer's verification (the rotator checks every value it issues within seconds), not a
/// workload's use.
pub const ISSUER_LOGIN_GRACE: Duration = Duration::from_secs(60);

/// One service account and all its API keys, as the server lists them.
#[derive(Debug, Clone)]
pub struct AccountKeys {
    pub account: ServiceAccount,
    pub keys: Vec<ApiKey>,
}

/// Lists every service account and, `concurrency` accounts at a time, every key of each (all
/// pages). Sorted by account name, then key name. An account deleted while it is being listed is
/// left out. ZenML pages by offset: on a server where accounts come and go during the listing, an
/// account can be missed (it is a snapshot, not a transaction).
pub async fn collect(
    client: &ZenmlClient,
    concurrency: usize,
) -> Result<Vec<AccountKeys>, ZenmlError> {
    let mut accounts = client.list_service_accounts().await?;
    // Offset paging over a changing list can return an account twice.
    accounts.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    accounts.dedup_by_key(|a| a.id);
    let listed: Vec<Option<AccountKeys>> = futures_util::stream::iter(accounts)
        .map(|account| async move {
            match client
                .list_api_keys(account.id, &KeyFilter::default())
                .await
            {
                Ok(mut keys) => {
                    keys.sort_by(|a, b| a.name.cmp(&b.name));
                    Ok(Some(AccountKeys { account, keys }))
                }
                Err(ZenmlError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(listed.into_iter().flatten().collect())
}

/// The policy that covers a key: under `rotate` the key named `api_key`, under `replace` that key
/// and its `<api_key>-<yyyymmddHHMMSS>` replacements.
pub fn covering_policy<'a>(
    policies: &'a [KeyPolicy],
    service_account: &str,
    key_name: &str,
) -> Option<&'a KeyPolicy> {
    policies.iter().find(|p| {
        p.service_account == service_account
            && match p.strategy {
                Strategy::Rotate => p.api_key == key_name,
                Strategy::Replace => in_family(&p.api_key, key_name),
            }
    })
}

/// When the key's current value was issued: its last rotation, else its creation.
pub fn issued(key: &ApiKey) -> DateTime<Utc> {
    key.last_rotated.unwrap_or(key.created).max(key.created)
}

/// The last login by a workload: `last_login`, unless it falls within `ISSUER_LOGIN_GRACE` after
/// the value was issued (then it is the issuer's verification, and no workload login since is
/// known). A key only ever checked by the rotator has none.
pub fn last_workload_login(key: &ApiKey) -> Option<DateTime<Utc>> {
    let login = key.last_login?;
    let after_issue = login - issued(key);
    let grace = ChronoDuration::from_std(ISSUER_LOGIN_GRACE).unwrap_or(ChronoDuration::zero());
    if after_issue >= ChronoDuration::zero() && after_issue <= grace {
        None
    } else {
        Some(login)
    }
}

/// Since when nobody has used the key: its last workload login, or the issue of its current
/// value when that is later (a fresh value has not had the chance to be used yet).
pub fn unused_since(key: &ApiKey) -> DateTime<Utc> {
    let issued = issued(key);
    last_workload_login(key).map_or(issued, |login| login.max(issued))
}

/// One key in `inventory` output.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub api_key: String,
    pub key_id: String,
    /// The `[[key]]` that manages it, or null.
    pub policy: Option<String>,
    pub active: bool,
    pub created: DateTime<Utc>,
    pub last_rotated: Option<DateTime<Utc>>,
    /// As the server reports it, the rotator's own checks included.
    pub last_login: Option<DateTime<Utc>>,
    /// The last login that was not a verification right after the value was issued.
    pub last_workload_login: Option<DateTime<Utc>>,
    /// Age of the current value (since the last rotation, else creation).
    pub age_seconds: i64,
}

/// One service account in `inventory` output, with its keys.
#[derive(Debug, Clone, Serialize)]
pub struct AccountRow {
    pub service_account: String,
    pub service_account_id: String,
    pub active: bool,
    pub created: DateTime<Utc>,
    pub keys: Vec<KeyRow>,
}

/// The inventory as rows. With `stale`, only keys whose last workload login is older than that
/// (or that no workload ever used), and only the accounts that have such keys.
pub fn rows(
    accounts: &[AccountKeys],
    policies: &[KeyPolicy],
    now: DateTime<Utc>,
    stale: Option<Duration>,
) -> Vec<AccountRow> {
    let cutoff = stale.map(|d| {
        ChronoDuration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    });
    accounts
        .iter()
        .filter_map(|a| {
            let keys: Vec<KeyRow> = a
                .keys
                .iter()
                .filter(|k| {
                    cutoff.is_none_or(|cutoff| last_workload_login(k).is_none_or(|t| t < cutoff))
                })
                .map(|k| KeyRow {
                    api_key: k.name.clone(),
                    key_id: k.id.to_string(),
                    policy: covering_policy(policies, &a.account.name, &k.name)
                        .map(|p| p.name.clone()),
                    active: k.active,
                    created: k.created,
                    last_rotated: k.last_rotated,
                    last_login: k.last_login,
                    last_workload_login: last_workload_login(k),
                    age_seconds: (now - issued(k)).num_seconds(),
                })
                .collect();
            if stale.is_some() && keys.is_empty() {
                return None;
            }
            Some(AccountRow {
                service_account: a.account.name.clone(),
                service_account_id: a.account.id.to_string(),
                active: a.account.active,
                created: a.account.created,
                keys,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{api_key as key, at};

    #[test]
    fn the_issuers_check_is_not_a_workload_login() {
        let mut k = key("k", "2026-01-01T00:00:00Z");
        assert_eq!(last_workload_login(&k), None);
        assert_eq!(unused_since(&k), at("2026-01-01T00:00:00Z"));
        // Checked 5 s after creation: the rotator's verification.
        k.last_login = Some(at("2026-01-01T00:00:05Z"));
        assert_eq!(last_workload_login(&k), None);
        // A login two minutes later is a workload's.
        k.last_login = Some(at("2026-01-01T00:02:00Z"));
        assert_eq!(last_workload_login(&k), k.last_login);
        assert_eq!(unused_since(&k), at("2026-01-01T00:02:00Z"));
        // Rotated later and checked right away: the check after the rotation hides the workload's
        // earlier login, so the key counts as unused since the rotation.
        k.last_rotated = Some(at("2026-02-01T00:00:00Z"));
        k.last_login = Some(at("2026-02-01T00:00:03Z"));
        assert_eq!(last_workload_login(&k), None);
        assert_eq!(unused_since(&k), at("2026-02-01T00:00:00Z"));
        // A login before the last rotation (with the previous value) still counts as use.
        k.last_login = Some(at("2026-01-20T00:00:00Z"));
        assert_eq!(last_workload_login(&k), k.last_login);
        assert_eq!(unused_since(&k), at("2026-02-01T00:00:00Z"));
    }
}
