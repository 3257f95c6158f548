//! One fault test's world: keys of fresh service accounts in one store (Vault or AWS, the shared
//! servers or private ones), the rig that runs the binary on them, and what "nothing lost" means
//! once the faults are over: every stored value logs in, no claim is held, no journal entry is
//! left, and `plan` blocks nothing.

use std::path::PathBuf;

use serde_json::Value;
use zenml_rotator::zenml::{KeyCheck, ServiceAccount};

use crate::common::rig::{Ran, Rig};
use crate::common::stores::{VaultAdmin, aws_at, aws_value, check};
use crate::common::transcript;
use crate::common::{new_service_account_with_key, unique, zenml_admin};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vault,
    Aws,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vault => "vault",
            Kind::Aws => "aws",
        }
    }
}

/// Where the store's server is, and how the test reads it behind the rotator's back.
pub struct StoreAt {
    /// Vault: the address the rotator uses (maybe a proxy) and the root client (the server itself).
    pub vault: Option<(String, VaultAdmin)>,
    /// AWS: the endpoint the rotator uses (maybe a proxy) and the one the test reads (moto itself).
    pub aws: Option<(String, String)>,
}

impl StoreAt {
    pub fn shared(kind: Kind) -> StoreAt {
        match kind {
            Kind::Vault => {
                let root = VaultAdmin::shared();
                StoreAt::vault(&root.addr.clone(), root)
            }
            Kind::Aws => {
                let endpoint = crate::common::aws_endpoint();
                StoreAt::aws(&endpoint, &endpoint)
            }
        }
    }

    pub fn vault(rotator_addr: &str, root: VaultAdmin) -> StoreAt {
        StoreAt {
            vault: Some((rotator_addr.to_owned(), root)),
            aws: None,
        }
    }

    pub fn aws(rotator_endpoint: &str, moto: &str) -> StoreAt {
        StoreAt {
            vault: None,
            aws: Some((rotator_endpoint.to_owned(), moto.to_owned())),
        }
    }
}

pub struct Key {
    pub policy: String,
    pub sa: ServiceAccount,
    pub key_id: String,
    pub path: String,
}

pub struct World {
    pub store: StoreAt,
    pub rig: Rig,
    pub keys: Vec<Key>,
    /// The Vault token the rotator uses (the shipped policy, for the keys' prefix).
    pub token: Option<String>,
    pub textfile: PathBuf,
    /// A client on the moto the test reads (AWS worlds).
    aws: Option<aws_sdk_secretsmanager::Client>,
}

/// How a world is set up besides its keys.
pub struct Setup<'a> {
    pub tag: &'a str,
    pub keys: usize,
    /// ZenML through this URL (a proxy) instead of directly.
    pub zenml_url: Option<&'a str>,
    /// `[defaults]` lines.
    pub defaults: &'a [&'a str],
    /// More tables, as written.
    pub sections: &'a [&'a str],
    /// More lines in the store's table.
    pub store_extra: &'a str,
}

impl Setup<'_> {
    pub fn new(tag: &str, keys: usize) -> Setup<'_> {
        Setup {
            tag,
            keys,
            zenml_url: None,
            defaults: &[],
            sections: &[],
            store_extra: "",
        }
    }
}

impl World {
    pub async fn new(store: StoreAt, setup: Setup<'_>) -> World {
        let admin = zenml_admin();
        let accounts = futures_util::future::join_all(
            (0..setup.keys).map(|_| new_service_account_with_key(&admin, setup.tag)),
        )
        .await;
        let prefix = unique(setup.tag);
        let mut rig = Rig::new();
        if let Some(url) = setup.zenml_url {
            rig.zenml_url(url);
        }
        for line in setup.defaults {
            rig.default_line(line);
        }
        let textfile = rig.path().join("metrics.prom");
        rig.section(&format!(
            "[metrics]\ntextfile = {:?}\nlisten = \"127.0.0.1:0\"",
            textfile.display().to_string()
        ));
        for s in setup.sections {
            rig.section(s);
        }
        let mut token = None;
        match (&store.vault, &store.aws) {
            (Some((addr, root)), _) => {
                let t = root.rotator_token(&prefix).await;
                rig.vault_store_with("store", addr, &t, setup.store_extra);
                token = Some(t);
            }
            (None, Some((endpoint, _))) => {
                rig.aws_store_with("store", endpoint, setup.store_extra);
            }
            (None, None) => unreachable!("a store"),
        }
        let keys: Vec<Key> = accounts
            .into_iter()
            .enumerate()
            .map(|(i, (sa, key))| Key {
                policy: format!("k{i:02}"),
                key_id: key.key.id.to_string(),
                path: format!("{prefix}/k{i:02}"),
                sa,
            })
            .collect();
        for k in &keys {
            rig.key(&k.policy, &k.sa.name, "store", &k.path, "");
        }
        rig.write();
        let aws = match &store.aws {
            Some((_, moto)) => Some(aws_at(moto).await),
            None => None,
        };
        World {
            store,
            rig,
            keys,
            token,
            textfile,
            aws,
        }
    }

