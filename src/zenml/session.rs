//! Logging in: the cached session token shared by every clone of a client, renewed before it
//! expires and again after a 401; and the one-off logins with a key under test.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;

use super::transport::{Auth, Body, Call, LoginForm};
use super::{Credentials, Operation, ZenmlClient, ZenmlError, wire};
use crate::secret::SecretString;

/// Log in again this long before a token's expiry rather than wait for the 401.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

pub(super) struct Session {
    pub(super) token: SecretString,
    pub(super) generation: u64,
    refresh_at: Option<Instant>,
}

impl Session {
    fn is_fresh(&self) -> bool {
        self.refresh_at.is_none_or(|at| Instant::now() < at)
    }
}

impl ZenmlClient {
    /// Logs in now, replacing any cached session; later calls reuse it. Calls log in lazily without this.
    pub async fn login(&self) -> Result<(), ZenmlError> {
        let mut slot = self.inner.session.lock().await;
        *slot = Some(self.new_session().await?);
        Ok(())
    }

    /// `grant_type=zenml-api-key` login; returns the minted access token. The client's own session is
    /// untouched.
    pub async fn login_with_api_key(&self, key: &SecretString) -> Result<SecretString, ZenmlError> {
        let login = self
            .exchange(Operation::LoginWithApiKey, LoginForm::ApiKey(key))
            .await?;
        Ok(login.access_token)
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
    pub(super) async fn session(&self, stale: Option<u64>) -> Result<Arc<Session>, ZenmlError> {
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
}
