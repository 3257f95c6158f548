//! Invariant 4: a rotation logged at `RUST_LOG=trace`, into each store, leaves no key material and
//! no credential in stdout, stderr or the state dir: not the old or the new key value (nor the
//! secret half inside a `ZENKEY_`), not the admin password, the Vault token or the AWS secret key.

use base64::Engine as _;
use serde_json::json;
use zenml_rotator::secret::ExposeSecret;

use crate::common::rig::{Ran, Rig};
use crate::common::stores::{VaultAdmin, aws, aws_value, env_file, payload_of};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml, zenml_admin};

/// The strings that must never appear: each key value, and the 64-hex secret inside it (a
/// decoded value in a log would leak it too).
fn key_needles(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim_start_matches("ZENKEY_"))
        .unwrap();
    let inner: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
    out.push(inner["key"].as_str().unwrap().to_owned());
    out
}

/// Everything the run wrote where people or tools read: stdout, stderr and every file under the
/// state dir (the journal included).
fn assert_nothing_leaked(rig: &Rig, ran: &Ran, needles: &[(&str, String)]) {
    let mut haystacks = vec![
        ("stdout".to_owned(), ran.stdout.clone()),
        ("stderr".to_owned(), ran.stderr.clone()),
    ];
    for (name, (_, bytes)) in crate::common::stores::file_state(&rig.state_dir()) {
        haystacks.push((
            format!("state/{name}"),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for (what, needle) in needles {
        assert!(needle.len() >= 16, "{what} is too short to search for");
        for (where_, text) in &haystacks {
            assert!(
                !text.contains(needle.as_str()),
                "{what} appears in {where_} ({} bytes of output at trace)",
                text.len()
            );
        }
    }
    assert!(rig.journal_files().is_empty(), "the journal file is gone");
    // The run did log at trace: an empty stderr would prove nothing.
    assert!(
        ran.stderr.contains("TRACE"),
        "no trace output:\n{}",
        &ran.stderr[..ran.stderr.len().min(2000)]
    );
}

fn trace_rotate(rig: &mut Rig) -> Ran {
    rig.env("RUST_LOG", "trace");
    let ran = rig.expect(&["rotate", "k", "--output", "json"], 0);
    assert_eq!(ran.results_of("k"), ["rotated"], "{}", ran.describe());
    ran
}

fn common_needles(rig: &Rig, old: &str, new: &str) -> Vec<(&'static str, String)> {
    let mut needles = vec![
        ("the admin password", zenml().admin_password),
        (
            "the AWS secret access key",
            rig.aws_secret_access_key.clone(),
        ),
    ];
    for n in key_needles(old) {
        needles.push(("the old key value", n));
    }
    for n in key_needles(new) {
        needles.push(("the new key value", n));
    }
    needles
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_is_logged_at_trace_file_store() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-leak-file").await;
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    let ran = trace_rotate(&mut rig);
    let new = env_file(&std::fs::read_to_string(rig.keys_dir().join("k.env")).unwrap())
        ["ZENML_STORE_API_KEY"]
        .clone();
    assert_nothing_leaked(
        &rig,
        &ran,
        &common_needles(&rig, old.value.expose_secret(), &new),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_is_logged_at_trace_vault() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-leak-vault").await;
    let old = old.value.expose_secret().to_owned();
    let root = VaultAdmin::shared();
    let prefix = unique("eng-leak");
    let path = format!("{prefix}/k");
    let token = root.rotator_token(&prefix).await;
    // A taken-over value, so the old key is read back from the store too (previous version).
    root.write(
        &path,
        json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": old }),
    )
    .await;
    let mut rig = Rig::new();
    rig.vault_store("vault", &root.addr, &token)
        .key("k", &sa.name, "vault", &path, "");
    rig.write();
    let ran = trace_rotate(&mut rig);
    let (_, new) = payload_of(&root.data(&path, None).await.to_string());
    let mut needles = common_needles(&rig, &old, &new);
    needles.push(("the Vault token", token));
    assert_nothing_leaked(&rig, &ran, &needles);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_is_logged_at_trace_aws() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-leak-aws").await;
    let old = old.value.expose_secret().to_owned();
    let client = aws().await;
    let name = unique("eng-leak-aws");
    client
        .create_secret()
        .name(&name)
        .secret_string(
            json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": old }).to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut rig = Rig::new();
    rig.aws_store("aws", &aws_endpoint())
        .key("k", &sa.name, "aws", &name, "");
    rig.write();
    let ran = trace_rotate(&mut rig);
    let (_, new) = payload_of(&aws_value(&client, &name, "AWSCURRENT").await.unwrap());
    assert_nothing_leaked(&rig, &ran, &common_needles(&rig, &old, &new));
}
