//! What the policy file says about telling others: `[[notify]]` (webhooks and audit files, and
//! which events each wants) and a key's hooks (`on_rotated`, `on_finalized`). Validated types
//! only; `validate/notify.rs` builds them from the file.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::SecretSource;

/// The events a `[[notify]]` table may ask for: the names of the `events` list and of the
/// `event` field of every body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeKind {
    /// A new value is stored, read back equal and accepted by ZenML.
    Rotated,
    /// The previous value is confirmed rejected (or the replaced key deactivated) after its window.
    Finalized,
    /// An API key was taken out of service (a replaced key, an orphan, an unused key, a revocation).
    Deactivated,
    /// An API key was deleted (`replace`: an orphan of an interrupted run, or a deactivated key
    /// past `delete_after`).
    Deleted,
    /// A rotation whose new value nobody kept was healed.
    Recovered,
    /// `revoke`: a leaked value and every token minted from it were cut off.
    Revoked,
    /// A key's part of a pass failed.
    Failed,
    /// A key needs a person (`plan` action `blocked`).
    Blocked,
    /// A hook failed or timed out.
    HookFailed,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 9] = [
        NoticeKind::Rotated,
        NoticeKind::Finalized,
        NoticeKind::Deactivated,
        NoticeKind::Deleted,
        NoticeKind::Recovered,
        NoticeKind::Revoked,
        NoticeKind::Failed,
        NoticeKind::Blocked,
        NoticeKind::HookFailed,
    ];

    /// What a webhook gets when its table names no `events`.
    pub const WEBHOOK_DEFAULT: [NoticeKind; 2] = [NoticeKind::Failed, NoticeKind::Blocked];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Rotated => "rotated",
            NoticeKind::Finalized => "finalized",
            NoticeKind::Deactivated => "deactivated",
            NoticeKind::Deleted => "deleted",
            NoticeKind::Recovered => "recovered",
            NoticeKind::Revoked => "revoked",
            NoticeKind::Failed => "failed",
            NoticeKind::Blocked => "blocked",
            NoticeKind::HookFailed => "hook_failed",
        }
    }

    pub fn from_name(name: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One `[[notify]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySink {
    /// `notify[N]`: the table's place in the file, the `sink` label of
    /// `notifications_failed_total` and the name in log lines (a webhook URL may carry a token
    /// in its path, as Slack's do, so it is never logged whole).
    pub label: String,
    pub target: NotifyTarget,
    /// The events this sink gets, in `NoticeKind::ALL` order.
    pub events: Vec<NoticeKind>,
}

impl NotifySink {
    pub fn wants(&self, kind: NoticeKind) -> bool {
        self.events.contains(&kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// `url`: an HTTP POST of each event.
    Webhook {
        url: String,
        format: WebhookFormat,
        /// `secret_env`/`secret_file`: signs each body (`X-Zenml-Rotator-Signature`).
        secret: Option<SecretSource>,
    },
    /// `path`: JSON lines appended to a file (0600).
    Audit { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The event body as it is.
    Json,
    /// `{"text": ...}`: Slack and Mattermost incoming webhooks.
    Slack,
}

/// A key's hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHooks {
    pub on_rotated: Option<Hook>,
    pub on_finalized: Option<Hook>,
}

/// One hook: a command run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The program (an absolute path) and its arguments.
    pub command: Vec<String>,
    /// Killed (with everything it started) after this long (default 60s).
    pub timeout: Duration,
    pub stdin: HookStdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookStdin {
    /// Standard input is empty (`/dev/null`).
    None,
    /// `ZENML_STORE_URL=...` and `ZENML_STORE_API_KEY=...`, one a line: the only way a hook gets
    /// the value.
    Payload,
}
