//! `[stores.NAME]` of kind "aws-secrets-manager": the keys its table takes, how they are checked,
//! what a key's `path` means (the secret's name), and the settings `AwsStore` is built from.

use std::time::Duration;

use crate::config::validate::toolkit::{DEFAULT_TIMEOUT, Field, FieldPath, RawTable, Validator};

pub(crate) const KIND: &str = "aws-secrets-manager";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Falls back to the SDK's region chain (AWS_REGION, profile) when absent.
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub kms_key_id: Option<String>,
    /// Budget of one operation, retries included (default 30s).
    pub timeout: Duration,
    /// Claims on keys are secrets named `<claims>/<path>` (default `zenml-rotator/claims`).
    pub claims: String,
}

/// The keys of an AWS store's table. Credentials are never among them: they come from the SDK's
/// chain, and keys that would hold them are read only to be refused.
pub(crate) const FIELDS: &[Field] = &[
    Field::text("region"),
    Field::text("endpoint_url"),
    Field::text("kms_key_id"),
    Field::text("timeout"),
    Field::text("claims"),
    Field::flag("allow_insecure_http"),
    Field::inline("access_key_id"),
    Field::inline("secret_access_key"),
];

/// Checks an AWS store's table (its `kind` and the keys of other kinds are checked already).
pub(crate) fn validate(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<AwsSettings> {
    let region = v.text(raw.text("region"), &at.key("region"));
    let endpoint_url = v.endpoint(
        raw.text("endpoint_url"),
        &at.key("endpoint_url"),
        raw.flag("allow_insecure_http").unwrap_or(false),
    );
    let kms_key_id = v.text(raw.text("kms_key_id"), &at.key("kms_key_id"));
    let timeout = v.duration_or(raw.text("timeout"), &at.key("timeout"), DEFAULT_TIMEOUT);
    let claims = claims_prefix(v, raw.text("claims"), &at.key("claims"));
    Some(AwsSettings {
        region,
        endpoint_url,
        kms_key_id,
        timeout: timeout?,
        claims: claims?,
    })
}

/// Claims on keys are secrets named `<claims>/<path>` (see `store::claim`).
pub(crate) const DEFAULT_CLAIMS: &str = "zenml-rotator/claims";

fn claims_prefix(v: &mut Validator, value: Option<&str>, at: &FieldPath) -> Option<String> {
    let prefix = value.unwrap_or(DEFAULT_CLAIMS).trim_matches('/');
    if prefix.is_empty() || check_path(prefix).is_err() {
        v.err(
            at,
            "must be a Secrets Manager name prefix such as \"zenml-rotator/claims\": A-Z a-z 0-9 / _ + = . @ -",
        );
        return None;
    }
    Some(prefix.to_owned())
}

/// AWS access keys typed into any store's table: refused, once per table.
pub(crate) fn reject_inline_credentials(v: &mut Validator, raw: &RawTable, at: &FieldPath) {
    if let Some(field) = ["access_key_id", "secret_access_key"]
        .into_iter()
        .find(|f| raw.has(f))
    {
        v.err_key(
            &at.key(field),
            "secrets are never inline: AWS credentials come from the SDK's chain (AWS_* environment, profile, web identity, instance role)",
        );
    }
}

/// A key's `path`: the name of the secret.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    let valid = path.len() <= 512
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
    if valid {
        Ok(())
    } else {
        Err("must be a Secrets Manager secret name: at most 512 of A-Z a-z 0-9 / _ + = . @ -")
    }
}
