//! `revoke`: the leaked value and a token minted from it are refused at once, the stored new
//! value works, under both strategies; it asks before it acts.

use zenml_rotator::secret::{ExposeSecret, SecretString};
use zenml_rotator::zenml::KeyCheck;

use crate::common::rig::Rig;
use crate::common::{new_service_account_with_key, zenml_admin};
use crate::{assert_no_value, audit_lines, fingerprint, stored_value};

/// Rotates once so the store holds a value, mints a token from it, revokes; returns the rig,
/// the leaked value and its token.
async fn revoked(strategy: &str, prefix: &str) -> (Rig, String, String) {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, prefix).await;
    let mut rig = Rig::new();
    let audit = rig.path().join("audit.jsonl");
    rig.section(&format!(
        "[[notify]]\npath = {:?}\n",
        audit.display().to_string()
    ))
    .file_store("local")
    .key(
        "k",
        &sa.name,
        "local",
        "k.env",
        &format!("strategy = {strategy:?}"),
    );
    rig.write();
    rig.expect(&["once"], 0);
    let leaked = stored_value(&rig, "k.env");
    let leaked_secret = SecretString::from(leaked.clone());
    let token = admin.login_with_api_key(&leaked_secret).await.unwrap();
    assert_eq!(admin.check_token(&token).await.unwrap(), KeyCheck::Accepted);

    let ran = rig.expect(&["revoke", "k", "--yes"], 0);
    // Refused at once: no window, no wait.
    assert_eq!(
        admin.check_key(&leaked_secret).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(
        admin.check_token(&token).await.unwrap(),
        KeyCheck::Rejected,
        "a token minted from the leaked value still works"
    );
    let new = stored_value(&rig, "k.env");
    assert_ne!(new, leaked);
    assert_eq!(
        admin
            .check_key(&SecretString::from(new.clone()))
            .await
            .unwrap(),
        KeyCheck::Accepted
    );
    assert!(
        ran.stdout
            .contains("Cut off until they reload the new value:"),
        "{}",
        ran.describe()
    );
    assert!(
        ran.stdout.contains(&fingerprint(&leaked)),
        "{}",
        ran.describe()
    );
    let lines = audit_lines(&audit);
    let revoked = lines
        .iter()
        .find(|l| l["event"] == "revoked")
        .unwrap_or_else(|| panic!("no revoked event: {lines:#?}"));
    assert_eq!(revoked["policy"], "k");
    assert_eq!(revoked["fingerprint"], fingerprint(&new).as_str());
    assert!(
        revoked["detail"]
            .as_str()
            .unwrap()
            .contains(&fingerprint(&leaked))
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_no_value("the audit file", &text, &[&leaked, &new]);
    assert_no_value(
        "revoke's output",
        &format!("{}{}", ran.stdout, ran.stderr),
        &[&leaked, &new],
    );
    (rig, leaked, token.expose_secret().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_under_rotate_cuts_the_value_and_its_tokens_off_at_once() {
    let (rig, _, _) = revoked("rotate", "nt-revoke-rot").await;
    // The next pass confirms and finalizes: nothing is left in a window.
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["finalized"], "{}", ran.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_under_replace_deactivates_the_old_key_at_once() {
    let admin = zenml_admin();
    let (rig, leaked, _) = revoked("replace", "nt-revoke-rep").await;
    let leaked_id = zenml_rotator::zenml::key_id_from_value(&SecretString::from(leaked)).unwrap();
    let sa = std::fs::read_to_string(rig.config()).unwrap();
    let sa = sa
        .lines()
        .find_map(|l| l.strip_prefix("service_account = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let sa = admin.service_account_id(&sa).await.unwrap();
    let old = admin.get_api_key(sa, &leaked_id.to_string()).await.unwrap();
    assert!(!old.active, "the leaked key is deactivated");
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(
        ran.results_of("k"),
        ["wait"],
        "nothing left retiring: {}",
        ran.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_needs_yes_without_a_terminal_and_then_changes_nothing() {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, "nt-revoke-ask").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    let before = admin.get_api_key(sa.id, "default").await.unwrap();
    let ran = rig.expect(&["revoke", "k"], 1);
    assert!(ran.stderr.contains("pass --yes"), "{}", ran.describe());
    let after = admin.get_api_key(sa.id, "default").await.unwrap();
    assert_eq!(before.last_rotated, after.last_rotated);
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Accepted
    );
    rig.expect(&["revoke", "nope", "--yes"], 1);
}
