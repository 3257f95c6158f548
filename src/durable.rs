//! Files replaced so that a crash leaves the old content or the new, never a mix: a temp file in
//! the same directory, fsync, rename over the target, fsync the directory (the rename itself is
//! durable only then). Used by the file store, the journal and the metrics textfile. And the
//! directories that hold keys (the state directory, a file store's): private to their owner.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory that holds keys could not be made private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("{what} {}: {source}", dir.display())]
    Io {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permissions {mode:04o} for {what} {dir} are too open: a directory that holds keys must not be accessible by other users; run chmod o-rwx {dir}",
        dir = .dir.display()
    )]
    TooOpen {
        what: &'static str,
        dir: PathBuf,
        mode: u32,
    },
}

/// Creates `dir` (and missing parents) with mode 0700, or checks the one that exists: refused
/// when other users have any access to it, never repaired behind the back of whoever made it so
/// (a volume, systemd's `StateDirectoryMode=`, an operator). `what` names it in messages.
pub fn private_dir(dir: &Path, what: &'static str) -> Result<(), PrivateDirError> {
    let io = |source| PrivateDirError::Io {
        what,
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    check_private_dir(dir, what)
}

/// Refuses an existing `dir` that other users have any access to (a missing one is fine: it
/// will be created 0700).
pub fn check_private_dir(dir: &Path, what: &'static str) -> Result<(), PrivateDirError> {
    let mode = match std::fs::metadata(dir) {
        // Not a directory: nothing can be kept there (and nothing is, until it is needed).
        Ok(meta) if !meta.is_dir() => return Ok(()),
        Ok(meta) => meta.mode() & 0o7777,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PrivateDirError::Io {
                what,
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    if mode & 0o007 != 0 {
        return Err(PrivateDirError::TooOpen {
            what,
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Writes `bytes` to `target` atomically, the file ending up with `mode`. The temp file's name
/// starts with a dot and ends in neither the target's name nor its extension, so readers that
/// pick files by suffix (node-exporter reads `*.prom`) never see it.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_with(target, mode, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `write` streams into the temporary file. Unbuffered: a caller that
/// buffers does so itself (never for a secret, whose copy a buffer would leave in freed memory).
pub fn write_atomic_with(
    target: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_atomic_named(target, mode, write, |name| {
        format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple())
    })
}

/// How many names a write tries for its temporary file before it gives up.
const TEMP_TRIES: usize = 8;

/// The temporary file is created, never opened: `O_EXCL` (which also refuses a symlink in its
/// place), under a name nobody can guess (`temp_name`). So a file or symlink planted where the
/// temporary file will be, in a directory others may write to (a node-exporter textfile
/// directory), is neither written through nor handed the new content; the write takes another
/// name instead.
fn write_atomic_named(
    target: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    mut temp_name: impl FnMut(&str) -> String,
) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tries = 0;
    let (mut f, tmp) = loop {
        let tmp = dir.join(temp_name(&name));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (f, tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries + 1 < TEMP_TRIES => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        // A new file gets the mode less the umask: force it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        write(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        sync_dir(dir)
    })();
    drop(f);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How long a temporary file must have gone unmodified before a sweep takes it for a leftover:
/// a write renames its temporary file milliseconds after creating it, so one an hour old belongs
/// to a write that a crash (or a kill, or a power cut) stopped. Should its process still be alive
/// (stopped for an hour), its rename fails and that write reports the error.
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `name` is one `write_atomic` gives its temporary files: `.NAME.tmp-` then 32 hex
/// digits, or digits alone (the process id, as earlier builds named them).
fn is_temp_name(name: &str) -> bool {
    let Some((head, tail)) = name.rsplit_once(".tmp-") else {
        return false;
    };
    let random = tail.len() == 32 && tail.bytes().all(|b| b.is_ascii_hexdigit());
    let pid = !tail.is_empty() && tail.len() <= 10 && tail.bytes().all(|b| b.is_ascii_digit());
    head.len() > 1 && head.starts_with('.') && (random || pid)
}

/// Removes from `dir` the temporary files that interrupted writes left there: a leftover of the
/// journal or a file store may hold a key, and nothing else would ever remove it. Only regular
/// files of this process's user, named as `write_atomic` names them and unmodified for
/// `older_than`; a directory that does not exist holds none. Returns the names removed (they
/// carry no secret), for the caller to report.
pub fn sweep_stale_temporaries(
    dir: &Path,
    older_than: std::time::Duration,
) -> std::io::Result<Vec<String>> {
    sweep_temporaries(dir, None, older_than)
}

/// [`sweep_stale_temporaries`] for the temporary files of one target only (`.NAME.tmp-...` for
/// `target` named NAME): for a directory others write into too, as node-exporter's textfile
/// directory, where another program's files that look like ours are not ours to remove.
pub fn sweep_stale_temporaries_of(
    target: &Path,
    older_than: std::time::Duration,
) -> std::io::Result<Vec<String>> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    sweep_temporaries(dir, Some(&name.to_string_lossy()), older_than)
}

fn sweep_temporaries(
    dir: &Path,
    only: Option<&str>,
    older_than: std::time::Duration,
) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_temp_name(&name) {
            continue;
        }
        if let Some(only) = only {
            let ours = name
                .strip_prefix('.')
                .and_then(|n| n.strip_prefix(only))
                .is_some_and(|rest| rest.starts_with(".tmp-"));
            if !ours {
                continue;
            }
        }
        // The entry's own (a symlink not followed): a symlink is nobody's temporary file.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok());
        if !meta.file_type().is_file() || meta.uid() != euid || age.is_none_or(|a| a < older_than) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Removes what interrupted writes left in `dir` ([`sweep_stale_temporaries`]) and says
/// so; a directory that cannot be swept is reported and left, as the writes themselves will
/// report what is wrong with it.
pub fn remove_leftovers(dir: &Path) {
    let swept = sweep_stale_temporaries(dir, STALE_TEMP_AGE);
    report_leftovers(dir, swept, " (they may have held a key)");
}

/// [`remove_leftovers`] for the temporary files of `target` only
/// ([`sweep_stale_temporaries_of`]): beside a file in a directory others write into too.
pub fn remove_leftovers_of(target: &Path) {
    report_leftovers(
        target,
        sweep_stale_temporaries_of(target, STALE_TEMP_AGE),
        "",
    );
}

fn report_leftovers(place: &Path, swept: std::io::Result<Vec<String>>, held: &str) {
    match swept {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => tracing::warn!(
            place = %place.display(),
            files = ?removed,
            "removed temporary files that interrupted writes left{held}"
        ),
        Err(e) => tracing::warn!(
            place = %place.display(),
            error = %e,
            "cannot remove the temporary files that interrupted writes may have left"
        ),
    }
}

/// Makes the directory's entries (a rename, a removal) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_private_dir_is_created_0700_and_refused_when_others_may_enter() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir, "state directory").unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&tmp.path().join("a")), 0o700);
        for mode in [0o755, 0o701, 0o704, 0o2775, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = private_dir(&dir, "state directory").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "permissions {mode:04o} for state directory {0} are too open: a directory that holds keys must not be accessible by other users; run chmod o-rwx {0}",
                    dir.display()
                )
            );
            // Refused, not repaired: the mode is whoever made it so's decision.
            assert_eq!(mode_of(&dir), mode);
        }
        // The group is the owner's business (a volume's fsGroup, systemd's StateDirectoryMode).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
        private_dir(&dir, "state directory").unwrap();
        assert!(check_private_dir(&tmp.path().join("missing"), "x").is_ok());
    }

    #[test]
    fn atomic_writes_end_with_the_mode_asked_for_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("k.env");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&target, b"new", 0o600).unwrap();
        assert_eq!(mode_of(&target), 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    /// Someone who may write to the directory plants a symlink, and a file of their own, where
    /// the temporary file would go: neither is written through or becomes the target; the
    /// write takes the next name.
    #[test]
    fn a_file_or_symlink_planted_in_the_temporary_files_place_is_never_used() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("zenml_rotator.prom");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, "theirs").unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join(".planted-link")).unwrap();
        std::fs::write(tmp.path().join(".planted-file"), "theirs").unwrap();
        std::fs::set_permissions(
            tmp.path().join(".planted-file"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let mut names = [".planted-link", ".planted-file", ".fresh"].into_iter();
        write_atomic_named(
            &target,
            0o644,
            |w| w.write_all(b"new"),
            |_| names.next().unwrap().to_owned(),
        )
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"theirs");
        assert_eq!(
            std::fs::read(tmp.path().join(".planted-file")).unwrap(),
            b"theirs"
        );
        assert!(
            std::fs::symlink_metadata(tmp.path().join(".planted-link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!tmp.path().join(".fresh").exists(), "renamed to the target");
        // Names nobody can guess, different each time, and none left behind.
        write_atomic(&target, b"again", 0o644).unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// What a crash between a temporary file's creation and its rename leaves is removed once it
    /// is old enough; everything else in the directory stays.
    #[test]
    fn a_sweep_removes_old_temporary_files_of_ours_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = |name: &str, old: bool| match old {
            true => crate::testing::write_two_hours_ago(&dir.join(name), ""),
            false => std::fs::write(dir.join(name), "").unwrap(),
        };
        let random = "0123456789abcdef0123456789abcdef";
        file(&format!(".p.json.tmp-{random}"), true);
        file(".p.json.tmp-4242", true);
        file(&format!(".fresh.json.tmp-{random}"), false);
        file("p.json", true);
        file(&format!("p.json.tmp-{random}"), true);
        file(".p.json.tmp-not-ours-at-all", true);
        file(".p.json.tmp-", true);
        file(&format!(".tmp-{random}"), true);
        std::fs::create_dir(dir.join(format!(".d.tmp-{random}"))).unwrap();
        std::os::unix::fs::symlink(dir.join("p.json"), dir.join(".l.tmp-77")).unwrap();
        let mut removed = sweep_stale_temporaries(dir, STALE_TEMP_AGE).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [
                format!(".p.json.tmp-{random}"),
                ".p.json.tmp-4242".to_owned()
            ]
        );
        assert_eq!(
            names_in(dir),
            [
                format!(".d.tmp-{random}"),
                format!(".fresh.json.tmp-{random}"),
                ".l.tmp-77".to_owned(),
                ".p.json.tmp-".to_owned(),
                ".p.json.tmp-not-ours-at-all".to_owned(),
                format!(".tmp-{random}"),
                "p.json".to_owned(),
                format!("p.json.tmp-{random}"),
            ]
        );
        assert!(
            sweep_stale_temporaries(dir, STALE_TEMP_AGE)
                .unwrap()
                .is_empty()
        );
        assert!(
            sweep_stale_temporaries(&dir.join("missing"), STALE_TEMP_AGE)
                .unwrap()
                .is_empty()
        );
    }

    /// The names in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_sweep_for_one_target_leaves_other_files_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let random = "0123456789abcdef0123456789abcdef";
        for name in [
            format!(".zenml_rotator.prom.tmp-{random}"),
            format!(".other.prom.tmp-{random}"),
            format!(".zenml_rotator.prom.x.tmp-{random}"),
        ] {
            crate::testing::write_two_hours_ago(&dir.join(name), "");
        }
        std::fs::write(dir.join(".zenml_rotator.prom.tmp-4242"), "").unwrap();
        let target = dir.join("zenml_rotator.prom");
        assert_eq!(
            sweep_stale_temporaries_of(&target, STALE_TEMP_AGE).unwrap(),
            [format!(".zenml_rotator.prom.tmp-{random}")]
        );
        assert_eq!(
            names_in(dir),
            [
                format!(".other.prom.tmp-{random}"),
                ".zenml_rotator.prom.tmp-4242".to_owned(),
                format!(".zenml_rotator.prom.x.tmp-{random}"),
            ]
        );
    }

    /// Only so many tries: a directory where every name is taken is an error, not a loop.
    #[test]
    fn a_write_gives_up_when_every_name_is_taken() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".taken"), "").unwrap();
        let err = write_atomic_named(
            &tmp.path().join("t"),
            0o600,
            |w| w.write_all(b"x"),
            |_| ".taken".to_owned(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!tmp.path().join("t").exists());
    }
}
