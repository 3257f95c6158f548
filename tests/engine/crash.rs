//! Invariant 3: a crash between ZenML's rotate and the store write (fault points of the
//! `fault-injection` build) leaves the new value kept where the next rotator finds it (the claim
//! in Vault, `AWSPENDING` in AWS, the journal for the file store); the next `once` stores it,
//! checks it logs in and lets go of it, without rotating again. The same when the store itself
//! fails at the write, and when the crash came before the rotate call (intent only).

use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::KeyCheck;

use crate::common::private_bao::PrivateBao;
use crate::common::rig::failed_at;
use crate::common::rig::{Ran, Rig};
use crate::common::stores::{
    VaultAdmin, aws, aws_value, aws_versions, check, env_file, payload_of,
};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml, zenml_admin};
use crate::key_now;

/// The exit code of a fault point's simulated crash (src/fault.rs).
const CRASHED: i32 = 86;

/// Runs `args` with `ZR_FAULT=<point>` and expects the simulated crash.
fn crash_at(rig: &Rig, point: &str, args: &[&str]) -> Ran {
    crash_running(rig.cmd(args), point)
}

/// Runs `cmd` with `ZR_FAULT=<point>` and expects the simulated crash.
fn crash_running(mut cmd: std::process::Command, point: &str) -> Ran {
    cmd.env("ZR_FAULT", point);
    let out = crate::common::run(&mut cmd);
    let ran = Ran::new(&cmd, out);
    assert_eq!(
        ran.output.status.code(),
        Some(CRASHED),
        "{}",
        ran.describe()
    );
    assert!(
        ran.stderr.contains(&format!("crashing at {point}")),
        "{}",
        ran.describe()
    );
    ran
}

/// The journaled value of policy `k` after a crash past the rotate call: phase `rotated`, the
/// file 0600, and a value ZenML accepts.
async fn journaled_value(rig: &Rig) -> String {
    let entry = rig.journal_entry("k").expect("a journal entry for k");
    assert_eq!(entry["phase"], "rotated", "{}", entry["phase"]);
    let file = rig.journal_dir().join("k.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let value = entry["value"].as_str().expect("the value").to_owned();
    assert_eq!(check(&zenml_admin(), &value).await, KeyCheck::Accepted);
    value
}

/// The value kept in the Vault claim on `path` after a crash past the rotate call: phase
/// `rotated`, a value ZenML accepts, and no journal entry (the state directory is not needed).
async fn claimed_value(rig: &Rig, root: &VaultAdmin, path: &str) -> String {
    let claim = root
        .data(&format!("zenml-rotator/claims/{path}"), None)
        .await;
    assert_eq!(claim["phase"], "rotated", "{claim}");
    let value = claim["value"].as_str().expect("the value").to_owned();
    assert_eq!(check(&zenml_admin(), &value).await, KeyCheck::Accepted);
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
    value
}

/// The Vault claim on `path` once the rotation is done: released, holding no value.
async fn released(root: &VaultAdmin, path: &str) {
    let claim = root
        .data(&format!("zenml-rotator/claims/{path}"), None)
        .await;
    assert_eq!(claim["phase"], "released", "{claim}");
    assert!(
        claim.get("value").is_none(),
        "a released claim keeps no value"
    );
}

/// `once` after the crash: exit 0, `k` rotated (by the replay), journal empty.
fn replay(rig: &Rig) -> Ran {
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
    ran
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_rotate_call_is_finished_from_the_vault_claim() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-crash-ar").await;
    let root = VaultAdmin::shared();
    let prefix = unique("eng-crash");
    let path = format!("{prefix}/k");
    let token = root.rotator_token(&prefix).await;
    let mut rig = Rig::new();
    rig.vault_store("vault", &root.addr, &token)
        .key("k", &sa.name, "vault", &path, "");
    rig.write();

    crash_at(&rig, "after_rotate", &["once"]);
    let rotated = key_now(&admin, sa.id).await.last_rotated;
    assert!(rotated.is_some(), "ZenML rotated before the crash");
    assert_eq!(
        root.metadata(&path).await,
        serde_json::Value::Null,
        "nothing stored yet"
    );
    let value = claimed_value(&rig, &root, &path).await;

    replay(&rig);
    released(&root, &path).await;
    let (_, stored) = payload_of(&root.data(&path, None).await.to_string());
    assert_eq!(stored, value, "the journaled value is what landed");
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "no second rotation"
    );
    assert_eq!(
        check(&admin, old.value.expose_secret()).await,
        KeyCheck::Accepted
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_store_write_is_replayed_into_the_file() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-crash-bs").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();

    crash_at(&rig, "before_store", &["once"]);
    let rotated = key_now(&admin, sa.id).await.last_rotated;
    assert!(rotated.is_some());
    assert!(!rig.keys_dir().join("k.env").exists());
    let value = journaled_value(&rig).await;

    replay(&rig);
    let env = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap());
    assert_eq!(env["ZENML_STORE_API_KEY"], value);
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "no second rotation"
    );
    assert_eq!(
        check(&admin, old.value.expose_secret()).await,
        KeyCheck::Accepted
    );
}

