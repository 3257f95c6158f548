//! The AWS Secrets Manager store against a real moto server: the four-step protocol, idempotent
//! retries, conflicts with writers behind our back, stuck and foreign rotations, deletion, and an
//! endpoint that does not answer. Each test uses its own secret names; nothing resets the server.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::future;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, ProvideCredentials};
use aws_sdk_secretsmanager::types::{RotationRulesType, Tag};
use aws_smithy_http_client::tls;
use zenml_rotator::config::AwsSettings;
use zenml_rotator::secret::{ExposeSecret, SecretString};
use zenml_rotator::store::aws::AwsStore;
use zenml_rotator::store::{Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot};

const URL: &str = "https://zenml.example.com";

fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.into()),
        kms_key_id: None,
        timeout: std::time::Duration::from_secs(30),
        claims: "zenml-rotator/claims".into(),
    }
}

fn test_credentials() -> Credentials {
    Credentials::new("test", "test", None, None, "store_aws tests")
}

async fn store_at(endpoint: &str, timeout: Duration) -> AwsStore {
    AwsStore::connect_with_credentials(&settings(endpoint), timeout, test_credentials())
        .await
        .unwrap()
}

async fn store() -> AwsStore {
    store_at(&common::aws_endpoint(), Duration::from_secs(10)).await
}

/// A plain SDK client: "someone else" writing to the same secrets.
async fn raw() -> Client {
    zenml_rotator::http::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(common::aws_endpoint())
        .credentials_provider(test_credentials())
        .load()
        .await;
    Client::new(&sdk)
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn payload(key: &str) -> Payload {
    Payload {
        zenml_url: URL.into(),
        api_key: SecretString::from(key.to_owned()),
    }
}

fn record(key_id: &str) -> RotationRecord {
    RotationRecord {
        policy: "training".into(),
        service_account: "training-pipelines".into(),
        api_key: "default".into(),
        key_id: key_id.into(),
        fingerprint: "0123abcd".into(),
        // Whole seconds: the record stores RFC 3339 without fractions.
        rotated_at: chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0),
        ..RotationRecord::default()
    }
}

fn value(s: Option<SecretString>) -> Option<String> {
    s.map(|s| s.expose_secret().to_owned())
}

/// VersionId -> labels, straight from DescribeSecret.
async fn stages(raw: &Client, name: &str) -> BTreeMap<String, Vec<String>> {
    let out = raw.describe_secret().secret_id(name).send().await.unwrap();
    out.version_ids_to_stages()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    v.sort();
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| (*s).to_owned()).collect()
}

