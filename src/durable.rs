//! Files replaced so that a crash leaves the old content or the new, never a mix: a temp file in
//! the same directory, fsync, rename over the target, fsync the directory (the rename itself is
//! durable only then). Used by the file store, the journal and the metrics textfile.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `target` atomically, the file ending up with `mode`. The temp file's name
/// starts with a dot and ends in neither the target's name nor its extension, so readers that
/// pick files by suffix (node-exporter reads `*.prom`) never see it.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // An existing temp file keeps its old mode through open(), and a new one gets the umask:
        // force it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, target)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes the directory's entries (a rename, a removal) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
