//! Files the rotator trusts to tell it where to send keys (the policy file, a CA bundle) or what
//! to run with them (a hook's program): whoever besides their owner may change one, or put another
//! file in its place, controls where the keys go. Both are refused, by mode, with one exception:
//! on a read-only mount nobody can write, whatever the bits say (a Kubernetes ConfigMap or Secret
//! volume: its directory 0777 or 1777, its files the volume's `defaultMode`, always read-only).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mode of an open file that other users may write (`o+w`, not on a read-only mount).
pub fn others_may_write(file: &std::fs::File) -> std::io::Result<Option<u32>> {
    let mode = file.metadata()?.mode() & 0o7777;
    Ok((mode & 0o002 != 0 && !on_read_only_mount(file)).then_some(mode))
}

/// [`others_may_write`] for a file that need not be readable (a program), by its path.
pub fn others_may_write_path(path: &Path) -> std::io::Result<Option<u32>> {
    let mode = std::fs::metadata(path)?.mode() & 0o7777;
    Ok((mode & 0o002 != 0 && !path_on_read_only_mount(path)).then_some(mode))
}

/// A directory through which other users may put another file in `path`'s place: its
/// directory or any directory above its real location, or the directory the name given is in (a
/// symlink's), that is `o+w` without the sticky bit (which, as on /tmp, lets only a file's owner
/// rename or remove it) and not on a read-only mount. With its mode.
pub fn replaceable_through(path: &Path) -> std::io::Result<Option<(PathBuf, u32)>> {
    let real = std::fs::canonicalize(path)?;
    let given = path.parent().filter(|p| !p.as_os_str().is_empty());
    for dir in real.ancestors().skip(1).chain(given) {
        let mode = std::fs::metadata(dir)?.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 && !path_on_read_only_mount(dir) {
            return Ok(Some((dir.to_path_buf(), mode)));
        }
    }
    Ok(None)
}

/// Whether the file is on a file system mounted read-only.
fn on_read_only_mount(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs fills the struct it is given from a descriptor we own, and the struct is
    // read only when it says it succeeded.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    // SAFETY: initialised by the successful call above.
    rc == 0 && unsafe { stat.assume_init() }.f_flag & libc::ST_RDONLY != 0
}

/// [`on_read_only_mount`] by path: a directory, or a file that need not be readable.
fn path_on_read_only_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs reads a NUL-terminated path and fills the struct it is given, which is
    // read only when it says it succeeded.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: initialised by the successful call above.
    rc == 0 && unsafe { stat.assume_init() }.f_flag & libc::ST_RDONLY != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_file_others_may_write_is_named_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "").unwrap();
        for (mode, flagged) in [(0o666, true), (0o602, true), (0o664, false), (0o644, false)] {
            set(&path, mode);
            let file = std::fs::File::open(&path).unwrap();
            assert_eq!(
                others_may_write(&file).unwrap(),
                flagged.then_some(mode),
                "{mode:o}"
            );
            assert_eq!(
                others_may_write_path(&path).unwrap(),
                flagged.then_some(mode),
                "{mode:o}"
            );
        }
    }

    /// Whoever may write to a directory can put a file of their own in place of one there; the
    /// sticky bit (as on /tmp) takes that from everyone but the file's owner.
    #[test]
    fn a_directory_others_may_write_without_the_sticky_bit_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let nested = dir.join("sub");
        std::fs::create_dir_all(&nested).unwrap();
        let path = nested.join("f");
        std::fs::write(&path, "").unwrap();
        for mode in [0o777, 0o733, 0o703] {
            set(&nested, mode);
            assert_eq!(
                replaceable_through(&path).unwrap(),
                Some((nested.clone(), mode))
            );
        }
        for mode in [0o1777, 0o775, 0o755, 0o700] {
            set(&nested, mode);
            assert_eq!(replaceable_through(&path).unwrap(), None, "{mode:o}");
        }
        // A directory further up counts as much as the file's own.
        set(&dir, 0o777);
        assert_eq!(
            replaceable_through(&path).unwrap(),
            Some((dir.clone(), 0o777))
        );
        set(&dir, 0o755);
        // A symlink in a directory others may write: they could point it elsewhere.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        set(&open, 0o777);
        let link = open.join("f");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(
            replaceable_through(&link).unwrap(),
            Some((open.clone(), 0o777))
        );
        set(&open, 0o755);
        assert_eq!(replaceable_through(&link).unwrap(), None);
        assert!(replaceable_through(&tmp.path().join("missing")).is_err());
    }
}
