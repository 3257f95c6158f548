use super::*;

#[test]
fn detail_pair() {
    let body = br#"{"detail":["IllegalOperationError","Only admin users can perform `rotate API key` without RBAC enabled."]}"#;
    assert_eq!(
        error_message(body),
        "Only admin users can perform `rotate API key` without RBAC enabled."
    );
}

#[test]
fn detail_string() {
    assert_eq!(
        error_message(br#"{"detail": "Not authenticated"}"#),
        "Not authenticated"
    );
    assert_eq!(
        error_message(br#"{"detail":"Minute request limit exceeded."}"#),
        "Minute request limit exceeded."
    );
}

#[test]
fn bare_array_422_loses_its_traceback_tail() {
    let body = br#"["ValueError","1 validation error:\n  {'type': 'missing', 'loc': ('body', 'active'), 'msg': 'Field required'}\n\n  File \"/venv/site-packages/zenml/zen_server/utils.py\", line 98, in create_service_account\n    POST /api/v1/service_accounts"]"#;
    let m = error_message(body);
    assert_eq!(
        m,
        "1 validation error: {'type': 'missing', 'loc': ('body', 'active'), 'msg': 'Field required'}"
    );
}

#[test]
fn key_error_quotes_are_dropped() {
    let body =
        br#"{"detail":["KeyError","\"No service account with the 'x' name or ID was found\""]}"#;
    assert_eq!(
        error_message(body),
        "No service account with the 'x' name or ID was found"
    );
}

#[test]
fn fastapi_validation_list() {
    let body =
        br#"{"detail":[{"loc":["query","size"],"msg":"too big","type":"x"},{"msg":"bad page"}]}"#;
    assert_eq!(error_message(body), "too big; bad page");
}

#[test]
fn other_json_is_shown_compactly() {
    assert_eq!(
        error_message(br#"{"error": "boom"}"#),
        r#"{"error":"boom"}"#
    );
    assert_eq!(error_message(br#"[1, 2]"#), "[1,2]");
    assert_eq!(error_message(b"null"), "(empty error body)");
    assert_eq!(error_message(b"42"), "42");
}

#[test]
fn text_empty_and_binary_bodies() {
    assert_eq!(
        error_message(b"<html>\n<body>502 Bad Gateway</body></html>"),
        "<html>"
    );
    assert_eq!(
        error_message(b"Internal Server Error"),
        "Internal Server Error"
    );
    assert_eq!(error_message(b""), "(empty response body)");
    assert_eq!(error_message(b"  \n "), "(empty response body)");
    assert_eq!(error_message(&[0xff, 0xfe, b'x']), "\u{fffd}\u{fffd}x");
}

#[test]
fn long_messages_are_cut() {
    let body = format!(r#"{{"detail": "{}"}}"#, "a".repeat(5000));
    let m = error_message(body.as_bytes());
    assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(m.ends_with('…'));
}

#[test]
fn scrub_removes_credentials() {
    let pw = SecretString::from("hunter2-password");
    let m = scrub(
        "bad password hunter2-password for ZENKEY_eyJpZCI6IjEyMyJ9abc and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig end",
        &[&pw],
    );
    assert_eq!(
        m,
        "bad password [redacted] for ZENKEY_[redacted] and eyJ[redacted] end"
    );
    // Ordinary words are left alone.
    assert_eq!(scrub("keyJava ZENKEY_ x", &[]), "keyJava ZENKEY_ x");
}

#[test]
fn statuses_map_to_variants() {
    let op = Operation::RotateApiKey;
    let m = || "m".to_owned();
    assert!(matches!(
        ZenmlError::from_status(op, 401, m()),
        ZenmlError::Unauthorized { .. }
    ));
    assert!(matches!(
        ZenmlError::from_status(op, 403, m()),
        ZenmlError::Forbidden { .. }
    ));
    assert!(matches!(
        ZenmlError::from_status(op, 404, m()),
        ZenmlError::NotFound { .. }
    ));
    assert!(matches!(
        ZenmlError::from_status(op, 409, m()),
        ZenmlError::Conflict { .. }
    ));
    assert!(matches!(
        ZenmlError::from_status(op, 422, m()),
        ZenmlError::Invalid { status: 422, .. }
    ));
    assert!(matches!(
        ZenmlError::from_status(op, 400, m()),
        ZenmlError::Invalid { status: 400, .. }
    ));
    let e = ZenmlError::from_status(op, 503, m());
    assert!(e.is_retryable());
    assert_eq!(e.status(), Some(503));
    assert!(e.to_string().starts_with("rotate API key: "), "{e}");
    assert!(e.to_string().contains("may have acted"), "{e}");
    assert!(!ZenmlError::from_status(op, 404, m()).is_retryable());
}
