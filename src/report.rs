//! Output meant for people (aligned tables) and for scripts (`--output json`): the same facts.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::decide::KeyPlan;
use crate::hygiene::{self, HygieneResult};
use crate::rotation::{KeyReport, Outcome};

/// `--output table|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// A table with a header row; the last column is never padded (it holds sentences).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cols {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// `93784` -> `1d2h`; coarse on purpose, the JSON has the exact seconds.
pub fn age(seconds: Option<i64>) -> String {
    let Some(s) = seconds else {
        return "-".into();
    };
    let neg = s < 0;
    let s = s.unsigned_abs();
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    let text = if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    };
    if neg { format!("-{text}") } else { text }
}

pub fn plan(plans: &[KeyPlan], format: OutputFormat) -> String {
    plan_with_hygiene(plans, &[], format)
}

/// `plan` with `[hygiene]`: its rows follow the per-key rows, with the same fields (JSON: one
/// array still; a hygiene row has `policy` "hygiene", `strategy` null, `action` "deactivate" or
/// "report", and `api_key`/`key_id` null when it is about a service account).
pub fn plan_with_hygiene(
    plans: &[KeyPlan],
    hygiene: &[hygiene::PlanRow],
    format: OutputFormat,
) -> String {
    match format {
        OutputFormat::Json => {
            let mut rows: Vec<serde_json::Value> = plans
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect();
            rows.extend(hygiene.iter().filter_map(|h| serde_json::to_value(h).ok()));
            let mut s = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
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
                    "REASON",
                ],
                &rows,
            )
        }
    }
}

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
        Outcome::Waited { reason } => ("wait".into(), reason.clone()),
        Outcome::WouldDo { action, reason } => {
            (format!("would {}", action.as_str()), reason.clone())
        }
    }
}

/// The result of a pass, one row per step of each key.
pub fn pass(reports: &[KeyReport], format: OutputFormat) -> String {
    pass_with_hygiene(reports, &[], format)
}

/// A pass followed by `[hygiene]`'s rows (policy "hygiene").
pub fn pass_with_hygiene(
    reports: &[KeyReport],
    hygiene: &[HygieneResult],
    format: OutputFormat,
) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for r in reports {
        match &r.result {
            Ok(outcomes) => {
                for o in outcomes {
                    let (result, detail) = describe(o);
                    rows.push((r.policy.clone(), result, detail));
                }
            }
            Err(f) => rows.push((
                r.policy.clone(),
                "failed".into(),
                format!("{}: {}", f.stage.as_str(), f.message),
            )),
        }
    }
    for h in hygiene {
        rows.push((
            hygiene::LABEL.to_string(),
            h.result.to_string(),
            h.detail.clone(),
        ));
    }
    match format {
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(p, r, d)| serde_json::json!({"policy": p, "result": r, "detail": d}))
                .collect();
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(p, r, d)| vec![p, r, d]).collect();
            table(&["POLICY", "RESULT", "DETAIL"], &rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_leaves_the_last_column_free() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "a long sentence".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   a long sentence\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(Some(93784)), "1d2h");
        assert_eq!(age(Some(3700)), "1h1m");
        assert_eq!(age(Some(59)), "59s");
        assert_eq!(age(None), "-");
    }
}
