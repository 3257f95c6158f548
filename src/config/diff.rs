//! What a reload changes for the policies: a pure comparison of two validated configs. The daemon
//! builds a new engine from the new file whatever changed; this tells it which per-policy state
//! (backoff, next due time, metric series) to drop or create.

use std::collections::BTreeMap;

use super::{Config, KeyPolicy};

/// The policies a reload adds, removes or changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// Policies only in the new file, in its order.
    pub added: Vec<String>,
    /// Policies only in the old file, in its order.
    pub removed: Vec<String>,
    /// Policies in both whose settings differ, or whose store's settings differ (the same key
    /// written somewhere else is a changed policy), in the new file's order.
    pub changed: Vec<String>,
}

impl ConfigChange {
    /// No policy was added, removed or changed (the rest of the file may still differ).
    pub fn is_empty(&self) -> bool {
        *self == ConfigChange::default()
    }
}

/// Compares two configs. Pure: no I/O, no clock.
pub fn diff(old: &Config, new: &Config) -> ConfigChange {
    let old_keys: BTreeMap<&str, &KeyPolicy> =
        old.keys.iter().map(|k| (k.name.as_str(), k)).collect();
    let new_keys: BTreeMap<&str, &KeyPolicy> =
        new.keys.iter().map(|k| (k.name.as_str(), k)).collect();
    let store_changed =
        |o: &KeyPolicy, n: &KeyPolicy| old.stores.get(&o.store) != new.stores.get(&n.store);
    let mut change = ConfigChange::default();
    for k in &new.keys {
        match old_keys.get(k.name.as_str()) {
            None => change.added.push(k.name.clone()),
            Some(o) if *o != k || store_changed(o, k) => change.changed.push(k.name.clone()),
            Some(_) => {}
        }
    }
    for k in &old.keys {
        if !new_keys.contains_key(k.name.as_str()) {
            change.removed.push(k.name.clone());
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::validate::{Context, parse};
    use super::*;

    const BASE: &str = r#"
[zenml]
url = "https://zenml.example.com"
api_key_env = "ZENML_STORE_API_KEY"

[stores.vault]
kind = "vault"
address = "https://vault.example.com:8200"
auth = { method = "token", token_env = "VAULT_TOKEN" }

[stores.local]
kind = "file"
dir = "/etc/zenml-rotator/keys"

[[key]]
name = "training"
service_account = "training-pipelines"
api_key = "default"
store = "vault"
path = "zenml/training"

[[key]]
name = "serving"
service_account = "serving"
api_key = "default"
store = "local"
path = "serving.env"
"#;

    fn config(src: &str) -> Config {
        let ctx = Context {
            now: chrono::Utc::now(),
            state_directory: None,
        };
        match parse(src, Path::new("test.toml"), &ctx) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n--- source ---\n{src}"),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn table_of_reloads() {
        struct Case {
            what: &'static str,
            edit: fn(&str) -> String,
            expect: ConfigChange,
        }
        let cases = [
            Case {
                what: "nothing but a comment",
                edit: |s| format!("# reloaded\n{s}"),
                expect: ConfigChange::default(),
            },
            Case {
                what: "a key added",
                edit: |s| {
                    format!(
                        "{s}\n[[key]]\nname = \"eval\"\nservice_account = \"eval\"\napi_key = \"k\"\nstore = \"local\"\npath = \"eval.env\"\n"
                    )
                },
                expect: ConfigChange {
                    added: names(&["eval"]),
                    ..Default::default()
                },
            },
            Case {
                what: "a key removed",
                edit: |s| {
                    s.split("[[key]]\nname = \"serving\"")
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                },
                expect: ConfigChange {
                    removed: names(&["serving"]),
                    ..Default::default()
                },
            },
            Case {
                what: "a key renamed is one removed and one added",
                edit: |s| s.replace("name = \"serving\"", "name = \"inference\""),
                expect: ConfigChange {
                    added: names(&["inference"]),
                    removed: names(&["serving"]),
                    ..Default::default()
                },
            },
            Case {
                what: "a key's cadence changed",
                edit: |s| {
                    s.replace(
                        "path = \"zenml/training\"",
                        "path = \"zenml/training\"\nevery = \"7d\"",
                    )
                },
                expect: ConfigChange {
                    changed: names(&["training"]),
                    ..Default::default()
                },
            },
            Case {
                what: "a default changed reaches every key",
                edit: |s| format!("[defaults]\nretain = \"2h\"\n{s}"),
                expect: ConfigChange {
                    changed: names(&["training", "serving"]),
                    ..Default::default()
                },
            },
            Case {
                what: "a store's settings changed: its keys change with it",
                edit: |s| s.replace("dir = \"/etc/zenml-rotator/keys\"", "dir = \"/srv/keys\""),
                expect: ConfigChange {
                    changed: names(&["serving"]),
                    ..Default::default()
                },
            },
            Case {
                what: "an unused store added changes no policy",
                edit: |s| format!("{s}\n[stores.aws]\nkind = \"aws-secrets-manager\"\n"),
                expect: ConfigChange::default(),
            },
            Case {
                what: "zenml credentials moved to a file change no policy",
                edit: |s| {
                    s.replace(
                        "api_key_env = \"ZENML_STORE_API_KEY\"",
                        "api_key_file = \"/run/k\"",
                    )
                },
                expect: ConfigChange::default(),
            },
            Case {
                what: "a metrics listener moved changes no policy",
                edit: |s| format!("[metrics]\nlisten = \"0.0.0.0:9464\"\n{s}"),
                expect: ConfigChange::default(),
            },
            Case {
                what: "state dir, daemon pacing, concurrency and hygiene change no policy",
                edit: |s| {
                    format!(
                        "[state]\ndir = \"/srv/state\"\n[daemon]\nsafety_pass = \"1m\"\n[defaults]\nconcurrency = 8\n[hygiene]\n{s}"
                    )
                },
                expect: ConfigChange::default(),
            },
        ];
        let old = config(BASE);
        for case in cases {
            let new = config(&(case.edit)(BASE));
            let got = diff(&old, &new);
            assert_eq!(got, case.expect, "{}", case.what);
            assert_eq!(
                got.is_empty(),
                case.expect == ConfigChange::default(),
                "{}",
                case.what
            );
        }
    }
}
