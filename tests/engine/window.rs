//! The end of a retain window (`retain = "1m"`, a real minute): `plan` goes rotate -> wait ->
//! finalize -> wait at the right times, and the `once` after the window finalizes: the previous
//! value is confirmed rejected and the record gets `finalized_at`. The only test that waits out a
//! window; it runs beside the others.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::KeyCheck;

use crate::common::rig::Rig;
use crate::common::stores::{VaultAdmin, check, env_file};
use crate::common::{new_service_account_with_key, unique, zenml, zenml_admin};
use crate::{key_now, parse_time};

fn actions(rig: &Rig) -> (String, String) {
    let all = all_actions(rig);
    (all[0].clone(), all[1].clone())
}

/// The plan's action for a, b and c.
fn all_actions(rig: &Rig) -> Vec<String> {
    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: Value = serde_json::from_str(&plan.stdout).unwrap();
    let action = |p: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["policy"] == p)
            .map(|r| r["action"].as_str().unwrap().to_owned())
            .unwrap()
    };
    ["a", "b", "c"].map(action).to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_window_a_pass_finalizes() {
    let admin = zenml_admin();
    // a: nothing stored yet, rotated by a pass. b: a value the rotator takes over in Vault, so the
    // store keeps the previous value and finalizing has one to confirm dead.
    let (sa_a, a_original) = new_service_account_with_key(&admin, "eng-window-a").await;
    let (sa_b, b_original) = new_service_account_with_key(&admin, "eng-window-b").await;
    // c: rotated into Vault, then someone adds a field (`vault kv patch`): the version on top holds
    // the same key, so the version before it is not a retired value.
    let (sa_c, _) = new_service_account_with_key(&admin, "eng-window-c").await;
    let b_original = b_original.value.expose_secret().to_owned();
    let root = VaultAdmin::shared();
    let prefix = unique("eng-window");
    let path = format!("{prefix}/b");
    let path_c = format!("{prefix}/c");
    let token = root.rotator_token(&prefix).await;
    root.write(
        &path,
        json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": b_original }),
    )
    .await;
    let mut rig = Rig::new();
    rig.default_line("retain = \"1m\"")
        .file_store("local")
        .vault_store("vault", &root.addr, &token)
        .key("a", &sa_a.name, "local", "a.env", "")
        .key("b", &sa_b.name, "vault", &path, "")
        .key("c", &sa_c.name, "vault", &path_c, "");
    rig.write();

    assert_eq!(actions(&rig), ("rotate".into(), "wait".into()));
    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("a"), ["rotated"], "{}", pass.describe());
    assert_eq!(pass.results_of("b"), ["wait"], "{}", pass.describe());
    assert_eq!(pass.results_of("c"), ["rotated"], "{}", pass.describe());
    let mut patched = root.data(&path_c, None).await;
    patched["EXTRA"] = json!("added by an operator");
    root.write(&path_c, patched).await;
    rig.expect(&["rotate", "b"], 0);
    assert_eq!(actions(&rig), ("wait".into(), "wait".into()));
    let ends = [
        key_now(&admin, sa_a.id).await.last_rotated.unwrap(),
        key_now(&admin, sa_b.id).await.last_rotated.unwrap(),
    ]
    .map(|t| t + chrono::Duration::minutes(1));
    assert_eq!(check(&admin, &b_original).await, KeyCheck::Accepted);

    // Poll until both are due to finalize; never before their window ended.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let before = Utc::now();
        let (a, b) = actions(&rig);
        for (name, action, end) in [("a", &a, ends[0]), ("b", &b, ends[1])] {
            match action.as_str() {
                "wait" => assert!(
                    before < end + chrono::Duration::seconds(10),
                    "{name} still waits after {end}"
                ),
                "finalize" => assert!(Utc::now() >= end, "{name}: finalize before {end}"),
                other => panic!("{name}: unexpected action {other}"),
            }
        }
        if (a.as_str(), b.as_str()) == ("finalize", "finalize") {
            break;
        }
        assert!(Instant::now() < deadline, "never due to finalize");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // c's window ended with a's (same pass).
    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("a"), ["finalized"], "{}", pass.describe());
    assert_eq!(pass.results_of("b"), ["finalized"], "{}", pass.describe());
    assert_eq!(pass.results_of("c"), ["finalized"], "{}", pass.describe());
    let b_detail = pass
        .rows()
        .into_iter()
        .find(|(p, _, _)| p == "b")
        .unwrap()
        .2;
    assert!(b_detail.contains("is rejected"), "{b_detail}");
    assert_eq!(check(&admin, &b_original).await, KeyCheck::Rejected);
    assert_eq!(
        check(&admin, a_original.value.expose_secret()).await,
        KeyCheck::Rejected
    );

    // Both records say so, and the stored values still log in.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(rig.keys_dir().join("a.env.meta.json")).unwrap())
            .unwrap();
    let finalized = parse_time(meta["finalized_at"].as_str().expect("a finalized_at"));
    assert!(finalized >= ends[0]);
    let custom = root.metadata(&path).await["custom_metadata"].clone();
    let finalized = parse_time(custom["finalized_at"].as_str().expect("b finalized_at"));
    assert!(finalized >= ends[1]);
    let a_value = env_file(&std::fs::read_to_string(rig.keys_dir().join("a.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    assert_eq!(check(&admin, &a_value).await, KeyCheck::Accepted);

    assert_eq!(all_actions(&rig), ["wait", "wait", "wait"]);
    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("a"), ["wait"], "{}", pass.describe());
    assert_eq!(pass.results_of("b"), ["wait"], "{}", pass.describe());
    assert_eq!(pass.results_of("c"), ["wait"], "{}", pass.describe());
}
