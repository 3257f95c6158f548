use std::path::Path;

use serde_json::Value;

use super::*;

fn at<'v>(schema: &'v Value, path: &[&str]) -> &'v Value {
    path.iter().fold(schema, |v, key| &v[*key])
}

#[test]
fn the_shipped_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_PATH);
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == format!("{}\n", policy_schema_json()),
        "{SHIPPED_PATH} is stale (the policy file's types changed): regenerate it with\n    \
         cargo run --quiet -- schema > {SHIPPED_PATH}"
    );
}

#[test]
fn inline_secrets_are_unknown_keys_to_the_schema() {
    let schema = policy_schema();
    let zenml = at(&schema, &["properties", "zenml"]);
    assert_eq!(zenml["additionalProperties"], false);
    assert!(zenml["properties"].get("password").is_none());
    assert!(zenml["properties"].get("api_key").is_none());
    assert!(zenml["properties"].get("password_file").is_some());
    let store = at(&schema, &["properties", "stores", "additionalProperties"]);
    for secret in ["access_key_id", "secret_access_key"] {
        assert!(store["properties"].get(secret).is_none(), "{secret}");
    }
    let auth = at(store, &["properties", "auth", "properties"]);
    for secret in ["token", "role_id", "secret_id", "jwt"] {
        assert!(auth.get(secret).is_none(), "{secret}");
    }
    assert!(auth.get("token_env").is_some());
}

#[test]
fn each_store_kind_allows_exactly_its_own_keys() {
    let schema = policy_schema();
    let store = at(&schema, &["properties", "stores", "additionalProperties"]);
    let rules = store["allOf"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<(&str, &[Field])> = store_kinds().collect();
    assert_eq!(rules.len(), kinds.len());
    for (rule, (kind, fields)) in rules.iter().zip(kinds) {
        assert_eq!(at(rule, &["if", "properties", "kind", "const"]), kind);
        let mut expected: Vec<&str> = fields
            .iter()
            .filter(|f| !matches!(f.shape, Shape::Inline))
            .map(|f| f.name)
            .collect();
        expected.insert(0, "kind");
        assert_eq!(
            at(rule, &["then", "propertyNames", "enum"]),
            &serde_json::json!(expected),
            "{kind}"
        );
    }
    assert_eq!(
        at(store, &["properties", "kind", "enum"]),
        &serde_json::json!(["vault", "aws-secrets-manager", "file"])
    );
}

#[test]
fn optional_settings_are_optional_and_never_null() {
    let text = policy_schema_json();
    assert!(!text.contains("\"null\""), "TOML has no null");
    let schema = policy_schema();
    assert!(schema.get("required").is_none());
    let key = at(&schema, &["properties", "key", "items"]);
    assert_eq!(key["type"], "object");
    assert!(key.get("required").is_none());
    assert_eq!(
        at(key, &["properties", "strategy", "enum"]),
        &serde_json::json!(["rotate", "replace"])
    );
    assert_eq!(at(key, &["properties", "window", "type"]), "object");
    assert_eq!(
        at(
            &schema,
            &[
                "properties",
                "defaults",
                "properties",
                "concurrency",
                "type"
            ]
        ),
        "integer"
    );
}
