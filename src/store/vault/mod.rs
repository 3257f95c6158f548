//! HashiCorp Vault / OpenBao KV v2: one KV version per rotation, written with check-and-set against
//! the version pre-flight saw, and the rotation record in the path's `custom_metadata`.
//! Logs in with a token, AppRole or Kubernetes and keeps its token alive lazily, before each call.
//!
//! The token the rotator needs (paths relative to the mount `secret`, key path `zenml/*`):
//! ```hcl
//! path "secret/data/zenml/*"     { capabilities = ["create", "update", "read"] }
//! path "secret/metadata/zenml/*" { capabilities = ["update", "read", "patch"] }   # patch: optional
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
//!
//! Here: the store and its `SecretStore` steps. Beside it: `auth` (logins, token lease: the only
//! requests sent through vaultrs), `kv` (versions, record, ownership stamp; every KV read and
//! write), `claims` (the claim documents), `checks` (pre-flight through `sys/`, and `exchange`,
//! which sends every request but the logins on the shared client), `ahead` (capability answers
//! asked for the paths a pass expects next), `errors` (Vault's answers as
//! store errors), `settings` (the `[stores.NAME]` table of kind "vault").

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{
    Claim, Coordination, ENV_API_KEY, ENV_URL, Payload, ReadBack, RotationRecord, SecretStore,
    Staging, StoreError, StoreErrorKind, StoreSnapshot, StoredClaim, ValueKept,
};
use crate::secret::{ExposeSecret, SecretString};

mod ahead;
mod auth;
mod checks;
mod claims;
mod errors;
mod kv;
pub mod settings;
#[cfg(test)]
mod tests;

use auth::{Session, describe_auth};
use kv::{api_key_in, holds_payload, snapshot};
use settings::{KIND as STORE, valid_path};
pub use settings::{VaultAuth, VaultSettings};

/// A Vault KV v2 mount as a `SecretStore`.
pub struct VaultStore {
    /// `scheme://host[:port]` as the operator wrote it, no trailing slash: what errors name and
    /// the vaultrs logins use.
    address: String,
    /// `address` parsed once (the URL crate's normal form): each request's URL is this with its
    /// path set, not a string parsed again (a URL parse with its host is ~8,000 instructions;
    /// setting a path, a quarter of it).
    base: url::Url,
    mount: String,
    namespace: Option<String>,
    auth: VaultAuth,
    timeout: Duration,
    http: reqwest::Client,
    session: Mutex<Option<Session>>,
    /// The KV path prefix of claims, under the same mount.
    claims: String,
    /// Set once pre-flight has confirmed `mount` is a KV v2 engine.
    mount_checked: AtomicBool,
    /// Whether the token may `patch` each key path's metadata, as pre-flight found: where it
    /// may, the record is written with one merge patch instead of a read and a whole write.
    patchable: std::sync::Mutex<Patchable>,
    /// The paths a pass expects to pre-flight next and the capability answers asked ahead for
    /// them; `asking` lets one capability question be in flight at a time.
    ahead: std::sync::Mutex<ahead::Ahead>,
    asking: Mutex<()>,
}

/// What pre-flights found about patching metadata: per key path, and the latest of any path.
#[derive(Default)]
struct Patchable {
    paths: HashMap<String, bool>,
    last: Option<bool>,
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
            base: url,
            mount,
            namespace,
            auth: settings.auth.clone(),
            timeout: settings.timeout,
            http,
            session: Mutex::new(None),
            claims: settings.claims.trim_matches('/').to_owned(),
            mount_checked: AtomicBool::new(false),
            patchable: std::sync::Mutex::new(Patchable::default()),
            ahead: std::sync::Mutex::new(ahead::Ahead::default()),
            asking: Mutex::new(()),
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

    /// An error about `path`, named as `mount/path`.
    fn error(
        &self,
        kind: StoreErrorKind,
        op: &'static str,
        path: &str,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError::new(kind, STORE, op, self.shown(path), message)
    }

    fn other(&self, op: &'static str, path: &str, message: impl Into<String>) -> StoreError {
        self.error(StoreErrorKind::Other, op, path, message)
    }

    /// What pre-flight saw that the operator should change (`StoreSnapshot::warnings`).
    fn warn(&self, path: &str, seen: &StoreSnapshot) {
        for warning in &seen.warnings {
            tracing::warn!(store = STORE, path = %self.shown(path), "{warning}");
        }
    }

    fn check_path(&self, op: &'static str, path: &str) -> Result<(), StoreError> {
        if valid_path(path) {
            Ok(())
        } else {
            Err(self.error(
                StoreErrorKind::NotWritable,
                op,
                path,
                "not a valid KV path (no leading or trailing '/', no empty, '.' or '..' \
                          segments, no control characters)"
                    .to_owned(),
            ))
        }
    }
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

