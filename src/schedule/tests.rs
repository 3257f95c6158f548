//! The due computation with fixed clocks (`unit`), then the scheduling contract as properties
//! over random policies and clocks (`properties`).

use super::*;

mod unit {
    use super::*;
    use crate::config::{CronSpec, Strategy};
    use crate::cron::parse_timezone;
    use chrono_tz::Tz;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn mins(n: u64) -> Duration {
        Duration::from_secs(n * 60)
    }

    fn hours(n: u64) -> Duration {
        mins(n * 60)
    }

    fn days(n: u64) -> Duration {
        hours(n * 24)
    }

    fn spec(expr: &str, zone: &str) -> CronSpec {
        CronSpec::parse(expr, parse_timezone(zone).unwrap()).unwrap()
    }

    fn policy(cadence: Cadence) -> KeyPolicy {
        KeyPolicy {
            name: "training".to_owned(),
            service_account: "training-pipelines".to_owned(),
            api_key: "default".to_owned(),
            store: "vault".to_owned(),
            path: "zenml/training".to_owned(),
            strategy: Strategy::Rotate,
            cadence,
            window: None,
            jitter: None,
            retain: mins(60),
            retire_previous: false,
            delete_after: None,
            hooks: Default::default(),
        }
    }

    fn windowed(cadence: Cadence, opens: CronSpec, duration: Duration) -> KeyPolicy {
        KeyPolicy {
            window: Some(MaintenanceWindow { opens, duration }),
            ..policy(cadence)
        }
    }

    fn created(t: &str) -> KeyTimes {
        KeyTimes {
            created: at(t),
            last_rotated: None,
            retain_until: None,
        }
    }

    /// What the rotator records after rotating at `now` with `retain`.
    fn rotated(times: KeyTimes, now: DateTime<Utc>, retain: Duration) -> KeyTimes {
        KeyTimes {
            last_rotated: Some(now),
            retain_until: Some(saturating_add(now, retain)),
            ..times
        }
    }

    #[test]
    fn every_counts_from_created_until_the_first_rotation() {
        let p = policy(Cadence::Every(days(7)));
        let fresh = created("2026-01-01T00:00:00Z");
        let d = evaluate(&p, &fresh, at("2026-01-07T23:59:59Z"));
        assert!(!d.due_now);
        assert_eq!(
            d.reason,
            DueReason::NotYetDue {
                at: at("2026-01-08T00:00:00Z")
            }
        );
        let d = evaluate(&p, &fresh, at("2026-01-08T00:00:00Z"));
        assert!(d.due_now);
        assert_eq!(
            d.reason,
            DueReason::Due {
                since: at("2026-01-08T00:00:00Z")
            }
        );
        let later = rotated(fresh, at("2026-01-05T00:00:00Z"), mins(60));
        let d = evaluate(&p, &later, at("2026-01-08T00:00:00Z"));
        assert!(!d.due_now);
        assert_eq!(d.due_at, at("2026-01-12T00:00:00Z"));
        assert_eq!(d.next_due, d.due_at);
    }

    #[test]
    fn jitter_shifts_the_due_time_by_the_policy_offset() {
        let fresh = created("2026-01-01T00:00:00Z");
        let base = at("2026-01-08T00:00:00Z");
        let jittered = KeyPolicy {
            jitter: Some(mins(15)),
            ..policy(Cadence::Every(days(7)))
        };
        let offset = jitter_offset("training", mins(15));
        assert!(offset > Duration::ZERO && offset < mins(15), "{offset:?}");
        let d = evaluate(&jittered, &fresh, base);
        assert_eq!(d.due_at, saturating_add(base, offset));
        assert!(!d.due_now);
        assert!(evaluate(&jittered, &fresh, saturating_add(base, offset)).due_now);
        let zero = KeyPolicy {
            jitter: Some(Duration::ZERO),
            ..policy(Cadence::Every(days(7)))
        };
        assert_eq!(evaluate(&zero, &fresh, base).due_at, base);
        assert!(evaluate(&zero, &fresh, base).due_now);
    }

