//! Files the rotator trusts to tell it where to send keys (the policy file, a CA bundle) or what
//! to run with them (a hook's program): whoever besides their owner may change one, or put another
//! file in its place, controls where the keys go. Both are refused, by mode, with one exception:
//! on a read-only mount nobody can write, whatever the bits say (a Kubernetes ConfigMap or Secret
//! volume: its directory 0777 or 1777, its files the volume's `defaultMode`, always read-only).
//! Write access through the file's group is said, not refused (`group_writable`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How other users could change a file the rotator trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changeable {
    /// They may write the file itself (`o+w`); its mode.
    File { mode: u32 },
    /// They may put another file in its place through this directory; the directory's mode.
    Directory { dir: PathBuf, mode: u32 },
}

/// How other users could change the file at `path`, if they can. `meta` is the file's metadata:
/// from the file opened where the caller reads it, so the file checked is the file read. The
/// directories that count are the file's own and every one above its real location, the one the
/// name given is in, and every one that holds a symbolic link met on the way (each hop of a
/// chain, a link to a directory along the path): `o+w` without the sticky bit (which, as on /tmp,
/// lets only a file's owner rename or remove it). Only a regular file has a place to take: a pipe
/// (`-c <(...)`) has no directory. Nothing on a read-only mount counts.
pub fn changeable_by_others(
    path: &Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<Option<Changeable>> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && !on_read_only_mount(path) {
        return Ok(Some(Changeable::File { mode }));
    }
    if !meta.is_file() {
        return Ok(None);
    }
    // The one the name given is in is among them: the real parent, or a link's holder.
    let (real, holders) = resolve(path)?;
    let holders = holders.iter().map(PathBuf::as_path);
    for dir in real.ancestors().skip(1).chain(holders) {
        let mode = std::fs::metadata(dir)?.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 && !on_read_only_mount(dir) {
            return Ok(Some(Changeable::Directory {
                dir: dir.to_path_buf(),
                mode,
            }));
        }
    }
    Ok(None)
}

