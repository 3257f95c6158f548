//! From the file as written (`raw`) to a `Config`: defaults applied, every rule of DESIGN.md
//! checked, every problem reported with its place. Nothing here reads the credentials the file
//! names or touches the network: `check` must work on a machine that has neither.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use toml::de::DeTable;

use super::error::{ConfigError, Diagnostic, FieldPath, Locator, Point};
use super::raw::{
    RawConfig, RawDaemon, RawHygiene, RawMetrics, RawState, RawStore, RawVaultAuth, RawZenml,
};
use super::{
    AwsSettings, Config, DaemonSettings, FileSettings, HygieneSettings, MetricsSettings,
    StateSettings, StoreSettings, VaultAuth, VaultSettings, ZenmlAuth, ZenmlSettings,
};
use crate::cron::{CronSpec, parse_timezone};
use crate::secret::SecretSource;

mod policy;
use policy::{Inheritable, KeyScope, Level};

pub(super) const DEFAULT_EVERY: Duration = Duration::from_secs(30 * 86_400);
pub(super) const DEFAULT_RETAIN: Duration = Duration::from_secs(60 * 60);
pub(super) const DEFAULT_CONCURRENCY: usize = 4;
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/zenml-rotator";
pub(super) const DEFAULT_KUBERNETES_JWT: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The store a key uses when the file defines none (DESIGN: the file store is the embedded default).
pub(super) const IMPLICIT_STORE: &str = "file";
/// How far ahead a schedule's gaps are checked: every month length and both DST changes.
const GAP_HORIZON: Duration = Duration::from_secs(366 * 86_400);

/// What parsing may take from outside the file; fixed in tests.
pub(super) struct Context {
    pub now: DateTime<Utc>,
    /// `$STATE_DIRECTORY` (systemd `StateDirectory=`), the default `state.dir`.
    pub state_directory: Option<String>,
}

impl Context {
    pub fn from_environment() -> Context {
        Context {
            now: Utc::now(),
            state_directory: std::env::var("STATE_DIRECTORY").ok(),
        }
    }
}

