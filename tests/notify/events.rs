//! The events of a pass over good and broken keys: at a signed webhook and in the audit file.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use zenml_rotator::secret::ExposeSecret;

use crate::common::rig::Rig;
use crate::common::stores::{VaultAdmin, payload_of};
use crate::common::stub_http::{StubReply, StubServer};
use crate::common::{new_service_account_with_key, unique, zenml_admin};
use crate::{
    HOOK_SECRET, HOOK_SECRET_ENV, assert_no_value, assert_shape, audit_lines, fingerprint,
    stored_value,
};

fn signed(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_over_good_and_broken_keys_is_signed_to_the_webhook_and_audited() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "nt-events").await;
    let old = old.value.expose_secret().to_owned();
    let receiver = StubServer::start(|_| StubReply::json(200, "{}")).await;
    // A Vault token that may read but not write: that key's pass fails at pre-flight.
    let root = VaultAdmin::shared();
    let prefix = unique("nt-denied");
    let (denied_sa, denied_key) = new_service_account_with_key(&admin, "nt-denied").await;
    let read_only = root.token_with(&prefix, &["read", "list"]).await;
    let mut rig = Rig::new();
    let audit = rig.path().join("audit").join("events.jsonl");
    rig.env(HOOK_SECRET_ENV, HOOK_SECRET)
        .section(&format!(
            "[[notify]]\nurl = \"{}/zenml\"\nevents = [\"rotated\", \"finalized\", \"deactivated\", \
             \"recovered\", \"revoked\", \"failed\", \"blocked\", \"hook_failed\"]\n\
             secret_env = {HOOK_SECRET_ENV:?}\n",
            receiver.url
        ))
        .section(&format!("[[notify]]\npath = {:?}\n", audit.display().to_string()))
        .file_store("local")
        .vault_store("vault", &root.addr, &read_only)
        .key("good", &sa.name, "local", "good.env", "")
        .key("gone", &unique("nt-no-such-account"), "local", "gone.env", "")
        .key("denied", &denied_sa.name, "vault", &format!("{prefix}/denied"), "");
    rig.write();
    let ran = rig.expect(&["once", "--output", "json"], 1);
    let new = stored_value(&rig, "good.env");

    let requests = receiver.requests();
    let mut bodies = Vec::new();
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/zenml");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("x-zenml-rotator-signature"),
            Some(signed(&r.body).as_str()),
            "the signature is the HMAC-SHA256 of the body as sent"
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_shape(&body);
        bodies.push(body);
    }
    let by = |event: &str, policy: &str| -> Value {
        bodies
            .iter()
            .find(|b| b["event"] == event && b["policy"] == policy)
            .unwrap_or_else(|| {
                panic!(
                    "no {event} event of {policy} in {bodies:#?}\n{}",
                    ran.describe()
                )
            })
            .clone()
    };
    let rotated = by("rotated", "good");
    assert_eq!(rotated["service_account"], sa.name.as_str());
    assert_eq!(rotated["api_key"], "default");
    let key = admin.get_api_key(sa.id, "default").await.unwrap();
    assert_eq!(rotated["key_id"], key.id.to_string().as_str());
    assert_eq!(rotated["fingerprint"], fingerprint(&new).as_str());
    assert_eq!(rotated["detail"], "rotation stored and verified");
    assert!(
        ran.stderr.contains("rotation stored and verified"),
        "the same sentence as the log line"
    );

    let blocked = by("blocked", "gone");
    assert!(
        blocked["fingerprint"].is_null() && blocked["key_id"].is_null(),
        "{blocked}"
    );
    assert!(
        blocked["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{blocked}"
    );
    let failed = by("failed", "denied");
    assert_eq!(failed["service_account"], denied_sa.name.as_str());
    assert!(failed["fingerprint"].is_null(), "{failed}");
    assert_eq!(bodies.len(), 3, "one event per outcome: {bodies:#?}");

    // The audit file holds every event of the pass, in the same words.
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        assert_shape(line);
        assert!(
            bodies.iter().any(|b| b == line),
            "audited but not sent: {line}"
        );
    }
    let denied_value = denied_key.value.expose_secret().to_owned();
    let everything = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(&audit).unwrap(),
        requests
            .iter()
            .map(|r| r.body_text())
            .collect::<Vec<_>>()
            .join("\n"),
        requests
            .iter()
            .map(|r| format!("{:?}", r.headers))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_no_value("events", &everything, &[&old, &new, &denied_value]);
    assert!(
        !everything.contains(HOOK_SECRET),
        "the webhook secret was sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_fails_once_gets_one_delivery() {
    let admin = zenml_admin();
    let (sa, _) = new_service_account_with_key(&admin, "nt-retry").await;
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let receiver = StubServer::start(move |_| {
        match answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => StubReply::json(500, r#"{"error":"try again"}"#),
            _ => StubReply::json(200, "{}"),
        }
    })
    .await;
    let mut rig = Rig::new();
    let textfile = rig.path().join("metrics.prom");
    rig.section(&format!(
        "[[notify]]\nurl = \"{}/slack\"\nformat = \"slack\"\nevents = [\"rotated\"]\n",
        receiver.url
    ))
    .section(&format!(
        "[metrics]\ntextfile = {:?}\n",
        textfile.display().to_string()
    ))
    .file_store("local")
    .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    let ran = rig.expect(&["once"], 0);
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        2,
        "one failure, one delivery\n{}",
        ran.describe()
    );
    assert_eq!(
        requests[0].body, requests[1].body,
        "the retry sends the same event"
    );
    assert!(
        requests[0].header("x-zenml-rotator-signature").is_none(),
        "no secret, no signature"
    );
    let text: Value = serde_json::from_slice(&requests[1].body).unwrap();
    let text = text["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("zenml-rotator rotated: policy k, service account ")
            && text.ends_with(": rotation stored and verified"),
        "{text}"
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("zenml_rotator_notifications_failed_total{sink=\"notify[0]\"} 0"),
        "{metrics}"
    );
    assert!(!ran.stderr.contains("given up"), "{}", ran.describe());
}

