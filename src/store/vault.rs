//! HashiCorp Vault / OpenBao KV v2: one KV version per rotation, written with check-and-set against
//! the version pre-flight saw, and the rotation record in the path's `custom_metadata`.
//! Logs in with a token, AppRole or Kubernetes and keeps its token alive lazily, before each call.
//!
//! The token the rotator needs (paths relative to the mount `secret`, key path `zenml/*`):
//! ```hcl
//! path "secret/data/zenml/*"     { capabilities = ["create", "update", "read"] }
//! path "secret/metadata/zenml/*" { capabilities = ["update", "read"] }
//! path "secret/destroy/zenml/*"  { capabilities = ["update"] }   # only with retire_previous
//! ```
//! plus what Vault's `default` policy grants: `sys/capabilities-self` (pre-flight asks it) and
//! `auth/token/lookup-self` / `renew-self`.
//!
//! Token renewal is lazy: every operation first checks the lease and renews (or logs in again)
//! once about two thirds of the TTL have passed. The daemon touches every store on each pass (the
//! safety pass runs every few minutes), far more often than any sensible token TTL, so a lazy check
//! sees the token in time; when the daemon was idle longer than the TTL (or the machine slept),
//! AppRole and Kubernetes simply log in again. A background task would keep a static token alive
//! through long idle gaps too, but it would need its own lifecycle (shutdown, reloads, tests) and
//! would race the operations it serves; the wall-clock lease check here has neither problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;
use vaultrs::api::EndpointMiddleware;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{
    ENV_API_KEY, ENV_URL, Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot,
};
use crate::config::{VaultAuth, VaultSettings};
use crate::metrics::observe_upstream;
use crate::secret::{ExposeSecret, SecretSource, SecretString, secrets_equal};

const STORE: &str = "vault";

/// `custom_metadata` keys beside the record: which rotation wrote which KV version, so `promote`
/// and `retire_previous` can tell whether the current version is still the rotator's.
const ROTATION_TOKEN: &str = "rotation_token";
const ROTATION_VERSION: &str = "rotation_version";

/// The record keys `RotationRecord::to_map` can produce; replaced as a whole on every write while
/// an operator's own `custom_metadata` keys are kept.
fn record_keys() -> BTreeSet<String> {
    let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    // A struct literal without `..`: a new field fails to compile here until it is listed.
    RotationRecord {
        policy: String::new(),
        service_account: String::new(),
        api_key: String::new(),
        key_id: String::new(),
        fingerprint: String::new(),
        rotated_at: Some(t),
        retain_until: Some(t),
        finalized_at: Some(t),
        retiring_key_id: Some(String::new()),
        retire_at: Some(t),
    }
    .to_map()
    .into_keys()
    .collect()
}

/// A Vault KV v2 mount as a `SecretStore`.
pub struct VaultStore {
    /// `scheme://host[:port]`, no trailing slash.
    address: String,
    mount: String,
    namespace: Option<String>,
    auth: VaultAuth,
    timeout: Duration,
    http: reqwest::Client,
    session: Mutex<Option<Session>>,
    /// Set once pre-flight has confirmed `mount` is a KV v2 engine.
    mount_checked: AtomicBool,
}

/// A logged-in client and what is known about its token's lifetime.
struct Session {
    client: Arc<VaultClient>,
    token: SecretString,
    lease: Lease,
}

/// What one operation needs: the client (token inside) and the token for raw requests.
struct Authed {
    client: Arc<VaultClient>,
    token: SecretString,
}

/// The token's lifetime on the wall clock (Vault's TTLs are wall-clock time, and a machine that
/// slept must not think its token is younger than it is).
#[derive(Debug, Clone)]
struct Lease {
    /// `None`: never expires (a root token) or unknown (no lookup-self permission).
    expires_at: Option<SystemTime>,
    renew_at: Option<SystemTime>,
    renewable: bool,
    /// The TTL a renewal grants; a renewal granting less has hit the token's max TTL.
    full_ttl: Duration,
    warned: bool,
}

impl Lease {
    fn new(ttl_secs: u64, renewable: bool, full_ttl: Duration) -> Lease {
        if ttl_secs == 0 {
            return Lease::unknown();
        }
        let now = SystemTime::now();
        let ttl = Duration::from_secs(ttl_secs);
        Lease {
            expires_at: Some(now + ttl),
            renew_at: Some(now + ttl * 2 / 3),
            renewable,
            full_ttl,
            warned: false,
        }
    }

    fn unknown() -> Lease {
        Lease {
            expires_at: None,
            renew_at: None,
            renewable: false,
            full_ttl: Duration::ZERO,
            warned: false,
        }
    }