    fn expect_paths(&self, paths: Vec<String>) {
        if let Ok(mut ahead) = self.ahead.lock() {
            ahead.expect(paths.into_iter().filter(|p| valid_path(p)));
        }
    }

    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        self.check_path("preflight", path)?;
        let authed = self.authed(path).await?;
        self.check_capabilities(&authed, path).await?;
        self.check_mount(&authed, path).await?;
        let meta = self.read_metadata(&authed, path, "preflight").await?;
        let seen = snapshot(meta.as_ref());
        self.warn(path, &seen);
        Ok(seen)
    }

    async fn preflight_seen(
        &self,
        path: &str,
        seen: &StoreSnapshot,
    ) -> Result<StoreSnapshot, StoreError> {
        self.check_path("preflight", path)?;
        let authed = self.authed(path).await?;
        self.check_capabilities(&authed, path).await?;
        self.check_mount(&authed, path).await?;
        self.warn(path, seen);
        Ok(seen.clone())
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

    async fn read_previous_of(
        &self,
        path: &str,
        seen: &StoreSnapshot,
    ) -> Result<Option<SecretString>, StoreError> {
        const OP: &str = "read_previous";
        let Some(current) = seen.version.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
            return self.read_previous(path).await;
        };
        self.check_path(OP, path)?;
        if current <= 1 {
            return Ok(None);
        }
        // A destroyed or deleted version reads as a 404, which is `None`, as its metadata says.
        let authed = self.authed(path).await?;
        let data = self.read_data(&authed, path, Some(current - 1), OP).await?;
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
        let authed = self.authed(path).await?;
        let conflict = |message: String| self.error(StoreErrorKind::Conflict, OP, path, message);

        // A retry (or a journal replay after a fresh pre-flight) finds its own value current:
        // it must not stack a second copy on top and push the real previous value out of reach.
        // When the pre-flight saw another rotation's finished write current, this one's value
        // is not there: the check-and-set below fails if anything was written since, and the
        // conflict is read then.
        let mut written = None;
        let maybe_ours = expected.written_by.as_deref().is_none_or(|t| t == token);
        if cas > 0 && maybe_ours {
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
                let res = self.write_data(&authed, path, data, cas, "write", OP).await;
                match res {
                    Ok(version) => version,
                    Err(StoreError::Conflict { message, .. }) => {
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
                    Err(other) => return Err(other),
                }
            }
        };
        self.write_record(&authed, path, record, Some((token, written)), OP, None)
            .await
            .map(|_| ())
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

    async fn promote_and_read_current(
        &self,
        path: &str,
        token: &str,
        _expected: &StoreSnapshot,
    ) -> Result<ReadBack, StoreError> {
        const OP: &str = "promote";
        self.check_path(OP, path)?;
        let authed = self.authed(path).await?;
        let read = self.read_current_if_ours(&authed, path, token, OP).await?;
        let (value, snapshot) = read
            .map(|(data, snapshot)| (api_key_in(&data), snapshot))
            .unzip();
        Ok(ReadBack {
            value: value.flatten(),
            snapshot,
        })
    }

    async fn discard_staged(&self, _path: &str, _token: &str) -> Result<(), StoreError> {
        // KV v2 has no staging: a written version is current at once.
        Ok(())
    }

    async fn set_record(&self, path: &str, record: &RotationRecord) -> Result<(), StoreError> {
        self.set_record_seen(path, record, None).await.map(|_| ())
    }

    async fn set_record_seen(
        &self,
        path: &str,
        record: &RotationRecord,
        seen: Option<&StoreSnapshot>,
    ) -> Result<Option<StoreSnapshot>, StoreError> {
        self.check_path("set_record", path)?;
        let authed = self.authed(path).await?;
        self.write_record(&authed, path, record, None, "set_record", seen)
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
        self.destroy_version(&authed, path, previous, OP).await
    }

    fn coordination(&self) -> Coordination {
        Coordination::Shared
    }

    async fn read_claim(&self, path: &str) -> Result<Option<StoredClaim>, StoreError> {
        self.check_path("read_claim", path)?;
        self.read_claim_doc(path).await
    }

    async fn write_claim(
        &self,
        path: &str,
        claim: &Claim,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.check_path("write_claim", path)?;
        self.write_claim_doc(path, claim, expected).await
    }

    fn keeps_value(&self) -> ValueKept {
        ValueKept::InClaim
    }

    fn staging(&self) -> Staging {
        Staging::InPlace
    }
}
