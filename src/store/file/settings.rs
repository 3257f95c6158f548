//! `[stores.NAME]` of kind "file": the keys its table takes, how they are checked, what a key's
//! `path` means (a plain file name under `dir`), and the settings `FileStore` is built from.

use std::path::PathBuf;

use crate::config::validate::toolkit::{Field, FieldPath, RawTable, Validator};

pub(crate) const KIND: &str = "file";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    pub dir: PathBuf,
}

/// The keys of a file store's table.
pub(crate) const FIELDS: &[Field] = &[Field::text("dir")];

/// Checks a file store's table (its `kind` and the keys of other kinds are checked already).
pub(crate) fn validate(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<FileSettings> {
    if !raw.has("dir") {
        v.err(
            at,
            "missing `dir`: the directory the key files are written to",
        );
        return None;
    }
    let dir = v.local_path(raw.text("dir"), &at.key("dir"))?;
    Some(FileSettings { dir })
}

/// A key's `path`: one file directly in the store's `dir`.
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    let plain = !(path.contains('/')
        || path.contains('\\')
        || path == "."
        || path == ".."
        || path.contains('\0'));
    if plain {
        Ok(())
    } else {
        Err(
            "must be a plain file name under the store's dir: no `/`, no `..`, not an absolute path",
        )
    }
}