async fn tags(raw: &Client, name: &str) -> BTreeMap<String, String> {
    let out = raw.describe_secret().secret_id(name).send().await.unwrap();
    out.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_owned(),
                t.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// One full rotation through the store, as the engine drives it.
async fn rotate(store: &AwsStore, name: &str, key: &str, key_id: &str) -> String {
    let snap = store.preflight(name).await.unwrap();
    let t = token();
    store
        .stage(name, &payload(key), &record(key_id), &snap, &t)
        .await
        .unwrap();
    assert_eq!(
        value(store.read_staged(name, &t).await.unwrap()).as_deref(),
        Some(key)
    );
    store.promote(name, &t, &snap).await.unwrap();
    store.set_record(name, &record(key_id)).await.unwrap();
    t
}

#[tokio::test]
async fn a_new_secret_is_created_then_rotated_through_the_four_steps() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/four-steps");

    // Absent: pre-flight is fine, stage creates it with our tags, current at once.
    let snap = store.preflight(&name).await.unwrap();
    assert!(!snap.exists && snap.version.is_none() && snap.pending.is_none());
    let t1 = token();
    store
        .stage(&name, &payload("ZENKEY_one"), &record("k1"), &snap, &t1)
        .await
        .unwrap();
    assert_eq!(
        stages(&raw, &name).await,
        BTreeMap::from([(t1.clone(), labels(&["AWSCURRENT"]))])
    );
    let tags = tags(&raw, &name).await;
    assert_eq!(tags["zenml-rotator:managed_by"], "zenml-rotator");
    assert_eq!(tags["zenml-rotator:key_id"], "k1");
    store.promote(&name, &t1, &snap).await.unwrap();
    assert_eq!(
        stages(&raw, &name).await.len(),
        1,
        "promote of a created secret is a no-op"
    );
    let seen = store.inspect(&name).await.unwrap();
    assert_eq!(seen.version.as_deref(), Some(t1.as_str()));
    assert_eq!(seen.record.unwrap().key_id, "k1");
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );
    assert_eq!(store.read_previous(&name).await.unwrap().map(|_| ()), None);

    // The payload is the JSON object workloads read.
    let stored = raw
        .get_secret_value()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_eq!(json["ZENML_STORE_URL"], URL);
    assert_eq!(json["ZENML_STORE_API_KEY"], "ZENKEY_one");

    // Second rotation: step 1 stages AWSPENDING and leaves AWSCURRENT alone.
    let snap = store.preflight(&name).await.unwrap();
    assert_eq!(snap.version.as_deref(), Some(t1.as_str()));
    let t2 = token();
    store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t2)
        .await
        .unwrap();
    assert_eq!(
        stages(&raw, &name).await,
        BTreeMap::from([
            (t1.clone(), labels(&["AWSCURRENT"])),
            (t2.clone(), labels(&["AWSPENDING"]))
        ])
    );
    let seen = store.inspect(&name).await.unwrap();
    assert_eq!(seen.version.as_deref(), Some(t1.as_str()));
    assert_eq!(seen.pending.as_deref(), Some(t2.as_str()));
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );
    assert_eq!(
        value(store.read_staged(&name, &t2).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );

    // Step 4: AWSCURRENT moves, the old version keeps AWSPREVIOUS, AWSPENDING is gone.
    store.promote(&name, &t2, &snap).await.unwrap();
    assert_eq!(
        stages(&raw, &name).await,
        BTreeMap::from([
            (t1.clone(), labels(&["AWSPREVIOUS"])),
            (t2.clone(), labels(&["AWSCURRENT"]))
        ])
    );
    let seen = store.inspect(&name).await.unwrap();
    assert_eq!(seen.version.as_deref(), Some(t2.as_str()));
    assert_eq!(seen.pending, None);
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );
    assert_eq!(
        value(store.read_previous(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );

    // Every request is timed under the `aws` upstream.
    let metrics = zenml_rotator::metrics::get().render();
    for op in [
        "DescribeSecret",
        "CreateSecret",
        "PutSecretValue",
        "UpdateSecretVersionStage",
    ] {
        let label = format!("operation=\"{op}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("upstream=\"aws\"") && l.contains(&label)),
            "no upstream metric for {op}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn retries_with_the_same_token_are_idempotent() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/retry");

    // A retried create.
    let snap = store.preflight(&name).await.unwrap();
    let t1 = token();
    for _ in 0..2 {
        store
            .stage(&name, &payload("ZENKEY_one"), &record("k1"), &snap, &t1)
            .await
            .unwrap();
    }
    assert_eq!(stages(&raw, &name).await.len(), 1);

    // A retried stage: one version, still pending.
    let snap = store.preflight(&name).await.unwrap();
    let t2 = token();
    for _ in 0..2 {
        store
            .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t2)
            .await
            .unwrap();
    }
    assert_eq!(
        stages(&raw, &name).await,
        BTreeMap::from([
            (t1.clone(), labels(&["AWSCURRENT"])),
            (t2.clone(), labels(&["AWSPENDING"]))
        ])
    );

    // The same token with another value is refused (moto alone would overwrite it), and the error
    // names neither value.
    let err = store
        .stage(&name, &payload("ZENKEY_other"), &record("k1"), &snap, &t2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains("ZENKEY"), "{msg}");
    assert_eq!(
        value(store.read_staged(&name, &t2).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );

    // Another rotator finishing this rotation, which reaches ZenML under another URL: the same
    // key value under the same token is the same rotation, and the staged version stays as it is.
    let elsewhere = Payload {
        zenml_url: "https://zenml.internal.example".into(),
        api_key: SecretString::from("ZENKEY_two".to_owned()),
    };
    store
        .stage(&name, &elsewhere, &record("k1"), &snap, &t2)
        .await
        .unwrap();
    assert_eq!(stages(&raw, &name).await.len(), 2);

    // A retried promote, and a stage retried after the promote landed: both no-ops.
    store.promote(&name, &t2, &snap).await.unwrap();
    store.promote(&name, &t2, &snap).await.unwrap();
    store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t2)
        .await
        .unwrap();
    assert_eq!(
        stages(&raw, &name).await,
        BTreeMap::from([
            (t1.clone(), labels(&["AWSPREVIOUS"])),
            (t2.clone(), labels(&["AWSCURRENT"]))
        ])
    );
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );
}

