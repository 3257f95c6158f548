//! Pre-flight checks through Vault's `sys/` API: the token's capabilities on the exact path, and
//! that the mount is a KV v2 engine. `exchange` sends them, and every KV read and write of `kv`
//! and `claims`, on the shared client with the session's token.

use std::error::Error as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;
use zeroize::Zeroizing;

use super::ahead::KeyCaps;
use super::auth::Authed;
use super::{STORE, VaultStore};
use crate::metrics::observe_upstream;
use crate::secret::ExposeSecret;
use crate::store::{StoreError, StoreErrorKind};

impl VaultStore {
    /// A `sys/` request, with the same token, namespace and timeout: its answer as JSON, or the
    /// store error its status says.
    async fn raw(
        &self,
        authed: &Authed,
        method: reqwest::Method,
        api_path: &str,
        body: Option<Value>,
        op: &'static str,
        path: &str,
    ) -> Result<Value, StoreError> {
        let call = RawCall {
            method,
            api_path,
            version: None,
            body,
            label: op,
            op,
            path,
        };
        self.send_json(authed, call).await
    }

    /// Sends one request and reads its answer as JSON (`Null` when empty or not JSON); a status
    /// outside 2xx is the store error it says (a check-and-set mismatch is a `Conflict`). The
    /// answer's bytes are wiped once parsed.
    pub(super) async fn send_json(
        &self,
        authed: &Authed,
        call: RawCall<'_>,
    ) -> Result<Value, StoreError> {
        let (op, path) = (call.op, call.path);
        let (status, bytes) = self.exchange(authed, call).await?;
        let bytes = Zeroizing::new(bytes);
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) {
            return Ok(json);
        }
        Err(self.status_error(op, path, status, &api_errors(&json)))
    }

    /// Sends one request on the shared client and reads the whole answer: its status and body.
    /// The time it took is recorded under `label`; failing to reach Vault is the only error.
    pub(super) async fn exchange(
        &self,
        authed: &Authed,
        call: RawCall<'_>,
    ) -> Result<(u16, Vec<u8>), StoreError> {
        let RawCall {
            method,
            api_path,
            version,
            body,
            label,
            op,
            path,
        } = call;
        let mut token = reqwest::header::HeaderValue::from_str(authed.token.expose_secret())
            .map_err(|_| {
                self.other(
                    op,
                    path,
                    "the token holds characters an HTTP header cannot carry",
                )
            })?;
        token.set_sensitive(true);
        let method_is_patch = method == reqwest::Method::PATCH;
        let mut req = self
            .http
            .request(method, self.url_of(api_path, version))
            .header("X-Vault-Token", token)
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(body) = body {
            if method_is_patch {
                // KV v2 takes a JSON merge patch (RFC 7396) and refuses any other type.
                req = req.header(
                    reqwest::header::CONTENT_TYPE,
                    "application/merge-patch+json",
                );
            }
            req = req.json(&body);
        }
        let start = Instant::now();
        let res = req.send().await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                observe_upstream(STORE, label, start.elapsed());
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
        observe_upstream(STORE, label, start.elapsed());
        let bytes =
            bytes.map_err(|e| self.unreachable(op, path, e.is_timeout(), &e.to_string()))?;
        Ok((status, bytes.into()))
    }

    /// The URL of an API path (`secret/data/p`) and a KV read's version: the parsed address with
    /// the path set, not a string parsed again. `set_path` percent-encodes what a path cannot
    /// hold as it is, so a `#` or `?` in a key path stays in the path.
    pub(super) fn url_of(&self, api_path: &str, version: Option<u64>) -> url::Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v1/{api_path}"));
        if let Some(v) = version {
            url.set_query(Some(&format!("version={v}")));
        }
        url
    }

    /// The token's capabilities on each of `api_paths` (one `sys/capabilities-self` request),
    /// as Vault answers them: `{api_path: [capability, ...]}`.
    async fn capabilities(
        &self,
        authed: &Authed,
        api_paths: &[&str],
        path: &str,
    ) -> Result<Value, StoreError> {
        let body = serde_json::json!({ "paths": api_paths });
        let mut res = self
            .raw(
                authed,
                reqwest::Method::POST,
                "sys/capabilities-self",
                Some(body),
                "capabilities",
                path,
            )
            .await?;
        Ok(match res.get_mut("data") {
            Some(data) => data.take(),
            None => res,
        })
    }

    /// Invariant 2: the token may write the value and its metadata, and read them back. The
    /// answer is one asked ahead for this path if a fresh one is noted (`ahead`), else asked now,
    /// together with the paths the pass expects next.
    pub(super) async fn check_capabilities(
        &self,
        authed: &Authed,
        path: &str,
    ) -> Result<(), StoreError> {
        let caps = self.key_capabilities(authed, path).await?;
        self.note_patchable(path, may_patch_with(&caps.meta));
        const WRITE: &[&str] = &["create", "update", "read"];
        // Each API path is spelled out only for the message, when something is missing there.
        let named: [(&[String], &[&str], ApiPath); 3] = [
            (&caps.data, WRITE, VaultStore::data_path),
            (&caps.meta, &["update", "read"], VaultStore::meta_path),
            (&caps.claim, WRITE, VaultStore::claim_api_path),
        ];
        let mut missing = Vec::new();
        for (have, needed, api_path) in named {
            let has = |c: &str| have.iter().any(|h| h == c);
            if has("root") {
                continue;
            }
            let lacking: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|c| has("deny") || !has(c))
                .collect();
            if !lacking.is_empty() {
                missing.push(format!(
                    "{} on {} (it has: {})",
                    lacking.join(", "),
                    api_path(self, path),
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
            Err(self.error(
                StoreErrorKind::PermissionDenied,
                "preflight",
                path,
                format!("the token lacks {}", missing.join("; ")),
            ))
        }
    }

    /// The token's capabilities on `path`'s value, metadata and claim: a fresh answer asked
    /// ahead, else one `sys/capabilities-self` question about `path` and the paths expected next
    /// (their answers noted for their own pre-flights). One question at a time, so keys
    /// pre-flighting together wait for the answer that covers them instead of asking again.
    async fn key_capabilities(&self, authed: &Authed, path: &str) -> Result<KeyCaps, StoreError> {
        let _turn = self.asking.lock().await;
        let now = Instant::now();
        let batch = match self.ahead.lock() {
            Ok(mut ahead) => match ahead.take(path, now) {
                Some(caps) => return Ok(caps),
                None => ahead.batch(path, now),
            },
            // Nothing can be noted either: this path alone, every time.
            Err(_) => vec![path.to_owned()],
        };
        let api: Vec<[String; 3]> = batch
            .iter()
            .map(|p| [self.data_path(p), self.meta_path(p), self.claim_api_path(p)])
            .collect();
        let flat: Vec<&str> = api.iter().flatten().map(String::as_str).collect();
        let asked = Instant::now();
        let answer = self.capabilities(authed, &flat, path).await?;
        let mut mine = KeyCaps::default();
        let mut ahead = self.ahead.lock().ok();
        for (key_path, [data, meta, claim]) in batch.into_iter().zip(&api) {
            let caps = KeyCaps {
                data: capabilities_on(&answer, data),
                meta: capabilities_on(&answer, meta),
                claim: capabilities_on(&answer, claim),
            };
            if key_path == path {
                mine = caps;
            } else if let Some(ahead) = ahead.as_mut() {
                ahead.note(key_path, caps, asked);
            }
        }
        Ok(mine)
    }

    fn data_path(&self, path: &str) -> String {
        format!("{}/data/{path}", self.mount)
    }

    fn meta_path(&self, path: &str) -> String {
        format!("{}/metadata/{path}", self.mount)
    }

    fn claim_api_path(&self, path: &str) -> String {
        format!("{}/data/{}", self.mount, self.claim_path(path))
    }

    /// Whether the token may `patch` `path`'s metadata, asked of Vault for that path alone: for
    /// a record written before any pre-flight in this process (a pass that only finalizes), so
    /// that the answer also stands in for the paths after it (`may_patch`). Noted either way; a
    /// token that may not ask is taken as one that may not patch.
    pub(super) async fn probe_patchable(
        &self,
        authed: &Authed,
        path: &str,
    ) -> Result<bool, StoreError> {
        let meta_path = self.meta_path(path);
        let allowed = match self.capabilities(authed, &[&meta_path], path).await {
            Ok(caps) => may_patch_with(&capabilities_on(&caps, &meta_path)),
            Err(StoreError::PermissionDenied { .. }) => false,
            Err(other) => return Err(other),
        };
        self.note_patchable(path, allowed);
        Ok(allowed)
    }

    /// Once per store: `mount` must be a KV v2 engine itself (not a KV v1 mount, where `data/`
    /// would silently become part of the key name, nor a folder inside a mount). Skipped when the
    /// token may not ask.
    pub(super) async fn check_mount(&self, authed: &Authed, path: &str) -> Result<(), StoreError> {
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
        let not_kv2 =
            |message: String| self.error(StoreErrorKind::NotWritable, "preflight", path, message);
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
}

/// How a key path's API path is made (`data_path`, `meta_path`, `claim_api_path`).
type ApiPath = fn(&VaultStore, &str) -> String;

/// One request [`VaultStore::exchange`] sends: `label` names it in the upstream metrics, `op` and
/// `path` in its errors.
pub(super) struct RawCall<'a> {
    pub method: reqwest::Method,
    /// The API path after `/v1/`, as Vault names it: every character is part of the path (a
    /// `#` or `?` in a key path is sent percent-encoded, not as a fragment or query).
    pub api_path: &'a str,
    /// `?version=N` of a KV v2 read.
    pub version: Option<u64>,
    pub body: Option<Value>,
    pub label: &'static str,
    pub op: &'static str,
    pub path: &'a str,
}

/// The messages of Vault's `{"errors": [...]}` answer, if it is one.
pub(super) fn api_errors(json: &Value) -> Vec<String> {
    json.get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities Vault's answer lists for `api_path` (none when it lists nothing).
fn capabilities_on(caps: &Value, api_path: &str) -> Vec<String> {
    caps.get(api_path)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether these capabilities on a metadata path allow a merge patch of it.
fn may_patch_with(caps: &[String]) -> bool {
    let has = |c: &str| caps.iter().any(|h| h == c);
    has("root") || (has("patch") && !has("deny"))
}
