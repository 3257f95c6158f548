//! Secret values: how the rotator holds them and how it names them without showing them.
//! Values live in `secrecy::SecretString` (redacted `Debug`, zeroized on drop); logs and errors
//! refer to a value only by its fingerprint, the first 8 hex digits of its SHA-256. Credential
//! files are refused when other users may read them, the way OpenSSH refuses a private key.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
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

/// What is wrong with a JSON document that may hold a secret, never what it holds: serde_json's
/// own message quotes a field of the wrong type (`invalid type: string "..."`), and a journal
/// entry or a claim holds a key value that a hand edit or a bug may have put in the wrong field.
pub fn json_failure(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax => "not JSON",
        Category::Eof => "cut short",
        Category::Data => "a field missing, unknown or of the wrong type",
        Category::Io => "unreadable",
    }
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
    #[error(
        "permissions {mode:04o} for {path} are too open: a credential file must not be accessible by other users; run chmod o-rwx {path}",
        path = .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
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
            SecretSource::File(path) => {
                let path = resolve_credential(path);
                read_secret_file(&path, !in_credentials_directory(&path))
            }
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
    resolve_credential_in(path, credentials_directory())
}

fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Whether `path` is one of systemd's credentials (`LoadCredential=`): readable by the unit's
/// user only, gone when it stops; systemd, not the rotator, decides its mode.
fn in_credentials_directory(path: &Path) -> bool {
    within(path, credentials_directory().as_deref())
}

fn within(path: &Path, dir: Option<&Path>) -> bool {
    let climbs = path
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    !climbs && dir.is_some_and(|dir| path.starts_with(dir))
}

/// A token file the platform writes and protects, such as the kubelet's projected
/// service-account token (its mode comes from the pod spec, on a tmpfs only the pod sees): read
/// like a credential file, without the permission rule, which its owner cannot act on.
pub fn read_platform_token(path: &Path) -> Result<SecretString, SecretSourceError> {
    read_secret_file(path, false)
}

