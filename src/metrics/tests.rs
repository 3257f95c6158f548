use std::time::Duration;

use super::export::group_segment;
use super::*;

#[test]
fn every_design_metric_is_exposed_with_its_exact_name() {
    let m = get();
    m.rotations_total.with_label_values(&["p", "success"]).inc();
    m.error("p", Stage::Store);
    for g in [
        &m.last_rotation_timestamp_seconds,
        &m.last_success_timestamp_seconds,
        &m.next_rotation_timestamp_seconds,
        &m.retain_until_timestamp_seconds,
        &m.deactivation_due_timestamp_seconds,
    ] {
        g.with_label_values(&["p"]).set(1.0);
    }
    m.policy_healthy.with_label_values(&["p"]).set(1);
    m.rotation_duration_seconds.observe(1.0);
    observe_upstream("zenml", "get_api_key", Duration::from_millis(5));
    m.keys_deactivated_total
        .with_label_values(&["p", "retain_expired"])
        .inc();
    m.keys_deleted_total.with_label_values(&["p"]).inc();
    let text = m.render();
    for name in [
        "zenml_rotator_rotations_total{policy=\"p\",result=\"success\"}",
        "zenml_rotator_errors_total{policy=\"p\",stage=\"store\"}",
        "zenml_rotator_last_rotation_timestamp_seconds{policy=\"p\"}",
        "zenml_rotator_last_success_timestamp_seconds{policy=\"p\"}",
        "zenml_rotator_next_rotation_timestamp_seconds{policy=\"p\"}",
        "zenml_rotator_retain_until_timestamp_seconds{policy=\"p\"}",
        "zenml_rotator_policy_healthy{policy=\"p\"}",
        "zenml_rotator_rotation_duration_seconds_bucket",
        "zenml_rotator_upstream_request_duration_seconds_bucket{operation=\"get_api_key\",upstream=\"zenml\"",
        "zenml_rotator_config_last_reload_successful",
        "zenml_rotator_build_info{version=",
        "zenml_rotator_pending_deactivations",
        "zenml_rotator_deactivation_due_timestamp_seconds{policy=\"p\"}",
        "zenml_rotator_keys_deactivated_total{policy=\"p\",reason=\"retain_expired\"}",
        "zenml_rotator_keys_deleted_total{policy=\"p\"}",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
}

// ---- one-shot export ----

fn text(m: &Metrics) -> String {
    m.render()
}

#[test]
fn the_textfile_is_streamed_family_by_family_as_the_endpoint_renders_it() {
    use std::os::unix::fs::PermissionsExt;
    let m = Metrics::new().unwrap();
    for p in ["a", "b"] {
        m.init_policy(p);
        m.policy_healthy.with_label_values(&[p]).set(1);
    }
    observe_upstream("vault", "read", Duration::from_millis(3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zr.prom");
    write_textfile(&path, |w| m.write_text(w)).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, m.render());
    assert!(written.contains("zenml_rotator_policy_healthy{policy=\"b\"} 1"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    // Only the target is left: the temporary file was renamed onto it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_removed_policy_loses_every_series_counters_included() {
    let m = Metrics::new().unwrap();
    for p in ["gone", "kept"] {
        m.rotations_total.with_label_values(&[p, "success"]).inc();
        m.rotations_total.with_label_values(&[p, "failure"]).inc();
        m.error(p, Stage::Store);
        m.error(p, Stage::Verify);
        m.policy_healthy.with_label_values(&[p]).set(1);
        m.last_success_timestamp_seconds
            .with_label_values(&[p])
            .set(1.0);
        m.keys_deactivated_total
            .with_label_values(&[p, "retain_expired"])
            .inc();
        m.keys_deleted_total.with_label_values(&[p]).inc();
    }
    m.forget_policy("gone");
    let t = text(&m);
    assert!(
        !t.contains("\"gone\""),
        "series of a removed policy remain:\n{t}"
    );
    assert_eq!(t.matches("policy=\"kept\"").count(), 8, "{t}");
}

#[test]
fn families_split_into_one_group_per_policy_and_one_without() {
    let m = Metrics::new().unwrap();
    m.last_success_timestamp_seconds
        .with_label_values(&["a"])
        .set(5.0);
    m.policy_healthy.with_label_values(&["a"]).set(1);
    m.policy_healthy.with_label_values(&["b"]).set(0);
    m.rotation_duration_seconds.observe(1.0);
    let groups = group_by_policy(m.registry.gather());
    let names = |k: Option<&str>| -> Vec<String> {
        groups[&k.map(str::to_owned)]
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    };
    assert_eq!(
        names(Some("a")),
        [
            "zenml_rotator_last_success_timestamp_seconds",
            "zenml_rotator_policy_healthy"
        ]
    );
    // A policy without a success sends no last_success family: a push-add keeps the old one.
    assert_eq!(names(Some("b")), ["zenml_rotator_policy_healthy"]);
    let global = names(None);
    assert!(global.contains(&"zenml_rotator_build_info".to_owned()));
    assert!(global.contains(&"zenml_rotator_rotation_duration_seconds".to_owned()));
    assert!(!global.iter().any(|n| n.contains("policy_healthy")));
}

#[test]
fn the_last_success_of_a_policy_that_failed_this_run_is_carried_over() {
    let m = Metrics::new().unwrap();
    m.policy_healthy.with_label_values(&["failed"]).set(0);
    m.policy_healthy.with_label_values(&["ok"]).set(1);
    m.last_success_timestamp_seconds
        .with_label_values(&["ok"])
        .set(2000.0);
    let previous = "# TYPE zenml_rotator_last_success_timestamp_seconds gauge\n\
        zenml_rotator_last_success_timestamp_seconds{policy=\"failed\"} 1000\n\
        zenml_rotator_last_success_timestamp_seconds{policy=\"ok\"} 1500\n\
        zenml_rotator_last_success_timestamp_seconds{policy=\"removed\"} 900\n";
    m.carry_over_last_success(previous);
    let t = text(&m);
    assert!(t.contains("zenml_rotator_last_success_timestamp_seconds{policy=\"failed\"} 1000"));
    assert!(t.contains("zenml_rotator_last_success_timestamp_seconds{policy=\"ok\"} 2000"));
    assert!(!t.contains("removed"), "{t}");
}

#[test]
fn grouping_key_segments_are_plain_or_base64() {
    assert_eq!(
        group_segment("policy", "training-1.x"),
        "policy/training-1.x"
    );
    assert_eq!(group_segment("policy", "a/b c"), "policy@base64/YS9iIGM=");
    assert_eq!(group_segment("instance", ""), "instance@base64/=");
}
