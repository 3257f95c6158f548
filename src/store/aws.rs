//! The AWS Secrets Manager store: AWS's own four-step rotation protocol (new value `AWSPENDING`
//! under the engine's `ClientRequestToken`, promoted to `AWSCURRENT` once verified, the old version
//! keeping `AWSPREVIOUS`), with the rotation record in `zenml-rotator:*` tags.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::ProvideCredentials;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;
use aws_smithy_http_client::tls;

use super::{Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot, api_key_of};
use crate::config::AwsSettings;
use crate::secret::{ExposeSecret, SecretString, secrets_equal};

const KIND: &str = "aws-secrets-manager";
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
        crate::http::install_crypto_provider();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeout = timeout.max(Duration::from_millis(100));
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
            return Err(StoreError::Other {
                store: KIND,
                op: "connect",
                path: "(store settings)".into(),
                message: "no AWS region: set `region` in the store's settings, or AWS_REGION / \
                          a profile region in the environment"
                    .into(),
            });
        }
        Ok(AwsStore {
            client: Client::new(&sdk),
            kms_key_id: settings.kms_key_id.clone(),
            timeout,
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

/// Runs one SDK call and records its duration under the AWS operation name.
async fn timed<T>(operation: &'static str, call: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = call.await;
    crate::metrics::observe_upstream(UPSTREAM, operation, start.elapsed());
    out
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The error code of an SDK error, when the service answered with one.
fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    code_of(err) == Some("ResourceNotFoundException")
}

/// Maps an SDK error to the store's error kinds. `api` names the AWS call; `path` is the secret
/// name. Neither the request nor the response body is ever part of the message.
fn sdk_error<E>(
    timeout: Duration,
    op: &'static str,
    path: &str,
    api: &'static str,
    err: &SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let path = path.to_owned();
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown error");
            let status = service.raw().status().as_u16();
            let detail = service.err().message().unwrap_or("no message");
            let message = format!("{api}: {code} (HTTP {status}): {detail}");
            match code {
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "InvalidSignatureException"
                | "SignatureDoesNotMatch"
                | "IncompleteSignature"
                | "MissingAuthenticationToken"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "DecryptionFailure"
                | "EncryptionFailure" => StoreError::PermissionDenied {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                // Scheduled for deletion, owned by another service, too many versions: the secret
                // is there but does not take this write; an operator has to act.
                "InvalidRequestException" | "LimitExceededException" => StoreError::NotWritable {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                "ResourceExistsException" => StoreError::Conflict {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "InternalServiceError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "RequestTimeout" => StoreError::Unavailable {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                _ if status >= 500 || status == 429 => StoreError::Unavailable {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                _ if status == 401 || status == 403 => StoreError::PermissionDenied {
                    store: KIND,
                    op,
                    path,
                    message,
                },
                _ => StoreError::Other {
                    store: KIND,
                    op,
                    path,
                    message,
                },
            }
        }
        SdkError::TimeoutError(_) => StoreError::Unavailable {
            store: KIND,
            op,
            path,
            message: format!(
                "{api}: no answer within {} (the store timeout, retries included)",
                humantime::format_duration(timeout)
            ),
        },
        SdkError::DispatchFailure(_) => match credentials_error(err) {
            Some(CredentialsError::ProviderTimedOut(_)) => StoreError::Unavailable {
                store: KIND,
                op,
                path,
                message: format!(
                    "{api}: timed out obtaining AWS credentials: {}",
                    causes(err)
                ),
            },
            // Nothing found, a broken profile, or a provider that refused us (an IRSA role whose
            // trust policy does not name this service account, IMDS disabled): an operator has
            // to fix where the credentials come from.
            Some(_) => StoreError::PermissionDenied {
                store: KIND,
                op,
                path,
                message: format!(
                    "{api}: no usable AWS credentials (environment, profile, web identity, \
                     ECS or instance metadata): {}",
                    causes(err)
                ),
            },
            None => StoreError::Unavailable {
                store: KIND,
                op,
                path,
                message: format!("{api}: request failed: {}", causes(err)),
            },
        },
        SdkError::ResponseError(_) => StoreError::Unavailable {
            store: KIND,
            op,
            path,
            message: format!("{api}: unreadable response: {}", causes(err)),
        },
        _ => StoreError::Other {
            store: KIND,
            op,
            path,
            message: format!("{api}: {}", causes(err)),
        },
    }
}

/// An error and its sources on one line, without the Debug dump the SDK's own formatter appends.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The credentials failure behind a dispatch failure, if that is what it is (resolving the
/// identity happens just before sending, so the SDK reports it as a dispatch failure).
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        source = e.source();
    }
    None
}

fn conflict(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::Conflict {
        store: KIND,
        op,
        path: path.to_owned(),
        message,
    }
}

fn not_writable(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::NotWritable {
        store: KIND,
        op,
        path: path.to_owned(),
        message,
    }
}