    fn due(&self, now: SystemTime) -> bool {
        self.renew_at.is_some_and(|t| now >= t)
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .field("auth", &describe_auth(&self.auth))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn describe_auth(auth: &VaultAuth) -> String {
    match auth {
        VaultAuth::Token(source) => format!("token from {}", source.describe()),
        VaultAuth::AppRole {
            role_id,
            secret_id,
            mount,
        } => format!(
            "approle at auth/{mount} (role_id from {}, secret_id from {})",
            role_id.describe(),
            secret_id.describe()
        ),
        VaultAuth::Kubernetes {
            role,
            jwt_file,
            mount,
        } => format!(
            "kubernetes role {role} at auth/{mount} (jwt from {})",
            jwt_file.display()
        ),
    }
}

/// A token or namespace goes into an HTTP header as is; vaultrs panics on one that cannot.
fn header_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| (0x21..0x7f).contains(&b))
}

impl VaultStore {
    /// Checks the settings and builds the HTTP client; no network. The first operation logs in.
    pub fn new(settings: &VaultSettings) -> Result<VaultStore, StoreError> {
        crate::http::install_crypto_provider();
        let config_error = |message: String| StoreError::Other {
            store: STORE,
            op: "connect",
            path: settings.address.clone(),
            message,
        };
        let address = settings.address.trim_end_matches('/').to_owned();
        let url = url::Url::parse(&address)
            .map_err(|e| config_error(format!("address is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(config_error(
                "address must be http(s)://host[:port]".to_owned(),
            ));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(config_error(
                "address must not carry a path or query (the API lives under /v1 of the host)"
                    .to_owned(),
            ));
        }
        let mount = settings.mount.trim_matches('/').to_owned();
        if mount.is_empty() || !valid_path(&mount) {
            return Err(config_error(format!(
                "mount {:?} is not a valid mount path",
                settings.mount
            )));
        }
        let namespace = match settings.namespace.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(ns) if header_safe(ns) => Some(ns.to_owned()),
            Some(ns) => {
                return Err(config_error(format!(
                    "namespace {ns:?} holds characters an HTTP header cannot carry"
                )));
            }
        };
        let http = crate::http::client(settings.timeout, settings.ca_file.as_deref())
            .map_err(|e| config_error(e.to_string()))?;
        Ok(VaultStore {
            address,
            mount,
            namespace,
            auth: settings.auth.clone(),
            timeout: settings.timeout,
            http,
            session: Mutex::new(None),
            mount_checked: AtomicBool::new(false),
        })
    }

    /// `new`, then logs in now so a bad address or credential shows at start-up.
    pub async fn connect(settings: &VaultSettings) -> Result<VaultStore, StoreError> {
        let store = VaultStore::new(settings)?;
        store.authed("").await?;
        Ok(store)
    }

    /// `mount/path`, how errors name a path.
    fn shown(&self, path: &str) -> String {
        if path.is_empty() {
            format!("{}/", self.mount)
        } else {
            format!("{}/{}", self.mount, path)
        }
    }

    fn other(&self, op: &'static str, path: &str, message: impl Into<String>) -> StoreError {
        StoreError::Other {
            store: STORE,
            op,
            path: self.shown(path),
            message: message.into(),
        }
    }

    fn check_path(&self, op: &'static str, path: &str) -> Result<(), StoreError> {
        if valid_path(path) {
            Ok(())
        } else {
            Err(StoreError::NotWritable {
                store: STORE,
                op,
                path: self.shown(path),
                message: "not a valid KV path (no leading or trailing '/', no empty, '.' or '..' \
                          segments, no control characters)"
                    .to_owned(),
            })
        }
    }

    /// A vaultrs client sending `token` (empty: none, for logins) through the shared HTTP client.
    fn client_for(&self, token: &SecretString) -> Result<VaultClient, String> {
        let raw = token.expose_secret();
        if !raw.is_empty() && !header_safe(raw) {
            return Err("the token holds characters an HTTP header cannot carry".to_owned());
        }
        // Every field is set explicitly: the builder's defaults read VAULT_* variables.
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .token(raw)
            .ca_certs(Vec::new())
            .identity(None)
            .verify(true)
            .timeout(Some(self.timeout))
            .namespace(self.namespace.clone())
            .build()
            .map_err(|e| format!("cannot configure the Vault client: {e}"))?;
        let middle = EndpointMiddleware {
            token: raw.to_owned(),
            version: "v1".to_owned(),
            wrap: None,
            namespace: self.namespace.clone(),
        };
        Ok(VaultClient {
            http: rustify::clients::reqwest::Client::new(&self.address, self.http.clone()),
            middle,
            settings,
        })
    }

    /// The session for an operation, logging in or renewing first when due.
    async fn authed(&self, path: &str) -> Result<Authed, StoreError> {
        let mut guard = self.session.lock().await;
        let session = match guard.take() {
            None => self.authenticate(path).await?,
            Some(mut s) => {
                if s.lease.due(SystemTime::now()) {
                    let refreshed = self.refresh(&mut s, path).await;
                    if let Err(e) = refreshed {
                        *guard = Some(s);
                        return Err(e);
                    }
                }
                s
            }
        };
        let authed = Authed {
            client: session.client.clone(),
            token: session.token.clone(),
        };
        *guard = Some(session);
        Ok(authed)
    }

    /// A fresh session: a lookup of the configured token, or a login.
    async fn authenticate(&self, path: &str) -> Result<Session, StoreError> {
        match &self.auth {
            VaultAuth::Token(source) => {
                let token = self.read_source("login", path, source)?;
                self.session_for_token(token, path).await
            }
            VaultAuth::AppRole {
                role_id,
                secret_id,
                mount,
            } => {
                let role_id = self.read_source("login", path, role_id)?;
                let secret_id = self.read_source("login", path, secret_id)?;
                let anonymous = self.anonymous_client(path)?;
                let start = Instant::now();
                let res = vaultrs::auth::approle::login(
                    &anonymous,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                )
                .await;
                observe_upstream(STORE, "login", start.elapsed());
                let auth = res.map_err(|e| self.login_error(path, &format!("auth/{mount}"), e))?;
                self.session_from_login(auth, path)
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = self.read_source("login", path, &SecretSource::File(jwt_file.clone()))?;
                let anonymous = self.anonymous_client(path)?;
                let start = Instant::now();
                let res =
                    vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.expose_secret())
                        .await;
                observe_upstream(STORE, "login", start.elapsed());
                let auth = res.map_err(|e| self.login_error(path, &format!("auth/{mount}"), e))?;
                self.session_from_login(auth, path)
            }
        }
    }

    fn read_source(
        &self,
        op: &'static str,
        path: &str,
        source: &SecretSource,
    ) -> Result<SecretString, StoreError> {
        source
            .read()
            .map_err(|e| self.other(op, path, format!("cannot read a Vault credential: {e}")))
    }

    fn anonymous_client(&self, path: &str) -> Result<VaultClient, StoreError> {
        self.client_for(&SecretString::from(""))
            .map_err(|m| self.other("login", path, m))
    }

    fn login_error(&self, path: &str, auth_mount: &str, e: ClientError) -> StoreError {
        // A rejected credential is a 400 ("invalid role or secret ID") or a 403.
        let rejected = matches!(status_of(&e), Some(400 | 401 | 403));
        match self.map_error("login", path, e) {
            StoreError::Other { message, .. } | StoreError::PermissionDenied { message, .. }
                if rejected =>
            {
                StoreError::PermissionDenied {
                    store: STORE,
                    op: "login",
                    path: self.shown(path),
                    message: format!("{auth_mount} rejected the credentials: {message}"),
                }
            }
            other => other,
        }
    }

    fn session_from_login(
        &self,
        auth: vaultrs::api::AuthInfo,
        path: &str,
    ) -> Result<Session, StoreError> {
        let lease = Lease::new(
            auth.lease_duration,
            auth.renewable,
            Duration::from_secs(auth.lease_duration),
        );
        let token = SecretString::from(auth.client_token);
        let client = self
            .client_for(&token)
            .map_err(|m| self.other("login", path, m))?;
        tracing::debug!(
            store = STORE,
            ttl_seconds = auth.lease_duration,
            renewable = auth.renewable,
            "logged in to Vault"
        );
        Ok(Session {
            client: Arc::new(client),
            token,
            lease,
        })
    }

    /// A session for a configured token, its lease from lookup-self. A token that may not look
    /// itself up still works; it is just never renewed.
    async fn session_for_token(
        &self,
        token: SecretString,
        path: &str,
    ) -> Result<Session, StoreError> {
        let client = self
            .client_for(&token)
            .map_err(|m| self.other("login", path, m))?;
        let start = Instant::now();
        let res = vaultrs::token::lookup_self(&client).await;
        observe_upstream(STORE, "lookup_self", start.elapsed());
        let lease = match res {
            Ok(info) => Lease::new(
                info.ttl,
                info.renewable.unwrap_or(false),
                Duration::from_secs(info.creation_ttl),
            ),
            // A bare "permission denied" is Vault's answer to a token it does not know; a policy
            // denial reads "1 error occurred: ...".
            Err(ClientError::APIError { code: 403, errors })
                if errors.len() == 1 && errors[0].trim() == "permission denied" =>
            {
                return Err(StoreError::PermissionDenied {
                    store: STORE,
                    op: "login",
                    path: self.shown(path),
                    message: format!(
                        "Vault does not accept the token from {} (wrong, expired or revoked)",
                        self.token_source_name()
                    ),
                });
            }
            Err(e) => match self.map_error("lookup_self", path, e) {
                e @ StoreError::Unavailable { .. } => return Err(e),
                e => {
                    tracing::debug!(
                        store = STORE,
                        error = %e,
                        "cannot look up the Vault token; it will not be renewed"
                    );
                    Lease::unknown()
                }
            },
        };
        Ok(Session {
            client: Arc::new(client),
            token,
            lease,
        })
    }

    fn token_source_name(&self) -> String {
        match &self.auth {
            VaultAuth::Token(source) => source.describe(),
            _ => "the login".to_owned(),
        }
    }

    /// Renews the token, or logs in again when it cannot be renewed (any more).
    async fn refresh(&self, session: &mut Session, path: &str) -> Result<(), StoreError> {
        if session.lease.renewable {
            let start = Instant::now();
            let res = vaultrs::token::renew_self(&*session.client, None).await;
            observe_upstream(STORE, "renew", start.elapsed());
            match res {
                Ok(auth) => {
                    let granted = Duration::from_secs(auth.lease_duration);
                    // Less than a full TTL: the token hit its max TTL; log in again next time.
                    let extendable = auth.renewable && granted >= session.lease.full_ttl;
                    session.lease =
                        Lease::new(auth.lease_duration, extendable, session.lease.full_ttl);
                    tracing::debug!(
                        store = STORE,
                        ttl_seconds = auth.lease_duration,
                        "renewed the Vault token"
                    );
                    return Ok(());
                }
                Err(e) => match self.map_error("renew", path, e) {
                    e @ StoreError::Unavailable { .. } => return Err(e),
                    e => tracing::info!(
                        store = STORE,
                        error = %e,
                        "cannot renew the Vault token; authenticating again"
                    ),
                },
            }
        }
        match &self.auth {
            VaultAuth::Token(source) => self.reload_token(session, source, path).await,
            _ => {
                *session = self.authenticate(path).await?;
                Ok(())
            }
        }
    }

    /// A configured token that cannot be renewed: take a new one from its source (vault-agent
    /// rewrites its sink file), else use it until it expires and then say so.
    async fn reload_token(
        &self,
        session: &mut Session,
        source: &SecretSource,
        path: &str,
    ) -> Result<(), StoreError> {
        let fresh = self.read_source("renew", path, source)?;
        if !secrets_equal(&fresh, &session.token) {
            *session = self.session_for_token(fresh, path).await?;
            return Ok(());
        }
        let now = SystemTime::now();
        if session.lease.expired(now) {
            return Err(StoreError::PermissionDenied {
                store: STORE,
                op: "renew",
                path: self.shown(path),
                message: format!(
                    "the Vault token from {} has expired and cannot be renewed; put a fresh or \
                     periodic token there, or use approle or kubernetes auth",
                    source.describe()
                ),
            });
        }
        if !session.lease.warned {
            let left = session
                .lease
                .expires_at
                .and_then(|t| t.duration_since(now).ok())
                .unwrap_or_default();
            tracing::warn!(
                store = STORE,
                source = %source.describe(),
                expires_in_seconds = left.as_secs(),
                "the Vault token cannot be renewed and expires soon; put a fresh or periodic \
                 token there, or use approle or kubernetes auth"
            );
            session.lease.warned = true;
        }
        Ok(())
    }

    /// Maps a vaultrs error to a store error. Never formats the error with `Debug`: a parse error
    /// carries the response body, which can hold the secret.
    fn map_error(&self, op: &'static str, path: &str, e: ClientError) -> StoreError {
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

    fn unreachable(
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
        StoreError::Unavailable {
            store: STORE,
            op,
            path: self.shown(path),
            message,
        }
    }

    fn status_error(
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
        let path_s = self.shown(path);
        match code {
            401 | 403 => StoreError::PermissionDenied {
                store: STORE,
                op,
                path: path_s,
                message: format!(
                    "{} (the token is invalid or expired, or its policies do not allow this)",
                    if text.is_empty() { "HTTP 403" } else { &text }
                ),
            },
            400 if text.contains("check-and-set") => StoreError::Conflict {
                store: STORE,
                op,
                path: path_s,
                message: text,
            },
            429 | 502 | 503 | 504 => StoreError::Unavailable {
                store: STORE,
                op,
                path: path_s,
                message: format!(
                    "HTTP {code}{}",
                    if text.is_empty() {
                        " (sealed, in standby or overloaded)".to_owned()
                    } else {
                        format!(": {text}")
                    }
                ),
            },
            _ => StoreError::Other {
                store: STORE,
                op,
                path: path_s,
                message: if text.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}: {text}")
                },
            },
        }
    }

    /// A request vaultrs does not wrap, with the same token, namespace and timeout.
    async fn raw(
        &self,
        authed: &Authed,
        method: reqwest::Method,
        api_path: &str,
        body: Option<Value>,
        op: &'static str,
        path: &str,
    ) -> Result<Value, StoreError> {
        let mut token = reqwest::header::HeaderValue::from_str(authed.token.expose_secret())
            .map_err(|_| {
                self.other(
                    op,
                    path,
                    "the token holds characters an HTTP header cannot carry",
                )
            })?;
        token.set_sensitive(true);
        let mut req = self
            .http
            .request(method, format!("{}/v1/{api_path}", self.address))
            .header("X-Vault-Token", token)
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let start = Instant::now();
        let res = req.send().await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                observe_upstream(STORE, op, start.elapsed());
                let mut detail = e.to_string();
                let mut cause = e.source();
                while let Some(c) = cause {
                    detail.push_str(": ");
                    detail.push_str(&c.to_string());
                    cause = c.source();
                }
                return Err(self.unreachable(op, path, e.is_timeout(), &detail));
            }
        };
        let status = res.status().as_u16();
        let bytes = res.bytes().await;
        observe_upstream(STORE, op, start.elapsed());
        let bytes =
            bytes.map_err(|e| self.unreachable(op, path, e.is_timeout(), &e.to_string()))?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let errors: Vec<String> = json
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Err(self.status_error(op, path, status, &errors))
    }

    /// Invariant 2: the token may write the value and its metadata, and read them back.
    async fn check_capabilities(&self, authed: &Authed, path: &str) -> Result<(), StoreError> {
        let data_path = format!("{}/data/{path}", self.mount);
        let meta_path = format!("{}/metadata/{path}", self.mount);
        let body = serde_json::json!({ "paths": [data_path, meta_path] });
        let res = self
            .raw(
                authed,
                reqwest::Method::POST,
                "sys/capabilities-self",
                Some(body),
                "capabilities",
                path,
            )
            .await?;
        let caps = res.get("data").unwrap_or(&res);
        let mut missing = Vec::new();
        for (api_path, needed) in [
            (&data_path, &["create", "update", "read"][..]),
            (&meta_path, &["update", "read"][..]),
        ] {
            let have: Vec<&str> = caps
                .get(api_path.as_str())
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if have.contains(&"root") {
                continue;
            }
            let lacking: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|c| have.contains(&"deny") || !have.contains(c))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!(
                    "{} on {api_path} (it has: {})",
                    lacking.join(", "),
                    if have.is_empty() {
                        "nothing".to_owned()
                    } else {
                        have.join(", ")
                    }
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied {
                store: STORE,
                op: "preflight",
                path: self.shown(path),
                message: format!("the token lacks {}", missing.join("; ")),
            })
        }
    }

    /// Once per store: `mount` must be a KV v2 engine itself (not a KV v1 mount, where `data/`
    /// would silently become part of the key name, nor a folder inside a mount). Skipped when the
    /// token may not ask.
    async fn check_mount(&self, authed: &Authed, path: &str) -> Result<(), StoreError> {
        if self.mount_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let info = match self
            .raw(
                authed,
                reqwest::Method::GET,
                &format!("sys/internal/ui/mounts/{}", self.mount),
                None,
                "mount_info",
                path,
            )
            .await
        {
            Ok(v) => v,
            Err(e @ StoreError::Unavailable { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(store = STORE, error = %e, "cannot check the KV mount; going on");
                return Ok(());
            }
        };
        let data = info.get("data").unwrap_or(&Value::Null);
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        let version = data
            .pointer("/options/version")
            .and_then(Value::as_str)
            .unwrap_or("");
        let at = data
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_end_matches('/');
        let not_kv2 = |message: String| StoreError::NotWritable {
            store: STORE,
            op: "preflight",
            path: self.shown(path),
            message,
        };
        if !at.is_empty() && at != self.mount {
            return Err(not_kv2(format!(
                "{} is not a mount but a folder in the mount {at}: set mount = \"{at}\" and put \
                 the rest in the key's path",
                self.mount
            )));
        }
        if kind != "kv" || version != "2" {
            return Err(not_kv2(format!(
                "{} is a {} engine{}, not KV version 2",
                self.mount,
                if kind.is_empty() { "unknown" } else { kind },
                if version.is_empty() {
                    String::new()
                } else {
                    format!(" (version {version})")
                }
            )));
        }
        self.mount_checked.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn read_metadata(
        &self,
        authed: &Authed,
        path: &str,
        op: &'static str,
    ) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let start = Instant::now();
        let res = vaultrs::kv2::read_metadata(&*authed.client, &self.mount, path).await;
        observe_upstream(STORE, "read_metadata", start.elapsed());
        match res {
            Ok(m) => Ok(Some(m)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.map_error(op, path, e)),
        }
    }

    /// One version's data (`None`: the current one) with its version number; `None` when absent,
    /// deleted or destroyed.
    async fn read_data(
        &self,
        authed: &Authed,
        path: &str,
        version: Option<u64>,
        op: &'static str,
    ) -> Result<Option<(u64, Value)>, StoreError> {
        let endpoint = ReadSecretRequest::builder()
            .mount(self.mount.as_str())
            .path(path)
            .version(version)
            .build()
            .map_err(|e| self.other(op, path, format!("cannot build the read request: {e}")))?;
        let start = Instant::now();
        let res = vaultrs::api::exec_with_result(&*authed.client, endpoint).await;
        observe_upstream(STORE, "read", start.elapsed());
        match res {
            Ok(r) if r.data.is_null() => Ok(None),
            Ok(r) => Ok(Some((r.metadata.version, r.data))),
            // Deleted and destroyed versions are a 404 without `errors`; a missing path has them.
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.map_error(op, path, e)),
        }
    }

    /// Replaces the rotator's keys in `custom_metadata`, keeping everything else: an operator's
    /// own keys, and (omitted from the request, so untouched) max_versions and cas_required.
    async fn write_record(
        &self,
        authed: &Authed,
        path: &str,
        record: &RotationRecord,
        written: Option<(&str, u64)>,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let existing = self
            .read_metadata(authed, path, op)
            .await?
            .and_then(|m| m.custom_metadata)
            .unwrap_or_default();
        let custom = merge_custom_metadata(existing, record, written);
        let mut request = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
        request.custom_metadata(custom);
        let start = Instant::now();
        let res =
            vaultrs::kv2::set_metadata(&*authed.client, &self.mount, path, Some(&mut request))
                .await;
        observe_upstream(STORE, "write_metadata", start.elapsed());
        res.map_err(|e| self.map_error(op, path, e))
    }

    /// The current version's `rotation_*` stamp, or a `Conflict` saying whose version is current.
    fn current_is_ours(
        &self,
        meta: Option<&ReadSecretMetadataResponse>,
        token: Option<&str>,
        op: &'static str,
        path: &str,
    ) -> Result<u64, StoreError> {
        let conflict = |message: String| StoreError::Conflict {
            store: STORE,
            op,
            path: self.shown(path),
            message,
        };
        let Some(meta) = meta else {
            return Err(conflict("nothing is stored there".to_owned()));
        };
        let custom = meta.custom_metadata.as_ref();
        let stamp_token = custom.and_then(|c| c.get(ROTATION_TOKEN));
        let stamp_version = custom
            .and_then(|c| c.get(ROTATION_VERSION))
            .and_then(|v| v.parse::<u64>().ok());
        if token.is_some_and(|t| stamp_token.map(String::as_str) != Some(t)) {
            return Err(conflict(
                "the last write recorded there is not this rotation's".to_owned(),
            ));
        }
        match stamp_version {
            Some(v) if v == meta.current_version => Ok(v),
            Some(v) => Err(conflict(format!(
                "version {} was written on top of the rotator's version {v}",
                meta.current_version
            ))),
            None => Err(conflict(
                "the current version was not written by the rotator".to_owned(),
            )),
        }
    }
}

fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// A KV path vaultrs can put in a URL unchanged and Vault reads as meant.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

fn merge_custom_metadata(
    mut existing: HashMap<String, String>,
    record: &RotationRecord,
    written: Option<(&str, u64)>,
) -> HashMap<String, String> {
    for key in record_keys() {
        existing.remove(&key);
    }
    // Vault refuses empty custom_metadata values; an absent key reads back as empty anyway.
    existing.extend(record.to_map().into_iter().filter(|(_, v)| !v.is_empty()));
    if let Some((token, version)) = written {
        existing.insert(ROTATION_TOKEN.to_owned(), token.to_owned());
        existing.insert(ROTATION_VERSION.to_owned(), version.to_string());
    }
    existing
}

fn snapshot(meta: Option<&ReadSecretMetadataResponse>) -> StoreSnapshot {
    let Some(meta) = meta else {
        return StoreSnapshot::default();
    };
    let record = meta.custom_metadata.as_ref().and_then(|c| {
        let map: BTreeMap<String, String> = c.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        RotationRecord::from_map(&map)
    });
    let current_deleted = meta
        .versions
        .get(&meta.current_version.to_string())
        .is_some_and(|v| v.destroyed || !v.deletion_time.is_empty());
    StoreSnapshot {
        exists: meta.current_version > 0,
        version: (meta.current_version > 0).then(|| meta.current_version.to_string()),
        record,
        pending: None,
        current_deleted,
        unwritable: None,
    }
}