/// The store fails at the write itself: a private OpenBao sealed at the fault point. The run fails
/// at stage `store` with the value kept in its claim; once the server is unsealed, `once`
/// completes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_sealed_at_the_write_keeps_the_value_in_the_claim_until_it_is_back() {
    let admin = zenml_admin();
    let (sa, _old) = new_service_account_with_key(&admin, "eng-crash-seal").await;
    let bao = PrivateBao::start();
    let mut rig = Rig::new();
    rig.vault_store("vault", &bao.addr, "root")
        .key("k", &sa.name, "vault", "zr/k", "");
    rig.write();

    let mut cmd = rig.cmd(&["once", "--output", "json"]);
    cmd.env(
        "ZR_FAULT_EXEC",
        format!("before_store:{}", bao.root().seal_command()),
    );
    let out = crate::common::run(&mut cmd);
    let ran = Ran::new(&cmd, out);
    assert_eq!(ran.output.status.code(), Some(1), "{}", ran.describe());
    let detail = failed_at(&ran, "k", "store");
    assert!(detail.contains("sealed"), "{detail}");
    let rotated = key_now(&admin, sa.id).await.last_rotated;
    assert!(rotated.is_some());

    // Still sealed: the next pass cannot store either, and keeps the value.
    let ran = rig.expect(&["once", "--output", "json"], 1);
    failed_at(&ran, "k", "preflight");

    bao.unseal().await;
    let value = claimed_value(&rig, &bao.root(), "zr/k").await;
    replay(&rig);
    released(&bao.root(), "zr/k").await;
    let (_, stored) = payload_of(&bao.root().data("zr/k", None).await.to_string());
    assert_eq!(stored, value);
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "no second rotation"
    );
}

/// A crash before the rotate call leaves only the intent: the next pass drops it and rotates once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_rotate_call_leaves_an_intent_the_next_pass_clears() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-crash-br").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();

    crash_at(&rig, "before_rotate", &["once"]);
    let entry = rig.journal_entry("k").expect("the intent");
    assert_eq!(entry["phase"], "intent");
    assert!(
        entry.get("value").is_none(),
        "no value before the rotate call"
    );
    assert!(
        key_now(&admin, sa.id).await.last_rotated.is_none(),
        "nothing rotated"
    );

    // Read-only commands see the intent and leave it.
    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "rotate", "{}", plan.describe());
    assert!(rig.journal_entry("k").is_some());

    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());
    assert!(rig.journal_files().is_empty());
    assert!(key_now(&admin, sa.id).await.last_rotated.is_some());
    let env = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap());
    assert_eq!(
        check(&admin, &env["ZENML_STORE_API_KEY"]).await,
        KeyCheck::Accepted
    );
    // One rotation, not two: the original value is still inside its window.
    assert_eq!(
        check(&admin, old.value.expose_secret()).await,
        KeyCheck::Accepted
    );

    // The same crash when the key is not due (a forced rotation that never reached ZenML): the
    // next pass has nothing to rotate, and still drops the intent.
    let rotated = key_now(&admin, sa.id).await.last_rotated;
    crash_at(&rig, "before_rotate", &["rotate", "k", "--force"]);
    assert_eq!(rig.journal_entry("k").unwrap()["phase"], "intent");
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["wait"], "{}", ran.describe());
    assert!(
        rig.journal_files().is_empty(),
        "a stale intent stays behind: {:?}",
        rig.journal_names()
    );
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "nothing rotated"
    );
}

