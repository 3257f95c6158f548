//! What can go wrong talking to ZenML: one error type that names the operation, says what happened and
//! what to do, and carries the server's own message (never a key, password or token).
//! Also the parsing of every error body shape the 0.98 server sends.

use std::fmt;
use std::time::Duration;

use crate::secret::{ExposeSecret, SecretString};

/// Every request the client makes. `Display` is the phrase used in errors ("rotate API key");
/// `metric_name` is the bounded `operation` label of `upstream_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Login,
    LoginWithApiKey,
    ServerInfo,
    Version,
    CurrentUser,
    CheckKey,
    CheckToken,
    ListServiceAccounts,
    GetServiceAccount,
    CreateServiceAccount,
    UpdateServiceAccount,
    DeleteServiceAccount,
    ListApiKeys,
    GetApiKey,
    CreateApiKey,
    UpdateApiKey,
    RotateApiKey,
    DeleteApiKey,
}

impl Operation {
    pub fn metric_name(self) -> &'static str {
        match self {
            Operation::Login => "login",
            Operation::LoginWithApiKey => "login_with_api_key",
            Operation::ServerInfo => "server_info",
            Operation::Version => "version",
            Operation::CurrentUser => "current_user",
            Operation::CheckKey => "check_key",
            Operation::CheckToken => "check_token",
            Operation::ListServiceAccounts => "list_service_accounts",
            Operation::GetServiceAccount => "get_service_account",
            Operation::CreateServiceAccount => "create_service_account",
            Operation::UpdateServiceAccount => "update_service_account",
            Operation::DeleteServiceAccount => "delete_service_account",
            Operation::ListApiKeys => "list_api_keys",
            Operation::GetApiKey => "get_api_key",
            Operation::CreateApiKey => "create_api_key",
            Operation::UpdateApiKey => "update_api_key",
            Operation::RotateApiKey => "rotate_api_key",
            Operation::DeleteApiKey => "delete_api_key",
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            Operation::Login => "log in to ZenML",
            Operation::LoginWithApiKey => "log in with an API key",
            Operation::ServerInfo => "read server info",
            Operation::Version => "read server version",
            Operation::CurrentUser => "read the current user",
            Operation::CheckKey => "check API key",
            Operation::CheckToken => "check access token",
            Operation::ListServiceAccounts => "list service accounts",
            Operation::GetServiceAccount => "get service account",
            Operation::CreateServiceAccount => "create service account",
            Operation::UpdateServiceAccount => "update service account",
            Operation::DeleteServiceAccount => "delete service account",
            Operation::ListApiKeys => "list API keys",
            Operation::GetApiKey => "get API key",
            Operation::CreateApiKey => "create API key",
            Operation::UpdateApiKey => "update API key",
            Operation::RotateApiKey => "rotate API key",
            Operation::DeleteApiKey => "delete API key",
        }
    }

    /// Operations whose effect is unknown after a lost answer: a retry could act twice.
    pub fn acts_once(self) -> bool {
        matches!(
            self,
            Operation::CreateServiceAccount
                | Operation::DeleteServiceAccount
                | Operation::CreateApiKey
                | Operation::RotateApiKey
                | Operation::DeleteApiKey
        )
    }

    /// After a lost answer to a state-changing call, the operator must look before trying again.
    fn lost_answer_hint(self) -> &'static str {
        if self.acts_once() {
            "; the server may have acted: check its state before trying again"
        } else {
            ""
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZenmlError {
    #[error("cannot set up the ZenML client: {0}")]
    Setup(String),

    #[error("{op}: not found on the ZenML server: {message}")]
    NotFound { op: Operation, message: String },

    #[error(
        "{op}: ZenML rejected the credentials: {message} (check the username and password or API key)"
    )]
    Unauthorized { op: Operation, message: String },

    #[error(
        "{op}: ZenML refused: {message} (open-source ZenML lets only admin users manage API keys: log in as an admin user)"
    )]
    Forbidden { op: Operation, message: String },

    #[error("{op}: already exists on the ZenML server: {message}")]
    Conflict { op: Operation, message: String },

    #[error("{op}: ZenML rate-limited the request {attempts} time(s): {message}; try again later{}",
        retry_after.map(|d| format!(" (it asked to wait {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited {
        op: Operation,
        message: String,
        retry_after: Option<Duration>,
        attempts: u32,
    },

    #[error("{op}: ZenML rejected the request (HTTP {status}): {message}")]
    Invalid {
        op: Operation,
        status: u16,
        message: String,
    },

    #[error("{op}: the ZenML server answered with a redirect (HTTP {status}{}); the rotator follows none, so that no credential reaches another server: set [zenml] url to the address that answers",
        to.as_ref().map(|t| format!(" to {t}")).unwrap_or_default())]
    Redirected {
        op: Operation,
        status: u16,
        /// `scheme://host:port` of the `Location`, never its path or query.
        to: Option<String>,
    },

    #[error("{op}: ZenML server error (HTTP {status}): {message}; the server may be overloaded or restarting{}", op.lost_answer_hint())]
    Server {
        op: Operation,
        status: u16,
        message: String,
    },

    #[error("{op}: cannot talk to the ZenML server: {detail}; check the url, the network and the TLS settings (ca_file){}", op.lost_answer_hint())]
    Transport { op: Operation, detail: String },

    #[error("{op}: no answer from the ZenML server within {}s{}", timeout.as_secs_f32(), op.lost_answer_hint())]
    Timeout { op: Operation, timeout: Duration },

    #[error("{op}: unexpected response from the ZenML server{}: {detail}; is the url a ZenML 0.9x server?",
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Decode {
        op: Operation,
        status: Option<u16>,
        detail: String,
    },
}

