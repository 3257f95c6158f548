//! `[hygiene]` (opt-in): checks over every key on the server, beyond the managed ones. Deactivates
//! keys no policy covers that no workload used for `deactivate_unused_after`; reports keys no policy
//! covers and service accounts without an active key, never touching them. Keys a policy covers are
//! left to the policy, and no key whose value a store holds is ever deactivated (the guard of
//! `Engine::disable_key`). `evaluate` is pure: `plan` shows exactly what a pass does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Config, HygieneSettings, KeyPolicy};
use crate::inventory::{self, AccountKeys, covering_policy, issued, last_workload_login};
use crate::metrics;
use crate::replace::{DeactivationReason, Disable, ProtectedKeys};
use crate::rotation::Engine;
use crate::zenml::ApiKey;

/// The `policy` label and `plan` row name of hygiene's actions.
pub const LABEL: &str = "hygiene";

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

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
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
                Some(t) => format!("last used by a workload at {}", fmt_time(t)),
                None => format!("no workload login since {}", fmt_time(issued(key))),
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

/// A hygiene row of `plan`: the fields of a per-key row (DESIGN.md), `policy` = "hygiene",
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
            policy: LABEL,
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

/// `run` looks at the whole server at most this often (a pass per due key would be too many).
static LAST_DAEMON_RUN: Mutex<Option<Instant>> = Mutex::new(None);

/// Whether the daemon should run hygiene after this pass: when `[hygiene]` is set and the last
/// run is at least `every` ago. Marks the run.
pub fn due_in_daemon(config: &Config, every: Duration) -> bool {
    if config.hygiene.is_none() {
        return false;
    }
    let mut last = match LAST_DAEMON_RUN.lock() {
        Ok(l) => l,
        Err(poisoned) => poisoned.into_inner(),
    };
    if last.is_some_and(|t| t.elapsed() < every) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

impl Engine {
    /// Hygiene's findings over the whole server, read-only (`plan`, and the first half of a run).
    pub async fn hygiene_findings(
        &self,
        config: &Config,
        now: DateTime<Utc>,
    ) -> Result<Vec<Finding>, String> {
        let Some(settings) = &config.hygiene else {
            return Ok(Vec::new());
        };
        let accounts = inventory::collect(self.zenml(), config.concurrency)
            .await
            .map_err(|e| format!("ZenML: {e}"))?;
        Ok(evaluate(settings, &config.keys, &accounts, now))
    }

    /// Every key any policy's store holds or records as current, read fresh: hygiene never
    /// deactivates one, whatever its name. `Err` when a store cannot say.
    async fn protected_everywhere(&self, policies: &[KeyPolicy]) -> Result<ProtectedKeys, String> {
        let mut all = ProtectedKeys::default();
        for policy in policies {
            let store = self
                .store(&policy.store)
                .await
                .map_err(|e| format!("policy {:?}: {}", policy.name, e.message))?;
            let protected = self
                .protected_keys(policy, &store)
                .await
                .map_err(|e| format!("policy {:?}: {}", policy.name, e.message))?;
            all.extend(protected);
        }
        Ok(all)
    }

    /// Runs hygiene once: deactivates what `evaluate` says (or says it would, in a dry run), logs
    /// every finding, counts them in `hygiene_findings{kind}` and deactivations in
    /// `keys_deactivated_total{policy="hygiene",reason="unused"}`.
    pub async fn hygiene(&self, config: &Config, dry_run: bool) -> Vec<HygieneResult> {
        let findings = match self.hygiene_findings(config, Utc::now()).await {
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
        let deactivations = findings
            .iter()
            .any(|f| f.action == HygieneAction::Deactivate);
        // Fail closed: without knowing every stored key, nothing is deactivated.
        let protected = if deactivations && !dry_run {
            Some(self.protected_everywhere(&config.keys).await)
        } else {
            None
        };
        let mut out = Vec::new();
        let mut reports = 0;
        for f in &findings {
            match (f.action, &f.key) {
                (HygieneAction::Deactivate, Some(key)) => {
                    if dry_run {
                        tracing::info!(service_account = %f.service_account, key = %key.name, key_id = %key.id,
                            "hygiene (dry run): would deactivate an unused key");
                        out.push(HygieneResult {
                            result: "would deactivate",
                            detail: format!("{}: {}", f.subject(), f.reason),
                            failed: false,
                        });
                        continue;
                    }
                    let result = match &protected {
                        Some(Ok(p)) => {
                            self.disable_key(
                                key,
                                Disable::Deactivate(DeactivationReason::Unused),
                                LABEL,
                                p,
                            )
                            .await
                        }
                        Some(Err(e)) => Err(format!(
                            "not deactivated: cannot tell which keys the stores hold ({e})"
                        )),
                        None => Err("not deactivated".into()),
                    };
                    out.push(match result {
                        Ok(()) => HygieneResult {
                            result: "deactivated",
                            detail: format!("{}: {}", f.subject(), f.reason),
                            failed: false,
                        },
                        Err(e) => {
                            tracing::error!(service_account = %f.service_account, key = %key.name, error = %e, "hygiene");
                            HygieneResult {
                                result: "failed",
                                detail: format!("{}: {e}", f.subject()),
                                failed: true,
                            }
                        }
                    });
                }
                _ => {
                    reports += 1;
                    tracing::info!(
                        kind = f.kind.as_str(),
                        "hygiene: {}: {}",
                        f.subject(),
                        f.reason
                    );
                }
            }
        }
        if reports > 0 {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zenml::ServiceAccount;
    use uuid::Uuid;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn key(name: &str, created: &str, last_login: Option<&str>) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            name: name.into(),
            description: String::new(),
            active: true,
            created: at(created),
            updated: at(created),
            service_account_id: Uuid::new_v4(),
            service_account_name: "sa".into(),
            retain_period_minutes: None,
            last_login: last_login.map(at),
            last_rotated: None,
        }
    }

    fn account(name: &str, keys: Vec<ApiKey>) -> AccountKeys {
        AccountKeys {
            account: ServiceAccount {
                id: Uuid::new_v4(),
                name: name.into(),
                active: true,
                created: at("2026-01-01T00:00:00Z"),
                description: String::new(),
            },
            keys,
        }
    }

    fn policy(sa: &str, api_key: &str) -> KeyPolicy {
        let toml = format!(
            "[zenml]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
             [[key]]\nname = \"p\"\nservice_account = \"{sa}\"\napi_key = \"{api_key}\"\npath = \"p.env\"\n"
        );
        crate::config::Config::parse(&toml, std::path::Path::new("t.toml"))
            .unwrap()
            .keys
            .remove(0)
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
