//! What every part of validation works with, the store kinds' own tables included: the
//! `Validator` that collects diagnostics and its checks of single values (durations, URLs, paths,
//! credentials given as `*_env`/`*_file`), and the declared tables the store kinds read.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::error::{Diagnostic, Locator, Point};
use crate::cron::{CronSpec, parse_timezone};
use crate::secret::SecretSource;

pub(crate) use crate::config::error::FieldPath;
pub(crate) use crate::config::raw::table::{Field, RawTable, union};

/// The timeout of one request (or one operation, retries included) when the file sets none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What parsing may take from outside the file; fixed in tests.
pub(crate) struct Context {
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

const INSECURE_REFUSED: &str = "cleartext http:// to a host that is not loopback: anyone on the network path could read and change what is sent there; use https:// (http:// only for 127.0.0.0/8, ::1 or localhost), or accept the risk with `allow_insecure_http = true` in this table";

const INSECURE_ALLOWED: &str = "cleartext http:// to a host that is not loopback, allowed by `allow_insecure_http`: anyone on the network path can read and change what is sent there";

/// Whether a valid http(s) URL travels in clear text beyond this machine: `http` to anything but
/// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or `localhost`.
pub(crate) fn cleartext_beyond_loopback(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return true;
    };
    if parsed.scheme() != "http" {
        return false;
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    !loopback
}

pub(super) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Collects every problem of a file; each check reports its own and returns `None` for a value
/// it cannot accept, so later checks that need the value are skipped instead of piling up.
pub(crate) struct Validator<'a> {
    pub(super) loc: &'a Locator<'a>,
    pub(super) ctx: &'a Context,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// Cleartext endpoints the file accepts with `allow_insecure_http`: not errors, but said at
    /// every load (`Config::insecure_endpoints`).
    pub(super) insecure_endpoints: Vec<Diagnostic>,
}

impl Validator<'_> {
    pub(crate) fn err(&mut self, at: &FieldPath, message: impl Into<String>) {
        let d = self.loc.at(at, Point::Value, message.into());
        self.diagnostics.push(d);
    }

    pub(crate) fn err_key(&mut self, at: &FieldPath, message: impl Into<String>) {
        let d = self.loc.at(at, Point::Key, message.into());
        self.diagnostics.push(d);
    }

    /// A humantime duration ("30d", "60m", "90s"); None when absent or invalid (reported).
    pub(crate) fn duration(&mut self, value: Option<&str>, at: &FieldPath) -> Option<Duration> {
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

    pub(crate) fn positive_duration(
        &mut self,
        value: Option<&str>,
        at: &FieldPath,
    ) -> Option<Duration> {
        let d = self.duration(value, at)?;
        if d.is_zero() {
            self.err(at, "must be longer than zero");
            return None;
        }
        Some(d)
    }

    /// A duration with a default; the default when absent, None when invalid.
    pub(crate) fn duration_or(
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
    pub(crate) fn text(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
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

    pub(crate) fn required_text(
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

    pub(crate) fn local_path(&mut self, value: Option<&str>, at: &FieldPath) -> Option<PathBuf> {
        let value = value?;
        if value.is_empty() || value.contains('\0') {
            self.err(at, "must be a non-empty path");
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// An http(s) URL, returned without trailing slashes. The value is never echoed: a URL may
    /// carry credentials, which is itself an error.
    pub(crate) fn url(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
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

    /// A URL the rotator sends credentials, keys or metrics to: `https`, or `http` to a loopback
    /// address only, unless its table sets `allow_insecure_http = true` (then recorded, to be
    /// said at every load). Every such field calls this with its table's flag.
    pub(crate) fn endpoint(
        &mut self,
        value: Option<&str>,
        at: &FieldPath,
        allow_insecure_http: bool,
    ) -> Option<String> {
        let url = self.url(value, at)?;
        if !cleartext_beyond_loopback(&url) {
            return Some(url);
        }
        if allow_insecure_http {
            let d = self.loc.at(at, Point::Value, INSECURE_ALLOWED.to_owned());
            self.insecure_endpoints.push(d);
            return Some(url);
        }
        self.err(at, INSECURE_REFUSED);
        None
    }

    pub(crate) fn timezone(&mut self, value: Option<&str>, at: &FieldPath) -> Option<Tz> {
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
    pub(crate) fn cron_expr(&mut self, value: Option<&str>, at: &FieldPath) -> Option<String> {
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
    pub(crate) fn secret(
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

    /// What `table` names under `key` among `choices`; a missing or unknown name is reported
    /// (`what` says what is chosen: "store kind", "auth method").
    pub(crate) fn one_of<T: Copy>(
        &mut self,
        table: &RawTable,
        at: &FieldPath,
        key: &str,
        what: &str,
        choices: &[(&'static str, T)],
    ) -> Option<T> {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let Some(name) = table.text(key) else {
            self.err(at, format!("missing `{key}`: one of {}", names.join(", ")));
            return None;
        };
        if let Some((_, choice)) = choices.iter().find(|(n, _)| *n == name) {
            return Some(*choice);
        }
        let (last, first) = names.split_last()?;
        self.err(
            &at.key(key),
            format!(
                "unknown {what} {name:?}: use {} or {last}",
                first.join(", ")
            ),
        );
        None
    }

    /// Every key the file sets in `table` that does not `belong` to it: a key of another store
    /// kind or auth method. `owner` names what the table is ("a store of kind \"file\"").
    pub(crate) fn not_applicable(
        &mut self,
        at: &FieldPath,
        table: &RawTable,
        belongs: impl Fn(&str) -> bool,
        owner: &str,
    ) {
        for key in table.keys().filter(|k| !belongs(k)) {
            self.err_key(&at.key(key), format!("`{key}` does not apply to {owner}"));
        }
    }
}
