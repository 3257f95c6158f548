//! `plan`: one row per key, then `[hygiene]`'s rows with the same fields (JSON: one array still;
//! a hygiene row has `policy` "hygiene", `strategy` null, `action` "deactivate" or "report", and
//! `api_key`/`key_id` null when it is about a service account).

use super::{OutputFormat, age, json, table, time};
use crate::audit::hygiene::PlanRow;
use crate::engine::decide::KeyPlan;

pub fn render(plans: &[KeyPlan], hygiene: &[PlanRow], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => {
            let mut rows: Vec<serde_json::Value> = plans
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect();
            rows.extend(hygiene.iter().filter_map(|h| serde_json::to_value(h).ok()));
            json(&rows)
        }
        OutputFormat::Table => {
            let dash = || "-".to_string();
            let hygiene_rows = hygiene.iter().map(|h| {
                vec![
                    h.policy.to_string(),
                    h.service_account.clone(),
                    h.api_key.clone().unwrap_or_else(dash),
                    h.strategy.map(str::to_string).unwrap_or_else(dash),
                    time(h.last_rotated),
                    age(h.age_seconds),
                    time(h.next_due),
                    h.action.as_str().to_string(),
                    dash(),
                    h.reason.clone(),
                ]
            });
            let rows: Vec<Vec<String>> = plans
                .iter()
                .map(|p| {
                    vec![
                        p.policy.clone(),
                        p.service_account.clone(),
                        p.api_key.clone(),
                        p.strategy.to_string(),
                        time(p.last_rotated),
                        age(p.age_seconds),
                        time(p.next_due),
                        p.action.as_str().to_string(),
                        claim(p),
                        p.reason.clone(),
                    ]
                })
                .chain(hygiene_rows)
                .collect();
            table(
                &[
                    "POLICY",
                    "SERVICE ACCOUNT",
                    "API KEY",
                    "STRATEGY",
                    "LAST ROTATED",
                    "AGE",
                    "NEXT DUE",
                    "ACTION",
                    "CLAIMED BY",
                    "REASON",
                ],
                &rows,
            )
        }
    }
}

/// `holder until time`, or `-` while nobody holds the key's claim.
fn claim(p: &KeyPlan) -> String {
    match &p.claim_holder {
        Some(holder) => format!("{holder} until {}", time(p.claim_expires_at)),
        None => "-".into(),
    }
}