pub(super) fn parse(source: &str, file: &Path, ctx: &Context) -> Result<Config, ConfigError> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(source);
    let locator = Locator::new(source, file.to_path_buf(), &doc);
    if !syntax_errors.is_empty() {
        let diagnostics = syntax_errors
            .iter()
            .map(|e| {
                let offset = e.span().map_or(0, |s| s.start);
                locator.at_offset(offset, e.message().to_owned())
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
    };
    let config = v.config(raw, file);
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

/// The raw structs accept inline secrets only to reject them with a clear message; serde's "expected
/// one of" list for an unknown field must not suggest them.
fn without_inline_secret_fields(message: &str, field: &str) -> String {
    let Some((head, list)) = message.split_once(", expected one of ") else {
        return message.to_owned();
    };
    let mut inline = vec![
        "password",
        "token",
        "role_id",
        "secret_id",
        "jwt",
        "access_key_id",
        "secret_access_key",
    ];
    // `api_key` is the key's name in a [[key]], an inline secret in [zenml].
    if field.starts_with("zenml.") {
        inline.push("api_key");
    }
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

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Validator<'a> {
    loc: &'a Locator<'a>,
    ctx: &'a Context,
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn err(&mut self, at: &FieldPath, message: impl Into<String>) {
        let d = self.loc.at(at, Point::Value, message.into());
        self.diagnostics.push(d);
    }

    fn err_key(&mut self, at: &FieldPath, message: impl Into<String>) {
        let d = self.loc.at(at, Point::Key, message.into());
        self.diagnostics.push(d);
    }

    // ---- single values ----

    /// A humantime duration ("30d", "60m", "90s"); None when absent or invalid (reported).
    fn duration(&mut self, value: Option<&str>, at: &FieldPath) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    at,
                    format!(
                        "invalid duration {value:?} ({e}); write e.g. \"30d\", \"60m\", \"90s\""
                    ),
                );
                None
            }
        }
    }

    fn positive_duration(&mut self, value: Option<&str>, at: &FieldPath) -> Option<Duration> {
        let d = self.duration(value, at)?;
        if d.is_zero() {
            self.err(at, "must be longer than zero");
            return None;
        }
        Some(d)
    }

    /// A duration with a default; the default when absent, None when invalid.
    fn duration_or(
        &mut self,
        value: Option<&str>,
        at: &FieldPath,
        default: Duration,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(_) => self.positive_duration(value, at),
        }
    }

    /// A name-like string: not empty, no surrounding whitespace, no control characters.
    fn text(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
        let value = value?;
        if value.trim().is_empty() {
            self.err(at, "must not be empty");
            None
        } else if value.trim() != value || value.chars().any(char::is_control) {
            self.err(
                at,
                "must not have surrounding whitespace or control characters",
            );
            None
        } else {
            Some(value.to_owned())
        }
    }

    fn required_text(
        &mut self,
        value: Option<&str>,
        at: &FieldPath,
        message: &str,
    ) -> Option<String> {
        if value.is_none() {
            self.err(at, message);
            return None;
        }
        self.text(value, at)
    }

    fn local_path(&mut self, value: Option<&str>, at: &FieldPath) -> Option<PathBuf> {
        let value = value?;
        if value.is_empty() || value.contains('\0') {
            self.err(at, "must be a non-empty path");
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// An http(s) URL, returned without trailing slashes. The value is never echoed: a URL may
    /// carry credentials, which is itself an error.
    fn url(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
        let value = value?;
        let parsed = match url::Url::parse(value) {
            Ok(u) => u,
            Err(e) => {
                self.err(
                    at,
                    format!("not a valid URL ({e}); write e.g. \"https://host:port\""),
                );
                return None;
            }
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            self.err(
                at,
                format!(
                    "URL scheme must be http or https, not {:?}",
                    parsed.scheme()
                ),
            );
            return None;
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            self.err(
                at,
                "credentials must not be part of the URL: secrets are never inline; use the *_env or *_file settings",
            );
            return None;
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            self.err(at, "URL has no host");
            return None;
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            self.err(at, "URL must not have a query (?...) or fragment (#...)");
            return None;
        }
        Some(value.trim_end_matches('/').to_owned())
    }

    fn timezone(&mut self, value: Option<&str>, at: &FieldPath) -> Option<Tz> {
        let value = value?;
        match parse_timezone(value) {
            Ok(tz) => Some(tz),
            Err(e) => {
                self.err(at, e.to_string());
                None
            }
        }
    }

    /// A cron expression checked on its own (time zone does not change whether it parses).
    fn cron_expr(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
        let value = value?;
        match CronSpec::parse(value, Tz::UTC) {
            Ok(spec) => Some(spec.expr),
            Err(e) => {
                self.err(at, e.to_string());
                None
            }
        }
    }

    /// A credential given as `NAME_env` or `NAME_file`, never inline. Returns None when absent
    /// (not reported: the caller knows whether it is required) or invalid (reported).
    /// `given` tells the caller whether the file tried to set it at all.
    fn secret(
        &mut self,
        table: &FieldPath,
        name: &str,
        env: Option<&str>,
        file: Option<&str>,
        inline: bool,
    ) -> (Option<SecretSource>, bool) {
        let env_at = table.key(&format!("{name}_env"));
        let file_at = table.key(&format!("{name}_file"));
        let mut ok = true;
        if inline {
            self.err_key(
                &table.key(name),
                format!(
                    "secrets are never inline: name an environment variable with `{name}_env` or a file with `{name}_file`"
                ),
            );
            ok = false;
        }
        if env.is_some() && file.is_some() {
            self.err_key(
                &file_at,
                format!("set either `{name}_env` or `{name}_file`, not both"),
            );
            ok = false;
        }
        let given = inline || env.is_some() || file.is_some();
        if let Some(env) = env {
            // The value is not echoed: a secret pasted here by mistake must not reach the output.
            if !is_env_name(env) {
                self.err(
                    &env_at,
                    "must be the name of an environment variable (letters, digits and _, not starting with a digit); the value itself is read from that variable",
                );
                ok = false;
            }
        }
        let file = match file {
            Some(f) => {
                let p = self.local_path(Some(f), &file_at);
                ok &= p.is_some();
                p
            }
            None => None,
        };
        if !ok {
            return (None, given);
        }
        let source = match (env, file) {
            (Some(env), None) => Some(SecretSource::Env(env.to_owned())),
            (None, Some(file)) => Some(SecretSource::File(file)),
            _ => None,
        };
        (source, given)
    }

    /// A field that does not belong to this store kind or auth method.
    fn not_applicable(&mut self, table: &FieldPath, present: &[(&str, bool)], owner: &str) {
        for (field, set) in present {
            if *set {
                self.err_key(
                    &table.key(field),
                    format!("`{field}` does not apply to {owner}"),
                );
            }
        }
    }

    // ---- sections ----

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
        Config {
            source: file.to_path_buf(),
            zenml,
            concurrency,
            metrics,
            state,
            daemon,
            stores,
            keys,
            hygiene,
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
            self.url(raw.url.as_deref(), &url_at)
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
        let pushgateway = self.url(raw.pushgateway.as_deref(), &at.key("pushgateway"));
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
            if let Some(s) = self.store(store, &store_at) {
                stores.insert(name.clone(), s);
            }
        }
        stores
    }

    fn store(&mut self, raw: &RawStore, at: &FieldPath) -> Option<StoreSettings> {
        if raw.access_key_id.is_some() || raw.secret_access_key.is_some() {
            let field = if raw.access_key_id.is_some() {
                "access_key_id"
            } else {
                "secret_access_key"
            };
            self.err_key(
                &at.key(field),
                "secrets are never inline: AWS credentials come from the SDK's chain (AWS_* environment, profile, web identity, instance role)",
            );
        }
        let kind_at = at.key("kind");
        let Some(kind) = raw.kind.as_deref() else {
            self.err(
                at,
                "missing `kind`: one of \"vault\", \"aws-secrets-manager\", \"file\"",
            );
            return None;
        };
        let vault_fields = [
            ("address", raw.address.is_some()),
            ("mount", raw.mount.is_some()),
            ("namespace", raw.namespace.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("auth", raw.auth.is_some()),
        ];
        let aws_fields = [
            ("region", raw.region.is_some()),
            ("endpoint_url", raw.endpoint_url.is_some()),
            ("kms_key_id", raw.kms_key_id.is_some()),
        ];
        let file_fields = [("dir", raw.dir.is_some())];
        match kind {
            "vault" => {
                let owner = "a store of kind \"vault\"";
                self.not_applicable(at, &aws_fields, owner);
                self.not_applicable(at, &file_fields, owner);
                self.vault(raw, at).map(StoreSettings::Vault)
            }
            "aws-secrets-manager" => {
                let owner = "a store of kind \"aws-secrets-manager\"";
                self.not_applicable(at, &vault_fields, owner);
                self.not_applicable(at, &file_fields, owner);
                let region = self.text(raw.region.as_deref(), &at.key("region"));
                let endpoint_url = self.url(raw.endpoint_url.as_deref(), &at.key("endpoint_url"));
                let kms_key_id = self.text(raw.kms_key_id.as_deref(), &at.key("kms_key_id"));
                let timeout =
                    self.duration_or(raw.timeout.as_deref(), &at.key("timeout"), DEFAULT_TIMEOUT)?;
                Some(StoreSettings::Aws(AwsSettings {
                    region,
                    endpoint_url,
                    kms_key_id,
                    timeout,
                }))
            }
            "file" => {
                let owner = "a store of kind \"file\"";
                self.not_applicable(at, &vault_fields, owner);
                self.not_applicable(at, &aws_fields, owner);
                self.not_applicable(at, &[("timeout", raw.timeout.is_some())], owner);
                let dir_at = at.key("dir");
                if raw.dir.is_none() {
                    self.err(
                        at,
                        "missing `dir`: the directory the key files are written to",
                    );
                    return None;
                }
                let dir = self.local_path(raw.dir.as_deref(), &dir_at)?;
                Some(StoreSettings::File(FileSettings { dir }))
            }
            other => {
                self.err(
                    &kind_at,
                    format!("unknown store kind {other:?}: use \"vault\", \"aws-secrets-manager\" or \"file\""),
                );
                None
            }
        }
    }

    fn vault(&mut self, raw: &RawStore, at: &FieldPath) -> Option<VaultSettings> {
        let address = if raw.address.is_none() {
            self.err(
                at,
                "missing `address`: the Vault server URL, e.g. \"https://vault.example.com:8200\"",
            );
            None
        } else {
            self.url(raw.address.as_deref(), &at.key("address"))
        };
        let mount = self.mount_path(raw.mount.as_deref(), &at.key("mount"), "secret");
        let namespace = match raw.namespace.as_deref() {
            Some(ns) => self.mount_path(Some(ns), &at.key("namespace"), ""),
            None => None,
        };
        let ca_file = self.local_path(raw.ca_file.as_deref(), &at.key("ca_file"));
        let timeout = self.duration_or(raw.timeout.as_deref(), &at.key("timeout"), DEFAULT_TIMEOUT);
        let auth = match &raw.auth {
            None => {
                self.err(
                    at,
                    "missing `auth`: e.g. auth = { method = \"token\", token_env = \"VAULT_TOKEN\" }",
                );
                None
            }
            Some(a) => self.vault_auth(a, &at.key("auth")),
        };
        Some(VaultSettings {
            address: address?,
            mount: mount?,
            namespace,
            ca_file,
            auth: auth?,
            timeout: timeout?,
        })
    }

    /// A Vault mount or namespace path: surrounding slashes dropped (`secret/` is common), not empty.
    fn mount_path(&mut self, value: Option<&str>, at: &FieldPath, default: &str) -> Option<String> {
        let value = value.unwrap_or(default);
        let trimmed = value.trim_matches('/');
        if trimmed.is_empty() || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                at,
                "must be a non-empty path without spaces, e.g. \"secret\"",
            );
            return None;
        }
        Some(trimmed.to_owned())
    }

    fn vault_auth(&mut self, raw: &RawVaultAuth, at: &FieldPath) -> Option<VaultAuth> {
        let Some(method) = raw.method.as_deref() else {
            self.err(
                at,
                "missing `method`: one of \"token\", \"approle\", \"kubernetes\"",
            );
            return None;
        };
        let token = [
            ("token_env", raw.token_env.is_some()),
            ("token_file", raw.token_file.is_some()),
        ];
        let approle = [
            ("role_id_env", raw.role_id_env.is_some()),
            ("role_id_file", raw.role_id_file.is_some()),
            ("secret_id_env", raw.secret_id_env.is_some()),
            ("secret_id_file", raw.secret_id_file.is_some()),
        ];
        let kubernetes = [
            ("role", raw.role.is_some()),
            ("jwt_file", raw.jwt_file.is_some()),
        ];
        let owner = format!("auth method {method:?}");
        match method {
            "token" => {
                self.not_applicable(at, &approle, &owner);
                self.not_applicable(at, &kubernetes, &owner);
                self.not_applicable(at, &[("mount", raw.mount.is_some())], &owner);
                let (token, given) = self.secret(
                    at,
                    "token",
                    raw.token_env.as_deref(),
                    raw.token_file.as_deref(),
                    raw.token.is_some(),
                );
                if !given {
                    self.err(at, "method \"token\" needs `token_env` or `token_file`");
                }
                token.map(VaultAuth::Token)
            }
            "approle" => {
                self.not_applicable(at, &token, &owner);
                self.not_applicable(at, &kubernetes, &owner);
                let (role_id, role_given) = self.secret(
                    at,
                    "role_id",
                    raw.role_id_env.as_deref(),
                    raw.role_id_file.as_deref(),
                    raw.role_id.is_some(),
                );
                let (secret_id, secret_given) = self.secret(
                    at,
                    "secret_id",
                    raw.secret_id_env.as_deref(),
                    raw.secret_id_file.as_deref(),
                    raw.secret_id.is_some(),
                );
                if !role_given {
                    self.err(
                        at,
                        "method \"approle\" needs `role_id_env` or `role_id_file`",
                    );
                }
                if !secret_given {
                    self.err(
                        at,
                        "method \"approle\" needs `secret_id_env` or `secret_id_file`",
                    );
                }
                let mount = self.mount_path(raw.mount.as_deref(), &at.key("mount"), "approle");
                Some(VaultAuth::AppRole {
                    role_id: role_id?,
                    secret_id: secret_id?,
                    mount: mount?,
                })
            }
            "kubernetes" => {
                self.not_applicable(at, &token, &owner);
                self.not_applicable(at, &approle, &owner);
                if raw.jwt.is_some() {
                    self.err_key(
                        &at.key("jwt"),
                        "secrets are never inline: point `jwt_file` at the service-account token (the default is the pod's own)",
                    );
                }
                let role = if raw.role.is_none() {
                    self.err(at, "method \"kubernetes\" needs `role` (the Vault role bound to this service account)");
                    None
                } else {
                    self.text(raw.role.as_deref(), &at.key("role"))
                };
                let jwt_file = match raw.jwt_file.as_deref() {
                    Some(f) => self.local_path(Some(f), &at.key("jwt_file")),
                    None => Some(PathBuf::from(DEFAULT_KUBERNETES_JWT)),
                };
                let mount = self.mount_path(raw.mount.as_deref(), &at.key("mount"), "kubernetes");
                Some(VaultAuth::Kubernetes {
                    role: role?,
                    jwt_file: jwt_file?,
                    mount: mount?,
                })
            }
            other => {
                self.err(
                    &at.key("method"),
                    format!("unknown auth method {other:?}: use \"token\", \"approle\" or \"kubernetes\""),
                );
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_quoted_values_and_internal_names() {
        assert_eq!(
            serde_message("invalid type: string \"hunter2\", expected a boolean"),
            "invalid type: string, expected a boolean"
        );
        assert_eq!(
            serde_message("invalid type: string \"a\\\"b\", expected struct RawStore"),
            "invalid type: string, expected a table"
        );
        assert_eq!(
            serde_message("invalid value: integer `-12345`, expected usize"),
            "invalid value: integer, expected a whole number (0 or more)"
        );
        assert_eq!(
            serde_message("invalid type: floating point `1.5`, expected a string"),
            "invalid type: floating point, expected a string"
        );
        assert_eq!(
            serde_message("unknown field `evry`, expected `every`"),
            "unknown key `evry`, expected `every`"
        );
    }

    #[test]
    fn unknown_field_lists_do_not_suggest_inline_secrets() {
        let m =
            "unknown field `pasword`, expected one of `url`, `password_env`, `password`, `api_key`";
        assert_eq!(
            without_inline_secret_fields(m, "zenml.pasword"),
            "unknown field `pasword`, expected one of `url`, `password_env`"
        );
        let m = "unknown field `evry`, expected one of `name`, `api_key`";
        assert_eq!(without_inline_secret_fields(m, "key[0].evry"), m);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(fmt_duration(Duration::from_secs(40 * 86_400)), "40d");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_secs(86_400 + 3_600)), "1d1h");
        assert_eq!(fmt_duration(Duration::from_millis(1_500)), "1s500ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("ZENML_ROTATOR_PASSWORD"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("ZENKEY_abc-def"));
        assert!(!is_env_name(""));
    }
}
