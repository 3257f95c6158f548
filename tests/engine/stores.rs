//! `rotate NAME` into each store, taking over a value the rotator did not write: the stored value
//! logs in, the previous one still does inside the window, the store's record and layout are as
//! the README ("What is written to the store") says, ZenML's `last_rotated` moved. And invariant
//! 1: a second rotation inside the window is refused and changes nothing, unless `--force`.

use std::os::unix::fs::PermissionsExt;

use chrono::Duration;
use serde_json::json;
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::KeyCheck;

use crate::common::rig::Rig;
use crate::common::stores::{
    VaultAdmin, aws, aws_tags, aws_value, aws_versions, check, env_file, file_state, payload_of,
    zenml_state,
};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml, zenml_admin};
use crate::{key_now, parse_time, same_second};

/// What every store's record must say about a rotation; `record` is the flat map (Vault
/// custom_metadata, AWS tags without their prefix, the file store's `.meta.json`).
fn assert_record(
    record: &std::collections::BTreeMap<String, String>,
    sa: &str,
    key: &zenml_rotator::zenml::ApiKey,
    retain: Duration,
) {
    assert_eq!(record["managed_by"], "zenml-rotator", "{record:?}");
    assert_eq!(record["service_account"], sa, "{record:?}");
    assert_eq!(record["api_key"], "default", "{record:?}");
    assert_eq!(record["key_id"], key.id.to_string(), "{record:?}");
    let rotated_at = parse_time(&record["rotated_at"]);
    let last = key.last_rotated.expect("ZenML records the rotation");
    assert!(
        same_second(rotated_at, last),
        "{rotated_at} vs ZenML {last}"
    );
    assert_eq!(parse_time(&record["retain_until"]), rotated_at + retain);
    assert!(!record.contains_key("finalized_at"), "{record:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_into_the_file_store() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-file").await;
    let old = old.value.expose_secret().to_owned();
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    // The workload's env file as someone wrote it by hand before the rotator took over, in a
    // directory only its owner may enter (another one is refused).
    let file = rig.keys_dir().join("k.env");
    std::fs::create_dir_all(rig.keys_dir()).unwrap();
    std::fs::set_permissions(rig.keys_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let hand_written = format!(
        "ZENML_STORE_URL={}\nZENML_STORE_API_KEY={old}\n",
        zenml().url
    );
    std::fs::write(&file, &hand_written).unwrap();
    let before = key_now(&admin, sa.id).await;
    assert!(before.last_rotated.is_none());

    let ran = rig.expect(&["rotate", "k", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let env = env_file(&text);
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["ZENML_STORE_API_KEY", "ZENML_STORE_URL"]
    );
    assert_eq!(env["ZENML_STORE_URL"], zenml().url);
    let new = &env["ZENML_STORE_API_KEY"];
    assert!(new.starts_with("ZENKEY_") && *new != old);
    assert_eq!(check(&admin, new).await, KeyCheck::Accepted);
    assert_eq!(
        check(&admin, &old).await,
        KeyCheck::Accepted,
        "inside the window"
    );

    // The previous value stays beside it for consumers that fall back during the window.
    let previous = rig.keys_dir().join("k.env.previous");
    assert_eq!(mode(&previous), 0o600);
    assert_eq!(std::fs::read_to_string(&previous).unwrap(), hand_written);

    let after = key_now(&admin, sa.id).await;
    assert!(after.last_rotated.is_some(), "last_rotated moved");
    let meta: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(rig.keys_dir().join("k.env.meta.json")).unwrap())
            .unwrap();
    assert_record(&meta, &sa.name, &after, Duration::minutes(60));
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_into_vault_with_token_auth() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-vault").await;
    let old = old.value.expose_secret().to_owned();
    let root = VaultAdmin::shared();
    let prefix = unique("eng-vault");
    let path = format!("{prefix}/k");
    let token = root.rotator_token(&prefix).await;
    root.write(
        &path,
        json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": old }),
    )
    .await;
    let mut rig = Rig::new();
    rig.default_line("retain = \"30m\"")
        .vault_store("vault", &root.addr, &token)
        .key("k", &sa.name, "vault", &path, "");
    rig.write();

    let ran = rig.expect(&["rotate", "k", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());

    let meta = root.metadata(&path).await;
    assert_eq!(meta["current_version"], 2, "one new version on top: {meta}");
    let current = root.data(&path, None).await;
    let (_, new) = payload_of(&current.to_string());
    assert_ne!(new, old);
    assert_eq!(check(&admin, &new).await, KeyCheck::Accepted);
    // The taken-over value stays as the previous version, and still logs in inside the window.
    let (_, previous) = payload_of(&root.data(&path, Some(1)).await.to_string());
    assert_eq!(previous, old);
    assert_eq!(check(&admin, &old).await, KeyCheck::Accepted);

    let after = key_now(&admin, sa.id).await;
    let custom: std::collections::BTreeMap<String, String> =
        serde_json::from_value(meta["custom_metadata"].clone()).unwrap();
    assert_record(&custom, &sa.name, &after, Duration::minutes(30));
    assert!(rig.journal_files().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_into_aws_secrets_manager() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-aws").await;
    let old = old.value.expose_secret().to_owned();
    let client = aws().await;
    let name = unique("eng-aws");
    let first = client
        .create_secret()
        .name(&name)
        .secret_string(
            json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": old }).to_string(),
        )
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    let mut rig = Rig::new();
    rig.aws_store("aws", &aws_endpoint())
        .key("k", &sa.name, "aws", &name, "");
    rig.write();

    let ran = rig.expect(&["rotate", "k", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());

    let versions = aws_versions(&client, &name).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[&first], ["AWSPREVIOUS"], "{versions:?}");
    let (new_id, labels) = versions.iter().find(|(id, _)| **id != first).unwrap();
    assert_eq!(labels, &["AWSCURRENT"], "no AWSPENDING left: {versions:?}");
    let (_, new) = payload_of(&aws_value(&client, &name, "AWSCURRENT").await.unwrap());
    let (_, previous) = payload_of(&aws_value(&client, &name, "AWSPREVIOUS").await.unwrap());
    assert_eq!(previous, old);
    assert_ne!(new, old);
    assert_eq!(check(&admin, &new).await, KeyCheck::Accepted);
    assert_eq!(check(&admin, &old).await, KeyCheck::Accepted);

    let after = key_now(&admin, sa.id).await;
    let tags = aws_tags(&client, &name).await;
    let record = tags
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("zenml-rotator:")?.to_owned(), v.clone())))
        .collect();
    assert_record(&record, &sa.name, &after, Duration::minutes(60));
    // The new version's id is the rotation's ClientRequestToken: a UUID.
    assert!(uuid::Uuid::parse_str(new_id).is_ok(), "{new_id}");
    assert!(rig.journal_files().is_empty());
}

