//! Retiring old keys, through the built binary against real ZenML, OpenBao and moto: strategy
//! `replace` end to end (the old key and every token minted from it die with the deactivation),
//! recovery from a crash between creating and storing a key, the guard that never deactivates the
//! stored key, `delete_after`, `retire_previous` under `rotate`, `[hygiene]` and `inventory`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{describe, run, run_expect, unique};
use serde_json::Value;
use uuid::Uuid;
use zenml_rotator::config::{AwsSettings, FileSettings, StoreSettings, VaultAuth, VaultSettings};
use zenml_rotator::secret::{ExposeSecret, SecretSource, SecretString};
use zenml_rotator::store::aws::AwsStore;
use zenml_rotator::store::{Payload, SecretStore};
use zenml_rotator::zenml::{
    ApiKey, KeyCheck, KeyFilter, ServiceAccount, ZenmlClient, key_id_from_value,
};

const PASSWORD_ENV: &str = "ZR_TEST_ZENML_PASSWORD";

/// Which store a test writes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Vault,
    Aws,
}

/// One test's policy file, state dir and metrics textfile, and the way to run the binary on them.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    kind: Kind,
}

fn store_section(kind: Kind, dir: &Path) -> String {
    match kind {
        Kind::File => format!(
            "[stores.main]\nkind = \"file\"\ndir = \"{}\"\n",
            dir.join("keys").display()
        ),
        Kind::Vault => format!(
            "[stores.main]\nkind = \"vault\"\naddress = \"{}\"\nauth = {{ method = \"token\", token_env = \"VAULT_TOKEN\" }}\n",
            common::vault().addr
        ),
        Kind::Aws => format!(
            "[stores.main]\nkind = \"aws-secrets-manager\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            common::aws_endpoint()
        ),
    }
}

impl Rig {
    /// `rest`: `[[key]]` tables (store "main") and any other section.
    fn new(kind: Kind, rest: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let z = common::zenml();
        let config = dir.path().join("zenml-rotator.toml");
        let text = format!(
            "[zenml]\nurl = \"{}\"\nusername = \"{}\"\npassword_env = \"{PASSWORD_ENV}\"\n\n\
             [state]\ndir = \"{}\"\n\n[metrics]\ntextfile = \"{}\"\n\n{}\n{rest}\n",
            z.url,
            z.admin,
            dir.path().join("state").display(),
            dir.path().join("metrics.prom").display(),
            store_section(kind, dir.path()),
        );
        std::fs::write(&config, text).unwrap();
        Rig { dir, config, kind }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = common::rotator(self.dir.path());
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env(PASSWORD_ENV, common::zenml().admin_password)
            .env("RUST_LOG", "info");
        match self.kind {
            Kind::Vault => {
                cmd.env("VAULT_TOKEN", common::vault().root_token);
            }
            Kind::Aws => {
                cmd.env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_EC2_METADATA_DISABLED", "true");
            }
            Kind::File => {}
        }
        cmd
    }

    fn run(&self, args: &[&str], code: i32) -> (String, Output) {
        let out = run_expect(&mut self.cmd(args), code);
        (String::from_utf8_lossy(&out.stdout).into_owned(), out)
    }

    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let mut cmd = self.cmd(&all);
        let out = run_expect(&mut cmd, code);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", describe(&cmd, &out)))
    }

    /// A sample from the textfile `once` wrote, e.g. `metric("zenml_rotator_pending_deactivations")`.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = std::fs::read_to_string(self.dir.path().join("metrics.prom")).ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    async fn store(&self) -> Arc<dyn SecretStore> {
        match self.kind {
            Kind::File => zenml_rotator::store::open(&StoreSettings::File(FileSettings {
                dir: self.dir.path().join("keys"),
            }))
            .await
            .unwrap(),
            Kind::Vault => {
                let token = self.dir.path().join("vault-token");
                std::fs::write(&token, common::vault().root_token).unwrap();
                zenml_rotator::store::open(&StoreSettings::Vault(VaultSettings {
                    address: common::vault().addr,
                    mount: "secret".into(),
                    namespace: None,
                    ca_file: None,
                    auth: VaultAuth::Token(SecretSource::File(token)),
                    timeout: Duration::from_secs(10),
                }))
                .await
                .unwrap()
            }
            Kind::Aws => Arc::new(
                AwsStore::connect_with_credentials(
                    &aws_settings(),
                    Duration::from_secs(10),
                    aws_sdk_secretsmanager::config::Credentials::new(
                        "test", "test", None, None, "t",
                    ),
                )
                .await
                .unwrap(),
            ),
        }
    }
}

