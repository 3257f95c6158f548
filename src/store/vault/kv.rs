//! The KV v2 side: versions and their data, the rotation record in `custom_metadata`, and the
//! stamp that tells whether the current version is the rotator's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use zeroize::Zeroizing;

use serde_json::Value;
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;

use super::VaultStore;
use super::auth::Authed;
use super::checks::{RawCall, api_errors};
use crate::secret::{SecretString, secrets_equal};
use crate::store::{
    ENV_API_KEY, ENV_URL, Payload, PendingHooks, RotationRecord, StoreError, StoreErrorKind,
    StoreSnapshot,
};

/// `custom_metadata` keys beside the record: which rotation wrote which KV version, so `promote`
/// and `retire_previous` can tell whether the current version is still the rotator's.
pub(super) const ROTATION_TOKEN: &str = "rotation_token";
pub(super) const ROTATION_VERSION: &str = "rotation_version";

/// The record keys `RotationRecord::to_map` can produce; replaced as a whole on every write while
/// an operator's own `custom_metadata` keys are kept.
fn record_keys() -> &'static BTreeSet<String> {
    static KEYS: std::sync::OnceLock<BTreeSet<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(all_record_keys)
}

fn all_record_keys() -> BTreeSet<String> {
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
        rescue_for: Some(String::new()),
        rescue_until: Some(t),
        hooks: PendingHooks {
            on_rotated: Some(0),
            on_finalized: Some(0),
        },
    }
    .to_map()
    .into_keys()
    .collect()
}

/// Vault's envelope around a KV v2 answer.
#[derive(serde::Deserialize)]
struct Answer<T> {
    data: T,
}

/// A KV v2 data read: the version's data (`null` when deleted), its number, and the path's
/// `custom_metadata` (where the rotator's stamp is).
#[derive(serde::Deserialize)]
struct DataAnswer {
    data: Value,
    metadata: VersionMeta,
}

#[derive(serde::Deserialize)]
struct VersionMeta {
    version: u64,
    #[serde(default)]
    custom_metadata: Option<HashMap<String, String>>,
}

