//! Secret values: how the rotator holds them and how it names them without showing them.
//! Values live in `secrecy::SecretString` (redacted `Debug`, zeroized on drop); logs and errors
//! refer to a value only by its fingerprint, the first 8 hex digits of its SHA-256.

use std::path::{Path, PathBuf};

pub use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The short, non-reversible name of a secret value: the first 8 hex digits of its SHA-256.
pub fn fingerprint(value: &SecretString) -> String {
    let digest = Sha256::digest(value.expose_secret().as_bytes());
    hex::encode(&digest[..4])
}

/// Constant-time equality of two secrets, so a comparison does not leak a prefix by timing.
pub fn secrets_equal(a: &SecretString, b: &SecretString) -> bool {
    let (a, b) = (a.expose_secret().as_bytes(), b.expose_secret().as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a credential comes from: never inline in the policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The name of an environment variable.
    Env(String),
    /// A file whose contents (trailing newline trimmed) are the value.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    #[error("environment variable {0} is not set or is empty")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {0} is empty")]
    FileEmpty(PathBuf),
}

impl SecretSource {
    /// Reads the value now (credentials are read when used, so `check` needs none of them).
    pub fn read(&self) -> Result<SecretString, SecretSourceError> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Ok(_) | Err(std::env::VarError::NotPresent) => {
                    Err(SecretSourceError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretSourceError::EnvNotUnicode(name.clone()))
                }
            },
            SecretSource::File(path) => read_secret_file(&resolve_credential(path)),
        }
    }

    /// Where the value comes from, for messages: `env ZENML_ROTATOR_PASSWORD` or `file /run/...`.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(name) => format!("env {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
        }
    }
}

/// A bare file name (`zenml-password`) names a systemd credential when the service has any
/// (`LoadCredential=` sets `$CREDENTIALS_DIRECTORY`), so one policy serves every unit that loads
/// the same credential ids. Any other path is used as written.
pub fn resolve_credential(path: &Path) -> PathBuf {
    resolve_credential_in(
        path,
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
    )
}

fn resolve_credential_in(path: &Path, credentials_dir: Option<PathBuf>) -> PathBuf {
    let bare = path.components().count() == 1 && path.is_relative();
    match credentials_dir {
        Some(dir) if bare && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, SecretSourceError> {
    let raw = std::fs::read_to_string(path).map_err(|source| SecretSourceError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let raw = SecretString::from(raw);
    let trimmed = raw.expose_secret().trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretSourceError::FileEmpty(path.to_path_buf()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_first_8_hex_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(fingerprint(&SecretString::from("abc")), "ba7816bf");
    }

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let s = SecretString::from("ZENKEY_very-secret");
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[test]
    fn equality() {
        let a = SecretString::from("x1");
        assert!(secrets_equal(&a, &SecretString::from("x1")));
        assert!(!secrets_equal(&a, &SecretString::from("x2")));
        assert!(!secrets_equal(&a, &SecretString::from("x11")));
    }

    #[test]
    fn bare_names_are_systemd_credentials_when_the_unit_has_them() {
        let dir = Some(PathBuf::from("/run/credentials/x.service"));
        assert_eq!(
            resolve_credential_in(Path::new("zenml-password"), dir.clone()),
            Path::new("/run/credentials/x.service/zenml-password")
        );
        assert_eq!(
            resolve_credential_in(Path::new("/etc/pw"), dir.clone()),
            Path::new("/etc/pw")
        );
        assert_eq!(
            resolve_credential_in(Path::new("conf/pw"), dir),
            Path::new("conf/pw")
        );
        assert_eq!(
            resolve_credential_in(Path::new("zenml-password"), None),
            Path::new("zenml-password")
        );
    }

    #[test]
    fn file_source_trims_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        let v = SecretSource::File(p.clone()).read().unwrap();
        assert_eq!(v.expose_secret(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(p).read(),
            Err(SecretSourceError::FileEmpty(_))
        ));
    }
}