    #[test]
    fn jitter_offset_is_stable_in_range_and_spreads_names() {
        // Pinned (computed independently from the documented recipe): a change here moves
        // every deployed key's schedule.
        assert_eq!(
            jitter_offset("training", mins(15)),
            Duration::from_secs(866)
        );
        assert_eq!(jitter_offset("training", Duration::ZERO), Duration::ZERO);
        // Below a second the offset is in nanoseconds, still inside [0, jitter).
        let sub = jitter_offset("training", Duration::from_millis(500));
        assert!(sub < Duration::from_millis(500));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let name = format!("policy-{i}");
            let offset = jitter_offset(&name, mins(15));
            assert!(offset < mins(15));
            assert_eq!(offset.subsec_nanos(), 0);
            assert_eq!(offset, jitter_offset(&name, mins(15)));
            seen.insert(offset);
        }
        assert!(seen.len() > 150, "only {} distinct offsets", seen.len());
    }

    #[test]
    fn missed_schedule_times_make_the_key_due_once() {
        let p = policy(Cadence::Schedule(spec("0 3 * * *", "UTC")));
        let times = rotated(
            created("2025-12-01T00:00:00Z"),
            at("2026-01-01T12:00:00Z"),
            mins(60),
        );
        // Down from Jan 1 to Jan 5: four fire times missed, one rotation.
        let now = at("2026-01-05T10:00:00Z");
        let d = evaluate(&p, &times, now);
        assert!(d.due_now);
        assert_eq!(d.due_at, at("2026-01-02T03:00:00Z"));
        assert_eq!(
            d.reason,
            DueReason::Due {
                since: at("2026-01-02T03:00:00Z")
            }
        );
        let after = rotated(times, now, mins(60));
        for t in [now, at("2026-01-05T23:00:00Z"), at("2026-01-06T02:59:59Z")] {
            let d = evaluate(&p, &after, t);
            assert!(!d.due_now, "due again at {t}");
            assert_eq!(d.next_due, at("2026-01-06T03:00:00Z"));
        }
        assert!(evaluate(&p, &after, at("2026-01-06T03:00:00Z")).due_now);
    }

    #[test]
    fn nothing_is_due_inside_the_retain_window() {
        // State left by an older policy with a longer retain than the current cadence.
        let p = policy(Cadence::Every(hours(1)));
        let times = KeyTimes {
            created: at("2026-01-01T00:00:00Z"),
            last_rotated: Some(at("2026-01-02T00:00:00Z")),
            retain_until: Some(at("2026-01-02T06:00:00Z")),
        };
        let until = DueReason::RetainWindow {
            until: at("2026-01-02T06:00:00Z"),
        };
        // Before the cadence is due, and after it: the retain window is what holds the key.
        for now in [at("2026-01-02T00:30:00Z"), at("2026-01-02T05:59:59Z")] {
            let d = evaluate(&p, &times, now);
            assert!(!d.due_now);
            assert_eq!(d.reason, until);
            assert_eq!(d.next_due, at("2026-01-02T06:00:00Z"));
        }
        // The window is half-open: at its end the previous value is gone.
        assert!(evaluate(&p, &times, at("2026-01-02T06:00:00Z")).due_now);
    }

    #[test]
    fn due_keys_wait_for_the_maintenance_window() {
        let p = windowed(Cadence::Every(days(1)), spec("0 2 * * *", "UTC"), hours(2));
        let times = created("2026-01-01T00:00:00Z");
        let d = evaluate(&p, &times, at("2026-01-02T01:00:00Z"));
        assert_eq!(d.due_at, at("2026-01-02T00:00:00Z"));
        assert!(!d.due_now);
        assert_eq!(
            d.reason,
            DueReason::OutsideMaintenanceWindow {
                opens: at("2026-01-02T02:00:00Z")
            }
        );
        let d = evaluate(&p, &times, at("2026-01-02T02:30:00Z"));
        assert!(d.due_now);
        assert_eq!(
            d.reason,
            DueReason::Due {
                since: at("2026-01-02T02:00:00Z")
            }
        );
        // [02:00, 04:00): at 04:00 the window has closed and the next one is tomorrow.
        let d = evaluate(&p, &times, at("2026-01-02T04:00:00Z"));
        assert!(!d.due_now);
        assert_eq!(d.next_due, at("2026-01-03T02:00:00Z"));
        // Due inside a window: from the due time, not the opening.
        let inside = created("2026-01-01T02:30:00Z");
        let d = evaluate(&p, &inside, at("2026-01-02T03:00:00Z"));
        assert!(d.due_now);
        assert_eq!(d.next_due, at("2026-01-02T02:30:00Z"));
        // Not yet due: the reason is the cadence, next_due the first window after it.
        let d = evaluate(&p, &inside, at("2026-01-01T12:00:00Z"));
        assert_eq!(
            d.reason,
            DueReason::NotYetDue {
                at: at("2026-01-02T02:30:00Z")
            }
        );
        assert_eq!(d.next_due, at("2026-01-02T02:30:00Z"));
    }

    #[test]
    fn a_window_can_span_midnight() {
        let p = windowed(Cadence::Every(days(1)), spec("0 22 * * *", "UTC"), hours(4));
        let times = created("2026-01-01T12:00:00Z");
        let d = evaluate(&p, &times, at("2026-01-02T21:00:00Z"));
        assert_eq!(d.next_due, at("2026-01-02T22:00:00Z"));
        let d = evaluate(&p, &times, at("2026-01-03T01:30:00Z"));
        assert!(d.due_now);
        assert_eq!(d.next_due, at("2026-01-02T22:00:00Z"));
        let d = evaluate(&p, &times, at("2026-01-03T02:00:00Z"));
        assert!(!d.due_now);
        assert_eq!(d.next_due, at("2026-01-03T22:00:00Z"));
    }

    #[test]
    fn schedules_in_berlin_fire_once_across_daylight_saving_changes() {
        let p = policy(Cadence::Schedule(spec("30 2 * * *", "Europe/Berlin")));
        let base = created("2026-01-01T00:00:00Z");
        // Spring: 02:30 does not exist on 2026-03-29; it fires once, when the clock jumps.
        let before = rotated(base, at("2026-03-28T01:30:00Z"), mins(60));
        let d = evaluate(&p, &before, at("2026-03-29T00:59:59Z"));
        assert!(!d.due_now);
        assert_eq!(d.due_at, at("2026-03-29T01:00:00Z"));
        let spring = rotated(base, at("2026-03-29T01:00:00Z"), mins(0));
        assert_eq!(
            evaluate(&p, &spring, at("2026-03-29T01:00:00Z")).due_at,
            at("2026-03-30T00:30:00Z")
        );
        // Autumn: 02:30 happens twice on 2026-10-25; only the first counts, and a rotation
        // during the second pass waits for the next day.
        let first = rotated(base, at("2026-10-25T00:30:00Z"), mins(0));
        let second = rotated(base, at("2026-10-25T01:10:00Z"), mins(0));
        for times in [first, second] {
            let d = evaluate(&p, &times, at("2026-10-25T01:45:00Z"));
            assert!(!d.due_now);
            assert_eq!(d.due_at, at("2026-10-26T01:30:00Z"));
        }
    }

    #[test]
    fn windows_in_berlin_follow_the_local_clock() {
        let p = windowed(
            Cadence::Every(days(1)),
            spec("0 2 * * *", "Europe/Berlin"),
            hours(2),
        );
        let times = created("2026-03-27T00:00:00Z");
        // 02:00 does not exist on 2026-03-29: that window opens at 03:00 CEST (01:00Z).
        let d = evaluate(&p, &times, at("2026-03-29T00:30:00Z"));
        assert_eq!(d.next_due, at("2026-03-29T01:00:00Z"));
        assert!(evaluate(&p, &times, at("2026-03-29T02:59:59Z")).due_now);
        assert!(!evaluate(&p, &times, at("2026-03-29T03:00:00Z")).due_now);
        // Autumn: the window opens at the first 02:00 (CEST, 00:00Z) and lasts two real hours.
        let times = created("2026-10-23T00:00:00Z");
        assert_eq!(
            evaluate(&p, &times, at("2026-10-24T23:30:00Z")).next_due,
            at("2026-10-25T00:00:00Z")
        );
        assert!(evaluate(&p, &times, at("2026-10-25T01:59:59Z")).due_now);
        assert!(!evaluate(&p, &times, at("2026-10-25T02:00:00Z")).due_now);
    }

    #[test]
    fn clock_skew_never_makes_a_key_due_early() {
        let every = policy(Cadence::Every(days(7)));
        let now = at("2026-01-01T00:00:00Z");
        // Created an hour in the future by ZenML's clock.
        let future = created("2026-01-01T01:00:00Z");
        let d = evaluate(&every, &future, now);
        assert!(!d.due_now);
        assert_eq!(d.due_at, at("2026-01-08T01:00:00Z"));
        let daily = policy(Cadence::Schedule(spec("0 3 * * *", "UTC")));
        assert_eq!(
            evaluate(&daily, &future, now).due_at,
            at("2026-01-01T03:00:00Z")
        );
        // last_rotated before created: the value is no older than its key.
        let odd = KeyTimes {
            created: at("2026-01-01T00:00:00Z"),
            last_rotated: Some(at("2025-06-01T00:00:00Z")),
            retain_until: None,
        };
        assert_eq!(odd.value_issued(), at("2026-01-01T00:00:00Z"));
        let d = evaluate(&every, &odd, at("2026-01-02T00:00:00Z"));
        assert!(!d.due_now);
        assert_eq!(d.due_at, at("2026-01-08T00:00:00Z"));
    }

    #[test]
    fn impossible_windows_and_schedules_are_never_due_and_say_why() {
        let never = CronSpec {
            expr: "0 0 31 2 *".to_owned(),
            timezone: Tz::UTC,
        };
        let times = created("2026-01-01T00:00:00Z");
        let now = at("2027-01-01T00:00:00Z");
        let d = evaluate(&policy(Cadence::Schedule(never.clone())), &times, now);
        assert!(!d.due_now);
        assert_eq!(d.next_due, FAR_FUTURE);
        assert_eq!(
            d.reason,
            DueReason::Unschedulable(Unschedulable::ScheduleNeverFires)
        );
        for p in [
            windowed(Cadence::Every(days(1)), never, hours(2)),
            windowed(
                Cadence::Every(days(1)),
                spec("0 2 * * *", "UTC"),
                Duration::ZERO,
            ),
        ] {
            let d = evaluate(&p, &times, now);
            assert!(!d.due_now);
            assert_eq!(d.next_due, FAR_FUTURE);
            assert_eq!(
                d.reason,
                DueReason::Unschedulable(Unschedulable::WindowNeverOpens)
            );
        }
        // Durations past the calendar saturate instead of overflowing.
        let huge = KeyPolicy {
            jitter: Some(Duration::MAX),
            ..policy(Cadence::Every(Duration::MAX))
        };
        let d = evaluate(&huge, &times, now);
        assert_eq!(d.due_at, FAR_FUTURE);
        assert!(!d.due_now);
        assert_eq!(FAR_FUTURE.to_rfc3339(), "9999-12-31T23:59:59+00:00");
    }

    #[test]
    fn reasons_read_as_one_sentence() {
        let t = at("2026-01-02T03:00:00Z");
        assert_eq!(
            DueReason::NotYetDue { at: t }.describe(),
            "Not due for rotation until 2026-01-02T03:00:00Z."
        );
        assert_eq!(
            DueReason::RetainWindow { until: t }.to_string(),
            "The previous value stays valid until 2026-01-02T03:00:00Z; rotating earlier would cut off consumers still using it."
        );
        assert_eq!(
            DueReason::OutsideMaintenanceWindow { opens: t }.describe(),
            "Due, but outside its maintenance window; the next window opens at 2026-01-02T03:00:00Z."
        );
        assert_eq!(
            DueReason::Due { since: t }.describe(),
            "Due since 2026-01-02T03:00:00Z."
        );
        for why in [
            Unschedulable::ScheduleNeverFires,
            Unschedulable::WindowNeverOpens,
        ] {
            let s = DueReason::Unschedulable(why).describe();
            assert!(s.starts_with("Never "), "{s}");
        }
    }
}

