//! The `file` store: one env file per key (`ZENML_STORE_URL=...`, `ZENML_STORE_API_KEY=...`) for
//! systemd `EnvironmentFile=` consumers. Every write is atomic (temp file, fsync, rename, fsync dir)
//! with mode 0600. Beside it: `<name>.previous` (the value still valid during the retain window)
//! and `<name>.meta.json` (the rotator's record, no secret).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    Claim, Coordination, ENV_API_KEY, ENV_URL, Payload, RotationRecord, SecretStore, Staging,
    StoreError, StoreErrorKind, StoreSnapshot, StoredClaim, ValueKept,
};
use crate::durable;
use crate::durable::sync_dir;
use crate::secret::{ExposeSecret, SecretString};

pub mod settings;
#[cfg(test)]
mod tests;

pub use settings::FileSettings;
use settings::KIND;

pub struct FileStore {
    dir: PathBuf,
    /// The directories this process has swept of what interrupted writes left (once each).
    swept: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl FileStore {
    pub fn new(settings: &FileSettings) -> FileStore {
        FileStore {
            dir: settings.dir.clone(),
            swept: Default::default(),
        }
    }

    /// Before the first write into a directory, removes the temporary files that a crash left
    /// there (each may hold a key; `durable::remove_leftovers`).
    fn sweep_once(&self, dir: &Path) {
        let first = match self.swept.lock() {
            Ok(mut swept) => swept.insert(dir.to_path_buf()),
            Err(poisoned) => poisoned.into_inner().insert(dir.to_path_buf()),
        };
        if first {
            durable::remove_leftovers(dir);
        }
    }

    /// The env file for `path`, refusing anything that would leave the store's directory.
    fn file(&self, path: &str, op: &'static str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(path);
        let safe = !path.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(other(
                op,
                path,
                "the path must be a relative file name without `..`".into(),
            ));
        }
        Ok(self.dir.join(rel))
    }
}

fn other(op: &'static str, path: &str, message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Other, KIND, op, path, message)
}

fn io_error(op: &'static str, path: &str, e: &std::io::Error) -> StoreError {
    let kind = match e.kind() {
        std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::StorageFull => {
            StoreErrorKind::NotWritable
        }
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, KIND, op, path, e.to_string())
}

/// How messages name the store's `dir`.
const DIR: &str = "file store directory";

fn dir_error(op: &'static str, path: &str, e: durable::PrivateDirError) -> StoreError {
    match e {
        durable::PrivateDirError::Io { source, .. } => io_error(op, path, &source),
        too_open @ durable::PrivateDirError::TooOpen { .. } => StoreError::new(
            StoreErrorKind::NotWritable,
            KIND,
            op,
            path,
            too_open.to_string(),
        ),
    }
}

fn sibling(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    file.with_file_name(name)
}

/// The version token of a file: a hash of its bytes (the value itself never leaves this module).
fn version_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn render_env(payload: &Payload) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# Written by zenml-rotator; do not edit: the next rotation replaces this file.\n\
         {ENV_URL}={}\n{ENV_API_KEY}={}\n",
        payload.zenml_url,
        payload.api_key.expose_secret()
    ))
}

/// Reads `ZENML_STORE_API_KEY` out of an env file (systemd syntax: comments, optional quotes).
fn parse_api_key(text: &str) -> Option<SecretString> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == ENV_API_KEY)
        .map(|(_, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            SecretString::from(v.to_owned())
        })
}

fn read_bytes(
    file: &Path,
    op: &'static str,
    path: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    match std::fs::read(file) {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(op, path, &e)),
    }
}

fn read_value(
    file: &Path,
    op: &'static str,
    path: &str,
) -> Result<Option<SecretString>, StoreError> {
    let Some(bytes) = read_bytes(file, op, path)? else {
        return Ok(None);
    };
    let text =
        std::str::from_utf8(&bytes).map_err(|_| other(op, path, "the file is not UTF-8".into()))?;
    Ok(parse_api_key(text))
}

/// Writes `bytes` to `target` atomically with mode 0600 (see `durable::write_atomic`).
pub(crate) fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    durable::write_atomic(target, bytes, 0o600)
}

/// access(2) with W_OK|X_OK: permissions and read-only mounts, without writing anything.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl FileStore {
    fn read_record(
        &self,
        file: &Path,
        op: &'static str,
        path: &str,
    ) -> Result<Option<RotationRecord>, StoreError> {
        let meta = sibling(file, ".meta.json");
        let Some(bytes) = read_bytes(&meta, op, path)? else {
            return Ok(None);
        };
        let map: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|e| {
            other(
                op,
                path,
                format!("{} is not valid JSON: {e}", meta.display()),
            )
        })?;
        Ok(RotationRecord::from_map(&map))
    }

    fn write_record(
        &self,
        file: &Path,
        record: &RotationRecord,
        op: &'static str,
        path: &str,
    ) -> Result<(), StoreError> {
        let meta = sibling(file, ".meta.json");
        let json = serde_json::to_vec_pretty(&record.to_map())
            .map_err(|e| other(op, path, format!("cannot encode the record: {e}")))?;
        write_atomic(&meta, &json).map_err(|e| io_error(op, path, &e))
    }

    fn snapshot(
        &self,
        file: &Path,
        op: &'static str,
        path: &str,
    ) -> Result<StoreSnapshot, StoreError> {
        let current = read_bytes(file, op, path)?;
        Ok(StoreSnapshot {
            exists: current.is_some(),
            version: current.as_deref().map(|b| version_of(b)),
            record: self.read_record(file, op, path)?,
            ..StoreSnapshot::default()
        })
    }

    /// The file's directory (the store's `dir`), created 0700 when missing; refused when other
    /// users may enter it.
    fn ensure_dir(&self, file: &Path, op: &'static str, path: &str) -> Result<(), StoreError> {
        let dir = file.parent().unwrap_or(&self.dir);
        durable::check_private_dir(&self.dir, DIR)
            .and_then(|()| durable::private_dir(dir, DIR))
            .map_err(|e| dir_error(op, path, e))
    }
}

