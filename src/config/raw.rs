//! The policy file exactly as written: every field optional, so validation (not serde) decides
//! what is missing and can report all of it at once. Unknown keys are rejected by serde, with a span.
//! Inline secrets (`password = "..."`) are accepted here only to be rejected with a pointed message.
//! The same types give the policy file's JSON Schema (`schema.rs`): their doc comments are the
//! descriptions an editor shows.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{DeserializeSeed, IgnoredAny};
use serde::{Deserialize, Deserializer};

use crate::config::Strategy;
use crate::config::notify::NoticeKind;
use crate::store::settings::store_table_fields;

pub(super) mod table;

use table::{RawTable, TableSeed};

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// The ZenML server whose keys are rotated, and how the rotator logs in (required).
    pub zenml: Option<RawZenml>,
    /// Settings every [[key]] inherits unless it sets its own.
    pub defaults: Option<RawDefaults>,
    /// Where metrics go: `run` serves them, `once` writes a textfile or pushes.
    pub metrics: Option<RawMetrics>,
    /// Where the rotator keeps its own state.
    pub state: Option<RawState>,
    /// How `run` paces itself.
    pub daemon: Option<RawDaemon>,
    /// How rotators on several hosts take turns on a key (claims in the key's store).
    pub coordination: Option<RawCoordination>,
    /// Where keys are written, by store name: [stores.NAME] with a `kind`.
    pub stores: Option<BTreeMap<String, RawStore>>,
    /// One managed API key per [[key]].
    pub key: Option<Vec<RawKey>>,
    /// Opt-in server-wide checks beyond the managed keys.
    pub hygiene: Option<RawHygiene>,
    /// Webhooks (`url`) and audit files (`path`) told about rotations and failures.
    pub notify: Option<Vec<RawNotify>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZenml {
    /// The server's URL, http or https (required).
    pub url: Option<String>,
    /// An admin user (open-source servers only let admins rotate keys).
    pub username: Option<String>,
    /// The environment variable holding the user's password.
    pub password_env: Option<String>,
    /// A file holding the user's password; a bare name is read from $CREDENTIALS_DIRECTORY.
    pub password_file: Option<String>,
    /// Instead of a user: the environment variable holding a service account's API key (RBAC servers).
    pub api_key_env: Option<String>,
    /// Instead of a user: a file holding a service account's API key.
    pub api_key_file: Option<String>,
    /// An extra CA bundle (PEM) for the server's certificate.
    pub ca_file: Option<String>,
    /// Per-request timeout, e.g. "30s" (default 30s).
    pub timeout: Option<String>,
    /// Accept http:// to a host that is not loopback (a warning at every start, a gauge).
    pub allow_insecure_http: Option<bool>,
    /// Rejected: secrets are never inline.
    #[schemars(skip)]
    pub password: Option<IgnoredAny>,
    /// Rejected: secrets are never inline.
    #[schemars(skip)]
    pub api_key: Option<IgnoredAny>,
}

/// The settings a `[[key]]` inherits; `[defaults]` holds them plus `concurrency`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    /// Rotate when the current value is older than this, e.g. "30d" (default 30d).
    pub every: Option<String>,
    /// How long the previous value keeps working after a rotation, e.g. "60m" (default 60m).
    pub retain: Option<String>,
    /// "rotate" (in place) or "replace" (a new key; the old one is deactivated after retain).
    // (`default` keeps it optional in the schema, as `Option` does without `schema_with`.)
    #[serde(default)]
    #[schemars(schema_with = "strategy_name")]
    pub strategy: Option<String>,
    /// The [stores.NAME] keys are written to.
    pub store: Option<String>,
    /// A fixed per-key offset (hash of the key's name) so keys do not all fire at once, e.g. "15m".
    pub jitter: Option<String>,
    /// A 5-field cron schedule instead of `every`, e.g. "0 3 * * SUN".
    pub schedule: Option<String>,
    /// Rotate due keys only inside these windows.
    pub window: Option<RawWindow>,
    /// IANA time zone of `schedule` and `window.schedule` (default UTC).
    pub timezone: Option<String>,
    /// "rotate" only: drop the previous value from the store once its window has passed.
    pub retire_previous: Option<bool>,
    /// "replace" only: delete deactivated keys this long after their deactivation.
    pub delete_after: Option<String>,
    /// Keys rotated at once (default 4, at least 1).
    pub concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    /// Unique: the `policy` label of metrics and the argument of `rotate`.
    pub name: Option<String>,
    /// The ZenML service account that owns the key.
    pub service_account: Option<String>,
    /// The name of the API key on the service account.
    pub api_key: Option<String>,
    /// Where the value goes in the store: a KV path, an AWS secret name, or a file name.
    pub path: Option<String>,
    /// Rotate when the current value is older than this, e.g. "7d".
    pub every: Option<String>,
    /// How long the previous value keeps working after a rotation, e.g. "60m".
    pub retain: Option<String>,
    /// "rotate" (in place) or "replace" (a new key; the old one is deactivated after retain).
    // (`default` keeps it optional in the schema, as `Option` does without `schema_with`.)
    #[serde(default)]
    #[schemars(schema_with = "strategy_name")]
    pub strategy: Option<String>,
    /// The [stores.NAME] the key is written to.
    pub store: Option<String>,
    /// A fixed per-key offset (hash of the key's name), e.g. "15m".
    pub jitter: Option<String>,
    /// A 5-field cron schedule instead of `every`, e.g. "0 3 * * SUN".
    pub schedule: Option<String>,
    /// Rotate the key only inside these windows.
    pub window: Option<RawWindow>,
    /// IANA time zone of `schedule` and `window.schedule` (default UTC).
    pub timezone: Option<String>,
    /// "rotate" only: drop the previous value from the store once its window has passed.
    pub retire_previous: Option<bool>,
    /// "replace" only: delete deactivated keys this long after their deactivation.
    pub delete_after: Option<String>,
    /// A command run after a new value is stored and verified (no shell; never the value in its
    /// arguments or environment).
    pub on_rotated: Option<RawHook>,
    /// A command run after the previous value is retired.
    pub on_finalized: Option<RawHook>,
}

