//! `once` and `rotate`: what the pass did, one row per step of each key, then `[hygiene]`'s rows
//! (policy "hygiene").

use super::{OutputFormat, json, table};
use crate::audit::hygiene::HygieneResult;
use crate::engine::events::HYGIENE;
use crate::engine::failure::{KeyReport, Outcome};

fn describe(o: &Outcome) -> (String, String) {
    match o {
        Outcome::Rotated {
            key_id,
            fingerprint,
        } => (
            "rotated".into(),
            format!("key {key_id}: new value {fingerprint} stored and verified"),
        ),
        Outcome::Finalized { detail } => ("finalized".into(), detail.clone()),
        Outcome::Recovered { detail, .. } => ("recovered".into(), detail.clone()),
        Outcome::Waited { reason } => ("wait".into(), reason.clone()),
        Outcome::WouldDo { action, reason } => {
            (format!("would {}", action.as_str()), reason.clone())
        }
        Outcome::HookRan { detail, .. } => ("hook ran".into(), detail.clone()),
        Outcome::HookFailed { detail, .. } => ("hook failed".into(), detail.clone()),
    }
}

pub fn render(reports: &[KeyReport], hygiene: &[HygieneResult], format: OutputFormat) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for r in reports {
        match &r.result {
            Ok(outcomes) => {
                for o in outcomes {
                    let (result, detail) = describe(o);
                    rows.push((r.policy.clone(), result, detail));
                }
            }
            Err(f) => rows.push((r.policy.clone(), "failed".into(), f.to_string())),
        }
    }
    for h in hygiene {
        rows.push((HYGIENE.to_string(), h.result.to_string(), h.detail.clone()));
    }
    match format {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(p, r, d)| serde_json::json!({"policy": p, "result": r, "detail": d}))
                .collect();
            json(&v)
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(p, r, d)| vec![p, r, d]).collect();
            table(&["POLICY", "RESULT", "DETAIL"], &rows)
        }
    }
}