/// The policy's path changed between the crash and the replay: the journaled value (the file
/// store keeps it in the journal) goes where the policy now points, checked-and-set against what
/// is there (not against the old path). Vault and AWS keep it in the old path's claim instead: the
/// README says to let a rotation finish before moving a key.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_the_path_changed_writes_to_the_new_path() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-crash-moved").await;
    let old = old.value.expose_secret().to_owned();
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "before.env", "");
    rig.write();
    // The new path already holds the workload's value, written by hand.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(rig.keys_dir())
            .unwrap();
    }
    std::fs::write(
        rig.keys_dir().join("after.env"),
        format!(
            "ZENML_STORE_URL={}\nZENML_STORE_API_KEY={old}\n",
            zenml().url
        ),
    )
    .unwrap();
    crash_at(&rig, "after_rotate", &["once"]);
    let value = journaled_value(&rig).await;

    rig.clear_keys()
        .key("k", &sa.name, "local", "after.env", "");
    rig.write();
    replay(&rig);
    let env = env_file(&std::fs::read_to_string(rig.keys_dir().join("after.env")).unwrap());
    assert_eq!(env["ZENML_STORE_API_KEY"], value);
    let previous = std::fs::read_to_string(rig.keys_dir().join("after.env.previous")).unwrap();
    assert_eq!(env_file(&previous)["ZENML_STORE_API_KEY"], old);
    assert!(!rig.keys_dir().join("before.env").exists());
}

/// A crash after the new version was staged (`AWSPENDING`) but before it was promoted: the next
/// pass finds the claim's token and that version, and finishes with the same ClientRequestToken,
/// so AWS ends with that version current and no other. No journal is needed.
#[tokio::test(flavor = "multi_thread")]
async fn an_aws_replay_resumes_with_the_same_client_request_token() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-crash-aws").await;
    let old = old.value.expose_secret().to_owned();
    let client = aws().await;
    let name = unique("eng-crash-aws");
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

    crash_at(&rig, "after_stage", &["rotate", "k"]);
    let claim: serde_json::Value = serde_json::from_str(
        &aws_value(
            &client,
            &format!("zenml-rotator/claims/{name}"),
            "AWSCURRENT",
        )
        .await
        .expect("a claim"),
    )
    .unwrap();
    let token = claim["token"].as_str().unwrap().to_owned();
    assert!(claim.get("value").is_none(), "AWS claims hold no value");
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
    let (_, value) = payload_of(&aws_value(&client, &name, "AWSPENDING").await.unwrap());
    assert_eq!(check(&admin, &value).await, KeyCheck::Accepted);
    let versions = aws_versions(&client, &name).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(
        versions[&token],
        ["AWSPENDING"],
        "staged under the token: {versions:?}"
    );

    replay(&rig);
    let versions = aws_versions(&client, &name).await;
    assert_eq!(versions.len(), 2, "no second version: {versions:?}");
    assert_eq!(versions[&token], ["AWSCURRENT"], "{versions:?}");
    assert_eq!(versions[&first], ["AWSPREVIOUS"], "{versions:?}");
    let (_, stored) = payload_of(&aws_value(&client, &name, "AWSCURRENT").await.unwrap());
    assert_eq!(stored, value);
}

/// The same crash, finished by a rotator that reaches ZenML under another URL (an operator's
/// public name beside a cluster's internal one): the version staged under the token holds the
/// same key, so it is the same rotation, promoted as it is rather than refused as a reused token.
#[tokio::test(flavor = "multi_thread")]
async fn an_aws_replay_by_a_rotator_with_another_zenml_url_finishes_the_rotation() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "eng-crash-aws-url").await;
    let client = aws().await;
    let name = unique("eng-crash-aws-url");
    let mut rig = Rig::new();
    rig.aws_store("aws", &aws_endpoint())
        .key("k", &sa.name, "aws", &name, "");
    rig.write();
    rig.expect(&["once"], 0);
    let other_url = zenml().url.replace("127.0.0.1", "localhost");
    assert_ne!(other_url, zenml().url);
    let other = rig.write_variant("other-url", &other_url);
    crash_running(
        rig.cmd_with(&other, &["rotate", "k", "--force"]),
        "after_stage",
    );
    // The payload as the other rotator wrote it: its URL, and the key.
    let fields = |raw: String| -> (String, String) {
        crate::common::transcript::secrets_in(raw.as_bytes());
        let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let text = |name: &str| v[name].as_str().unwrap().to_owned();
        (text("ZENML_STORE_URL"), text("ZENML_STORE_API_KEY"))
    };
    let (url, value) = fields(aws_value(&client, &name, "AWSPENDING").await.unwrap());
    assert_eq!(url, other_url);

    replay(&rig);
    let stored = fields(aws_value(&client, &name, "AWSCURRENT").await.unwrap());
    assert_eq!(
        stored,
        (other_url, value),
        "the staged version, promoted as it is"
    );
    assert_eq!(check(&admin, &stored.1).await, KeyCheck::Accepted);
}

