use std::time::Duration;

use super::toolkit::is_env_name;
use super::*;

#[test]
fn serde_messages_lose_quoted_values_and_internal_names() {
    assert_eq!(
        serde_message("invalid type: string \"hunter2\", expected a boolean"),
        "invalid type: string, expected a boolean"
    );
    assert_eq!(
        serde_message("invalid type: string \"a\\\"b\", expected struct RawStore"),
        "invalid type: string, expected a table"
    );
    assert_eq!(
        serde_message("invalid value: integer `-12345`, expected usize"),
        "invalid value: integer, expected a whole number (0 or more)"
    );
    assert_eq!(
        serde_message("invalid type: floating point `1.5`, expected a string"),
        "invalid type: floating point, expected a string"
    );
    assert_eq!(
        serde_message("unknown field `evry`, expected `every`"),
        "unknown key `evry`, expected `every`"
    );
}

#[test]
fn unknown_field_lists_do_not_suggest_inline_secrets() {
    let m = "unknown field `pasword`, expected one of `url`, `password_env`, `password`, `api_key`";
    assert_eq!(
        without_inline_secret_fields(m, "zenml.pasword"),
        "unknown field `pasword`, expected one of `url`, `password_env`"
    );
    let m = "unknown field `evry`, expected one of `name`, `api_key`";
    assert_eq!(without_inline_secret_fields(m, "key[0].evry"), m);
}

#[test]
fn durations_read_as_written() {
    assert_eq!(fmt_duration(Duration::from_secs(40 * 86_400)), "40d");
    assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(fmt_duration(Duration::from_secs(86_400 + 3_600)), "1d1h");
    assert_eq!(fmt_duration(Duration::from_millis(1_500)), "1s500ms");
    assert_eq!(fmt_duration(Duration::ZERO), "0s");
}

#[test]
fn env_names() {
    assert!(is_env_name("ZENML_ROTATOR_PASSWORD"));
    assert!(is_env_name("_x1"));
    assert!(!is_env_name("1X"));
    assert!(!is_env_name("ZENKEY_abc-def"));
    assert!(!is_env_name(""));
}

#[test]
fn cleartext_is_fine_to_loopback_only() {
    use super::toolkit::cleartext_beyond_loopback;
    for local in [
        "http://127.0.0.1:8080",
        "http://127.255.0.9",
        "http://127.1:9091",
        "http://[::1]:8200",
        "http://[::ffff:127.0.0.1]:8200",
        "http://localhost:5000",
        "http://LOCALHOST",
        "https://zenml.example.com",
        "https://10.0.0.5:8200",
    ] {
        assert!(!cleartext_beyond_loopback(local), "{local}");
    }
    for remote in [
        "http://zenml.example.com",
        "http://10.0.0.5:8200",
        "http://0.0.0.0:5000",
        "http://[::]:5000",
        "http://[::2]",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[::ffff:10.0.0.1]",
    ] {
        assert!(cleartext_beyond_loopback(remote), "{remote}");
    }
}