/// Someone else writes a new AWSCURRENT (console, CLI, another tool).
async fn manual_update(raw: &Client, name: &str, text: &str) {
    raw.put_secret_value()
        .secret_id(name)
        .secret_string(text)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_manual_update_mid_rotation_is_a_conflict() {
    let (store, raw) = (store().await, raw().await);

    // Between pre-flight and stage: stage refuses and writes nothing.
    let name = common::unique("zr-aws/manual-a");
    rotate(&store, &name, "ZENKEY_one", "k1").await;
    let snap = store.preflight(&name).await.unwrap();
    manual_update(
        &raw,
        &name,
        r#"{"ZENML_STORE_URL":"x","ZENML_STORE_API_KEY":"ZENKEY_manual"}"#,
    )
    .await;
    let t = token();
    let err = store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(!stages(&raw, &name).await.contains_key(&t));
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_manual")
    );

    // Between stage and promote: promote refuses, the manual value stays current and ours pending.
    let name = common::unique("zr-aws/manual-b");
    rotate(&store, &name, "ZENKEY_one", "k1").await;
    let snap = store.preflight(&name).await.unwrap();
    let t = token();
    store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t)
        .await
        .unwrap();
    manual_update(
        &raw,
        &name,
        r#"{"ZENML_STORE_URL":"x","ZENML_STORE_API_KEY":"ZENKEY_manual"}"#,
    )
    .await;
    let err = store.promote(&name, &t, &snap).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_manual")
    );
    assert!(stages(&raw, &name).await[&t].contains(&"AWSPENDING".to_owned()));
}

#[tokio::test]
async fn a_stuck_pending_is_reported_and_can_be_discarded() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/stuck");
    rotate(&store, &name, "ZENKEY_one", "k1").await;

    // A rotation that died after step 1 (ours from an older run, or anyone's).
    let stuck = token();
    raw.put_secret_value()
        .secret_id(&name)
        .client_request_token(&stuck)
        .secret_string(r#"{"ZENML_STORE_URL":"x","ZENML_STORE_API_KEY":"ZENKEY_stuck"}"#)
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    assert_eq!(
        store.inspect(&name).await.unwrap().pending.as_deref(),
        Some(stuck.as_str())
    );
    assert_eq!(
        store.stuck_pending(&name).await.unwrap().as_deref(),
        Some(stuck.as_str())
    );
    let snap = store.preflight(&name).await.unwrap();
    assert_eq!(snap.pending.as_deref(), Some(stuck.as_str()));

    // It blocks a new rotation until the engine resumes or discards it.
    let t = token();
    let err = store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&stuck), "{err}");

    store.discard_staged(&name, &stuck).await.unwrap();
    store.discard_staged(&name, &stuck).await.unwrap();
    assert_eq!(store.stuck_pending(&name).await.unwrap(), None);
    assert!(
        stages(&raw, &name)
            .await
            .get(&stuck)
            .is_none_or(|l| l.is_empty())
    );
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );

    let snap = store.preflight(&name).await.unwrap();
    store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &snap, &t)
        .await
        .unwrap();
    store.promote(&name, &t, &snap).await.unwrap();
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_is_not_writable() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/deleted");
    rotate(&store, &name, "ZENKEY_one", "k1").await;
    let before = store.preflight(&name).await.unwrap();
    raw.delete_secret()
        .secret_id(&name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let described = raw.describe_secret().secret_id(&name).send().await.unwrap();
    assert!(
        described.deleted_date().is_some(),
        "moto records DeletedDate"
    );

    let err = store.preflight(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("restore"), "{err}");
    // moto would accept a PutSecretValue here (AWS would not): stage must refuse on its own.
    let t = token();
    let err = store
        .stage(&name, &payload("ZENKEY_two"), &record("k1"), &before, &t)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert!(!stages(&raw, &name).await.contains_key(&t));
}

#[tokio::test]
async fn a_foreign_lambda_rotation_fails_preflight() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/lambda");
    raw.create_secret()
        .name(&name)
        .secret_string("db-password")
        .send()
        .await
        .unwrap();
    // moto runs no Lambda: the call fails after it enabled rotation and staged AWSPENDING, which
    // is exactly what a Lambda rotation that died in step 2 or 3 leaves behind on AWS.
    let _ = raw
        .rotate_secret()
        .secret_id(&name)
        .rotation_lambda_arn("arn:aws:lambda:us-east-1:123456789012:function:rotator")
        .rotation_rules(
            RotationRulesType::builder()
                .automatically_after_days(30)
                .build(),
        )
        .send()
        .await;
    let described = raw.describe_secret().secret_id(&name).send().await.unwrap();
    assert_eq!(described.rotation_enabled(), Some(true));
    let pending = store.inspect(&name).await.unwrap().pending;
    assert!(pending.is_some(), "moto left no AWSPENDING: {described:?}");

    let err = store.preflight(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("function:rotator") && msg.contains("cancel-rotate-secret"),
        "{msg}"
    );
    assert!(msg.contains(pending.as_deref().unwrap()), "{msg}");
}

