//! The policy file's JSON Schema (draft 7), for editors with a TOML language server and for CI.
//! It is generated, never written by hand: from the types the parser reads the file into
//! (`raw.rs`, whose doc comments are the descriptions) and from each store kind's declaration of
//! its `[stores.NAME]` table (`store/<kind>/settings.rs`), so a setting the parser learns is in
//! the schema by construction. The schema knows which keys exist and the type of each value;
//! the rules between values (every > retain, a key's store exists, ...) stay with `check`.
//! The repository ships its output as `schema/zenml-rotator.schema.json` (a test keeps it fresh).

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use super::raw::table::{Field, Shape};
use super::raw::{RawConfig, RawStore};
use crate::store::settings::store_kinds;

/// Where the repository keeps the schema, relative to its root.
pub const SHIPPED_PATH: &str = "schema/zenml-rotator.schema.json";

/// The schema as a JSON value.
pub fn policy_schema() -> Value {
    let generator = SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>().to_value();
    drop_null(&mut schema);
    if let Value::Object(root) = &mut schema {
        root.insert("title".into(), "zenml-rotator policy file".into());
        root.insert(
            "description".into(),
            concat!(
                "The policy file of zenml-rotator ",
                env!("CARGO_PKG_VERSION"),
                ". Validate a file fully with `zenml-rotator check -c FILE`."
            )
            .into(),
        );
    }
    schema
}

/// The schema as `zenml-rotator schema` prints it and the repository ships it.
pub fn policy_schema_json() -> String {
    // Serializing a `Value` cannot fail (its keys are strings).
    serde_json::to_string_pretty(&policy_schema()).unwrap_or_default()
}

/// TOML has no null: an optional setting is one that may be left out, never one that may be
/// null, so the `null` schemars adds for `Option` goes.
fn drop_null(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get("anyOf") {
                let rest: Vec<Value> = any
                    .iter()
                    .filter(|s| s.get("type").is_none_or(|t| t != "null"))
                    .cloned()
                    .collect();
                if let [Value::Object(only)] = rest.as_slice() {
                    map.remove("anyOf");
                    for (k, v) in only {
                        map.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

impl JsonSchema for RawStore {
    fn schema_name() -> Cow<'static, str> {
        "Store".into()
    }

    /// `kind`, the keys of every kind, and for each kind (`if kind = ...`) only its own keys.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let kinds: Vec<(&str, &[Field])> = store_kinds().collect();
        let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
        let mut properties = Map::new();
        properties.insert(
            "kind".into(),
            serde_json::json!({
                "description": "What the store is; decides which other keys the table takes.",
                "type": "string",
                "enum": names,
            }),
        );
        let mut per_kind = Vec::new();
        for (name, fields) in &kinds {
            let mut own = vec!["kind"];
            for field in fields.iter() {
                if let Some(schema) = value_schema(field) {
                    own.push(field.name);
                    properties.entry(field.name).or_insert(schema);
                }
            }
            per_kind.push(serde_json::json!({
                "if": { "properties": { "kind": { "const": name } }, "required": ["kind"] },
                "then": { "propertyNames": { "enum": own } },
            }));
        }
        json_schema!({
            "description": "A destination for keys: `kind` and the keys of that kind.",
            "type": "object",
            "required": ["kind"],
            "properties": properties,
            "additionalProperties": false,
            "allOf": per_kind,
        })
    }
}

/// The schema of a value the file may set; `None` for an inline secret, which the parser reads
/// only to refuse it with a pointer to `*_env`/`*_file` (so the schema flags it as unknown).
fn value_schema(field: &Field) -> Option<Value> {
    match field.shape {
        Shape::Text => Some(serde_json::json!({ "type": "string" })),
        Shape::Flag => Some(serde_json::json!({ "type": "boolean" })),
        Shape::Inline => None,
        Shape::Table(fields) => {
            let properties: Map<String, Value> = fields
                .iter()
                .filter_map(|f| Some((f.name.to_owned(), value_schema(f)?)))
                .collect();
            Some(serde_json::json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": false,
            }))
        }
    }
}

#[cfg(test)]
mod tests;
