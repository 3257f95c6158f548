//! From the file as written (`raw`) to a `Config`: defaults applied, every rule of the README ("Policy file")
//! checked, every problem reported with its place. Nothing here reads the credentials the file
//! names or touches the network: `check` must work on a machine that has neither.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::error::{ConfigError, Diagnostic, FieldPath, Locator};
use super::raw::{
    RawConfig, RawCoordination, RawDaemon, RawHygiene, RawMetrics, RawState, RawStore, RawZenml,
};
use super::{
    Config, CoordinationSettings, DaemonSettings, FileSettings, HygieneSettings, MetricsSettings,
    StateSettings, StoreSettings, ZenmlAuth, ZenmlSettings,
};
use crate::secret::SecretSource;
use crate::store::settings as store_settings;

mod notify;
mod policy;
#[cfg(test)]
mod tests;
pub(crate) mod toolkit;

use policy::{Inheritable, KeyScope, Level};
pub(super) use toolkit::Context;
use toolkit::{DEFAULT_TIMEOUT, Validator};

pub(super) const DEFAULT_EVERY: Duration = Duration::from_secs(30 * 86_400);
pub(super) const DEFAULT_RETAIN: Duration = Duration::from_secs(60 * 60);
pub(super) const DEFAULT_CONCURRENCY: usize = 4;
/// The shortest `[coordination] claim_ttl`: a holder must be able to finish a rotation's steps.
const MIN_CLAIM_TTL: Duration = Duration::from_secs(6);
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/zenml-rotator";
/// The store a key uses when the file defines none (the file store is the embedded default).
pub(super) const IMPLICIT_STORE: &str = "file";
/// How far ahead a schedule's gaps are checked: every month length and both DST changes.
const GAP_HORIZON: Duration = Duration::from_secs(366 * 86_400);

pub(super) fn parse(source: &str, file: &Path, ctx: &Context) -> Result<Config, ConfigError> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(source);
    let locator = Locator::new(source, file.to_path_buf(), &doc);
    if !syntax_errors.is_empty() {
        let diagnostics = syntax_errors
            .iter()
            .map(|e| {
                let offset = e.span().map_or(0, |s| s.start);
                locator.at_syntax_error(offset, e.message().to_owned())
            })
            .collect();
        return Err(ConfigError::Invalid(in_file_order(diagnostics)));
    }
    let raw: RawConfig = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let mut d = locator.at_offset(offset, serde_message(e.message()));
            d.message = without_inline_secret_fields(&d.message, &d.field);
            return Err(ConfigError::Invalid(vec![d]));
        }
    };
    let mut v = Validator {
        loc: &locator,
        ctx,
        diagnostics: Vec::new(),
        insecure_endpoints: Vec::new(),
    };
    let mut config = v.config(raw, file);
    config.insecure_endpoints = in_file_order(v.insecure_endpoints);
    if v.diagnostics.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(in_file_order(v.diagnostics)))
    }
}

fn in_file_order(mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    // Stable: problems at one place keep the order they were found in.
    d.sort_by_key(|x| (x.line, x.column));
    let mut unique: Vec<Diagnostic> = Vec::with_capacity(d.len());
    for x in d {
        if !unique.contains(&x) {
            unique.push(x);
        }
    }
    unique
}

/// serde's messages quote the offending value (`invalid type: string "..."`, `integer `123``); a
/// value typed into the wrong field may be a secret, so it is dropped. Internal type names go too.
fn serde_message(msg: &str) -> String {
    let mut msg = msg.to_owned();
    for kind in ["integer `", "floating point `"] {
        while let Some(start) = msg.find(kind) {
            let value = start + kind.len();
            let end = msg[value..].find('`').map_or(msg.len(), |i| value + i + 1);
            msg.replace_range(start..end, kind.trim_end_matches([' ', '`']));
        }
    }
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            // "string \"x\", expected" -> "string, expected"
            if out.ends_with(' ') {
                out.pop();
            }
            continue;
        }
        out.push(c);
    }
    let mut msg = out
        .replacen("unknown field", "unknown key", 1)
        .replace("expected usize", "expected a whole number (0 or more)")
        .replace("a sequence", "an array")
        .replace("a map", "a table");
    while let Some(start) = msg.find("struct Raw") {
        let end = msg[start + "struct ".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(msg.len(), |i| start + "struct ".len() + i);
        msg.replace_range(start..end, "a table");
    }
    msg
}

