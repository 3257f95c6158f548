use std::collections::HashMap;

use super::backoff::{BackoffPolicy, KeyBackoff};
use super::state::earliest_wake;
use super::*;
use crate::config::{Config, DaemonSettings};

#[test]
fn the_timer_never_fires_before_a_due_time_and_never_spins_on_a_past_one() {
    let now = Utc::now();
    let before = Instant::now();
    let ahead = timer_deadline(now + chrono::TimeDelta::seconds(10), now);
    assert!(ahead >= before + Duration::from_secs(10) + LATE_BY);
    assert!(ahead <= Instant::now() + Duration::from_secs(10) + LATE_BY);
    for past in [now, now - chrono::TimeDelta::days(3)] {
        let at = timer_deadline(past, now);
        assert!(at >= before + MIN_GAP, "a past due time must wait MIN_GAP");
    }
}

#[test]
fn the_daemon_wakes_for_the_earliest_due_time_or_backoff_expiry() {
    let toml = "[zenml]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
                [[key]]\nname = \"a\"\nservice_account = \"sa\"\napi_key = \"a\"\npath = \"a.env\"\n\
                [[key]]\nname = \"b\"\nservice_account = \"sa\"\napi_key = \"b\"\npath = \"b.env\"\n\
                [[key]]\nname = \"c\"\nservice_account = \"sa\"\napi_key = \"c\"\npath = \"c.env\"\n";
    let config = Config::parse(toml, std::path::Path::new("t.toml")).unwrap();
    let now = Utc::now();
    let at = |hours: i64| now + chrono::TimeDelta::hours(hours);
    let mut next_due = HashMap::new();
    next_due.insert("a".to_owned(), at(48));
    next_due.insert("b".to_owned(), at(24));
    let mut backoff = HashMap::new();
    assert_eq!(
        earliest_wake(&config.keys, &backoff, &next_due),
        Some(at(24))
    );
    // A failing key wakes the daemon at its backoff expiry, not at its due time.
    let mut failing = KeyBackoff::new();
    failing.record_failure(
        &BackoffPolicy::from_settings(&DaemonSettings::default()),
        "c",
        now,
    );
    let retry = failing.next_attempt().unwrap();
    backoff.insert("c".to_owned(), failing);
    next_due.insert("c".to_owned(), at(72));
    assert_eq!(
        earliest_wake(&config.keys, &backoff, &next_due),
        Some(retry)
    );
    // Nothing scheduled: only the safety pass remains.
    assert_eq!(earliest_wake(&[], &backoff, &next_due), None);
}
