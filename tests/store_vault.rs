//! The Vault KV v2 store against a real OpenBao: writes, check-and-set, take-over, permissions,
//! sealed and unreachable servers, the three auth methods and token renewal.
//! The root token only sets up fixtures (policies, tokens, auth mounts, foreign writes).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use zenml_rotator::config::{VaultAuth, VaultSettings};
use zenml_rotator::secret::{ExposeSecret, SecretSource, SecretString};
use zenml_rotator::store::vault::VaultStore;
use zenml_rotator::store::{Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot};

use common::private_bao::PrivateBao;
use common::stub_http::{StubReply, StubServer, forward};
use common::{unique, vault};

// ---------- fixtures ----------

/// Root-token requests that set up what a test needs.
struct Root {
    http: reqwest::Client,
    addr: String,
    token: String,
    namespace: Option<String>,
}

impl Root {
    fn new() -> Root {
        let v = vault();
        Root::at(&v.addr, &v.root_token)
    }

    fn at(addr: &str, token: &str) -> Root {
        zenml_rotator::http::install_crypto_provider();
        Root {
            http: reqwest::Client::new(),
            addr: addr.to_owned(),
            token: token.to_owned(),
            namespace: None,
        }
    }

    async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(ns) = &self.namespace {
            r = r.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.req(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {v}"
        );
        v
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.ok(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.ok(reqwest::Method::GET, path, None).await
    }

    async fn policy(&self, name: &str, hcl: &str) {
        self.ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A child token with these policies and options (ttl, renewable, explicit_max_ttl...).
    async fn token(&self, policies: &[&str], options: Value) -> String {
        let mut body = json!({ "policies": policies, "no_default_policy": false });
        if let (Some(b), Some(o)) = (body.as_object_mut(), options.as_object()) {
            b.extend(o.clone());
        }
        let v = self.post("auth/token/create", body).await;
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// The shipped policy, for every key under `<mount>/<prefix>/`.
    async fn rotator_policy(&self, mount: &str, prefix: &str) -> String {
        let name = unique("zr-rotator");
        self.policy(&name, &common::stores::shipped_vault_policy(mount, prefix))
            .await;
        name
    }

    /// A one-hour token holding only the rotator's policy on `prefix`.
    async fn rotator_token(&self, prefix: &str) -> String {
        let policy = self.rotator_policy("secret", prefix).await;
        self.token(&[&policy], json!({ "ttl": "1h" })).await
    }

    async fn write(&self, path: &str, data: Value) -> u64 {
        let v = self
            .post(&format!("secret/data/{path}"), json!({ "data": data }))
            .await;
        v["data"]["version"].as_u64().unwrap()
    }

    async fn metadata(&self, path: &str) -> Value {
        self.get(&format!("secret/metadata/{path}")).await["data"].clone()
    }

    async fn data(&self, path: &str, version: u64) -> (u16, Value) {
        self.req(
            reqwest::Method::GET,
            &format!("secret/data/{path}?version={version}"),
            None,
        )
        .await
    }
}

fn settings_at(addr: &str, auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        address: addr.to_owned(),
        mount: "secret".to_owned(),
        namespace: None,
        ca_file: None,
        auth,
        timeout: Duration::from_secs(10),
        claims: "zenml-rotator/claims".into(),
    }
}

fn settings(auth: VaultAuth) -> VaultSettings {
    settings_at(&vault().addr, auth)
}

/// A credential file as an operator keeps one: 0600 (other users' access is refused).
fn secret_file(dir: &Path, name: &str, value: &str) -> SecretSource {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    SecretSource::File(p)
}

fn token_auth(dir: &Path, token: &str) -> VaultAuth {
    VaultAuth::Token(secret_file(dir, "vault-token", token))
}

fn payload(key: &str) -> Payload {
    Payload {
        zenml_url: "https://zenml.example.com".to_owned(),
        api_key: SecretString::from(key.to_owned()),
    }
}

/// A record as the engine writes it (times on whole seconds, as stored).
fn record(key_id: &str) -> RotationRecord {
    let now = Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap();
    RotationRecord {
        policy: "training".into(),
        service_account: "training-pipelines".into(),
        api_key: "default".into(),
        key_id: key_id.into(),
        fingerprint: "0123abcd".into(),
        rotated_at: Some(now),
        retain_until: Some(now + chrono::Duration::minutes(60)),
        finalized_at: None,
        retiring_key_id: None,
        retire_at: None,
        rescue_for: None,
        rescue_until: None,
        hooks: Default::default(),
    }
}

fn secret_key() -> String {
    format!("ZENKEY_{}", unique("v").replace('-', "_"))
}

fn expose(v: Option<SecretString>) -> Option<String> {
    v.map(|s| s.expose_secret().to_owned())
}

/// The previous value, read both ways the store offers: through the path's metadata
/// (`read_previous`) and as the version before the one a snapshot says is current
/// (`read_previous_of`, what a finalize under the claim uses). They must agree.
async fn previous(store: &VaultStore, path: &str) -> Option<String> {
    let seen = store.inspect(path).await.unwrap();
    let by_metadata = expose(store.read_previous(path).await.unwrap());
    let by_version = expose(store.read_previous_of(path, &seen).await.unwrap());
    assert_eq!(
        by_metadata, by_version,
        "{path}: read_previous vs read_previous_of"
    );
    by_metadata
}

/// A store with a fresh rotator token on a fresh prefix: (store, prefix, token, tempdir).
async fn rotator_store(root: &Root) -> (VaultStore, String, String, tempfile::TempDir) {
    let prefix = unique("zr");
    let token = root.rotator_token(&prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings(token_auth(dir.path(), &token)))
        .await
        .unwrap();
    (store, prefix, token, dir)
}

/// One rotation as the engine drives it.
async fn rotate(store: &VaultStore, path: &str, key: &str, rec: &RotationRecord, token: &str) {
    let snap = store.preflight(path).await.unwrap();
    store
        .stage(path, &payload(key), rec, &snap, token)
        .await
        .unwrap();
    assert_eq!(
        expose(store.read_staged(path, token).await.unwrap()).as_deref(),
        Some(key)
    );
    store.promote(path, token, &snap).await.unwrap();
    // Promote and the read-back in one read: the same value, and the path's state exactly as
    // `inspect` sees it (the look after a rotation takes it from here).
    let back = store
        .promote_and_read_current(path, token, &snap)
        .await
        .unwrap();
    assert_eq!(expose(back.value).as_deref(), Some(key));
    let (read, now) = (
        back.snapshot.expect("a whole snapshot"),
        store.inspect(path).await.unwrap(),
    );
    assert_eq!(
        (read.exists, &read.version, &read.record, &read.written_by),
        (now.exists, &now.version, &now.record, &now.written_by),
        "{path}"
    );
    assert_eq!(
        (&read.pending, read.current_deleted, read.unwritable),
        (&now.pending, now.current_deleted, now.unwritable)
    );
    assert_eq!(now.written_by.as_deref(), Some(token));
}

// ---------- token auth: the whole life of a path ----------

#[tokio::test]
async fn token_auth_rotates_reads_back_and_keeps_the_previous_value() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/training");
    assert_eq!(store.kind(), "vault");

    let empty = store.inspect(&path).await.unwrap();
    assert!(!empty.exists && empty.version.is_none() && empty.record.is_none());

    // First rotation: create-only write.
    let snap = store.preflight(&path).await.unwrap();
    assert!(!snap.exists && snap.version.is_none());
    let key1 = secret_key();
    let rec1 = record("key-1");
    store
        .stage(&path, &payload(&key1), &rec1, &snap, "tok-1")
        .await
        .unwrap();
    assert_eq!(
        expose(store.read_staged(&path, "tok-1").await.unwrap()),
        Some(key1.clone())
    );
    store.promote(&path, "tok-1", &snap).await.unwrap();
    assert_eq!(
        expose(store.read_current(&path).await.unwrap()),
        Some(key1.clone())
    );
    assert_eq!(previous(&store, &path).await.map(|_| ()), None);

    let after = store.inspect(&path).await.unwrap();
    assert!(after.exists);
    assert_eq!(after.version.as_deref(), Some("1"));
    assert_eq!(after.record.as_ref(), Some(&rec1));
    assert!(after.pending.is_none());

    // What vault-agent / ESO see: exactly the two env names, and the record as custom_metadata.
    let (_, v1) = root.data(&path, 1).await;
    let data = v1["data"]["data"].as_object().unwrap();
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(data["ZENML_STORE_URL"], "https://zenml.example.com");
    assert_eq!(data["ZENML_STORE_API_KEY"], key1.as_str());
    let meta = root.metadata(&path).await;
    let custom = &meta["custom_metadata"];
    assert_eq!(custom["managed_by"], "zenml-rotator");
    assert_eq!(custom["service_account"], "training-pipelines");
    assert_eq!(custom["api_key"], "default");
    assert_eq!(custom["key_id"], "key-1");
    assert!(custom["rotated_at"].as_str().unwrap().ends_with('Z'));
    assert!(custom["retain_until"].is_string());

    // Second rotation: CAS against version 1; the first value stays readable as the previous.
    let key2 = secret_key();
    let rec2 = record("key-2");
    let snap2 = store.preflight(&path).await.unwrap();
    assert_eq!(snap2.version.as_deref(), Some("1"));
    store
        .stage(&path, &payload(&key2), &rec2, &snap2, "tok-2")
        .await
        .unwrap();
    store.promote(&path, "tok-2", &snap2).await.unwrap();
    assert_eq!(
        expose(store.read_current(&path).await.unwrap()),
        Some(key2.clone())
    );
    assert_eq!(previous(&store, &path).await, Some(key1.clone()));
    assert_eq!(
        store.inspect(&path).await.unwrap().record,
        Some(rec2.clone())
    );
    // Promoting an older rotation is refused: the path's last write is not its.
    assert!(matches!(
        store.promote(&path, "tok-1", &snap).await,
        Err(StoreError::Conflict { .. })
    ));

    // A retry of the same stage, and a replay after a fresh pre-flight, write no second copy.
    store
        .stage(&path, &payload(&key2), &rec2, &snap2, "tok-2")
        .await
        .unwrap();
    let fresh = store.preflight(&path).await.unwrap();
    assert_eq!(fresh.version.as_deref(), Some("2"));
    store
        .stage(&path, &payload(&key2), &rec2, &fresh, "tok-2")
        .await
        .unwrap();
    assert_eq!(root.metadata(&path).await["current_version"], 2);
    store.promote(&path, "tok-2", &fresh).await.unwrap();
    assert_eq!(previous(&store, &path).await, Some(key1.clone()));

    // set_record replaces the record; the stamp that promote checks survives it.
    let mut finalized = rec2.clone();
    finalized.finalized_at = Some(Utc.timestamp_opt(Utc::now().timestamp(), 0).unwrap());
    // `set_record_seen` says what the path is after the write, exactly as `inspect` reads it,
    // from what the caller saw before it (the shipped policy may patch: no read).
    let before = store.inspect(&path).await.unwrap();
    let seen = store
        .set_record_seen(&path, &finalized, Some(&before))
        .await
        .unwrap()
        .expect("a whole snapshot");
    let now = store.inspect(&path).await.unwrap();
    assert_eq!(now.record, Some(finalized));
    assert_eq!(
        (seen.exists, &seen.version, &seen.record, &seen.written_by),
        (now.exists, &now.version, &now.record, &now.written_by)
    );
    assert_eq!(
        (&seen.pending, seen.current_deleted, seen.unwritable),
        (&now.pending, now.current_deleted, now.unwritable)
    );
    assert_eq!(now.written_by.as_deref(), Some("tok-2"));
    store.promote(&path, "tok-2", &snap2).await.unwrap();
    store.discard_staged(&path, "tok-2").await.unwrap();

    // Empty fields are fine (Vault refuses empty custom_metadata values; they are left out).
    let sparse = RotationRecord {
        policy: "training".into(),
        ..Default::default()
    };
    store.set_record(&path, &sparse).await.unwrap();
    assert_eq!(store.inspect(&path).await.unwrap().record, Some(sparse));

    // Every request was timed.
    let metrics = zenml_rotator::metrics::get().render();
    for op in [
        "capabilities",
        "read_metadata",
        "write",
        "patch_metadata", // the shipped policy may patch the record in
        "read",
    ] {
        assert!(
            metrics.contains(&format!("operation=\"{op}\",upstream=\"vault\"")),
            "no {op} in\n{metrics}"
        );
    }
}

/// The record goes into `custom_metadata` as one merge patch where the token may patch (the
/// shipped policy), as a read and a whole write where it may not (a policy written before), and
/// falls back to the latter when the patch is refused after pre-flight said it was allowed. Each
/// way keeps an operator's own keys, removes record fields the new record leaves out and keeps
/// the stamp; each way's `set_record_seen` says what `inspect` reads.
#[tokio::test]
async fn the_record_is_patched_where_the_token_may_and_written_whole_where_not() {
    let root = Root::new();
    let vault_addr = vault().addr.clone();
    let proxy = StubServer::start(move |r| forward(&vault_addr, r)).await;
    for case in ["patch", "no patch", "patch revoked after pre-flight"] {
        let prefix = unique("zr-patch");
        let shipped = common::stores::shipped_vault_policy("secret", &prefix);
        let without_patch =
            shipped.replace(r#"["update", "read", "patch"]"#, r#"["update", "read"]"#);
        assert_ne!(
            shipped, without_patch,
            "the shipped policy grants patch on metadata"
        );
        let policy = unique("zr-patch");
        root.policy(
            &policy,
            if case == "no patch" {
                &without_patch
            } else {
                &shipped
            },
        )
        .await;
        let token = root.token(&[&policy], json!({ "ttl": "1h" })).await;
        let dir = tempfile::tempdir().unwrap();
        let store = VaultStore::connect(&settings_at(&proxy.url, token_auth(dir.path(), &token)))
            .await
            .unwrap();
        let path = format!("{prefix}/rec");
        root.post(
            &format!("secret/metadata/{path}"),
            json!({ "custom_metadata": { "owner": "team-a" } }),
        )
        .await;
        let mut rec = record("k1");
        rec.retire_at = rec.retain_until;
        rec.retiring_key_id = Some("k0".into());
        rotate(&store, &path, &secret_key(), &rec, "t1").await;
        if case == "patch revoked after pre-flight" {
            root.policy(&policy, &without_patch).await;
        }
        let mut finalized = record("k1");
        finalized.finalized_at = rec.rotated_at;
        let before = store.inspect(&path).await.unwrap();
        let from = proxy.requests().len();
        let seen = store
            .set_record_seen(&path, &finalized, Some(&before))
            .await
            .unwrap()
            .expect("a whole snapshot");
        let sent: Vec<String> = proxy.requests()[from..]
            .iter()
            .filter(|r| r.path().ends_with(&format!("/metadata/{path}")))
            .map(|r| r.method.clone())
            .collect();
        let expected: &[&str] = match case {
            "patch" => &["PATCH"],
            "no patch" => &["GET", "POST"],
            _ => &["PATCH", "GET", "POST"],
        };
        assert_eq!(sent, expected, "{case}: the record write");
        let now = store.inspect(&path).await.unwrap();
        assert_eq!(now.record.as_ref(), Some(&finalized), "{case}");
        assert_eq!(
            (seen.exists, &seen.version, &seen.record, &seen.written_by),
            (now.exists, &now.version, &now.record, &now.written_by),
            "{case}"
        );
        assert_eq!(
            (
                &seen.pending,
                seen.current_deleted,
                &seen.unwritable,
                &seen.warnings
            ),
            (
                &now.pending,
                now.current_deleted,
                &now.unwritable,
                &now.warnings
            ),
            "{case}"
        );
        assert_eq!(
            now.written_by.as_deref(),
            Some("t1"),
            "{case}: the stamp stays"
        );
        let custom = &root.metadata(&path).await["custom_metadata"];
        assert_eq!(custom["owner"], "team-a", "{case}: {custom}");
        assert!(custom.get("retire_at").is_none(), "{case}: {custom}");
        assert!(custom.get("retiring_key_id").is_none(), "{case}: {custom}");
        assert!(custom["finalized_at"].is_string(), "{case}: {custom}");
        // Once refused, the store does not patch this path again until a pre-flight says it may.
        if case == "patch revoked after pre-flight" {
            let from = proxy.requests().len();
            store.set_record(&path, &rec).await.unwrap();
            assert!(
                proxy.requests()[from..].iter().all(|r| r.method != "PATCH"),
                "patched again after a refusal"
            );
        }
        // A store that has pre-flighted nothing yet (a finalize first in a process) asks Vault
        // once whether it may patch, and that answer stands for the next path too; a pre-flight
        // of another path gives its own answer.
        if case != "patch revoked after pre-flight" {
            let other = format!("{prefix}/other");
            rotate(&store, &other, &secret_key(), &rec, "t2").await;
            let fresh =
                VaultStore::connect(&settings_at(&proxy.url, token_auth(dir.path(), &token)))
                    .await
                    .unwrap();
            // What one record write sent: its requests on the path's metadata, and how many
            // capability questions, with the paths each asked about.
            let record_write = |from: usize, of: &str| -> (Vec<String>, Vec<String>) {
                let sent = &proxy.requests()[from..];
                let on_metadata = sent
                    .iter()
                    .filter(|r| r.path().ends_with(&format!("/metadata/{of}")))
                    .map(|r| r.method.clone())
                    .collect();
                let asked = sent
                    .iter()
                    .filter(|r| r.path().ends_with("/sys/capabilities-self"))
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect();
                (on_metadata, asked)
            };
            let whole_or_patch: &[&str] = if case == "patch" {
                &["PATCH"]
            } else {
                &["GET", "POST"]
            };
            let from = proxy.requests().len();
            fresh.set_record(&path, &finalized).await.unwrap();
            let (written, asked) = record_write(from, &path);
            assert_eq!(written, whole_or_patch, "{case}: before any pre-flight");
            assert_eq!(asked.len(), 1, "{case}: one question first: {asked:?}");
            assert!(
                asked[0].contains(&format!("secret/metadata/{path}"))
                    && !asked[0].contains("/data/"),
                "{case}: about this path's metadata only: {asked:?}"
            );
            let from = proxy.requests().len();
            fresh.set_record(&other, &finalized).await.unwrap();
            let (written, asked) = record_write(from, &other);
            assert_eq!(written, whole_or_patch, "{case}: the next path");
            assert!(asked.is_empty(), "{case}: asked again: {asked:?}");
            assert_eq!(
                fresh.inspect(&other).await.unwrap().record.as_ref(),
                Some(&finalized),
                "{case}"
            );
            if case == "patch" {
                fresh.preflight(&other).await.unwrap();
                let from = proxy.requests().len();
                fresh.set_record(&path, &finalized).await.unwrap();
                assert_eq!(
                    record_write(from, &path).0,
                    ["PATCH"],
                    "after another path's pre-flight"
                );
            }
        }
    }
}

/// A key path may hold `#` and `?` (the policy file allows them, and so does Vault): each is part
/// of the path in every request, read with a version too. Sent in a URL parsed from one string,
/// `team#1?x` was the path `team` (the rest a fragment, never sent, or a query).
#[tokio::test]
async fn a_path_with_hash_and_question_mark_is_written_where_it_says() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/team#1?x");
    let (key1, key2) = (secret_key(), secret_key());
    rotate(&store, &path, &key1, &record("key-1"), "tok-1").await;
    rotate(&store, &path, &key2, &record("key-1"), "tok-2").await;
    assert_eq!(expose(store.read_current(&path).await.unwrap()), Some(key2));
    assert_eq!(previous(&store, &path).await, Some(key1));
    let encoded = format!("{prefix}/team%231%3Fx");
    let meta = root.metadata(&encoded).await;
    assert_eq!(meta["current_version"], 2, "{meta}");
    assert_eq!(
        meta["custom_metadata"]["managed_by"], "zenml-rotator",
        "{meta}"
    );
    let (status, _) = root
        .req(
            reqwest::Method::GET,
            &format!("secret/metadata/{prefix}/team"),
            None,
        )
        .await;
    assert_eq!(status, 404, "nothing may land at the path cut at `#`");
}

#[tokio::test]
async fn inspect_is_one_request() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/one");
    rotate(&store, &path, &secret_key(), &record("k"), "t").await;
    let count = || vault_op_count("read_metadata");
    let before = count();
    let total_before: u64 = vault_request_count();
    store.inspect(&path).await.unwrap();
    assert_eq!(count(), before + 1);
    assert_eq!(vault_request_count(), total_before + 1);
}

