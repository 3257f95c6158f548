//! `[hygiene]` (opt-in): checks over every key on the server, beyond the managed ones. Deactivates
//! keys no policy covers that no workload used for `deactivate_unused_after`; reports keys no policy
//! covers and service accounts without an active key, never touching them. Keys a policy covers are
//! left to the policy, and no key whose value a store holds is ever deactivated (the engine's key
//! guard). `evaluate` is pure: `plan` shows exactly what a pass does.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use super::inventory::{self, AccountKeys, covering_policy, issued, last_workload_login};
use crate::config::{Config, HygieneSettings, KeyPolicy};
use crate::engine::Engine;
use crate::engine::act::Retired;
use crate::engine::events::HYGIENE;
use crate::metrics;
use crate::time::rfc3339;
use crate::zenml::{ApiKey, ZenmlError};

/// What hygiene does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HygieneAction {
    Deactivate,
    Report,
}

impl HygieneAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HygieneAction::Deactivate => "deactivate",
            HygieneAction::Report => "report",
        }
    }
}

/// The kinds of finding: the `kind` label of `hygiene_findings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// No policy covers the key and no workload used it for `deactivate_unused_after`.
    Unused,
    /// No policy covers the key.
    Unmanaged,
    /// An active service account without an active key (after this pass's deactivations).
    NoActiveKey,
}

impl FindingKind {
    pub const ALL: [FindingKind; 3] = [
        FindingKind::Unused,
        FindingKind::Unmanaged,
        FindingKind::NoActiveKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Unused => "unused",
            FindingKind::Unmanaged => "unmanaged",
            FindingKind::NoActiveKey => "no_active_key",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub action: HygieneAction,
    pub kind: FindingKind,
    pub service_account: String,
    pub key: Option<ApiKey>,
    /// One sentence for people.
    pub reason: String,
}

/// What hygiene would do now, as a pure function of the settings, the policies and the listing.
pub fn evaluate(
    settings: &HygieneSettings,
    policies: &[KeyPolicy],
    accounts: &[AccountKeys],
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let threshold = settings
        .deactivate_unused_after
        .map(|d| ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX));
    let mut out = Vec::new();
    for a in accounts {
        let sa = &a.account;
        // An inactive account's keys cannot log in at all; excluded accounts are never looked at.
        if !sa.active || settings.exclude_service_accounts.contains(&sa.name) {
            continue;
        }
        let mut active_left = 0;
        for key in a.keys.iter().filter(|k| k.active) {
            if covering_policy(policies, &sa.name, &key.name).is_some() {
                active_left += 1;
                continue;
            }
            let since = inventory::unused_since(key);
            let used = match last_workload_login(key) {
                Some(t) => format!("last used by a workload at {}", rfc3339(t)),
                None => format!("no workload login since {}", rfc3339(issued(key))),
            };
            if let Some(limit) = threshold
                && now.signed_duration_since(since) > limit
            {
                out.push(Finding {
                    action: HygieneAction::Deactivate,
                    kind: FindingKind::Unused,
                    service_account: sa.name.clone(),
                    key: Some(key.clone()),
                    reason: format!(
                        "No policy covers this key and it is unused for longer than {} ({used}): deactivate it.",
                        settings
                            .deactivate_unused_after
                            .map(|d| humantime::format_duration(d).to_string())
                            .unwrap_or_default()
                    ),
                });
                continue;
            }
            active_left += 1;
            if settings.report_unmanaged {
                out.push(Finding {
                    action: HygieneAction::Report,
                    kind: FindingKind::Unmanaged,
                    service_account: sa.name.clone(),
                    key: Some(key.clone()),
                    reason: format!("No policy covers this key ({used})."),
                });
            }
        }
        if active_left == 0 && settings.report_service_accounts_without_keys {
            out.push(Finding {
                action: HygieneAction::Report,
                kind: FindingKind::NoActiveKey,
                service_account: sa.name.clone(),
                key: None,
                reason: if a.keys.iter().any(|k| k.active) {
                    "The service account has no active API key left after this pass.".into()
                } else {
                    "The service account has no active API key.".into()
                },
            });
        }
    }
    out
}

