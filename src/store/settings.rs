//! `[stores.NAME]` of any kind: which kinds there are, and the one place that hands a table to its
//! kind. What a kind's table holds, how it is checked and what `path` means for it live with the
//! kind (`vault/settings.rs`, `aws/settings.rs`, `file/settings.rs`). A new kind is one more
//! module and one more arm in each `match` below (and in `store::open`).

use super::aws::settings::{self as aws, AwsSettings};
use super::file::settings::{self as file, FileSettings};
use super::vault::settings::{self as vault, VaultSettings};
use crate::config::validate::toolkit::{Field, FieldPath, RawTable, Validator, union};

/// One `[stores.NAME]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    Vault(VaultSettings),
    Aws(AwsSettings),
    File(FileSettings),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Vault,
    Aws,
    File,
}

impl StoreKind {
    /// Every kind, in the order messages list them.
    const ALL: [StoreKind; 3] = [StoreKind::Vault, StoreKind::Aws, StoreKind::File];

    /// The `kind` of the table, also the store's name in logs and the `upstream` metric label.
    fn name(self) -> &'static str {
        match self {
            StoreKind::Vault => vault::KIND,
            StoreKind::Aws => aws::KIND,
            StoreKind::File => file::KIND,
        }
    }

    /// The keys the kind's table accepts besides `kind`.
    fn fields(self) -> &'static [Field] {
        match self {
            StoreKind::Vault => vault::FIELDS,
            StoreKind::Aws => aws::FIELDS,
            StoreKind::File => file::FIELDS,
        }
    }
}

impl StoreSettings {
    fn store_kind(&self) -> StoreKind {
        match self {
            StoreSettings::Vault(_) => StoreKind::Vault,
            StoreSettings::Aws(_) => StoreKind::Aws,
            StoreSettings::File(_) => StoreKind::File,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.store_kind().name()
    }

    /// A key's `path` as this store understands it; nothing may escape the store's namespace.
    /// The error is the message for the file.
    pub(crate) fn check_path(&self, path: &str) -> Result<(), &'static str> {
        match self {
            StoreSettings::Vault(_) => vault::check_path(path),
            StoreSettings::Aws(_) => aws::check_path(path),
            StoreSettings::File(_) => file::check_path(path),
        }
    }
}

/// Every key a `[stores.NAME]` table may hold: `kind` and the keys of every kind, so a key of
/// another kind is read (and then refused by name) rather than unknown.
pub(crate) fn store_table_fields() -> Vec<Field> {
    let kind = [Field::text("kind")];
    union(std::iter::once(&kind[..]).chain(StoreKind::ALL.map(StoreKind::fields)))
}

/// Each kind's name and the keys its table accepts besides `kind`, in the order messages list
/// them (the policy file's JSON Schema is built from these).
pub(crate) fn store_kinds() -> impl Iterator<Item = (&'static str, &'static [Field])> {
    StoreKind::ALL.into_iter().map(|k| (k.name(), k.fields()))
}

/// Checks one `[stores.NAME]` table and builds its settings; `None` when it has a problem
/// (reported).
pub(crate) fn validate(v: &mut Validator, raw: &RawTable, at: &FieldPath) -> Option<StoreSettings> {
    // Refused in a store of any kind: a pasted access key must never be taken for a setting.
    aws::reject_inline_credentials(v, raw, at);
    let kinds = StoreKind::ALL.map(|k| (k.name(), k));
    let kind = v.one_of(raw, at, "kind", "store kind", &kinds)?;
    let own = kind.fields();
    v.not_applicable(
        at,
        raw,
        |key| key == "kind" || own.iter().any(|f| f.name == key),
        &format!("a store of kind {:?}", kind.name()),
    );
    match kind {
        StoreKind::Vault => vault::validate(v, raw, at).map(StoreSettings::Vault),
        StoreKind::Aws => aws::validate(v, raw, at).map(StoreSettings::Aws),
        StoreKind::File => file::validate(v, raw, at).map(StoreSettings::File),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_under_its_own_name() {
        for (i, kind) in StoreKind::ALL.into_iter().enumerate() {
            let index = match kind {
                StoreKind::Vault => 0,
                StoreKind::Aws => 1,
                StoreKind::File => 2,
            };
            assert_eq!(index, i, "{kind:?}");
        }
        let names: Vec<&str> = StoreKind::ALL.map(StoreKind::name).to_vec();
        assert_eq!(names, ["vault", "aws-secrets-manager", "file"]);
    }

    #[test]
    fn a_key_two_kinds_accept_is_read_the_same_way_by_both() {
        for field in store_table_fields() {
            let shapes: Vec<String> = StoreKind::ALL
                .iter()
                .flat_map(|k| k.fields())
                .filter(|f| f.name == field.name)
                .map(|f| format!("{:?}", f.shape))
                .collect();
            assert!(
                shapes.windows(2).all(|w| w[0] == w[1]),
                "{}: {shapes:?}",
                field.name
            );
        }
    }
}