/// A rotation's write on top of another rotation's finished one sends no read first (the
/// check-and-set fences it); one that may find its own value there (a retry, a replay after a
/// fresh pre-flight of a write cut off before its stamp) still writes no second copy.
#[tokio::test]
async fn a_write_over_another_rotations_stamped_version_reads_nothing_first() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/stamped");
    rotate(&store, &path, &secret_key(), &record("k1"), "t1").await;
    let snap = store.preflight(&path).await.unwrap();
    assert_eq!(snap.version.as_deref(), Some("1"));
    assert_eq!(snap.written_by.as_deref(), Some("t1"));
    let data_reads = || vault_op_count("read");

    let (key2, rec2) = (secret_key(), record("k2"));
    let before = data_reads();
    store
        .stage(&path, &payload(&key2), &rec2, &snap, "t2")
        .await
        .unwrap();
    assert_eq!(data_reads(), before, "no read before the write");
    assert_eq!(root.metadata(&path).await["current_version"], 2);
    // A retry with the same pre-flight: the check-and-set fails, the conflict is read and the
    // value found ours.
    store
        .stage(&path, &payload(&key2), &rec2, &snap, "t2")
        .await
        .unwrap();
    assert_eq!(data_reads(), before + 1);
    assert_eq!(root.metadata(&path).await["current_version"], 2);
    store.promote(&path, "t2", &snap).await.unwrap();

    // A write cut off between the value and its stamp: version 3 holds it, the stamp still names
    // version 2. A replay after a fresh pre-flight reads first and finds it.
    let (key3, rec3) = (secret_key(), record("k3"));
    let cut = root
        .write(
            &path,
            json!({ "ZENML_STORE_URL": "https://zenml.example.com", "ZENML_STORE_API_KEY": key3 }),
        )
        .await;
    assert_eq!(cut, 3);
    let fresh = store.preflight(&path).await.unwrap();
    assert_eq!(fresh.version.as_deref(), Some("3"));
    assert_eq!(fresh.written_by, None, "the stamp names another version");
    store
        .stage(&path, &payload(&key3), &rec3, &fresh, "t3")
        .await
        .unwrap();
    assert_eq!(
        root.metadata(&path).await["current_version"],
        3,
        "no second copy"
    );
    store.promote(&path, "t3", &fresh).await.unwrap();
    assert_eq!(previous(&store, &path).await, Some(key2));
}