/// The later steps of a key's life reach the audit trail as well, each as one line with the nine
/// fields and no value: a recovery (a `rotate --force` that died before ZenML answered, and the
/// rotation done by hand), and a retain after a `replace` rotation, the old key's deactivation
/// and the finalize.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_deactivation_and_finalize_reach_the_audit_trail() {
    let admin = zenml_admin();
    let root = VaultAdmin::shared();
    let prefix = unique("nt-later");
    let token = root.rotator_token(&prefix).await;
    let (healed_sa, healed_first) = new_service_account_with_key(&admin, "nt-heal").await;
    let (replaced_sa, replaced_first) = new_service_account_with_key(&admin, "nt-repl").await;
    let (healed_path, replaced_path) = (format!("{prefix}/healed"), format!("{prefix}/replaced"));
    let mut rig = Rig::new();
    let audit = rig.path().join("audit.jsonl");
    rig.default_line("retain = \"1m\"")
        .section(&format!(
            "[[notify]]\npath = {:?}\n",
            audit.display().to_string()
        ))
        .vault_store("vault", &root.addr, &token)
        .key("healed", &healed_sa.name, "vault", &healed_path, "")
        .key(
            "replaced",
            &replaced_sa.name,
            "vault",
            &replaced_path,
            "strategy = \"replace\"",
        );
    rig.write();
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(
        ran.results_of("replaced"),
        ["rotated"],
        "{}",
        ran.describe()
    );
    let replaced_at = chrono::Utc::now();

    let mut cmd = rig.cmd(&["rotate", "healed", "--force"]);
    cmd.env("ZR_FAULT", "before_rotate");
    let out = crate::common::run(&mut cmd);
    assert_eq!(out.status.code(), Some(86), "the simulated crash");
    let lost = admin
        .rotate_api_key(healed_sa.id, "default", 1)
        .await
        .unwrap();
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(
        ran.results_of("healed"),
        ["recovered"],
        "{}",
        ran.describe()
    );
    let rescue = payload_of(&root.data(&healed_path, None).await.to_string()).1;

    let wait = (replaced_at + chrono::Duration::seconds(65) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(
        ran.results_of("replaced")[0],
        "finalized",
        "{}",
        ran.describe()
    );

    let lines = audit_lines(&audit);
    lines.iter().for_each(assert_shape);
    let find = |event: &str, policy: &str| -> Value {
        lines
            .iter()
            .find(|l| l["event"] == event && l["policy"] == policy)
            .unwrap_or_else(|| panic!("no {event} line of {policy} in {lines:#?}"))
            .clone()
    };
    let recovered = find("recovered", "healed");
    assert_eq!(recovered["service_account"], healed_sa.name.as_str());
    assert_eq!(recovered["fingerprint"], fingerprint(&rescue).as_str());
    let deactivated = find("deactivated", "replaced");
    assert_eq!(deactivated["service_account"], replaced_sa.name.as_str());
    assert_eq!(deactivated["api_key"], "default", "the replaced key");
    let first_id = admin
        .get_api_key(replaced_sa.id, "default")
        .await
        .unwrap()
        .id;
    assert_eq!(deactivated["key_id"], first_id.to_string().as_str());
    let finalized = find("finalized", "replaced");
    assert_eq!(finalized["service_account"], replaced_sa.name.as_str());
    assert_eq!(finalized["api_key"], "default");

    let replaced_now = payload_of(&root.data(&replaced_path, None).await.to_string()).1;
    assert_no_value(
        "the audit file",
        &std::fs::read_to_string(&audit).unwrap(),
        &[
            healed_first.value.expose_secret(),
            replaced_first.value.expose_secret(),
            lost.value.expose_secret(),
            &rescue,
            &replaced_now,
        ],
    );
}
