//! How times are written for people and in records: RFC 3339 in UTC. One place, so every message,
//! table and log line says a time the same way.

use chrono::{DateTime, SecondsFormat, Utc};

/// `2026-03-01T03:00:00Z`: whole seconds, for messages, tables and logs.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// As many sub-second digits as the time has: ZenML's microseconds survive a round trip through a
/// store record, so a later pass can tell one rotation from another in the same second.
pub fn rfc3339_exact(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_for_people_and_microseconds_for_records() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T03:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339(t), "2026-03-01T03:00:00Z");
        assert_eq!(rfc3339_exact(t), "2026-03-01T03:00:00.123456Z");
    }
}
