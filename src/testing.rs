//! Fixtures the unit tests share: fixed clocks, and ZenML objects as the server would list them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::{Config, KeyPolicy};
use crate::zenml::{ApiKey, ServiceAccount};

/// A fixed instant: `at("2026-01-01T00:00:00Z")`.
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An active key created at `created`, never rotated, never used.
pub fn api_key(name: &str, created: &str) -> ApiKey {
    ApiKey {
        id: Uuid::new_v4(),
        name: name.into(),
        description: String::new(),
        active: true,
        created: at(created),
        updated: at(created),
        service_account_id: Uuid::new_v4(),
        service_account_name: "sa".into(),
        retain_period_minutes: None,
        last_login: None,
        last_rotated: None,
    }
}

/// An active service account created at the start of 2026.
pub fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        id: Uuid::new_v4(),
        name: name.into(),
        active: true,
        created: at("2026-01-01T00:00:00Z"),
        description: String::new(),
    }
}

/// The one `[[key]]` of a minimal policy file, with `extra` lines added to the key's table.
pub fn policy(name: &str, sa: &str, api_key: &str, extra: &str) -> KeyPolicy {
    let toml = format!(
        "[zenml]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
         [[key]]\nname = \"{name}\"\nservice_account = \"{sa}\"\napi_key = \"{api_key}\"\npath = \"{name}.env\"\n{extra}"
    );
    Config::parse(&toml, std::path::Path::new("t.toml"))
        .unwrap()
        .keys
        .remove(0)
}

/// A temporary directory only its owner may enter, as the state directory and a file store's
/// directory must be (tempfile's own default follows the umask).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

/// Writes `content` to `path` as if two hours ago: older than `durable::STALE_TEMP_AGE`.
pub fn write_two_hours_ago(path: &std::path::Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600))
        .unwrap();
}
