//! Claims in Secrets Manager: one secret per key, named `<claims>/<path>`, whose `AWSCURRENT`
//! version holds the claim as JSON (never a key value: the value in flight is `AWSPENDING` of the
//! key's own secret). Created with `CreateSecret` (a second creation of the name is refused)
//! and read back once (a store whose create is not atomic may have let a second one replace it),
//! replaced by writing a new version under a scratch label and moving `AWSCURRENT` onto it with
//! `RemoveFromVersionId` = the version read: AWS refuses the move when `AWSCURRENT` moved since,
//! so exactly one of two writers from the same version wins (moto enforces the same rule). The
//! secret is never deleted: a released claim is a version in phase `released`.

use uuid::Uuid;

use super::calls::{Version, timed};
use super::errors::conflict;
use super::{AWSCURRENT, AwsStore};
use crate::secret::ExposeSecret;
use crate::store::{Claim, StoreError, StoredClaim};

/// The label a new claim version is written under before `AWSCURRENT` moves onto it: without a
/// label, `PutSecretValue` would make it current at once, with no check.
const NEXT: &str = "zr-next";

const CLAIM_DESCRIPTION: &str =
    "zenml-rotator claim on a key (who rotates it now); no secret inside";

impl AwsStore {
    /// The name of the claim secret of the key at `path`.
    fn claim_name(&self, path: &str) -> String {
        format!("{}/{path}", self.claims)
    }

    pub(super) async fn read_claim_secret(
        &self,
        path: &str,
    ) -> Result<Option<StoredClaim>, StoreError> {
        const OP: &str = "read_claim";
        let name = self.claim_name(path);
        let Some((version, raw)) = self
            .get_value(OP, &name, Version::Stage(AWSCURRENT))
            .await?
        else {
            return Ok(None);
        };
        let claim = serde_json::from_str::<serde_json::Value>(raw.expose_secret())
            .and_then(|doc| Claim::from_json(&doc))
            .map_err(|e| {
                super::errors::other(
                    OP,
                    &name,
                    format!(
                        "not a claim ({}); remove the secret",
                        crate::secret::json_failure(&e)
                    ),
                )
            })?;
        Ok(Some(StoredClaim { claim, version }))
    }

    pub(super) async fn write_claim_secret(
        &self,
        path: &str,
        claim: &Claim,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        const OP: &str = "write_claim";
        let name = self.claim_name(path);
        let json = claim.to_json(false).map_err(|e| {
            super::errors::other(OP, &name, format!("cannot encode the claim: {e}"))
        })?;
        let version = Uuid::new_v4().to_string();
        let Some(expected) = expected else {
            let api = "CreateSecret";
            let request = self
                .client
                .create_secret()
                .name(&name)
                .description(CLAIM_DESCRIPTION)
                .client_request_token(&version)
                .secret_string(json.expose_secret())
                .set_kms_key_id(self.kms_key_id.clone());
            return match timed(api, request.send()).await {
                Ok(_) => self.created_claim_is_ours(OP, &name, version).await,
                Err(e) => match self.sdk_error(OP, &name, api, &e) {
                    StoreError::Conflict { .. } => Err(conflict(
                        OP,
                        &name,
                        "another rotator created the claim first".into(),
                    )),
                    other => Err(other),
                },
            };
        };
        let api = "PutSecretValue";
        let request = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .client_request_token(&version)
            .secret_string(json.expose_secret())
            .version_stages(NEXT);
        timed(api, request.send())
            .await
            .map_err(|e| self.sdk_error(OP, &name, api, &e))?;
        self.update_stage(OP, &name, AWSCURRENT, Some(&version), Some(expected))
            .await?;
        Ok(version)
    }

    /// Reads a claim secret just created back: its `AWSCURRENT` must be the version this rotator
    /// created. AWS makes `CreateSecret` atomic per name, so there it always is; a store whose
    /// create checks for the name and then adds the secret in two steps (moto's threaded server
    /// does) can let two creates succeed, the later one replacing the earlier, and only this
    /// read tells the earlier one that its claim is gone. One request, once per key ever.
    async fn created_claim_is_ours(
        &self,
        op: &'static str,
        name: &str,
        version: String,
    ) -> Result<String, StoreError> {
        match self.get_value(op, name, Version::Stage(AWSCURRENT)).await? {
            Some((current, _)) if current == version => Ok(version),
            Some(_) => Err(conflict(
                op,
                name,
                "another rotator created the claim at the same moment and its claim stands".into(),
            )),
            None => Err(super::errors::other(
                op,
                name,
                "the claim secret just created is gone (deleted since?)".into(),
            )),
        }
    }
}