/// The Vault requests of one kind (`operation` label) this process has sent.
fn vault_op_count(op: &str) -> u64 {
    zenml_rotator::metrics::get()
        .upstream_request_duration_seconds
        .get_metric_with_label_values(&["vault", op])
        .unwrap()
        .get_sample_count()
}

fn vault_request_count() -> u64 {
    let families = zenml_rotator::metrics::get().registry.gather();
    families
        .iter()
        .filter(|f| f.name() == "zenml_rotator_upstream_request_duration_seconds")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "upstream" && l.value() == "vault")
        })
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

#[tokio::test]
async fn a_write_after_preflight_is_a_conflict_and_nothing_is_overwritten() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/raced");
    rotate(&store, &path, &secret_key(), &record("k1"), "t1").await;

    let snap = store.preflight(&path).await.unwrap();
    root.write(
        &path,
        json!({ "ZENML_STORE_API_KEY": "ZENKEY_someone_else" }),
    )
    .await;
    let err = store
        .stage(&path, &payload(&secret_key()), &record("k2"), &snap, "t2")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&path), "{err}");
    assert_eq!(root.metadata(&path).await["current_version"], 2);
    assert_eq!(
        expose(store.read_current(&path).await.unwrap()).as_deref(),
        Some("ZENKEY_someone_else")
    );

    // Created-only: a path that appeared after pre-flight saw nothing.
    let fresh = format!("{prefix}/appeared");
    let none = store.preflight(&fresh).await.unwrap();
    root.write(&fresh, json!({ "x": "y" })).await;
    let err = store
        .stage(&fresh, &payload(&secret_key()), &record("k"), &none, "t")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

    // A write on top of the rotator's own version after stage: promote refuses.
    let p3 = format!("{prefix}/promote");
    let s3 = store.preflight(&p3).await.unwrap();
    store
        .stage(&p3, &payload(&secret_key()), &record("k"), &s3, "t3")
        .await
        .unwrap();
    root.write(&p3, json!({ "x": "y" })).await;
    let err = store.promote(&p3, "t3", &s3).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn a_foreign_value_is_taken_over_and_kept_as_the_previous_version() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/handmade");
    root.write(
        &path,
        json!({ "ZENML_STORE_API_KEY": "ZENKEY_by_hand", "note": "set up by hand" }),
    )
    .await;
    root.post(
        &format!("secret/metadata/{path}"),
        json!({ "max_versions": 7, "cas_required": true, "custom_metadata": { "owner": "team-a" } }),
    )
    .await;

    let snap = store.inspect(&path).await.unwrap();
    assert!(snap.exists && snap.record.is_none());
    assert_eq!(snap.version.as_deref(), Some("1"));

    let key = secret_key();
    let rec = record("k");
    rotate(&store, &path, &key, &rec, "t").await;
    assert_eq!(
        expose(store.read_current(&path).await.unwrap()),
        Some(key.clone())
    );
    assert_eq!(
        previous(&store, &path).await.as_deref(),
        Some("ZENKEY_by_hand")
    );
    let (_, old) = root.data(&path, 1).await;
    assert_eq!(old["data"]["data"]["note"], "set up by hand");

    // The operator's metadata survives the rotator's record.
    let meta = root.metadata(&path).await;
    assert_eq!(meta["max_versions"], 7);
    assert_eq!(meta["cas_required"], true);
    assert_eq!(meta["custom_metadata"]["owner"], "team-a");
    assert_eq!(meta["custom_metadata"]["managed_by"], "zenml-rotator");
    assert_eq!(store.inspect(&path).await.unwrap().record, Some(rec));
}

