//! A `[[notify]]` webhook: each event is one HTTP POST (the JSON body, or Slack's `{"text": ...}`),
//! signed when the table names a secret (`X-Zenml-Rotator-Signature: sha256=<hex HMAC-SHA256 of
//! the body>`, GitHub's convention). A failed attempt is retried with backoff for a bounded time;
//! one that finally fails is logged and counted, and nothing else happens: a rotation never waits
//! for, or fails because of, a notification. Only `scheme://host:port` of the URL is ever logged:
//! a webhook's path is often its credential (Slack, Mattermost).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::WebhookFormat;
use crate::metrics;
use crate::secret::{ExposeSecret, SecretSource, SecretString};

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Zenml-Rotator-Signature";

/// One attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries stop this long after the first attempt (a one-shot command waits less: `EXIT_WAIT`).
const RETRY_FOR: Duration = Duration::from_secs(10 * 60);
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

pub struct Webhook {
    label: String,
    url: String,
    /// `scheme://host:port`, for logs.
    shown: String,
    format: WebhookFormat,
    secret: Result<Option<SecretString>, String>,
    client: Result<reqwest::Client, String>,
}

/// Why one attempt failed, and whether another may succeed.
struct AttemptError {
    message: String,
    retry: bool,
}

impl Webhook {
    pub fn new(
        label: &str,
        url: &str,
        format: WebhookFormat,
        secret: Option<&SecretSource>,
    ) -> Webhook {
        let shown = url::Url::parse(url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port_or_known_default() {
                    Some(port) => format!("{}://{host}:{port}", u.scheme()),
                    None => format!("{}://{host}", u.scheme()),
                })
            })
            .unwrap_or_else(|| "(unparsable URL)".to_owned());
        let secret = match secret.map(SecretSource::read) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s)),
            Some(Err(e)) => {
                let message = format!("cannot read the signing secret: {e}");
                tracing::error!(sink = label, url = %shown, "{message}; its deliveries fail until the secret is readable and the policy reloaded");
                Err(message)
            }
        };
        let client = crate::http::client(ATTEMPT_TIMEOUT, None).map_err(|e| e.to_string());
        Webhook {
            label: label.to_owned(),
            url: url.to_owned(),
            shown,
            format,
            secret,
            client,
        }
    }

    /// Delivers one event, retrying within `RETRY_FOR`; logs and counts a final failure.
    pub async fn deliver(&self, body: &serde_json::Value, summary: &str) {
        let payload = match self.format {
            WebhookFormat::Json => body.to_string(),
            WebhookFormat::Slack => serde_json::json!({ "text": summary }).to_string(),
        };
        let started = tokio::time::Instant::now();
        let mut delay = FIRST_DELAY;
        let mut attempts = 0u32;
        let failure = loop {
            attempts += 1;
            match self.attempt(&payload).await {
                Ok(()) => {
                    tracing::debug!(sink = %self.label, url = %self.shown, attempts, event = %body["event"], "notification delivered");
                    return;
                }
                Err(e) if e.retry && started.elapsed() + delay < RETRY_FOR => {
                    tracing::debug!(sink = %self.label, url = %self.shown, attempts, error = %e.message, "notification not delivered; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_DELAY);
                }
                Err(e) => break e.message,
            }
        };
        metrics::get()
            .notifications_failed_total
            .with_label_values(&[&self.label])
            .inc();
        tracing::error!(sink = %self.label, url = %self.shown, attempts, event = %body["event"],
            policy = %body["policy"], error = %failure, "notification not delivered; given up");
    }

    async fn attempt(&self, payload: &str) -> Result<(), AttemptError> {
        let permanent = |message: String| AttemptError {
            message,
            retry: false,
        };
        let client = self.client.as_ref().map_err(|e| permanent(e.clone()))?;
        let secret = self.secret.as_ref().map_err(|e| permanent(e.clone()))?;
        let mut request = client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_owned());
        if let Some(secret) = secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, payload.as_bytes()));
        }
        let response = request.send().await.map_err(|e| AttemptError {
            // reqwest's message names the URL, path included: keep only what it says happened.
            message: describe_send_error(&e),
            retry: true,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(AttemptError {
            message: match status.as_u16() {
                300..=399 => format!(
                    "HTTP {status}: the receiver answered with a redirect, which is never followed; set `url` to the address that answers"
                ),
                _ => format!("HTTP {status}"),
            },
            retry: status.is_server_error() || matches!(status.as_u16(), 408 | 429),
        })
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn describe_send_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed (connection closed or unreadable answer)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_githubs_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let s = signature(&SecretString::from("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_scheme_host_and_port_are_shown() {
        let w = Webhook::new(
            "notify[0]",
            "https://hooks.slack.com/services/T0/B0/token-in-the-path",
            WebhookFormat::Slack,
            None,
        );
        assert_eq!(w.shown, "https://hooks.slack.com:443");
    }
}
