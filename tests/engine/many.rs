//! Invariant 6 at scale: one `once` pass over 20 keys (files, Vault and AWS mixed) with
//! `concurrency = 4`, one of them broken (its service account deleted just before the pass). The
//! other 19 rotate; the pass exits 1 naming the broken policy and why. The pass's wall time and
//! peak RSS are printed (not asserted: the machine is shared). The pass tells each store the paths
//! it is about to look at: the first capability question Vault gets asks about the Vault keys after it.

use std::collections::BTreeSet;

use zenml_rotator::zenml::KeyCheck;

use crate::common::rig::Rig;
use crate::common::rig::failed_at;
use crate::common::stores::{VaultAdmin, aws_value, check, env_file, payload_of};
use crate::common::stub_http::{StubServer, forward};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml_admin};

const KEYS: usize = 20;
const BROKEN: usize = 7;

#[tokio::test(flavor = "multi_thread")]
async fn twenty_keys_in_one_pass_one_broken() {
    let admin = zenml_admin();
    let accounts = futures_util::future::join_all(
        (0..KEYS).map(|_| new_service_account_with_key(&admin, "eng-many")),
    )
    .await;
    let root = VaultAdmin::shared();
    let prefix = unique("eng-many");
    let token = root.rotator_token(&prefix).await;
    let vault_addr = root.addr.clone();
    let vault = StubServer::start(move |r| forward(&vault_addr, r)).await;
    let aws_prefix = unique("eng-many");
    let mut rig = Rig::new();
    rig.default_line("concurrency = 4")
        .file_store("local")
        .vault_store("vault", &vault.url, &token)
        .aws_store("aws", &aws_endpoint());
    let place = |i: usize| match i % 3 {
        0 => ("local", format!("k{i:02}.env")),
        1 => ("vault", format!("{prefix}/k{i:02}")),
        _ => ("aws", format!("{aws_prefix}-k{i:02}")),
    };
    for (i, (sa, _)) in accounts.iter().enumerate() {
        let (store, path) = place(i);
        rig.key(&format!("k{i:02}"), &sa.name, store, &path, "");
    }
    rig.write();
    let broken = &accounts[BROKEN].0;
    admin.delete_service_account(&broken.name).await.unwrap();

    let measured = rig.expect_measured(&["once", "--output", "json"], 1);
    println!(
        "20-key pass (concurrency 4, 19 rotations): wall time {:.1} s, peak RSS {} KiB",
        measured.wall.as_secs_f64(),
        measured.peak_rss_kib
    );
    let ran = &measured.ran;
    let detail = failed_at(ran, &format!("k{BROKEN:02}"), "preflight");
    assert!(
        detail.contains(&broken.name) && detail.contains("does not exist"),
        "{detail}"
    );
    assert!(
        ran.stderr.contains("pass finished with failures"),
        "{}",
        ran.describe()
    );

    let client = crate::common::stores::aws().await;
    let mut stored = BTreeSet::new();
    for (i, (sa, _)) in accounts.iter().enumerate() {
        if i == BROKEN {
            continue;
        }
        let policy = format!("k{i:02}");
        assert_eq!(
            ran.results_of(&policy),
            ["rotated"],
            "{policy}\n{}",
            ran.describe()
        );
        assert!(crate::key_now(&admin, sa.id).await.last_rotated.is_some());
        let (store, path) = place(i);
        let value =
            match store {
                "local" => env_file(&std::fs::read_to_string(rig.keys_dir().join(&path)).unwrap())
                    ["ZENML_STORE_API_KEY"]
                    .clone(),
                "vault" => payload_of(&root.data(&path, None).await.to_string()).1,
                _ => payload_of(&aws_value(&client, &path, "AWSCURRENT").await.unwrap()).1,
            };
        // The engine verified each; a sample of one per store is enough to cross-check.
        if i < 3 {
            assert_eq!(check(&admin, &value).await, KeyCheck::Accepted, "{policy}");
        }
        stored.insert(value);
    }
    assert_eq!(stored.len(), KEYS - 1, "every key got its own value");

    // The first pre-flight into Vault asked about the Vault keys after it too (all of them: 7
    // paths, within one question's 8), and about no other store's.
    let first = vault
        .requests()
        .iter()
        .find(|r| r.path().ends_with("/sys/capabilities-self"))
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .expect("a capability question");
    let named: Vec<usize> = (0..KEYS)
        .filter(|i| first.contains(&format!("/data/{}\"", place(*i).1)))
        .collect();
    let asking = *named.first().expect("a key asked about");
    let after: Vec<usize> = (asking..KEYS).filter(|i| place(*i).0 == "vault").collect();
    assert_eq!(named, after, "{first}");
    assert!(named.len() > 1, "nothing asked ahead: {first}");
    assert!(rig.journal_files().is_empty());
}
