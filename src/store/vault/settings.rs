//! `[stores.NAME]` of kind "vault": the keys its table takes, how they are checked, what a key's
//! `path` means (a KV path under the mount, without `data/`), and the settings `VaultStore` is
//! built from.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::validate::toolkit::{DEFAULT_TIMEOUT, Field, FieldPath, RawTable, Validator};
use crate::secret::SecretSource;

pub(crate) const KIND: &str = "vault";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSettings {
    pub address: String,
    /// A KV v2 mount (default `secret`).
    pub mount: String,
    pub namespace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Per-request timeout (default 30s).
    pub timeout: Duration,
    /// Where claims live, under the same mount: `<claims>/<path>` (default `zenml-rotator/claims`).
    pub claims: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    Token(SecretSource),
    AppRole {
        role_id: SecretSource,
        secret_id: SecretSource,
        /// Auth mount path (default `approle`).
        mount: String,
    },
    Kubernetes {
        role: String,
        /// Default: /var/run/secrets/kubernetes.io/serviceaccount/token
        jwt_file: PathBuf,
        /// Auth mount path (default `kubernetes`).
        mount: String,
    },
}

const DEFAULT_KUBERNETES_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The keys of a vault store's table.
pub(crate) const FIELDS: &[Field] = &[
    Field::text("address"),
    Field::text("mount"),
    Field::text("namespace"),
    Field::text("ca_file"),
    Field::text("timeout"),
    Field::flag("allow_insecure_http"),
    Field::table("auth", AUTH_FIELDS),
    Field::text("claims"),
];

/// The keys of `auth = { ... }`: `method` and those of every method, plus the inline secrets
/// that are refused with a pointer to `*_env`/`*_file`.
const AUTH_FIELDS: &[Field] = &[
    Field::text("method"),
    Field::text("token_env"),
    Field::text("token_file"),
    Field::text("role_id_env"),
    Field::text("role_id_file"),
    Field::text("secret_id_env"),
    Field::text("secret_id_file"),
    Field::text("role"),
    Field::text("jwt_file"),
    Field::text("mount"),
    Field::inline("token"),
    Field::inline("role_id"),
    Field::inline("secret_id"),
    Field::inline("jwt"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMethod {
    Token,
    AppRole,
    Kubernetes,
}

impl AuthMethod {
    const ALL: [AuthMethod; 3] = [
        AuthMethod::Token,
        AuthMethod::AppRole,
        AuthMethod::Kubernetes,
    ];

    fn name(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::AppRole => "approle",
            AuthMethod::Kubernetes => "kubernetes",
        }
    }

    /// The keys of `auth` the method takes besides `method` (inline secrets have their own rule).
    fn keys(self) -> &'static [&'static str] {
        match self {
            AuthMethod::Token => &["token_env", "token_file"],
            AuthMethod::AppRole => &[
                "role_id_env",
                "role_id_file",
                "secret_id_env",
                "secret_id_file",
                "mount",
            ],
            AuthMethod::Kubernetes => &["role", "jwt_file", "mount"],
        }
    }
}

