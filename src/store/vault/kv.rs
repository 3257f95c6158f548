//! The KV v2 side: versions and their data, the rotation record in `custom_metadata`, and the
//! stamp that tells whether the current version is the rotator's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use serde_json::Value;
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::api::kv2::responses::ReadSecretMetadataResponse;

use super::auth::Authed;
use super::errors::status_of;
use super::{STORE, VaultStore};
use crate::metrics::observe_upstream;
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

impl VaultStore {
    pub(super) async fn read_metadata(
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
    pub(super) async fn read_data(
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
    pub(super) async fn write_record(
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
    pub(super) fn current_is_ours(
        &self,
        meta: Option<&ReadSecretMetadataResponse>,
        token: Option<&str>,
        op: &'static str,
        path: &str,
    ) -> Result<u64, StoreError> {
        let conflict = |message: String| self.error(StoreErrorKind::Conflict, op, path, message);
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

pub(super) fn merge_custom_metadata(
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
