//! Where rotated keys are written: one trait, one folder per backend (its client and, in
//! `settings.rs`, its `[stores.NAME]` table), chosen in one place from the settings. The rotation
//! engine only sees `SecretStore`; a new backend slots in here.
//!
//! Every backend keeps two things per path: the payload workloads read
//! (`{"ZENML_STORE_URL": ..., "ZENML_STORE_API_KEY": ...}`) and a non-secret `RotationRecord`
//! (Vault `custom_metadata`, AWS tags, a sidecar file) that tells the rotator what it did.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::secret::{ExposeSecret, SecretString};

pub mod aws;
pub mod claim;
pub mod file;
pub mod vault;

// `[stores.NAME]` of every kind, and the one place that hands a table to its kind.
pub mod settings;

pub use claim::{Claim, ClaimPhase, Coordination, StoredClaim};
pub use settings::StoreSettings;

pub const MANAGED_BY: &str = "zenml-rotator";
pub const ENV_URL: &str = "ZENML_STORE_URL";
pub const ENV_API_KEY: &str = "ZENML_STORE_API_KEY";

/// What workloads read: the server URL and the API key.
pub struct Payload {
    pub zenml_url: String,
    pub api_key: SecretString,
}

impl Payload {
    /// The JSON object written to Vault and AWS. The returned string holds the key: keep it short-lived.
    pub fn to_json(&self) -> SecretString {
        let mut map = serde_json::Map::new();
        map.insert(
            ENV_URL.into(),
            serde_json::Value::String(self.zenml_url.clone()),
        );
        map.insert(
            ENV_API_KEY.into(),
            serde_json::Value::String(self.api_key.expose_secret().to_owned()),
        );
        SecretString::from(serde_json::Value::Object(map).to_string())
    }

    /// Parses a stored JSON payload; `None` when it is not one of ours (a foreign value).
    pub fn from_json(raw: &SecretString) -> Option<Payload> {
        let v: serde_json::Value = serde_json::from_str(raw.expose_secret()).ok()?;
        let obj = v.as_object()?;
        let url = obj.get(ENV_URL)?.as_str()?.to_owned();
        let key = obj.get(ENV_API_KEY)?.as_str()?.to_owned();
        Some(Payload {
            zenml_url: url,
            api_key: SecretString::from(key),
        })
    }
}

/// The rotator's bookkeeping next to a stored value. Never secret: ids, names, times, fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotationRecord {
    pub policy: String,
    pub service_account: String,
    pub api_key: String,
    /// ZenML id of the API key whose value is stored now.
    pub key_id: String,
    /// Fingerprint of the stored value.
    pub fingerprint: String,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Until when the previous value stays valid.
    pub retain_until: Option<DateTime<Utc>>,
    /// Set once the previous value was confirmed rejected (or deactivated) after its window.
    pub finalized_at: Option<DateTime<Utc>>,
    /// Strategy `replace`: the ZenML id of the key being retired, and when it is deactivated.
    pub retiring_key_id: Option<String>,
    pub retire_at: Option<DateTime<Utc>>,
    /// Strategy `rotate`, recovering from a rotation whose new value nobody kept: the stored key
    /// (`key_id`) is a rescue key standing in for the policy's own key (this id) until
    /// `rescue_until`, when the policy's key is rotated again.
    pub rescue_for: Option<String>,
    pub rescue_until: Option<DateTime<Utc>>,
    /// The key's hooks that have not yet succeeded for the stored value.
    pub hooks: PendingHooks,
}

/// A hook waiting to succeed for the stored value, with its failed attempts so far (`Some(0)`:
/// not run yet). Kept in the record beside the value it is for, so it survives a restart, needs
/// no state directory, any rotator of the key sees it, and a new value's record starts clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingHooks {
    pub on_rotated: Option<u32>,
    pub on_finalized: Option<u32>,
}

