//! A typed async client for the ZenML REST API (checked against a real 0.98 server): login and session
//! reuse, service accounts, API keys, rotation and key checks. Retries only what is safe to repeat, times
//! every request into `upstream_request_duration_seconds`, and never lets a credential into an error.

mod error;
mod wire;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

pub use error::{Operation, ZenmlError, error_message};

use crate::secret::{ExposeSecret, SecretString, fingerprint};
use error::scrub;

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

/// The id of the key a `ZENKEY_` value belongs to, read from the value itself (no request).
/// The value is `ZENKEY_` + base64 of `{"id": "<uuid>", "key": "<hex>"}`; the id survives rotation.
pub fn key_id_from_value(value: &SecretString) -> Option<Uuid> {
    let encoded = value.expose_secret().trim().strip_prefix("ZENKEY_")?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .ok()?,
    );
    serde_json::from_slice::<wire::KeyValuePayload>(&decoded)
        .ok()
        .map(|p| p.id)
}

const DEFAULT_PAGE_SIZE: u32 = 1000;
const MAX_PAGE_SIZE: u32 = 10_000;
/// A runaway `total_pages` must not loop forever: 10 000 pages of 10 000 is far beyond any server.
const MAX_PAGES: u32 = 10_000;
/// Attempts per request for failures that may pass (429, and 5xx/transport/timeout on safe calls).
const MAX_ATTEMPTS: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A server asking for a longer pause than this gets an error instead: the caller's own per-key
/// backoff is the better place to wait that long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Log in again this long before a token's expiry rather than wait for the 401.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

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

struct Session {
    token: SecretString,
    generation: u64,
    refresh_at: Option<Instant>,
}

impl Session {
    fn is_fresh(&self) -> bool {
        self.refresh_at.is_none_or(|at| Instant::now() < at)
    }
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

/// Who a request authenticates as.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    /// The client's cached session token (logging in first if needed; again on a 401).
    Session,
    /// This exact bearer value (a key or token under test); a 401 is the answer, not a cue to log in.
    Bearer(&'a SecretString),
}

enum Body<'a> {
    Empty,
    Json(serde_json::Value),
    Login(LoginForm<'a>),
}

#[derive(Clone, Copy)]
enum LoginForm<'a> {
    Password {
        username: &'a str,
        password: &'a SecretString,
    },
    ApiKey(&'a SecretString),
}

/// One logical request; `execute` may send it more than once.
struct Call<'a> {
    op: Operation,
    method: Method,
    url: Url,
    query: Vec<(&'static str, String)>,
    body: Body<'a>,
    auth: Auth<'a>,
}

impl<'a> Call<'a> {
    fn new(op: Operation, method: Method, url: Url) -> Self {
        Call {
            op,
            method,
            url,
            query: Vec::new(),
            body: Body::Empty,
            auth: Auth::Session,
        }
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self, ZenmlError> {
        let value = serde_json::to_value(body).map_err(|e| ZenmlError::Decode {
            op: self.op,
            status: None,
            detail: format!("cannot encode the request: {e}"),
        })?;
        self.body = Body::Json(value);
        Ok(self)
    }

    fn auth(mut self, auth: Auth<'a>) -> Self {
        self.auth = auth;
        self
    }

    fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }
}

/// A complete answer. The body may hold a key value, so it is wiped when dropped.
struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    body: Zeroizing<Vec<u8>>,
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

    /// Logs in now, replacing any cached session; later calls reuse it. Calls log in lazily without this.
    pub async fn login(&self) -> Result<(), ZenmlError> {
        let mut slot = self.inner.session.lock().await;
        *slot = Some(self.new_session().await?);
        Ok(())
    }

    pub async fn server_info(&self) -> Result<ServerInfo, ZenmlError> {
        let call = Call::new(Operation::ServerInfo, Method::GET, self.url(&["info"]));
        self.call_json(call.auth(Auth::None)).await
    }