/// `[zenml]` accepts inline secrets only to reject them with a clear message; serde's "expected
/// one of" list for an unknown key must not suggest them. (The store tables leave their inline
/// secrets out of the list themselves.)
fn without_inline_secret_fields(message: &str, field: &str) -> String {
    let Some((head, list)) = message.split_once(", expected one of ") else {
        return message.to_owned();
    };
    // `api_key` is the key's name in a [[key]], an inline secret in [zenml].
    let inline: &[&str] = if field.starts_with("zenml.") {
        &["password", "api_key"]
    } else if field.starts_with("notify[") {
        &["secret"]
    } else {
        &["password"]
    };
    let kept: Vec<&str> = list
        .split(", ")
        .filter(|f| !inline.contains(&f.trim_matches('`')))
        .collect();
    format!("{head}, expected one of {}", kept.join(", "))
}

/// A duration the way the file writes them ("40d", "1h30m"); humantime's own formatting uses
/// months of 30.44 days, which reads as a different number than the one the operator wrote.
fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    let sub = Duration::from_nanos(u64::from(d.subsec_nanos()));
    if !sub.is_zero() {
        out.push_str(&humantime::format_duration(sub).to_string());
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// The first field of a group that the file sets, to point a message at.
fn first_set<'f>(fields: &[(&'f str, bool)]) -> &'f str {
    fields
        .iter()
        .find(|(_, set)| *set)
        .or(fields.first())
        .map_or("", |(f, _)| f)
}

