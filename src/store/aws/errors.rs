//! Secrets Manager's answers as store errors: which failures are a refusal, a conflict, an outage
//! or a bug, named by the AWS call, never with a request or response body.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use super::{AwsStore, KIND};
use crate::store::{StoreError, StoreErrorKind};

/// The error code of an SDK error, when the service answered with one.
pub(super) fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

pub(super) fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    code_of(err) == Some("ResourceNotFoundException")
}

impl AwsStore {
    /// Maps an SDK error to the store's error kinds. `api` names the AWS call; `path` is the
    /// secret name. Neither the request nor the response body is ever part of the message.
    pub(super) fn sdk_error<E>(
        &self,
        op: &'static str,
        path: &str,
        api: &'static str,
        err: &SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (kind, message) = match err {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown error");
                let status = service.raw().status().as_u16();
                let detail = service.err().message().unwrap_or("no message");
                (
                    service_error_kind(code, status),
                    format!("{api}: {code} (HTTP {status}): {detail}"),
                )
            }
            SdkError::TimeoutError(_) => (
                StoreErrorKind::Unavailable,
                format!(
                    "{api}: no answer within {} (the store timeout, retries included)",
                    humantime::format_duration(self.timeout)
                ),
            ),
            SdkError::DispatchFailure(_) => match credentials_error(err) {
                Some(CredentialsError::ProviderTimedOut(_)) => (
                    StoreErrorKind::Unavailable,
                    format!(
                        "{api}: timed out obtaining AWS credentials: {}",
                        causes(err)
                    ),
                ),
                // Nothing found, a broken profile, or a provider that refused us (an IRSA role whose
                // trust policy does not name this service account, IMDS disabled): an operator has
                // to fix where the credentials come from.
                Some(_) => (
                    StoreErrorKind::PermissionDenied,
                    format!(
                        "{api}: no usable AWS credentials (environment, profile, web identity, \
                         ECS or instance metadata): {}",
                        causes(err)
                    ),
                ),
                None => (
                    StoreErrorKind::Unavailable,
                    format!("{api}: request failed: {}", causes(err)),
                ),
            },
            SdkError::ResponseError(_) => (
                StoreErrorKind::Unavailable,
                format!("{api}: unreadable response: {}", causes(err)),
            ),
            _ => (StoreErrorKind::Other, format!("{api}: {}", causes(err))),
        };
        StoreError::new(kind, KIND, op, path, message)
    }
}

/// What an error code (or, for codes not listed, the HTTP status) of Secrets Manager means here.
fn service_error_kind(code: &str, status: u16) -> StoreErrorKind {
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
        | "EncryptionFailure" => StoreErrorKind::PermissionDenied,
        // Scheduled for deletion, owned by another service, too many versions: the secret is
        // there but does not take this write; an operator has to act.
        "InvalidRequestException" | "LimitExceededException" => StoreErrorKind::NotWritable,
        "ResourceExistsException" => StoreErrorKind::Conflict,
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "InternalServiceError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "RequestTimeout" => StoreErrorKind::Unavailable,
        _ if status >= 500 || status == 429 => StoreErrorKind::Unavailable,
        _ if status == 401 || status == 403 => StoreErrorKind::PermissionDenied,
        _ => StoreErrorKind::Other,
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

pub(super) fn conflict(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Conflict, KIND, op, path, message)
}

pub(super) fn not_writable(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::new(StoreErrorKind::NotWritable, KIND, op, path, message)
}

pub(super) fn other(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Other, KIND, op, path, message)
}