/// A hygiene row of `plan`: the fields of a per-key row (`KeyPlan`), `policy` = "hygiene",
/// `strategy` null, `action` "deactivate" or "report".
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub policy: &'static str,
    pub service_account: String,
    pub api_key: Option<String>,
    pub key_id: Option<String>,
    pub strategy: Option<&'static str>,
    pub last_rotated: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    pub next_due: Option<DateTime<Utc>>,
    pub action: HygieneAction,
    pub reason: String,
}

impl Finding {
    pub fn plan_row(&self, now: DateTime<Utc>) -> PlanRow {
        PlanRow {
            policy: HYGIENE,
            service_account: self.service_account.clone(),
            api_key: self.key.as_ref().map(|k| k.name.clone()),
            key_id: self.key.as_ref().map(|k| k.id.to_string()),
            strategy: None,
            last_rotated: self.key.as_ref().and_then(|k| k.last_rotated),
            age_seconds: self.key.as_ref().map(|k| (now - issued(k)).num_seconds()),
            next_due: (self.action == HygieneAction::Deactivate).then_some(now),
            action: self.action,
            reason: self.reason.clone(),
        }
    }

    fn subject(&self) -> String {
        match &self.key {
            Some(k) => format!(
                "key {:?} ({}) of service account {:?}",
                k.name, k.id, self.service_account
            ),
            None => format!("service account {:?}", self.service_account),
        }
    }
}

/// One line of hygiene's part of a pass report (`once`).
#[derive(Debug, Clone)]
pub struct HygieneResult {
    /// "deactivated", "would deactivate", "report" or "failed".
    pub result: &'static str,
    pub detail: String,
    pub failed: bool,
}