/// A journaled value whose policy is gone from the policy file cannot be replayed, and may be the
/// only working copy of the key: the pass keeps it, fails, and says where it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_journaled_value_without_its_policy_is_kept_and_reported() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "eng-crash-orphan").await;
    let (other, _) = new_service_account_with_key(&admin, "eng-crash-orphan").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    crash_at(&rig, "after_rotate", &["once"]);
    let value = journaled_value(&rig).await;

    rig.clear_keys()
        .key("other", &other.name, "local", "other.env", "");
    rig.write();
    let ran = rig.expect(&["once", "--dry-run"], 1);
    assert!(
        ran.stderr.contains("\"k\"") && ran.stderr.contains("has no [[key]]"),
        "{}",
        ran.describe()
    );
    assert!(
        ran.stderr
            .contains(&rig.journal_dir().display().to_string())
    );
    assert_eq!(journaled_value(&rig).await, value, "kept");
}

/// Someone rotated the key again between the crash and the replay: the journaled value is now the
/// previous generation, alive only until that rotation's window ends. The replay still stores it
/// (the store holds nothing better), and the next plan says the key was rotated out of band and
/// recovers it (a rescue key) instead of reporting a healthy rotation that will silently die.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_an_out_of_band_rotation_is_recovered() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "eng-crash-oob").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    crash_at(&rig, "after_rotate", &["once"]);
    let value = journaled_value(&rig).await;
    let ours = key_now(&admin, sa.id).await.last_rotated.unwrap();
    // Whole seconds apart, so no tolerance for timestamps in the store can merge the two.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    admin.rotate_api_key(sa.id, "default", 60).await.unwrap();
    let by_hand = key_now(&admin, sa.id).await.last_rotated;
    assert!(by_hand.unwrap() > ours);

    replay(&rig);
    let env = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap());
    assert_eq!(env["ZENML_STORE_API_KEY"], value);
    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "recover", "{}", plan.stdout);
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.contains("outside zenml-rotator"), "{reason}");

    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    let rescue = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    assert_eq!(check(&admin, &rescue).await, KeyCheck::Accepted);
    assert_eq!(
        check(&admin, &value).await,
        KeyCheck::Accepted,
        "nobody cut off"
    );
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        by_hand,
        "not rotated again"
    );
}

/// ZenML rotated but its answer never reached anyone (a crash between the rotate answer and the
/// journal fsync, simulated by an intent plus a rotation by hand): the new value is lost. No person
/// is needed: a pass stores a rescue key at once, without rotating the key again (that would cut
/// off the stored value, invariant 1), and every stored value keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_whose_answer_was_lost_is_recovered_without_a_person() {
    let admin = zenml_admin();
    let (sa, _old) = new_service_account_with_key(&admin, "eng-crash-lost").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    // A first rotation so the store holds a working value (the one consumers use).
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());
    let stored = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();

    crash_at(&rig, "before_rotate", &["rotate", "k", "--force"]);
    assert_eq!(rig.journal_entry("k").unwrap()["phase"], "intent");
    let lost = admin.rotate_api_key(sa.id, "default", 60).await.unwrap();
    let rotated = key_now(&admin, sa.id).await.last_rotated;

    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "recover", "{}", plan.describe());
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.contains("nobody kept the new value"), "{reason}");
    assert!(reason.contains("rescue key"), "{reason}");

    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "a pass must not rotate again"
    );
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
    let rescue = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    assert_ne!(rescue, stored);
    assert_eq!(check(&admin, &rescue).await, KeyCheck::Accepted);
    // The value consumers hold still works: nobody was cut off.
    assert_eq!(check(&admin, &stored).await, KeyCheck::Accepted);
    // Nothing is left for a person: the next plan waits for the window to end.
    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "wait", "{}", plan.describe());
    assert!(rows[0]["reason"].as_str().unwrap().contains("stands in"));
    drop(lost);
}
