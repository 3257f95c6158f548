//! The rotation engine through the built binary against real ZenML, OpenBao and moto: one
//! rotation into each store, the six safety invariants, `plan`/`--dry-run` read-only-ness, a
//! 20-key pass, the end of a retain window, and what it refuses because it would leak. One test
//! binary (one link) with a module per theme.

#[path = "../common/mod.rs"]
mod common;

mod coordination;
mod crash;
mod exposure;
mod many;
mod plan;
mod preflight;
mod recovery;
mod secrets;
mod stores;
mod window;

use chrono::{DateTime, Utc};
use zenml_rotator::zenml::{ApiKey, ZenmlClient};

/// A fresh service account (named after `prefix`) whose key `default` is policy `k`, kept in the
/// file store `local` as `k.env`; the policy file is written.
async fn file_store_key(
    prefix: &str,
) -> (
    ZenmlClient,
    zenml_rotator::zenml::ServiceAccount,
    zenml_rotator::zenml::NewApiKey,
    common::rig::Rig,
) {
    let admin = common::zenml_admin();
    let (sa, key) = common::new_service_account_with_key(&admin, prefix).await;
    let mut rig = common::rig::Rig::new();
    rig.file_store("local")
        .key("k", &sa.name, "local", "k.env", "");
    rig.write();
    (admin, sa, key, rig)
}

/// The key `default` of a service account, as ZenML has it now.
async fn key_now(admin: &ZenmlClient, sa: uuid::Uuid) -> ApiKey {
    admin.get_api_key(sa, "default").await.unwrap()
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Two times within a second of each other (stores keep whole seconds).
fn same_second(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() < 1000
}
