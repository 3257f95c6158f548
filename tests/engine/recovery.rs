//! Invariant 8, nothing the rotator can finish waits for a person: a rotation whose new value
//! nobody kept (simulated: a crash before the rotate call's answer, plus a rotation by hand) is
//! healed end to end with a one-minute retain. A rescue key is stored at once without cutting off
//! the stored value; when the window ends, the key is rotated again, which cuts the value nobody
//! has off at once; the rescue key is retired a retain later. Found after its window, the dead
//! stored value is replaced at once.

use std::time::Duration;

use serde_json::Value;
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::{KeyCheck, ZenmlClient};

use crate::common::rig::Rig;
use crate::common::stores::{VaultAdmin, check, payload_of};
use crate::common::{new_service_account_with_key, unique, zenml_admin};
use crate::key_now;

fn plan_row(rig: &Rig) -> Value {
    let plan = rig.expect(&["plan", "--output", "json"], 0);
    let rows: Value = serde_json::from_str(&plan.stdout).unwrap();
    rows[0].clone()
}

async fn stored(root: &VaultAdmin, path: &str) -> String {
    payload_of(&root.data(path, None).await.to_string()).1
}

/// Sleeps until `t` (plus a little for the server's clock).
async fn sleep_until(t: chrono::DateTime<chrono::Utc>) {
    let wait = (t - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(3)).await;
}

