//! The ZenML client against a real ZenML 0.98 server (scripts/peers.sh), plus a scripted local HTTP
//! server for the failures no real server produces on demand (429, 503, cut-short bodies, 401s).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::stub_http::{StubReply, StubRequest, StubServer};
use common::{new_service_account_with_key, unique, zenml, zenml_admin, zenml_key_client};
use zenml_rotator::secret::{ExposeSecret, SecretString, secrets_equal};
use zenml_rotator::zenml::{
    ApiKeyUpdate, ClientOptions, Credentials, KeyCheck, KeyFilter, Operation, ZenmlClient,
    ZenmlError, key_id_from_value,
};

fn list_requests_recorded(operation: &str) -> u64 {
    zenml_rotator::metrics::get()
        .upstream_request_duration_seconds
        .with_label_values(&["zenml", operation])
        .get_sample_count()
}

// ---- real server ----

#[tokio::test]
async fn admin_login_server_info_and_current_user() {
    let admin = zenml_admin();
    admin.login().await.unwrap();
    let me = admin.current_user().await.unwrap();
    assert_eq!(me.name, zenml().admin);
    assert!(me.is_admin && !me.is_service_account && me.active, "{me:?}");

    let info = admin.server_info().await.unwrap();
    let expected = std::env::var("ZR_ZENML_VERSION").unwrap_or_else(|_| "0.98.0".into());
    assert_eq!(info.version, expected);
    assert_eq!(info.auth_scheme, "OAUTH2_PASSWORD_BEARER");
    assert_eq!(admin.version().await.unwrap(), expected);
    assert!(list_requests_recorded("login") >= 1);
}

#[tokio::test]
async fn a_wrong_password_is_unauthorized_and_never_echoed() {
    let peer = zenml();
    let password = format!("wrong-{}", unique("pw"));
    let creds = Credentials::Password {
        username: peer.admin,
        password: SecretString::from(password.clone()),
    };
    let client = ZenmlClient::new(&peer.url, creds, ClientOptions::default()).unwrap();
    let err = client.current_user().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Unauthorized {
                op: Operation::Login,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(401));
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(text.contains("invalid username or password"), "{text}");
    assert!(!text.contains(&password), "{text}");
}

#[tokio::test]
async fn an_api_key_client_is_the_service_account() {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, "zt-keyclient").await;
    assert_eq!(key_id_from_value(&key.value), Some(key.key.id));

    let client = zenml_key_client(&key.value);
    let me = client.current_user().await.unwrap();
    assert_eq!(me.id, sa.id);
    assert_eq!(me.name, sa.name);
    assert!(me.is_service_account && !me.is_admin, "{me:?}");

    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Accepted
    );
    let forged = SecretString::from(format!("{}AAAA", &key.value.expose_secret()[..40]));
    assert_eq!(admin.check_key(&forged).await.unwrap(), KeyCheck::Rejected);
}