/// One step of resolving a path, as the kernel takes them.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    use std::path::Component;
    path.components()
        .filter_map(|c| match c {
            Component::RootDir => Some(Step::Root),
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(name) => Some(Step::Name(name.to_owned())),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` one name at a time, as the kernel does (a link's target read in its place,
/// `..` taken from the real directory): its real location (what `canonicalize` gives), and the
/// real directories holding a symbolic link met on the way, whoever may write one of which could
/// point that link somewhere else.
fn resolve(path: &Path) -> std::io::Result<(PathBuf, Vec<PathBuf>)> {
    /// The kernel's own limit (`ELOOP` after 40 links).
    const MAX_LINKS: usize = 40;
    // Only a relative name starts where the process is (whose directory may be gone).
    let mut current = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir()?
    };
    let mut todo = std::collections::VecDeque::from(steps(path));
    let mut holders: Vec<PathBuf> = Vec::new();
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => current = PathBuf::from("/"),
            Step::Parent => {
                current.pop();
            }
            Step::Name(name) => {
                let next = current.join(&name);
                if !std::fs::symlink_metadata(&next)?.file_type().is_symlink() {
                    current = next;
                    continue;
                }
                if holders.len() == MAX_LINKS {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_LINKS} symbolic links on the way to {}",
                        path.display()
                    )));
                }
                holders.push(current.clone());
                for step in steps(&std::fs::read_link(&next)?).into_iter().rev() {
                    todo.push_front(step);
                }
            }
        }
    }
    Ok((current, holders))
}

/// The mode and group of a file its group may write (`g+w`), unless it is on a read-only mount.
/// Not refused, said: with user private groups (Debian's default, umask 002) a file's group is
/// often its owner alone, and whether anyone else is in it is the system's to say, not its mode.
/// The directories above are not looked at for their group: a volume's `fsGroup` makes every one
/// group-writable. `meta` is the file's metadata, as for `changeable_by_others`.
pub fn group_writable(path: &Path, meta: &std::fs::Metadata) -> Option<(u32, u32)> {
    let mode = meta.mode() & 0o7777;
    (mode & 0o020 != 0 && !on_read_only_mount(path)).then(|| (mode, meta.gid()))
}

/// Logs `warning` unless this process has logged the same one before: a file's mode said once is
/// enough, though a hook runs, a client is built and a credential is read many times over a
/// daemon's life. For files whose mode is allowed but must be said (here, and `secret.rs`).
pub fn warn_once(warning: String) {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut warned = match WARNED.lock() {
        Ok(w) => w,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !warned.contains(&warning) {
        tracing::warn!("{warning}");
        warned.insert(warning);
    }
}

/// Whether `path` is on a file system mounted read-only (by path: a directory, or a program that
/// need not be readable, is not opened).
fn on_read_only_mount(path: &Path) -> bool {
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

    fn check(path: &Path) -> std::io::Result<Option<Changeable>> {
        changeable_by_others(path, &std::fs::metadata(path)?)
    }

    fn through(dir: &Path, mode: u32) -> Option<Changeable> {
        Some(Changeable::Directory {
            dir: dir.to_path_buf(),
            mode,
        })
    }

    #[test]
    fn a_file_others_may_write_is_named_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "").unwrap();
        for (mode, flagged) in [(0o666, true), (0o602, true), (0o664, false), (0o644, false)] {
            set(&path, mode);
            let opened = std::fs::File::open(&path).unwrap().metadata().unwrap();
            let expected = flagged.then_some(Changeable::File { mode });
            assert_eq!(
                changeable_by_others(&path, &opened).unwrap(),
                expected,
                "{mode:o}"
            );
            assert_eq!(check(&path).unwrap(), expected, "{mode:o}");
        }
    }

    #[test]
    fn a_file_its_group_may_write_is_found_with_its_group() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "").unwrap();
        let gid = std::fs::metadata(&path).unwrap().gid();
        for (mode, flagged) in [(0o664, true), (0o620, true), (0o775, true), (0o644, false)] {
            set(&path, mode);
            let opened = std::fs::File::open(&path).unwrap().metadata().unwrap();
            assert_eq!(
                group_writable(&path, &opened),
                flagged.then_some((mode, gid)),
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
            assert_eq!(check(&path).unwrap(), through(&nested, mode));
        }
        for mode in [0o1777, 0o775, 0o755, 0o700] {
            set(&nested, mode);
            assert_eq!(check(&path).unwrap(), None, "{mode:o}");
        }
        // A directory further up counts as much as the file's own.
        set(&dir, 0o777);
        assert_eq!(check(&path).unwrap(), through(&dir, 0o777));
        set(&dir, 0o755);
        // A symlink in a directory others may write: they could point it elsewhere.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        set(&open, 0o777);
        let link = open.join("f");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(check(&link).unwrap(), through(&open, 0o777));
        // A pipe has no place to take: its directory does not count.
        let fifo = open.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(check(&fifo).unwrap(), None);
        set(&open, 0o755);
        assert_eq!(check(&link).unwrap(), None);
        assert!(check(&tmp.path().join("missing")).is_err());
    }

    /// Every link met on the way counts, not only the last name's: the second hop of a chain, and
    /// a link to a directory in the middle of the path, each held in a directory others may write.
    #[test]
    fn a_link_anywhere_on_the_way_held_where_others_may_write_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp = std::fs::canonicalize(tmp.path()).unwrap();
        let (safe, open, real) = (tmp.join("safe"), tmp.join("open"), tmp.join("real"));
        for d in [&safe, &open, &real] {
            std::fs::create_dir(d).unwrap();
        }
        let file = real.join("f");
        std::fs::write(&file, "").unwrap();
        set(&open, 0o777);
        // safe/first -> open/second -> real/f
        std::os::unix::fs::symlink(open.join("second"), safe.join("first")).unwrap();
        std::os::unix::fs::symlink(&file, open.join("second")).unwrap();
        assert_eq!(check(&safe.join("first")).unwrap(), through(&open, 0o777));
        // open/dir -> ../real, reached as safe/../open/dir/f: the link is a directory's.
        std::os::unix::fs::symlink("../real", open.join("dir")).unwrap();
        let via = safe.join("../open/dir/f");
        assert_eq!(check(&via).unwrap(), through(&open, 0o777));
        set(&open, 0o1777);
        assert_eq!(check(&safe.join("first")).unwrap(), None);
        assert_eq!(check(&via).unwrap(), None);
        // A loop is an error, as the kernel's.
        set(&open, 0o755);
        std::os::unix::fs::symlink(safe.join("loop"), safe.join("loop")).unwrap();
        assert!(resolve(&safe.join("loop")).is_err());
        // No link, no holder; a chain, the directory of each hop; the real file either way.
        assert_eq!(resolve(&file).unwrap(), (file.clone(), Vec::new()));
        assert_eq!(
            resolve(&safe.join("first")).unwrap(),
            (file.clone(), vec![safe.clone(), open.clone()])
        );
        assert_eq!(resolve(&via).unwrap().0, file);
    }
}
