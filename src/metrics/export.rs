//! One-shot runs (`once`, `rotate`): the metrics written to node-exporter's textfile collector
//! and/or pushed to a Pushgateway, one group per policy.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

use super::{Metrics, NAMESPACE, get, observe_upstream};

/// `once` and `rotate`: hand the metrics to node-exporter's textfile collector and/or a
/// Pushgateway, so one-shot runs (CronJob, systemd timer) are as observable as the daemon.
/// Failures are logged, never fatal: the rotation itself already happened.
pub async fn export_one_shot(settings: &crate::config::MetricsSettings) {
    // Nothing reads them once the process exits: creating every policy's series would only cost
    // the run its CPU and heap.
    if settings.textfile.is_none() && settings.pushgateway.is_none() {
        return;
    }
    let m = get();
    // A one-shot run exports only after its policy file loaded: without this the gauge would
    // read 0 and every "config reload failed" alert would fire on every CronJob run.
    m.config_last_reload_successful.set(1);
    m.config_last_reload_success_timestamp_seconds
        .set(chrono::Utc::now().timestamp() as f64);
    for policy in policies_seen(&m.policy_healthy) {
        m.init_policy(&policy);
    }
    if let Some(path) = &settings.textfile {
        // The file is replaced whole: a policy that failed this run would lose the time of its
        // last success, the very series a "no success for too long" alert watches.
        if let Ok(previous) = std::fs::read_to_string(path) {
            m.carry_over_last_success(&previous);
        }
        // What interrupted runs left beside it: its own temporary files only (node-exporter
        // ignores them, but a CronJob killed now and then would pile them up; the directory is
        // the collector's, shared with other programs).
        crate::durable::remove_leftovers_of(path);
        match write_textfile(path, |w| m.write_text(w)) {
            Ok(()) => tracing::debug!(file = %path.display(), "metrics textfile written"),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot write the metrics textfile")
            }
        }
    }
    if let Some(url) = &settings.pushgateway {
        match push(url, m.registry.gather()).await {
            Ok(()) => tracing::debug!(pushgateway = %url, "metrics pushed"),
            Err(e) => tracing::error!(pushgateway = %url, error = %e, "cannot push the metrics"),
        }
    }
}

impl Metrics {
    /// Sets `last_success_timestamp_seconds` of each policy this run accounted for but that has
    /// no success of its own yet, from an earlier exposition (the previous textfile).
    pub fn carry_over_last_success(&self, previous: &str) {
        let prefix = format!("{NAMESPACE}_last_success_timestamp_seconds{{policy=\"");
        // Looked up once: asking the vecs per line would collect all their series every time.
        let looked_at = policies_seen(&self.policy_healthy);
        let succeeded = policies_seen(&self.last_success_timestamp_seconds);
        for line in previous.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((policy, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            // Only policies this run looked at: a policy gone from the config stays gone.
            let found = |seen: &[String]| seen.binary_search_by(|p| p.as_str().cmp(policy)).is_ok();
            if found(&looked_at) && !found(&succeeded) {
                self.last_success_timestamp_seconds
                    .with_label_values(&[policy])
                    .set(value);
            }
        }
    }
}

/// The policies `vec` has series for.
fn policies_seen<T: MetricVecBuilder>(vec: &MetricVec<T>) -> Vec<String> {
    let mut seen: Vec<String> = vec
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .flat_map(|m| m.get_label().iter())
        .filter(|l| l.name() == "policy")
        .map(|l| l.value().to_owned())
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// Atomic (temp file + rename) so the collector never reads half a file; 0644 so it can read it.
/// `write` streams the exposition into the temporary file.
pub fn write_textfile(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    crate::durable::write_atomic_with(path, 0o644, |f| {
        let mut buffered = std::io::BufWriter::new(f);
        write(&mut buffered)?;
        std::io::Write::flush(&mut buffered)
    })
}

/// The instance label of pushed metrics: this host's name.
fn instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The metric families split by their `policy` label: `None` holds the series without one
/// (build info, histograms, config state), each `Some(policy)` that policy's series.
pub fn group_by_policy(families: Vec<MetricFamily>) -> BTreeMap<Option<String>, Vec<MetricFamily>> {
    let mut groups: BTreeMap<Option<String>, Vec<_>> = Default::default();
    for mut family in families {
        let mut by_policy: BTreeMap<Option<String>, Vec<_>> = Default::default();
        for metric in family.take_metric() {
            let policy = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "policy")
                .map(|l| l.value().to_owned());
            by_policy.entry(policy).or_default().push(metric);
        }
        for (policy, metrics) in by_policy {
            let mut part = family.clone();
            part.set_metric(metrics);
            groups.entry(policy).or_default().push(part);
        }
    }
    groups
}

/// Push-add (POST) under job `zenml_rotator`, grouped by instance and, for per-policy series, by
/// policy too. The Pushgateway replaces whole metric families within a group, so with one group
/// a run where policy A failed and B succeeded would replace `last_success_timestamp_seconds`
/// with B's series alone and erase A's last success; one group per policy keeps it, since a
/// failed policy sends no `last_success_timestamp_seconds` at all.
async fn push(base: &str, families: Vec<MetricFamily>) -> Result<(), String> {
    let instance_url = format!(
        "{}/metrics/job/zenml_rotator/{}",
        base.trim_end_matches('/'),
        group_segment("instance", &instance())
    );
    let client = crate::http::client(Duration::from_secs(15), None).map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for (policy, families) in group_by_policy(families) {
        let url = match &policy {
            None => instance_url.clone(),
            Some(p) => format!("{instance_url}/{}", group_segment("policy", p)),
        };
        let mut body = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut body) {
            failures.push(format!("{url}: {e}"));
            continue;
        }
        let started = std::time::Instant::now();
        let resp = client
            .post(&url)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(body)
            .send()
            .await;
        observe_upstream("pushgateway", "push", started.elapsed());
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => failures.push(format!("{url}: HTTP {}", r.status())),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// One `label/value` pair of a Pushgateway grouping key: plain when the value is tame, else in
/// the `label@base64/<base64url>` form the Pushgateway decodes (slashes, spaces, anything).
pub(super) fn group_segment(label: &str, value: &str) -> String {
    use base64::Engine as _;
    let tame = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if tame {
        format!("{label}/{value}")
    } else if value.is_empty() {
        // The Pushgateway's spelling of an empty value.
        format!("{label}@base64/=")
    } else {
        format!(
            "{label}@base64/{}",
            base64::engine::general_purpose::URL_SAFE.encode(value)
        )
    }
}