    pub async fn version(&self) -> Result<String, ZenmlError> {
        let call = Call::new(Operation::Version, Method::GET, self.url(&["version"]));
        self.call_json(call.auth(Auth::None)).await
    }

    pub async fn current_user(&self) -> Result<User, ZenmlError> {
        let call = Call::new(
            Operation::CurrentUser,
            Method::GET,
            self.url(&["current-user"]),
        );
        let user: wire::UserResponse = self.call_json(call).await?;
        Ok(user.into())
    }

    /// Key check: `GET /api/v1/current-user` with `Authorization: Bearer ZENKEY_...`. Mints no token
    /// (a login would), and costs the server one bcrypt check.
    pub async fn check_key(&self, key: &SecretString) -> Result<KeyCheck, ZenmlError> {
        self.check_bearer(Operation::CheckKey, key).await
    }

    /// `grant_type=zenml-api-key` login; returns the minted access token. The client's own session is
    /// untouched.
    pub async fn login_with_api_key(&self, key: &SecretString) -> Result<SecretString, ZenmlError> {
        let login = self
            .exchange(Operation::LoginWithApiKey, LoginForm::ApiKey(key))
            .await?;
        Ok(login.access_token)
    }

    /// Whether the server accepts this bearer token (for instance one minted from a key).
    pub async fn check_token(&self, token: &SecretString) -> Result<KeyCheck, ZenmlError> {
        self.check_bearer(Operation::CheckToken, token).await
    }