/// Random policies against random clocks: the scheduling contract (README, "Running it").
mod properties {
    use super::*;
    use crate::config::{CronSpec, Strategy as RotationStrategy};
    use crate::cron::parse_timezone;
    use proptest::prelude::*;

    const SCHEDULES: &[(&str, &str)] = &[
        ("0 3 * * *", "UTC"),
        ("*/30 * * * *", "UTC"),
        ("0 */6 * * *", "UTC"),
        ("0 0 1 * *", "UTC"),
        ("30 2 * * *", "Europe/Berlin"),
        ("30 2 * * SUN", "Europe/Berlin"),
        ("0 9 * * MON-FRI", "America/New_York"),
    ];
    const WINDOWS: &[(&str, &str)] = &[
        ("0 2 * * *", "UTC"),
        ("0 22 * * *", "Europe/Berlin"),
        ("0 * * * *", "UTC"),
        ("0 1 * * SAT", "UTC"),
        ("0 2 * * *", "Europe/Berlin"),
    ];
    /// Clocks start near these as often as anywhere: Berlin's and New York's DST changes.
    const TRANSITIONS: &[i64] = &[
        1_774_746_000, // 2026-03-29T01:00:00Z
        1_792_890_000, // 2026-10-25T01:00:00Z
        1_773_558_000, // 2026-03-08T07:00:00Z
        1_793_512_800, // 2026-11-01T06:00:00Z
    ];
    const DAY: i64 = 86_400;