fn aws_settings() -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(common::aws_endpoint()),
        kms_key_id: None,
        timeout: std::time::Duration::from_secs(30),
    }
}

fn replace_key(name: &str, sa: &str, path: &str, extra: &str) -> String {
    format!(
        "[[key]]\nname = \"{name}\"\nservice_account = \"{sa}\"\napi_key = \"default\"\nstore = \"main\"\n\
         path = \"{path}\"\nstrategy = \"replace\"\nevery = \"1h\"\n{extra}\n"
    )
}

async fn check(admin: &ZenmlClient, value: &SecretString) -> KeyCheck {
    admin.check_key(value).await.unwrap()
}

async fn keys(admin: &ZenmlClient, sa: &ServiceAccount) -> Vec<ApiKey> {
    admin
        .list_api_keys(sa.id, &KeyFilter::default())
        .await
        .unwrap()
}

async fn stored(store: &Arc<dyn SecretStore>, path: &str) -> SecretString {
    store
        .read_current(path)
        .await
        .unwrap()
        .expect("the store holds a value")
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_end_to_end_kills_the_old_key_and_every_token_from_it() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-e2e").await;
    let path = unique("zr-replace");
    let policy = "e2e";
    // 45 s: long enough for the checks below on a loaded 2-core machine, short enough to wait out.
    let rig = Rig::new(
        Kind::Vault,
        &replace_key(policy, &sa.name, &path, "retain = \"45s\""),
    );
    // A workload logged in with the seed key before any replacement.
    let token_before = admin.login_with_api_key(&seed.value).await.unwrap();

    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("rotated"), "{out}");
    let store = rig.store().await;
    let new_value = stored(&store, &path).await;
    let new_id = key_id_from_value(&new_value).unwrap();
    assert_ne!(new_id, seed.key.id);
    let new_key = admin.get_api_key(sa.id, &new_id.to_string()).await.unwrap();
    assert!(
        zenml_rotator::naming::is_generation("default", &new_key.name),
        "{}",
        new_key.name
    );
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.key_id, new_id.to_string());
    assert_eq!(record.retiring_key_id, Some(seed.key.id.to_string()));
    let retire_at = record.retire_at.unwrap();
    assert!(retire_at > Utc::now(), "{retire_at}");
    assert_eq!(rig.metric("zenml_rotator_pending_deactivations"), Some(1.0));
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_deactivation_due_timestamp_seconds{{policy=\"{policy}\"}}"
        )),
        Some(retire_at.timestamp() as f64)
    );

    // Inside the window: both keys work, and a login with the old one mints a token that, under
    // in-place rotation, would outlive the window.
    let inside = |what: &str| {
        assert!(
            Utc::now() < retire_at,
            "the window ended before {what}: the machine is too loaded for this test's timing"
        )
    };
    assert_eq!(check(&admin, &seed.value).await, KeyCheck::Accepted);
    let token_inside = admin.login_with_api_key(&seed.value).await.unwrap();
    assert_eq!(check(&admin, &new_value).await, KeyCheck::Accepted);
    inside("the old key was checked");

    // Invariant 1: no second replacement inside the window without --force.
    let (out, _) = rig.run(&["rotate", policy], 1);
    assert!(out.contains("refused"), "{out}");
    let plan = rig.json(&["plan"], 0);
    inside("plan");
    assert_eq!(plan[0]["action"], "wait", "{plan}");
    assert_eq!(plan[0]["api_key"], new_key.name.as_str(), "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains("stays active"),
        "{plan}"
    );
    assert_eq!(
        admin.check_token(&token_inside).await.unwrap(),
        KeyCheck::Accepted
    );
    inside("the token was checked");

    // After the window, a pass deactivates the old key: its value and every token die.
    let wait = (retire_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    let (out, _) = rig.run(&["once"], 0);
    assert!(
        out.contains("finalized") && out.contains("deactivated"),
        "{out}"
    );
    assert_eq!(check(&admin, &seed.value).await, KeyCheck::Rejected);
    assert_eq!(
        admin.check_token(&token_before).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(
        admin.check_token(&token_inside).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(check(&admin, &new_value).await, KeyCheck::Accepted);
    let old = admin
        .get_api_key(sa.id, &seed.key.id.to_string())
        .await
        .unwrap();
    assert!(!old.active);
    assert!(
        zenml_rotator::naming::deactivated_by_rotator(&old.description),
        "{}",
        old.description
    );
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_keys_deactivated_total{{policy=\"{policy}\",reason=\"retired\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(rig.metric("zenml_rotator_pending_deactivations"), Some(0.0));
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_deactivation_due_timestamp_seconds{{policy=\"{policy}\"}}"
        )),
        None
    );
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.retiring_key_id, None);
    assert!(record.finalized_at.is_some());
    // Nothing is left to do, and the stored key keeps working.
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("wait"), "{out}");
    assert_eq!(
        stored(&store, &path).await.expose_secret(),
        new_value.expose_secret()
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

/// `rotate --force` inside a window: a new key, and nobody cut off. Every replaced key stays
/// active until the new window ends; the record names the latest as retiring.
#[tokio::test(flavor = "multi_thread")]
async fn force_inside_the_window_replaces_and_keeps_every_older_key_alive() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-force").await;
    let path = unique("zr-force");
    let rig = Rig::new(
        Kind::File,
        &replace_key("force", &sa.name, &path, "retain = \"30m\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let first = stored(&store, &path).await;
    let first_id = key_id_from_value(&first).unwrap();
    let (out, _) = rig.run(&["rotate", "force"], 1);
    assert!(out.contains("refused") && out.contains("--force"), "{out}");
    // Key names carry the second: make sure the next one gets its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (out, _) = rig.run(&["rotate", "force", "--force"], 0);
    assert!(out.contains("rotated"), "{out}");
    let second = stored(&store, &path).await;
    let second_id = key_id_from_value(&second).unwrap();
    assert_ne!(second_id, first_id);
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.retiring_key_id, Some(first_id.to_string()));
    for value in [&seed.value, &first, &second] {
        assert_eq!(check(&admin, value).await, KeyCheck::Accepted);
    }
    let plan = rig.json(&["plan"], 0);
    let reason = plan[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("\"default\"") && reason.contains("keys"),
        "{reason}"
    );
    assert_eq!(
        keys(&admin, &sa).await.iter().filter(|k| k.active).count(),
        3
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_create_and_store_leaves_an_orphan_the_next_pass_removes() {
    let admin = common::zenml_admin();
    let (sa, _seed) = common::new_service_account_with_key(&admin, "replace-crash").await;
    let path = unique("zr-crash");
    let policy = "crash";
    let rig = Rig::new(
        Kind::Aws,
        &replace_key(policy, &sa.name, &path, "retain = \"1s\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    let current_id = key_id_from_value(&current).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // `rotate` first retires the seed (its 1 s window is over), then creates a key and dies.
    let mut crash = rig.cmd(&["rotate", policy]);
    crash.env("ZR_FAULT", "after_create");
    let out = run(&mut crash);
    assert_eq!(out.status.code(), Some(86), "{}", describe(&crash, &out));
    let orphan = keys(&admin, &sa)
        .await
        .into_iter()
        .find(|k| k.active && k.id != current_id)
        .unwrap_or_else(|| panic!("no orphan was created"));
    assert!(zenml_rotator::naming::is_generation(
        "default",
        &orphan.name
    ));
    // The store never saw it: the stored key still works.
    assert_eq!(
        key_id_from_value(&stored(&store, &path).await),
        Some(current_id)
    );
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);

    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains(&orphan.name),
        "{plan}"
    );
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("interrupted run"), "{out}");
    assert!(
        admin
            .get_api_key(sa.id, &orphan.id.to_string())
            .await
            .is_err(),
        "the orphan still exists"
    );
    assert_eq!(
        key_id_from_value(&stored(&store, &path).await),
        Some(current_id)
    );
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    assert_eq!(
        rig.metric(&format!(
            "zenml_rotator_keys_deactivated_total{{policy=\"{policy}\",reason=\"orphan\"}}"
        )),
        Some(1.0)
    );
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stored_key_is_never_deactivated_even_when_the_record_says_so() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-guard").await;
    let path = unique("zr-guard");
    let rig = Rig::new(
        Kind::File,
        &replace_key("guard", &sa.name, &path, "retain = \"2s\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    let current_id = key_id_from_value(&current).unwrap();
    // A record gone wrong: it names the seed current and the stored key as retiring, overdue.
    let mut record = store.inspect(&path).await.unwrap().record.unwrap();
    record.key_id = seed.key.id.to_string();
    record.retiring_key_id = Some(current_id.to_string());
    record.retire_at = Some(Utc::now() - chrono::Duration::minutes(1));
    store.set_record(&path, &record).await.unwrap();
    // Past every window the policy could promise for the key it now believes is retiring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (out, _) = rig.run(&["once"], 1);
    assert!(out.contains("refused to deactivate"), "{out}");
    let key = admin
        .get_api_key(sa.id, &current_id.to_string())
        .await
        .unwrap();
    assert!(key.active);
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

/// AWS promotes a value and tags its record in separate calls: a run that stops in between leaves
/// the store holding a newer key than its record names. That key must be adopted, not removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_value_stored_without_its_record_is_adopted_not_removed() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-adopt").await;
    let path = unique("zr-adopt");
    let rig = Rig::new(
        Kind::Aws,
        &replace_key("adopt", &sa.name, &path, "retain = \"30m\""),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let first = stored(&store, &path).await;
    let first_id = key_id_from_value(&first).unwrap();
    // What the interrupted run did: created a replacement, staged and promoted it, and stopped
    // before the record was written.
    let name = zenml_rotator::naming::generation_name("default", Utc::now());
    let newer = admin
        .create_api_key(
            sa.id,
            &name,
            "zenml-rotator: replacement key of policy \"adopt\"",
        )
        .await
        .unwrap();
    let snapshot = store.preflight(&path).await.unwrap();
    let old_record = snapshot.record.clone().unwrap();
    let token = Uuid::new_v4().to_string();
    let payload = Payload {
        zenml_url: common::zenml().url,
        api_key: newer.value.clone(),
    };
    store
        .stage(&path, &payload, &old_record, &snapshot, &token)
        .await
        .unwrap();
    store.promote(&path, &token, &snapshot).await.unwrap();
    assert_eq!(
        store.inspect(&path).await.unwrap().record.unwrap().key_id,
        first_id.to_string()
    );

    let plan = rig.json(&["plan"], 0);
    assert_eq!(plan[0]["action"], "finalize", "{plan}");
    assert!(
        plan[0]["reason"].as_str().unwrap().contains("record"),
        "{plan}"
    );
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("recorded key"), "{out}");
    let record = store.inspect(&path).await.unwrap().record.unwrap();
    assert_eq!(record.key_id, newer.key.id.to_string());
    assert_eq!(record.retiring_key_id, Some(first_id.to_string()));
    assert!(record.retire_at.unwrap() > Utc::now() + chrono::Duration::minutes(25));
    // Nothing was removed: the stored key works, and so does the one it replaced (its window).
    assert!(
        admin
            .get_api_key(sa.id, &newer.key.id.to_string())
            .await
            .unwrap()
            .active
    );
    assert_eq!(check(&admin, &newer.value).await, KeyCheck::Accepted);
    assert_eq!(check(&admin, &first).await, KeyCheck::Accepted);
    let _ = seed;
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivated_keys_are_deleted_after_delete_after() {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "replace-delete").await;
    let path = unique("zr-delete");
    let rig = Rig::new(
        Kind::File,
        &replace_key(
            "deleting",
            &sa.name,
            &path,
            "retain = \"2s\"\ndelete_after = \"30s\"",
        ),
    );
    rig.run(&["once"], 0);
    let store = rig.store().await;
    let current = stored(&store, &path).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("deactivated"), "{out}");
    let old = admin
        .get_api_key(sa.id, &seed.key.id.to_string())
        .await
        .unwrap();
    assert!(!old.active);
    // Not yet: deactivated less than 30 s ago.
    let (out, _) = rig.run(&["once"], 0);
    assert!(!out.contains("deleted"), "{out}");
    assert!(
        admin
            .get_api_key(sa.id, &seed.key.id.to_string())
            .await
            .is_ok()
    );
    let deletable_at = old.updated + chrono::Duration::seconds(31);
    tokio::time::sleep((deletable_at - Utc::now()).to_std().unwrap_or_default()).await;
    let (out, _) = rig.run(&["once"], 0);
    assert!(out.contains("deleted"), "{out}");
    assert!(
        admin
            .get_api_key(sa.id, &seed.key.id.to_string())
            .await
            .is_err()
    );
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    assert_eq!(keys(&admin, &sa).await.len(), 1);
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

/// Writes the seed key where the store path is, as someone else would (no rotator record).
async fn write_foreign(kind: Kind, path: &str, value: &SecretString) {
    let payload = Payload {
        zenml_url: common::zenml().url,
        api_key: value.clone(),
    }
    .to_json();
    match kind {
        Kind::Vault => {
            let v = common::vault();
            let body: Value = serde_json::from_str(payload.expose_secret()).unwrap();
            let status = reqwest::Client::new()
                .post(format!("{}/v1/secret/data/{path}", v.addr))
                .header("X-Vault-Token", v.root_token)
                .json(&serde_json::json!({ "data": body }))
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{status}");
        }
        Kind::Aws => {
            let client = aws_client().await;
            client
                .create_secret()
                .name(path)
                .secret_string(payload.expose_secret())
                .send()
                .await
                .unwrap();
        }
        Kind::File => unreachable!(),
    }
}

async fn aws_client() -> aws_sdk_secretsmanager::Client {
    zenml_rotator::http::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(common::aws_endpoint())
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "t",
        ))
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&sdk)
}

/// Strategy `rotate` with `retire_previous`: once the window is over and the previous value is
/// rejected, the store drops it (Vault destroys the version, AWS removes `AWSPREVIOUS`).
async fn retire_previous_on(kind: Kind) {
    let admin = common::zenml_admin();
    let (sa, seed) = common::new_service_account_with_key(&admin, "retire-prev").await;
    let path = unique("zr-retire-prev");
    write_foreign(kind, &path, &seed.value).await;
    let rig = Rig::new(
        kind,
        &format!(
            "[[key]]\nname = \"prev\"\nservice_account = \"{}\"\napi_key = \"default\"\nstore = \"main\"\n\
             path = \"{path}\"\nretain = \"1m\"\nevery = \"1h\"\nretire_previous = true\n",
            sa.name
        ),
    );
    // A value someone else wrote is taken over by the first rotation: `rotate` it now.
    let (out, _) = rig.run(&["rotate", "prev"], 0);
    assert!(out.contains("rotated"), "{out}");
    let store = rig.store().await;
    let previous = store
        .read_previous(&path)
        .await
        .unwrap()
        .expect("a previous value");
    assert_eq!(previous.expose_secret(), seed.value.expose_secret());
    let rotated = admin.get_api_key(sa.id, "default").await.unwrap();
    let window_end = rotated.last_rotated.unwrap() + chrono::Duration::seconds(62);
    let wait = (window_end - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    // ZenML may take a moment past the window; finalize refuses while the old value still works.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&mut rig.cmd(&["once"]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("finalized") {
            break;
        }
        assert!(Instant::now() < deadline, "never finalized: {text}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(check(&admin, &seed.value).await, KeyCheck::Rejected);
    assert!(store.read_previous(&path).await.unwrap().is_none());
    match kind {
        Kind::Vault => {
            let v = common::vault();
            let meta: Value = reqwest::Client::new()
                .get(format!("{}/v1/secret/metadata/{path}", v.addr))
                .header("X-Vault-Token", v.root_token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let versions = &meta["data"]["versions"];
            assert_eq!(versions["1"]["destroyed"], true, "{meta}");
            assert_eq!(versions["2"]["destroyed"], false, "{meta}");
        }
        Kind::Aws => {
            let described = aws_client()
                .await
                .describe_secret()
                .secret_id(&path)
                .send()
                .await
                .unwrap();
            let stages: Vec<String> = described
                .version_ids_to_stages()
                .map(|m| m.values().flatten().cloned().collect())
                .unwrap_or_default();
            assert!(!stages.iter().any(|s| s == "AWSPREVIOUS"), "{stages:?}");
            assert!(stages.iter().any(|s| s == "AWSCURRENT"), "{stages:?}");
        }
        Kind::File => unreachable!(),
    }
    // The current value is untouched.
    let current = stored(&store, &path).await;
    assert_eq!(check(&admin, &current).await, KeyCheck::Accepted);
    admin
        .delete_service_account(&sa.id.to_string())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retire_previous_destroys_the_previous_vault_version_after_the_window() {
    retire_previous_on(Kind::Vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retire_previous_removes_awsprevious_after_the_window() {
    retire_previous_on(Kind::Aws).await;
}

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