    /// Every service account, all pages, with descriptions.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, ZenmlError> {
        let items: Vec<wire::ServiceAccountResponse> = self
            .list_all(
                Operation::ListServiceAccounts,
                self.url(&["service_accounts"]),
                vec![("hydrate", "true".to_owned())],
            )
            .await?;
        Ok(items.into_iter().map(ServiceAccount::from).collect())
    }

    pub async fn get_service_account(
        &self,
        name_or_id: &str,
    ) -> Result<ServiceAccount, ZenmlError> {
        let url = self.url(&["service_accounts", name_or_id]);
        let call = Call::new(Operation::GetServiceAccount, Method::GET, url);
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// The UUID of a service account: the key endpoints take only the UUID (a name gives 422).
    pub async fn service_account_id(&self, name_or_id: &str) -> Result<Uuid, ZenmlError> {
        Ok(self.get_service_account(name_or_id).await?.id)
    }

    /// Creates an active service account. Not retried after a lost answer (it may exist by then).
    pub async fn create_service_account(
        &self,
        name: &str,
        description: &str,
    ) -> Result<ServiceAccount, ZenmlError> {
        let body = wire::ServiceAccountCreate {
            name,
            description,
            active: true,
        };
        let url = self.url(&["service_accounts"]);
        let call = Call::new(Operation::CreateServiceAccount, Method::POST, url).json(&body)?;
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// Activates or deactivates a service account; inactive, its keys and tokens are all rejected.
    pub async fn set_service_account_active(
        &self,
        id: Uuid,
        active: bool,
    ) -> Result<ServiceAccount, ZenmlError> {
        let url = self.url(&["service_accounts", &id.to_string()]);
        let call = Call::new(Operation::UpdateServiceAccount, Method::PUT, url)
            .json(&wire::ServiceAccountActive { active })?;
        let sa: wire::ServiceAccountResponse = self.call_json(call).await?;
        Ok(sa.into())
    }

    /// Deletes a service account and, with it, its API keys.
    pub async fn delete_service_account(&self, name_or_id: &str) -> Result<(), ZenmlError> {
        let url = self.url(&["service_accounts", name_or_id]);
        let call = Call::new(Operation::DeleteServiceAccount, Method::DELETE, url);
        self.execute(&call).await.map(drop)
    }

    /// Every key of a service account matching the filter, all pages, hydrated (description,
    /// retain period, last login, last rotation).
    pub async fn list_api_keys(
        &self,
        sa: Uuid,
        filter: &KeyFilter,
    ) -> Result<Vec<ApiKey>, ZenmlError> {
        let mut query = vec![("hydrate", "true".to_owned())];
        if let Some(prefix) = &filter.name_startswith {
            query.push(("name", format!("startswith:{prefix}")));
        }
        if let Some(active) = filter.active {
            query.push(("active", active.to_string()));
        }
        let items: Vec<wire::ApiKeyResponse> = self
            .list_all(Operation::ListApiKeys, self.api_keys_url(sa, &[]), query)
            .await?;
        Ok(items.into_iter().map(|k| k.into_parts().0).collect())
    }

    /// One key, hydrated.
    pub async fn get_api_key(&self, sa: Uuid, name_or_id: &str) -> Result<ApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::GetApiKey, Method::GET, url).query("hydrate", true);
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        Ok(key.into_parts().0)
    }

    /// Creates a key and returns its value, which the server never shows again. Not retried after a
    /// lost answer: a second attempt would make a second key (or hit a name conflict).
    pub async fn create_api_key(
        &self,
        sa: Uuid,
        name: &str,
        description: &str,
    ) -> Result<NewApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[]);
        let call = Call::new(Operation::CreateApiKey, Method::POST, url)
            .json(&wire::ApiKeyCreate { name, description })?;
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        with_value(Operation::CreateApiKey, key)
    }

    pub async fn update_api_key(
        &self,
        sa: Uuid,
        name_or_id: &str,
        update: &ApiKeyUpdate,
    ) -> Result<ApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::UpdateApiKey, Method::PUT, url).json(update)?;
        let key: wire::ApiKeyResponse = self.call_json(call).await?;
        Ok(key.into_parts().0)
    }

    /// Rotates a key in place: the new value works at once, the previous one for `retain_minutes`.
    /// Sent exactly once: after a lost answer the server may have rotated, and a second rotation
    /// inside the window would cut off every consumer of the previous value.
    ///
    /// The rotate answer carries no metadata, so the key is read back for `last_rotated` and the
    /// description. If that read fails the new value is still returned (it exists nowhere else), with
    /// `last_rotated` from the answer's `updated`, `retain_period_minutes` as requested, an empty
    /// description and no `last_login`.
    pub async fn rotate_api_key(
        &self,
        sa: Uuid,
        name_or_id: &str,
        retain_minutes: u32,
    ) -> Result<NewApiKey, ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id, "rotate"]);
        let call =
            Call::new(Operation::RotateApiKey, Method::PUT, url).json(&wire::ApiKeyRotate {
                retain_period_minutes: retain_minutes,
            })?;
        let answer: wire::ApiKeyResponse = self.call_json(call).await?;
        let mut rotated = with_value(Operation::RotateApiKey, answer)?;
        match self.get_api_key(sa, &rotated.key.id.to_string()).await {
            Ok(key) => rotated.key = key,
            Err(e) => {
                tracing::warn!(
                    key_id = %rotated.key.id,
                    error = %e,
                    "rotated, but could not read the key back; using the rotate answer"
                );
                rotated.key.last_rotated = Some(rotated.key.updated);
                rotated.key.retain_period_minutes = Some(i64::from(retain_minutes));
            }
        }
        Ok(rotated)
    }

    /// Deletes a key; its value and every token minted from it stop working.
    pub async fn delete_api_key(&self, sa: Uuid, name_or_id: &str) -> Result<(), ZenmlError> {
        let url = self.api_keys_url(sa, &[name_or_id]);
        let call = Call::new(Operation::DeleteApiKey, Method::DELETE, url);
        self.execute(&call).await.map(drop)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        // The base URL was checked to be a hierarchical http(s) URL, which always has path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    fn api_keys_url(&self, sa: Uuid, rest: &[&str]) -> Url {
        let sa = sa.to_string();
        let mut segments = vec!["service_accounts", sa.as_str(), "api_keys"];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    async fn check_bearer(
        &self,
        op: Operation,
        bearer: &SecretString,
    ) -> Result<KeyCheck, ZenmlError> {
        let call =
            Call::new(op, Method::GET, self.url(&["current-user"])).auth(Auth::Bearer(bearer));
        match self.execute(&call).await {
            Ok(_) => Ok(KeyCheck::Accepted),
            Err(ZenmlError::Unauthorized { .. }) => Ok(KeyCheck::Rejected),
            Err(e) => Err(e),
        }
    }

    /// POSTs the login form and returns the token answer.
    async fn exchange(
        &self,
        op: Operation,
        form: LoginForm<'_>,
    ) -> Result<wire::LoginResponse, ZenmlError> {
        let mut call = Call::new(op, Method::POST, self.url(&["login"])).auth(Auth::None);
        call.body = Body::Login(form);
        self.call_json(call).await
    }

    /// Logs in with the client's credentials.
    async fn new_session(&self) -> Result<Arc<Session>, ZenmlError> {
        let form = match &self.inner.creds {
            Credentials::Password { username, password } => {
                LoginForm::Password { username, password }
            }
            Credentials::ApiKey(key) => LoginForm::ApiKey(key),
        };
        let login = self.exchange(Operation::Login, form).await?;
        let refresh_at = login.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime.saturating_sub(TOKEN_REFRESH_MARGIN.min(lifetime / 2))
        });
        Ok(Arc::new(Session {
            token: login.access_token,
            generation: self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1,
            refresh_at,
        }))
    }

    /// The session to use: the cached one, unless it is the `stale` generation (it just got a 401)
    /// or about to expire. Only one caller logs in; the others wait for it and share its token.
    async fn session(&self, stale: Option<u64>) -> Result<Arc<Session>, ZenmlError> {
        let mut slot = self.inner.session.lock().await;
        if let Some(current) = slot.as_ref() {
            if Some(current.generation) != stale && current.is_fresh() {
                return Ok(Arc::clone(current));
            }
        }
        // Boxed: logging in is itself a call through `execute`, which calls this.
        let fresh = Box::pin(self.new_session()).await?;
        *slot = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    async fn call_json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ZenmlError> {
        let reply = self.execute(&call).await?;
        serde_json::from_slice(&reply.body).map_err(|e| ZenmlError::Decode {
            op: call.op,
            status: Some(reply.status),
            detail: scrub(&e.to_string(), &[self.inner.creds.secret()]),
        })
    }

    /// Fetches every page of a list, page 1 up to the server's `total_pages` (asking past the end is
    /// a 400, so it never overshoots).
    async fn list_all<T: DeserializeOwned>(
        &self,
        op: Operation,
        url: Url,
        query: Vec<(&'static str, String)>,
    ) -> Result<Vec<T>, ZenmlError> {
        let mut items = Vec::new();
        let mut page = 1;
        loop {
            let mut call = Call::new(op, Method::GET, url.clone());
            call.query = query.clone();
            let call = call.query("page", page).query("size", self.page_size);
            let answer: wire::Page<T> = self.call_json(call).await?;
            items.extend(answer.items);
            if page >= answer.total_pages || page >= MAX_PAGES {
                return Ok(items);
            }
            page += 1;
        }
    }

    /// Sends a call until it succeeds or must stop. Repeats: once after a 401 on the cached session
    /// (log in again: the server may have restarted); on 429, honouring Retry-After; on 5xx,
    /// transport errors and timeouts only when the operation is safe to repeat.
    async fn execute(&self, call: &Call<'_>) -> Result<Reply, ZenmlError> {
        let mut attempt = 1;
        let mut logged_in_again = false;
        loop {
            let session = match call.auth {
                Auth::Session => Some(self.session(None).await?),
                Auth::None | Auth::Bearer(_) => None,
            };
            let bearer = match (call.auth, &session) {
                (Auth::Bearer(value), _) => Some(value),
                (_, Some(session)) => Some(&session.token),
                _ => None,
            };
            let may_repeat = !call.op.acts_once() && attempt < MAX_ATTEMPTS;
            let reply = match self.send_once(call, bearer).await {
                Ok(reply) if (200..300).contains(&reply.status) => return Ok(reply),
                Ok(reply) => reply,
                Err(e) if may_repeat => {
                    tracing::debug!(error = %e, attempt, "retrying ZenML request");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match (reply.status, &session) {
                (401, Some(stale)) if !logged_in_again => {
                    logged_in_again = true;
                    self.session(Some(stale.generation)).await?;
                }
                (429, _) => {
                    let wait = reply.retry_after.unwrap_or_else(|| backoff(attempt));
                    if attempt >= MAX_ATTEMPTS || wait > MAX_RETRY_AFTER {
                        return Err(ZenmlError::RateLimited {
                            op: call.op,
                            message: self.server_message(&reply, call),
                            retry_after: reply.retry_after,
                            attempts: attempt,
                        });
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                (500..=599, _) if may_repeat => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                (status, _) => {
                    let message = self.server_message(&reply, call);
                    return Err(ZenmlError::from_status(call.op, status, message));
                }
            }
        }
    }

    /// One HTTP exchange, body read in full, its duration recorded.
    async fn send_once(
        &self,
        call: &Call<'_>,
        bearer: Option<&SecretString>,
    ) -> Result<Reply, ZenmlError> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose_secret());
        }
        request = match &call.body {
            Body::Empty => request,
            Body::Json(value) => request.json(value),
            Body::Login(LoginForm::Password { username, password }) => request.form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password.expose_secret()),
            ]),
            Body::Login(LoginForm::ApiKey(key)) => request.form(&[
                ("grant_type", "zenml-api-key"),
                ("password", key.expose_secret()),
            ]),
        };
        let started = Instant::now();
        let result = self.receive(call.op, request).await;
        crate::metrics::observe_upstream("zenml", call.op.metric_name(), started.elapsed());
        result
    }

    async fn receive(
        &self,
        op: Operation,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, ZenmlError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        Ok(Reply {
            status,
            retry_after,
            body: Zeroizing::new(Vec::from(body)),
        })
    }

    fn transport_error(&self, op: Operation, e: reqwest::Error) -> ZenmlError {
        if e.is_timeout() {
            return ZenmlError::Timeout {
                op,
                timeout: self.inner.timeout,
            };
        }
        let mut detail = if e.is_body() || e.is_decode() {
            "the answer was cut short".to_owned()
        } else {
            e.to_string()
        };
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !detail.contains(&text) {
                detail = format!("{detail}: {text}");
            }
            source = cause.source();
        }
        ZenmlError::Transport {
            op,
            detail: scrub(&detail, &[self.inner.creds.secret()]),
        }
    }

    /// The server's message for a failed call, with every credential involved scrubbed out.
    fn server_message(&self, reply: &Reply, call: &Call<'_>) -> String {
        let message = error_message(&reply.body);
        match call.auth {
            Auth::Bearer(value) => scrub(&message, &[self.inner.creds.secret(), value]),
            Auth::None | Auth::Session => scrub(&message, &[self.inner.creds.secret()]),
        }
    }
}