impl PendingHooks {
    const ON_ROTATED: &'static str = "on_rotated_pending";
    const ON_FINALIZED: &'static str = "on_finalized_pending";

    fn put(&self, m: &mut BTreeMap<String, String>) {
        for (k, v) in [
            (Self::ON_ROTATED, self.on_rotated),
            (Self::ON_FINALIZED, self.on_finalized),
        ] {
            if let Some(n) = v {
                m.insert(k.into(), n.to_string());
            }
        }
    }

    fn from_map(m: &BTreeMap<String, String>) -> PendingHooks {
        let n = |k: &str| m.get(k).and_then(|v| v.parse().ok());
        PendingHooks {
            on_rotated: n(Self::ON_ROTATED),
            on_finalized: n(Self::ON_FINALIZED),
        }
    }
}

/// RFC 3339 with as many sub-second digits as the time has: ZenML's microseconds survive, so a
/// later pass can tell the rotator's rotation from another one in the same second.
fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_ts(s: Option<&String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl RotationRecord {
    /// Flat string map (Vault custom_metadata, AWS tags, sidecar JSON). Keys are stable: they are
    /// what operators see in their store.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("managed_by".into(), MANAGED_BY.into());
        m.insert("policy".into(), self.policy.clone());
        m.insert("service_account".into(), self.service_account.clone());
        m.insert("api_key".into(), self.api_key.clone());
        m.insert("key_id".into(), self.key_id.clone());
        m.insert("fingerprint".into(), self.fingerprint.clone());
        let mut put = |k: &str, v: &Option<DateTime<Utc>>| {
            if let Some(t) = v {
                m.insert(k.into(), ts(t));
            }
        };
        put("rotated_at", &self.rotated_at);
        put("retain_until", &self.retain_until);
        put("finalized_at", &self.finalized_at);
        put("retire_at", &self.retire_at);
        put("rescue_until", &self.rescue_until);
        if let Some(id) = &self.retiring_key_id {
            m.insert("retiring_key_id".into(), id.clone());
        }
        if let Some(id) = &self.rescue_for {
            m.insert("rescue_for".into(), id.clone());
        }
        self.hooks.put(&mut m);
        m
    }

    /// Reads a record back; `None` unless `managed_by = zenml-rotator` (a path we never wrote).
    pub fn from_map(m: &BTreeMap<String, String>) -> Option<RotationRecord> {
        if m.get("managed_by").map(String::as_str) != Some(MANAGED_BY) {
            return None;
        }
        let s = |k: &str| m.get(k).cloned().unwrap_or_default();
        Some(RotationRecord {
            policy: s("policy"),
            service_account: s("service_account"),
            api_key: s("api_key"),
            key_id: s("key_id"),
            fingerprint: s("fingerprint"),
            rotated_at: parse_ts(m.get("rotated_at")),
            retain_until: parse_ts(m.get("retain_until")),
            finalized_at: parse_ts(m.get("finalized_at")),
            retiring_key_id: m.get("retiring_key_id").cloned(),
            retire_at: parse_ts(m.get("retire_at")),
            rescue_for: m.get("rescue_for").cloned(),
            rescue_until: parse_ts(m.get("rescue_until")),
            hooks: PendingHooks::from_map(m),
        })
    }
}

/// What is at a path now, read without writing anything.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    /// Whether anything exists at the path (a secret, a file).
    pub exists: bool,
    /// The backend's token for the current version, used for check-and-set: the KV v2 version
    /// number, the AWSCURRENT VersionId, a hash of the file. `None` when nothing exists.
    pub version: Option<String>,
    /// The rotator's record, if the path is managed.
    pub record: Option<RotationRecord>,
    /// A staged value waiting for promotion (AWS `AWSPENDING` on another version): its token.
    pub pending: Option<String>,
    /// The rotation (token) whose finished write the current version is, where the store records
    /// that beside the value (KV v2: the stamp in `custom_metadata`, naming the current version).
    /// `None` when unknown: a hand-written version, a write cut off before its stamp.
    pub written_by: Option<String>,
    /// A current version exists but holds no readable value (KV v2: soft-deleted or destroyed).
    pub current_deleted: bool,
    /// Why a write to this path would be refused whatever the credentials (AWS: scheduled for
    /// deletion, owned by another service, under AWS-driven rotation), as far as `inspect` sees.
    pub unwritable: Option<String>,
    /// What pre-flight warns the operator about before a write here (KV v2: settings that let
    /// Vault drop the previous value, or the current one, by itself).
    pub warnings: Vec<String>,
}

