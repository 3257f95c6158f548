//! `plan` and `once --dry-run` are read-only: ZenML, every store and the state dir are the same
//! before and after. `plan --output json` has exactly the documented fields, and what it says is what
//! `once` then does. `plan` exits 1 when a key cannot be read.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use zenml_rotator::secret::ExposeSecret;

use crate::common::rig::Rig;
use crate::common::stores::{VaultAdmin, aws, aws_state, file_state, zenml_state};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml, zenml_admin};
use crate::parse_time;

const PLAN_FIELDS: [&str; 12] = [
    "policy",
    "service_account",
    "api_key",
    "key_id",
    "strategy",
    "last_rotated",
    "age_seconds",
    "next_due",
    "action",
    "reason",
    "claim_holder",
    "claim_expires_at",
];

#[tokio::test(flavor = "multi_thread")]
async fn plan_and_dry_run_change_nothing_and_plan_predicts_the_pass() {
    let admin = zenml_admin();
    let (sa_a, _) = new_service_account_with_key(&admin, "eng-plan-a").await;
    let (sa_b, _) = new_service_account_with_key(&admin, "eng-plan-b").await;
    let (sa_c, c_old) = new_service_account_with_key(&admin, "eng-plan-c").await;
    let root = VaultAdmin::shared();
    let prefix = unique("eng-plan");
    let vault_path = format!("{prefix}/b");
    let token = root.rotator_token(&prefix).await;
    let client = aws().await;
    let secret = unique("eng-plan-c");
    client
        .create_secret()
        .name(&secret)
        .secret_string(
            json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": c_old.value.expose_secret() })
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut rig = Rig::new();
    rig.file_store("local")
        .vault_store("vault", &root.addr, &token)
        .aws_store("aws", &aws_endpoint())
        // a: rotated just now (waits for 30 days); b: nothing stored yet (rotates); c: a value the
        // rotator did not write, on a young key (waits).
        .key("a", &sa_a.name, "local", "a.env", "")
        .key("b", &sa_b.name, "vault", &vault_path, "")
        .key("c", &sa_c.name, "aws", &secret, "");
    rig.write();
    rig.expect(&["rotate", "a"], 0);

    let snapshot = || async {
        json!({
            "zenml": [
                zenml_state(&admin, sa_a.id).await,
                zenml_state(&admin, sa_b.id).await,
                zenml_state(&admin, sa_c.id).await,
            ],
            "vault": root.state(&vault_path).await,
            "aws": aws_state(&client, &secret).await,
            "files": format!("{:?}", file_state(&rig.keys_dir())),
            "state_dir": format!("{:?}", file_state(&rig.state_dir())),
        })
    };
    let before = snapshot().await;

    let plan = rig.expect(&["plan", "--output", "json"], 0);
    assert_eq!(snapshot().await, before, "plan changed something");
    let rows: Value = serde_json::from_str(&plan.stdout).expect("one JSON document");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 3);
    let expected: BTreeSet<&str> = PLAN_FIELDS.into_iter().collect();
    for row in rows {
        let fields: BTreeSet<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, expected, "{row}");
        assert_eq!(row["strategy"], "rotate");
        assert_eq!(row["api_key"], "default");
        let next_due = row["next_due"].as_str().expect("next_due is a time");
        assert!(next_due.ends_with('Z'), "UTC: {next_due}");
        parse_time(next_due);
        assert!(row["age_seconds"].as_i64().is_some(), "{row}");
        assert!(!row["reason"].as_str().unwrap().is_empty());
        assert!(uuid::Uuid::parse_str(row["key_id"].as_str().unwrap()).is_ok());
    }
    let row = |p: &str| rows.iter().find(|r| r["policy"] == p).unwrap().clone();
    assert_eq!(row("a")["service_account"], sa_a.name.as_str());
    let last = row("a")["last_rotated"]
        .as_str()
        .expect("a was rotated")
        .to_owned();
    assert!(last.ends_with('Z'), "{last}");
    parse_time(&last);
    assert_eq!(row("b")["last_rotated"], Value::Null);
    assert_eq!(row("c")["last_rotated"], Value::Null);
    let actions: Vec<_> = ["a", "b", "c"].map(|p| row(p)["action"].clone()).to_vec();
    assert_eq!(actions, ["wait", "rotate", "wait"], "{}", plan.stdout);

    // The table says the same for people.
    let table = rig.expect(&["plan"], 0);
    assert!(table.stdout.starts_with("POLICY"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 4, "{}", table.stdout);
    assert_eq!(snapshot().await, before);

    let dry = rig.expect(&["once", "--dry-run", "--output", "json"], 0);
    assert_eq!(snapshot().await, before, "--dry-run changed something");
    assert_eq!(dry.results_of("a"), ["would wait"], "{}", dry.describe());
    assert_eq!(dry.results_of("b"), ["would rotate"], "{}", dry.describe());
    assert_eq!(dry.results_of("c"), ["would wait"], "{}", dry.describe());

    let pass = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(pass.results_of("a"), ["wait"], "{}", pass.describe());
    assert_eq!(pass.results_of("b"), ["rotated"], "{}", pass.describe());
    assert_eq!(pass.results_of("c"), ["wait"], "{}", pass.describe());
    let after = snapshot().await;
    // What waited is untouched; b is rotated and stored.
    assert_eq!(after["zenml"][0], before["zenml"][0]);
    assert_eq!(after["zenml"][2], before["zenml"][2]);
    assert_eq!(after["aws"], before["aws"]);
    assert_eq!(after["files"], before["files"]);
    assert_ne!(after["zenml"][1], before["zenml"][1]);
    assert_eq!(after["vault"]["metadata"]["current_version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_exits_1_when_a_key_cannot_be_read() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "eng-plan-exit").await;
    let (sa2, _) = new_service_account_with_key(&admin, "eng-plan-exit").await;
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rig = Rig::new();
    rig.file_store("local")
        .vault_store(
            "gone",
            &format!("http://127.0.0.1:{port}"),
            "s.unused-token-value",
        )
        .key("ok", &sa.name, "local", "ok.env", "")
        .key("unreadable", &sa2.name, "gone", "zr/k", "");
    rig.write();
    let ran = rig.expect(&["plan", "--output", "json"], 1);
    let rows: Value = serde_json::from_str(&ran.stdout).expect("the plan is still printed");
    let row = |p: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["policy"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(row("ok")["action"], "rotate");
    assert_eq!(row("unreadable")["action"], "blocked");
    let reason = row("unreadable")["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("gone") && reason.contains("reach"),
        "{reason}"
    );
    assert!(!rig.state_dir().exists(), "plan creates no state dir");

    let mut readable = Rig::new();
    readable
        .file_store("local")
        .key("ok", &sa.name, "local", "ok.env", "");
    readable.write();
    readable.expect(&["plan"], 0);
}
