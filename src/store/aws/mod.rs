//! The AWS Secrets Manager store: AWS's own four-step rotation protocol (new value `AWSPENDING`
//! under the engine's `ClientRequestToken`, promoted to `AWSCURRENT` once verified, the old version
//! keeping `AWSPREVIOUS`), with the rotation record in `zenml-rotator:*` tags.
//!
//! Here: the client and the protocol's steps. Beside it: `calls` (the SDK calls), `state` (what
//! `DescribeSecret` shows, the record as tags), `errors` (AWS's answers as store errors),
//! `settings` (the `[stores.NAME]` table of kind "aws-secrets-manager").

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::ProvideCredentials;

use super::{
    Claim, Coordination, Payload, RotationRecord, SecretStore, Staging, StoreError, StoreSnapshot,
    StoredClaim, ValueKept,
};
use crate::secret::SecretString;

mod calls;
mod claims;
mod errors;
mod http;
pub mod settings;
mod state;
#[cfg(test)]
mod tests;

use calls::{Version, check_token, timed};
use errors::{conflict, other};
pub use settings::AwsSettings;
use settings::KIND;
use state::record_tags;

/// The `upstream` label of `upstream_request_duration_seconds`.
const UPSTREAM: &str = "aws";

const AWSCURRENT: &str = "AWSCURRENT";
const AWSPENDING: &str = "AWSPENDING";
const AWSPREVIOUS: &str = "AWSPREVIOUS";

/// Tag keys are `zenml-rotator:<record key>` (`zenml-rotator:policy`, ...): tags on a secret are
/// shared with other tools, so ours carry a prefix and only prefixed tags are ever removed.
pub const TAG_PREFIX: &str = "zenml-rotator:";
/// Secrets Manager's limits for one tag.
const TAG_KEY_MAX: usize = 128;
const TAG_VALUE_MAX: usize = 256;

/// `ClientRequestToken` length AWS accepts; the token becomes the new version's id.
const TOKEN_MIN: usize = 32;
const TOKEN_MAX: usize = 64;

const DESCRIPTION: &str = "ZenML service-account API key, rotated by zenml-rotator";

/// Attempts per request (the first plus retries of throttling, 5xx, timeouts and connection
/// failures). Few on purpose: the rotation engine backs off per key on top of this.
const MAX_ATTEMPTS: u32 = 3;

/// One Secrets Manager client (one region, one set of credentials) for every key of a store.
///
/// Every step starts with `DescribeSecret` and returns early when its work is already done, so the
/// engine can retry any step with the same token. Writes never trust the secret to be unchanged:
/// `stage` and `promote` compare `AWSCURRENT` with what pre-flight saw, and the label move itself
/// is a compare-and-swap (`RemoveFromVersionId` must still hold `AWSCURRENT`).
///
/// Refused outright (`NotWritable`), by pre-flight and again by every write: a secret scheduled
/// for deletion, one owned by another AWS service, and one with automatic rotation enabled (a
/// Lambda or managed rotation would overwrite our `AWSCURRENT` with a value ZenML never issued;
/// the message names the Lambda and any `AWSPENDING` it left). An `AWSPENDING` without rotation
/// enabled is a stuck rotation: reported in `StoreSnapshot::pending`, and `stage` refuses with
/// `Conflict` until the engine resumes it or calls `discard_staged`.
///
/// IAM on the secret: `DescribeSecret`, `GetSecretValue`, `PutSecretValue`,
/// `UpdateSecretVersionStage`, `TagResource`, `UntagResource`, plus `CreateSecret` for secrets that
/// do not exist yet, and `kms:GenerateDataKey`/`kms:Decrypt` on a customer-managed key.
pub struct AwsStore {
    client: Client,
    kms_key_id: Option<String>,
    timeout: Duration,
    /// Claims on keys are secrets named `<claims>/<path>`.
    claims: String,
}

impl AwsStore {
    /// A store using the SDK's default credential chain: environment, shared profile (incl. SSO
    /// and `credential_process`), web identity (EKS IRSA), ECS and EC2 instance metadata.
    /// `timeout` bounds each store operation including its retries, so an endpoint that does not
    /// answer fails in about `timeout`, as `StoreError::Unavailable`. Makes no request.
    pub async fn connect(
        settings: &AwsSettings,
        timeout: Duration,
    ) -> Result<AwsStore, StoreError> {
        Self::build(settings, timeout, None).await
    }

