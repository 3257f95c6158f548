//! Strategy `replace` end to end: the old key and every token minted from it die with the
//! deactivation; `--force` inside the window; an interrupted run's orphan; the guard that never
//! deactivates the stored key; a value stored without its record; `delete_after`.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn replace_end_to_end_kills_the_old_key_and_every_token_from_it() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-e2e").await;
    let path = unique("zr-replace");
    let policy = "e2e";
    // 45 s: long enough for the checks below on a loaded 2-core machine, short enough to wait out.
    let rig = Rig::new(
        Kind::Vault,
        &replace_key(policy, &sa.name, &path, "retain = \"45s\""),
    );
    // A workload logged in with the seed key before any replacement.
    let token_before = admin.login_with_api_key(&seed.value).await.unwrap();

    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("rotated"), "{out}");
    let store = rig.store().await;
    let new_value = stored(&store, &path).await;
    let new_id = key_id_from_value(&new_value).unwrap();
    assert_ne!(new_id, seed.key.id);
    let new_key = admin.get_api_key(sa.id, &new_id.to_string()).await.unwrap();
    assert!(
        zenml_rotator::naming::is_generation("default", &new_key.name),
        "{}",
        new_key.name
    );
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.key_id, new_id.to_string());
    assert_eq!(record.retiring_key_id, Some(seed.key.id.to_string()));
    let retire_at = record.retire_at.unwrap();
    assert!(retire_at > Utc::now(), "{retire_at}");
    assert_eq!(rig.metric("zenml_rotator_pending_deactivations"), Some(1.0));
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_deactivation_due_timestamp_seconds{{policy=\"{policy}\"}}"
        )),
        Some(retire_at.timestamp() as f64)
    );

    // Inside the window: both keys work, and a login with the old one mints a token that, under
    // in-place rotation, would outlive the window.
    let inside = |what: &str| {
        assert!(
            Utc::now() < retire_at,
            "the window ended before {what}: the machine is too loaded for this test's timing"
        )
    };
    assert_eq!(check(&admin, &seed.value).await, KeyCheck::Accepted);
    let token_inside = admin.login_with_api_key(&seed.value).await.unwrap();
    assert_eq!(check(&admin, &new_value).await, KeyCheck::Accepted);
    inside("the old key was checked");

    // Invariant 1: no second replacement inside the window without --force.
    let (out, _) = rig.run(&["rotate", policy], 1);
    assert!(out.contains("refused"), "{out}");
    let plan = rig.json(&["plan"], 0);
    inside("plan");
    assert_eq!(plan[0]["action"], "wait", "{plan}");
    assert_eq!(plan[0]["api_key"], new_key.name.as_str(), "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains("stays active"),
        "{plan}"
    );
    assert_eq!(
        admin.check_token(&token_inside).await.unwrap(),
        KeyCheck::Accepted
    );
    inside("the token was checked");

    // After the window, a pass deactivates the old key: its value and every token die.
    let wait = (retire_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    let (out, _) = rig.run(&["once"], 0);
    assert!(
        out.contains("finalized") && out.contains("deactivated"),
        "{out}"
    );
    assert_eq!(check(&admin, &seed.value).await, KeyCheck::Rejected);
    assert_eq!(
        admin.check_token(&token_before).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(
        admin.check_token(&token_inside).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(check(&admin, &new_value).await, KeyCheck::Accepted);
    let old = admin
        .get_api_key(sa.id, &seed.key.id.to_string())
        .await
        .unwrap();
    assert!(!old.active);
    assert!(
        zenml_rotator::naming::deactivated_by_rotator(&old.description),
        "{}",
        old.description
    );
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_keys_deactivated_total{{policy=\"{policy}\",reason=\"retired\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(rig.metric("zenml_rotator_pending_deactivations"), Some(0.0));
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_deactivation_due_timestamp_seconds{{policy=\"{policy}\"}}"
        )),
        None
    );
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.retiring_key_id, None);
    assert!(record.finalized_at.is_some());
    // Nothing is left to do, and the stored key keeps working.
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("wait"), "{out}");
    assert_eq!(
        stored(&store, &path).await.expose_secret(),
        new_value.expose_secret()
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

/// `rotate --force` inside a window: a new key, and nobody cut off. Every replaced key stays
/// active until the new window ends; the record names the latest as retiring.
#[tokio::test(flavor = "multi_thread")]
async fn force_inside_the_window_replaces_and_keeps_every_older_key_alive() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-force").await;
    let path = unique("zr-force");
    let rig = Rig::new(
        Kind::File,
        &replace_key("force", &sa.name, &path, "retain = \"30m\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let first = stored(&store, &path).await;
    let first_id = key_id_from_value(&first).unwrap();
    let (out, _) = rig.run(&["rotate", "force"], 1);
    assert!(out.contains("refused") && out.contains("--force"), "{out}");
    // Key names carry the second: make sure the next one gets its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (out, _) = rig.run(&["rotate", "force", "--force"], 0);
    assert!(out.contains("rotated"), "{out}");
    let second = stored(&store, &path).await;
    let second_id = key_id_from_value(&second).unwrap();
    assert_ne!(second_id, first_id);
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.retiring_key_id, Some(first_id.to_string()));
    for value in [&seed.value, &first, &second] {
        assert_eq!(check(&admin, value).await, KeyCheck::Accepted);
    }
    let plan = rig.json(&["plan"], 0);
    let reason = plan[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"default\"") && reason.contains("keys"),
        "{reason}"
    );
    assert_eq!(
        keys(&admin, &sa).await.iter().filter(|k| k.active).count(),
        3
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_create_and_store_leaves_an_orphan_the_next_pass_removes() {
    let admin = common::zenml_admin();
    let (sa, _seed) = common::new_service_account_with_key(&admin, "replace-crash").await;
    let path = unique("zr-crash");
    let policy = "crash";
    let rig = Rig::new(
        Kind::Aws,
        &replace_key(policy, &sa.name, &path, "retain = \"1s\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    let current_id = key_id_from_value(&current).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // `rotate` first retires the seed (its 1 s window is over), then creates a key and dies.
    let mut crash = rig.cmd(&["rotate", policy]);
    crash.env("ZR_FAULT", "after_create");
    let out = run(&mut crash);
    assert_eq!(out.status.code(), Some(86), "{}", describe(&crash, &out));
    let orphan = keys(&admin, &sa)
        .await
        .into_iter()
        .find(|k| k.active && k.id != current_id)
        .unwrap_or_else(|| panic!("no orphan was created"));
    assert!(zenml_rotator::naming::is_generation(
        "default",
        &orphan.name
    ));
    // The store never saw it: the stored key still works.
    assert_eq!(
        key_id_from_value(&stored(&store, &path).await),
        Some(current_id)
    );
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);

    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains(&orphan.name),
        "{plan}"
    );
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("interrupted run"), "{out}");
    assert!(
        admin
            .get_api_key(sa.id, &orphan.id.to_string())
            .await
            .is_err(),
        "the orphan still exists"
    );
    assert_eq!(
        key_id_from_value(&stored(&store, &path).await),
        Some(current_id)
    );
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_keys_deactivated_total{{policy=\"{policy}\",reason=\"orphan\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_keys_deleted_total{{policy=\"{policy}\"}}"
        )),
        Some(1.0)
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stored_key_is_never_deactivated_even_when_the_record_says_so() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-guard").await;
    let path = unique("zr-guard");
    let rig = Rig::new(
        Kind::File,
        &replace_key("guard", &sa.name, &path, "retain = \"2s\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    let current_id = key_id_from_value(&current).unwrap();
    // A record gone wrong: it names the seed current and the stored key as retiring, overdue.
    let mut record = store.inspect(&path).await.unwrap().record.unwrap();
    record.key_id = seed.key.id.to_string();
    record.retiring_key_id = Some(current_id.to_string());
    record.retire_at = Some(Utc::now() - chrono::Duration::minutes(1));
    store.set_record(&path, &record).await.unwrap();
    // Past every window the policy could promise for the key it now believes is retiring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (out, _) = rig.run(&["once"], 1);
    assert!(out.contains("refused to deactivate"), "{out}");
    let key = admin
        .get_api_key(sa.id, &current_id.to_string())
        .await
        .unwrap();
    assert!(key.active);
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

/// AWS promotes a value and tags its record in separate calls: a run that stops in between leaves
/// the store holding a newer key than its record names. That key must be adopted, not removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_value_stored_without_its_record_is_adopted_not_removed() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-adopt").await;
    let path = unique("zr-adopt");
    // The hook notes the key id of each value it ran for.
    let ran_for = tempfile::tempdir().unwrap();
    let ran_for = ran_for.path().join("hook-ran-for");
    let hook = format!(
        "retain = \"30m\"\non_rotated = {{ command = [\"/bin/sh\", \"-c\", \
         \"echo $ZENML_ROTATOR_KEY_ID >> {}\"] }}",
        ran_for.display()
    );
    let rig = Rig::new(Kind::Aws, &replace_key("adopt", &sa.name, &path, &hook));
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let first = stored(&store, &path).await;
    let first_id = key_id_from_value(&first).unwrap();
    // What the interrupted run did: created a replacement, staged and promoted it, and stopped
    // before the record was written.
    let name = zenml_rotator::naming::generation_name("default", Utc::now());
    let newer = admin
        .create_api_key(
            sa.id,
            &name,
            "zenml-rotator: replacement key of policy \"adopt\"",
        )
        .await
        .unwrap();
    let snapshot = store.preflight(&path).await.unwrap();
    let old_record = snapshot.record.clone().unwrap();
    let token = Uuid::new_v4().to_string();
    let payload = Payload {
        zenml_url: common::zenml().url,
        api_key: newer.value.clone(),
    };
    store
        .stage(&path, &payload, &old_record, &snapshot, &token)
        .await
        .unwrap();
    store.promote(&path, &token, &snapshot).await.unwrap();
    assert_eq!(
        store.inspect(&path).await.unwrap().record.unwrap().key_id,
        first_id.to_string()
    );

    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains("record"),
        "{plan}"
    );
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("recorded key"), "{out}");
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.key_id, newer.key.id.to_string());
    assert_eq!(record.retiring_key_id, Some(first_id.to_string()));
    assert!(record.retire_at.unwrap() > Utc::now() + chrono::Duration::minutes(25));
    // The interrupted run never ran the hook for the value it stored: the adopting one did.
    let hooked = std::fs::read_to_string(&ran_for).unwrap();
    assert_eq!(
        hooked.lines().collect::<Vec<_>>(),
        [first_id.to_string(), newer.key.id.to_string()],
        "{hooked}"
    );
    // Nothing was removed: the stored key works, and so does the one it replaced (its window).
    assert!(
        admin
            .get_api_key(sa.id, &newer.key.id.to_string())
            .await
            .unwrap()
            .active
    );
    assert_eq!(check(&admin, &newer.value).await, KeyCheck::Accepted);
    assert_eq!(check(&admin, &first).await, KeyCheck::Accepted);
    let _ = seed;
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivated_keys_are_deleted_after_delete_after() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-delete").await;
    let path = unique("zr-delete");
    // Every event in an audit file: the deletion is announced like the deactivation before it.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit").join("events.jsonl");
    let rig = Rig::new(
        Kind::File,
        &format!(
            "{}\n[[notify]]\npath = {:?}\n",
            replace_key(
                "deleting",
                &sa.name,
                &path,
                "retain = \"2s\"\ndelete_after = \"30s\"",
            ),
            audit.display().to_string()
        ),
    );
    let audited = |event: &str| -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["event"] == event)
            .collect()
    };
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("deactivated"), "{out}");
    let old = admin
        .get_api_key(sa.id, &seed.key.id.to_string())
        .await
        .unwrap();
    assert!(!old.active);
    // Not yet: deactivated less than 30 s ago.
    let (out, _) = rig.run(&["once"], 0);
    assert!(!out.contains("deleted"), "{out}");
    assert!(audited("deleted").is_empty(), "{:?}", audited("deleted"));
    assert_eq!(
        rig.metric("zenml_rotator_keys_deleted_total{policy=\"deleting\"}"),
        None
    );
    assert!(
        admin
            .get_api_key(sa.id, &seed.key.id.to_string())
            .await
            .is_ok()
    );
    let deletable_at = old.updated + chrono::Duration::seconds(31);
    tokio::time::sleep((deletable_at - Utc::now()).to_std().unwrap_or_default()).await;
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        admin
            .get_api_key(sa.id, &seed.key.id.to_string())
            .await
            .is_err()
    );
    assert_eq!(
        rig.metric("zenml_rotator_keys_deleted_total{policy=\"deleting\"}"),
        Some(1.0)
    );
    let deleted = audited("deleted");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["policy"], "deleting");
    assert_eq!(deleted[0]["service_account"], sa.name.as_str());
    assert_eq!(deleted[0]["api_key"], seed.key.name.as_str());
    assert_eq!(deleted[0]["key_id"], seed.key.id.to_string().as_str());
    assert_eq!(deleted[0]["fingerprint"], Value::Null);
    let deactivated = audited("deactivated");
    assert_eq!(deactivated.len(), 1, "{deactivated:?}");
    assert_eq!(deactivated[0]["key_id"], seed.key.id.to_string().as_str());
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    assert_eq!(keys(&admin, &sa).await.len(), 1);
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}