/// What `promote_and_read_current` read: the current value, and the path's snapshot when the
/// same read shows it whole (what `inspect` would say now; `None`: not known without reading).
pub struct ReadBack {
    pub value: Option<SecretString>,
    pub snapshot: Option<StoreSnapshot>,
}

/// One store error: which operation, and whether retrying later may help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store} {op} {path}: permission denied: {message}")]
    PermissionDenied {
        store: &'static str,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("{store} {op} {path}: the store is unavailable: {message}")]
    Unavailable {
        store: &'static str,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error(
        "{store} {op} {path}: the stored value changed since pre-flight ({message}); not overwriting it"
    )]
    Conflict {
        store: &'static str,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("{store} {op} {path}: {message}")]
    NotWritable {
        store: &'static str,
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("{store} {op} {path}: {message}")]
    Other {
        store: &'static str,
        op: &'static str,
        path: String,
        message: String,
    },
}

/// The kinds of `StoreError`, for code that decides the kind apart from building the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    PermissionDenied,
    Unavailable,
    Conflict,
    NotWritable,
    Other,
}

impl StoreError {
    pub fn new(
        kind: StoreErrorKind,
        store: &'static str,
        op: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> StoreError {
        let (path, message) = (path.into(), message.into());
        match kind {
            StoreErrorKind::PermissionDenied => StoreError::PermissionDenied {
                store,
                op,
                path,
                message,
            },
            StoreErrorKind::Unavailable => StoreError::Unavailable {
                store,
                op,
                path,
                message,
            },
            StoreErrorKind::Conflict => StoreError::Conflict {
                store,
                op,
                path,
                message,
            },
            StoreErrorKind::NotWritable => StoreError::NotWritable {
                store,
                op,
                path,
                message,
            },
            StoreErrorKind::Other => StoreError::Other {
                store,
                op,
                path,
                message,
            },
        }
    }
}

/// A backend that holds the payload of one or more keys.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// `vault`, `aws-secrets-manager` or `file`: for logs and the `upstream` metric label.
    fn kind(&self) -> &'static str;

    /// Reads the path's state and record without the value. Cheap: `plan` calls it for every key.
    async fn inspect(&self, path: &str) -> Result<StoreSnapshot, StoreError>;

    /// Invariant 2: proves a write to `path` would succeed right now (reachable, authenticated,
    /// allowed to create/update this exact path, not scheduled for deletion, no foreign rotation in
    /// progress). Writes nothing. Returns the snapshot the later write checks-and-sets against.
    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError>;

    /// The key paths a pass is about to look at, in its order, so that a store whose pre-flight
    /// asks a question per path may ask about several at once (Vault's capabilities). A hint:
    /// nothing is sent, and a store that asks nothing per path ignores it.
    fn expect_paths(&self, _paths: Vec<String>) {}

    /// `preflight`, right after a look under the key's claim (or one the claim's check-and-set
    /// proves current) returned `seen`: a store whose snapshot is only the check-and-set base
    /// overrides it to prove the rest (permissions) without reading the path again (KV v2). A
    /// write between `seen` and the write itself fails its check-and-set.
    async fn preflight_seen(
        &self,
        path: &str,
        _seen: &StoreSnapshot,
    ) -> Result<StoreSnapshot, StoreError> {
        self.preflight(path).await
    }

