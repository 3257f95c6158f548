//! Vault's answers as store errors: which failures are a refusal, a conflict, an outage or a bug,
//! with Vault's own message and never a response body (it can hold the secret).

use vaultrs::error::ClientError;

use super::VaultStore;
use crate::store::{StoreError, StoreErrorKind};

impl VaultStore {
    /// Maps a vaultrs error to a store error. Never formats the error with `Debug`: a parse error
    /// carries the response body, which can hold the secret.
    pub(super) fn map_error(&self, op: &'static str, path: &str, e: ClientError) -> StoreError {
        match e {
            ClientError::APIError { code, errors } => self.status_error(op, path, code, &errors),
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    self.status_error(op, path, code, &[])
                }
                rustify::errors::ClientError::RequestError { source, .. } => {
                    let timed_out = source
                        .chain()
                        .filter_map(|c| c.downcast_ref::<reqwest::Error>())
                        .any(reqwest::Error::is_timeout);
                    self.unreachable(op, path, timed_out, &format!("{source:#}"))
                }
                other => self.other(op, path, format!("unexpected response from Vault: {other}")),
            },
            other => self.other(op, path, format!("unexpected response from Vault: {other}")),
        }
    }

    pub(super) fn unreachable(
        &self,
        op: &'static str,
        path: &str,
        timed_out: bool,
        detail: &str,
    ) -> StoreError {
        let message = if timed_out {
            format!("no answer from {} within {:?}", self.address, self.timeout)
        } else {
            format!("cannot reach {}: {detail}", self.address)
        };
        self.error(StoreErrorKind::Unavailable, op, path, message)
    }

    pub(super) fn status_error(
        &self,
        op: &'static str,
        path: &str,
        code: u16,
        errors: &[String],
    ) -> StoreError {
        let text = errors
            .iter()
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("; ");
        let text = text.trim_start_matches("1 error occurred: * ").to_owned();
        let (kind, message) = match code {
            401 | 403 => (
                StoreErrorKind::PermissionDenied,
                format!(
                    "{} (the token is invalid or expired, or its policies do not allow this)",
                    if text.is_empty() { "HTTP 403" } else { &text }
                ),
            ),
            400 if text.contains("check-and-set") => (StoreErrorKind::Conflict, text),
            // A standby that does not forward requests redirects to the active node; following
            // would hand it the token and the body (a login, a key) unchecked.
            300..=399 => (
                StoreErrorKind::Unavailable,
                format!(
                    "HTTP {code}: Vault answered with a redirect (a standby node that does not forward requests?); the rotator follows none, so that neither the token nor a key reaches another server: set address to the active node or the load balancer in front of it"
                ),
            ),
            429 | 502 | 503 | 504 => (
                StoreErrorKind::Unavailable,
                format!(
                    "HTTP {code}{}",
                    if text.is_empty() {
                        " (sealed, in standby or overloaded)".to_owned()
                    } else {
                        format!(": {text}")
                    }
                ),
            ),
            _ if text.is_empty() => (StoreErrorKind::Other, format!("HTTP {code}")),
            _ => (StoreErrorKind::Other, format!("HTTP {code}: {text}")),
        };
        self.error(kind, op, path, message)
    }
}

pub(super) fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}