    /// The key value stored for `key`, if any.
    pub async fn stored(&self, key: &Key) -> Option<String> {
        let raw = match (&self.store.vault, &self.aws) {
            (Some((_, root)), _) => {
                let data = root.data(&key.path, None).await;
                if data.is_null() {
                    return None;
                }
                data.to_string()
            }
            (None, Some(client)) => aws_value(client, &key.path, "AWSCURRENT").await?,
            (None, None) => return None,
        };
        // The URL is the one the rotator was given (here often a proxy), so only the key counts.
        transcript::secrets_in(raw.as_bytes());
        let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON: {e}"));
        v["ZENML_STORE_API_KEY"].as_str().map(str::to_owned)
    }

    /// The claim on `key`, as the store keeps it (`Null`: none).
    pub async fn claim(&self, key: &Key) -> Value {
        let name = format!("zenml-rotator/claims/{}", key.path);
        match (&self.store.vault, &self.aws) {
            (Some((_, root)), _) => root.data(&name, None).await,
            (None, Some(client)) => match aws_value(client, &name, "AWSCURRENT").await {
                Some(raw) => serde_json::from_str(&raw).unwrap_or(Value::Null),
                None => Value::Null,
            },
            (None, None) => Value::Null,
        }
    }

    /// Runs `args` with more environment (a fault point), expecting exit `code`.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)], code: i32) -> Ran {
        let mut cmd = self.rig.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = crate::common::run(&mut cmd);
        let ran = Ran::new(&cmd, out);
        assert_eq!(
            ran.output.status.code(),
            Some(code),
            "expected exit {code}\n{}",
            ran.describe()
        );
        crate::no_panic("the rotator", &ran.stderr);
        ran
    }

    /// The `metrics.prom` the last `once` or `rotate` wrote.
    pub fn textfile(&self) -> String {
        std::fs::read_to_string(&self.textfile).unwrap_or_default()
    }

    /// `plan --output json`, parsed.
    pub fn plan(&self) -> (Ran, Value) {
        let ran = self.rig.expect(&["plan", "--output", "json"], 0);
        let rows = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("plan is not JSON ({e})\n{}", ran.describe()));
        (ran, rows)
    }

    /// Nothing lost: every key's stored value logs in, no claim is held, the journal is empty, and
    /// `plan` blocks no key.
    pub async fn assert_nothing_lost(&self) {
        let admin = zenml_admin();
        let mut refused = Vec::new();
        let mut held = Vec::new();
        for k in &self.keys {
            match self.stored(k).await {
                Some(v) if check(&admin, &v).await == KeyCheck::Accepted => {}
                Some(_) => refused.push(format!("{}: refused", k.policy)),
                None => refused.push(format!("{}: nothing stored", k.policy)),
            }
            let claim = self.claim(k).await;
            if !(claim.is_null() || claim["phase"] == "released") {
                held.push(format!("{}: {}", k.policy, claim["phase"]));
            }
        }
        let (ran, rows) = self.plan();
        let why = |policy: &str| {
            let row = rows
                .as_array()
                .and_then(|r| r.iter().find(|r| r["policy"] == policy));
            row.map(|r| format!("{}: {}", r["action"], r["reason"]))
                .unwrap_or_default()
        };
        let refused: Vec<String> = refused
            .iter()
            .map(|r| format!("{r} (plan: {})", why(r.split(':').next().unwrap_or(""))))
            .collect();
        assert!(refused.is_empty(), "stored values lost: {refused:#?}");
        assert!(held.is_empty(), "claims left over: {held:?}");
        assert!(
            self.rig.journal_files().is_empty(),
            "journal entries left over: {:?}",
            self.rig.journal_names()
        );
        let blocked: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "blocked")
            .map(|r| format!("{}: {}", r["policy"], r["reason"]))
            .collect();
        assert!(
            blocked.is_empty(),
            "blocked: {blocked:?}\n{}",
            ran.describe()
        );
    }
}
