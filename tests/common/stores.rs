//! What the engine tests read and set up behind the rotator's back: Vault paths through the root
//! token, AWS secrets through a plain SDK client, file-store bytes, and ZenML key state. Snapshots
//! are plain values, so "nothing changed" is an `assert_eq!` of two of them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Credentials;
use aws_smithy_http_client::tls;
use serde_json::{Value, json};
use uuid::Uuid;
use zenml_rotator::secret::SecretString;
use zenml_rotator::zenml::{KeyCheck, ZenmlClient};

use super::{aws_endpoint, unique, zenml};

// ---------- Vault ----------

/// Requests against a Vault/OpenBao server with a privileged token (fixtures and read-backs).
pub struct VaultAdmin {
    http: reqwest::Client,
    pub addr: String,
    token: String,
}

impl VaultAdmin {
    pub fn new(addr: &str, token: &str) -> VaultAdmin {
        zenml_rotator::http::install_crypto_provider();
        VaultAdmin {
            http: reqwest::Client::new(),
            addr: addr.to_owned(),
            token: token.to_owned(),
        }
    }

    /// The shared server of `scripts/peers.sh`.
    pub fn shared() -> VaultAdmin {
        let v = super::vault();
        VaultAdmin::new(&v.addr, &v.root_token)
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        super::transcript::secrets_in(text.as_bytes());
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.req(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status}: {v}"
        );
        v
    }

    /// Writes `data` as a new version of `secret/<path>` (a value the rotator did not write).
    pub async fn write(&self, path: &str, data: Value) -> u64 {
        let v = self
            .ok(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await;
        v["data"]["version"].as_u64().unwrap()
    }

    /// `secret/metadata/<path>`'s `data`, or `Null` when nothing is there.
    pub async fn metadata(&self, path: &str) -> Value {
        let (status, v) = self
            .req(
                reqwest::Method::GET,
                &format!("secret/metadata/{path}"),
                None,
            )
            .await;
        match status {
            200 => v["data"].clone(),
            404 => Value::Null,
            _ => panic!("metadata {path} -> {status}: {v}"),
        }
    }

    /// One version's `data` (`None`: the current one), or `Null` when absent.
    pub async fn data(&self, path: &str, version: Option<u64>) -> Value {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let (status, v) = self
            .req(
                reqwest::Method::GET,
                &format!("secret/data/{path}{q}"),
                None,
            )
            .await;
        match status {
            200 => v["data"]["data"].clone(),
            404 => Value::Null,
            _ => panic!("data {path} -> {status}: {v}"),
        }
    }

    /// Everything a read-only command must leave as it was: metadata (versions, times, custom
    /// metadata) and the current data.
    pub async fn state(&self, path: &str) -> Value {
        json!({ "metadata": self.metadata(path).await, "data": self.data(path, None).await })
    }

    /// A token whose only policy allows `capabilities` on `secret/data/<prefix>/*` and
    /// `secret/metadata/<prefix>/*`.
    pub async fn token_with(&self, prefix: &str, capabilities: &[&str]) -> String {
        let name = unique("zr-engine");
        let caps = serde_json::to_string(capabilities).unwrap();
        let hcl = format!(
            "path \"secret/data/{prefix}/*\" {{ capabilities = {caps} }}\n\
             path \"secret/metadata/{prefix}/*\" {{ capabilities = {caps} }}\n\
             path \"secret/data/zenml-rotator/claims/{prefix}/*\" {{ capabilities = {caps} }}\n"
        );
        self.ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
        let v = self
            .ok(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": [name], "ttl": "1h" })),
            )
            .await;
        let token = v["auth"]["client_token"].as_str().unwrap().to_owned();
        super::transcript::secret(&token);
        token
    }

    /// A token with exactly the policy `deploy/vault/zenml-rotator.hcl` ships, for the keys
    /// under `secret/<prefix>/`.
    pub async fn rotator_token(&self, prefix: &str) -> String {
        let name = unique("zr-engine");
        self.ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": shipped_vault_policy("secret", prefix) })),
        )
        .await;
        let v = self
            .ok(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": [name], "ttl": "1h" })),
            )
            .await;
        let token = v["auth"]["client_token"].as_str().unwrap().to_owned();
        super::transcript::secret(&token);
        token
    }

    pub async fn seal(&self) {
        self.ok(reqwest::Method::PUT, "sys/seal", None).await;
    }

    pub async fn unseal(&self, key: &str) {
        let v = self
            .ok(
                reqwest::Method::PUT,
                "sys/unseal",
                Some(json!({ "key": key })),
            )
            .await;
        assert_eq!(v["sealed"], false, "{v}");
    }

    /// The shell command that seals this server (for `ZR_FAULT_EXEC`).
    pub fn seal_command(&self) -> String {
        format!(
            "curl -sf -X PUT -H 'X-Vault-Token: {}' {}/v1/sys/seal",
            self.token, self.addr
        )
    }
}

// ---------- AWS (moto) ----------

/// A plain SDK client on moto: "someone else" creating, deleting and reading secrets.
pub async fn aws() -> Client {
    aws_at(&aws_endpoint()).await
}

/// The same, on the moto at `endpoint` (a private one, or a proxy in front of it).
pub async fn aws_at(endpoint: &str) -> Client {
    zenml_rotator::http::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await;
    Client::new(&sdk)
}