#[tokio::test]
async fn service_accounts_and_keys_are_created_read_and_deleted() {
    let admin = zenml_admin();
    let name = unique("zt-crud");
    let sa = admin
        .create_service_account(&name, "crud test")
        .await
        .unwrap();
    assert_eq!(
        (sa.name.as_str(), sa.description.as_str(), sa.active),
        (name.as_str(), "crud test", true)
    );
    assert_eq!(admin.get_service_account(&name).await.unwrap(), sa);
    assert_eq!(
        admin.get_service_account(&sa.id.to_string()).await.unwrap(),
        sa
    );
    assert_eq!(admin.service_account_id(&name).await.unwrap(), sa.id);

    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let new = admin
        .create_api_key(sa.id, "k1", "first key")
        .await
        .unwrap();
    assert!(new.value.expose_secret().starts_with("ZENKEY_"));
    let k = &new.key;
    assert_eq!(
        (k.name.as_str(), k.description.as_str(), k.active),
        ("k1", "first key", true)
    );
    assert_eq!(
        (k.service_account_id, k.service_account_name.as_str()),
        (sa.id, name.as_str())
    );
    assert_eq!(
        (k.retain_period_minutes, k.last_rotated, k.last_login),
        (Some(0), None, None)
    );
    // Naive server timestamps are read as UTC: a created time in the last few seconds proves it.
    assert!(
        k.created > before && k.created < chrono::Utc::now() + chrono::Duration::seconds(5),
        "{k:?}"
    );

    let by_name = admin.get_api_key(sa.id, "k1").await.unwrap();
    let by_id = admin.get_api_key(sa.id, &k.id.to_string()).await.unwrap();
    assert_eq!(by_name, by_id);
    assert_eq!(by_name.description, "first key");

    let updated = admin
        .update_api_key(
            sa.id,
            "k1",
            &ApiKeyUpdate {
                description: Some("changed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.description.as_str(), updated.active),
        ("changed", true)
    );

    admin.delete_api_key(sa.id, "k1").await.unwrap();
    let err = admin.get_api_key(sa.id, "k1").await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::NotFound {
                op: Operation::GetApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        admin.check_key(&new.value).await.unwrap(),
        KeyCheck::Rejected
    );

    admin.delete_service_account(&name).await.unwrap();
    let err = admin.get_service_account(&name).await.unwrap_err();
    assert!(matches!(err, ZenmlError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test]
async fn rotation_keeps_the_old_value_for_the_retain_window_only() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "zt-window").await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let new = admin.rotate_api_key(sa.id, "default", 1).await.unwrap();
    let rotated_at = Instant::now();

    assert!(!secrets_equal(&old.value, &new.value));
    assert_eq!(new.key.id, old.key.id);
    assert_eq!(
        key_id_from_value(&new.value),
        Some(old.key.id),
        "the id survives rotation"
    );
    // The rotate answer has no metadata and is not read back: last_rotated is its `updated`,
    // the retain period the one asked for. The server's own record must say exactly that (the
    // next look compares the stored record with it), and the rest is as before the rotation.
    let new = new.as_before(&old.key);
    let read = admin.get_api_key(sa.id, "default").await.unwrap();
    assert_eq!(new.key.last_rotated, read.last_rotated);
    assert_eq!(new.key.retain_period_minutes, read.retain_period_minutes);
    assert_eq!(new.key.retain_period_minutes, Some(1));
    assert_eq!(new.key.description, read.description);
    assert_eq!(new.key.last_login, read.last_login);
    assert_eq!(new.key.active, read.active);
    let last_rotated = new.key.last_rotated.expect("last_rotated after a rotation");
    assert!(last_rotated > before, "{last_rotated}");

    assert_eq!(
        admin.check_key(&old.value).await.unwrap(),
        KeyCheck::Accepted
    );
    assert_eq!(
        admin.check_key(&new.value).await.unwrap(),
        KeyCheck::Accepted
    );

    // The old value dies about 60 s after the rotation; poll, gently (each check costs a bcrypt).
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if admin.check_key(&old.value).await.unwrap() == KeyCheck::Rejected {
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(95),
            "old value still accepted after 95 s"
        );
    }
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(50),
        "rejected too early: {:?}",
        rotated_at.elapsed()
    );
    assert_eq!(
        admin.check_key(&new.value).await.unwrap(),
        KeyCheck::Accepted
    );
}

#[tokio::test]
async fn deactivating_a_key_rejects_it_and_its_tokens() {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, "zt-deact").await;
    let token = admin.login_with_api_key(&key.value).await.unwrap();
    assert_eq!(admin.check_token(&token).await.unwrap(), KeyCheck::Accepted);

    let off = ApiKeyUpdate {
        active: Some(false),
        ..Default::default()
    };
    let updated = admin.update_api_key(sa.id, "default", &off).await.unwrap();
    assert!(!updated.active);
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Rejected
    );
    assert_eq!(admin.check_token(&token).await.unwrap(), KeyCheck::Rejected);
    let err = admin.login_with_api_key(&key.value).await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Unauthorized {
                op: Operation::LoginWithApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(key.value.expose_secret()));

    let on = ApiKeyUpdate {
        active: Some(true),
        ..Default::default()
    };
    assert!(
        admin
            .update_api_key(sa.id, "default", &on)
            .await
            .unwrap()
            .active
    );
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Accepted
    );
}

#[tokio::test]
async fn deactivating_a_service_account_rejects_its_keys() {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, "zt-sadeact").await;
    let off = admin
        .set_service_account_active(sa.id, false)
        .await
        .unwrap();
    assert!(!off.active);
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Rejected
    );
    assert!(
        admin
            .set_service_account_active(sa.id, true)
            .await
            .unwrap()
            .active
    );
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Accepted
    );
}

