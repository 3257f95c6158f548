//! How the rotator names and marks the API keys it creates and retires. Pure string rules that
//! `decide`, the strategies, the key guard and `inventory` all rely on; it imports nothing of ours.

use chrono::{DateTime, Utc};

/// Descriptions of keys the rotator creates start with this: only such keys are ever treated as
/// orphans of an interrupted run (a person's key that happens to match the name is left alone).
pub const CREATED_MARK: &str = "zenml-rotator:";
/// Descriptions of the rescue keys a recovery creates (strategy `rotate`) start with this.
pub const RESCUE_MARK: &str = "zenml-rotator: rescue key";
/// Appended to the description of every key the rotator deactivates; `delete_after` deletes only
/// keys carrying it.
pub const DEACTIVATED_MARK: &str = "deactivated by zenml-rotator at";

/// The name of a replacement key: `<api_key>-<UTC yyyymmddHHMMSS>`.
pub fn generation_name(api_key: &str, at: DateTime<Utc>) -> String {
    format!("{api_key}-{}", at.format("%Y%m%d%H%M%S"))
}

/// Whether `name` is a replacement of `api_key`: exactly `<api_key>-` and 14 digits.
pub fn is_generation(api_key: &str, name: &str) -> bool {
    name.strip_prefix(api_key)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|stamp| stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()))
}

/// The keys a replace policy covers: the one named `api_key` (the seed) and its replacements.
pub fn in_family(api_key: &str, name: &str) -> bool {
    name == api_key || is_generation(api_key, name)
}

pub fn created_by_rotator(description: &str) -> bool {
    description.starts_with(CREATED_MARK)
}

pub fn deactivated_by_rotator(description: &str) -> bool {
    description.contains(DEACTIVATED_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(generation_name("default", at), "default-20260304050607");
        assert!(is_generation("default", "default-20260304050607"));
        assert!(in_family("default", "default"));
        assert!(in_family("default", "default-20260304050607"));
        for other in [
            "default-admin",
            "default-2026030405060",
            "default-202603040506078",
            "default20260304050607",
            "defaults-20260304050607",
            "default-20260304050607-x",
            "x-default-20260304050607",
        ] {
            assert!(!in_family("default", other), "{other}");
        }
    }

    #[test]
    fn marks() {
        assert!(created_by_rotator(
            "zenml-rotator: replacement key of policy \"t\""
        ));
        assert!(!created_by_rotator("made by hand; zenml-rotator: no"));
        assert!(deactivated_by_rotator(
            "x | deactivated by zenml-rotator at 2026-01-01T00:00:00Z (unused)"
        ));
        assert!(!deactivated_by_rotator("deactivated by hand"));
    }
}
