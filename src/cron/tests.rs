use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn five_fields_only() {
    assert_eq!(
        CronSpec::parse("0 0 3 * * SUN", Tz::UTC),
        Err(CronSpecError::FieldCount(6))
    );
    assert_eq!(
        CronSpec::parse("0 3 *", Tz::UTC),
        Err(CronSpecError::FieldCount(3))
    );
    assert!(matches!(
        CronSpec::parse("61 3 * * *", Tz::UTC),
        Err(CronSpecError::Invalid(_))
    ));
    assert!(CronSpec::parse("0 3 * * SUN", Tz::UTC).is_ok());
    assert!(CronSpec::parse("@daily", Tz::UTC).is_ok());
}

#[test]
fn never_firing_is_rejected() {
    assert_eq!(
        CronSpec::parse("0 0 31 2 *", Tz::UTC),
        Err(CronSpecError::NeverFires)
    );
}

#[test]
fn next_and_previous_in_utc_and_a_zone() {
    let s = CronSpec::parse("0 3 * * SUN", Tz::UTC).unwrap();
    // 2026-11-28 is a Saturday.
    assert_eq!(
        s.next_after(at("2026-11-28T12:00:00Z")),
        Some(at("2026-11-29T03:00:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-11-29T03:00:00Z")),
        Some(at("2026-12-06T03:00:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-11-29T03:00:00Z")),
        Some(at("2026-11-29T03:00:00Z"))
    );
    let berlin = CronSpec::parse("0 3 * * *", parse_timezone("Europe/Berlin").unwrap()).unwrap();
    // 03:00 in Berlin is 02:00 UTC in winter.
    assert_eq!(
        berlin.next_after(at("2026-11-28T12:00:00Z")),
        Some(at("2026-11-29T02:00:00Z"))
    );
}

#[test]
fn gaps_shorter_than_retain_are_found() {
    let hourly = CronSpec::parse("0 * * * *", Tz::UTC).unwrap();
    let year = Duration::from_secs(366 * 86400);
    let from = at("2026-01-01T00:00:00Z");
    assert!(
        hourly
            .gap_shorter_than(Duration::from_secs(3600), from, year)
            .is_none()
    );
    assert!(
        hourly
            .gap_shorter_than(Duration::from_secs(3601), from, year)
            .is_some()
    );
    // Uneven: 02:00 and 03:00 are an hour apart even though the schedule is "daily-ish".
    let uneven = CronSpec::parse("0 2,3 * * *", Tz::UTC).unwrap();
    let (_, gap) = uneven
        .gap_shorter_than(Duration::from_secs(2 * 3600), from, year)
        .unwrap();
    assert_eq!(gap, Duration::from_secs(3600));
}

fn berlin(expr: &str) -> CronSpec {
    CronSpec::parse(expr, parse_timezone("Europe/Berlin").unwrap()).unwrap()
}

#[test]
fn autumn_hour_fires_once_and_never_goes_backwards() {
    // 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET at 01:00 UTC, so 02:30
    // happens at 00:30Z and again at 01:30Z. It fires once, at the first.
    let s = berlin("30 2 * * *");
    assert_eq!(
        s.next_after(at("2026-10-25T00:00:00Z")),
        Some(at("2026-10-25T00:30:00Z"))
    );
    // During the second pass (02:10 CET) the next fire is tomorrow, not the one just past
    // (croner asked in the zone answers 00:30Z here, before its own argument).
    assert_eq!(
        s.next_after(at("2026-10-25T01:10:00Z")),
        Some(at("2026-10-26T01:30:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-10-25T01:10:00Z")),
        Some(at("2026-10-25T00:30:00Z"))
    );
    let quarterly = berlin("*/15 * * * *");
    let mut t = at("2026-10-24T23:50:00Z");
    for _ in 0..(3 * 60) {
        let next = quarterly.next_after(t).unwrap();
        assert!(next > t, "next_after({t}) = {next}");
        let last = quarterly.latest_at_or_before(t).unwrap();
        assert!(last <= t && quarterly.next_after(last).unwrap() > t);
        t += TimeDelta::minutes(1);
    }
}

#[test]
fn spring_gap_fires_once_at_its_end_and_invents_nothing() {
    // 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST at 01:00 UTC.
    let skipped = berlin("30 2 * * *");
    assert_eq!(
        skipped.next_after(at("2026-03-28T12:00:00Z")),
        Some(at("2026-03-29T01:00:00Z"))
    );
    assert_eq!(
        skipped.next_after(at("2026-03-29T01:00:00Z")),
        Some(at("2026-03-30T00:30:00Z"))
    );
    assert_eq!(
        skipped.latest_at_or_before(at("2026-03-29T01:10:00Z")),
        Some(at("2026-03-29T01:00:00Z"))
    );
    // 01:15 is before the gap: the next fire is tomorrow's 01:15 CEST, not a made-up 03:00.
    let before_gap = berlin("15 1 * * *");
    assert_eq!(
        before_gap.next_after(at("2026-03-29T00:15:00Z")),
        Some(at("2026-03-29T23:15:00Z"))
    );
    // So a daily schedule has no short gap around the change.
    let year = Duration::from_secs(366 * 86400);
    assert_eq!(
        before_gap.gap_shorter_than(
            Duration::from_secs(20 * 3600),
            at("2026-01-01T00:00:00Z"),
            year
        ),
        None
    );
}

#[test]
fn fire_times_are_whole_seconds() {
    // ZenML timestamps carry microseconds; fire times must not inherit them.
    let s = CronSpec::parse("0 3 * * *", Tz::UTC).unwrap();
    assert_eq!(
        s.next_after(at("2026-01-01T03:00:00.5Z")),
        Some(at("2026-01-02T03:00:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-01-01T02:59:59.5Z")),
        Some(at("2026-01-01T03:00:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-01-01T03:00:00.5Z")),
        Some(at("2026-01-01T03:00:00Z"))
    );
}

#[test]
fn bad_time_zone() {
    assert!(parse_timezone("Mars/Olympus").is_err());
    assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
}