#[tokio::test]
async fn a_service_account_may_not_rotate_on_open_source_zenml() {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, "zt-forbid").await;
    let client = zenml_key_client(&key.value);
    let err = client
        .rotate_api_key(sa.id, "default", 1)
        .await
        .unwrap_err();
    let ZenmlError::Forbidden { op, message } = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert_eq!(*op, Operation::RotateApiKey);
    assert_eq!(
        message,
        "Only admin users can perform `rotate API key` without RBAC enabled."
    );
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().starts_with("rotate API key: "), "{err}");
    // The server did not act: the key was never rotated and its value still works.
    assert_eq!(
        admin
            .get_api_key(sa.id, "default")
            .await
            .unwrap()
            .last_rotated,
        None
    );
    assert_eq!(
        admin.check_key(&key.value).await.unwrap(),
        KeyCheck::Accepted
    );
}

#[tokio::test]
async fn lists_walk_every_page() {
    let admin = zenml_admin();
    let (sa, first) = new_service_account_with_key(&admin, "zt-pages").await;
    for i in 1..5 {
        admin
            .create_api_key(sa.id, &format!("page-{i}"), "")
            .await
            .unwrap();
    }
    let paged = admin.clone().with_page_size(2);
    let requests_before = list_requests_recorded("list_api_keys");
    let all = paged
        .list_api_keys(sa.id, &KeyFilter::default())
        .await
        .unwrap();
    assert!(
        list_requests_recorded("list_api_keys") - requests_before >= 3,
        "5 keys at 2 a page take 3 requests"
    );
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all.iter().map(|k| k.id).collect::<HashSet<_>>().len(), 5);
    let default = all.iter().find(|k| k.id == first.key.id).unwrap();
    assert_eq!(
        default.description, first.key.description,
        "list items are hydrated"
    );
    assert_eq!(default.retain_period_minutes, Some(0));

    let prefixed = KeyFilter {
        name_startswith: Some("page-".into()),
        active: None,
    };
    assert_eq!(
        paged.list_api_keys(sa.id, &prefixed).await.unwrap().len(),
        4
    );
    let off = ApiKeyUpdate {
        active: Some(false),
        ..Default::default()
    };
    paged.update_api_key(sa.id, "page-3", &off).await.unwrap();
    let inactive = paged
        .list_api_keys(
            sa.id,
            &KeyFilter {
                name_startswith: None,
                active: Some(false),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        inactive.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["page-3"]
    );
    let none = KeyFilter {
        name_startswith: Some("nothing-".into()),
        active: None,
    };
    assert!(paged.list_api_keys(sa.id, &none).await.unwrap().is_empty());

    let mut ours = Vec::new();
    for _ in 0..3 {
        ours.push(
            admin
                .create_service_account(&unique("zt-salist"), "paging")
                .await
                .unwrap(),
        );
    }
    let accounts = paged.list_service_accounts().await.unwrap();
    let ids: HashSet<_> = accounts.iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), accounts.len(), "no account twice");
    for sa in &ours {
        let listed = accounts
            .iter()
            .find(|a| a.id == sa.id)
            .unwrap_or_else(|| panic!("{} missing", sa.name));
        assert_eq!(listed.description, "paging");
    }
}

#[tokio::test]
async fn missing_and_duplicate_things() {
    let admin = zenml_admin();
    let (sa, _key) = new_service_account_with_key(&admin, "zt-dup").await;

    let err = admin.get_api_key(sa.id, "no-such-key").await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::NotFound {
                op: Operation::GetApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("no-such-key"), "{err}");
    let err = admin
        .get_service_account(&unique("zt-none"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::NotFound {
                op: Operation::GetServiceAccount,
                ..
            }
        ),
        "{err:?}"
    );

    let err = admin
        .create_api_key(sa.id, "default", "again")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Conflict {
                op: Operation::CreateApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(409));
    let err = admin
        .create_service_account(&sa.name, "again")
        .await
        .unwrap_err();
    assert!(matches!(err, ZenmlError::Conflict { .. }), "{err:?}");
}

