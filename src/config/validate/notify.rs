//! `[[notify]]` tables and a key's hooks (`on_rotated`, `on_finalized`): checked like every other
//! part of the file, each problem at its place. A webhook URL obeys the cleartext rule of every
//! other URL (`endpoint`); no secret is ever inline, in a URL or in a hook's arguments.

use std::time::Duration;

use super::toolkit::Validator;
use crate::config::error::FieldPath;
use crate::config::raw::{RawHook, RawKey, RawNotify};
use crate::config::{
    Hook, HookStdin, KeyHooks, NoticeKind, NotifySink, NotifyTarget, WebhookFormat,
};

/// How long a hook may run when its table sets no `timeout`.
pub(crate) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn quoted(names: impl IntoIterator<Item = &'static str>) -> String {
    names
        .into_iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Validator<'_> {
    /// Every `[[notify]]`, in file order; a table with any problem is left out (and reported).
    pub(super) fn notify(&mut self, raw: &[RawNotify]) -> Vec<NotifySink> {
        let root = FieldPath::root().key("notify");
        raw.iter()
            .enumerate()
            .filter_map(|(i, n)| self.notify_sink(n, &root.index(i), i))
            .collect()
    }

    fn notify_sink(&mut self, raw: &RawNotify, at: &FieldPath, i: usize) -> Option<NotifySink> {
        let target = match (&raw.url, &raw.path) {
            (Some(_), Some(_)) => {
                self.err_key(
                    &at.key("path"),
                    "set either `url` (a webhook) or `path` (an audit file), not both: use two [[notify]] tables for both",
                );
                None
            }
            (None, None) => {
                self.err(
                    at,
                    "missing `url` (a webhook, e.g. \"https://hooks.example.com/zenml\") or `path` (an audit file)",
                );
                None
            }
            (Some(_), None) => self.webhook(raw, at),
            (None, Some(path)) => self.audit_file(raw, path, at),
        };
        let events = self.events(raw.events.as_deref(), &at.key("events"), raw.url.is_some());
        Some(NotifySink {
            label: format!("notify[{i}]"),
            target: target?,
            events: events?,
        })
    }

    fn webhook(&mut self, raw: &RawNotify, at: &FieldPath) -> Option<NotifyTarget> {
        let url = self.endpoint(
            raw.url.as_deref(),
            &at.key("url"),
            raw.allow_insecure_http.unwrap_or(false),
        );
        let format = match raw.format.as_deref() {
            None | Some("json") => Some(WebhookFormat::Json),
            Some("slack") => Some(WebhookFormat::Slack),
            Some(other) => {
                self.err(
                    &at.key("format"),
                    format!(
                        "unknown format {other:?}: use \"json\" (the event as it is) or \"slack\" ({{\"text\": ...}}, Slack and Mattermost)"
                    ),
                );
                None
            }
        };
        let (secret, given) = self.secret(
            at,
            "secret",
            raw.secret_env.as_deref(),
            raw.secret_file.as_deref(),
            raw.secret.is_some(),
        );
        let secret = match (secret, given) {
            (s @ Some(_), _) => Some(s),
            (None, false) => Some(None),
            (None, true) => None,
        };
        Some(NotifyTarget::Webhook {
            url: url?,
            format: format?,
            secret: secret?,
        })
    }

    fn audit_file(&mut self, raw: &RawNotify, path: &str, at: &FieldPath) -> Option<NotifyTarget> {
        let owner = "an audit file (`path`): it is written locally, unsigned";
        for (key, set) in [
            ("format", raw.format.is_some()),
            ("secret_env", raw.secret_env.is_some()),
            ("secret_file", raw.secret_file.is_some()),
            ("allow_insecure_http", raw.allow_insecure_http.is_some()),
        ] {
            if set {
                self.err_key(&at.key(key), format!("`{key}` does not apply to {owner}"));
            }
        }
        if raw.secret.is_some() {
            self.err_key(
                &at.key("secret"),
                "secrets are never inline, and an audit file (`path`) takes none",
            );
        }
        let path = self.local_path(Some(path), &at.key("path"))?;
        Some(NotifyTarget::Audit { path })
    }

    /// The `events` list; a webhook's default is failures only, an audit file's every event.
    fn events(
        &mut self,
        raw: Option<&[String]>,
        at: &FieldPath,
        webhook: bool,
    ) -> Option<Vec<NoticeKind>> {
        let Some(raw) = raw else {
            return Some(if webhook {
                NoticeKind::WEBHOOK_DEFAULT.to_vec()
            } else {
                NoticeKind::ALL.to_vec()
            });
        };
        if raw.is_empty() {
            self.err(
                at,
                "must name at least one event (to send nothing, remove the [[notify]] table)",
            );
            return None;
        }
        let mut ok = true;
        let mut wanted = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match NoticeKind::from_name(name) {
                Some(kind) => wanted.push(kind),
                None => {
                    ok = false;
                    self.err(
                        &at.index(i),
                        format!(
                            "unknown event {name:?}: use any of {}",
                            quoted(NoticeKind::ALL.map(NoticeKind::as_str))
                        ),
                    );
                }
            }
        }
        ok.then(|| {
            NoticeKind::ALL
                .into_iter()
                .filter(|k| wanted.contains(k))
                .collect()
        })
    }

    /// A key's `on_rotated` and `on_finalized`; None when either is invalid (reported).
    pub(super) fn key_hooks(&mut self, raw: &RawKey, at: &FieldPath) -> Option<KeyHooks> {
        // Outer None: not set (fine); inner None: set but invalid (reported).
        let on_rotated = raw
            .on_rotated
            .as_ref()
            .map(|h| self.hook(h, &at.key("on_rotated")));
        let on_finalized = raw
            .on_finalized
            .as_ref()
            .map(|h| self.hook(h, &at.key("on_finalized")));
        let valid = |h: Option<Option<Hook>>| h.map_or(Some(None), |h| h.map(Some));
        Some(KeyHooks {
            on_rotated: valid(on_rotated)?,
            on_finalized: valid(on_finalized)?,
        })
    }

    fn hook(&mut self, raw: &RawHook, at: &FieldPath) -> Option<Hook> {
        let command = self.hook_command(raw.command.as_deref(), &at.key("command"));
        let timeout = self.duration_or(
            raw.timeout.as_deref(),
            &at.key("timeout"),
            DEFAULT_HOOK_TIMEOUT,
        );
        let stdin = match raw.stdin.as_deref() {
            None | Some("none") => Some(HookStdin::None),
            Some("payload") => Some(HookStdin::Payload),
            Some(other) => {
                self.err(
                    &at.key("stdin"),
                    format!(
                        "unknown stdin {other:?}: use \"payload\" (ZENML_STORE_URL=... and ZENML_STORE_API_KEY=... on standard input) or \"none\""
                    ),
                );
                None
            }
        };
        Some(Hook {
            command: command?,
            timeout: timeout?,
            stdin: stdin?,
        })
    }

    /// The program (an absolute path: no shell, no PATH search) and its arguments, none of them
    /// key material: arguments are visible to every user of the host (`ps`).
    fn hook_command(&mut self, raw: Option<&[String]>, at: &FieldPath) -> Option<Vec<String>> {
        let Some(raw) = raw else {
            self.err(
                at,
                "missing `command`: the program and its arguments, e.g. [\"/usr/bin/systemctl\", \"try-reload-or-restart\", \"app.service\"]",
            );
            return None;
        };
        let Some(program) = raw.first() else {
            self.err(at, "must name a program to run");
            return None;
        };
        let mut ok = true;
        if !program.starts_with('/') || program.contains('\0') {
            self.err(
                &at.index(0),
                "must be an absolute path: a hook runs without a shell and without a PATH search",
            );
            ok = false;
        }
        for (i, arg) in raw.iter().enumerate() {
            if arg.contains("ZENKEY_") {
                self.err(
                    &at.index(i),
                    "looks like key material: arguments are visible to every user of the host; a hook gets the value only on standard input (stdin = \"payload\")",
                );
                ok = false;
            }
        }
        ok.then(|| raw.to_vec())
    }
}