/// Splits a create/rotate answer into the key and its one-time value.
fn with_value(op: Operation, answer: wire::ApiKeyResponse) -> Result<NewApiKey, ZenmlError> {
    match answer.into_parts() {
        (key, Some(value)) => Ok(NewApiKey { key, value }),
        (_, None) => Err(ZenmlError::Decode {
            op,
            status: Some(200),
            detail: "the answer holds no key value".to_owned(),
        }),
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

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&Utc) - Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter: a random pause up to base * 2^(attempt-1), capped.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(10))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(0.5 + 0.5 * jitter_fraction())
}

/// A number in [0, 1) that differs between calls and processes; no cryptographic quality needed.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl From<wire::UserResponse> for User {
    fn from(u: wire::UserResponse) -> Self {
        User {
            id: u.id,
            name: u.name,
            active: u.body.active,
            is_service_account: u.body.is_service_account,
            is_admin: u.body.is_admin,
        }
    }
}

impl From<wire::ServiceAccountResponse> for ServiceAccount {
    fn from(sa: wire::ServiceAccountResponse) -> Self {
        ServiceAccount {
            id: sa.id,
            name: sa.name,
            active: sa.body.active,
            created: sa.body.created,
            description: sa.metadata.map(|m| m.description).unwrap_or_default(),
        }
    }
}

