//! `retire_previous` under `rotate`: the previous value leaves the store once its window ended.

use super::*;

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