fn timed<T>(op: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    crate::metrics::observe_upstream(KIND, op, start.elapsed());
    out
}

#[async_trait]
impl SecretStore for FileStore {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn inspect(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        let file = self.file(path, "inspect")?;
        timed("inspect", || self.snapshot(&file, "inspect", path))
    }

    async fn preflight(&self, path: &str) -> Result<StoreSnapshot, StoreError> {
        const OP: &str = "preflight";
        let file = self.file(path, OP)?;
        timed(OP, || {
            if let Ok(md) = std::fs::symlink_metadata(&file)
                && !md.file_type().is_file()
            {
                return Err(StoreError::NotWritable {
                    store: KIND,
                    op: OP,
                    path: path.to_owned(),
                    message: "exists but is not a regular file".into(),
                });
            }
            // Prove the directory takes a new file right now (permissions, read-only mount, full
            // disk). A directory that does not exist yet is created by the write; until then its
            // nearest existing ancestor must be writable. Pre-flight leaves nothing behind.
            durable::check_private_dir(&self.dir, DIR).map_err(|e| dir_error(OP, path, e))?;
            let dir = file.parent().unwrap_or(&self.dir);
            if dir.is_dir() {
                let probe = dir.join(format!(".zenml-rotator-preflight-{}", std::process::id()));
                write_atomic(&probe, b"").map_err(|e| io_error(OP, path, &e))?;
                let _ = std::fs::remove_file(&probe);
            } else {
                let ancestor = dir
                    .ancestors()
                    .find(|a| a.is_dir())
                    .unwrap_or(Path::new("/"));
                writable_dir(ancestor).map_err(|e| io_error(OP, path, &e))?;
            }
            self.snapshot(&file, OP, path)
        })
    }

    async fn read_current(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        let file = self.file(path, "read")?;
        timed("read", || read_value(&file, "read", path))
    }

    async fn read_previous(&self, path: &str) -> Result<Option<SecretString>, StoreError> {
        let file = self.file(path, "read_previous")?;
        timed("read_previous", || {
            read_value(&sibling(&file, ".previous"), "read_previous", path)
        })
    }

    async fn stage(
        &self,
        path: &str,
        payload: &Payload,
        record: &RotationRecord,
        expected: &StoreSnapshot,
        _token: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "write";
        let file = self.file(path, OP)?;
        timed(OP, || {
            self.ensure_dir(&file, OP, path)?;
            self.sweep_once(file.parent().unwrap_or(&self.dir));
            let current = read_bytes(&file, OP, path)?;
            let rendered = render_env(payload);
            if current.as_deref().map(|b| b.as_slice()) == Some(rendered.as_bytes()) {
                // A retry of a write that already landed.
                return self.write_record(&file, record, OP, path);
            }
            let version = current.as_deref().map(|b| version_of(b));
            if version != expected.version {
                return Err(StoreError::Conflict {
                    store: KIND,
                    op: OP,
                    path: path.to_owned(),
                    message: "the file's content changed since pre-flight".into(),
                });
            }
            // The old value first, so that at every instant either the new value is current or
            // the old one is still where consumers read it.
            if let Some(old) = &current {
                write_atomic(&sibling(&file, ".previous"), old)
                    .map_err(|e| io_error(OP, path, &e))?;
            }
            write_atomic(&file, rendered.as_bytes()).map_err(|e| io_error(OP, path, &e))?;
            self.write_record(&file, record, OP, path)
        })
    }

    async fn read_staged(
        &self,
        path: &str,
        _token: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        self.read_current(path).await
    }

    async fn promote(
        &self,
        _path: &str,
        _token: &str,
        _expected: &StoreSnapshot,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn discard_staged(&self, _path: &str, _token: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn set_record(&self, path: &str, record: &RotationRecord) -> Result<(), StoreError> {
        let file = self.file(path, "set_record")?;
        timed("set_record", || {
            self.write_record(&file, record, "set_record", path)
        })
    }

    async fn retire_previous(&self, path: &str) -> Result<(), StoreError> {
        const OP: &str = "retire_previous";
        let file = self.file(path, OP)?;
        timed(OP, || {
            let prev = sibling(&file, ".previous");
            match std::fs::remove_file(&prev) {
                Ok(()) => {
                    let dir = prev.parent().unwrap_or(&self.dir);
                    sync_dir(dir).map_err(|e| io_error(OP, path, &e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(OP, path, &e)),
            }
        })
    }

    /// One host only: a lock file beside each value (`.<path>.lock`), held while a rotator works
    /// on the key. Two hosts that keep the same ZenML key in their own file stores would both
    /// rotate it: the README says not to.
    fn coordination(&self) -> Coordination {
        Coordination::LockFile(self.dir.clone())
    }

    async fn read_claim(&self, _path: &str) -> Result<Option<StoredClaim>, StoreError> {
        Ok(None)
    }

    async fn write_claim(
        &self,
        path: &str,
        _claim: &Claim,
        _expected: Option<&str>,
    ) -> Result<String, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::NotWritable,
            KIND,
            "write_claim",
            path,
            "the file store keeps no claims: it locks the file beside the value",
        ))
    }

    fn keeps_value(&self) -> ValueKept {
        ValueKept::Journal
    }

    fn staging(&self) -> Staging {
        Staging::InPlace
    }
}