#[tokio::test]
async fn retire_previous_removes_awsprevious() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/retire");
    let t1 = rotate(&store, &name, "ZENKEY_one", "k1").await;
    let t2 = rotate(&store, &name, "ZENKEY_two", "k1").await;
    assert_eq!(
        value(store.read_previous(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );

    store.retire_previous(&name).await.unwrap();
    store.retire_previous(&name).await.unwrap();
    assert_eq!(store.read_previous(&name).await.unwrap().map(|_| ()), None);
    let s = stages(&raw, &name).await;
    assert_eq!(s[&t2], labels(&["AWSCURRENT"]));
    assert!(s.get(&t1).is_none_or(|l| l.is_empty()), "{s:?}");
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_two")
    );
}

#[tokio::test]
async fn a_foreign_secret_is_taken_over() {
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/foreign");
    let foreign = r#"{"ZENML_STORE_API_KEY":"hand-made"}"#;
    raw.create_secret()
        .name(&name)
        .secret_string(foreign)
        .tags(Tag::builder().key("team").value("ml").build())
        .send()
        .await
        .unwrap();
    let seen = store.inspect(&name).await.unwrap();
    assert!(seen.exists && seen.record.is_none());

    let t = rotate(&store, &name, "ZENKEY_one", "k1").await;
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );
    let previous = raw
        .get_secret_value()
        .secret_id(&name)
        .version_stage("AWSPREVIOUS")
        .send()
        .await
        .unwrap();
    assert_eq!(previous.secret_string(), Some(foreign));
    assert_eq!(stages(&raw, &name).await[&t], labels(&["AWSCURRENT"]));
    assert_eq!(
        store.inspect(&name).await.unwrap().record.unwrap().key_id,
        "k1"
    );

    // The record replaces our tags only: a cleared field goes, other tools' tags stay.
    let mut r = record("k1");
    r.retiring_key_id = Some("old-key".into());
    store.set_record(&name, &r).await.unwrap();
    assert_eq!(
        tags(&raw, &name).await["zenml-rotator:retiring_key_id"],
        "old-key"
    );
    r.retiring_key_id = None;
    store.set_record(&name, &r).await.unwrap();
    let t = tags(&raw, &name).await;
    assert!(!t.contains_key("zenml-rotator:retiring_key_id"), "{t:?}");
    assert_eq!(t["team"], "ml");
    assert_eq!(store.inspect(&name).await.unwrap().record, Some(r));
}

/// A port with a listener that accepts connections and never answers.
async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}"), task)
}

async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_fails_preflight_promptly() {
    let (silent, task) = silent_listener().await;
    for endpoint in [silent, closed_port().await] {
        let store = store_at(&endpoint, Duration::from_secs(2)).await;
        let start = Instant::now();
        let err = store.preflight("zr-aws/unreachable").await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(err, StoreError::Unavailable { .. }),
            "{endpoint}: {err}"
        );
        assert!(err.to_string().contains("zr-aws/unreachable"), "{err}");
        assert!(took < Duration::from_secs(5), "{endpoint}: took {took:?}");
    }
    task.abort();
}

#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
            "no credentials in this test",
        )))
    }
}

#[tokio::test]
async fn missing_credentials_are_a_permission_error() {
    let store = AwsStore::connect_with_credentials(
        &settings(&common::aws_endpoint()),
        Duration::from_secs(5),
        NoCredentials,
    )
    .await
    .unwrap();
    let err = store.preflight("zr-aws/no-credentials").await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
}

#[tokio::test]
async fn a_placeholder_secret_without_a_value_gets_its_first_value_as_current() {
    // Terraform and CloudFormation often create the secret empty and leave the value to others.
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/placeholder");
    raw.create_secret().name(&name).send().await.unwrap();
    let snap = store.preflight(&name).await.unwrap();
    assert!(snap.exists && snap.version.is_none());
    assert_eq!(store.read_current(&name).await.unwrap().map(|_| ()), None);
    let t = token();
    store
        .stage(&name, &payload("ZENKEY_one"), &record("k1"), &snap, &t)
        .await
        .unwrap();
    store.promote(&name, &t, &snap).await.unwrap();
    assert_eq!(stages(&raw, &name).await[&t], labels(&["AWSCURRENT"]));
    assert_eq!(
        value(store.read_current(&name).await.unwrap()).as_deref(),
        Some("ZENKEY_one")
    );
}