    /// Like `connect`, with an explicit credentials provider instead of the default chain (tests,
    /// embedding; e.g. `aws_sdk_secretsmanager::config::Credentials::new(...)`).
    pub async fn connect_with_credentials(
        settings: &AwsSettings,
        timeout: Duration,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<AwsStore, StoreError> {
        let credentials =
            aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(credentials);
        Self::build(settings, timeout, Some(credentials)).await
    }

    async fn build(
        settings: &AwsSettings,
        timeout: Duration,
        credentials: Option<aws_sdk_secretsmanager::config::SharedCredentialsProvider>,
    ) -> Result<AwsStore, StoreError> {
        let timeout = timeout.max(Duration::from_millis(100));
        let client = crate::http::client(timeout, None)
            .map_err(|e| other("connect", "(store settings)", e.to_string()))?;
        let http = http::ReqwestHttpClient::new(client);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeout_config(timeout))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            );
        if let Ok(name) = aws_config::AppName::new("zenml-rotator") {
            loader = loader.app_name(name);
        }
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(other(
                "connect",
                "(store settings)",
                "no AWS region: set `region` in the store's settings, or AWS_REGION / a profile \
                 region in the environment"
                    .into(),
            ));
        }
        Ok(AwsStore {
            client: Client::new(&sdk),
            kms_key_id: settings.kms_key_id.clone(),
            timeout,
            claims: settings.claims.trim_matches('/').to_owned(),
        })
    }

    /// The `AWSPENDING` version of `path` when it is not also `AWSCURRENT`: a staged value that
    /// was never promoted. It blocks every later rotation until it is resumed (the engine's journal
    /// holds this token) or removed with `discard_staged`.
    pub async fn stuck_pending(&self, path: &str) -> Result<Option<String>, StoreError> {
        Ok(self.describe("stuck_pending", path).await?.pending())
    }
}

/// One request: an attempt gets half the budget so a hung attempt still leaves room for a retry;
/// the whole operation, retries included, gets `timeout`.
fn timeout_config(timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .operation_attempt_timeout(timeout / 2)
        .operation_timeout(timeout)
        .build()
}

