use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::auth::Lease;
use super::kv::{ROTATION_TOKEN, ROTATION_VERSION, merge_custom_metadata, record_patch};
use super::*;
use crate::secret::SecretSource;

#[test]
fn paths() {
    assert!(valid_path("zenml/training"));
    assert!(valid_path("a"));
    for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\nb"] {
        assert!(!valid_path(bad), "{bad:?}");
    }
}

#[test]
fn merge_keeps_operator_keys_and_drops_stale_record_keys() {
    let mut existing = HashMap::new();
    existing.insert("owner".to_owned(), "team-a".to_owned());
    existing.insert("finalized_at".to_owned(), "2020-01-01T00:00:00Z".to_owned());
    existing.insert(ROTATION_TOKEN.to_owned(), "old".to_owned());
    let record = RotationRecord {
        policy: "p".into(),
        ..Default::default()
    };
    let m = merge_custom_metadata(existing.clone(), &record, Some(("tok", 7)));
    assert_eq!(m["owner"], "team-a");
    assert!(!m.contains_key("key_id"), "empty values are left out");
    assert_eq!(m["managed_by"], "zenml-rotator");
    assert!(!m.contains_key("finalized_at"));
    assert_eq!(m[ROTATION_TOKEN], "tok");
    assert_eq!(m[ROTATION_VERSION], "7");
    let m = merge_custom_metadata(existing, &record, None);
    assert_eq!(m[ROTATION_TOKEN], "old");
}

/// What Vault does with a JSON merge patch of `custom_metadata` (RFC 7396; strings only).
fn apply_patch(
    mut existing: HashMap<String, String>,
    patch: &serde_json::Map<String, Value>,
) -> HashMap<String, String> {
    for (k, v) in patch {
        match v {
            Value::Null => {
                existing.remove(k);
            }
            Value::String(s) => {
                existing.insert(k.clone(), s.clone());
            }
            other => panic!("{k}: not a string: {other}"),
        }
    }
    existing
}

#[test]
fn the_record_patch_does_what_the_merge_does() {
    let t = chrono::Utc::now();
    let full = RotationRecord {
        policy: "p".into(),
        service_account: "sa".into(),
        api_key: "default".into(),
        key_id: "k".into(),
        fingerprint: "sha256:ab".into(),
        rotated_at: Some(t),
        retain_until: Some(t),
        finalized_at: Some(t),
        retiring_key_id: Some("old".into()),
        retire_at: Some(t),
        rescue_for: Some("r".into()),
        rescue_until: Some(t),
        hooks: crate::store::PendingHooks {
            on_rotated: Some(1),
            on_finalized: Some(0),
        },
    };
    let sparse = RotationRecord {
        policy: "p".into(),
        ..Default::default()
    };
    let mut operator = HashMap::new();
    operator.insert("owner".to_owned(), "team-a".to_owned());
    let mut stale = merge_custom_metadata(operator.clone(), &full, Some(("old-tok", 3)));
    stale.insert("team".to_owned(), "ml".to_owned());
    for existing in [HashMap::new(), operator, stale] {
        for record in [&full, &sparse] {
            for written in [None, Some(("tok", 7))] {
                assert_eq!(
                    apply_patch(existing.clone(), &record_patch(record, written)),
                    merge_custom_metadata(existing.clone(), record, written),
                    "{existing:?} {written:?}"
                );
            }
        }
    }
}

#[test]
fn lease_is_due_at_two_thirds() {
    let l = Lease::new(30, true, Duration::from_secs(30));
    let now = SystemTime::now();
    assert!(!l.due(now));
    assert!(l.due(now + Duration::from_secs(21)));
    assert!(!l.expired(now + Duration::from_secs(21)));
    assert!(l.expired(now + Duration::from_secs(31)));
    let root = Lease::new(0, false, Duration::ZERO);
    assert!(!root.due(now + Duration::from_secs(1_000_000)));
}

/// Settings of a store at `address` with a token from `VAULT_TOKEN`.
fn token_settings(address: &str) -> VaultSettings {
    VaultSettings {
        address: address.into(),
        mount: "secret".into(),
        namespace: None,
        ca_file: None,
        auth: VaultAuth::Token(SecretSource::Env("VAULT_TOKEN".into())),
        timeout: Duration::from_secs(5),
        claims: "zenml-rotator/claims".into(),
    }
}

#[test]
fn debug_shows_where_credentials_come_from_not_what_they_are() {
    let settings = token_settings("http://127.0.0.1:8200");
    let store = VaultStore::new(&settings).unwrap();
    let shown = format!("{store:?}");
    assert!(shown.contains("token from env VAULT_TOKEN"), "{shown}");
}

#[test]
fn bad_settings_are_refused_without_a_panic() {
    let mut settings = token_settings("not a url");
    assert!(VaultStore::new(&settings).is_err());
    settings.address = "http://vault:8200/prefix".into();
    assert!(VaultStore::new(&settings).is_err());
    settings.address = "http://vault:8200/".into();
    settings.namespace = Some("team a".into());
    assert!(VaultStore::new(&settings).is_err());
    settings.namespace = Some("team-a/".into());
    assert!(VaultStore::new(&settings).is_ok());
}

#[test]
fn a_request_url_is_the_one_the_address_and_path_spell() {
    for address in [
        "http://127.0.0.1:8200",
        "https://vault.example.com/",
        "http://[::1]:8200",
    ] {
        let store = VaultStore::new(&token_settings(address)).unwrap();
        let base = address.trim_end_matches('/');
        for (api_path, version) in [
            ("sys/capabilities-self", None),
            ("secret/data/zenml/training", None),
            ("secret/data/zenml/training", Some(3)),
            ("secret/metadata/team a/ключ/50%", None),
            ("secret/data/zenml-rotator/claims/x.y_z", None),
        ] {
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let parsed = url::Url::parse(&format!("{base}/v1/{api_path}{query}")).unwrap();
            assert_eq!(
                store.url_of(api_path, version),
                parsed,
                "{address} {api_path}"
            );
        }
        // A `#` or `?` in a key path is part of the path: parsed from one string, `a#b` was the
        // path `a` (the rest a fragment, never sent) and `a?b` the path `a` with a query.
        let url = store.url_of("secret/data/a#b?c", Some(2));
        assert_eq!(url.path(), "/v1/secret/data/a%23b%3Fc");
        assert_eq!(url.query(), Some("version=2"));
        assert_eq!(url.fragment(), None);
    }
}
