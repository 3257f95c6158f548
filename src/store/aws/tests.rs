use std::collections::BTreeMap;

use super::calls::check_token;
use super::state::{SecretState, record_map, record_tags};
use super::*;

fn state(versions: &[(&str, &[&str])]) -> SecretState {
    SecretState {
        exists: true,
        versions: versions
            .iter()
            .map(|(id, labels)| {
                (
                    (*id).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                )
            })
            .collect(),
        ..SecretState::default()
    }
}

#[test]
fn pending_is_reported_only_when_it_is_not_current() {
    let s = state(&[("a", &["AWSCURRENT"]), ("b", &["AWSPENDING"])]);
    assert_eq!(s.pending().as_deref(), Some("b"));
    assert_eq!(s.snapshot().version.as_deref(), Some("a"));
    let s = state(&[
        ("a", &["AWSPREVIOUS"]),
        ("b", &["AWSCURRENT", "AWSPENDING"]),
    ]);
    assert_eq!(s.pending(), None);
    let s = state(&[("a", &["AWSCURRENT"]), ("b", &[])]);
    assert_eq!(s.pending(), None);
}

#[test]
fn record_tags_roundtrip_with_the_prefix() {
    let r = RotationRecord {
        policy: "training".into(),
        key_id: "k".into(),
        retiring_key_id: Some("old".into()),
        ..RotationRecord::default()
    };
    let tags = record_tags("t", "p", &r).unwrap();
    assert!(
        tags.iter()
            .all(|t| t.key().unwrap().starts_with(TAG_PREFIX))
    );
    let mut map: BTreeMap<String, String> = tags
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    map.insert("Team".into(), "ml".into());
    assert_eq!(
        map["zenml-rotator:managed_by"],
        crate::store::MANAGED_BY.to_owned()
    );
    assert_eq!(RotationRecord::from_map(&record_map(&map)), Some(r));
}

#[test]
fn an_overlong_tag_value_is_refused_before_any_write() {
    let r = RotationRecord {
        policy: "p".repeat(TAG_VALUE_MAX + 1),
        ..RotationRecord::default()
    };
    let err = record_tags("stage", "zenml/x", &r).unwrap_err();
    assert!(err.to_string().contains("`policy`"), "{err}");
}

#[test]
fn tokens_outside_aws_limits_are_refused() {
    assert!(check_token("stage", "p", &"a".repeat(31)).is_err());
    assert!(check_token("stage", "p", &"a".repeat(32)).is_ok());
    assert!(check_token("stage", "p", &"a".repeat(64)).is_ok());
    assert!(check_token("stage", "p", &"a".repeat(65)).is_err());
    assert!(check_token("stage", "p", &format!("{}!", "a".repeat(40))).is_err());
}

#[test]
fn deletion_and_foreign_rotation_refuse_writes() {
    let mut s = state(&[("a", &["AWSCURRENT"]), ("b", &["AWSPENDING"])]);
    assert!(s.refuse_unwritable("preflight", "p").is_ok());
    s.rotation_enabled = true;
    s.rotation_lambda = Some("arn:aws:lambda:eu-west-1:1:function:rot".into());
    let err = s.refuse_unwritable("preflight", "p").unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }));
    assert!(err.to_string().contains("version b"), "{err}");
    let mut s = state(&[("a", &["AWSCURRENT"])]);
    s.deleted = Some("2026-01-01T00:00:00Z".into());
    let err = s.refuse_unwritable("preflight", "p").unwrap_err();
    assert!(err.to_string().contains("restore-secret"), "{err}");
}
