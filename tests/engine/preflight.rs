//! Invariant 2: a destination that is not writable right now stops the key before ZenML changes
//! anything. Each case fails at stage `preflight` with exit 1; ZenML's `last_rotated` stays as it
//! was and the workload's current value keeps logging in.

use serde_json::json;
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::KeyCheck;

use crate::common::private_bao::PrivateBao;
use crate::common::rig::{Rig, failed_at};
use crate::common::stores::{VaultAdmin, aws, check, zenml_state};
use crate::common::stub_http::{StubReply, StubServer};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml, zenml_admin};

/// Runs `args` (a pass or a rotate of policy `k`), expects a pre-flight failure, and checks that
/// ZenML is untouched and `old` still logs in. Returns the failure's detail.
async fn refused_before_rotating(rig: &Rig, args: &[&str], sa: uuid::Uuid, old: &str) -> String {
    let admin = zenml_admin();
    let before = zenml_state(&admin, sa).await;
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let ran = rig.expect(&all, 1);
    let detail = failed_at(&ran, "k", "preflight");
    assert_eq!(zenml_state(&admin, sa).await, before, "ZenML changed");
    assert!(
        crate::key_now(&admin, sa).await.last_rotated.is_none(),
        "last_rotated moved"
    );
    assert_eq!(check(&admin, old).await, KeyCheck::Accepted);
    assert!(rig.journal_files().is_empty(), "{:?}", rig.journal_names());
    detail
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_token_without_write_permission_fails_preflight() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-ro").await;
    let root = VaultAdmin::shared();
    let prefix = unique("eng-ro");
    // It may read (so the key can be observed) but neither create nor update.
    let token = root.token_with(&prefix, &["read", "list"]).await;
    let mut rig = Rig::new();
    rig.vault_store("vault", &root.addr, &token).key(
        "k",
        &sa.name,
        "vault",
        &format!("{prefix}/k"),
        "",
    );
    rig.write();
    let detail = refused_before_rotating(&rig, &["once"], sa.id, old.value.expose_secret()).await;
    assert!(detail.contains("permission denied"), "{detail}");
    assert!(detail.contains("create"), "names what is missing: {detail}");
    assert_eq!(
        root.metadata(&format!("{prefix}/k")).await,
        serde_json::Value::Null
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_vault_fails_preflight() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-sealed").await;
    let bao = PrivateBao::start();
    bao.seal().await;
    let mut rig = Rig::new();
    rig.vault_store("vault", &bao.addr, "root")
        .key("k", &sa.name, "vault", "zr/k", "");
    rig.write();
    let detail = refused_before_rotating(&rig, &["once"], sa.id, old.value.expose_secret()).await;
    assert!(detail.contains("sealed"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_secret_scheduled_for_deletion_fails_preflight() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-deleted").await;
    let old = old.value.expose_secret().to_owned();
    let client = aws().await;
    let name = unique("eng-deleted");
    client
        .create_secret()
        .name(&name)
        .secret_string(
            json!({ "ZENML_STORE_URL": zenml().url, "ZENML_STORE_API_KEY": old }).to_string(),
        )
        .send()
        .await
        .unwrap();
    client
        .delete_secret()
        .secret_id(&name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let mut rig = Rig::new();
    rig.aws_store("aws", &aws_endpoint())
        .key("k", &sa.name, "aws", &name, "");
    rig.write();
    // `rotate`: the secret holds a value, so a pass would not find the key due.
    let detail = refused_before_rotating(&rig, &["rotate", "k"], sa.id, &old).await;
    assert!(detail.contains("scheduled for deletion"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_endpoint_that_never_answers_fails_preflight() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-silent").await;
    // The kernel completes the handshake into the backlog; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut rig = Rig::new();
    rig.aws_store("aws", &endpoint)
        .key("k", &sa.name, "aws", &unique("eng-silent"), "");
    rig.write();
    let started = std::time::Instant::now();
    let detail = refused_before_rotating(&rig, &["once"], sa.id, old.value.expose_secret()).await;
    println!(
        "silent AWS endpoint: the pass gave up after {:?}",
        started.elapsed()
    );
    assert!(detail.contains("unavailable"), "{detail}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_store_directory_other_users_may_enter_fails_preflight() {
    use std::os::unix::fs::PermissionsExt;
    let (_, sa, old, rig) = crate::file_store_key("eng-open-dir").await;
    std::fs::create_dir(rig.keys_dir()).unwrap();
    std::fs::set_permissions(rig.keys_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let detail = refused_before_rotating(&rig, &["once"], sa.id, old.value.expose_secret()).await;
    assert_eq!(
        detail,
        format!(
            "preflight: file preflight k.env: permissions 0755 for file store directory {0} are too open: a directory that holds keys must not be accessible by other users; run chmod o-rwx {0}",
            rig.keys_dir().display()
        )
    );
    assert_eq!(std::fs::read_dir(rig.keys_dir()).unwrap().count(), 0);
}

/// A Vault whose every answer redirects elsewhere: the key is refused before ZenML rotates it,
/// and the server pointed at never hears from the rotator (no token, no key).
#[tokio::test(flavor = "multi_thread")]
async fn a_vault_that_redirects_fails_preflight_and_nothing_goes_elsewhere() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "eng-redirect").await;
    let elsewhere = StubServer::recorder().await;
    let to = elsewhere.url.replace("127.0.0.1", "localhost");
    let redirector = StubServer::start(move |r| StubReply::redirect(307, &to, r)).await;
    let token = format!("s.{}", unique("eng-redirect"));
    let mut rig = Rig::new();
    rig.vault_store("vault", &redirector.url, &token)
        .key("k", &sa.name, "vault", "zr/k", "");
    rig.write();
    let detail = refused_before_rotating(&rig, &["once"], sa.id, old.value.expose_secret()).await;
    assert!(
        detail.contains("Vault answered with a redirect"),
        "{detail}"
    );
    assert!(!redirector.requests().is_empty());
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}