#[tokio::test]
async fn debug_output_never_shows_credentials() {
    let admin = zenml_admin();
    let (_sa, key) = new_service_account_with_key(&admin, "zt-debug").await;
    let value = key.value.expose_secret().to_owned();
    let secret_half = &value["ZENKEY_".len()..];

    let shown = format!("{key:?}");
    assert!(!shown.contains(secret_half), "{shown}");
    assert!(shown.contains(&zenml_rotator::secret::fingerprint(&key.value)));

    let creds = Credentials::ApiKey(key.value.clone());
    assert!(!format!("{creds:?}").contains(secret_half));
    let client = zenml_key_client(&key.value);
    client.login().await.unwrap();
    assert!(!format!("{client:?}").contains(secret_half), "{client:?}");

    let password = zenml().admin_password;
    let creds = Credentials::Password {
        username: "admin".into(),
        password: password.clone().into(),
    };
    assert!(!format!("{creds:?}").contains(&password));
    admin.login().await.unwrap();
    let shown = format!("{admin:?}");
    assert!(
        !shown.contains(&password) && shown.contains("admin"),
        "{shown}"
    );
}

// ---- scripted server: what no real server does on demand ----

const TOKEN_1: &str = "eyJhbGciOiJIUzI1NiJ9.one.sig";
const TOKEN_2: &str = "eyJhbGciOiJIUzI1NiJ9.two.sig";
const USER: &str = r#"{"id":"accbeb5f-cefd-4f53-860d-831357af45bf","name":"admin",
    "body":{"active":true,"is_service_account":false,"is_admin":true}}"#;
const ROTATED: &str = r#"{"id":"507677c5-8d1d-4637-bb58-e1aacee6f015","name":"k1","metadata":null,
    "body":{"created":"2026-11-28T05:57:26.902277","updated":"2026-11-28T05:57:27.051638","key":"ZENKEY_bmV3","active":true,
    "service_account":{"id":"c49c2b02-a7b5-4eb5-922d-5517804358ae","name":"sa"}}}"#;
const SA_ID: &str = "c49c2b02-a7b5-4eb5-922d-5517804358ae";
const ROTATE_PATH: &str =
    "/api/v1/service_accounts/c49c2b02-a7b5-4eb5-922d-5517804358ae/api_keys/k1/rotate";

fn login_reply(token: &str) -> StubReply {
    StubReply::json(
        200,
        &format!(r#"{{"access_token":"{token}","token_type":"bearer","expires_in":null}}"#),
    )
}

fn stub_client(url: &str, timeout: Duration) -> ZenmlClient {
    let creds = Credentials::Password {
        username: "admin".into(),
        password: "stub-password-123".into(),
    };
    ZenmlClient::new(
        url,
        creds,
        ClientOptions {
            timeout,
            ca_file: None,
        },
    )
    .unwrap()
}

fn sa_id() -> uuid::Uuid {
    uuid::Uuid::parse_str(SA_ID).unwrap()
}

/// Answers /login with TOKEN_1 and passes every other request to `rest`.
async fn stub_with_login(
    rest: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static,
) -> StubServer {
    StubServer::start(move |r| {
        if r.path() == "/api/v1/login" {
            login_reply(TOKEN_1)
        } else {
            rest(r)
        }
    })
    .await
}

/// A service account of the listing, as ZenML pages them.
fn listed_account(id: &str, name: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"{name}","body":{{"created":"2026-11-28T05:57:26.902277","active":true}},"metadata":{{"description":""}}}}"#
    )
}