    fn spec(&(expr, zone): &(&str, &str)) -> CronSpec {
        CronSpec::parse(expr, parse_timezone(zone).unwrap()).unwrap()
    }

    /// No window, no jitter, no retain.
    fn plain_policy(name: &str, cadence: Cadence) -> KeyPolicy {
        KeyPolicy {
            name: name.to_owned(),
            service_account: "sa".to_owned(),
            api_key: "default".to_owned(),
            store: "vault".to_owned(),
            path: "zenml/key".to_owned(),
            strategy: RotationStrategy::Rotate,
            cadence,
            window: None,
            jitter: None,
            retain: Duration::ZERO,
            retire_previous: false,
            delete_after: None,
            hooks: Default::default(),
        }
    }

    fn cadence() -> impl Strategy<Value = Cadence> {
        prop_oneof![
            (3_600..=30 * DAY as u64).prop_map(|s| Cadence::Every(Duration::from_secs(s))),
            (0..SCHEDULES.len()).prop_map(|i| Cadence::Schedule(spec(&SCHEDULES[i]))),
        ]
    }

    fn window() -> impl Strategy<Value = Option<MaintenanceWindow>> {
        proptest::option::of((0..WINDOWS.len(), 1u64..=8 * 60).prop_map(|(i, m)| {
            MaintenanceWindow {
                opens: spec(&WINDOWS[i]),
                duration: Duration::from_secs(m * 60),
            }
        }))
    }