#[tokio::test]
async fn retire_previous_destroys_only_the_previous_version() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/retire");
    // Nothing before the first version: a no-op.
    let first = secret_key();
    rotate(&store, &path, &first, &record("k1"), "t1").await;
    store.retire_previous(&path).await.unwrap();

    let second = secret_key();
    rotate(&store, &path, &second, &record("k2"), "t2").await;
    assert_eq!(previous(&store, &path).await, Some(first));
    store.retire_previous(&path).await.unwrap();
    let meta = root.metadata(&path).await;
    assert_eq!(meta["versions"]["1"]["destroyed"], true);
    assert_eq!(meta["versions"]["2"]["destroyed"], false);
    let (status, _) = root.data(&path, 1).await;
    assert_eq!(status, 404);
    assert_eq!(previous(&store, &path).await.map(|_| ()), None);
    assert_eq!(
        expose(store.read_current(&path).await.unwrap()),
        Some(second.clone())
    );
    // Idempotent.
    store.retire_previous(&path).await.unwrap();

    // Someone wrote on top of the rotator: "previous" is now the rotator's live value; keep it.
    root.write(&path, json!({ "x": "y" })).await;
    let err = store.retire_previous(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        root.metadata(&path).await["versions"]["2"]["destroyed"],
        false
    );
}