/// VersionId -> staging labels (sorted), tags, and each labelled version's string: what a
/// read-only command must leave as it was. `Null` when the secret does not exist.
pub async fn aws_state(client: &Client, name: &str) -> Value {
    let out = match client.describe_secret().secret_id(name).send().await {
        Ok(o) => o,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Value::Null;
        }
        Err(e) => panic!("DescribeSecret {name}: {e:?}"),
    };
    let mut versions = BTreeMap::new();
    for (id, stages) in out.version_ids_to_stages().cloned().unwrap_or_default() {
        let mut stages = stages.clone();
        stages.sort();
        let value = aws_value_by_id(client, name, &id).await;
        versions.insert(id, json!({ "stages": stages, "value": value }));
    }
    let tags: BTreeMap<String, String> = out
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_owned(),
                t.value().unwrap_or("").to_owned(),
            )
        })
        .collect();
    json!({
        "versions": versions,
        "tags": tags,
        "deleted": out.deleted_date().map(|d| d.secs()),
        "last_changed": out.last_changed_date().map(|d| d.secs()),
    })
}

async fn aws_value_by_id(client: &Client, name: &str, id: &str) -> Value {
    match client
        .get_secret_value()
        .secret_id(name)
        .version_id(id)
        .send()
        .await
    {
        Ok(o) => o.secret_string().map(Value::from).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The string of the version holding `stage`, if any.
pub async fn aws_value(client: &Client, name: &str, stage: &str) -> Option<String> {
    client
        .get_secret_value()
        .secret_id(name)
        .version_stage(stage)
        .send()
        .await
        .ok()
        .and_then(|o| o.secret_string().map(str::to_owned))
        .inspect(|v| super::transcript::secrets_in(v.as_bytes()))
}

/// VersionId -> staging labels.
pub async fn aws_versions(client: &Client, name: &str) -> BTreeMap<String, Vec<String>> {
    let out = client
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap();
    out.version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

pub async fn aws_tags(client: &Client, name: &str) -> BTreeMap<String, String> {
    let out = client
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap();
    out.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_owned(),
                t.value().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

// ---------- files ----------

/// Every file under `dir` (relative name -> mode and bytes); empty when `dir` does not exist.
pub fn file_state(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let e = e.unwrap();
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if md.is_dir() {
            out.insert(
                format!("{rel}/"),
                (md.permissions().mode() & 0o7777, Vec::new()),
            );
            walk(root, &p, out);
        } else {
            out.insert(
                rel,
                (md.permissions().mode() & 0o7777, std::fs::read(&p).unwrap()),
            );
        }
    }
}

/// Parses an env file into its `KEY=value` pairs, asserting every other line is a comment.
pub fn env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=value: {line:?}"));
        assert!(
            k.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
            "not an env name: {k:?}"
        );
        super::transcript::secrets_in(v.as_bytes());
        assert!(
            out.insert(k.to_owned(), v.to_owned()).is_none(),
            "{k} twice"
        );
    }
    out
}

// ---------- ZenML ----------

/// The parts of a service account's keys that only a rotation, an update or a deletion changes
/// (`updated` and `last_login` move on every login, so they are left out).
pub async fn zenml_state(admin: &ZenmlClient, sa: Uuid) -> Vec<String> {
    let mut keys = admin
        .list_api_keys(sa, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|k| {
            format!(
                "{} {} active={} created={} last_rotated={:?} retain={:?} description={:?}",
                k.id,
                k.name,
                k.active,
                k.created,
                k.last_rotated,
                k.retain_period_minutes,
                k.description
            )
        })
        .collect::<Vec<_>>();
    keys.sort();
    keys
}

/// ZenML's verdict on a key value (a `current-user` call with the key as bearer).
pub async fn check(admin: &ZenmlClient, value: &str) -> KeyCheck {
    super::transcript::secret(value);
    admin
        .check_key(&SecretString::from(value.to_owned()))
        .await
        .unwrap()
}

/// The payload fields of a stored JSON object, asserting it holds exactly the two names.
pub fn payload_of(raw: &str) -> (String, String) {
    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON: {e}"));
    let obj = v.as_object().unwrap();
    let mut names: Vec<_> = obj.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["ZENML_STORE_API_KEY", "ZENML_STORE_URL"]);
    assert_eq!(obj["ZENML_STORE_URL"], zenml().url.as_str());
    super::transcript::secrets_in(raw.as_bytes());
    (
        obj["ZENML_STORE_URL"].as_str().unwrap().to_owned(),
        obj["ZENML_STORE_API_KEY"].as_str().unwrap().to_owned(),
    )
}

/// The Vault policy the repository ships (`deploy/vault/zenml-rotator.hcl`), for the KV v2 mount
/// `mount` and the keys under `<prefix>/` instead of the example's `secret` and `zenml/`.
pub fn shipped_vault_policy(mount: &str, prefix: &str) -> String {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/vault/zenml-rotator.hcl"
    );
    let text = std::fs::read_to_string(file).expect("deploy/vault/zenml-rotator.hcl");
    assert!(
        text.contains("\"secret/data/zenml/*\""),
        "the shipped policy changed shape"
    );
    text.replace("\"secret/", &format!("\"{mount}/"))
        .replace("/zenml/*\"", &format!("/{prefix}/*\""))
}
