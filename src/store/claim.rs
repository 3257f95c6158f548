//! Claims (invariant 7): before a rotator acts on a key it writes a claim every other rotator
//! honours, with an atomic primitive of the store itself: KV v2 check-and-set on a claim document
//! in Vault, `UpdateSecretVersionStage` with `RemoveFromVersionId` on a claim secret in AWS Secrets
//! Manager. A claim names its holder and expires; between ZenML's answer and the store write it
//! also says where the new value is kept (Vault: in the claim document; AWS: `AWSPENDING` of the
//! key's secret, under the claim's token), so any rotator can finish a rotation another began.
//! The file store has no shared primitive: a lock file beside the value covers one host.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::{ExposeSecret, SecretString};

/// How rotators of a store's keys stay out of each other's way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordination {
    /// Claims in the store itself: honoured by rotators on any host.
    Shared,
    /// A lock file beside each value (`<dir>/.<path>.lock`): one host only.
    LockFile(std::path::PathBuf),
}

/// How far the rotation a claim guards got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimPhase {
    /// The holder is working on the key; no new value exists yet (or its answer was lost).
    Claimed,
    /// ZenML answered: the new value is kept (in the claim, or staged under `token`).
    Rotated,
    /// The holder is done; anyone may claim the key.
    Released,
}

/// A claim on one key. Everything but `value` is plain bookkeeping; `value` (the new key, between
/// ZenML's answer and the store write) is held as a secret and written only where the store keeps
/// it (a Vault claim document is as protected as the key's own path).
#[derive(Clone, Serialize, Deserialize)]
pub struct Claim {
    /// Who holds it: `<host>/<pid>/<random>`, one per process.
    pub holder: String,
    pub policy: String,
    /// Valid until then, by the holder's clock (others allow `max_clock_skew`).
    pub expires_at: DateTime<Utc>,
    /// When the rotation it guards began (renewals and takeovers keep it): how long the key has
    /// been in the works.
    pub since: DateTime<Utc>,
    pub phase: ClaimPhase,
    /// The rotation's id: the AWS `ClientRequestToken` of the staged value.
    pub token: String,
    /// ZenML's `last_rotated` of the key when the claim was taken: if it moved while the claim
    /// holds no value, ZenML rotated and the answer was lost.
    pub previous_last_rotated: Option<DateTime<Utc>>,
    /// ZenML's ids of the key being rotated and its service account.
    pub service_account_id: String,
    pub key_id: String,
    /// Phase `Rotated`: ZenML's `last_rotated` right after the rotation, the retain it was given,
    /// and the new value's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub retain_minutes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip)]
    pub value: Option<SecretString>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("holder", &self.holder)
            .field("policy", &self.policy)
            .field("expires_at", &self.expires_at)
            .field("phase", &self.phase)
            .field("token", &self.token)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The claim document's field that holds the value, where a store keeps it in the claim.
const VALUE: &str = "value";

impl Claim {
    /// The claim as a JSON object; with `with_value`, the kept value too. The result may hold a
    /// key: keep it short-lived.
    pub fn to_json(&self, with_value: bool) -> Result<SecretString, serde_json::Error> {
        Ok(SecretString::from(
            self.to_document(with_value)?.to_string(),
        ))
    }

    /// `to_json` as a JSON value, for a store that sends it inside a larger body (KV v2's
    /// `data`): not printed and parsed again on the way. It may hold a key likewise.
    pub fn to_document(&self, with_value: bool) -> Result<serde_json::Value, serde_json::Error> {
        let mut doc = serde_json::to_value(self)?;
        if with_value && let (Some(value), Some(obj)) = (&self.value, doc.as_object_mut()) {
            obj.insert(
                VALUE.into(),
                serde_json::Value::String(value.expose_secret().to_owned()),
            );
        }
        Ok(doc)
    }

    /// Reads a claim document back, the value with it when there is one.
    pub fn from_json(doc: &serde_json::Value) -> Result<Claim, serde_json::Error> {
        let mut claim = Claim::deserialize(doc)?;
        claim.value = doc
            .get(VALUE)
            .and_then(|v| v.as_str())
            .map(|v| SecretString::from(v.to_owned()));
        Ok(claim)
    }
}

/// A claim as read from the store, with the version a later write checks-and-sets against.
#[derive(Debug, Clone)]
pub struct StoredClaim {
    pub claim: Claim,
    /// KV v2 version, or the `VersionId` of the claim secret's `AWSCURRENT`.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Claim {
        let t = Utc::now();
        Claim {
            holder: "host/1/abcd".into(),
            policy: "p".into(),
            expires_at: t,
            since: t,
            phase: ClaimPhase::Rotated,
            token: "00000000-0000-4000-8000-000000000001".into(),
            previous_last_rotated: None,
            service_account_id: "sa".into(),
            key_id: "k".into(),
            rotated_at: Some(t),
            retain_minutes: 60,
            fingerprint: Some("abcd0123".into()),
            value: Some(SecretString::from("ZENKEY_secret")),
        }
    }

    #[test]
    fn the_value_is_written_only_when_asked_and_never_shown() {
        let c = claim();
        assert!(!format!("{c:?}").contains("ZENKEY_secret"));
        let without = c.to_json(false).unwrap();
        assert!(!without.expose_secret().contains("ZENKEY_secret"));
        let with = c.to_json(true).unwrap();
        let doc: serde_json::Value = serde_json::from_str(with.expose_secret()).unwrap();
        let back = Claim::from_json(&doc).unwrap();
        assert_eq!(back.value.unwrap().expose_secret(), "ZENKEY_secret");
        assert_eq!(back.phase, ClaimPhase::Rotated);
        assert_eq!(back.holder, "host/1/abcd");
        // The document form is the same object.
        assert_eq!(c.to_document(true).unwrap(), doc);
        assert!(c.to_document(false).unwrap().get("value").is_none());
    }
}