#[tokio::test]
async fn a_soft_deleted_previous_version_reads_as_none() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let path = format!("{prefix}/deleted");
    rotate(&store, &path, &secret_key(), &record("k1"), "t1").await;
    rotate(&store, &path, &secret_key(), &record("k2"), "t2").await;
    root.post(&format!("secret/delete/{path}"), json!({ "versions": [1] }))
        .await;
    assert_eq!(previous(&store, &path).await.map(|_| ()), None);
    // And a soft-deleted current version reads as none too.
    root.ok(
        reqwest::Method::DELETE,
        &format!("secret/data/{path}"),
        None,
    )
    .await;
    assert_eq!(store.read_current(&path).await.unwrap().map(|_| ()), None);
}

// ---------- permissions ----------

#[tokio::test]
async fn a_read_only_token_fails_preflight_naming_the_missing_capabilities() {
    let root = Root::new();
    let prefix = unique("zr-ro");
    let path = format!("{prefix}/key");
    let policy = unique("zr-readonly");
    root.policy(
        &policy,
        &format!(
            r#"
path "secret/data/{prefix}/*"     {{ capabilities = ["read"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["read"] }}
path "secret/data/zenml-rotator/claims/{prefix}/*" {{ capabilities = ["read"] }}
"#
        ),
    )
    .await;
    let token = root.token(&[&policy], json!({ "ttl": "1h" })).await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings(token_auth(dir.path(), &token)))
        .await
        .unwrap();
    // Reading is allowed...
    store.inspect(&path).await.unwrap();
    // ...writing is not, and pre-flight says what is missing where.
    let err = store.preflight(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{msg}");
    assert!(msg.contains("create, update"), "{msg}");
    assert!(msg.contains(&format!("secret/data/{prefix}/key")), "{msg}");
    assert!(
        msg.contains(&format!("secret/metadata/{prefix}/key")),
        "{msg}"
    );
    assert!(!msg.contains(&token));
}

#[tokio::test]
async fn a_token_allowed_elsewhere_fails_preflight() {
    let root = Root::new();
    let allowed = unique("zr-here");
    let policy = root.rotator_policy("secret", &allowed).await;
    let token = root.token(&[&policy], json!({ "ttl": "1h" })).await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings(token_auth(dir.path(), &token)))
        .await
        .unwrap();
    store.preflight(&format!("{allowed}/key")).await.unwrap();
    let elsewhere = format!("{}/key", unique("zr-there"));
    let err = store.preflight(&elsewhere).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains(&elsewhere), "{err}");
    assert!(err.to_string().contains("create, update, read"), "{err}");
}

/// A pass tells the store the paths it is about to look at: the first pre-flight asks Vault about
/// its own path and the next ones in one question, and each answer stands for its path's own
/// pre-flight once and for two seconds; after that the path is asked about again, and a
/// permission taken away in between is seen. A path the token may not touch, asked about ahead,
/// fails only its own pre-flight.
#[tokio::test]
async fn capabilities_are_asked_ahead_for_the_paths_a_pass_expects_and_stand_briefly() {
    let root = Root::new();
    let vault_addr = vault().addr.clone();
    let proxy = StubServer::start(move |r| forward(&vault_addr, r)).await;
    let prefix = unique("zr-ahead");
    let policy = root.rotator_policy("secret", &prefix).await;
    let token = root.token(&[&policy], json!({ "ttl": "1h" })).await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings_at(&proxy.url, token_auth(dir.path(), &token)))
        .await
        .unwrap();
    let elsewhere = format!("{}/key", unique("zr-there"));
    let [a, b, c] = ["a", "b", "c"].map(|k| format!("{prefix}/{k}"));
    store.expect_paths(vec![a.clone(), b.clone(), elsewhere.clone(), c.clone()]);
    let questions = |from: usize| -> Vec<String> {
        proxy.requests()[from..]
            .iter()
            .filter(|r| r.path().ends_with("/sys/capabilities-self"))
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    };

    let from = proxy.requests().len();
    store.preflight(&a).await.unwrap();
    let asked = questions(from);
    assert_eq!(asked.len(), 1, "{asked:?}");
    for p in [&a, &b, &c, &elsewhere] {
        assert!(
            asked[0].contains(&format!("secret/data/{p}\""))
                && asked[0].contains(&format!("secret/metadata/{p}\""))
                && asked[0].contains(&format!("secret/data/zenml-rotator/claims/{p}\"")),
            "{p} asked about ahead: {asked:?}"
        );
    }
    let from = proxy.requests().len();
    store.preflight(&b).await.unwrap();
    assert!(questions(from).is_empty(), "b's answer was asked ahead");
    let err = store.preflight(&elsewhere).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains(&elsewhere), "{err}");
    assert!(questions(from).is_empty(), "its answer too");
    let from = proxy.requests().len();
    store.preflight(&b).await.unwrap();
    assert_eq!(questions(from).len(), 1, "an answer serves one pre-flight");

    // Taken away after c's answer was asked ahead: seen once the answer is two seconds old.
    let read_only = common::stores::shipped_vault_policy("secret", &prefix)
        .replace(r#"["create", "update", "read"]"#, r#"["read"]"#);
    assert!(!read_only.contains("create"), "{read_only}");
    root.policy(&policy, &read_only).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let from = proxy.requests().len();
    let err = store.preflight(&c).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains(&c), "{err}");
    assert_eq!(questions(from).len(), 1, "asked again");
}

