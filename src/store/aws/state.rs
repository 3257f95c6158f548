//! What the protocol decides on: a secret as `DescribeSecret` shows it (versions and their staging
//! labels, tags, deletion, foreign rotation), and the rotation record as `zenml-rotator:*` tags.

use std::collections::BTreeMap;

use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::Tag;

use super::errors::{not_writable, other};
use super::{AWSCURRENT, AWSPENDING, TAG_KEY_MAX, TAG_PREFIX, TAG_VALUE_MAX};
use crate::store::{RotationRecord, StoreError, StoreSnapshot};

/// The parts of `DescribeSecret` the protocol decides on. Never holds a value.
#[derive(Debug, Default)]
pub(super) struct SecretState {
    pub(super) exists: bool,
    /// When the secret was scheduled for deletion (RFC 3339), if it was.
    pub(super) deleted: Option<String>,
    /// VersionId -> staging labels. moto also lists unlabelled versions (with no labels); AWS
    /// lists only labelled ones, so an absent id may still be a (deprecated) version.
    pub(super) versions: BTreeMap<String, Vec<String>>,
    pub(super) tags: BTreeMap<String, String>,
    pub(super) rotation_enabled: bool,
    pub(super) rotation_lambda: Option<String>,
    pub(super) owning_service: Option<String>,
}

impl SecretState {
    pub(super) fn from_output(out: &DescribeSecretOutput) -> SecretState {
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
    pub(super) fn holder(&self, label: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(id, _)| id.as_str())
    }

    pub(super) fn has_label(&self, version: &str, label: &str) -> bool {
        self.versions
            .get(version)
            .is_some_and(|labels| labels.iter().any(|l| l == label))
    }

    /// `AWSPENDING` on a version that is not `AWSCURRENT`: a rotation started and not finished.
    pub(super) fn pending(&self) -> Option<String> {
        let pending = self.holder(AWSPENDING)?;
        (!self.has_label(pending, AWSCURRENT)).then(|| pending.to_owned())
    }

    pub(super) fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            exists: self.exists,
            version: self.holder(AWSCURRENT).map(str::to_owned),
            record: RotationRecord::from_map(&record_map(&self.tags)),
            pending: self.pending(),
            written_by: None,
            current_deleted: false,
            warnings: Vec::new(),
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
    pub(super) fn refuse_unwritable(&self, op: &'static str, path: &str) -> Result<(), StoreError> {
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

/// The record as tags, refusing (before anything is written) values Secrets Manager would reject.
pub(super) fn record_tags(
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
pub(super) fn record_map(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(TAG_PREFIX)
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect()
}