/// A key with a working stored value, then a rotation whose answer nobody kept: the claim of a
/// `rotate --force` that died before ZenML answered, and the rotation done by hand. Returns
/// the rig, the Vault path, the stored value and the lost one.
async fn lost_answer(admin: &ZenmlClient, tag: &str) -> (Rig, String, String, String, uuid::Uuid) {
    let (sa, _) = new_service_account_with_key(admin, tag).await;
    let root = VaultAdmin::shared();
    let prefix = unique(tag);
    let path = format!("{prefix}/k");
    let token = root.rotator_token(&prefix).await;
    let mut rig = Rig::new();
    rig.default_line("retain = \"1m\"")
        .vault_store("vault", &root.addr, &token)
        .key("k", &sa.name, "vault", &path, "");
    rig.write();
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());
    let before = stored(&root, &path).await;

    let mut cmd = rig.cmd(&["rotate", "k", "--force"]);
    cmd.env("ZR_FAULT", "before_rotate");
    let out = crate::common::run(&mut cmd);
    assert_eq!(out.status.code(), Some(86), "the simulated crash");
    let lost = admin.rotate_api_key(sa.id, "default", 1).await.unwrap();
    (
        rig,
        path,
        before,
        lost.value.expose_secret().to_owned(),
        sa.id,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_heals_end_to_end_and_its_value_dies_when_the_window_ends() {
    let admin = zenml_admin();
    let root = VaultAdmin::shared();
    let (rig, path, before, lost, sa) = lost_answer(&admin, "eng-heal").await;
    let rotated = key_now(&admin, sa).await.last_rotated.unwrap();

    let row = plan_row(&rig);
    assert_eq!(row["action"], "recover", "{row}");
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    let rescue = stored(&root, &path).await;
    for (what, value) in [("rescue", &rescue), ("before", &before), ("lost", &lost)] {
        assert_eq!(check(&admin, value).await, KeyCheck::Accepted, "{what}");
    }
    assert_eq!(key_now(&admin, sa).await.last_rotated, Some(rotated));
    let row = plan_row(&rig);
    assert_eq!(row["action"], "wait", "{row}");

    // The window of the lost rotation ends: the key is rotated again, its unknown value dies at
    // once, and the rescue key keeps working for consumers still on it.
    sleep_until(rotated + chrono::Duration::minutes(1)).await;
    let row = plan_row(&rig);
    assert_eq!(row["action"], "recover", "{row}");
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    let back = stored(&root, &path).await;
    assert_eq!(check(&admin, &back).await, KeyCheck::Accepted);
    assert_eq!(
        check(&admin, &lost).await,
        KeyCheck::Rejected,
        "the unknown value is cut off"
    );
    assert_eq!(
        check(&admin, &rescue).await,
        KeyCheck::Accepted,
        "the rescue key retires later"
    );
    let returned = key_now(&admin, sa).await;
    assert!(returned.last_rotated.unwrap() > rotated);
    assert_eq!(returned.retain_period_minutes, Some(0));

    // A retain later the rescue key goes out of service, and the record is final.
    let record = root.metadata(&path).await["custom_metadata"].clone();
    let retire_at = crate::parse_time(record["retire_at"].as_str().expect("retire_at"));
    sleep_until(retire_at).await;
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k")[0], "finalized", "{}", ran.describe());
    assert_eq!(check(&admin, &rescue).await, KeyCheck::Rejected);
    assert_eq!(
        check(&admin, &stored(&root, &path).await).await,
        KeyCheck::Accepted
    );
    let record = root.metadata(&path).await["custom_metadata"].clone();
    assert!(record.get("retiring_key_id").is_none(), "{record}");
    assert!(record.get("finalized_at").is_some(), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_value_found_dead_is_replaced_at_once() {
    let admin = zenml_admin();
    let root = VaultAdmin::shared();
    let (rig, path, before, lost, sa) = lost_answer(&admin, "eng-refused").await;
    let rotated = key_now(&admin, sa).await.last_rotated.unwrap();
    // Nobody looked until the window ended: the stored value no longer works.
    sleep_until(rotated + chrono::Duration::minutes(1)).await;
    assert_eq!(check(&admin, &before).await, KeyCheck::Rejected);

    let row = plan_row(&rig);
    assert_eq!(row["action"], "rotate", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("the stored value is refused: replacing it"),
        "{reason}"
    );
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    assert_eq!(
        check(&admin, &stored(&root, &path).await).await,
        KeyCheck::Accepted
    );
    assert_eq!(check(&admin, &lost).await, KeyCheck::Rejected);
}

/// The first rotation of a key whose store is still empty loses its answer (the holder dies
/// after ZenML rotated, simulated by a crash before the call plus a rotation by hand). The next
/// pass takes the dead holder's claim over and, looking again under it, must still see the lost
/// answer: a rescue key is stored at once, rather than the key waiting with nothing stored until
/// the window ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_first_rotation_into_an_empty_store_is_recovered_at_once() {
    let admin = zenml_admin();
    let (sa, original) = new_service_account_with_key(&admin, "eng-heal-empty").await;
    let root = VaultAdmin::shared();
    let prefix = unique("eng-heal-empty");
    let path = format!("{prefix}/k");
    let token = root.rotator_token(&prefix).await;
    let mut rig = Rig::new();
    rig.vault_store("vault", &root.addr, &token)
        .key("k", &sa.name, "vault", &path, "");
    rig.write();
    let mut cmd = rig.cmd(&["once"]);
    cmd.env("ZR_FAULT", "before_rotate");
    let out = crate::common::run(&mut cmd);
    assert_eq!(out.status.code(), Some(86), "the simulated crash");
    let lost = admin.rotate_api_key(sa.id, "default", 60).await.unwrap();
    let rotated = key_now(&admin, sa.id).await.last_rotated;

    let row = plan_row(&rig);
    assert_eq!(row["action"], "recover", "{row}");
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["recovered"], "{}", ran.describe());
    let rescue = stored(&root, &path).await;
    assert_eq!(check(&admin, &rescue).await, KeyCheck::Accepted);
    assert_eq!(
        key_now(&admin, sa.id).await.last_rotated,
        rotated,
        "not rotated again"
    );
    for value in [original.value.expose_secret(), lost.value.expose_secret()] {
        assert_eq!(
            check(&admin, value).await,
            KeyCheck::Accepted,
            "nobody cut off"
        );
    }
    let claim = root
        .data(&format!("zenml-rotator/claims/{path}"), None)
        .await;
    assert_eq!(claim["phase"], "released", "{claim}");
}