#[tokio::test]
async fn a_mount_that_is_not_kv_v2_is_refused() {
    let root = Root::new();
    let kv1 = unique("zr-kv1");
    root.post(
        &format!("sys/mounts/{kv1}"),
        json!({ "type": "kv", "options": { "version": "1" } }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(token_auth(dir.path(), &vault().root_token));
    s.mount = kv1.clone();
    let store = VaultStore::connect(&s).await.unwrap();
    let err = store.preflight("key").await.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("not KV version 2"), "{err}");

    // A folder inside the mount given as the mount.
    s.mount = "secret/zenml".into();
    let store = VaultStore::connect(&s).await.unwrap();
    let err = store.preflight("key").await.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("mount = \"secret\""), "{err}");
}

#[tokio::test]
async fn a_namespace_is_sent_with_every_request() {
    let mut root = Root::new();
    let ns = unique("zr-ns");
    root.post(&format!("sys/namespaces/{ns}"), json!({})).await;
    root.namespace = Some(ns.clone());
    root.post(
        "sys/mounts/kv",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(token_auth(dir.path(), &vault().root_token));
    s.mount = "kv".into();
    s.namespace = Some(ns.clone());
    let store = VaultStore::connect(&s).await.unwrap();
    let key = secret_key();
    rotate(&store, "app/key", &key, &record("k"), "t").await;
    let v = root.get("kv/data/app/key").await;
    assert_eq!(v["data"]["data"]["ZENML_STORE_API_KEY"], key.as_str());
    // Outside the namespace there is no such mount.
    root.namespace = None;
    let (status, _) = root
        .req(reqwest::Method::GET, "kv/data/app/key", None)
        .await;
    assert_ne!(status, 200);
}

// ---------- sealed, unreachable, TLS ----------

#[tokio::test]
async fn a_sealed_vault_is_unavailable_and_recovers_once_unsealed() {
    let bao = PrivateBao::start();
    let root = Root::at(&bao.addr, "root");
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings_at(&bao.addr, token_auth(dir.path(), "root")))
        .await
        .unwrap();
    store.preflight("zr/key").await.unwrap();

    root.ok(reqwest::Method::PUT, "sys/seal", None).await;
    let err = store.preflight("zr/key").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("sealed"), "{err}");
    assert!(matches!(
        store.inspect("zr/key").await,
        Err(StoreError::Unavailable { .. })
    ));
    // Logging in against a sealed server is unavailable too, not a credential problem.
    let sealed_connect =
        VaultStore::connect(&settings_at(&bao.addr, token_auth(dir.path(), "root"))).await;
    assert!(
        matches!(sealed_connect, Err(StoreError::Unavailable { .. })),
        "{:?}",
        sealed_connect.err()
    );

    root.ok(
        reqwest::Method::PUT,
        "sys/unseal",
        Some(json!({ "key": bao.unseal_key() })),
    )
    .await;
    store.preflight("zr/key").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_or_silent_vault_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = settings_at(
        &format!("http://127.0.0.1:{port}"),
        token_auth(dir.path(), "s.whatever"),
    );
    let store = VaultStore::new(&s).unwrap();
    let err = store.preflight("zr/key").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("cannot reach"), "{err}");

    // A server that accepts and never answers: the per-request timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let mut s = settings_at(
        &format!("http://{addr}"),
        token_auth(dir.path(), "s.whatever"),
    );
    s.timeout = Duration::from_secs(1);
    let store = VaultStore::new(&s).unwrap();
    let started = Instant::now();
    let err = store.inspect("zr/key").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8));
    hold.abort();
}

#[tokio::test]
async fn tls_with_an_extra_ca_file() {
    let bao = PrivateBao::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings_at(&bao.addr, token_auth(dir.path(), "root"));
    // Without the CA the server's certificate is not trusted.
    let err = VaultStore::connect(&s).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A CA file others may write is refused, naming the file: it could make the rotator trust
    // anyone's certificate.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bao.ca(), std::fs::Permissions::from_mode(0o666)).unwrap();
    s.ca_file = Some(bao.ca());
    let err = VaultStore::connect(&s).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "permissions 0666 for CA file {}",
            bao.ca().display()
        )) && err.contains("chmod o-w"),
        "{err}"
    );
    std::fs::set_permissions(bao.ca(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = VaultStore::connect(&s).await.unwrap();
    let key = secret_key();
    rotate(&store, "zr/tls", &key, &record("k"), "t").await;
    assert_eq!(
        expose(store.read_current("zr/tls").await.unwrap()),
        Some(key)
    );
}

// ---------- AppRole ----------

/// Enables AppRole on a fresh mount with a role for the rotator; returns (mount, role_id, secret_id).
async fn approle(root: &Root, prefix: &str, role_options: Value) -> (String, String, String) {
    let mount = unique("zr-approle");
    root.post(&format!("sys/auth/{mount}"), json!({ "type": "approle" }))
        .await;
    let policy = root.rotator_policy("secret", prefix).await;
    let mut role = json!({ "token_policies": [policy] });
    if let (Some(r), Some(o)) = (role.as_object_mut(), role_options.as_object()) {
        r.extend(o.clone());
    }
    root.post(&format!("auth/{mount}/role/rotator"), role).await;
    let role_id = root
        .get(&format!("auth/{mount}/role/rotator/role-id"))
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = root
        .post(&format!("auth/{mount}/role/rotator/secret-id"), json!({}))
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (mount, role_id, secret_id)
}

#[tokio::test]
async fn approle_logs_in_from_files_and_writes() {
    let root = Root::new();
    let prefix = unique("zr-ar");
    let (mount, role_id, secret_id) = approle(&root, &prefix, json!({ "token_ttl": "1h" })).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::AppRole {
        role_id: secret_file(dir.path(), "role-id", &role_id),
        secret_id: secret_file(dir.path(), "secret-id", &secret_id),
        mount: mount.clone(),
    };
    let store = VaultStore::connect(&settings(auth)).await.unwrap();
    let path = format!("{prefix}/key");
    let key = secret_key();
    rotate(&store, &path, &key, &record("k"), "t").await;
    assert_eq!(expose(store.read_current(&path).await.unwrap()), Some(key));

    // A wrong secret id is a permission problem, and its value is not in the message.
    let auth = VaultAuth::AppRole {
        role_id: secret_file(dir.path(), "role-id", &role_id),
        secret_id: secret_file(dir.path(), "bad-secret-id", "0f6a9d1e-wrong-secret-id"),
        mount,
    };
    let err = VaultStore::connect(&settings(auth)).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-secret-id"), "{err}");
    assert!(!format!("{err:?}").contains("wrong-secret-id"), "{err:?}");
}

#[tokio::test]
async fn approle_logs_in_again_once_its_token_expired() {
    let root = Root::new();
    let prefix = unique("zr-ar");
    // A 3s token whose max TTL leaves renewal nothing to extend.
    let (mount, role_id, secret_id) = approle(
        &root,
        &prefix,
        json!({ "token_ttl": "3s", "token_max_ttl": "3s" }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::AppRole {
        role_id: secret_file(dir.path(), "role-id", &role_id),
        secret_id: secret_file(dir.path(), "secret-id", &secret_id),
        mount,
    };
    let store = VaultStore::connect(&settings(auth)).await.unwrap();
    let path = format!("{prefix}/key");
    store.inspect(&path).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    // The first token is dead by now; this only works through a new login.
    let key = secret_key();
    rotate(&store, &path, &key, &record("k"), "t").await;
    // And through the 2/3 point of the second token, without waiting for it to die.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        store.inspect(&path).await.unwrap();
    }
}

// ---------- Kubernetes ----------

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A projected service-account token. OpenBao only decodes it (no `pem_keys` configured) and
/// leaves the verdict to the TokenReview, so the signature need not be real: only the RS256
/// header and the `kubernetes.io` claims matter.
fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let claims = json!({
        "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": Utc::now().timestamp() - 60,
        "nbf": Utc::now().timestamp() - 60,
        "aud": ["https://kubernetes.default.svc"],
        "exp": Utc::now().timestamp() + 3600,
        "kubernetes.io": { "namespace": namespace, "serviceaccount": { "name": name, "uid": uid } },
    });
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(b"not-a-real-signature")
    )
}

