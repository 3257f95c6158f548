//! Notifications, audit files, hooks and `revoke` through the built binary against real ZenML,
//! OpenBao and a loopback HTTP receiver (`common::stub_http`, real HTTP): what each event says,
//! that it is signed, delivered once despite a failure, written to the audit file, that hooks get
//! the documented environment and input and are retried, and that `revoke` cuts a value and its
//! tokens off at once. No key value may appear in any event, audit line, hook argument or
//! hook environment.

#[path = "../common/mod.rs"]
mod common;

mod events;
mod hooks;
mod revoke;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use zenml_rotator::secret::SecretString;

use common::rig::Rig;
use common::stores::env_file;

/// The secret webhooks are signed with in these tests.
const HOOK_SECRET: &str = "zr-test-webhook-secret-0123456789";
const HOOK_SECRET_ENV: &str = "ZR_TEST_WEBHOOK_SECRET";

/// The nine fields of every body, in any order.
const BODY_FIELDS: [&str; 9] = [
    "event",
    "policy",
    "service_account",
    "api_key",
    "key_id",
    "fingerprint",
    "at",
    "host",
    "detail",
];

fn fingerprint(value: &str) -> String {
    zenml_rotator::secret::fingerprint(&SecretString::from(value.to_owned()))
}

/// The API key value the file store holds for `file`.
fn stored_value(rig: &Rig, file: &str) -> String {
    let text = std::fs::read_to_string(rig.keys_dir().join(file)).unwrap();
    env_file(&text)["ZENML_STORE_API_KEY"].clone()
}

/// Every line of an audit file, parsed; asserts the file is private. The file goes to the
/// suite's transcript too (the leak check reads it).
fn audit_lines(path: &Path) -> Vec<Value> {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit file mode {mode:o}");
    common::transcript::file(path);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Asserts a body has exactly the nine fields, `at` in RFC 3339 UTC and a host.
fn assert_shape(body: &Value) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = BODY_FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "{body}");
    let at = body["at"].as_str().unwrap();
    assert!(at.ends_with('Z'), "{body}");
    chrono::DateTime::parse_from_rfc3339(at).unwrap();
    assert!(!body["host"].as_str().unwrap().is_empty(), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
}

/// Asserts none of `values` (key values, at least 16 characters) appears in `text`.
fn assert_no_value(what: &str, text: &str, values: &[&str]) {
    for v in values {
        assert!(v.len() >= 16, "too short to look for");
        assert!(!text.contains(v), "a key value appears in {what}:\n{text}");
    }
}

/// An executable script in the rig's directory.
fn script(rig: &Rig, name: &str, body: &str) -> String {
    let path = rig.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path.display().to_string()
}

/// How many lines a file has (0 when it does not exist): how often a hook ran.
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}
