//! The policy file: the validated types the rest of the program uses, and `Config::load`, which
//! builds them from TOML or rejects the whole file with every problem's file:line:col and field.
//! Parsing lives in `config/raw.rs` (the file as written) and `config/validate.rs` (the rules);
//! each `[stores.NAME]` is read and checked by its store kind (`store/<kind>/settings.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::SecretSource;
use crate::trust::Changeable;

mod diff;
mod error;
mod notify;
mod raw;
pub mod schema;
#[cfg(test)]
mod tests;
pub(crate) mod validate;

pub use crate::cron::CronSpec;
pub use crate::store::StoreSettings;
pub use crate::store::aws::AwsSettings;
pub use crate::store::file::FileSettings;
pub use crate::store::vault::{VaultAuth, VaultSettings};
pub use diff::{ConfigChange, diff};
pub use error::{ConfigError, Diagnostic};
pub use notify::{Hook, HookStdin, KeyHooks, NoticeKind, NotifySink, NotifyTarget, WebhookFormat};

impl Config {
    /// Reads and validates a policy file. Reads nothing else: the credentials it names are read
    /// when used, so this works on a machine that has none of them. A file that other users may
    /// write, or replace through its directory, is refused (`trust.rs`): it says where the keys
    /// go and what runs with them; one its group may write is loaded with a warning.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        if let Some(changeable) =
            crate::trust::changeable_by_others(path, &meta).map_err(read_error)?
        {
            let path = path.to_path_buf();
            return Err(match changeable {
                Changeable::File { mode } => ConfigError::Writable { path, mode },
                Changeable::Directory { dir, mode } => ConfigError::Replaceable { path, dir, mode },
            });
        }
        let group_writable = crate::trust::group_writable(path, &meta);
        let mut source = String::new();
        file.read_to_string(&mut source).map_err(read_error)?;
        let mut config = Config::parse(&source, path)?;
        if let Some((mode, gid)) = group_writable {
            config.file_warnings.push(format!(
                "{0}: warning: permissions {mode:04o} for the policy file let group {gid} write it: its members may send the keys to a store of their own or run a hook of their own with them; run chmod g-w {0}",
                path.display()
            ));
        }
        Ok(config)
    }

    /// Validates `source` as the contents of `path` (used in messages and kept as `Config::source`).
    /// `state.dir` defaults to `$STATE_DIRECTORY` when set.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(source, path, &validate::Context::from_environment())
    }

    /// Logs every cleartext endpoint the file allows (`allow_insecure_http = true`), and what
    /// `file_warnings` holds, once per load: every command that loads the file, and every reload
    /// of the daemon.
    pub fn log_warnings(&self) {
        for endpoint in &self.insecure_endpoints {
            tracing::warn!("{}", endpoint.warning());
        }
        for warning in &self.file_warnings {
            tracing::warn!("{warning}");
        }
    }

    /// The `[[key]]` named `name` (the argument of `rotate`).
    pub fn key(&self, name: &str) -> Option<&KeyPolicy> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// A whole, validated policy file. Built only by `Config::load`/`Config::parse`, so holding one
/// means every rule of the policy file (README, "Policy file") holds.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub source: PathBuf,
    pub zenml: ZenmlSettings,
    /// `[defaults].concurrency`: keys rotated at once (default 4).
    pub concurrency: usize,
    pub metrics: MetricsSettings,
    pub state: StateSettings,
    pub daemon: DaemonSettings,
    pub coordination: CoordinationSettings,
    /// `[stores.NAME]`, by name. Holds an implicit `file` store when the file defines none.
    pub stores: BTreeMap<String, StoreSettings>,
    /// `[[key]]`, in file order, with `[defaults]` applied.
    pub keys: Vec<KeyPolicy>,
    pub hygiene: Option<HygieneSettings>,
    /// `[[notify]]`, in file order: webhooks and audit files every event is offered to.
    pub notify: Vec<NotifySink>,
    /// Every cleartext endpoint the file accepts with `allow_insecure_http = true`, in file
    /// order: not an error, but to be said at every load (logged, and the
    /// `insecure_endpoints` gauge).
    pub insecure_endpoints: Vec<Diagnostic>,
    /// What `load` found about the file itself that is allowed but must be said (its group may
    /// write it), one line each, said with `insecure_endpoints`.
    pub file_warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZenmlSettings {
    /// Base URL without a trailing slash; also the `ZENML_STORE_URL` written to stores.
    pub url: String,
    pub auth: ZenmlAuth,
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout (default 30s).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZenmlAuth {
    /// An admin user: `username` + `password_env`/`password_file`.
    Password {
        username: String,
        password: SecretSource,
    },
    /// A service account key (`api_key_env`/`api_key_file`), for servers with RBAC.
    ApiKey(SecretSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `run`: where /metrics, /healthz, /readyz listen (default 127.0.0.1:9464).
    pub listen: SocketAddr,
    /// `once`: a node-exporter textfile written atomically.
    pub textfile: Option<PathBuf>,
    /// `once`: a Pushgateway base URL.
    pub pushgateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    /// Journal of rotations in flight (default `$STATE_DIRECTORY` under systemd, else /var/lib/zenml-rotator).
    pub dir: PathBuf,
}

/// `[daemon]` (optional): how `run` paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// A full pass at least this often, for state changed behind the rotator's back (default 5m).
    pub safety_pass: Duration,
    /// SIGTERM: how long the rotation in flight may take to finish (default 120s).
    pub shutdown_timeout: Duration,
    /// Per-key retry backoff after a failure: first delay and cap (defaults 30s and 1h).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            safety_pass: Duration::from_secs(5 * 60),
            shutdown_timeout: Duration::from_secs(120),
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60 * 60),
        }
    }
}

