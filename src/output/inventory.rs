//! `inventory`: one row per key, grouped by service account.

use super::{OutputFormat, age, json, table, time};
use crate::audit::inventory::AccountRow;

/// `inventory --output table|json`.
pub fn render(rows: &[AccountRow], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => json(&rows),
        OutputFormat::Table => {
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
            let mut out = Vec::new();
            for a in rows {
                let account = if a.active {
                    a.service_account.clone()
                } else {
                    format!("{} (inactive)", a.service_account)
                };
                if a.keys.is_empty() {
                    out.push(vec![
                        account.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "no API keys".into(),
                    ]);
                }
                for k in &a.keys {
                    out.push(vec![
                        account.clone(),
                        k.api_key.clone(),
                        k.policy.clone().unwrap_or_else(|| "-".into()),
                        yes_no(k.active),
                        time(Some(k.created)),
                        time(k.last_rotated),
                        k.last_workload_login
                            .map(|t| time(Some(t)))
                            .unwrap_or_else(|| "never".into()),
                        age(Some(k.age_seconds)),
                    ]);
                }
            }
            table(
                &[
                    "SERVICE ACCOUNT",
                    "API KEY",
                    "POLICY",
                    "ACTIVE",
                    "CREATED",
                    "LAST ROTATED",
                    "LAST USED",
                    "AGE",
                ],
                &out,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::inventory::{AccountKeys, rows};
    use crate::testing::{api_key as key, at, service_account};

    #[test]
    fn stale_keeps_old_and_never_used_keys() {
        let now = at("2026-06-01T00:00:00Z");
        let account = service_account("sa");
        let mut old = key("old", "2026-01-01T00:00:00Z");
        old.last_login = Some(at("2026-02-01T00:00:00Z"));
        let mut fresh = key("fresh", "2026-01-01T00:00:00Z");
        fresh.last_login = Some(at("2026-05-30T00:00:00Z"));
        let never = key("never", "2026-05-31T00:00:00Z");
        let accounts = vec![
            AccountKeys {
                account: account.clone(),
                keys: vec![old, fresh, never],
            },
            AccountKeys {
                account: service_account("empty"),
                keys: vec![],
            },
        ];
        let all = rows(&accounts, &[], now, None);
        assert_eq!(all.len(), 2);
        let stale = rows(&accounts, &[], now, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(stale.len(), 1);
        let names: Vec<&str> = stale[0].keys.iter().map(|k| k.api_key.as_str()).collect();
        assert_eq!(names, ["old", "never"]);
        let table = render(&all, OutputFormat::Table);
        assert!(table.contains("no API keys"), "{table}");
        assert!(table.contains("never"), "{table}");
    }
}
