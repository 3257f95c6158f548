use std::time::Duration;

use base64::Engine as _;
use uuid::Uuid;

use super::transport::{BACKOFF_BASE, BACKOFF_CAP, backoff, parse_retry_after};
use super::*;

#[test]
fn key_id_is_read_from_the_value() {
    let payload = r#"{"id":"507677c5-8d1d-4637-bb58-e1aacee6f015","key":"00ff"}"#;
    let value = format!(
        "ZENKEY_{}",
        base64::engine::general_purpose::STANDARD.encode(payload)
    );
    assert_eq!(
        key_id_from_value(&SecretString::from(value)),
        Some(Uuid::parse_str("507677c5-8d1d-4637-bb58-e1aacee6f015").unwrap())
    );
    for bad in [
        "",
        "ZENKEY_",
        "ZENKEY_!!!",
        "eyJpZCI6IjEifQ==",
        "ZENKEY_eyJpZCI6IjEifQ==",
    ] {
        assert_eq!(key_id_from_value(&SecretString::from(bad)), None, "{bad}");
    }
}

#[test]
fn base_urls() {
    let ok = |u: &str| parse_base_url(u).map(|u| u.to_string());
    assert_eq!(
        ok("https://z.example.com").unwrap(),
        "https://z.example.com/"
    );
    assert!(ok("http://127.0.0.1:8080/").is_ok());
    assert!(ok("ftp://z").is_err());
    assert!(ok("z.example.com").is_err());
    assert!(ok("https://z/?a=1").is_err());
    let e = ok("https://admin:hunter2@z.example.com").unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn urls_keep_a_path_prefix_and_escape_names() {
    let client = ZenmlClient::new(
        "https://z.example.com/zenml/",
        Credentials::ApiKey(SecretString::from("ZENKEY_x")),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(client.base_url(), "https://z.example.com/zenml");
    assert_eq!(
        client.url(&["service_accounts", "a b/c"]).as_str(),
        "https://z.example.com/zenml/api/v1/service_accounts/a%20b%2Fc"
    );
}

#[test]
fn retry_after_forms() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    for attempt in 1..20 {
        let d = backoff(attempt);
        assert!(d <= BACKOFF_CAP, "{attempt}: {d:?}");
        assert!(d >= BACKOFF_BASE / 2, "{attempt}: {d:?}");
    }
    assert!(backoff(10) > BACKOFF_BASE * 2);
}

#[test]
fn page_size_is_clamped() {
    let client = ZenmlClient::new(
        "http://127.0.0.1:1",
        Credentials::ApiKey(SecretString::from("ZENKEY_x")),
        ClientOptions::default(),
    )
    .unwrap();
    assert_eq!(client.clone().with_page_size(0).page_size, 1);
    assert_eq!(
        client.clone().with_page_size(50_000).page_size,
        MAX_PAGE_SIZE
    );
    assert_eq!(client.page_size, DEFAULT_PAGE_SIZE);
}