    /// The current API key value at `path` (`ZENML_STORE_API_KEY` of the current version).
    async fn read_current(&self, path: &str) -> Result<Option<SecretString>, StoreError>;

    /// The previous value, kept for consumers that fall back during the retain window
    /// (KV v2 version before the current one, AWS `AWSPREVIOUS`, the file's `.previous`).
    async fn read_previous(&self, path: &str) -> Result<Option<SecretString>, StoreError>;

    /// `read_previous`, where `seen` (a snapshot made under the key's claim) says which version
    /// is current. A store whose previous version is named by the current one's token overrides
    /// it (KV v2: the version before, read without reading the metadata again).
    async fn read_previous_of(
        &self,
        path: &str,
        _seen: &StoreSnapshot,
    ) -> Result<Option<SecretString>, StoreError> {
        self.read_previous(path).await
    }

    /// Writes the new value so it can be read back, checked-and-set against `expected` (from
    /// pre-flight). `token` identifies this rotation and makes retries idempotent (AWS
    /// ClientRequestToken). On AWS this stages `AWSPENDING`; elsewhere it is the write itself.
    async fn stage(
        &self,
        path: &str,
        payload: &Payload,
        record: &RotationRecord,
        expected: &StoreSnapshot,
        token: &str,
    ) -> Result<(), StoreError>;

    /// The value written by `stage(token)`, read back from the store.
    async fn read_staged(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Option<SecretString>, StoreError>;

    /// Makes the staged value current (AWS: move `AWSCURRENT`, old version keeps `AWSPREVIOUS`,
    /// remove `AWSPENDING`), refusing with `Conflict` when the current version is no longer
    /// `expected` (someone wrote behind our back). Idempotent: promoting what is already current
    /// succeeds. A no-op where `stage` already made it current.
    async fn promote(
        &self,
        path: &str,
        token: &str,
        expected: &StoreSnapshot,
    ) -> Result<(), StoreError>;

    /// `promote`, then the current value read back: the writer's last check that the value is
    /// where the workloads read it. A store that can prove both with one read overrides it (KV
    /// v2: the current version's data carries the stamp `promote` checks), which also reads the
    /// value and its ownership from the same version, and says what the path holds now.
    async fn promote_and_read_current(
        &self,
        path: &str,
        token: &str,
        expected: &StoreSnapshot,
    ) -> Result<ReadBack, StoreError> {
        self.promote(path, token, expected).await?;
        Ok(ReadBack {
            value: self.read_current(path).await?,
            snapshot: None,
        })
    }

    /// Drops a staged value that will never be promoted (a stuck `AWSPENDING`). Idempotent.
    async fn discard_staged(&self, path: &str, token: &str) -> Result<(), StoreError>;

    /// Replaces the record only. The engine calls it after every promote (AWS keeps the record in
    /// tags, which describe the current version) and when a rotation is finalized.
    async fn set_record(&self, path: &str, record: &RotationRecord) -> Result<(), StoreError>;

    /// `set_record`, and the path's snapshot after it where the write shows it whole, so the
    /// look after a finalize need not read it again; `seen` is what the caller's own look (under
    /// the key's claim) saw there. KV v2: `seen` with the record, when the record went in as a
    /// metadata patch; the metadata read it was merged into, with the record, otherwise.
    /// `None`: not known without reading.
    async fn set_record_seen(
        &self,
        path: &str,
        record: &RotationRecord,
        _seen: Option<&StoreSnapshot>,
    ) -> Result<Option<StoreSnapshot>, StoreError> {
        self.set_record(path, record).await.map(|()| None)
    }

    /// Removes the previous value so no store keeps a dead value that looks usable
    /// (`retire_previous`: destroy the KV v2 version, drop `AWSPREVIOUS`, delete `.previous`).
    async fn retire_previous(&self, path: &str) -> Result<(), StoreError>;

    /// How rotators of this store's keys stay out of each other's way (invariant 7).
    fn coordination(&self) -> Coordination;

    /// The claim on the key at `path`, if one was ever written (`Coordination::Shared` only).
    async fn read_claim(&self, path: &str) -> Result<Option<StoredClaim>, StoreError>;

    /// Writes the claim on the key at `path` atomically: creates it when `expected` is `None`,
    /// else replaces exactly the version `expected`. `Conflict` when another rotator wrote first.
    /// Returns the new version. Writes `claim.value` where the store keeps the value in the claim.
    async fn write_claim(
        &self,
        path: &str,
        claim: &Claim,
        expected: Option<&str>,
    ) -> Result<String, StoreError>;

    /// Where a new value waits between ZenML's answer and the store write.
    fn keeps_value(&self) -> ValueKept;

    /// What `stage` writes: the current value itself, or a value beside it.
    fn staging(&self) -> Staging;
}

/// What a store's `stage` writes, so the writer reads back and records only what it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// The current value and its record, at once (KV v2, the file store): `read_staged` is
    /// `read_current`, and `set_record` after `promote` would write the same record again.
    InPlace,
    /// A version beside the current one (AWS `AWSPENDING`): read back before `promote` moves it,
    /// and recorded after, since the record describes the current version.
    Beside,
}