impl wire::ApiKeyResponse {
    /// The public key description and, for create/rotate answers, the value.
    fn into_parts(self) -> (ApiKey, Option<SecretString>) {
        let metadata = self.metadata;
        let key = ApiKey {
            id: self.id,
            name: self.name,
            description: metadata
                .as_ref()
                .map(|m| m.description.clone())
                .unwrap_or_default(),
            active: self.body.active,
            created: self.body.created,
            updated: self.body.updated,
            service_account_id: self.body.service_account.id,
            service_account_name: self.body.service_account.name,
            retain_period_minutes: metadata.as_ref().and_then(|m| m.retain_period_minutes),
            last_login: metadata.as_ref().and_then(|m| m.last_login),
            last_rotated: metadata.as_ref().and_then(|m| m.last_rotated),
        };
        (key, self.body.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_read_from_the_value() {
        let payload = r#"{"id":"507677c5-8d1d-4637-bb58-e1aacee6f015","key":"00ff"}"#;
        let value = format!(
            "ZENKEY_{}",
            base64::engine::general_purpose::STANDARD.encode(payload)
        );
        assert_eq!(
            key_id_from_value(&SecretString::from(value)),
            Some(Uuid::parse_str("507677c5-8d1d-4637-bb58-e1aacee6f015").unwrap())
        );
        for bad in [
            "",
            "ZENKEY_",
            "ZENKEY_!!!",
            "eyJpZCI6IjEifQ==",
            "ZENKEY_eyJpZCI6IjEifQ==",
        ] {
            assert_eq!(key_id_from_value(&SecretString::from(bad)), None, "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        let ok = |u: &str| parse_base_url(u).map(|u| u.to_string());
        assert_eq!(
            ok("https://z.example.com").unwrap(),
            "https://z.example.com/"
        );
        assert!(ok("http://127.0.0.1:8080/").is_ok());
        assert!(ok("ftp://z").is_err());
        assert!(ok("z.example.com").is_err());
        assert!(ok("https://z/?a=1").is_err());
        let e = ok("https://admin:hunter2@z.example.com").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_escape_names() {
        let client = ZenmlClient::new(
            "https://z.example.com/zenml/",
            Credentials::ApiKey(SecretString::from("ZENKEY_x")),
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(client.base_url(), "https://z.example.com/zenml");
        assert_eq!(
            client.url(&["service_accounts", "a b/c"]).as_str(),
            "https://z.example.com/zenml/api/v1/service_accounts/a%20b%2Fc"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP, "{attempt}: {d:?}");
            assert!(d >= BACKOFF_BASE / 2, "{attempt}: {d:?}");
        }
        assert!(backoff(10) > BACKOFF_BASE * 2);
    }

    #[test]
    fn page_size_is_clamped() {
        let client = ZenmlClient::new(
            "http://127.0.0.1:1",
            Credentials::ApiKey(SecretString::from("ZENKEY_x")),
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(client.clone().with_page_size(0).page_size, 1);
        assert_eq!(
            client.clone().with_page_size(50_000).page_size,
            MAX_PAGE_SIZE
        );
        assert_eq!(client.page_size, DEFAULT_PAGE_SIZE);
    }
}