impl ZenmlError {
    /// Failures that may pass on their own: transport, timeout, 5xx, 429. A caller must still not
    /// repeat a rotate or create after a transport error or timeout without looking first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ZenmlError::Transport { .. }
                | ZenmlError::Timeout { .. }
                | ZenmlError::Server { .. }
                | ZenmlError::RateLimited { .. }
        )
    }

    /// The HTTP status the server answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ZenmlError::NotFound { .. } => Some(404),
            ZenmlError::Unauthorized { .. } => Some(401),
            ZenmlError::Forbidden { .. } => Some(403),
            ZenmlError::Conflict { .. } => Some(409),
            ZenmlError::RateLimited { .. } => Some(429),
            ZenmlError::Invalid { status, .. }
            | ZenmlError::Redirected { status, .. }
            | ZenmlError::Server { status, .. } => Some(*status),
            ZenmlError::Decode { status, .. } => *status,
            ZenmlError::Setup(_) | ZenmlError::Transport { .. } | ZenmlError::Timeout { .. } => {
                None
            }
        }
    }

    /// The operation that failed (`None` only for client setup).
    pub fn operation(&self) -> Option<Operation> {
        match self {
            ZenmlError::Setup(_) => None,
            ZenmlError::NotFound { op, .. }
            | ZenmlError::Unauthorized { op, .. }
            | ZenmlError::Forbidden { op, .. }
            | ZenmlError::Conflict { op, .. }
            | ZenmlError::RateLimited { op, .. }
            | ZenmlError::Invalid { op, .. }
            | ZenmlError::Redirected { op, .. }
            | ZenmlError::Server { op, .. }
            | ZenmlError::Transport { op, .. }
            | ZenmlError::Timeout { op, .. }
            | ZenmlError::Decode { op, .. } => Some(*op),
        }
    }

    /// The error for a non-success answer (429 is built by the retry loop, which knows the attempts).
    pub(super) fn from_status(op: Operation, status: u16, message: String) -> Self {
        match status {
            401 => ZenmlError::Unauthorized { op, message },
            403 => ZenmlError::Forbidden { op, message },
            404 => ZenmlError::NotFound { op, message },
            409 => ZenmlError::Conflict { op, message },
            429 => ZenmlError::RateLimited {
                op,
                message,
                retry_after: None,
                attempts: 1,
            },
            500..=599 => ZenmlError::Server {
                op,
                status,
                message,
            },
            _ => ZenmlError::Invalid {
                op,
                status,
                message,
            },
        }
    }
}

/// Server messages can be long (422s carry a Python traceback location); keep what a person needs.
const MAX_MESSAGE_CHARS: usize = 400;

/// The human message of an error body, whatever its shape:
/// `{"detail": ["Class", "msg"]}`, `{"detail": "msg"}`, a bare `["Class", "msg"]` (422),
/// FastAPI's `{"detail": [{"msg": ..}, ..]}`, other JSON, text, or nothing.
pub fn error_message(body: &[u8]) -> String {
    let message = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => message_from_json(&json),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty response body)".to_owned()
            } else {
                text.lines().next().unwrap_or_default().trim().to_owned()
            }
        }
    };
    tidy(&message)
}

fn message_from_json(json: &serde_json::Value) -> String {
    use serde_json::Value;
    match json {
        Value::Object(map) => match map.get("detail") {
            Some(detail) => message_from_json(detail),
            None => json.to_string(),
        },
        Value::String(s) => s.clone(),
        // ZenML's ["ExceptionClass", "message"] pair, with or without the "detail" wrapper.
        Value::Array(items) => match items.as_slice() {
            [Value::String(_class), Value::String(msg)] => msg.clone(),
            _ if items.iter().all(|i| i.get("msg").is_some()) && !items.is_empty() => items
                .iter()
                .filter_map(|i| i.get("msg").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("; "),
            _ => json.to_string(),
        },
        Value::Null => "(empty error body)".to_owned(),
        other => other.to_string(),
    }
}

/// Drops the traceback tail of 422 messages, the Python repr quotes of KeyError messages, and length.
fn tidy(message: &str) -> String {
    let message = message
        .split("\n\n  File ")
        .next()
        .unwrap_or(message)
        .trim();
    let unquoted = message
        .strip_prefix('"')
        .and_then(|m| m.strip_suffix('"'))
        .or_else(|| {
            message
                .strip_prefix('\'')
                .and_then(|m| m.strip_suffix('\''))
        })
        .unwrap_or(message);
    let collapsed = unquoted.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = collapsed.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}…")
    } else {
        collapsed
    }
}

/// Removes anything that looks like a credential from a message meant for people: every given
/// secret, any `ZENKEY_...` value and any JWT (`eyJ...`). Belt and braces: the server does not echo
/// credentials today, but a proxy or a future server might.
pub(super) fn scrub(message: &str, secrets: &[&SecretString]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        let value = secret.expose_secret();
        if value.len() >= 4 && out.contains(value) {
            out = out.replace(value, "[redacted]");
        }
    }
    scrub_prefixed(&scrub_prefixed(&out, "ZENKEY_"), "eyJ")
}

fn scrub_prefixed(message: &str, prefix: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "+/=_-.".contains(c);
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(prefix) {
        let starts_word = rest[..at].chars().last().is_none_or(|c| !is_token_char(c));
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_token_char(c)).unwrap_or(tail.len());
        if starts_word && end > prefix.len() + 8 {
            out.push_str(prefix);
            out.push_str("[redacted]");
        } else {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
