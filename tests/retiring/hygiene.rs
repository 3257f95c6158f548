//! `[hygiene]`: an unused key no policy covers is deactivated, an unmanaged one reported.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn hygiene_deactivates_an_unused_key_and_reports_an_unmanaged_one() {
    let admin = common::zenml_admin();
    // Keys no policy covers: one never used, one only checked within the minute after its
    // creation (as the rotator checks what it issues), one a workload uses later.
    let (loose, unused) = common::new_service_account_with_key(&admin, "hyg-loose").await;
    let verified = admin
        .create_api_key(loose.id, "verified", "t")
        .await
        .unwrap();
    let used = admin.create_api_key(loose.id, "used", "t").await.unwrap();
    // Managed by a policy and never used by a workload: hygiene leaves it to the policy.
    let (managed, managed_key) = common::new_service_account_with_key(&admin, "hyg-managed").await;
    // Excluded: never touched.
    let (excluded, excluded_key) =
        common::new_service_account_with_key(&admin, "hyg-excluded").await;
    let empty = admin
        .create_service_account(&unique("hyg-empty"), "t")
        .await
        .unwrap();

    let until = |t: chrono::DateTime<Utc>| (t - Utc::now()).to_std().unwrap_or_default();
    // 40 s after creation: late enough that, counted as a workload's login, it would keep the
    // key "used" below the 60 s threshold; inside the issuer's minute, so it does not count.
    tokio::time::sleep(until(verified.key.created + chrono::Duration::seconds(40))).await;
    assert_eq!(check(&admin, &verified.value).await, KeyCheck::Accepted);
    // A workload logs in with `used` more than a minute after its creation, and again before each
    // command below, so that a slow command cannot make it look unused.
    tokio::time::sleep(until(used.key.created + chrono::Duration::seconds(65))).await;
    assert_eq!(check(&admin, &used.value).await, KeyCheck::Accepted);

    // Hygiene looks at the whole server, which other tests share: exclude every account that
    // exists now except ours. Accounts created from here on hold keys younger than 60 s.
    let mine: BTreeSet<String> = [&loose.name, &managed.name, &empty.name]
        .into_iter()
        .cloned()
        .collect();
    let others: Vec<String> = admin
        .list_service_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .filter(|n| !mine.contains(n))
        .map(|n| format!("{n:?}"))
        .collect();
    assert!(others.contains(&format!("{:?}", excluded.name)));
    let path = unique("hyg-managed");
    let rig = Rig::new(
        Kind::File,
        &format!(
            "[hygiene]\ndeactivate_unused_after = \"60s\"\nexclude_service_accounts = [{}]\n\n\
             [[key]]\nname = \"managed\"\nservice_account = \"{}\"\napi_key = \"default\"\nstore = \"main\"\n\
             path = \"{path}\"\nretain = \"1m\"\nevery = \"1h\"\n",
            others.join(", "),
            managed.name
        ),
    );

    let plan = rig.json(&["plan"], 0);
    let rows: Vec<&Value> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["policy"] == "hygiene")
        .collect();
    let row = |sa: &str, key: Option<&str>| {
        rows.iter()
            .find(|r| r["service_account"] == sa && r["api_key"].as_str() == key)
            .map(|r| r["action"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        row(&loose.name, Some("default")).as_deref(),
        Some("deactivate"),
        "{plan}"
    );
    assert_eq!(
        row(&loose.name, Some("verified")).as_deref(),
        Some("deactivate"),
        "{plan}"
    );
    assert_eq!(
        row(&loose.name, Some("used")).as_deref(),
        Some("report"),
        "{plan}"
    );
    assert_eq!(row(&empty.name, None).as_deref(), Some("report"), "{plan}");
    assert_eq!(row(&managed.name, Some("default")), None, "{plan}");
    assert!(
        !rows
            .iter()
            .any(|r| r["service_account"] == excluded.name.as_str()),
        "{plan}"
    );
    // The per-key rows come first and keep their shape.
    assert_eq!(plan[0]["policy"], "managed");
    assert_eq!(plan[0]["strategy"], "rotate");

    assert_eq!(check(&admin, &used.value).await, KeyCheck::Accepted);
    let (out, _) = rig.run(&["once"], 0);
    assert!(
        out.contains("hygiene") && out.contains("deactivated"),
        "{out}"
    );
    let state = |k: &ApiKey| k.active;
    let loose_keys = keys(&admin, &loose).await;
    let by_name = |n: &str| loose_keys.iter().find(|k| k.name == n).map(state).unwrap();
    assert!(!by_name("default"));
    assert!(!by_name("verified"));
    assert!(by_name("used"));
    assert_eq!(check(&admin, &unused.value).await, KeyCheck::Rejected);
    assert_eq!(check(&admin, &used.value).await, KeyCheck::Accepted);
    assert!(
        admin
            .get_api_key(managed.id, "default")
            .await
            .unwrap()
            .active
    );
    assert!(
        admin
            .get_api_key(excluded.id, &excluded_key.key.id.to_string())
            .await
            .unwrap()
            .active
    );
    let _ = managed_key;
    assert_eq!(
        rig.metric("zenml_rotator_keys_deactivated_total{policy=\"hygiene\",reason=\"unused\"}"),
        Some(2.0)
    );
    assert!(
        rig.metric("zenml_rotator_hygiene_findings{kind=\"unmanaged\"}")
            .unwrap()
            >= 1.0
    );
    for sa in [&loose, &managed, &excluded, &empty] {
        admin
            .delete_service_account(&sa.id.to_string())
            .await
            .unwrap();
    }
}
