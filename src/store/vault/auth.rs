//! Vault credentials: logging in with a token, AppRole or Kubernetes, and keeping the token alive
//! lazily (renewed, or logged in again, once two thirds of its TTL have passed).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::errors::status_of;
use super::{STORE, VaultAuth, VaultStore, header_safe};
use crate::metrics::observe_upstream;
use crate::secret::{ExposeSecret, SecretSource, SecretSourceError, SecretString, secrets_equal};
use crate::store::{StoreError, StoreErrorKind};

/// A logged-in client and what is known about its token's lifetime.
pub(super) struct Session {
    client: Arc<VaultClient>,
    token: SecretString,
    lease: Lease,
}

/// What one operation needs: the session's token, sent on the shared client.
pub(super) struct Authed {
    pub(super) token: SecretString,
}

/// The token's lifetime on the wall clock (Vault's TTLs are wall-clock time, and a machine that
/// slept must not think its token is younger than it is).
#[derive(Debug, Clone)]
pub(super) struct Lease {
    /// `None`: never expires (a root token) or unknown (no lookup-self permission).
    expires_at: Option<SystemTime>,
    renew_at: Option<SystemTime>,
    renewable: bool,
    /// The TTL a renewal grants; a renewal granting less has hit the token's max TTL.
    full_ttl: Duration,
    warned: bool,
}

impl Lease {
    pub(super) fn new(ttl_secs: u64, renewable: bool, full_ttl: Duration) -> Lease {
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

    pub(super) fn due(&self, now: SystemTime) -> bool {
        self.renew_at.is_some_and(|t| now >= t)
    }

    pub(super) fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

pub(super) fn describe_auth(auth: &VaultAuth) -> String {
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

impl VaultStore {
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
    pub(super) async fn authed(&self, path: &str) -> Result<Authed, StoreError> {
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
                // The kubelet's token: its mode is the pod spec's, not the rotator's to judge.
                let jwt = crate::secret::read_platform_token(jwt_file)
                    .map_err(|e| self.credential_error("login", path, &e))?;
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
            .map_err(|e| self.credential_error(op, path, &e))
    }

    fn credential_error(&self, op: &'static str, path: &str, e: &SecretSourceError) -> StoreError {
        self.other(op, path, format!("cannot read a Vault credential: {e}"))
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
                self.error(
                    StoreErrorKind::PermissionDenied,
                    "login",
                    path,
                    format!("{auth_mount} rejected the credentials: {message}"),
                )
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
                return Err(self.error(
                    StoreErrorKind::PermissionDenied,
                    "login",
                    path,
                    format!(
                        "Vault does not accept the token from {} (wrong, expired or revoked)",
                        self.token_source_name()
                    ),
                ));
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
            return Err(self.error(
                StoreErrorKind::PermissionDenied,
                "renew",
                path,
                format!(
                    "the Vault token from {} has expired and cannot be renewed; put a fresh or \
                     periodic token there, or use approle or kubernetes auth",
                    source.describe()
                ),
            ));
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
}
