//! `revoke`: what was cut off, what is stored now, and who must reload before it works again.

use super::{OutputFormat, json};
use crate::config::{KeyPolicy, Strategy};
use crate::engine::failure::Outcome;
use crate::engine::revoke::Revocation;

/// Who is cut off until they read the new value, for people.
fn cut_off(policy: &KeyPolicy, r: &Revocation, store_kind: &str) -> Vec<String> {
    let old = r
        .old_key
        .as_ref()
        .map(|(name, id)| format!("key {name:?} ({id})"))
        .unwrap_or_else(|| "the old key".into());
    let mut who = vec![format!(
        "every workload that read {} from {store_kind} store {:?} before now and has not reloaded: it holds {}",
        policy.path,
        policy.store,
        r.leaked
            .as_deref()
            .unwrap_or("a value the store no longer has")
    )];
    who.push(match policy.strategy {
        // One key generation serves leaked and honest sessions alike.
        Strategy::Rotate => format!(
            "every session (token) logged in with {old}, honest ones included: ZenML cannot tell them apart, so they log in again with the new value"
        ),
        Strategy::Replace => format!(
            "every session (token) logged in with {old}, now deactivated and its value rotated away"
        ),
    });
    who
}

pub fn render(
    policy: &KeyPolicy,
    r: &Revocation,
    store_kind: &str,
    format: OutputFormat,
) -> String {
    let hooks: Vec<(&str, &str)> = r
        .hooks
        .iter()
        .filter_map(|o| match o {
            Outcome::HookRan { detail, .. } => Some(("ran", detail.as_str())),
            Outcome::HookFailed { detail, .. } => Some(("failed", detail.as_str())),
            _ => None,
        })
        .collect();
    let who = cut_off(policy, r, store_kind);
    match format {
        OutputFormat::Json => json(&serde_json::json!({
            "policy": policy.name,
            "strategy": policy.strategy.as_str(),
            "leaked_fingerprint": r.leaked,
            "old_key_id": r.old_key.as_ref().map(|k| &k.1),
            "api_key": r.new_key.0,
            "key_id": r.new_key.1,
            "fingerprint": r.new_fingerprint,
            "detail": r.detail,
            "cut_off_until_reload": who,
            "hooks": hooks.iter().map(|(result, detail)| serde_json::json!({"result": result, "detail": detail})).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            let mut out = format!("{}\n\nCut off until they reload the new value:\n", r.detail);
            for w in &who {
                out.push_str(&format!("  - {w}\n"));
            }
            if hooks.is_empty() && policy.hooks.on_rotated.is_none() {
                out.push_str("No on_rotated hook: tell the consumers to reload now.\n");
            }
            for (result, detail) in hooks {
                out.push_str(&format!("hook {result}: {detail}\n"));
            }
            out
        }
    }
}