/// `ZENML_STORE_API_KEY` of a stored version. A hand-written value that carries only the key
/// (no URL) still counts: it is what the workloads read.
fn api_key_in(data: &Value) -> Option<SecretString> {
    data.get(ENV_API_KEY)
        .and_then(Value::as_str)
        .map(|k| SecretString::from(k.to_owned()))
}

fn holds_payload(data: &Value, payload: &Payload) -> bool {
    let url_same = data.get(ENV_URL).and_then(Value::as_str) == Some(payload.zenml_url.as_str());
    let key_same = api_key_in(data).is_some_and(|k| secrets_equal(&k, &payload.api_key));
    url_same && key_same
}

#[async_trait]
impl SecretStore for VaultStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    async fn inspect(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        self.check_path("inspect", path)?;
        let authed = self.authed(path).await?;
        let meta = self.read_metadata(&authed, path, "inspect").await?;
        Ok(snapshot(meta.as_ref()))
    }

    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        self.check_path("preflight", path)?;
        let authed = self.authed(path).await?;
        self.check_capabilities(&authed, path).await?;
        self.check_mount(&authed, path).await?;
        let meta = self.read_metadata(&authed, path, "preflight").await?;
        if let Some(m) = &meta {
            if m.max_versions == 1 {
                tracing::warn!(
                    store = STORE,
                    path = %self.shown(path),
                    "max_versions = 1: Vault will not keep the previous value for the retain window"
                );
            }
            if !m.delete_version_after.is_empty()
                && !m.delete_version_after.starts_with("0s")
                && m.delete_version_after != "0"
            {
                tracing::warn!(
                    store = STORE,
                    path = %self.shown(path),
                    delete_version_after = %m.delete_version_after,
                    "Vault deletes each version after this long, the current one too"
                );
            }
        }
        Ok(snapshot(meta.as_ref()))
    }

    async fn read_current(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.check_path("read_current", path)?;
        let authed = self.authed(path).await?;
        let data = self.read_data(&authed, path, None, "read_current").await?;
        Ok(data.and_then(|(_, d)| api_key_in(&d)))
    }

    async fn read_previous(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.check_path("read_previous", path)?;
        let authed = self.authed(path).await?;
        let Some(meta) = self.read_metadata(&authed, path, "read_previous").await? else {
            return Ok(None);
        };
        let previous = meta.current_version.saturating_sub(1);
        let kept = meta
            .versions
            .get(&previous.to_string())
            .is_some_and(|v| !v.destroyed);
        if previous == 0 || !kept {
            return Ok(None);
        }
        let data = self
            .read_data(&authed, path, Some(previous), "read_previous")
            .await?;
        Ok(data.and_then(|(_, d)| api_key_in(&d)))
    }

    async fn stage(
        &self,
        path: &str,
        payload: &Payload,
        record: &RotationRecord,
        expected: &StoreSnapshot,
        token: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "stage";
        self.check_path(OP, path)?;
        let cas: u64 = match &expected.version {
            None => 0,
            Some(v) => v.parse().map_err(|_| {
                self.other(
                    OP,
                    path,
                    format!("pre-flight version {v:?} is not a KV v2 version"),
                )
            })?,
        };
        let cas_u32 = u32::try_from(cas)
            .map_err(|_| self.other(OP, path, format!("version {cas} is beyond check-and-set")))?;
        let authed = self.authed(path).await?;
        let conflict = |message: String| StoreError::Conflict {
            store: STORE,
            op: OP,
            path: self.shown(path),
            message,
        };

        // A retry (or a journal replay after a fresh pre-flight) finds its own value current:
        // it must not stack a second copy on top and push the real previous value out of reach.
        let mut written = None;
        if cas > 0 {
            if let Some((version, data)) = self.read_data(&authed, path, None, OP).await? {
                if holds_payload(&data, payload) {
                    written = Some(version);
                } else if version != cas {
                    return Err(conflict(format!(
                        "version {version} is current, pre-flight saw {cas}"
                    )));
                }
            }
        }

        let written = match written {
            Some(v) => v,
            None => {
                let mut data = serde_json::Map::new();
                data.insert(ENV_URL.into(), Value::String(payload.zenml_url.clone()));
                data.insert(
                    ENV_API_KEY.into(),
                    Value::String(payload.api_key.expose_secret().to_owned()),
                );
                let data = Value::Object(data);
                let start = Instant::now();
                let res = vaultrs::kv2::set_with_options(
                    &*authed.client,
                    &self.mount,
                    path,
                    &data,
                    SetSecretRequestOptions { cas: cas_u32 },
                )
                .await;
                observe_upstream(STORE, "write", start.elapsed());
                drop(data);
                match res {
                    Ok(meta) => meta.version,
                    Err(e) => match self.map_error(OP, path, e) {
                        StoreError::Conflict { message, .. } => {
                            // Lost the race to ourselves (a concurrent retry) or to someone else.
                            match self.read_data(&authed, path, None, OP).await? {
                                Some((v, d)) if holds_payload(&d, payload) => v,
                                Some((v, _)) => {
                                    return Err(conflict(format!(
                                        "{message}: version {v} is current, pre-flight saw {cas}"
                                    )));
                                }
                                None => return Err(conflict(message)),
                            }
                        }
                        other => return Err(other),
                    },
                }
            }
        };
        self.write_record(&authed, path, record, Some((token, written)), OP)
            .await
    }

    async fn read_staged(
        &self,
        path: &str,
        _token: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        // `stage` made it the current version; `promote` checks it still is.
        self.read_current(path).await
    }

    async fn promote(
        &self,
        path: &str,
        token: &str,
        _expected: &StoreSnapshot,
    ) -> Result<(), StoreError> {
        self.check_path("promote", path)?;
        let authed = self.authed(path).await?;
        let meta = self.read_metadata(&authed, path, "promote").await?;
        self.current_is_ours(meta.as_ref(), Some(token), "promote", path)
            .map(|_| ())
    }

    async fn discard_staged(&self, _path: &str, _token: &str) -> Result<(), StoreError> {
        // KV v2 has no staging: a written version is current at once.
        Ok(())
    }

    async fn set_record(&self, path: &str, record: &RotationRecord) -> Result<(), StoreError> {
        self.check_path("set_record", path)?;
        let authed = self.authed(path).await?;
        self.write_record(&authed, path, record, None, "set_record")
            .await
    }

    async fn retire_previous(&self, path: &str) -> Result<(), StoreError> {
        const OP: &str = "retire_previous";
        self.check_path(OP, path)?;
        let authed = self.authed(path).await?;
        let meta = self.read_metadata(&authed, path, OP).await?;
        // With someone else's version on top, "previous" would be the rotator's live value.
        let current = self.current_is_ours(meta.as_ref(), None, OP, path)?;
        let previous = current.saturating_sub(1);
        let alive = meta.as_ref().is_some_and(|m| {
            m.versions
                .get(&previous.to_string())
                .is_some_and(|v| !v.destroyed)
        });
        if previous == 0 || !alive {
            return Ok(());
        }
        let start = Instant::now();
        let res =
            vaultrs::kv2::destroy_versions(&*authed.client, &self.mount, path, vec![previous])
                .await;
        observe_upstream(STORE, "destroy", start.elapsed());
        res.map_err(|e| self.map_error(OP, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(valid_path("zenml/training"));
        assert!(valid_path("a"));
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\nb"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn merge_keeps_operator_keys_and_drops_stale_record_keys() {
        let mut existing = HashMap::new();
        existing.insert("owner".to_owned(), "team-a".to_owned());
        existing.insert("finalized_at".to_owned(), "2020-01-01T00:00:00Z".to_owned());
        existing.insert(ROTATION_TOKEN.to_owned(), "old".to_owned());
        let record = RotationRecord {
            policy: "p".into(),
            ..Default::default()
        };
        let m = merge_custom_metadata(existing.clone(), &record, Some(("tok", 7)));
        assert_eq!(m["owner"], "team-a");
        assert!(!m.contains_key("key_id"), "empty values are left out");
        assert_eq!(m["managed_by"], "zenml-rotator");
        assert!(!m.contains_key("finalized_at"));
        assert_eq!(m[ROTATION_TOKEN], "tok");
        assert_eq!(m[ROTATION_VERSION], "7");
        let m = merge_custom_metadata(existing, &record, None);
        assert_eq!(m[ROTATION_TOKEN], "old");
    }

    #[test]
    fn lease_is_due_at_two_thirds() {
        let l = Lease::new(30, true, Duration::from_secs(30));
        let now = SystemTime::now();
        assert!(!l.due(now));
        assert!(l.due(now + Duration::from_secs(21)));
        assert!(!l.expired(now + Duration::from_secs(21)));
        assert!(l.expired(now + Duration::from_secs(31)));
        let root = Lease::new(0, false, Duration::ZERO);
        assert!(!root.due(now + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn debug_shows_where_credentials_come_from_not_what_they_are() {
        let settings = VaultSettings {
            address: "http://127.0.0.1:8200".into(),
            mount: "secret".into(),
            namespace: None,
            ca_file: None,
            auth: VaultAuth::Token(SecretSource::Env("VAULT_TOKEN".into())),
            timeout: Duration::from_secs(5),
        };
        let store = VaultStore::new(&settings).unwrap();
        let shown = format!("{store:?}");
        assert!(shown.contains("token from env VAULT_TOKEN"), "{shown}");
    }

    #[test]
    fn bad_settings_are_refused_without_a_panic() {
        let mut settings = VaultSettings {
            address: "not a url".into(),
            mount: "secret".into(),
            namespace: None,
            ca_file: None,
            auth: VaultAuth::Token(SecretSource::Env("VAULT_TOKEN".into())),
            timeout: Duration::from_secs(5),
        };
        assert!(VaultStore::new(&settings).is_err());
        settings.address = "http://vault:8200/prefix".into();
        assert!(VaultStore::new(&settings).is_err());
        settings.address = "http://vault:8200/".into();
        settings.namespace = Some("team a".into());
        assert!(VaultStore::new(&settings).is_err());
        settings.namespace = Some("team-a/".into());
        assert!(VaultStore::new(&settings).is_ok());
    }
}