#[tokio::test]
async fn a_listing_that_changes_while_paged_is_walked_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const A: &str = "0b8d2c9e-1c55-4d38-8d0e-3c7a1f1f0a01";
    const B: &str = "0b8d2c9e-1c55-4d38-8d0e-3c7a1f1f0a02";
    const C: &str = "0b8d2c9e-1c55-4d38-8d0e-3c7a1f1f0a03";
    // Pages of two. B is deleted between the first two pages, so C moves to page 1, which the
    // first walk has already read: its page 2 is empty. The second walk sees the new listing.
    let lists = AtomicUsize::new(0);
    let stub = stub_with_login(move |r| {
        let page = |total: u32, pages: u32, items: &[(&str, &str)]| {
            let items: Vec<_> = items.iter().map(|(i, n)| listed_account(i, n)).collect();
            StubReply::json(
                200,
                &format!(
                    r#"{{"index":1,"max_size":2,"total_pages":{pages},"total":{total},"items":[{}]}}"#,
                    items.join(",")
                ),
            )
        };
        if r.path() != "/api/v1/service_accounts" {
            return StubReply::json(404, r#"{"detail":"not scripted"}"#);
        }
        match lists.fetch_add(1, Ordering::SeqCst) {
            0 => page(3, 2, &[(A, "a"), (B, "b")]),
            1 => page(2, 1, &[]),
            _ => page(2, 1, &[(A, "a"), (C, "c")]),
        }
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5)).with_page_size(2);
    let names: Vec<_> = client
        .list_service_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["a", "c"]);
    let pages: Vec<_> = stub
        .requests()
        .iter()
        .filter(|r| r.path() == "/api/v1/service_accounts")
        .map(|r| r.target.contains("page=2"))
        .collect();
    assert_eq!(
        pages,
        [false, true, false],
        "page 1, page 2, then page 1 again"
    );
}

