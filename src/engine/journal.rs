//! The durable record of rotations in flight (invariant 3). Before the rotate call the rotator
//! writes its intent; the moment ZenML answers, the new value is written here (mode 0600, fsync)
//! before anything else happens; once the value is stored and read back, the entry is removed.
//! On the next start, entries are replayed into the store. One file per policy.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::decide::InFlight;
pub use super::decide::Phase;
use crate::durable::{PrivateDirError, check_private_dir, private_dir, sync_dir, write_atomic};
use crate::secret::{ExposeSecret, SecretString, fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal entry {file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal entry {file} is unreadable ({message}); it may hold a key that is in use: inspect it, then move it away"
    )]
    Corrupt { file: PathBuf, message: String },
    #[error(transparent)]
    StateDir(#[from] PrivateDirError),
}

/// How messages name `state.dir`.
const STATE_DIR: &str = "state directory";

/// One rotation in flight. `value` is the only secret and is present only in phase `Rotated`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Entry {
    pub policy: String,
    /// The rotation's id: also the AWS ClientRequestToken, so store retries are idempotent.
    pub token: String,
    pub phase: Phase,
    pub strategy: String,
    pub service_account: String,
    pub service_account_id: String,
    pub api_key: String,
    /// ZenML id of the key being rotated (strategy rotate) or of the new key (replace).
    pub key_id: String,
    pub store: String,
    pub path: String,
    pub started_at: DateTime<Utc>,
    /// ZenML's `last_rotated` of the key when the rotation started: if it moved and no value was
    /// journaled, ZenML rotated but the answer was lost.
    pub previous_last_rotated: Option<DateTime<Utc>>,
    pub retain_minutes: u32,
    /// ZenML's `last_rotated` right after this rotation (phase `Rotated`). A later rotation by
    /// anyone else moves the key's `last_rotated`; the replay records this one, so it shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_value",
        deserialize_with = "read_value"
    )]
    pub value: Option<SecretString>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("policy", &self.policy)
            .field("token", &self.token)
            .field("phase", &self.phase)
            .field("key_id", &self.key_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn expose_value<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

fn read_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.map(SecretString::from))
}

impl Entry {
    /// What `decide` sees of this entry: never the value.
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            holder: None,
            phase: self.phase,
            started_at: self.started_at,
            previous_last_rotated: self.previous_last_rotated,
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Records the new value and moves to phase `Rotated`.
    pub fn with_value(mut self, value: &SecretString) -> Entry {
        self.fingerprint = Some(fingerprint(value));
        self.value = Some(SecretString::from(value.expose_secret().to_owned()));
        self.phase = Phase::Rotated;
        self
    }
}

/// The journal directory `<state.dir>/journal` (0700) with one `<policy>.json` (0600) per entry.
pub struct Journal {
    state_dir: PathBuf,
    dir: PathBuf,
}

/// File names stay inside the directory whatever the policy name holds.
fn file_stem(policy: &str) -> String {
    let safe = !policy.is_empty()
        && policy.len() <= 100
        && policy
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !policy.starts_with('.');
    if safe {
        policy.to_owned()
    } else {
        format!("policy-{}", hex::encode(policy.as_bytes()))
    }
}

