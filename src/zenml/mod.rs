//! A typed async client for the ZenML REST API (checked against a real 0.98 server): login and session
//! reuse, service accounts, API keys, rotation and key checks. Retries only what is safe to repeat, times
//! every request into `upstream_request_duration_seconds`, and never lets a credential into an error.
//!
//! Here: the public types and the client. Beside it: `session` (logging in), `transport` (sending,
//! retries), `accounts` (server, users, service accounts), `keys` (API keys), `wire` (the JSON
//! shapes), `error` (what can go wrong).

mod accounts;
mod error;
mod keys;
mod session;
#[cfg(test)]
mod tests;
mod transport;
mod wire;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;
use url::Url;
use uuid::Uuid;

pub use error::{Operation, ZenmlError, error_message};
pub use keys::key_id_from_value;

use crate::secret::{SecretString, fingerprint};
use session::Session;

/// How the client logs in.
#[derive(Clone)]
pub enum Credentials {
    /// A user; on open-source servers only admin users may manage API keys.
    Password {
        username: String,
        password: SecretString,
    },
    /// A service account API key (`ZENKEY_...`), for servers with RBAC.
    ApiKey(SecretString),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"[redacted]")
                .finish(),
            Credentials::ApiKey(_) => f.debug_tuple("ApiKey").field(&"[redacted]").finish(),
        }
    }
}

impl Credentials {
    fn secret(&self) -> &SecretString {
        match self {
            Credentials::Password { password, .. } => password,
            Credentials::ApiKey(key) => key,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Limit on each request, connect to last byte.
    pub timeout: Duration,
    /// An extra PEM bundle to trust (TLS verification stays on).
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerInfo {
    pub id: Uuid,
    #[serde(default)]
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub auth_scheme: String,
    #[serde(default)]
    pub deployment_type: Option<String>,
    #[serde(default)]
    pub database_type: Option<String>,
    #[serde(default)]
    pub server_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub active: bool,
    pub is_service_account: bool,
    pub is_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAccount {
    pub id: Uuid,
    pub name: String,
    pub active: bool,
    pub created: DateTime<Utc>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub active: bool,
    pub created: DateTime<Utc>,
    /// Changes on every login with the key (the server writes last_login): not a sign of rotation.
    pub updated: DateTime<Utc>,
    pub service_account_id: Uuid,
    pub service_account_name: String,
    pub retain_period_minutes: Option<i64>,
    pub last_login: Option<DateTime<Utc>>,
    pub last_rotated: Option<DateTime<Utc>>,
}

/// A key together with its value, as only the create and rotate responses carry it.
#[derive(Clone)]
pub struct NewApiKey {
    pub key: ApiKey,
    pub value: SecretString,
}

impl NewApiKey {
    /// The key as a rotation left it, given the key as read just before: a rotation changes
    /// neither the description nor `last_login`, which its answer does not carry.
    pub fn as_before(mut self, before: &ApiKey) -> NewApiKey {
        self.key.description.clone_from(&before.description);
        self.key.last_login = before.last_login;
        self
    }
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key", &self.key)
            .field("value_fingerprint", &fingerprint(&self.value))
            .finish()
    }
}

/// Narrows `list_api_keys`; the default lists every key of the service account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub name_startswith: Option<String>,
    pub active: Option<bool>,
}

/// The fields `update_api_key` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiKeyUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// The server's verdict on a key or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Accepted,
    Rejected,
}

const DEFAULT_PAGE_SIZE: u32 = 1000;
const MAX_PAGE_SIZE: u32 = 10_000;

/// One client per ZenML server; clones share the HTTP connection pool and the login session.
#[derive(Clone)]
pub struct ZenmlClient {
    inner: Arc<Inner>,
    page_size: u32,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    base_url: String,
    creds: Credentials,
    timeout: Duration,
    /// The cached session; the lock is held across a login so concurrent callers share one.
    session: Mutex<Option<Arc<Session>>>,
    generations: AtomicU64,
}

impl fmt::Debug for ZenmlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZenmlClient")
            .field("base_url", &self.inner.base_url)
            .field("credentials", &self.inner.creds)
            .field("timeout", &self.inner.timeout)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl ZenmlClient {
    pub fn new(
        base_url: &str,
        creds: Credentials,
        opts: ClientOptions,
    ) -> Result<Self, ZenmlError> {
        let base = parse_base_url(base_url)?;
        let http = crate::http::client(opts.timeout, opts.ca_file.as_deref())
            .map_err(|e| ZenmlError::Setup(e.to_string()))?;
        let base_url = base.as_str().trim_end_matches('/').to_owned();
        Ok(ZenmlClient {
            inner: Arc::new(Inner {
                http,
                base,
                base_url,
                creds,
                timeout: opts.timeout,
                session: Mutex::new(None),
                generations: AtomicU64::new(0),
            }),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// The server URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Lists fetch pages of this many items (1..=10000; the default is 1000).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, MAX_PAGE_SIZE);
        self
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        // The base URL was checked to be a hierarchical http(s) URL, which always has path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }
}

fn parse_base_url(base_url: &str) -> Result<Url, ZenmlError> {
    let url = Url::parse(base_url.trim())
        .map_err(|e| ZenmlError::Setup(format!("the ZenML url {base_url:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ZenmlError::Setup(format!(
            "the ZenML url {base_url:?} must start with https:// (or http://)"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo the URL: it holds a credential.
        return Err(ZenmlError::Setup(
            "the ZenML url must not contain a user or password; use the credential settings"
                .to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ZenmlError::Setup(format!(
            "the ZenML url {base_url:?} must not have a query or fragment"
        )));
    }
    Ok(url)
}