fn resolve_credential_in(path: &Path, credentials_dir: Option<PathBuf>) -> PathBuf {
    let bare = path.components().count() == 1 && path.is_relative();
    match credentials_dir {
        Some(dir) if bare && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// What the permissions of a credential file allow.
#[derive(Debug, PartialEq, Eq)]
enum Exposure {
    Private,
    /// The rotator's own file that its group may read too: `chmod g-rwx` loses nothing.
    Group {
        gid: u32,
    },
    /// Other users have some access: refused.
    Others,
}

/// OpenSSH's rule for private keys, with PostgreSQL's exception for key files: a file owned by
/// someone else (root) that the rotator reads through its group (Kubernetes Secret volumes with
/// `fsGroup`, `root:rotator 0640` on a host) has no tighter mode left, so its group is no warning.
fn exposure(mode: u32, owner: u32, gid: u32, euid: u32) -> Exposure {
    if mode & 0o007 != 0 {
        Exposure::Others
    } else if mode & 0o070 != 0 && owner == euid {
        Exposure::Group { gid }
    } else {
        Exposure::Private
    }
}

/// Says once per process and file that a credential file's group may read it.
fn warn_group_readable(path: &Path, mode: u32, gid: u32) {
    crate::trust::warn_once(format!(
        "permissions {mode:04o} for {0} give group {gid} access to a credential file owned by the rotator's user; run chmod g-rwx {0}",
        path.display()
    ));
}

fn read_secret_file(
    path: &Path,
    check_permissions: bool,
) -> Result<SecretString, SecretSourceError> {
    let file_error = |source| SecretSourceError::File {
        path: path.to_path_buf(),
        source,
    };
    // The mode is read from the open file, so the file checked is the file read.
    let mut file = std::fs::File::open(path).map_err(file_error)?;
    let meta = file.metadata().map_err(file_error)?;
    if check_permissions {
        let mode = meta.mode() & 0o7777;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        match exposure(mode, meta.uid(), meta.gid(), euid) {
            Exposure::Others => {
                return Err(SecretSourceError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Exposure::Group { gid } => warn_group_readable(path, mode, gid),
            Exposure::Private => {}
        }
    }
    // Room for the whole file up front: no reallocation leaves a copy of the value behind.
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut raw = String::with_capacity(capacity);
    let read = file.read_to_string(&mut raw);
    let raw = SecretString::from(raw);
    read.map_err(file_error)?;
    let trimmed = raw.expose_secret().trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretSourceError::FileEmpty(path.to_path_buf()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a credential file gives when read as one.
    fn read_back(p: &Path) -> String {
        SecretSource::File(p.to_path_buf())
            .read()
            .unwrap()
            .expose_secret()
            .to_owned()
    }

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
    fn other_users_are_refused_and_the_group_is_a_warning_on_the_rotators_own_file() {
        let (me, root) = (1000, 0);
        assert_eq!(exposure(0o600, me, 1000, me), Exposure::Private);
        assert_eq!(exposure(0o400, me, 1000, me), Exposure::Private);
        assert_eq!(exposure(0o640, me, 1000, me), Exposure::Group { gid: 1000 });
        assert_eq!(exposure(0o620, me, 7, me), Exposure::Group { gid: 7 });
        // Root's file that the rotator reads through its group (Kubernetes fsGroup).
        assert_eq!(exposure(0o440, root, 1000, me), Exposure::Private);
        assert_eq!(exposure(0o640, root, 1000, me), Exposure::Private);
        for mode in [0o644, 0o604, 0o602, 0o601, 0o444, 0o666, 0o777] {
            assert_eq!(exposure(mode, me, 1000, me), Exposure::Others, "{mode:o}");
            assert_eq!(exposure(mode, root, 1000, me), Exposure::Others, "{mode:o}");
        }
    }

    #[test]
    fn a_credential_file_others_can_read_is_refused_unread() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        for mode in [0o644, 0o604, 0o666] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = SecretSource::File(p.clone()).read().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "permissions {mode:04o} for {0} are too open: a credential file must not be accessible by other users; run chmod o-rwx {0}",
                    p.display()
                )
            );
        }
        // The owner's (and its group's) file is read; a platform's token file is never judged.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_back(&p), "hunter2");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_platform_token(&p).unwrap().expose_secret(), "hunter2");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_back(&p), "hunter2");
    }

    /// A credential file is judged by its own mode, as OpenSSH and PostgreSQL judge a private key,
    /// not by its directory's (README, Security): Kubernetes makes every `emptyDir` 0777, and an
    /// agent that renders a token there (Vault Agent's injector) is an ordinary way to hand one over.
    #[test]
    fn a_credential_file_is_judged_by_its_own_mode_not_by_its_directory() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let top = tempfile::tempdir().unwrap();
        let open = top.path().join("open");
        std::fs::create_dir(&open).unwrap();
        let p = open.join("token");
        std::fs::write(&p, "hunter2\n").unwrap();
        chmod(&p, 0o600);
        chmod(&open, 0o777);
        assert_eq!(read_back(&p), "hunter2");
        chmod(&p, 0o604);
        assert!(matches!(
            SecretSource::File(p.clone()).read(),
            Err(SecretSourceError::TooOpen { mode: 0o604, .. })
        ));
        chmod(&open, 0o700);
    }

    #[test]
    fn systemd_credentials_are_the_files_inside_its_directory() {
        let dir = Some(Path::new("/run/credentials/x.service"));
        assert!(within(Path::new("/run/credentials/x.service/pw"), dir));
        assert!(!within(
            Path::new("/run/credentials/x.service/../y/pw"),
            dir
        ));
        assert!(!within(Path::new("/run/credentials/x.servicex/pw"), dir));
        assert!(!within(Path::new("/etc/pw"), dir));
        assert!(!within(Path::new("/run/credentials/x.service/pw"), None));
    }

    #[test]
    fn file_source_trims_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let v = SecretSource::File(p.clone()).read().unwrap();
        assert_eq!(v.expose_secret(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(p).read(),
            Err(SecretSourceError::FileEmpty(_))
        ));
    }
}