/// `[coordination]` (optional): how rotators anywhere share the keys (invariant 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinationSettings {
    /// How long a claim on a key lasts unless renewed: the longest a crashed holder can keep
    /// others off a key (default 5m). A holder stops acting at two thirds of it.
    pub claim_ttl: Duration,
    /// How far the clocks of two rotators may disagree: a claim counts as expired only this long
    /// after its expiry time (default 30s).
    pub max_clock_skew: Duration,
}

impl Default for CoordinationSettings {
    fn default() -> Self {
        CoordinationSettings {
            claim_ttl: Duration::from_secs(5 * 60),
            max_clock_skew: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// In place: ZenML's `rotate --retain`.
    Rotate,
    /// A new API key; the old one is deactivated after `retain`.
    Replace,
}

impl Strategy {
    pub const ALL: [Strategy; 2] = [Strategy::Rotate, Strategy::Replace];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rotate => "rotate",
            Strategy::Replace => "replace",
        }
    }

    /// `strategy = "..."` as written in the file.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether `retain` must be whole minutes (ZenML's unit for an in-place rotation's window).
    pub fn retain_in_whole_minutes(self) -> bool {
        match self {
            Strategy::Rotate => true,
            Strategy::Replace => false,
        }
    }

    /// Whether `retire_previous` means anything: a previous value kept beside the current one.
    pub fn keeps_previous_value(self) -> bool {
        match self {
            Strategy::Rotate => true,
            Strategy::Replace => false,
        }
    }

    /// Whether `delete_after` means anything: old keys the rotator deactivates.
    pub fn deactivates_old_keys(self) -> bool {
        match self {
            Strategy::Rotate => false,
            Strategy::Replace => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    pub opens: CronSpec,
    pub duration: Duration,
}

/// When a key becomes due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Due when the current value is older than this.
    Every(Duration),
    /// Due at each schedule time after the last rotation.
    Schedule(CronSpec),
}

/// One `[[key]]` with `[defaults]` applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Unique; the `policy` label and the argument of `rotate`.
    pub name: String,
    pub service_account: String,
    pub api_key: String,
    /// A name in `Config::stores`.
    pub store: String,
    /// KV path under the mount, AWS secret name, or file name under the store's dir.
    pub path: String,
    pub strategy: Strategy,
    pub cadence: Cadence,
    pub window: Option<MaintenanceWindow>,
    pub jitter: Option<Duration>,
    /// How long the previous value keeps working (whole minutes under `rotate`).
    pub retain: Duration,
    /// `rotate` only: drop the previous value from the store once its window has passed.
    pub retire_previous: bool,
    /// `replace` only: delete deactivated keys this long after deactivation.
    pub delete_after: Option<Duration>,
    /// `on_rotated` and `on_finalized`: commands run once a new value is stored and verified, or
    /// once a rotation is finalized.
    pub hooks: KeyHooks,
}

/// `[hygiene]` (opt-in): server-wide checks beyond the managed keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HygieneSettings {
    /// Deactivate keys whose last workload login is older than this.
    pub deactivate_unused_after: Option<Duration>,
    /// Report keys no policy covers (never touched).
    pub report_unmanaged: bool,
    /// Report service accounts with no active key.
    pub report_service_accounts_without_keys: bool,
    /// Service accounts hygiene never touches.
    pub exclude_service_accounts: Vec<String>,
}
