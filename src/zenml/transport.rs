//! Sending requests: one logical call, retried only when that is safe (a 401 on the cached session,
//! 429 with Retry-After, 5xx and transport failures of calls that may repeat), timed into
//! `upstream_request_duration_seconds`, with every credential scrubbed from the errors.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;
use zeroize::Zeroizing;

use super::error::scrub;
use super::{Operation, ZenmlClient, ZenmlError, error_message, wire};
use crate::secret::{ExposeSecret, SecretString};

/// Walks of a listing that keeps changing while it is paged.
const MAX_WALKS: u32 = 3;
/// A runaway `total_pages` must not loop forever: 10 000 pages of 10 000 is far beyond any server.
const MAX_PAGES: u32 = 10_000;
/// Attempts per request for failures that may pass (429, and 5xx/transport/timeout on safe calls).
const MAX_ATTEMPTS: u32 = 4;
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A server asking for a longer pause than this gets an error instead: the caller's own per-key
/// backoff is the better place to wait that long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Who a request authenticates as.
#[derive(Clone, Copy)]
pub(super) enum Auth<'a> {
    None,
    /// The client's cached session token (logging in first if needed; again on a 401).
    Session,
    /// This exact bearer value (a key or token under test); a 401 is the answer, not a cue to log in.
    Bearer(&'a SecretString),
}

/// What a request sends.
pub(super) enum Body<'a> {
    Empty,
    Json(serde_json::Value),
    Login(LoginForm<'a>),
}

/// The OAuth2 password form of `/login`: a user's password or a service account's key.
#[derive(Clone, Copy)]
pub(super) enum LoginForm<'a> {
    Password {
        username: &'a str,
        password: &'a SecretString,
    },
    ApiKey(&'a SecretString),
}

/// One logical request; `execute` may send it more than once.
pub(super) struct Call<'a> {
    op: Operation,
    method: Method,
    url: Url,
    query: Vec<(&'static str, String)>,
    pub(super) body: Body<'a>,
    auth: Auth<'a>,
}

impl<'a> Call<'a> {
    pub(super) fn new(op: Operation, method: Method, url: Url) -> Self {
        Call {
            op,
            method,
            url,
            query: Vec::new(),
            body: Body::Empty,
            auth: Auth::Session,
        }
    }

    pub(super) fn json(mut self, body: &impl Serialize) -> Result<Self, ZenmlError> {
        let value = serde_json::to_value(body).map_err(|e| ZenmlError::Decode {
            op: self.op,
            status: None,
            detail: format!("cannot encode the request: {e}"),
        })?;
        self.body = Body::Json(value);
        Ok(self)
    }

    pub(super) fn auth(mut self, auth: Auth<'a>) -> Self {
        self.auth = auth;
        self
    }

    pub(super) fn query(mut self, name: &'static str, value: impl ToString) -> Self {
        self.query.push((name, value.to_string()));
        self
    }
}

/// A complete answer. The body may hold a key value, so it is wiped when dropped.
pub(super) struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    /// A redirect's target (`scheme://host:port`); it is never followed.
    redirect_to: Option<String>,
    body: Zeroizing<Vec<u8>>,
}

impl ZenmlClient {
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<T, ZenmlError> {
        let reply = self.execute(&call).await?;
        serde_json::from_slice(&reply.body).map_err(|e| ZenmlError::Decode {
            op: call.op,
            status: Some(reply.status),
            detail: scrub(&e.to_string(), &[self.inner.creds.secret()]),
        })
    }

    /// Fetches every page of a list, page 1 up to the server's `total_pages` (asking past the end is
    /// a 400, so it never overshoots). Offset paging over a listing that changes underneath (an
    /// account deleted on an earlier page) shifts items back a page, where a walk would skip them:
    /// when the total changes between pages, the list is walked again, a few times at most.
    pub(super) async fn list_all<T: DeserializeOwned>(
        &self,
        op: Operation,
        url: Url,
        query: Vec<(&'static str, String)>,
    ) -> Result<Vec<T>, ZenmlError> {
        for walk in 1..MAX_WALKS {
            match self.walk_pages(op, &url, &query, false).await? {
                Some(items) => return Ok(items),
                None => {
                    tracing::debug!(operation = ?op, walk, "the listing changed while paging; walking it again")
                }
            }
        }
        let items = self.walk_pages(op, &url, &query, true).await?;
        Ok(items.unwrap_or_default())
    }

    /// One walk over every page. `None` when the total changed between pages, unless this is the
    /// `last` walk, which finishes anyway and warns.
    async fn walk_pages<T: DeserializeOwned>(
        &self,
        op: Operation,
        url: &Url,
        query: &[(&'static str, String)],
        last: bool,
    ) -> Result<Option<Vec<T>>, ZenmlError> {
        let mut items = Vec::new();
        let mut first_total = None;
        let mut page = 1;
        loop {
            let mut call = Call::new(op, Method::GET, url.clone());
            call.query = query.to_vec();
            let call = call.query("page", page).query("size", self.page_size);
            let answer: wire::Page<T> = self.call_json(call).await?;
            let total = *first_total.get_or_insert(answer.total);
            if total != answer.total {
                if !last {
                    return Ok(None);
                }
                tracing::warn!(operation = ?op, "the listing kept changing while paging; an item may be missing from it");
                first_total = Some(answer.total);
            }
            items.extend(answer.items);
            if page >= answer.total_pages || page >= MAX_PAGES {
                return Ok(Some(items));
            }
            page += 1;
        }
    }

    /// Sends a call until it succeeds or must stop. Repeats: once after a 401 on the cached session
    /// (log in again: the server may have restarted); on 429, honouring Retry-After; on 5xx,
    /// transport errors and timeouts only when the operation is safe to repeat.
    pub(super) async fn execute(&self, call: &Call<'_>) -> Result<Reply, ZenmlError> {
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
                (status @ 300..=399, _) => {
                    return Err(ZenmlError::Redirected {
                        op: call.op,
                        status,
                        to: reply.redirect_to,
                    });
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
        let result = self.receive(call, request).await;
        crate::metrics::observe_upstream("zenml", call.op.metric_name(), started.elapsed());
        result
    }

    async fn receive(
        &self,
        call: &Call<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, ZenmlError> {
        let op = call.op;
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
        let redirect_to = crate::http::redirect_target(response.headers(), &call.url);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(op, e))?;
        Ok(Reply {
            status,
            retry_after,
            redirect_to,
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

/// `Retry-After` as seconds or as an HTTP date.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&Utc) - Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter: a random pause up to base * 2^(attempt-1), capped.
pub(super) fn backoff(attempt: u32) -> Duration {
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