/// Answers TokenReview like the Kubernetes API server would, for exactly one token.
async fn token_review_stand_in(token: String, username: String, uid: String) -> String {
    use axum::http::{StatusCode, header};
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |body: String| {
            let (token, username, uid) = (token.clone(), username.clone(), uid.clone());
            async move {
                let review: Value = serde_json::from_str(&body).unwrap_or_default();
                let ok = review["spec"]["token"].as_str() == Some(token.as_str());
                // Like the API server, echo the audiences asked about (OpenBao checks them).
                let status = if ok {
                    json!({ "authenticated": true, "user": {
                        "username": username, "uid": uid,
                        "groups": ["system:serviceaccounts"] },
                        "audiences": review["spec"]["audiences"] })
                } else {
                    json!({ "authenticated": false, "error": "invalid token" })
                };
                let out = json!({ "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview", "status": status });
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    out.to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_logs_in_with_the_service_account_token() {
    let root = Root::new();
    let prefix = unique("zr-k8s");
    let (ns, sa, uid) = ("zenml", unique("rotator"), unique("uid"));
    let jwt = service_account_jwt(ns, &sa, &uid);
    let host = token_review_stand_in(
        jwt.clone(),
        format!("system:serviceaccount:{ns}:{sa}"),
        uid.clone(),
    )
    .await;

    let mount = unique("zr-k8s");
    root.post(
        &format!("sys/auth/{mount}"),
        json!({ "type": "kubernetes" }),
    )
    .await;
    // Without an in-cluster CA file OpenBao wants kubernetes_ca_cert; over http it is never used.
    let ca = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s-stand-in-ca.pem"),
    )
    .unwrap();
    root.post(
        &format!("auth/{mount}/config"),
        json!({ "kubernetes_host": host, "kubernetes_ca_cert": ca, "disable_local_ca_jwt": true }),
    )
    .await;
    let policy = root.rotator_policy("secret", &prefix).await;
    root.post(
        &format!("auth/{mount}/role/zenml-rotator"),
        json!({ "bound_service_account_names": [sa], "bound_service_account_namespaces": [ns],
                "token_policies": [policy], "token_ttl": "1h" }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let auth = VaultAuth::Kubernetes {
        role: "zenml-rotator".into(),
        jwt_file: jwt_file.clone(),
        mount: mount.clone(),
    };
    let store = VaultStore::connect(&settings(auth)).await.unwrap();
    let path = format!("{prefix}/key");
    let key = secret_key();
    rotate(&store, &path, &key, &record("k"), "t").await;
    assert_eq!(expose(store.read_current(&path).await.unwrap()), Some(key));

    // Another service account's token: the review says no, and so does OpenBao.
    let other = dir.path().join("other-token");
    std::fs::write(&other, service_account_jwt(ns, &sa, "another-uid")).unwrap();
    let auth = VaultAuth::Kubernetes {
        role: "zenml-rotator".into(),
        jwt_file: other,
        mount: mount.clone(),
    };
    let err = VaultStore::connect(&settings(auth)).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");

    // A missing token file names the file.
    let auth = VaultAuth::Kubernetes {
        role: "zenml-rotator".into(),
        jwt_file: dir.path().join("absent"),
        mount,
    };
    let err = VaultStore::connect(&settings(auth)).await.unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

// ---------- token renewal ----------

#[tokio::test]
async fn a_short_lived_renewable_token_is_renewed_through_a_long_run() {
    let root = Root::new();
    let prefix = unique("zr-renew");
    let policy = root.rotator_policy("secret", &prefix).await;
    let token = root
        .token(
            &[&policy],
            json!({ "ttl": "6s", "renewable": true, "explicit_max_ttl": "1h" }),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings(token_auth(dir.path(), &token)))
        .await
        .unwrap();
    let path = format!("{prefix}/key");
    let started = Instant::now();
    // Well past the 6s TTL: without renewal the token dies at 6s and these fail.
    while started.elapsed() < Duration::from_secs(11) {
        store.inspect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    rotate(&store, &path, &secret_key(), &record("k"), "t").await;
    let lookup = root
        .post("auth/token/lookup", json!({ "token": token }))
        .await;
    assert!(lookup["data"]["ttl"].as_u64().unwrap() > 0, "{lookup}");
}

#[tokio::test]
async fn an_unrenewable_static_token_is_reported_and_a_fresh_one_picked_up() {
    let root = Root::new();
    let prefix = unique("zr-static");
    let policy = root.rotator_policy("secret", &prefix).await;
    let token = root
        .token(&[&policy], json!({ "ttl": "3s", "renewable": false }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = token_auth(dir.path(), &token);
    let store = VaultStore::connect(&settings(auth)).await.unwrap();
    let path = format!("{prefix}/key");
    store.inspect(&path).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let err = store.inspect(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{msg}");
    assert!(msg.contains("expired and cannot be renewed"), "{msg}");
    assert!(msg.contains("vault-token"), "{msg}");
    assert!(!msg.contains(&token));

    // vault-agent (or an operator) puts a new token in the file: the store picks it up.
    let fresh = root.token(&[&policy], json!({ "ttl": "1h" })).await;
    token_auth(dir.path(), &fresh);
    store.inspect(&path).await.unwrap();
    rotate(&store, &path, &secret_key(), &record("k"), "t").await;
}

#[tokio::test]
async fn a_root_token_needs_no_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings(token_auth(dir.path(), &vault().root_token)))
        .await
        .unwrap();
    let before = vault_request_count();
    store.inspect(&unique("zr-root")).await.unwrap();
    // One request: no lookup or renewal rides along.
    assert_eq!(vault_request_count(), before + 1);
}

// ---------- secrets never shown ----------

#[tokio::test]
async fn tokens_and_values_never_reach_errors_or_debug_output() {
    let root = Root::new();
    let (store, prefix, token, dir) = rotator_store(&root).await;
    let shown = format!("{store:?}");
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("vault-token"), "{shown}");

    // A bad token: denied, without the token.
    let bogus = "s.ThisIsNotARealTokenButSecret123";
    let bad = VaultStore::new(&settings(token_auth(dir.path(), bogus))).unwrap();
    let err = bad.preflight(&format!("{prefix}/key")).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    for text in [err.to_string(), format!("{err:?}"), format!("{bad:?}")] {
        assert!(!text.contains(bogus), "{text}");
    }
    // connect says so at once, naming where the token came from.
    let err = VaultStore::connect(&settings(token_auth(dir.path(), bogus)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("vault-token"), "{err}");
    assert!(!err.to_string().contains(bogus), "{err}");

    // A conflict while writing a key: the key is not in the error.
    let path = format!("{prefix}/key");
    let snap: StoreSnapshot = store.preflight(&path).await.unwrap();
    root.write(&path, json!({ "x": "y" })).await;
    let key = secret_key();
    let err = store
        .stage(&path, &payload(&key), &record("k"), &snap, "t")
        .await
        .unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(&key), "{text}");
        assert!(!text.contains(&token), "{text}");
    }
}

/// Claims in Vault (KV v2 check-and-set on a claim document), with exactly the shipped policy:
/// what OpenBao enforces of the rules the coordination of rotators rests on.
#[tokio::test]
async fn claims_are_compare_and_set_on_openbao() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let store: std::sync::Arc<dyn SecretStore> = std::sync::Arc::new(store);
    common::claims::claims_are_compare_and_set(store, &format!("{prefix}/k")).await;
}

// ---------- what must not leak ----------

/// A claim document someone edited by hand, its value in a field of the wrong type: the error
/// says the document is not a claim and why in general, never quoting the field.
#[tokio::test]
async fn a_claim_with_a_value_in_the_wrong_field_is_refused_without_quoting_it() {
    let root = Root::new();
    let (store, prefix, _token, _dir) = rotator_store(&root).await;
    let value = format!("ZENKEY_{}", unique("misplaced"));
    let now = chrono::Utc::now();
    root.write(
        &format!("zenml-rotator/claims/{prefix}/k"),
        json!({
            "holder": "host/1/abcd",
            "policy": "k",
            "expires_at": now.to_rfc3339(),
            "since": now.to_rfc3339(),
            "phase": "rotated",
            "token": "t",
            "service_account_id": "sa",
            "key_id": "id",
            "retain_minutes": value,
            "value": value,
        }),
    )
    .await;
    let err = store
        .read_claim(&format!("{prefix}/k"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "not a claim document (a field missing, unknown or of the wrong type); remove it"
        ),
        "{err}"
    );
    assert!(!err.contains(&value), "{err}");
}

/// Vault answers that redirect are not followed: neither the token, nor a login's secret id, nor
/// the new key of a write reaches the server they point at.
#[tokio::test]
async fn redirects_are_not_followed_so_no_credential_reaches_another_server() {
    let elsewhere = StubServer::recorder().await;
    let dir = tempfile::tempdir().unwrap();
    for status in [301, 302, 307, 308] {
        for to in elsewhere.aliases() {
            let redirector = StubServer::start(move |r| StubReply::redirect(status, &to, r)).await;
            let token = format!("s.{}", unique("redirected-token"));
            let s = settings_at(&redirector.url, token_auth(dir.path(), &token));
            let err = VaultStore::connect(&s).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
            assert!(
                err.to_string().contains(&format!(
                    "HTTP {status}: Vault answered with a redirect (a standby node that does not forward requests?); the rotator follows none, so that neither the token nor a key reaches another server"
                )),
                "{err}"
            );
            assert!(!err.to_string().contains(&token), "{err}");
            let sent = redirector.requests();
            assert_eq!(sent[0].header("x-vault-token"), Some(token.as_str()));

            let auth = VaultAuth::AppRole {
                role_id: secret_file(dir.path(), "role-id", "a-role-id"),
                secret_id: secret_file(dir.path(), "secret-id", "redirected-secret-id"),
                mount: "approle".into(),
            };
            let err = VaultStore::connect(&settings_at(&redirector.url, auth))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
            assert!(
                redirector
                    .requests()
                    .iter()
                    .any(|r| r.body_text().contains("redirected-secret-id"))
            );
        }
    }
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}

/// In front of the real OpenBao, a proxy that redirects only the write of a new value: the login
/// and the pre-flight reach the real server, the new key goes nowhere else, and the write fails.
#[tokio::test]
async fn a_redirected_write_of_a_new_key_fails_and_the_key_goes_nowhere_else() {
    let root = Root::new();
    let prefix = unique("zr-redirect");
    let token = root.rotator_token(&prefix).await;
    let elsewhere = StubServer::recorder().await;
    let (to, upstream) = (elsewhere.url.clone(), vault().addr);
    let proxy = StubServer::start(move |r| {
        if r.method == "POST" && r.path().starts_with("/v1/secret/data/") {
            StubReply::redirect(307, &to, r)
        } else {
            forward(&upstream, r)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = VaultStore::connect(&settings_at(&proxy.url, token_auth(dir.path(), &token)))
        .await
        .unwrap();
    let path = format!("{prefix}/key");
    let snapshot = store.preflight(&path).await.unwrap();
    let key = secret_key();
    let err = store
        .stage(&path, &payload(&key), &record("k"), &snapshot, "t")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 307"), "{err}");
    let write = proxy
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path().ends_with(&path))
        .unwrap();
    assert!(
        write.body_text().contains(&key),
        "the write reached the proxy"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was followed: {:?}",
        elsewhere.requests()
    );
    assert_eq!(expose(store.read_current(&path).await.unwrap()), None);
}

/// A token file other users may read is refused before anything is sent; the owner's own file
/// that its group may read too works (with a warning).
#[tokio::test]
async fn a_token_file_other_users_may_read_is_refused_before_any_request() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let auth = token_auth(dir.path(), &vault().root_token);
    let VaultAuth::Token(SecretSource::File(file)) = &auth else {
        unreachable!()
    };
    let listener = StubServer::recorder().await;
    for mode in [0o644, 0o604] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = VaultStore::connect(&settings_at(&listener.url, auth.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "vault login secret/: cannot read a Vault credential: permissions {mode:04o} for {0} are too open: a credential file must not be accessible by other users; run chmod o-rwx {0}",
                file.display()
            )
        );
    }
    assert!(listener.requests().is_empty(), "a request went out");
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640)).unwrap();
    VaultStore::connect(&settings(auth)).await.unwrap();
}