impl Journal {
    /// The journal under `<state_dir>/journal`, for reading: nothing is created until an entry
    /// is written, so rotators whose stores keep values in flight need no state directory.
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            state_dir: state_dir.to_path_buf(),
            dir: state_dir.join("journal"),
        }
    }

    /// As `new`, for a command that writes: a state directory that exists and that other users
    /// may enter is refused now, before anything happens (it is created 0700 on first use).
    /// Temporary files that a crash left in the journal (each may hold a key) are removed.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        check_private_dir(state_dir, STATE_DIR)?;
        let journal = Journal::new(state_dir);
        crate::durable::remove_leftovers(&journal.dir);
        Ok(journal)
    }

    /// Creates the directory (mode 0700, tightened if it existed) before the first write.
    fn ensure_dir(&self) -> Result<(), JournalError> {
        private_dir(&self.state_dir, STATE_DIR)?;
        let dir_error = |source| JournalError::Dir {
            dir: self.dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(dir_error)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(dir_error)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, policy: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(policy)))
    }

    /// Writes the entry durably (temp file 0600, fsync, rename, fsync dir) before returning.
    pub fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        self.ensure_dir()?;
        let file = self.path(&entry.policy);
        let json = Zeroizing::new(serde_json::to_vec_pretty(entry).map_err(|e| {
            JournalError::Corrupt {
                file: file.clone(),
                message: e.to_string(),
            }
        })?);
        write_atomic(&file, &json, 0o600).map_err(|source| JournalError::Io { file, source })
    }

    /// The entry of one policy, if any.
    pub fn get(&self, policy: &str) -> Result<Option<Entry>, JournalError> {
        read_entry(&self.path(policy))
    }

    /// Removes the entry of a finished rotation (and makes the removal durable).
    pub fn remove(&self, policy: &str) -> Result<(), JournalError> {
        let file = self.path(policy);
        match std::fs::remove_file(&file) {
            Ok(()) => sync_dir(&self.dir).map_err(|source| JournalError::Io { file, source }),
            Err(e) if absent(&e) => Ok(()),
            Err(source) => Err(JournalError::Io { file, source }),
        }
    }

    /// Every entry, by policy. A directory that does not exist holds none.
    pub fn entries(&self) -> Result<BTreeMap<String, Entry>, JournalError> {
        let mut out = BTreeMap::new();
        for file in self.entry_files()? {
            if let Some(entry) = read_entry(&file)? {
                out.insert(entry.policy.clone(), entry);
            }
        }
        Ok(out)
    }

    /// How many entries there are, from the file names alone: what the `journal_entries` gauge
    /// shows after every key, without reading (and holding) each entry's value. An entry that
    /// cannot be read counts too: it is in the journal, waiting for someone.
    pub fn count(&self) -> Result<usize, JournalError> {
        Ok(self.entry_files()?.len())
    }

    /// The entry files (`*.json`; a name starting with `.` is a write in progress).
    fn entry_files(&self) -> Result<Vec<PathBuf>, JournalError> {
        let dir_error = |source| JournalError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if absent(&e) => return Ok(Vec::new()),
            Err(source) => return Err(dir_error(source)),
        };
        let mut files = Vec::new();
        for item in rd {
            let item = item.map_err(dir_error)?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && name.ends_with(".json") {
                files.push(item.path());
            }
        }
        Ok(files)
    }
}

/// No journal there: the directory (or its parent) does not exist or is no directory at all, as
/// when the rotator runs without a state directory (every store keeps its values in flight).
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn read_entry(file: &Path) -> Result<Option<Entry>, JournalError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if absent(&e) => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                file: file.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| JournalError::Corrupt {
            file: file.to_path_buf(),
            message: corrupt_at(&e),
        })
}

