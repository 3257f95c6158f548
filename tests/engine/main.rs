//! The rotation engine through the built binary against real ZenML, OpenBao and moto: one
//! rotation into each store, the six safety invariants, `plan`/`--dry-run` read-only-ness, a
//! 20-key pass, the end of a retain window, and what it refuses because it would leak. One test
//! binary (one link) with a module per theme.

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod exposure;
mod many;
mod plan;
mod preflight;
mod secrets;
mod stores;
mod window;

use chrono::{DateTime, Utc};
use zenml_rotator::zenml::{ApiKey, ZenmlClient};

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