/// Checks a vault store's table (its `kind` and the keys of other kinds are checked already).
pub(crate) fn validate(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<VaultSettings> {
    let address = if raw.has("address") {
        let allow_insecure_http = raw.flag("allow_insecure_http").unwrap_or(false);
        v.endpoint(raw.text("address"), &at.key("address"), allow_insecure_http)
    } else {
        v.err(
            at,
            "missing `address`: the Vault server URL, e.g. \"https://vault.example.com:8200\"",
        );
        None
    };
    let mount = mount_path(v, raw.text("mount"), &at.key("mount"), "secret");
    let namespace = match raw.text("namespace") {
        Some(ns) => mount_path(v, Some(ns), &at.key("namespace"), ""),
        None => None,
    };
    let ca_file = v.local_path(raw.text("ca_file"), &at.key("ca_file"));
    let timeout = v.duration_or(raw.text("timeout"), &at.key("timeout"), DEFAULT_TIMEOUT);
    let claims = claims_path(v, raw.text("claims"), &at.key("claims"));
    let auth = match raw.table("auth") {
        None => {
            v.err(
                at,
                "missing `auth`: e.g. auth = { method = \"token\", token_env = \"VAULT_TOKEN\" }",
            );
            None
        }
        Some(a) => validate_auth(v, a, &at.key("auth")),
    };
    Some(VaultSettings {
        address: address?,
        mount: mount?,
        namespace,
        ca_file,
        auth: auth?,
        timeout: timeout?,
        claims: claims?,
    })
}

/// Where claims on keys live (see `store::claim`): a KV path prefix under the mount.
pub(crate) const DEFAULT_CLAIMS: &str = "zenml-rotator/claims";

fn claims_path(v: &mut Validator, value: Option<&str>, at: &FieldPath) -> Option<String> {
    let prefix = value.unwrap_or(DEFAULT_CLAIMS).trim_matches('/');
    if let Err(why) = check_path(prefix) {
        v.err(at, why);
        return None;
    }
    Some(prefix.to_owned())
}

/// A Vault mount or namespace path: surrounding slashes dropped (`secret/` is common), not empty.
/// Auth mounts reach a URL through vaultrs, which parses the whole string: a `#` or `?` would
/// end the path there (the login would go to another mount), a `%` would be read as an escape
/// and `.`/`..` would be resolved away; no real mount is named so, so none of them is accepted.
fn mount_path(
    v: &mut Validator,
    value: Option<&str>,
    at: &FieldPath,
    default: &str,
) -> Option<String> {
    let value = value.unwrap_or(default);
    let trimmed = value.trim_matches('/');
    let odd = |c: char| c.is_whitespace() || matches!(c, '#' | '?' | '%');
    if !valid_path(trimmed) || trimmed.chars().any(odd) {
        v.err(
            at,
            "must be a mount path such as \"secret\" or \"team/kv\": no spaces, `#`, `?` or `%`, no empty, `.` or `..` segments",
        );
        return None;
    }
    Some(trimmed.to_owned())
}

fn validate_auth(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<VaultAuth> {
    let methods = AuthMethod::ALL.map(|m| (m.name(), m));
    let method = v.one_of(raw, at, "method", "auth method", &methods)?;
    let keys = method.keys();
    v.not_applicable(
        at,
        raw,
        |key| key == "method" || keys.contains(&key),
        &format!("auth method {:?}", method.name()),
    );
    match method {
        AuthMethod::Token => token(v, raw, at),
        AuthMethod::AppRole => approle(v, raw, at),
        AuthMethod::Kubernetes => kubernetes(v, raw, at),
    }
}

/// A credential the method needs, given as `NAME_env` or `NAME_file`.
fn credential(
    v: &mut Validator,
    raw: &RawTable,
    at: &FieldPath,
    name: &str,
) -> (Option<SecretSource>, bool) {
    v.secret(
        at,
        name,
        raw.text(&format!("{name}_env")),
        raw.text(&format!("{name}_file")),
        raw.has(name),
    )
}

fn token(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<VaultAuth> {
    let (token, given) = credential(v, raw, at, "token");
    if !given {
        v.err(at, "method \"token\" needs `token_env` or `token_file`");
    }
    token.map(VaultAuth::Token)
}

fn approle(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<VaultAuth> {
    let (role_id, role_given) = credential(v, raw, at, "role_id");
    let (secret_id, secret_given) = credential(v, raw, at, "secret_id");
    if !role_given {
        v.err(
            at,
            "method \"approle\" needs `role_id_env` or `role_id_file`",
        );
    }
    if !secret_given {
        v.err(
            at,
            "method \"approle\" needs `secret_id_env` or `secret_id_file`",
        );
    }
    let mount = mount_path(v, raw.text("mount"), &at.key("mount"), "approle");
    Some(VaultAuth::AppRole {
        role_id: role_id?,
        secret_id: secret_id?,
        mount: mount?,
    })
}

fn kubernetes(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<VaultAuth> {
    if raw.has("jwt") {
        v.err_key(
            &at.key("jwt"),
            "secrets are never inline: point `jwt_file` at the service-account token (the default is the pod's own)",
        );
    }
    let role = if raw.has("role") {
        v.text(raw.text("role"), &at.key("role"))
    } else {
        v.err(
            at,
            "method \"kubernetes\" needs `role` (the Vault role bound to this service account)",
        );
        None
    };
    let jwt_file = match raw.text("jwt_file") {
        Some(f) => v.local_path(Some(f), &at.key("jwt_file")),
        None => Some(PathBuf::from(DEFAULT_KUBERNETES_JWT)),
    };
    let mount = mount_path(v, raw.text("mount"), &at.key("mount"), "kubernetes");
    Some(VaultAuth::Kubernetes {
        role: role?,
        jwt_file: jwt_file?,
        mount: mount?,
    })
}

/// A KV path vaultrs can put in a URL unchanged and Vault reads as meant.
pub(crate) fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// A key's `path`: relative to the KV v2 mount, as `VaultStore` addresses it.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    if !valid_path(path) {
        return Err(
            "must be a relative KV path such as \"zenml/training\": no leading, trailing or double `/`, no `.` or `..` segments",
        );
    }
    if path.starts_with("data/") {
        return Err(
            "is relative to the KV v2 mount, without `data/`: write \"zenml/training\", not \"data/zenml/training\"",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_every_method_is_declared() {
        for method in AuthMethod::ALL {
            for key in method.keys() {
                assert!(
                    AUTH_FIELDS.iter().any(|f| f.name == *key),
                    "{}: {key}",
                    method.name()
                );
            }
        }
    }
}
