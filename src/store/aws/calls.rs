//! The Secrets Manager calls each step is made of, timed into `upstream_request_duration_seconds`.

use std::future::Future;
use std::time::Instant;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::types::Tag;

use super::errors::{code_of, conflict, is_not_found, other};
use super::state::SecretState;
use super::{AWSCURRENT, AWSPENDING, AwsStore, DESCRIPTION, TOKEN_MAX, TOKEN_MIN, UPSTREAM};
use crate::secret::{ExposeSecret, SecretString, secrets_equal};
use crate::store::{Payload, StoreError, StoreSnapshot, api_key_of};

/// Runs one SDK call and records its duration under the AWS operation name.
pub(super) async fn timed<T>(operation: &'static str, call: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = call.await;
    crate::metrics::observe_upstream(UPSTREAM, operation, start.elapsed());
    out
}

/// Which version GetSecretValue reads. Never "no stage": moto then answers with a stale version.
pub(super) enum Version<'a> {
    Stage(&'static str),
    Id(&'a str),
}

/// Whether a stored payload holds our key value. The ZenML URL beside it is not compared: rotators
/// that reach ZenML under different URLs (a cluster's internal name, an operator's public one)
/// finish each other's rotations, and the value is what a rotation token stands for.
fn same_key(stored: &SecretString, ours: &Payload) -> bool {
    Payload::from_json(stored).is_some_and(|p| secrets_equal(&p.api_key, &ours.api_key))
}

pub(super) fn check_token(op: &'static str, path: &str, token: &str) -> Result<(), StoreError> {
    let ok = (TOKEN_MIN..=TOKEN_MAX).contains(&token.len())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(other(
            op,
            path,
            format!(
                "the rotation token `{token}` is not a valid ClientRequestToken ({TOKEN_MIN} to \
                 {TOKEN_MAX} letters, digits, `-` or `_`)"
            ),
        ))
    }
}

impl AwsStore {
    pub(super) async fn describe(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<SecretState, StoreError> {
        let api = "DescribeSecret";
        let result = timed(api, self.client.describe_secret().secret_id(path).send()).await;
        match result {
            Ok(out) => Ok(SecretState::from_output(&out)),
            Err(e) if is_not_found(&e) => Ok(SecretState::default()),
            Err(e) => Err(self.sdk_error(op, path, api, &e)),
        }
    }

    /// The raw stored string of one version; `None` when the secret or that version does not
    /// exist (or holds binary data, which is never ours).
    pub(super) async fn get_value(
        &self,
        op: &'static str,
        path: &str,
        version: Version<'_>,
    ) -> Result<Option<(String, SecretString)>, StoreError> {
        let api = "GetSecretValue";
        let request = self.client.get_secret_value().secret_id(path);
        let request = match version {
            Version::Stage(stage) => request.version_stage(stage),
            Version::Id(id) => request.version_id(id),
        };
        match timed(api, request.send()).await {
            Ok(mut out) => {
                let id = out.version_id.take().unwrap_or_default();
                Ok(out
                    .secret_string
                    .take()
                    .map(|s| (id, SecretString::from(s))))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.sdk_error(op, path, api, &e)),
        }
    }

    pub(super) async fn read_api_key(
        &self,
        op: &'static str,
        path: &str,
        version: Version<'_>,
    ) -> Result<Option<SecretString>, StoreError> {
        Ok(self
            .get_value(op, path, version)
            .await?
            .and_then(|(_, raw)| api_key_of(&raw)))
    }

    /// Moves or removes a staging label. `InvalidParameterException` here means the label is no
    /// longer where we said it is: someone moved it since we looked.
    pub(super) async fn update_stage(
        &self,
        op: &'static str,
        path: &str,
        label: &'static str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<(), StoreError> {
        let api = "UpdateSecretVersionStage";
        let request = self
            .client
            .update_secret_version_stage()
            .secret_id(path)
            .version_stage(label)
            .set_move_to_version_id(move_to.map(str::to_owned))
            .set_remove_from_version_id(remove_from.map(str::to_owned));
        match timed(api, request.send()).await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some("InvalidParameterException") => Err(conflict(
                op,
                path,
                format!(
                    "{api} {label}: the label moved since it was read ({})",
                    e.message().unwrap_or("no message")
                ),
            )),
            Err(e) => Err(self.sdk_error(op, path, api, &e)),
        }
    }

    /// AWS step 1 for a secret that does not exist yet: create it with the value as its first
    /// (current) version, the token as its VersionId, and our tags.
    pub(super) async fn create(
        &self,
        op: &'static str,
        path: &str,
        value: &SecretString,
        tags: Vec<Tag>,
        token: &str,
    ) -> Result<(), StoreError> {
        let api = "CreateSecret";
        let request = self
            .client
            .create_secret()
            .name(path)
            .description(DESCRIPTION)
            .client_request_token(token)
            .secret_string(value.expose_secret())
            .set_tags(Some(tags))
            .set_kms_key_id(self.kms_key_id.clone());
        timed(api, request.send())
            .await
            .map(|_| ())
            .map_err(|e| self.sdk_error(op, path, api, &e))
    }

    /// AWS step 1 on an existing secret: the new version under `token`, labelled `AWSPENDING`
    /// (or `AWSCURRENT` when the secret has no value at all yet: nothing to protect).
    pub(super) async fn stage_existing(
        &self,
        path: &str,
        payload: &Payload,
        expected: &StoreSnapshot,
        token: &str,
        state: &SecretState,
    ) -> Result<(), StoreError> {
        const OP: &str = "stage";
        state.refuse_unwritable(OP, path)?;
        if state.versions.contains_key(token) {
            // A retry of this rotation's write (or of its create), or its finish by another
            // rotator: done if it holds our key value. (AWS refuses the same token with other
            // content, so a version staged with another ZenML URL is kept as it is.)
            return match self.get_value(OP, path, Version::Id(token)).await? {
                Some((_, stored)) if same_key(&stored, payload) => Ok(()),
                _ => Err(conflict(
                    OP,
                    path,
                    format!(
                        "version {token} (this rotation's token) already holds a different \
                         value; a rotation token must never be reused for another value"
                    ),
                )),
            };
        }
        let current = state.holder(AWSCURRENT);
        if current != expected.version.as_deref() {
            return Err(conflict(
                OP,
                path,
                format!(
                    "AWSCURRENT is on version {}, pre-flight saw {}: someone updated the secret \
                     mid-rotation",
                    current.unwrap_or("(none)"),
                    expected.version.as_deref().unwrap_or("(no secret)")
                ),
            ));
        }
        if let Some(other_pending) = state.pending() {
            return Err(conflict(
                OP,
                path,
                format!(
                    "version {other_pending} holds AWSPENDING from another rotation; resume it \
                     or discard it first"
                ),
            ));
        }
        let label = if current.is_some() {
            AWSPENDING
        } else {
            AWSCURRENT
        };
        let api = "PutSecretValue";
        let value = payload.to_json();
        let request = self
            .client
            .put_secret_value()
            .secret_id(path)
            .client_request_token(token)
            .secret_string(value.expose_secret())
            .version_stages(label);
        timed(api, request.send())
            .await
            .map(|_| ())
            .map_err(|e| self.sdk_error(OP, path, api, &e))
    }
}