#[async_trait]
impl SecretStore for AwsStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn inspect(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        Ok(self.describe("inspect", path).await?.snapshot())
    }

    /// Proves what AWS lets us prove without writing: the endpoint answers, the credentials are
    /// valid, `DescribeSecret` and `GetSecretValue` (including KMS decrypt) are allowed on this
    /// secret, it is not scheduled for deletion, not owned by another service and not under
    /// AWS-driven rotation. Secrets Manager has no dry-run, so `PutSecretValue`,
    /// `UpdateSecretVersionStage`, `TagResource` (and `CreateSecret` for a new secret) permissions
    /// are not proven: a denial there fails `stage` before anything is current, and the old value
    /// stays where it is. A stuck `AWSPENDING` is reported in `pending`, not refused: the engine
    /// resumes it (its journal has the token) or discards it.
    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        const OP: &str = "preflight";
        let state = self.describe(OP, path).await?;
        if !state.exists {
            return Ok(state.snapshot());
        }
        state.refuse_unwritable(OP, path)?;
        let snapshot = state.snapshot();
        if let Some(current) = &snapshot.version {
            // The read-back after the write needs this permission (and the KMS key) too.
            if let Some((id, _)) = self.get_value(OP, path, Version::Stage(AWSCURRENT)).await?
                && !id.is_empty()
                && id != *current
            {
                return Err(conflict(
                    OP,
                    path,
                    format!(
                        "AWSCURRENT moved from version {current} to {id} while pre-flight read \
                         it; try again"
                    ),
                ));
            }
        }
        Ok(snapshot)
    }

    async fn read_current(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.read_api_key("read_current", path, Version::Stage(AWSCURRENT))
            .await
    }

    async fn read_previous(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        self.read_api_key("read_previous", path, Version::Stage(AWSPREVIOUS))
            .await
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
        check_token(OP, path, token)?;
        let tags = record_tags(OP, path, record)?;
        let state = self.describe(OP, path).await?;
        if state.exists {
            return self
                .stage_existing(path, payload, expected, token, &state)
                .await;
        }
        if expected.exists {
            return Err(conflict(
                OP,
                path,
                "the secret was deleted since pre-flight".into(),
            ));
        }
        let value = payload.to_json();
        match self.create(OP, path, &value, tags, token).await {
            Err(StoreError::Conflict { .. }) => {
                // ResourceExists: created since we looked, by a retry of ours that DescribeSecret
                // did not show yet (eventual consistency) or by someone else. Decide on what is
                // there now.
                let state = self.describe(OP, path).await?;
                self.stage_existing(path, payload, expected, token, &state)
                    .await
            }
            other => other,
        }
    }

    async fn read_staged(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        self.read_api_key("read_staged", path, Version::Id(token))
            .await
    }

    /// AWS step 4 (finishSecret).
    async fn promote(
        &self,
        path: &str,
        token: &str,
        expected: &StoreSnapshot,
    ) -> Result<(), StoreError> {
        const OP: &str = "promote";
        let state = self.describe(OP, path).await?;
        if !state.exists {
            return Err(conflict(
                OP,
                path,
                "the secret no longer exists; nothing to promote".into(),
            ));
        }
        state.refuse_unwritable(OP, path)?;
        let current = state.holder(AWSCURRENT);
        if current == Some(token) {
            // Already promoted (or created current): only the pending label may be left over.
            if state.has_label(token, AWSPENDING) {
                self.update_stage(OP, path, AWSPENDING, None, Some(token))
                    .await?;
            }
            return Ok(());
        }
        if current != expected.version.as_deref() {
            return Err(conflict(
                OP,
                path,
                format!(
                    "AWSCURRENT is on version {}, pre-flight saw {}: someone updated the secret \
                     mid-rotation; the staged version {token} stays AWSPENDING",
                    current.unwrap_or("(none)"),
                    expected.version.as_deref().unwrap_or("(no secret)")
                ),
            ));
        }
        if !state.versions.contains_key(token)
            && self
                .get_value(OP, path, Version::Id(token))
                .await?
                .is_none()
        {
            return Err(other(
                OP,
                path,
                format!("no version {token} to promote: stage it first"),
            ));
        }
        // AWS moves AWSPREVIOUS onto the version losing AWSCURRENT by itself; RemoveFromVersionId
        // makes the move a compare-and-swap against the version pre-flight saw.
        self.update_stage(OP, path, AWSCURRENT, Some(token), current)
            .await?;
        if state.has_label(token, AWSPENDING) {
            self.update_stage(OP, path, AWSPENDING, None, Some(token))
                .await?;
        }
        Ok(())
    }

    async fn discard_staged(&self, path: &str, token: &str) -> Result<(), StoreError> {
        const OP: &str = "discard_staged";
        let state = self.describe(OP, path).await?;
        if state.has_label(token, AWSPENDING) {
            self.update_stage(OP, path, AWSPENDING, None, Some(token))
                .await?;
        }
        Ok(())
    }

    /// Tags the secret with the record and removes our tags the record no longer has (e.g. a
    /// cleared `retiring_key_id`). Tags of other tools are left alone.
    async fn set_record(&self, path: &str, record: &RotationRecord) -> Result<(), StoreError> {
        const OP: &str = "set_record";
        let tags = record_tags(OP, path, record)?;
        let state = self.describe(OP, path).await?;
        if !state.exists {
            return Err(other(
                OP,
                path,
                "the secret does not exist; nothing to tag".into(),
            ));
        }
        let stale: Vec<String> = state
            .tags
            .keys()
            .filter(|k| k.starts_with(TAG_PREFIX))
            .filter(|k| !tags.iter().any(|t| t.key() == Some(k.as_str())))
            .cloned()
            .collect();
        let api = "TagResource";
        let request = self
            .client
            .tag_resource()
            .secret_id(path)
            .set_tags(Some(tags));
        timed(api, request.send())
            .await
            .map_err(|e| self.sdk_error(OP, path, api, &e))?;
        if !stale.is_empty() {
            let api = "UntagResource";
            let request = self
                .client
                .untag_resource()
                .secret_id(path)
                .set_tag_keys(Some(stale));
            timed(api, request.send())
                .await
                .map_err(|e| self.sdk_error(OP, path, api, &e))?;
        }
        Ok(())
    }

    /// Drops the `AWSPREVIOUS` label. Secrets Manager cannot delete a single version: the
    /// unlabelled version is deprecated and AWS removes it in time; until then it is readable by
    /// its VersionId only, and ZenML already rejects its key.
    async fn retire_previous(&self, path: &str) -> Result<(), StoreError> {
        const OP: &str = "retire_previous";
        let state = self.describe(OP, path).await?;
        if let Some(previous) = state.holder(AWSPREVIOUS) {
            self.update_stage(OP, path, AWSPREVIOUS, None, Some(previous))
                .await?;
        }
        Ok(())
    }

    fn coordination(&self) -> Coordination {
        Coordination::Shared
    }

    async fn read_claim(&self, path: &str) -> Result<Option<StoredClaim>, StoreError> {
        self.read_claim_secret(path).await
    }

    async fn write_claim(
        &self,
        path: &str,
        claim: &Claim,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.write_claim_secret(path, claim, expected).await
    }

    fn keeps_value(&self) -> ValueKept {
        ValueKept::Staged
    }

    fn staging(&self) -> Staging {
        Staging::Beside
    }
}

impl std::fmt::Debug for AwsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsStore")
            .field("kms_key_id", &self.kms_key_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