#[tokio::test]
async fn stage_checks_and_sets_against_the_snapshot_of_a_missing_secret() {
    // Pre-flight saw no secret; someone created one before our stage: not ours to overwrite.
    let (store, raw) = (store().await, raw().await);
    let name = common::unique("zr-aws/raced-create");
    let snap: StoreSnapshot = store.preflight(&name).await.unwrap();
    raw.create_secret()
        .name(&name)
        .secret_string("someone else's")
        .send()
        .await
        .unwrap();
    let err = store
        .stage(
            &name,
            &payload("ZENKEY_one"),
            &record("k1"),
            &snap,
            &token(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn a_new_secret_is_encrypted_with_the_configured_kms_key() {
    let raw = raw().await;
    let mut s = settings(&common::aws_endpoint());
    s.kms_key_id = Some("alias/zenml-rotator".into());
    let store = AwsStore::connect_with_credentials(&s, Duration::from_secs(10), test_credentials())
        .await
        .unwrap();
    let name = common::unique("zr-aws/kms");
    rotate(&store, &name, "ZENKEY_one", "k1").await;
    let described = raw.describe_secret().secret_id(&name).send().await.unwrap();
    assert_eq!(described.kms_key_id(), Some("alias/zenml-rotator"));
    assert_eq!(
        store
            .read_staged(&name, &token())
            .await
            .unwrap()
            .map(|_| ()),
        None
    );
}

/// Answers every request with one canned Secrets Manager error: what no real server does on
/// demand (throttling, a 5xx, a denied call). moto covers everything else.
async fn canned_error(status: u16, code: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            // Read the whole request first, so the client never sees a reset mid-write.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = socket.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let body = if code.is_empty() {
                String::new()
            } else {
                format!(r#"{{"__type":"{code}","message":"canned {code}"}}"#)
            };
            let response = format!(
                "HTTP/1.1 {status} Canned\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn service_errors_map_to_store_errors() {
    let cases = [
        (400, "AccessDeniedException", "PermissionDenied"),
        (400, "UnrecognizedClientException", "PermissionDenied"),
        (400, "InvalidRequestException", "NotWritable"),
        (400, "ThrottlingException", "Unavailable"),
        (500, "InternalServiceError", "Unavailable"),
        (503, "", "Unavailable"),
    ];
    for (status, code, expected) in cases {
        let (endpoint, task) = canned_error(status, code).await;
        let store = store_at(&endpoint, Duration::from_secs(5)).await;
        let err = store.preflight("zr-aws/canned").await.unwrap_err();
        assert_eq!(kind(&err), expected, "HTTP {status} {code}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("zr-aws/canned") && msg.contains("DescribeSecret"),
            "{msg}"
        );
        assert!(msg.contains(code), "{msg}");
        task.abort();
    }
}

fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::PermissionDenied { .. } => "PermissionDenied",
        StoreError::Unavailable { .. } => "Unavailable",
        StoreError::Conflict { .. } => "Conflict",
        StoreError::NotWritable { .. } => "NotWritable",
        StoreError::Other { .. } => "Other",
    }
}

/// Claims in Secrets Manager (a claim secret, `AWSCURRENT` moved with `RemoveFromVersionId`):
/// what moto enforces of the rules the coordination of rotators rests on.
#[tokio::test]
async fn claims_are_compare_and_set_on_moto() {
    let store: std::sync::Arc<dyn SecretStore> = std::sync::Arc::new(store().await);
    common::claims::claims_are_compare_and_set(store, &common::unique("zr-claims")).await;
}

/// The SDK's HTTP client follows no redirect either: a 307 from the endpoint is an error, and the
/// server it points at hears nothing (no signed request, no secret value).
#[tokio::test]
async fn a_redirecting_endpoint_is_not_followed() {
    use common::stub_http::{StubReply, StubServer};
    let elsewhere = StubServer::recorder().await;
    let to = elsewhere.url.clone();
    let redirector = StubServer::start(move |r| StubReply::redirect(307, &to, r)).await;
    let store = store_at(&redirector.url, Duration::from_secs(5)).await;
    assert!(store.preflight("zr-aws/redirected").await.is_err());
    assert!(!redirector.requests().is_empty());
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}