/// Where a store keeps a new value between ZenML's answer and the store write, so another
/// rotator can finish the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKept {
    /// In the claim document (Vault).
    InClaim,
    /// Staged under the claim's token (AWS `AWSPENDING`).
    Staged,
    /// Nowhere another host can see: the local journal (file store).
    Journal,
}

/// Connects the store a `[stores.NAME]` section describes. The one place that picks a client.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn SecretStore>, StoreError> {
    Ok(match settings {
        StoreSettings::File(s) => Arc::new(file::FileStore::new(s)),
        StoreSettings::Vault(s) => Arc::new(vault::VaultStore::connect(s).await?),
        StoreSettings::Aws(s) => Arc::new(aws::AwsStore::connect(s, s.timeout).await?),
    })
}

/// Reads the API key out of a stored JSON payload, `None` when the payload is not ours.
pub fn api_key_of(raw: &SecretString) -> Option<SecretString> {
    Payload::from_json(raw).map(|p| p.api_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrips_through_a_map() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = RotationRecord {
            policy: "training".into(),
            service_account: "sa".into(),
            api_key: "default".into(),
            key_id: "1234".into(),
            fingerprint: "abcd0123".into(),
            rotated_at: Some(t),
            retain_until: Some(t),
            finalized_at: None,
            retiring_key_id: Some("5678".into()),
            retire_at: Some(t),
            rescue_for: Some("9abc".into()),
            rescue_until: Some(t),
            hooks: PendingHooks {
                on_rotated: Some(2),
                on_finalized: None,
            },
        };
        let m = r.to_map();
        assert_eq!(m["on_rotated_pending"], "2");
        assert!(!m.contains_key("on_finalized_pending"));
        assert_eq!(m["managed_by"], "zenml-rotator");
        assert_eq!(m["rotated_at"], "2026-01-02T03:04:05Z");
        assert_eq!(RotationRecord::from_map(&m), Some(r));
        let mut foreign = m.clone();
        foreign.remove("managed_by");
        assert_eq!(RotationRecord::from_map(&foreign), None);
    }

    #[test]
    fn payload_json_has_exactly_the_two_env_names() {
        let p = Payload {
            zenml_url: "https://z".into(),
            api_key: SecretString::from("ZENKEY_x"),
        };
        let raw = p.to_json();
        let v: serde_json::Value = serde_json::from_str(raw.expose_secret()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(v["ZENML_STORE_URL"], "https://z");
        assert_eq!(api_key_of(&raw).unwrap().expose_secret(), "ZENKEY_x");
        assert!(api_key_of(&SecretString::from("not json")).is_none());
    }
}
