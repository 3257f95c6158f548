//! Claims in Vault: one KV v2 document per key at `<claims>/<path>` under the same mount, written
//! only with check-and-set (`cas=0` creates it, `cas=<version>` replaces exactly the version read),
//! so two rotators can never both believe they hold it. It is never deleted: a released claim is
//! a document in phase `released` (a soft delete would make `cas=0` fail for everyone, a metadata
//! delete would restart the version count and let a stale holder's write succeed).

use super::VaultStore;
use crate::store::{Claim, StoreError, StoredClaim};

impl VaultStore {
    /// The KV path of the claim on the key at `path`.
    pub(super) fn claim_path(&self, path: &str) -> String {
        format!("{}/{path}", self.claims)
    }

    pub(super) async fn read_claim_doc(
        &self,
        path: &str,
    ) -> Result<Option<StoredClaim>, StoreError> {
        const OP: &str = "read_claim";
        let claim_path = self.claim_path(path);
        let authed = self.authed(&claim_path).await?;
        let Some((version, doc)) = self.read_data(&authed, &claim_path, None, OP).await? else {
            return Ok(None);
        };
        let claim = Claim::from_json(&doc).map_err(|e| {
            self.other(
                OP,
                &claim_path,
                format!(
                    "not a claim document ({}); remove it",
                    crate::secret::json_failure(&e)
                ),
            )
        })?;
        Ok(Some(StoredClaim {
            claim,
            version: version.to_string(),
        }))
    }

    pub(super) async fn write_claim_doc(
        &self,
        path: &str,
        claim: &Claim,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        const OP: &str = "write_claim";
        let claim_path = self.claim_path(path);
        let cas = match expected {
            None => 0,
            Some(v) => v.parse::<u64>().map_err(|_| {
                self.other(
                    OP,
                    &claim_path,
                    format!("claim version {v:?} is not a KV v2 version"),
                )
            })?,
        };
        let authed = self.authed(&claim_path).await?;
        let doc = claim
            .to_document(true)
            .map_err(|e| self.other(OP, &claim_path, format!("cannot encode the claim: {e}")))?;
        // A check-and-set mismatch (another rotator wrote the claim since it was read) comes
        // back as `Conflict`.
        self.write_data(&authed, &claim_path, doc, cas, "write_claim", OP)
            .await
            .map(|version| version.to_string())
    }
}
