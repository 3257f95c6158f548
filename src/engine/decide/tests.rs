//! Table-driven tests of `decide` with fixed clocks: the replace rules, then the rotate rules.

use chrono::Duration as ChronoDuration;
use uuid::Uuid;

use super::*;
use crate::config::{KeyPolicy, Strategy};
use crate::store::{RotationRecord, StoreSnapshot};
use crate::testing::at;
use crate::zenml::{ApiKey, ServiceAccount};

mod replace_tests {
    use super::*;

    fn policy() -> KeyPolicy {
        let toml = "[zenml]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
                    [[key]]\nname = \"train\"\nservice_account = \"sa\"\napi_key = \"default\"\n\
                    path = \"t.env\"\nstrategy = \"replace\"\nretain = \"1h\"\nevery = \"30d\"\n\
                    delete_after = \"7d\"\n";
        crate::config::Config::parse(toml, std::path::Path::new("t.toml"))
            .unwrap()
            .keys
            .remove(0)
    }

    fn sa() -> ServiceAccount {
        ServiceAccount {
            id: Uuid::nil(),
            name: "sa".into(),
            active: true,
            created: at("2026-01-01T00:00:00Z"),
            description: String::new(),
        }
    }

    fn key(name: &str, created: &str, ours: bool) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            name: name.into(),
            description: if ours {
                "zenml-rotator: replacement key of policy \"train\"".into()
            } else {
                String::new()
            },
            active: true,
            created: at(created),
            updated: at(created),
            service_account_id: Uuid::nil(),
            service_account_name: "sa".into(),
            retain_period_minutes: None,
            last_login: None,
            last_rotated: None,
        }
    }

    fn record(
        current: &ApiKey,
        retiring: Option<&ApiKey>,
        retire_at: Option<&str>,
    ) -> RotationRecord {
        RotationRecord {
            policy: "train".into(),
            service_account: "sa".into(),
            api_key: current.name.clone(),
            key_id: current.id.to_string(),
            fingerprint: "00000000".into(),
            rotated_at: Some(current.created),
            retain_until: retire_at.map(at),
            finalized_at: None,
            retiring_key_id: retiring.map(|k| k.id.to_string()),
            retire_at: retire_at.map(at),
            rescue_for: None,
            rescue_until: None,
            hooks: Default::default(),
        }
    }

    fn observed(
        current: Option<&ApiKey>,
        record: Option<RotationRecord>,
        family: Vec<ApiKey>,
        stored: Option<Uuid>,
    ) -> Observed {
        Observed {
            service_account: Some(sa()),
            key: current.cloned(),
            snapshot: Some(StoreSnapshot {
                exists: record.is_some(),
                version: record.as_ref().map(|_| "1".into()),
                record,
                ..StoreSnapshot::default()
            }),
            claim: None,
            in_flight: None,
            family: Some(Family {
                keys: family,
                stored_key_id: stored,
            }),
            read_error: None,
        }
    }

    #[test]
    fn the_first_pass_creates_a_key_and_retires_the_seed() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let obs = observed(Some(&seed), None, vec![seed.clone()], None);
        let plan = decide(&policy(), &obs, at("2026-01-02T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));
        assert_eq!(plan.api_key, "default");
    }

    #[test]
    fn inside_the_window_it_waits_and_wakes_for_the_deactivation() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let rec = record(&cur, Some(&seed), Some("2026-01-02T01:00:00Z"));
        let obs = observed(Some(&cur), Some(rec), vec![seed.clone(), cur.clone()], None);
        let now = at("2026-01-02T00:30:00Z");
        let plan = decide(&policy(), &obs, now);
        assert_eq!((plan.action, plan.why), (Action::Wait, Why::NotDue));
        assert_eq!(plan.retain_until, Some(at("2026-01-02T01:00:00Z")));
        assert_eq!(plan.wake_at, Some(at("2026-01-02T01:00:00Z")));
        assert_eq!(plan.api_key, "default-20260102000000");
        assert_eq!(plan.last_rotated, Some(cur.created));
        assert!(plan.reason.contains("stays active"), "{}", plan.reason);
        // Once the window ended: deactivate the seed.
        let plan = decide(&policy(), &obs, at("2026-01-02T01:00:00Z"));
        assert_eq!(
            (plan.action, plan.why),
            (Action::Finalize, Why::FinalizeDue)
        );
        assert!(plan.reason.contains("\"default\""), "{}", plan.reason);
        let work = replace_work(
            &policy(),
            Some(&cur),
            obs.snapshot.as_ref().unwrap().record.as_ref(),
            obs.family.as_ref().unwrap(),
            at("2026-01-02T01:00:00Z"),
        );
        assert_eq!(work.retiring, vec![seed]);
        assert!(work.orphans.is_empty() && work.deletable.is_empty() && work.adopt.is_none());
    }

    #[test]
    fn a_key_no_record_accounts_for_is_an_orphan_unless_stored() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let mut cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let orphan = key("default-20260301000000", "2026-03-01T00:00:00Z", true);
        let by_hand = key("default-20260301000001", "2026-03-01T00:00:01Z", false);
        let other = key("default-admin", "2026-03-01T00:00:00Z", true);
        // Retired long ago: the seed is inactive, deactivated by the rotator 2 days ago.
        let mut retired = seed.clone();
        retired.active = false;
        retired.description = "x | deactivated by zenml-rotator at 2026-02-27T00:00:00Z (r)".into();
        retired.updated = at("2026-02-27T00:00:00Z");
        cur.updated = cur.created;
        let rec = record(&cur, None, None);
        let family = vec![
            retired.clone(),
            cur.clone(),
            orphan.clone(),
            by_hand.clone(),
            other,
        ];
        let p = policy();
        assert!(needs_stored_key(&p, Some(&cur), Some(&rec), &family));
        assert!(!needs_stored_key(&p, Some(&cur), Some(&rec), &family[..2]));
        let now = at("2026-03-01T00:10:00Z");

        let obs = observed(Some(&cur), Some(rec.clone()), family.clone(), Some(cur.id));
        let plan = decide(&p, &obs, now);
        assert_eq!(
            (plan.action, plan.why),
            (Action::Finalize, Why::FinalizeDue)
        );
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.family.as_ref().unwrap(),
            now,
        );
        assert_eq!(work.orphans, vec![orphan.clone()]);
        // A key made by hand with a matching name is not ours; nothing is retiring.
        assert!(work.retiring.is_empty(), "{:?}", work.retiring);
        // Deactivated 2 days ago, delete_after 7d: not yet.
        assert!(work.deletable.is_empty());
        let later = at("2026-03-06T00:00:00Z");
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.family.as_ref().unwrap(),
            later,
        );
        assert_eq!(work.deletable, vec![retired]);

        // The store holds the newer key: the record lags behind the value; adopt it.
        let obs = observed(Some(&cur), Some(rec.clone()), family, Some(orphan.id));
        let plan = decide(&p, &obs, now);
        assert_eq!(
            (plan.action, plan.why),
            (Action::Finalize, Why::FinalizeDue)
        );
        let work = replace_work(
            &p,
            Some(&cur),
            Some(&rec),
            obs.family.as_ref().unwrap(),
            now,
        );
        assert_eq!(work.adopt, Some(orphan));
        assert!(work.orphans.is_empty());
        assert!(plan.reason.contains("record"), "{}", plan.reason);
    }

    #[test]
    fn older_keys_kept_by_a_forced_replacement_retire_with_the_newest_window() {
        let seed = key("default", "2026-01-01T00:00:00Z", false);
        let first = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let cur = key("default-20260102001000", "2026-01-02T00:10:00Z", true);
        let rec = record(&cur, Some(&first), Some("2026-01-02T01:10:00Z"));
        let obs = observed(
            Some(&cur),
            Some(rec.clone()),
            vec![seed.clone(), first.clone(), cur.clone()],
            None,
        );
        let work = replace_work(
            &policy(),
            Some(&cur),
            Some(&rec),
            obs.family.as_ref().unwrap(),
            at("2026-01-02T00:20:00Z"),
        );
        assert_eq!(work.retiring, vec![seed, first]);
        assert_eq!(work.retire_at, Some(at("2026-01-02T01:10:00Z")));
    }

    #[test]
    fn a_dead_stored_key_blocks_or_is_replaced() {
        let cur = key("default-20260102000000", "2026-01-02T00:00:00Z", true);
        let rec = record(&cur, None, None);
        let mut off = cur.clone();
        off.active = false;
        let obs = observed(Some(&off), Some(rec.clone()), vec![off.clone()], None);
        let plan = decide(&policy(), &obs, at("2026-01-03T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Blocked, Why::Unusable));
        // Deleted: the store holds a dead value; a new key is the only way back.
        let obs = observed(None, Some(rec), vec![], None);
        let plan = decide(&policy(), &obs, at("2026-01-03T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));
    }
}

mod rotate_tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::config::Cadence;
    use crate::store::RotationRecord;

    fn policy() -> KeyPolicy {
        KeyPolicy {
            name: "p".into(),
            service_account: "sa".into(),
            api_key: "default".into(),
            store: "file".into(),
            path: "p.env".into(),
            strategy: Strategy::Rotate,
            cadence: Cadence::Every(Duration::from_secs(30 * 86400)),
            window: None,
            jitter: None,
            retain: Duration::from_secs(3600),
            retire_previous: false,
            delete_after: None,
            hooks: Default::default(),
        }
    }

    const KEY: &str = "6f1c1d2e-0000-4000-8000-000000000001";

    fn observed(last_rotated: Option<&str>, record: Option<RotationRecord>) -> Observed {
        let key = ApiKey {
            id: Uuid::parse_str(KEY).unwrap(),
            name: "default".into(),
            description: String::new(),
            active: true,
            created: at("2026-01-01T00:00:00Z"),
            updated: at("2026-01-01T00:00:00Z"),
            service_account_id: Uuid::nil(),
            service_account_name: "sa".into(),
            retain_period_minutes: Some(60),
            last_login: None,
            last_rotated: last_rotated.map(at),
        };
        Observed {
            service_account: Some(ServiceAccount {
                id: Uuid::nil(),
                name: "sa".into(),
                active: true,
                created: at("2026-01-01T00:00:00Z"),
                description: String::new(),
            }),
            key: Some(key),
            snapshot: Some(StoreSnapshot {
                exists: true,
                version: Some("1".into()),
                record,
                ..StoreSnapshot::default()
            }),
            claim: None,
            in_flight: None,
            family: None,
            read_error: None,
        }
    }

    fn ours(rotated: &str, finalized: Option<&str>) -> RotationRecord {
        RotationRecord {
            policy: "p".into(),
            key_id: KEY.into(),
            rotated_at: Some(at(rotated)),
            retain_until: Some(at(rotated) + ChronoDuration::hours(1)),
            finalized_at: finalized.map(at),
            ..RotationRecord::default()
        }
    }

    #[test]
    fn the_actions_over_a_rotation_life() {
        let rotated = "2026-03-01T00:00:00Z";
        let cases = [
            // (now, last_rotated, record, action, why)
            (
                "2026-03-01T00:30:00Z",
                Some(rotated),
                Some(ours(rotated, None)),
                Action::Wait,
                Why::NotDue,
            ),
            (
                "2026-03-01T01:00:01Z",
                Some(rotated),
                Some(ours(rotated, None)),
                Action::Finalize,
                Why::FinalizeDue,
            ),
            (
                "2026-03-01T02:00:00Z",
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Wait,
                Why::NotDue,
            ),
            (
                "2026-04-01T00:00:00Z",
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Rotate,
                Why::Due,
            ),
            // Someone else rotated after us: our stored value is the old generation now, alive
            // until that rotation's window ends: a rescue key stands in.
            (
                "2026-03-01T12:30:00Z",
                Some("2026-03-01T12:00:00Z"),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Recover,
                Why::RotatedOutOfBand,
            ),
            // Seen only after that window: the stored value is dead, replaced at once.
            (
                "2026-03-02T00:00:00Z",
                Some("2026-03-01T12:00:00Z"),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
                Action::Rotate,
                Why::StoredRefused,
            ),
        ];
        for (now, last, record, action, why) in cases {
            let plan = decide(&policy(), &observed(last, record), at(now));
            assert_eq!(
                (plan.action, plan.why.clone()),
                (action, why),
                "at {now}: {}",
                plan.reason
            );
            assert!(!plan.reason.is_empty());
        }
    }

    #[test]
    fn a_rotation_by_someone_else_in_the_same_second_is_still_seen() {
        let ours_at = "2026-03-01T00:00:00.250123Z";
        let record = ours(ours_at, Some("2026-03-01T01:01:00Z"));
        let now = at("2026-03-02T00:00:00Z");
        // The same event, as ZenML reports it: nothing to see.
        let plan = decide(
            &policy(),
            &observed(Some(ours_at), Some(record.clone())),
            now,
        );
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        // Another rotation 0.5 s later.
        let plan = decide(
            &policy(),
            &observed(Some("2026-03-01T00:00:00.750000Z"), Some(record)),
            now,
        );
        assert_ne!(plan.action, Action::Wait, "{}", plan.reason);
        assert!(
            plan.reason.contains("outside zenml-rotator"),
            "{}",
            plan.reason
        );
        // A record kept with whole seconds (older versions) matches its own second only.
        let legacy = ours("2026-03-01T00:00:00Z", Some("2026-03-01T01:01:00Z"));
        let plan = decide(
            &policy(),
            &observed(Some(ours_at), Some(legacy.clone())),
            now,
        );
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        let plan = decide(
            &policy(),
            &observed(Some("2026-03-01T00:00:01.100000Z"), Some(legacy)),
            now,
        );
        assert_ne!(plan.action, Action::Wait, "{}", plan.reason);
        assert!(
            plan.reason.contains("outside zenml-rotator"),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn a_waiting_key_wakes_the_daemon_for_its_finalize() {
        let rotated = "2026-03-01T00:00:00Z";
        let plan = decide(
            &policy(),
            &observed(Some(rotated), Some(ours(rotated, None))),
            at("2026-03-01T00:30:00Z"),
        );
        assert_eq!(plan.action, Action::Wait);
        assert_eq!(plan.next_due, Some(at("2026-03-31T00:00:00Z")));
        assert_eq!(plan.wake_at, Some(at("2026-03-01T01:00:00Z")));
        // Once finalized, only the next rotation matters.
        let plan = decide(
            &policy(),
            &observed(
                Some(rotated),
                Some(ours(rotated, Some("2026-03-01T01:01:00Z"))),
            ),
            at("2026-03-01T02:00:00Z"),
        );
        assert_eq!(plan.wake_at, plan.next_due);
    }

    #[test]
    fn an_empty_store_is_filled_but_never_inside_the_window() {
        let mut obs = observed(None, None);
        obs.snapshot = Some(StoreSnapshot::default());
        let plan = decide(&policy(), &obs, at("2026-01-02T00:00:00Z"));
        assert_eq!((plan.action, plan.why), (Action::Rotate, Why::StoreEmpty));

        let mut obs = observed(Some("2026-01-02T00:00:00Z"), None);
        obs.snapshot = Some(StoreSnapshot::default());
        let plan = decide(&policy(), &obs, at("2026-01-02T00:10:00Z"));
        assert_eq!(plan.action, Action::Wait, "{}", plan.reason);
        assert_eq!(plan.next_due, Some(at("2026-01-02T01:00:00Z")));
    }

    #[test]
    fn unusable_keys_and_stores_are_blocked_with_a_reason() {
        let now = at("2026-02-01T00:00:00Z");
        let mut obs = observed(None, None);
        obs.service_account = None;
        assert_eq!(decide(&policy(), &obs, now).why, Why::Unusable);

        let mut obs = observed(None, None);
        if let Some(k) = obs.key.as_mut() {
            k.active = false;
        }
        let plan = decide(&policy(), &obs, now);
        assert_eq!(plan.action, Action::Blocked);
        assert!(plan.reason.contains("deactivated"), "{}", plan.reason);

        let mut obs = observed(None, None);
        if let Some(s) = obs.snapshot.as_mut() {
            s.unwritable = Some("the secret is scheduled for deletion".into());
        }
        let plan = decide(&policy(), &obs, now);
        assert_eq!(plan.action, Action::Blocked);
        assert!(
            plan.reason.contains("scheduled for deletion"),
            "{}",
            plan.reason
        );

        let obs = Observed {
            read_error: Some(ReadError::new(Upstream::Store, "unavailable")),
            ..Observed::default()
        };
        assert_eq!(decide(&policy(), &obs, now).why, Why::Unreadable);
    }

    #[test]
    fn a_journaled_value_is_resumed_before_anything_else() {
        let rotated = "2026-03-01T00:00:00Z";
        let mut obs = observed(Some(rotated), Some(ours(rotated, None)));
        obs.in_flight = Some(InFlight {
            holder: None,
            phase: Phase::Rotated,
            started_at: at("2026-03-05T00:00:00Z"),
            previous_last_rotated: Some(at(rotated)),
            fingerprint: Some("abcd0123".into()),
        });
        let plan = decide(&policy(), &obs, at("2026-03-05T00:00:10Z"));
        assert_eq!(
            (plan.action, plan.why),
            (Action::Rotate, Why::ResumeJournal)
        );
    }
}
