//! Tables read from a declaration instead of a derived struct: each store kind declares the keys
//! of its `[stores.NAME]` table where it is implemented, and the file's table is read against the
//! keys of every kind at once. Unknown keys and values of the wrong type fail exactly as a derived
//! `#[serde(deny_unknown_fields)]` struct would, at the same place in the file.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// One key a table accepts, and how its value is read.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub shape: Shape,
}

#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A string.
    Text,
    /// `true` or `false`.
    Flag,
    /// A secret typed in where it never belongs: accepted only to be rejected with a pointed
    /// message, its value never kept, and never suggested for a misspelt key.
    Inline,
    /// An inline table with keys of its own.
    Table(&'static [Field]),
}

impl Field {
    pub const fn text(name: &'static str) -> Field {
        Field {
            name,
            shape: Shape::Text,
        }
    }

    pub const fn flag(name: &'static str) -> Field {
        Field {
            name,
            shape: Shape::Flag,
        }
    }

    pub const fn inline(name: &'static str) -> Field {
        Field {
            name,
            shape: Shape::Inline,
        }
    }

    pub const fn table(name: &'static str, fields: &'static [Field]) -> Field {
        Field {
            name,
            shape: Shape::Table(fields),
        }
    }
}

/// The declarations of several tables as one (a key declared twice is kept once, first place).
pub fn union<'f>(lists: impl IntoIterator<Item = &'f [Field]>) -> Vec<Field> {
    let mut all: Vec<Field> = Vec::new();
    for field in lists.into_iter().flatten() {
        if !all.iter().any(|f| f.name == field.name) {
            all.push(*field);
        }
    }
    all
}

/// A table as the file wrote it.
#[derive(Debug, Default)]
pub struct RawTable {
    entries: Vec<(&'static str, RawValue)>,
}

#[derive(Debug)]
pub enum RawValue {
    Text(String),
    Flag(bool),
    Inline,
    Table(RawTable),
}

impl RawTable {
    fn get(&self, name: &str) -> Option<&RawValue> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the file sets `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(RawValue::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(RawValue::Flag(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn table(&self, name: &str) -> Option<&RawTable> {
        match self.get(name) {
            Some(RawValue::Table(t)) => Some(t),
            _ => None,
        }
    }

    /// The keys the file sets, except inline secrets (each has its own rule).
    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries
            .iter()
            .filter(|(_, v)| !matches!(v, RawValue::Inline))
            .map(|(k, _)| *k)
    }
}

/// Reads a table whose keys are `fields`.
pub struct TableSeed<'f>(pub &'f [Field]);

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = RawTable;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawTable, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_> {
    type Value = RawTable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTable, A::Error> {
        let mut table = RawTable::default();
        while let Some(field) = map.next_key_seed(KeySeed(self.0))? {
            let value = match field.shape {
                Shape::Text => RawValue::Text(map.next_value()?),
                Shape::Flag => RawValue::Flag(map.next_value()?),
                Shape::Inline => {
                    map.next_value::<IgnoredAny>()?;
                    RawValue::Inline
                }
                Shape::Table(fields) => RawValue::Table(map.next_value_seed(TableSeed(fields))?),
            };
            table.entries.push((field.name, value));
        }
        Ok(table)
    }
}

/// A key, checked against the declaration while it is read, so an unknown key is reported at
/// the key itself.
struct KeySeed<'f>(&'f [Field]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        self.0
            .iter()
            .find(|f| f.name == key)
            .copied()
            .ok_or_else(|| E::custom(unknown_key(key, self.0)))
    }
}

/// serde's own wording for an unknown field, listing the keys a person may have meant.
fn unknown_key(key: &str, fields: &[Field]) -> String {
    let names: Vec<String> = fields
        .iter()
        .filter(|f| !matches!(f.shape, Shape::Inline))
        .map(|f| format!("`{}`", f.name))
        .collect();
    match names.as_slice() {
        [] => format!("unknown field `{key}`, there are no fields"),
        [one] => format!("unknown field `{key}`, expected {one}"),
        [a, b] => format!("unknown field `{key}`, expected {a} or {b}"),
        all => format!("unknown field `{key}`, expected one of {}", all.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: &[Field] = &[Field::text("method"), Field::inline("token")];
    const OUTER: &[Field] = &[
        Field::text("kind"),
        Field::text("address"),
        Field::table("auth", INNER),
        Field::inline("secret"),
        Field::flag("insecure"),
    ];

    fn read(src: &str) -> Result<RawTable, toml::de::Error> {
        TableSeed(OUTER).deserialize(toml::de::ValueDeserializer::parse(src)?)
    }

    #[test]
    fn values_are_read_as_declared_and_inline_secrets_are_dropped() {
        let t = read(
            r#"{ kind = "vault", auth = { method = "token", token = "x" }, secret = 5, insecure = true }"#,
        )
        .unwrap();
        assert_eq!(t.text("kind"), Some("vault"));
        assert_eq!(t.flag("insecure"), Some(true));
        assert_eq!(t.flag("kind"), None);
        assert!(!t.has("address"));
        assert_eq!(
            t.table("auth").and_then(|a| a.text("method")),
            Some("token")
        );
        assert!(t.table("auth").is_some_and(|a| a.has("token")));
        assert!(t.has("secret"));
        let mut keys: Vec<&str> = t.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["auth", "insecure", "kind"]);
    }

    #[test]
    fn unknown_keys_and_wrong_types_read_like_serde() {
        let e = read(r#"{ adress = "x" }"#).unwrap_err();
        assert_eq!(
            e.message(),
            "unknown field `adress`, expected one of `kind`, `address`, `auth`, `insecure`"
        );
        let e = read(r#"{ auth = { metod = "x" } }"#).unwrap_err();
        assert_eq!(e.message(), "unknown field `metod`, expected `method`");
        let e = read(r#"{ kind = 5 }"#).unwrap_err();
        assert_eq!(e.message(), "invalid type: integer `5`, expected a string");
        let e = read(r#"{ insecure = "yes" }"#).unwrap_err();
        assert_eq!(
            e.message(),
            "invalid type: string \"yes\", expected a boolean"
        );
        let e = read(r#"{ auth = "token" }"#).unwrap_err();
        assert_eq!(
            e.message(),
            "invalid type: string \"token\", expected a table"
        );
    }

    #[test]
    fn a_union_keeps_the_first_place_of_each_key() {
        let all = union([OUTER, INNER, &[Field::text("address")][..]]);
        let names: Vec<&str> = all.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "kind", "address", "auth", "secret", "insecure", "method", "token"
            ]
        );
    }
}