#[tokio::test]
async fn a_401_on_the_cached_token_logs_in_again_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let logins = AtomicUsize::new(0);
    let stub = StubServer::start(move |r| match r.path() {
        "/api/v1/login" => login_reply(if logins.fetch_add(1, Ordering::SeqCst) == 0 {
            TOKEN_1
        } else {
            TOKEN_2
        }),
        _ if r.header("authorization") == Some(&format!("Bearer {TOKEN_2}")) => {
            StubReply::json(200, USER)
        }
        _ => StubReply::json(
            401,
            r#"{"detail":["CredentialsNotValid","Authentication error: token expired"]}"#,
        ),
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    client.login().await.unwrap();
    let me = client.current_user().await.unwrap();
    assert_eq!(me.name, "admin");
    let seen: Vec<_> = stub
        .requests()
        .iter()
        .map(|r| {
            (
                r.path().to_owned(),
                r.header("authorization").map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("/api/v1/login".to_owned(), None),
            (
                "/api/v1/current-user".to_owned(),
                Some(format!("Bearer {TOKEN_1}"))
            ),
            ("/api/v1/login".to_owned(), None),
            (
                "/api/v1/current-user".to_owned(),
                Some(format!("Bearer {TOKEN_2}"))
            ),
        ]
    );
    assert!(
        stub.requests()[0]
            .body_text()
            .contains("grant_type=password")
    );

    // The new token is cached: the next call needs no login.
    client.current_user().await.unwrap();
    assert_eq!(stub.count("POST", "/api/v1/login"), 2);
}

#[tokio::test]
async fn a_401_after_logging_in_again_is_unauthorized() {
    let stub = stub_with_login(|_| StubReply::json(401, r#"{"detail":"Not authenticated"}"#)).await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.current_user().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Unauthorized {
                op: Operation::CurrentUser,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Not authenticated"), "{err}");
    assert_eq!(stub.count("POST", "/api/v1/login"), 2);
    assert_eq!(stub.count("GET", "/api/v1/current-user"), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_login() {
    let stub = StubServer::start(|r| match r.path() {
        "/api/v1/login" => login_reply(TOKEN_1).delayed(Duration::from_millis(300)),
        _ => StubReply::json(200, USER),
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.current_user().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(stub.count("POST", "/api/v1/login"), 1);
    assert_eq!(stub.count("GET", "/api/v1/current-user"), 16);
}

#[tokio::test]
async fn an_expiring_token_is_renewed_before_it_runs_out() {
    let stub = StubServer::start(|r| match r.path() {
        "/api/v1/login" => StubReply::json(
            200,
            &format!(r#"{{"access_token":"{TOKEN_1}","expires_in":1}}"#),
        ),
        _ => StubReply::json(200, USER),
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    client.current_user().await.unwrap();
    client.current_user().await.unwrap();
    assert_eq!(stub.count("POST", "/api/v1/login"), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.current_user().await.unwrap();
    assert_eq!(stub.count("POST", "/api/v1/login"), 2);
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = AtomicUsize::new(0);
    let stub = stub_with_login(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            StubReply::json(429, r#"{"detail": "Minute request limit exceeded."}"#)
                .header("retry-after", "1")
        } else {
            StubReply::json(200, ROTATED)
        }
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    client.login().await.unwrap();
    let started = Instant::now();
    // Even a rotate is repeated after a 429: the server did not act.
    let result = client.rotate_api_key(sa_id(), "k1", 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stub.count("PUT", ROTATE_PATH), 2);
    // The read-back GET got the rotate body too, which is fine; the value came through.
    let rotated = result.unwrap();
    assert_eq!(rotated.value.expose_secret(), "ZENKEY_bmV3");
}

#[tokio::test]
async fn persistent_429s_end_as_rate_limited() {
    let stub = stub_with_login(|_| {
        StubReply::json(429, r#"{"detail": "Minute request limit exceeded."}"#)
            .header("retry-after", "0")
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.get_api_key(sa_id(), "k1").await.unwrap_err();
    let ZenmlError::RateLimited {
        attempts,
        retry_after,
        ref message,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((attempts, retry_after), (4, Some(Duration::ZERO)));
    assert_eq!(message, "Minute request limit exceeded.");
    assert!(err.is_retryable() && err.status() == Some(429));
    assert_eq!(
        stub.count(
            "GET",
            "/api/v1/service_accounts/c49c2b02-a7b5-4eb5-922d-5517804358ae/api_keys/k1"
        ),
        4
    );

    // A server asking for an hour gets an error at once, with its wish attached for the caller.
    let stub = stub_with_login(|_| {
        StubReply::json(429, r#"{"detail": "slow down"}"#).header("retry-after", "3600")
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let started = Instant::now();
    let err = client.current_user().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, ZenmlError::RateLimited { attempts: 1, retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_503_is_retried_for_reads_but_never_for_rotate() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = AtomicUsize::new(0);
    let stub = stub_with_login(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            StubReply::json(503, "<html><body>503 Service Unavailable</body></html>")
        } else {
            StubReply::json(200, USER)
        }
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    assert_eq!(client.current_user().await.unwrap().name, "admin");
    assert_eq!(stub.count("GET", "/api/v1/current-user"), 2);

    let stub = stub_with_login(|_| StubReply::json(503, "")).await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.rotate_api_key(sa_id(), "k1", 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Server {
                status: 503,
                op: Operation::RotateApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("may have acted"), "{err}");
    assert!(err.to_string().contains("(empty response body)"), "{err}");
    assert_eq!(stub.count("PUT", ROTATE_PATH), 1);
}

#[tokio::test]
async fn a_cut_short_body_is_a_transport_error_and_rotate_is_not_repeated() {
    let truncated = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":\"507677c5".to_vec();
    let body = truncated.clone();
    let stub = stub_with_login(move |_| StubReply::Raw(body.clone())).await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.rotate_api_key(sa_id(), "k1", 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Transport {
                op: Operation::RotateApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("cut short"), "{err}");
    assert_eq!(stub.count("PUT", ROTATE_PATH), 1);

    // A read is repeated, then fails the same way.
    let err = client.current_user().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Transport {
                op: Operation::CurrentUser,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stub.count("GET", "/api/v1/current-user"), 4);

    // A complete body that is not what the API promises is a Decode error.
    let stub = stub_with_login(|_| StubReply::json(200, r#"{"unexpected": true}"#)).await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.current_user().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Decode {
                status: Some(200),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn timeouts_end_the_call_and_rotate_is_not_repeated() {
    let stub = stub_with_login(|_| StubReply::Hang).await;
    let client = stub_client(&stub.url, Duration::from_millis(300));
    let started = Instant::now();
    let err = client.rotate_api_key(sa_id(), "k1", 1).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            ZenmlError::Timeout {
                op: Operation::RotateApiKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.status().is_none());
    assert_eq!(stub.count("PUT", ROTATE_PATH), 1);

    let err = client.get_service_account("sa").await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Timeout {
                op: Operation::GetServiceAccount,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stub.count("GET", "/api/v1/service_accounts/sa"), 4);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = stub_client(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    let err = client.server_info().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Transport {
                op: Operation::ServerInfo,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.status().is_none());
}

#[tokio::test]
async fn credentials_echoed_by_a_server_are_scrubbed_from_errors() {
    // A misbehaving proxy that echoes the request body (which holds the password) into its error.
    let stub = StubServer::start(|r| {
        StubReply::json(
            400,
            &format!(r#"{{"detail": "bad form: {}"}}"#, r.body_text()),
        )
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.login().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Invalid {
                status: 400,
                op: Operation::Login,
                ..
            }
        ),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(text.contains("grant_type=password"), "{text}");
    assert!(!text.contains("stub-password-123"), "{text}");

    let key = SecretString::from("ZENKEY_eyJpZCI6ICIxMjMiLCAia2V5IjogImFiYyJ9");
    let stub = StubServer::start(|r| {
        StubReply::json(
            500,
            &format!(
                r#"["ValueError", "cannot use {}"]"#,
                r.header("authorization").unwrap_or_default()
            ),
        )
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let err = client.check_key(&key).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("cannot use Bearer [redacted]"), "{text}");
    assert!(!text.contains("eyJpZCI6"), "{text}");
}

#[tokio::test]
async fn a_rotation_takes_last_rotated_from_its_answer_without_reading_the_key_back() {
    let stub = stub_with_login(|r| match r.method.as_str() {
        "PUT" => StubReply::json(200, ROTATED),
        _ => StubReply::json(500, r#"{"detail":["RuntimeError","database is locked"]}"#),
    })
    .await;
    let client = stub_client(&stub.url, Duration::from_secs(5));
    let rotated = client.rotate_api_key(sa_id(), "k1", 7).await.unwrap();
    assert_eq!(rotated.value.expose_secret(), "ZENKEY_bmV3");
    assert_eq!(rotated.key.retain_period_minutes, Some(7));
    assert_eq!(rotated.key.last_rotated, Some(rotated.key.updated));
    assert_eq!(
        rotated.key.updated.to_rfc3339(),
        "2026-11-28T05:57:27.051638+00:00"
    );
    assert_eq!(stub.count("PUT", ROTATE_PATH), 1);
    assert_eq!(
        stub.requests().iter().filter(|r| r.method == "GET").count(),
        0,
        "no read-back"
    );
}

/// An answer that redirects (an ingress forcing https, a moved server, a hostile proxy) is not
/// followed: the password, the session token and a rotate's answer never reach another server.
#[tokio::test]
async fn redirects_are_not_followed_so_no_credential_reaches_another_server() {
    let elsewhere = StubServer::recorder().await;
    for status in [301, 302, 303, 307, 308] {
        for to in elsewhere.aliases() {
            let target = to.clone();
            let redirector =
                stub_with_login(move |r| StubReply::redirect(status, &target, r)).await;
            let client = stub_client(&redirector.url, Duration::from_secs(5));
            let err = client.current_user().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "read the current user: the ZenML server answered with a redirect (HTTP {status} to {to}); the rotator follows none, so that no credential reaches another server: set [zenml] url to the address that answers"
                ),
                "{err:?}"
            );
            assert_eq!(err.status(), Some(status));
            assert!(!err.is_retryable());
            let err = client.rotate_api_key(sa_id(), "k1", 5).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    ZenmlError::Redirected {
                        op: Operation::RotateApiKey,
                        ..
                    }
                ),
                "{err:?}"
            );
            // The redirector got the bearer token; a followed redirect would have carried it on.
            let bearer = format!("Bearer {TOKEN_1}");
            assert!(
                redirector
                    .requests()
                    .iter()
                    .any(|r| r.header("authorization") == Some(bearer.as_str()))
            );
            assert_eq!(
                redirector.count("PUT", ROTATE_PATH),
                1,
                "rotate is sent once"
            );
        }
    }
    // A redirected login: the password form stays with the server it was meant for.
    let target = elsewhere.url.clone();
    let redirector = StubServer::start(move |r| StubReply::redirect(307, &target, r)).await;
    let client = stub_client(&redirector.url, Duration::from_secs(5));
    let err = client.login().await.unwrap_err();
    assert!(
        matches!(
            err,
            ZenmlError::Redirected {
                op: Operation::Login,
                status: 307,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("stub-password-123"));
    assert!(
        redirector.requests()[0]
            .body_text()
            .contains("stub-password-123")
    );
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}