/// `on_rotated = { command = [...], timeout = "60s", stdin = "payload" }`, and `on_finalized`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    /// The program and its arguments, e.g. ["/usr/bin/systemctl", "try-reload-or-restart", "x.service"].
    pub command: Option<Vec<String>>,
    /// How long it may run, e.g. "60s" (default 60s).
    pub timeout: Option<String>,
    /// "payload": ZENML_STORE_URL=... and ZENML_STORE_API_KEY=... on its standard input; "none" (default).
    #[serde(default)]
    #[schemars(schema_with = "hook_stdin")]
    pub stdin: Option<String>,
}

/// One `[[notify]]`: a webhook (`url`) or an audit file (`path`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    /// A webhook: https, or http to a loopback address.
    pub url: Option<String>,
    /// The webhook's body: "json" (default) or "slack" ({"text": ...}).
    #[serde(default)]
    #[schemars(schema_with = "webhook_format")]
    pub format: Option<String>,
    /// The events sent (webhooks: failed and blocked by default; audit files: all).
    #[serde(default)]
    #[schemars(schema_with = "event_names")]
    pub events: Option<Vec<String>>,
    /// The environment variable holding the HMAC secret (X-Zenml-Rotator-Signature).
    pub secret_env: Option<String>,
    /// A file holding the HMAC secret; a bare name is read from $CREDENTIALS_DIRECTORY.
    pub secret_file: Option<String>,
    /// An audit trail: JSON lines appended to this file (0600).
    pub path: Option<String>,
    /// Accept http:// to a host that is not loopback (a warning at every start, a gauge).
    pub allow_insecure_http: Option<bool>,
    /// Rejected: secrets are never inline.
    #[schemars(skip)]
    pub secret: Option<IgnoredAny>,
}

#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    /// When the window opens: a 5-field cron schedule, e.g. "0 2 * * *".
    pub schedule: Option<String>,
    /// How long it stays open, e.g. "2h".
    pub duration: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// `run`: the address of /metrics, /healthz and /readyz (default 127.0.0.1:9464).
    pub listen: Option<String>,
    /// `once`: a node-exporter textfile (ending in .prom), written atomically.
    pub textfile: Option<String>,
    /// `once`: a Pushgateway's base URL.
    pub pushgateway: Option<String>,
    /// Accept a Pushgateway over http:// to a host that is not loopback (a warning, a gauge).
    pub allow_insecure_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// The journal of rotations in flight and the lock (default $STATE_DIRECTORY, else /var/lib/zenml-rotator).
    pub dir: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    /// A full pass at least this often (default 5m).
    pub safety_pass: Option<String>,
    /// SIGTERM: how long the rotation in flight may take to finish (default 120s).
    pub shutdown_timeout: Option<String>,
    /// A failing key is first retried after this (default 30s).
    pub backoff_initial: Option<String>,
    /// The longest retry delay of a failing key (default 1h).
    pub backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCoordination {
    /// How long a claim on a key holds without being renewed (default 5m).
    pub claim_ttl: Option<String>,
    /// The largest clock difference between rotator hosts a claim tolerates (default 30s).
    pub max_clock_skew: Option<String>,
}

/// `stdin = "..."` in the schema.
fn hook_stdin(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["payload", "none"] })
}

/// `format = "..."` of a `[[notify]]` in the schema.
fn webhook_format(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": ["json", "slack"] })
}

/// `events = [...]` of a `[[notify]]` in the schema: the names the parser accepts.
fn event_names(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = NoticeKind::ALL.iter().map(|k| k.as_str()).collect();
    json_schema!({ "type": "array", "items": { "type": "string", "enum": names } })
}

/// `strategy = "..."` in the schema: the names the parser accepts.
fn strategy_name(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
    json_schema!({ "type": "string", "enum": names })
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

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHygiene {
    /// Deactivate keys no policy covers whose last workload login is older than this.
    pub deactivate_unused_after: Option<String>,
    /// Report keys no policy covers, never touching them (default true).
    pub report_unmanaged: Option<bool>,
    /// Report service accounts left without an active key (default true).
    pub report_service_accounts_without_keys: Option<bool>,
    /// Service accounts hygiene never touches.
    pub exclude_service_accounts: Option<Vec<String>>,
}