/// The sections of the file; `[[key]]` and `[defaults]` are in `policy`, each `[stores.NAME]` is
/// checked by its store kind.
impl Validator<'_> {
    fn config(&mut self, raw: RawConfig, file: &Path) -> Config {
        let root = FieldPath::root();
        let zenml = self.zenml(raw.zenml.as_ref(), &root.key("zenml"));
        let metrics = self.metrics(
            raw.metrics.as_ref().unwrap_or(&RawMetrics::default()),
            &root.key("metrics"),
        );
        let state = self.state(
            raw.state.as_ref().unwrap_or(&RawState::default()),
            &root.key("state"),
        );
        let daemon = self.daemon(
            raw.daemon.as_ref().unwrap_or(&RawDaemon::default()),
            &root.key("daemon"),
        );
        let coordination = self.coordination(
            raw.coordination
                .as_ref()
                .unwrap_or(&RawCoordination::default()),
            &root.key("coordination"),
        );
        let stores = self.stores(raw.stores.as_ref(), &root.key("stores"), &state);
        let defaults = raw.defaults.unwrap_or_default();
        let defaults_at = root.key("defaults");
        let concurrency = match defaults.concurrency {
            None => DEFAULT_CONCURRENCY,
            Some(0) => {
                self.err(
                    &defaults_at.key("concurrency"),
                    "must be at least 1 (keys rotated at once)",
                );
                DEFAULT_CONCURRENCY
            }
            Some(n) => n,
        };
        // Names as written, valid or not: a key naming a broken store gets the store's error,
        // not a second "no store named" one.
        let implicit_store = raw.stores.as_ref().is_none_or(BTreeMap::is_empty);
        let store_names: BTreeSet<&str> = match &raw.stores {
            Some(s) if !implicit_store => s.keys().map(String::as_str).collect(),
            _ => BTreeSet::from([IMPLICIT_STORE]),
        };
        let default_layer = self.layer(
            Inheritable::from(&defaults),
            &defaults_at,
            Level::Defaults,
            &store_names,
        );
        self.check_defaults(&default_layer);
        let scope = KeyScope {
            defaults: &default_layer,
            stores: &stores,
            store_names: &store_names,
            implicit_store,
        };
        let keys = self.keys(raw.key.as_deref().unwrap_or(&[]), &scope);
        let hygiene = raw
            .hygiene
            .as_ref()
            .map(|h| self.hygiene(h, &root.key("hygiene")));
        let notify = self.notify(raw.notify.as_deref().unwrap_or(&[]));
        Config {
            source: file.to_path_buf(),
            zenml,
            concurrency,
            metrics,
            state,
            daemon,
            coordination,
            stores,
            keys,
            hygiene,
            notify,
            insecure_endpoints: Vec::new(),
            file_warnings: Vec::new(),
        }
    }

    fn zenml(&mut self, raw: Option<&RawZenml>, at: &FieldPath) -> ZenmlSettings {
        let fallback = ZenmlSettings {
            url: String::new(),
            auth: ZenmlAuth::ApiKey(SecretSource::Env(String::new())),
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
        };
        let Some(raw) = raw else {
            self.err(
                at,
                "missing [zenml] table: the server `url` and its credentials are required",
            );
            return fallback;
        };
        let url_at = at.key("url");
        let url = if raw.url.is_none() {
            self.err(
                &url_at,
                "missing: the ZenML server URL, e.g. \"https://zenml.example.com\"",
            );
            None
        } else {
            self.endpoint(
                raw.url.as_deref(),
                &url_at,
                raw.allow_insecure_http.unwrap_or(false),
            )
        };
        let username = self.text(raw.username.as_deref(), &at.key("username"));
        let (password, password_given) = self.secret(
            at,
            "password",
            raw.password_env.as_deref(),
            raw.password_file.as_deref(),
            raw.password.is_some(),
        );
        let (api_key, api_key_given) = self.secret(
            at,
            "api_key",
            raw.api_key_env.as_deref(),
            raw.api_key_file.as_deref(),
            raw.api_key.is_some(),
        );
        let user_given = raw.username.is_some();
        let auth = if (user_given || password_given) && api_key_given {
            let where_ = first_set(&[
                ("api_key_env", raw.api_key_env.is_some()),
                ("api_key_file", raw.api_key_file.is_some()),
                ("api_key", raw.api_key.is_some()),
            ]);
            self.err_key(
                &at.key(where_),
                "set either `username` + `password_env`/`password_file` or `api_key_env`/`api_key_file`, not both",
            );
            None
        } else if user_given && !password_given {
            self.err_key(
                &at.key("username"),
                "`username` needs `password_env` or `password_file`",
            );
            None
        } else if password_given && !user_given {
            let where_ = first_set(&[
                ("password_env", raw.password_env.is_some()),
                ("password_file", raw.password_file.is_some()),
                ("password", raw.password.is_some()),
            ]);
            self.err_key(
                &at.key(where_),
                "a password needs `username` (an admin user)",
            );
            None
        } else if !password_given && !api_key_given {
            self.err(
                at,
                "missing credentials: set `username` with `password_env` or `password_file`, or `api_key_env` or `api_key_file`",
            );
            None
        } else if api_key_given {
            api_key.map(ZenmlAuth::ApiKey)
        } else {
            match (username, password) {
                (Some(username), Some(password)) => {
                    Some(ZenmlAuth::Password { username, password })
                }
                _ => None,
            }
        };
        let ca_file = self.local_path(raw.ca_file.as_deref(), &at.key("ca_file"));
        let timeout = self.duration_or(raw.timeout.as_deref(), &at.key("timeout"), DEFAULT_TIMEOUT);
        ZenmlSettings {
            url: url.unwrap_or(fallback.url),
            auth: auth.unwrap_or(fallback.auth),
            ca_file,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }

    fn metrics(&mut self, raw: &RawMetrics, at: &FieldPath) -> MetricsSettings {
        let listen_at = at.key("listen");
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = match listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    &listen_at,
                    format!(
                        "invalid listen address {listen:?}: write an IP address and port, e.g. \"127.0.0.1:9464\" or \"[::]:9464\""
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 9464))
            }
        };
        let textfile_at = at.key("textfile");
        let textfile = self.local_path(raw.textfile.as_deref(), &textfile_at);
        if let Some(t) = &textfile {
            if t.extension().is_none_or(|e| e != "prom") {
                self.err(
                    &textfile_at,
                    "must end in .prom: node_exporter's textfile collector reads only *.prom files",
                );
            }
        }
        let pushgateway = self.endpoint(
            raw.pushgateway.as_deref(),
            &at.key("pushgateway"),
            raw.allow_insecure_http.unwrap_or(false),
        );
        MetricsSettings {
            listen,
            textfile,
            pushgateway,
        }
    }

    fn state(&mut self, raw: &RawState, at: &FieldPath) -> StateSettings {
        let dir = match raw.dir.as_deref() {
            Some(d) => self.local_path(Some(d), &at.key("dir")),
            None => None,
        };
        let dir = dir.unwrap_or_else(|| {
            // systemd passes StateDirectory= as a colon-separated list; the first is ours.
            self.ctx
                .state_directory
                .as_deref()
                .and_then(|s| s.split(':').find(|p| !p.is_empty()))
                .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
        });
        StateSettings { dir }
    }

    fn coordination(&mut self, raw: &RawCoordination, at: &FieldPath) -> CoordinationSettings {
        let d = CoordinationSettings::default();
        let ttl_at = at.key("claim_ttl");
        let claim_ttl = self
            .duration_or(raw.claim_ttl.as_deref(), &ttl_at, d.claim_ttl)
            .unwrap_or(d.claim_ttl);
        let max_clock_skew = self
            .duration_or(
                raw.max_clock_skew.as_deref(),
                &at.key("max_clock_skew"),
                d.max_clock_skew,
            )
            .unwrap_or(d.max_clock_skew);
        // A holder renews at a third of the claim's life and stops at two thirds: a claim
        // shorter than a few seconds would expire between a rotation's steps.
        if claim_ttl < MIN_CLAIM_TTL {
            self.err(
                &ttl_at,
                format!(
                    "must be at least {}: a claim expires while its holder still works on the key",
                    fmt_duration(MIN_CLAIM_TTL)
                ),
            );
        }
        CoordinationSettings {
            claim_ttl,
            max_clock_skew,
        }
    }

    fn daemon(&mut self, raw: &RawDaemon, at: &FieldPath) -> DaemonSettings {
        let d = DaemonSettings::default();
        let safety_pass = self.duration_or(
            raw.safety_pass.as_deref(),
            &at.key("safety_pass"),
            d.safety_pass,
        );
        let shutdown_timeout = self.duration_or(
            raw.shutdown_timeout.as_deref(),
            &at.key("shutdown_timeout"),
            d.shutdown_timeout,
        );
        let backoff_initial = self.duration_or(
            raw.backoff_initial.as_deref(),
            &at.key("backoff_initial"),
            d.backoff_initial,
        );
        let backoff_max = self.duration_or(
            raw.backoff_max.as_deref(),
            &at.key("backoff_max"),
            d.backoff_max,
        );
        if let (Some(i), Some(m)) = (backoff_initial, backoff_max) {
            if i > m {
                let at = if raw.backoff_max.is_some() {
                    at.key("backoff_max")
                } else {
                    at.key("backoff_initial")
                };
                self.err(
                    &at,
                    format!(
                        "backoff_max ({}) must not be shorter than backoff_initial ({})",
                        fmt_duration(m),
                        fmt_duration(i)
                    ),
                );
            }
        }
        DaemonSettings {
            safety_pass: safety_pass.unwrap_or(d.safety_pass),
            shutdown_timeout: shutdown_timeout.unwrap_or(d.shutdown_timeout),
            backoff_initial: backoff_initial.unwrap_or(d.backoff_initial),
            backoff_max: backoff_max.unwrap_or(d.backoff_max),
        }
    }

    fn stores(
        &mut self,
        raw: Option<&BTreeMap<String, RawStore>>,
        at: &FieldPath,
        state: &StateSettings,
    ) -> BTreeMap<String, StoreSettings> {
        let mut stores = BTreeMap::new();
        let raw = match raw {
            Some(r) if !r.is_empty() => r,
            _ => {
                stores.insert(
                    IMPLICIT_STORE.to_owned(),
                    StoreSettings::File(FileSettings {
                        dir: state.dir.join("keys"),
                    }),
                );
                return stores;
            }
        };
        for (name, store) in raw {
            let store_at = at.key(name);
            if name.trim().is_empty() {
                self.err_key(&store_at, "a store name must not be empty");
                continue;
            }
            if let Some(s) = store_settings::validate(self, &store.0, &store_at) {
                stores.insert(name.clone(), s);
            }
        }
        stores
    }

    fn hygiene(&mut self, raw: &RawHygiene, at: &FieldPath) -> HygieneSettings {
        let deactivate_unused_after = self.positive_duration(
            raw.deactivate_unused_after.as_deref(),
            &at.key("deactivate_unused_after"),
        );
        let list_at = at.key("exclude_service_accounts");
        let mut exclude = Vec::new();
        for (i, sa) in raw.exclude_service_accounts.iter().flatten().enumerate() {
            if let Some(sa) = self.text(Some(sa), &list_at.index(i)) {
                exclude.push(sa);
            }
        }
        HygieneSettings {
            deactivate_unused_after,
            report_unmanaged: raw.report_unmanaged.unwrap_or(true),
            report_service_accounts_without_keys: raw
                .report_service_accounts_without_keys
                .unwrap_or(true),
            exclude_service_accounts: exclude,
        }
    }
}
