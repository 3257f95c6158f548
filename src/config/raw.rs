//! The policy file exactly as written: every field optional, so validation (not serde) decides
//! what is missing and can report all of it at once. Unknown keys are rejected by serde, with a span.
//! Inline secrets (`password = "..."`) are accepted here only to be rejected with a pointed message.

use std::collections::BTreeMap;

use serde::de::{DeserializeSeed, IgnoredAny};
use serde::{Deserialize, Deserializer};

use crate::store::settings::store_table_fields;

pub(super) mod table;

use table::{RawTable, TableSeed};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub zenml: Option<RawZenml>,
    pub defaults: Option<RawDefaults>,
    pub metrics: Option<RawMetrics>,
    pub state: Option<RawState>,
    pub daemon: Option<RawDaemon>,
    pub coordination: Option<RawCoordination>,
    pub stores: Option<BTreeMap<String, RawStore>>,
    pub key: Option<Vec<RawKey>>,
    pub hygiene: Option<RawHygiene>,
    pub notify: Option<Vec<RawNotify>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZenml {
    pub url: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub ca_file: Option<String>,
    pub timeout: Option<String>,
    pub allow_insecure_http: Option<bool>,
    /// Rejected: secrets are never inline.
    pub password: Option<IgnoredAny>,
    /// Rejected: secrets are never inline.
    pub api_key: Option<IgnoredAny>,
}

/// The settings a `[[key]]` inherits; `[defaults]` holds them plus `concurrency`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub every: Option<String>,
    pub retain: Option<String>,
    pub strategy: Option<String>,
    pub store: Option<String>,
    pub jitter: Option<String>,
    pub schedule: Option<String>,
    pub window: Option<RawWindow>,
    pub timezone: Option<String>,
    pub retire_previous: Option<bool>,
    pub delete_after: Option<String>,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub name: Option<String>,
    pub service_account: Option<String>,
    pub api_key: Option<String>,
    pub path: Option<String>,
    pub every: Option<String>,
    pub retain: Option<String>,
    pub strategy: Option<String>,
    pub store: Option<String>,
    pub jitter: Option<String>,
    pub schedule: Option<String>,
    pub window: Option<RawWindow>,
    pub timezone: Option<String>,
    pub retire_previous: Option<bool>,
    pub delete_after: Option<String>,
    pub on_rotated: Option<RawHook>,
    pub on_finalized: Option<RawHook>,
}

/// `on_rotated = { command = [...], timeout = "60s", stdin = "payload" }`, and `on_finalized`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub stdin: Option<String>,
}

/// One `[[notify]]`: a webhook (`url`) or an audit file (`path`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub url: Option<String>,
    pub format: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub path: Option<String>,
    pub allow_insecure_http: Option<bool>,
    /// Rejected: secrets are never inline.
    pub secret: Option<IgnoredAny>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub schedule: Option<String>,
    pub duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<String>,
    pub textfile: Option<String>,
    pub pushgateway: Option<String>,
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub safety_pass: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCoordination {
    pub claim_ttl: Option<String>,
    pub max_clock_skew: Option<String>,
}

/// One `[stores.NAME]`: `kind` and the keys of every store kind, each read as its kind declares
/// it, so a key of the wrong kind gets a message naming the kind rather than serde's generic
/// "unknown field".
#[derive(Debug, Default)]
pub(super) struct RawStore(pub RawTable);

impl<'de> Deserialize<'de> for RawStore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TableSeed(&store_table_fields())
            .deserialize(deserializer)
            .map(RawStore)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHygiene {
    pub deactivate_unused_after: Option<String>,
    pub report_unmanaged: Option<bool>,
    pub report_service_accounts_without_keys: Option<bool>,
    pub exclude_service_accounts: Option<Vec<String>>,
}