impl VaultStore {
    /// The key's metadata (versions, the record in `custom_metadata`); `None` when nothing was
    /// ever written there.
    pub(super) async fn read_metadata(
        &self,
        authed: &Authed,
        path: &str,
        op: &'static str,
    ) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let api_path = format!("{}/metadata/{path}", self.mount);
        let answer: Option<Answer<ReadSecretMetadataResponse>> = self
            .get_kv(authed, &api_path, None, "read_metadata", op, path)
            .await?;
        Ok(answer.map(|a| a.data))
    }

    /// One version's data (`None`: the current one) with its version number; `None` when absent,
    /// deleted or destroyed.
    pub(super) async fn read_data(
        &self,
        authed: &Authed,
        path: &str,
        version: Option<u64>,
        op: &'static str,
    ) -> Result<Option<(u64, Value)>, StoreError> {
        let api_path = format!("{}/data/{path}", self.mount);
        Ok(self
            .read_data_answer(authed, &api_path, version, op, path)
            .await?
            .map(|a| (a.metadata.version, a.data)))
    }

    /// The current version's value, once its stamp proves it this rotation's (`token`): what
    /// `promote` and the read-back after it check, in one read of one version; with the path's
    /// snapshot, which that read shows whole (the version, the record and the stamp in
    /// `custom_metadata`, and a current version that is readable). `None` when nothing readable
    /// is current; a `Conflict` when another write is.
    pub(super) async fn read_current_if_ours(
        &self,
        authed: &Authed,
        path: &str,
        token: &str,
        op: &'static str,
    ) -> Result<Option<(Value, StoreSnapshot)>, StoreError> {
        let api_path = format!("{}/data/{path}", self.mount);
        let Some(answer) = self
            .read_data_answer(authed, &api_path, None, op, path)
            .await?
        else {
            return Ok(None);
        };
        let version = answer.metadata.version;
        let custom = answer.metadata.custom_metadata.as_ref();
        self.stamp_is_ours(custom, version, Some(token), op, path)?;
        let record = custom.and_then(|c| {
            let map: BTreeMap<String, String> =
                c.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            RotationRecord::from_map(&map)
        });
        let snapshot = StoreSnapshot {
            exists: true,
            version: Some(version.to_string()),
            record,
            written_by: Some(token.to_owned()),
            ..StoreSnapshot::default()
        };
        Ok(Some((answer.data, snapshot)))
    }

    async fn read_data_answer(
        &self,
        authed: &Authed,
        api_path: &str,
        version: Option<u64>,
        op: &'static str,
        path: &str,
    ) -> Result<Option<DataAnswer>, StoreError> {
        // Deleted and destroyed versions are a 404 (without `errors`), as is a missing path.
        let answer: Option<Answer<DataAnswer>> = self
            .get_kv(authed, api_path, version, "read", op, path)
            .await?;
        Ok(answer.map(|a| a.data).filter(|a| !a.data.is_null()))
    }

    /// A KV v2 read, the most frequent requests of a pass: sent on the shared client and parsed
    /// once into the answer's type (vaultrs' request builder built and parsed each URL three
    /// times; bench/README.md). `None` on a 404. The body, which may hold
    /// a key, is wiped once parsed; a parse error says where and why, never what it read.
    async fn get_kv<T: serde::de::DeserializeOwned>(
        &self,
        authed: &Authed,
        api_path: &str,
        version: Option<u64>,
        label: &'static str,
        op: &'static str,
        path: &str,
    ) -> Result<Option<T>, StoreError> {
        let call = RawCall {
            method: reqwest::Method::GET,
            api_path,
            version,
            body: None,
            label,
            op,
            path,
        };
        let (status, body) = self.exchange(authed, call).await?;
        let body = Zeroizing::new(body);
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(self.status_error(op, path, status, &api_errors(&json)));
        }
        serde_json::from_slice::<T>(&body).map(Some).map_err(|e| {
            self.other(
                op,
                path,
                format!(
                    "unexpected response from Vault to {label} ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })
    }

    /// Replaces the rotator's keys in `custom_metadata`, keeping everything else: an operator's
    /// own keys, and (omitted from the request, so untouched) max_versions and cas_required.
    ///
    /// Where pre-flight found the token may `patch` the metadata (`may_patch`; before any
    /// pre-flight in this process, one question to Vault about this path, `probe_patchable`),
    /// one JSON merge patch does it (the rotator's keys set or, when the record has none,
    /// removed; Vault merges), and the path as it is now is `seen` with this record when no
    /// version was written and the caller knows what it saw (`None` otherwise). Else the
    /// metadata is read, merged here and written whole, and the path as it is now is that read
    /// with the record written.
    /// A patch the token turns out not to be allowed (its policy changed since) falls back to the
    /// read and write.
    pub(super) async fn write_record(
        &self,
        authed: &Authed,
        path: &str,
        record: &RotationRecord,
        written: Option<(&str, u64)>,
        op: &'static str,
        seen: Option<&StoreSnapshot>,
    ) -> Result<Option<StoreSnapshot>, StoreError> {
        let patch = match self.may_patch(path) {
            Some(known) => known,
            None => self.probe_patchable(authed, path).await?,
        };
        if patch {
            let call = RawCall {
                method: reqwest::Method::PATCH,
                api_path: &format!("{}/metadata/{path}", self.mount),
                version: None,
                body: Some(serde_json::json!({ "custom_metadata": record_patch(record, written) })),
                label: "patch_metadata",
                op,
                path,
            };
            match self.send_json(authed, call).await {
                Ok(_) => {
                    // No version was written: the path is as the caller saw it, with this record.
                    return Ok(seen.filter(|_| written.is_none()).map(|s| StoreSnapshot {
                        record: Some(record.clone()),
                        ..s.clone()
                    }));
                }
                Err(StoreError::PermissionDenied { .. }) => {
                    tracing::debug!(
                        store = super::STORE,
                        path,
                        "metadata patch denied; reading and writing it whole"
                    );
                    self.note_patchable(path, false);
                }
                Err(other) => return Err(other),
            }
        }
        let mut meta = self.read_metadata(authed, path, op).await?;
        let existing = meta
            .as_mut()
            .and_then(|m| m.custom_metadata.take())
            .unwrap_or_default();
        let custom = merge_custom_metadata(existing, record, written);
        let call = RawCall {
            method: reqwest::Method::POST,
            api_path: &format!("{}/metadata/{path}", self.mount),
            version: None,
            body: Some(serde_json::json!({ "custom_metadata": custom })),
            label: "write_metadata",
            op,
            path,
        };
        self.send_json(authed, call).await?;
        // The path as it is now: what the read before the write said, with the record written.
        if let Some(m) = meta.as_mut() {
            m.custom_metadata = Some(custom);
        }
        Ok(Some(snapshot(meta.as_ref())))
    }

    /// Notes what a pre-flight of `path` found: whether the token may patch its metadata.
    pub(super) fn note_patchable(&self, path: &str, allowed: bool) {
        if let Ok(mut known) = self.patchable.lock() {
            known.paths.insert(path.to_owned(), allowed);
            known.last = Some(allowed);
        }
    }

    /// Whether to patch `path`'s metadata: as its last pre-flight found; for a path not
    /// pre-flighted yet in this process (a finalize before any rotation), as the latest
    /// pre-flight of any path found (one policy usually covers them all; where it does not, the
    /// patch is refused once and the path written whole from then on); before any, not known
    /// (`None`: `write_record` asks Vault; of records written at the same moment each may ask,
    /// those after take the answer noted).
    fn may_patch(&self, path: &str) -> Option<bool> {
        match self.patchable.lock() {
            Ok(known) => known.paths.get(path).copied().or(known.last),
            // Nothing can be noted either: written whole, not asked again each time.
            Err(_) => Some(false),
        }
    }

    /// Writes `data` as a new version of `kv_path`, checked-and-set against version `cas` (0:
    /// only if nothing is there); its version number. A mismatch is a `Conflict`. Sent on the
    /// shared client as the reads are; `label` names it in the metrics.
    pub(super) async fn write_data(
        &self,
        authed: &Authed,
        kv_path: &str,
        data: Value,
        cas: u64,
        label: &'static str,
        op: &'static str,
    ) -> Result<u64, StoreError> {
        let call = RawCall {
            method: reqwest::Method::POST,
            api_path: &format!("{}/data/{kv_path}", self.mount),
            version: None,
            body: Some(serde_json::json!({ "options": { "cas": cas }, "data": data })),
            label,
            op,
            path: kv_path,
        };
        let answer = self.send_json(authed, call).await?;
        answer
            .pointer("/data/version")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                self.other(
                    op,
                    kv_path,
                    format!("unexpected response from Vault to {label}: no version number"),
                )
            })
    }

    /// Destroys one version of the key at `path` for good.
    pub(super) async fn destroy_version(
        &self,
        authed: &Authed,
        path: &str,
        version: u64,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let call = RawCall {
            method: reqwest::Method::POST,
            api_path: &format!("{}/destroy/{path}", self.mount),
            version: None,
            body: Some(serde_json::json!({ "versions": [version] })),
            label: "destroy",
            op,
            path,
        };
        self.send_json(authed, call).await.map(|_| ())
    }

    pub(super) fn current_is_ours(
        &self,
        meta: Option<&ReadSecretMetadataResponse>,
        token: Option<&str>,
        op: &'static str,
        path: &str,
    ) -> Result<u64, StoreError> {
        let Some(meta) = meta else {
            return Err(self.error(
                StoreErrorKind::Conflict,
                op,
                path,
                "nothing is stored there".to_owned(),
            ));
        };
        let custom = meta.custom_metadata.as_ref();
        self.stamp_is_ours(custom, meta.current_version, token, op, path)
    }

    /// Whether the stamp in `custom` names `current_version` (and, given `token`, this rotation).
    fn stamp_is_ours(
        &self,
        custom: Option<&HashMap<String, String>>,
        current_version: u64,
        token: Option<&str>,
        op: &'static str,
        path: &str,
    ) -> Result<u64, StoreError> {
        let conflict = |message: String| self.error(StoreErrorKind::Conflict, op, path, message);
        let (stamp_token, stamp_version) = stamp_of(custom);
        if token.is_some_and(|t| stamp_token != Some(t)) {
            return Err(conflict(
                "the last write recorded there is not this rotation's".to_owned(),
            ));
        }
        match stamp_version {
            Some(v) if v == current_version => Ok(v),
            Some(v) => Err(conflict(format!(
                "version {current_version} was written on top of the rotator's version {v}"
            ))),
            None => Err(conflict(
                "the current version was not written by the rotator".to_owned(),
            )),
        }
    }
}