/// What is wrong with an entry and where, never what it holds (`secret::json_failure`).
fn corrupt_at(e: &serde_json::Error) -> String {
    let what = crate::secret::json_failure(e);
    let what = match e.classify() {
        serde_json::error::Category::Data => format!("not a journal entry ({what})"),
        _ => what.to_owned(),
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(policy: &str) -> Entry {
        Entry {
            policy: policy.into(),
            token: "00000000-0000-4000-8000-000000000001".into(),
            phase: Phase::Intent,
            strategy: "rotate".into(),
            service_account: "sa".into(),
            service_account_id: "id".into(),
            api_key: "default".into(),
            key_id: "kid".into(),
            store: "file".into(),
            path: "p".into(),
            started_at: Utc::now(),
            previous_last_rotated: None,
            retain_minutes: 60,
            rotated_at: None,
            fingerprint: None,
            value: None,
        }
    }

    /// A crash between a journal write's temporary file and its rename leaves a copy of the
    /// entry (a key, in phase `Rotated`) that nothing reads: the next command that writes removes
    /// it once it is old, and leaves the entries and a write in progress alone.
    #[test]
    fn opening_the_journal_removes_what_a_crashed_write_left() {
        let dir = crate::testing::private_tempdir();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("training").with_value(&SecretString::from("ZENKEY_kept")))
            .unwrap();
        let journal = dir.path().join("journal");
        let left = journal.join(".training.json.tmp-00112233445566778899aabbccddeeff");
        let in_progress = journal.join(".serving.json.tmp-ffeeddccbbaa99887766554433221100");
        crate::testing::write_two_hours_ago(&left, "ZENKEY_left_by_a_crash");
        std::fs::write(&in_progress, "ZENKEY_being_written").unwrap();
        Journal::open(dir.path()).unwrap();
        assert!(!left.exists(), "an hour-old temporary file is a leftover");
        assert!(
            in_progress.exists(),
            "a fresh one may be a write in progress"
        );
        assert_eq!(j.entries().unwrap().len(), 1);
        // Reading commands (dry runs, `plan`) change nothing.
        crate::testing::write_two_hours_ago(&left, "x");
        let _ = Journal::new(dir.path());
        assert!(left.exists());
    }

    #[test]
    fn roundtrip_mode_and_removal() {
        let dir = crate::testing::private_tempdir();
        let j = Journal::open(dir.path()).unwrap();
        let e = entry("training").with_value(&SecretString::from("ZENKEY_secret"));
        j.record(&e).unwrap();
        let file = dir.path().join("journal/training.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("journal"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let back = j.get("training").unwrap().unwrap();
        assert_eq!(back.phase, Phase::Rotated);
        assert_eq!(back.value.unwrap().expose_secret(), "ZENKEY_secret");
        assert!(!format!("{e:?}").contains("ZENKEY_secret"));
        assert_eq!(j.entries().unwrap().len(), 1);
        assert_eq!(j.count().unwrap(), 1);
        j.remove("training").unwrap();
        assert_eq!(j.count().unwrap(), 0);
        assert!(j.get("training").unwrap().is_none());
        assert!(!file.exists());
        j.remove("training").unwrap();
    }

    #[test]
    fn odd_policy_names_stay_inside_the_directory() {
        let dir = crate::testing::private_tempdir();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("../../etc/x")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("policy-"), "{names:?}");
        assert_eq!(j.entries().unwrap().keys().next().unwrap(), "../../etc/x");
    }

    #[test]
    fn a_corrupt_entry_is_an_error_not_silently_dropped() {
        let dir = crate::testing::private_tempdir();
        let j = Journal::open(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("journal")).unwrap();
        std::fs::write(dir.path().join("journal/x.json"), b"{not json").unwrap();
        assert!(matches!(j.entries(), Err(JournalError::Corrupt { .. })));
        // A value in a field of the wrong type: named by place, never quoted.
        let mut doc = serde_json::to_value(entry("v")).unwrap();
        doc["retain_minutes"] = serde_json::Value::from("ZENKEY_not-to-be-quoted");
        std::fs::write(dir.path().join("journal/x.json"), doc.to_string()).unwrap();
        let err = j.entries().err().unwrap().to_string();
        assert!(!err.contains("ZENKEY_"), "{err}");
        assert!(
            err.contains("not a journal entry (a field missing, unknown or of the wrong type) at line 1 column"),
            "{err}"
        );
        std::fs::write(dir.path().join("journal/x.json"), b"{not json").unwrap();
        // Counted all the same (the gauge shows it), as a written entry is; a write in
        // progress (a dot file) and other files are not.
        j.record(&entry("k")).unwrap();
        std::fs::write(dir.path().join("journal/.k.json.tmp"), b"{").unwrap();
        std::fs::write(dir.path().join("journal/notes.txt"), b"").unwrap();
        assert_eq!(j.count().unwrap(), 2);
    }

    #[test]
    fn a_state_directory_others_may_enter_is_refused_and_a_new_one_is_private() {
        let tmp = crate::testing::private_tempdir();
        let state = tmp.path().join("state");
        // Nothing is created until an entry is written; then the state directory is 0700.
        let j = Journal::open(&state).unwrap();
        assert!(!state.exists());
        j.record(&entry("k")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("journal")), 0o700);
        assert_eq!(mode(&state.join("journal/k.json")), 0o600);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let expected = format!(
            "permissions 0755 for state directory {0} are too open: a directory that holds keys must not be accessible by other users; run chmod o-rwx {0}",
            state.display()
        );
        let err = Journal::open(&state).err().unwrap();
        assert_eq!(err.to_string(), expected);
        let err = j.record(&entry("k")).err().unwrap();
        assert_eq!(err.to_string(), expected);
    }
}