fn other(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::Other {
        store: KIND,
        op,
        path: path.to_owned(),
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Tags <-> RotationRecord

/// The record as tags, refusing (before anything is written) values Secrets Manager would reject.
fn record_tags(
    op: &'static str,
    path: &str,
    record: &RotationRecord,
) -> Result<Vec<Tag>, StoreError> {
    record
        .to_map()
        .into_iter()
        .map(|(k, v)| {
            let key = format!("{TAG_PREFIX}{k}");
            if key.chars().count() > TAG_KEY_MAX || v.chars().count() > TAG_VALUE_MAX {
                return Err(other(
                    op,
                    path,
                    format!(
                        "the rotation record's `{k}` does not fit an AWS tag (keys up to \
                         {TAG_KEY_MAX} characters, values up to {TAG_VALUE_MAX})"
                    ),
                ));
            }
            Ok(Tag::builder().key(key).value(v).build())
        })
        .collect()
}

/// Our tags, prefix stripped: the flat map `RotationRecord::from_map` reads.
fn record_map(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(TAG_PREFIX)
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What DescribeSecret says

/// The parts of `DescribeSecret` the protocol decides on. Never holds a value.
#[derive(Debug, Default)]
struct SecretState {
    exists: bool,
    /// When the secret was scheduled for deletion (RFC 3339), if it was.
    deleted: Option<String>,
    /// VersionId -> staging labels. moto also lists unlabelled versions (with no labels); AWS
    /// lists only labelled ones, so an absent id may still be a (deprecated) version.
    versions: BTreeMap<String, Vec<String>>,
    tags: BTreeMap<String, String>,
    rotation_enabled: bool,
    rotation_lambda: Option<String>,
    owning_service: Option<String>,
}

impl SecretState {
    fn from_output(out: &DescribeSecretOutput) -> SecretState {
        let versions = out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let tags = out
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect();
        let deleted = out.deleted_date().map(|d| {
            d.fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap_or_else(|_| format!("{} seconds after the epoch", d.secs()))
        });
        SecretState {
            exists: true,
            deleted,
            versions,
            tags,
            rotation_enabled: out.rotation_enabled().unwrap_or(false),
            rotation_lambda: out
                .rotation_lambda_arn()
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
            owning_service: out
                .owning_service()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }

    /// The version holding a staging label.
    fn holder(&self, label: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(id, _)| id.as_str())
    }

    fn has_label(&self, version: &str, label: &str) -> bool {
        self.versions
            .get(version)
            .is_some_and(|labels| labels.iter().any(|l| l == label))
    }

    /// `AWSPENDING` on a version that is not `AWSCURRENT`: a rotation started and not finished.
    fn pending(&self) -> Option<String> {
        let pending = self.holder(AWSPENDING)?;
        (!self.has_label(pending, AWSCURRENT)).then(|| pending.to_owned())
    }

    fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            exists: self.exists,
            version: self.holder(AWSCURRENT).map(str::to_owned),
            record: RotationRecord::from_map(&record_map(&self.tags)),
            pending: self.pending(),
            current_deleted: false,
            unwritable: self
                .refuse_unwritable("inspect", "")
                .err()
                .map(|e| match e {
                    StoreError::NotWritable { message, .. } => message,
                    other => other.to_string(),
                }),
        }
    }

    /// What makes an existing secret off-limits for a write, whoever asks (pre-flight, stage,
    /// promote): moto accepts writes to a secret scheduled for deletion, so this check is ours.
    fn refuse_unwritable(&self, op: &'static str, path: &str) -> Result<(), StoreError> {
        if let Some(when) = &self.deleted {
            return Err(not_writable(
                op,
                path,
                format!(
                    "the secret is scheduled for deletion (deleted {when}); restore it first \
                     (`aws secretsmanager restore-secret --secret-id {path}`) or point the \
                     policy at another secret"
                ),
            ));
        }
        if let Some(service) = &self.owning_service {
            return Err(not_writable(
                op,
                path,
                format!(
                    "the secret is managed by {service}; only that service may change it: \
                     choose a secret of your own"
                ),
            ));
        }
        if self.rotation_enabled {
            let how = match &self.rotation_lambda {
                Some(arn) => format!("by the Lambda {arn}"),
                None => "by AWS (managed rotation)".to_owned(),
            };
            let progress = match self.pending() {
                Some(v) => format!("; a rotation is in progress (AWSPENDING on version {v})"),
                None => String::new(),
            };
            return Err(not_writable(
                op,
                path,
                format!(
                    "automatic rotation {how} is enabled on this secret{progress}: two rotators \
                     would overwrite each other's AWSCURRENT. Turn it off \
                     (`aws secretsmanager cancel-rotate-secret --secret-id {path}`) and let \
                     zenml-rotator rotate it"
                ),
            ));
        }
        Ok(())
    }
}

/// Which version GetSecretValue reads. Never "no stage": moto then answers with a stale version.
enum Version<'a> {
    Stage(&'static str),
    Id(&'a str),
}

/// Whether a stored value is exactly the payload we would write (same URL, same key).
fn same_payload(stored: &SecretString, ours: &Payload) -> bool {
    Payload::from_json(stored)
        .is_some_and(|p| p.zenml_url == ours.zenml_url && secrets_equal(&p.api_key, &ours.api_key))
}

fn check_token(op: &'static str, path: &str, token: &str) -> Result<(), StoreError> {
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

// ---------------------------------------------------------------------------------------------
// The calls

impl AwsStore {
    fn sdk_error<E>(
        &self,
        op: &'static str,
        path: &str,
        api: &'static str,
        err: &SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        sdk_error(self.timeout, op, path, api, err)
    }

    async fn describe(&self, op: &'static str, path: &str) -> Result<SecretState, StoreError> {
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
    async fn get_value(
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

    async fn read_api_key(
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
    async fn update_stage(
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
    async fn create(
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
    async fn stage_existing(
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
            // A retry of this rotation's write (or of its create): done if it holds our value.
            return match self.get_value(OP, path, Version::Id(token)).await? {
                Some((_, stored)) if same_payload(&stored, payload) => Ok(()),
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
}

impl std::fmt::Debug for AwsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsStore")
            .field("kms_key_id", &self.kms_key_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(versions: &[(&str, &[&str])]) -> SecretState {
        SecretState {
            exists: true,
            versions: versions
                .iter()
                .map(|(id, labels)| {
                    (
                        (*id).to_owned(),
                        labels.iter().map(|l| (*l).to_owned()).collect(),
                    )
                })
                .collect(),
            ..SecretState::default()
        }
    }

    #[test]
    fn pending_is_reported_only_when_it_is_not_current() {
        let s = state(&[("a", &["AWSCURRENT"]), ("b", &["AWSPENDING"])]);
        assert_eq!(s.pending().as_deref(), Some("b"));
        assert_eq!(s.snapshot().version.as_deref(), Some("a"));
        let s = state(&[
            ("a", &["AWSPREVIOUS"]),
            ("b", &["AWSCURRENT", "AWSPENDING"]),
        ]);
        assert_eq!(s.pending(), None);
        let s = state(&[("a", &["AWSCURRENT"]), ("b", &[])]);
        assert_eq!(s.pending(), None);
    }

    #[test]
    fn record_tags_roundtrip_with_the_prefix() {
        let r = RotationRecord {
            policy: "training".into(),
            key_id: "k".into(),
            retiring_key_id: Some("old".into()),
            ..RotationRecord::default()
        };
        let tags = record_tags("t", "p", &r).unwrap();
        assert!(
            tags.iter()
                .all(|t| t.key().unwrap().starts_with(TAG_PREFIX))
        );
        let mut map: BTreeMap<String, String> = tags
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect();
        map.insert("Team".into(), "ml".into());
        assert_eq!(
            map["zenml-rotator:managed_by"],
            crate::store::MANAGED_BY.to_owned()
        );
        assert_eq!(RotationRecord::from_map(&record_map(&map)), Some(r));
    }

    #[test]
    fn an_overlong_tag_value_is_refused_before_any_write() {
        let r = RotationRecord {
            policy: "p".repeat(TAG_VALUE_MAX + 1),
            ..RotationRecord::default()
        };
        let err = record_tags("stage", "zenml/x", &r).unwrap_err();
        assert!(err.to_string().contains("`policy`"), "{err}");
    }

    #[test]
    fn tokens_outside_aws_limits_are_refused() {
        assert!(check_token("stage", "p", &"a".repeat(31)).is_err());
        assert!(check_token("stage", "p", &"a".repeat(32)).is_ok());
        assert!(check_token("stage", "p", &"a".repeat(64)).is_ok());
        assert!(check_token("stage", "p", &"a".repeat(65)).is_err());
        assert!(check_token("stage", "p", &format!("{}!", "a".repeat(40))).is_err());
    }

    #[test]
    fn deletion_and_foreign_rotation_refuse_writes() {
        let mut s = state(&[("a", &["AWSCURRENT"]), ("b", &["AWSPENDING"])]);
        assert!(s.refuse_unwritable("preflight", "p").is_ok());
        s.rotation_enabled = true;
        s.rotation_lambda = Some("arn:aws:lambda:eu-west-1:1:function:rot".into());
        let err = s.refuse_unwritable("preflight", "p").unwrap_err();
        assert!(matches!(err, StoreError::NotWritable { .. }));
        assert!(err.to_string().contains("version b"), "{err}");
        let mut s = state(&[("a", &["AWSCURRENT"])]);
        s.deleted = Some("2026-01-01T00:00:00Z".into());
        let err = s.refuse_unwritable("preflight", "p").unwrap_err();
        assert!(err.to_string().contains("restore-secret"), "{err}");
    }
}
