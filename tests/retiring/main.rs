//! Retiring old keys, through the built binary against real ZenML, OpenBao and moto: strategy
//! `replace` end to end (the old key and every token minted from it die with the deactivation),
//! recovery from a crash between creating and storing a key, the guard that never deactivates the
//! stored key, `delete_after`, `retire_previous` under `rotate`, `[hygiene]` and `inventory`. One test
//! binary with a module per subject.

#[path = "../common/mod.rs"]
mod common;

mod hygiene;
mod inventory;
mod replace;
mod retire_previous;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
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

/// For the leak check: the state directory and the metrics textfile the runs left.
impl Drop for Rig {
    fn drop(&mut self) {
        common::transcript::tree(&self.dir.path().join("state"));
        common::transcript::file(&self.dir.path().join("metrics.prom"));
    }
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
        // A file store's directory is its owner's alone (another one is refused).
        std::fs::set_permissions(
            dir.path().join("keys"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
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
                std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
                zenml_rotator::store::open(&StoreSettings::Vault(VaultSettings {
                    address: common::vault().addr,
                    mount: "secret".into(),
                    namespace: None,
                    ca_file: None,
                    auth: VaultAuth::Token(SecretSource::File(token)),
                    timeout: Duration::from_secs(10),
                    claims: "zenml-rotator/claims".into(),
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
        claims: "zenml-rotator/claims".into(),
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