/// Why hygiene could not look at the server.
#[derive(Debug, thiserror::Error)]
#[error("ZenML: {0}")]
pub struct HygieneError(#[from] ZenmlError);

/// Hygiene's findings over the whole server, read-only (`plan`, and the first half of a run).
pub async fn findings(
    engine: &Engine,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<Finding>, HygieneError> {
    let Some(settings) = &config.hygiene else {
        return Ok(Vec::new());
    };
    let accounts = inventory::collect(engine.zenml(), config.concurrency).await?;
    Ok(evaluate(settings, &config.keys, &accounts, now))
}

/// Runs hygiene once: deactivates what `evaluate` says (the engine's actor decides whether that
/// is for real or a dry run's "would"), logs every finding, counts them in
/// `hygiene_findings{kind}` and deactivations in `keys_deactivated_total{policy="hygiene",reason="unused"}`.
pub async fn run(engine: &Engine, config: &Config) -> Vec<HygieneResult> {
    let findings = match findings(engine, config, Utc::now()).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "hygiene: cannot list the server's keys");
            return vec![HygieneResult {
                result: "failed",
                detail: format!("cannot list the server's keys: {e}"),
                failed: true,
            }];
        }
    };
    let m = metrics::get();
    for kind in FindingKind::ALL {
        let n = findings.iter().filter(|f| f.kind == kind).count();
        m.hygiene_findings
            .with_label_values(&[kind.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let unused: Vec<(&Finding, &ApiKey)> = findings
        .iter()
        .filter(|f| f.action == HygieneAction::Deactivate)
        .filter_map(|f| f.key.as_ref().map(|k| (f, k)))
        .collect();
    let keys: Vec<&ApiKey> = unused.iter().map(|(_, k)| *k).collect();
    let retired = if keys.is_empty() {
        Vec::new()
    } else {
        engine
            .act()
            .retire_unused(engine.ctx(), &config.keys, &keys)
            .await
    };
    let mut out: Vec<HygieneResult> = unused
        .iter()
        .zip(retired)
        .map(|((f, key), result)| {
            let (result, detail, failed) = match result {
                Ok(Retired::Deactivated) => ("deactivated", f.reason.clone(), false),
                Ok(Retired::WouldDeactivate) => ("would deactivate", f.reason.clone(), false),
                Err(e) => {
                    tracing::error!(service_account = %f.service_account, key = %key.name, error = %e, "hygiene");
                    ("failed", e.to_string(), true)
                }
            };
            HygieneResult {
                result,
                detail: format!("{}: {detail}", f.subject()),
                failed,
            }
        })
        .collect();
    let reports: Vec<&Finding> = findings
        .iter()
        .filter(|f| !(f.action == HygieneAction::Deactivate && f.key.is_some()))
        .collect();
    for f in &reports {
        tracing::info!(
            kind = f.kind.as_str(),
            "hygiene: {}: {}",
            f.subject(),
            f.reason
        );
    }
    if !reports.is_empty() {
        let count = |kind| findings.iter().filter(|f| f.kind == kind).count();
        out.push(HygieneResult {
            result: "report",
            detail: format!(
                "{} key(s) no policy covers, {} service account(s) without an active key: \
                 `zenml-rotator plan` lists them",
                count(FindingKind::Unmanaged),
                count(FindingKind::NoActiveKey)
            ),
            failed: false,
        });
    }
    out
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{api_key, at, service_account};

    fn key(name: &str, created: &str, last_login: Option<&str>) -> ApiKey {
        ApiKey {
            last_login: last_login.map(at),
            ..api_key(name, created)
        }
    }

    fn account(name: &str, keys: Vec<ApiKey>) -> AccountKeys {
        AccountKeys {
            account: service_account(name),
            keys,
        }
    }

    fn policy(sa: &str, api_key: &str) -> KeyPolicy {
        crate::testing::policy("p", sa, api_key, "")
    }

    fn settings(unused: Option<u64>) -> HygieneSettings {
        HygieneSettings {
            deactivate_unused_after: unused.map(|d| Duration::from_secs(d * 86_400)),
            report_unmanaged: true,
            report_service_accounts_without_keys: true,
            exclude_service_accounts: vec!["break-glass".into()],
        }
    }

    #[test]
    fn unused_unmanaged_keys_are_deactivated_and_managed_ones_never() {
        let now = at("2026-06-01T00:00:00Z");
        let accounts = vec![
            account(
                "pipelines",
                vec![
                    // Managed, never used by a workload: left to its policy.
                    key(
                        "default",
                        "2026-01-01T00:00:00Z",
                        Some("2026-01-01T00:00:02Z"),
                    ),
                    // Unmanaged, only ever checked right after creation: unused.
                    key("ci", "2026-01-01T00:00:00Z", Some("2026-01-01T00:00:02Z")),
                    // Unmanaged, used last week.
                    key(
                        "laptop",
                        "2026-01-01T00:00:00Z",
                        Some("2026-05-25T00:00:00Z"),
                    ),
                ],
            ),
            account(
                "break-glass",
                vec![key("old", "2020-01-01T00:00:00Z", None)],
            ),
            account("idle", vec![key("only", "2026-01-01T00:00:00Z", None)]),
        ];
        let policies = vec![policy("pipelines", "default")];
        let found = evaluate(&settings(Some(90)), &policies, &accounts, now);
        let summary: Vec<(HygieneAction, &str, Option<&str>)> = found
            .iter()
            .map(|f| {
                (
                    f.action,
                    f.service_account.as_str(),
                    f.key.as_ref().map(|k| k.name.as_str()),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (HygieneAction::Deactivate, "pipelines", Some("ci")),
                (HygieneAction::Report, "pipelines", Some("laptop")),
                (HygieneAction::Deactivate, "idle", Some("only")),
                (HygieneAction::Report, "idle", None),
            ]
        );
        assert!(
            found[3].reason.contains("after this pass"),
            "{}",
            found[3].reason
        );
        // Without deactivate_unused_after, everything unmanaged is only reported.
        let found = evaluate(&settings(None), &policies, &accounts, now);
        assert!(found.iter().all(|f| f.action == HygieneAction::Report));
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn plan_rows_carry_the_per_key_fields() {
        let now = at("2026-06-01T00:00:00Z");
        let accounts = vec![account(
            "idle",
            vec![key("only", "2026-01-01T00:00:00Z", None)],
        )];
        let found = evaluate(&settings(Some(1)), &[], &accounts, now);
        let v = serde_json::to_value(found[0].plan_row(now)).unwrap();
        for field in [
            "policy",
            "service_account",
            "api_key",
            "key_id",
            "strategy",
            "last_rotated",
            "age_seconds",
            "next_due",
            "action",
            "reason",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        assert_eq!(v["policy"], "hygiene");
        assert_eq!(v["action"], "deactivate");
        assert!(v["strategy"].is_null());
    }
}