/// The rotator's stamp in a path's `custom_metadata`: the token and the version of its last write.
fn stamp_of(custom: Option<&HashMap<String, String>>) -> (Option<&str>, Option<u64>) {
    let token = custom
        .and_then(|c| c.get(ROTATION_TOKEN))
        .map(String::as_str);
    let version = custom
        .and_then(|c| c.get(ROTATION_VERSION))
        .and_then(|v| v.parse::<u64>().ok());
    (token, version)
}

pub(super) fn merge_custom_metadata(
    mut existing: HashMap<String, String>,
    record: &RotationRecord,
    written: Option<(&str, u64)>,
) -> HashMap<String, String> {
    for key in record_keys() {
        existing.remove(key);
    }
    // Vault refuses empty custom_metadata values; an absent key reads back as empty anyway.
    existing.extend(record.to_map().into_iter().filter(|(_, v)| !v.is_empty()));
    if let Some((token, version)) = written {
        existing.insert(ROTATION_TOKEN.to_owned(), token.to_owned());
        existing.insert(ROTATION_VERSION.to_owned(), version.to_string());
    }
    existing
}

/// The merge patch (RFC 7396) of `custom_metadata` that does what `merge_custom_metadata` does:
/// every record key set, or removed (null) when this record has no value for it; the stamp set
/// when a version was written; everything else (an operator's keys, the stamp otherwise) untouched.
pub(super) fn record_patch(
    record: &RotationRecord,
    written: Option<(&str, u64)>,
) -> serde_json::Map<String, Value> {
    let mut patch: serde_json::Map<String, Value> = record_keys()
        .iter()
        .map(|k| (k.clone(), Value::Null))
        .collect();
    for (k, v) in record.to_map() {
        if !v.is_empty() {
            patch.insert(k, Value::String(v));
        }
    }
    if let Some((token, version)) = written {
        patch.insert(ROTATION_TOKEN.to_owned(), Value::String(token.to_owned()));
        patch.insert(
            ROTATION_VERSION.to_owned(),
            Value::String(version.to_string()),
        );
    }
    patch
}