/// Invariant 1: inside the window a second `rotate` is refused and changes nothing; `--force`
/// rotates, and then the value from two rotations back stops working (why the rule exists).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_rotation_inside_the_window_is_refused_unless_forced() {
    let admin = zenml_admin();
    let (sa, original) = new_service_account_with_key(&admin, "eng-inv1").await;
    let original = original.value.expose_secret().to_owned();
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    rig.expect(&["once"], 0);
    let first = key_now(&admin, sa.id).await.last_rotated.unwrap();

    let zenml_before = zenml_state(&admin, sa.id).await;
    let store_before = file_state(&rig.keys_dir());
    let refused = rig.expect(&["rotate", "k"], 1);
    let out = format!("{}{}", refused.stdout, refused.stderr);
    assert!(out.contains("refused"), "{}", refused.describe());
    assert!(out.contains("--force"), "{}", refused.describe());
    assert!(out.contains("preflight"), "{}", refused.describe());
    assert_eq!(zenml_state(&admin, sa.id).await, zenml_before);
    assert_eq!(file_state(&rig.keys_dir()), store_before);
    assert!(rig.journal_files().is_empty());
    // A pass inside the window waits (and is healthy); it does not try.
    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("k"), ["wait"], "{}", pass.describe());
    assert_eq!(zenml_state(&admin, sa.id).await, zenml_before);

    let stored_once = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    let forced = rig.expect(&["rotate", "k", "--force", "--output", "json"], 0);
    assert_eq!(forced.results_of("k"), ["rotated"], "{}", forced.describe());
    let second = key_now(&admin, sa.id).await.last_rotated.unwrap();
    assert!(second > first);
    let stored_twice = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    assert_ne!(stored_twice, stored_once);
    assert_eq!(check(&admin, &stored_twice).await, KeyCheck::Accepted);
    assert_eq!(check(&admin, &stored_once).await, KeyCheck::Accepted);
    assert_eq!(check(&admin, &original).await, KeyCheck::Rejected);
}

/// `rotate` with a name no `[[key]]` has: exit 1, naming the policies there are.
#[test]
fn rotate_an_unknown_policy_names_the_known_ones() {
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("alpha", "sa-a", "local", "a.env", "")
        .key("beta", "sa-b", "local", "b.env", "");
    rig.write();
    let ran = rig.expect(&["rotate", "gamma"], 1);
    assert!(ran.stderr.contains("\"gamma\""), "{}", ran.describe());
    assert!(ran.stderr.contains("alpha, beta"), "{}", ran.describe());
}

/// A secret created without a value (as `aws_secretsmanager_secret` in Terraform does, leaving the
/// value to the rotator) holds nothing for workloads: the first pass fills it, it does not wait
/// for the key to come due.
#[tokio::test(flavor = "multi_thread")]
async fn an_aws_secret_without_a_value_is_filled_by_the_first_pass() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "eng-aws-empty").await;
    let client = aws().await;
    let name = unique("eng-aws-empty");
    client.create_secret().name(&name).send().await.unwrap();
    let mut rig = Rig::new();
    rig.aws_store("aws", &aws_endpoint())
        .key("k", &sa.name, "aws", &name, "");
    rig.write();

    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "rotate", "{}", plan.stdout);
    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("k"), ["rotated"], "{}", pass.describe());
    let (_, stored) = payload_of(&aws_value(&client, &name, "AWSCURRENT").await.unwrap());
    assert_eq!(check(&admin, &stored).await, KeyCheck::Accepted);
    let versions = aws_versions(&client, &name).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
}