    prop_compose! {
        fn key_policy()(
            name in "[a-z]{1,12}",
            cadence in cadence(),
            window in window(),
            jitter in proptest::option::of(0u64..=4 * 3_600),
            retain in 0..=2 * DAY as u64,
        ) -> KeyPolicy {
            KeyPolicy {
                window,
                jitter: jitter.map(Duration::from_secs),
                retain: Duration::from_secs(retain),
                ..plain_policy(&name, cadence)
            }
        }
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let anywhere = 1_704_067_200i64..1_893_456_000; // 2024..2030
        let near_change =
            (0..TRANSITIONS.len(), -2 * DAY..2 * DAY).prop_map(|(i, off)| TRANSITIONS[i] + off);
        prop_oneof![anywhere, near_change]
            .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap_or(FAR_FUTURE))
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    prop_compose! {
        /// Key state around `now`: possibly created in the future (clock skew), possibly
        /// rotated "before" it was created, possibly still retaining a value.
        fn key_times_around(now: DateTime<Utc>)(
            created in -2 * DAY..60 * DAY,
            rotated in proptest::option::of(-DAY..60 * DAY),
            retained in proptest::option::of(-3 * DAY..3 * DAY),
        ) -> KeyTimes {
            let created = now - secs(created);
            KeyTimes {
                created,
                last_rotated: rotated.map(|r| created + secs(r)).filter(|r| *r <= now),
                retain_until: retained.map(|r| now + secs(r)),
            }
        }
    }

