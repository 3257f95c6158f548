//! `inventory` over hundreds of keys across pages.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn inventory_lists_300_keys_across_pages() {
    let admin = common::zenml_admin();
    let started = Instant::now();
    let mut accounts = Vec::new();
    for i in 0..3 {
        accounts.push(
            admin
                .create_service_account(&unique(&format!("inv{i}")), "t")
                .await
                .unwrap(),
        );
    }
    // Key creation costs the server a hash each: 4 at a time keeps both cores busy.
    use futures_util::StreamExt;
    let jobs: Vec<(Uuid, String)> = accounts
        .iter()
        .flat_map(|a| (0..100).map(move |k| (a.id, format!("k{k:03}"))))
        .collect();
    let created: Vec<Result<_, _>> = futures_util::stream::iter(jobs)
        .map(|(sa, name)| {
            let admin = admin.clone();
            async move { admin.create_api_key(sa, &name, "inventory test").await }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert!(created.iter().all(|r| r.is_ok()));
    eprintln!("created 300 keys in {:?}", started.elapsed());

    // Library level, 7 items a page: every account and key comes back once. ZenML pages by
    // offset, so an account another test deletes meanwhile can shift a later account out of the
    // page it was on: a listing that misses one of ours is taken again (at most 3 times). Our
    // accounts' keys change under nobody, so their counts must be exact.
    let small_pages = admin.clone().with_page_size(7);
    let mut attempts = 0;
    let listed = loop {
        attempts += 1;
        let listed = zenml_rotator::audit::inventory::collect(&small_pages, 4)
            .await
            .unwrap();
        if accounts
            .iter()
            .all(|a| listed.iter().any(|e| e.account.id == a.id))
            || attempts == 3
        {
            break listed;
        }
    };
    for a in &accounts {
        let entry = listed
            .iter()
            .find(|e| e.account.id == a.id)
            .unwrap_or_else(|| panic!("{} missing after {attempts} listings", a.name));
        assert_eq!(entry.keys.len(), 100);
        let names: BTreeSet<&str> = entry.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names.len(), 100);
    }
    let ids: BTreeSet<Uuid> = listed.iter().map(|e| e.account.id).collect();
    assert_eq!(ids.len(), listed.len(), "an account was listed twice");

    // The binary: JSON, a policy named on the key it manages, and the stale filter.
    let rig = Rig::new(
        Kind::File,
        &format!(
            "[[key]]\nname = \"inv\"\nservice_account = \"{}\"\napi_key = \"k007\"\nstore = \"main\"\npath = \"inv.env\"\n",
            accounts[0].name
        ),
    );
    let t = Instant::now();
    let inv = rig.json(&["inventory"], 0);
    eprintln!("inventory took {:?}", t.elapsed());
    for a in &accounts {
        let entry = inv
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["service_account"] == a.name.as_str())
            .unwrap_or_else(|| panic!("{} missing", a.name));
        assert_eq!(entry["keys"].as_array().unwrap().len(), 100);
        assert_eq!(entry["active"], true);
    }
    let first = inv
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service_account"] == accounts[0].name.as_str())
        .unwrap();
    let k7 = first["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key"] == "k007")
        .unwrap();
    assert_eq!(k7["policy"], "inv");
    assert_eq!(k7["last_workload_login"], Value::Null);
    let k8 = first["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key"] == "k008")
        .unwrap();
    assert_eq!(k8["policy"], Value::Null);

    // --stale: keys no workload ever used count as stale.
    let stale = rig.json(&["inventory", "--stale", "1h"], 0);
    let first = stale
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service_account"] == accounts[0].name.as_str())
        .unwrap();
    assert_eq!(first["keys"].as_array().unwrap().len(), 100);
    let (table, _) = rig.run(&["inventory"], 0);
    assert!(table.starts_with("SERVICE ACCOUNT"), "{table}");
    assert!(
        table
            .lines()
            .filter(|l| l.contains(&accounts[2].name))
            .count()
            == 100
    );
    for a in &accounts {
        admin
            .delete_service_account(&a.id.to_string())
            .await
            .unwrap();
    }
    eprintln!("whole test {:?}", started.elapsed());
}