pub(super) fn snapshot(meta: Option<&ReadSecretMetadataResponse>) -> StoreSnapshot {
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
    let (stamp_token, stamp_version) = stamp_of(meta.custom_metadata.as_ref());
    StoreSnapshot {
        exists: meta.current_version > 0,
        version: (meta.current_version > 0).then(|| meta.current_version.to_string()),
        record,
        pending: None,
        written_by: stamp_token
            .filter(|_| stamp_version == Some(meta.current_version))
            .map(str::to_owned),
        current_deleted,
        unwritable: None,
        warnings: warnings(meta),
    }
}

/// Settings of the path that let Vault drop a value the rotator counts on.
fn warnings(meta: &ReadSecretMetadataResponse) -> Vec<String> {
    let mut out = Vec::new();
    if meta.max_versions == 1 {
        out.push(
            "max_versions = 1: Vault will not keep the previous value for the retain window".into(),
        );
    }
    let after = meta.delete_version_after.as_str();
    if !after.is_empty() && !after.starts_with("0s") && after != "0" {
        out.push(format!(
            "delete_version_after = {after}: Vault deletes each version after this long, the current one too"
        ));
    }
    out
}

/// `ZENML_STORE_API_KEY` of a stored version. A hand-written value that carries only the key
/// (no URL) still counts: it is what the workloads read.
pub(super) fn api_key_in(data: &Value) -> Option<SecretString> {
    data.get(ENV_API_KEY)
        .and_then(Value::as_str)
        .map(|k| SecretString::from(k.to_owned()))
}

pub(super) fn holds_payload(data: &Value, payload: &Payload) -> bool {
    let url_same = data.get(ENV_URL).and_then(Value::as_str) == Some(payload.zenml_url.as_str());
    let key_same = api_key_in(data).is_some_and(|k| secrets_equal(&k, &payload.api_key));
    url_same && key_same
}
