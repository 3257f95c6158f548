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