    fn step() -> impl Strategy<Value = i64> {
        prop_oneof![1i64..600, 600i64..6 * 3_600, 6 * 3_600i64..5 * DAY]
    }

    fn inside_window(window: &MaintenanceWindow, t: DateTime<Utc>) -> bool {
        window
            .opens
            .latest_at_or_before(t)
            .is_some_and(|open| t < saturating_add(open, window.duration))
    }

    fn offset(policy: &KeyPolicy) -> Duration {
        policy
            .jitter
            .map_or(Duration::ZERO, |j| jitter_offset(&policy.name, j))
    }

    /// The invariants every single decision must satisfy.
    fn check_decision(
        policy: &KeyPolicy,
        times: &KeyTimes,
        now: DateTime<Utc>,
        d: &DueDecision,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(d.due_now, d.next_due <= now);
        prop_assert!(d.next_due >= d.due_at);
        if let Some(until) = times.retain_until {
            prop_assert!(d.next_due >= until);
            if now < until {
                prop_assert!(!d.due_now, "due inside the retain window: {:?}", d);
            }
        }
        if d.due_now {
            if let Some(w) = &policy.window {
                prop_assert!(inside_window(w, now), "due outside a window: {:?}", d);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// A clock walking forward, rotating whenever due: each schedule time (each cadence
        /// period for `every`) causes at most one rotation, and rotations only happen when the
        /// key is due, outside the retain window and inside a maintenance window.
        #[test]
        fn one_rotation_per_schedule_time(
            policy in key_policy(),
            start in instant(),
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let jitter = offset(&policy);
            let mut times = KeyTimes { created: start - secs(3_600), last_rotated: None, retain_until: None };
            let mut now = start;
            let mut last_fire: Option<DateTime<Utc>> = None;
            for step in steps {
                now += secs(step);
                let d = evaluate(&policy, &times, now);
                check_decision(&policy, &times, now, &d)?;
                if !d.due_now {
                    continue;
                }
                // The schedule time (or period end) this rotation answers.
                let fire = d.due_at - TimeDelta::from_std(jitter).unwrap();
                match &policy.cadence {
                    Cadence::Schedule(spec) => {
                        prop_assert_eq!(spec.latest_at_or_before(fire), Some(fire));
                        prop_assert!(fire > times.value_issued());
                    }
                    Cadence::Every(every) => {
                        prop_assert_eq!(fire, saturating_add(times.value_issued(), *every));
                    }
                }
                if let Some(previous) = last_fire {
                    prop_assert!(fire > previous, "{} answered twice", fire);
                }
                last_fire = Some(fire);
                times = KeyTimes {
                    last_rotated: Some(now),
                    retain_until: Some(saturating_add(now, policy.retain)),
                    ..times
                };
                prop_assert!(!evaluate(&policy, &times, now).due_now, "due again right after rotating");
            }
        }

        /// Down over several schedule times: due once on the next pass, then not again until
        /// the first schedule time after that rotation.
        #[test]
        fn missed_schedule_times_are_caught_up_once(
            which in 0..SCHEDULES.len(),
            jitter in proptest::option::of(0u64..=4 * 3_600),
            start in instant(),
            missed in 2usize..5,
            into_gap in 0.0f64..1.0,
            probes in proptest::collection::vec(0.0f64..1.0, 1..6),
        ) {
            let spec = spec(&SCHEDULES[which]);
            let policy = KeyPolicy {
                jitter: jitter.map(Duration::from_secs),
                ..plain_policy("catch-up", Cadence::Schedule(spec.clone()))
            };
            let j = TimeDelta::from_std(offset(&policy)).unwrap();
            let times = KeyTimes { created: start - secs(DAY), last_rotated: Some(start), retain_until: Some(start) };
            let mut fires = vec![spec.next_after(start).unwrap()];
            for _ in 0..missed {
                let last = fires[fires.len() - 1];
                fires.push(spec.next_after(last).unwrap());
            }
            // Wake up somewhere after the last missed fire time's jittered moment, before the next one's.
            let last = fires[missed - 1];
            let gap = (fires[missed] - last).num_seconds();
            let now = last + j + secs((gap as f64 * into_gap) as i64);
            let d = evaluate(&policy, &times, now);
            prop_assert!(d.due_now);
            prop_assert_eq!(d.due_at, fires[0] + j);

            let after = KeyTimes { last_rotated: Some(now), retain_until: Some(now), ..times };
            let next = spec.next_after(now).unwrap() + j;
            for p in probes {
                let t = now + secs(((next - now).num_seconds() as f64 * p) as i64);
                if t < next {
                    let d = evaluate(&policy, &after, t);
                    prop_assert!(!d.due_now, "due again at {} before {}", t, next);
                    prop_assert_eq!(d.next_due, next);
                }
            }
            prop_assert!(evaluate(&policy, &after, next).due_now);
        }

        /// Invariant 1, whatever the policy and the rest of the state.
        #[test]
        fn nothing_is_due_inside_the_retain_window(
            policy in key_policy(),
            (now, times) in instant().prop_flat_map(|now| (Just(now), key_times_around(now))),
            inside in 1..7 * DAY,
        ) {
            let times = KeyTimes { retain_until: Some(now + secs(inside)), ..times };
            let d = evaluate(&policy, &times, now);
            prop_assert!(!d.due_now);
            prop_assert!(d.next_due >= now + secs(inside));
            check_decision(&policy, &times, now, &d)?;
        }

        /// With the key state fixed, moving the clock forward never moves `next_due` back,
        /// and `due_now` is exactly `next_due <= now`.
        #[test]
        fn next_due_never_moves_back(
            policy in key_policy(),
            (start, times) in instant().prop_flat_map(|now| (Just(now), key_times_around(now))),
            steps in proptest::collection::vec(step(), 1..16),
        ) {
            let mut now = start;
            let mut previous = evaluate(&policy, &times, now);
            check_decision(&policy, &times, now, &previous)?;
            for step in steps {
                now += secs(step);
                let d = evaluate(&policy, &times, now);
                check_decision(&policy, &times, now, &d)?;
                prop_assert!(d.next_due >= previous.next_due, "{:?} then {:?}", previous, d);
                prop_assert_eq!(d.due_at, previous.due_at);
                previous = d;
            }
        }
    }
}
