//! The rotator's Prometheus metrics: one registry, the names of DESIGN.md, `policy` as the only
//! per-key label. The same values serve `/metrics` in `run` mode and the textfile/Pushgateway of `once`.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const NAMESPACE: &str = "zenml_rotator";

/// The stages an error can happen in: the only values of `errors_total{stage}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Preflight,
    Rotate,
    Verify,
    Store,
    Finalize,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Preflight,
        Stage::Rotate,
        Stage::Verify,
        Stage::Store,
        Stage::Finalize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::Rotate => "rotate",
            Stage::Verify => "verify",
            Stage::Store => "store",
            Stage::Finalize => "finalize",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub rotations_total: IntCounterVec,
    pub errors_total: IntCounterVec,
    pub last_rotation_timestamp_seconds: GaugeVec,
    pub last_success_timestamp_seconds: GaugeVec,
    pub next_rotation_timestamp_seconds: GaugeVec,
    pub retain_until_timestamp_seconds: GaugeVec,
    pub policy_healthy: IntGaugeVec,
    pub previous_key_accepted: IntGaugeVec,
    pub rotation_duration_seconds: Histogram,
    pub upstream_request_duration_seconds: HistogramVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp_seconds: prometheus::Gauge,
    pub build_info: IntGaugeVec,
    pub pending_deactivations: IntGauge,
    pub deactivation_due_timestamp_seconds: GaugeVec,
    pub keys_deactivated_total: IntCounterVec,
    pub journal_entries: IntGauge,
    pub hygiene_findings: IntGaugeVec,
    /// Per policy, how many keys wait for deactivation: `pending_deactivations` is the sum.
    pending_by_policy: Mutex<BTreeMap<String, usize>>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rotations_total = IntCounterVec::new(
            opts(
                "rotations_total",
                "Rotations attempted, by policy and result (success, failure, refused).",
            ),
            &["policy", "result"],
        )?;
        let errors_total = IntCounterVec::new(
            opts(
                "errors_total",
                "Errors by policy and stage (preflight, rotate, verify, store, finalize).",
            ),
            &["policy", "stage"],
        )?;
        let gauge = |name: &str, help: &str| GaugeVec::new(opts(name, help), &["policy"]);
        let last_rotation_timestamp_seconds = gauge(
            "last_rotation_timestamp_seconds",
            "When ZenML last rotated the policy's key (from the server's last_rotated, else created).",
        )?;
        let last_success_timestamp_seconds = gauge(
            "last_success_timestamp_seconds",
            "When the rotator last completed a pass over the policy without error.",
        )?;
        let next_rotation_timestamp_seconds = gauge(
            "next_rotation_timestamp_seconds",
            "When the policy's key is next due.",
        )?;
        let retain_until_timestamp_seconds = gauge(
            "retain_until_timestamp_seconds",
            "Until when the previous value of the policy's key stays valid.",
        )?;
        let policy_healthy = IntGaugeVec::new(
            opts(
                "policy_healthy",
                "1 when the last pass over the policy succeeded, else 0.",
            ),
            &["policy"],
        )?;
        let previous_key_accepted = IntGaugeVec::new(
            opts(
                "previous_key_accepted",
                "1 when a finalize check found the previous value still accepted after its retain window.",
            ),
            &["policy"],
        )?;
        let rotation_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "rotation_duration_seconds",
                "Wall time of one rotation, pre-flight to stored.",
            )
            .namespace(NAMESPACE)
            .buckets(vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]),
        )?;
        let upstream_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_request_duration_seconds",
                "Duration of requests to ZenML and the secret stores, by upstream and operation.",
            )
            .namespace(NAMESPACE)
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream", "operation"],
        )?;
        let config_last_reload_successful = IntGauge::with_opts(opts(
            "config_last_reload_successful",
            "1 when the last load of the policy file succeeded, else 0.",
        ))?;
        let config_last_reload_success_timestamp_seconds = prometheus::Gauge::with_opts(opts(
            "config_last_reload_success_timestamp_seconds",
            "When the policy file was last loaded successfully.",
        ))?;
        let build_info = IntGaugeVec::new(
            opts("build_info", "Always 1; the version as a label."),
            &["version"],
        )?;
        let pending_deactivations = IntGauge::with_opts(opts(
            "pending_deactivations",
            "Old API keys waiting for their retain window to end before deactivation.",
        ))?;
        let deactivation_due_timestamp_seconds = gauge(
            "deactivation_due_timestamp_seconds",
            "When the policy's retiring API key is due to be deactivated.",
        )?;
        let keys_deactivated_total = IntCounterVec::new(
            opts(
                "keys_deactivated_total",
                "API keys deactivated, by policy and reason.",
            ),
            &["policy", "reason"],
        )?;
        let journal_entries = IntGauge::with_opts(opts(
            "journal_entries",
            "Rotations in flight recorded in the local journal.",
        ))?;

        registry.register(Box::new(rotations_total.clone()))?;
        registry.register(Box::new(errors_total.clone()))?;
        registry.register(Box::new(last_rotation_timestamp_seconds.clone()))?;
        registry.register(Box::new(last_success_timestamp_seconds.clone()))?;
        registry.register(Box::new(next_rotation_timestamp_seconds.clone()))?;
        registry.register(Box::new(retain_until_timestamp_seconds.clone()))?;
        registry.register(Box::new(policy_healthy.clone()))?;
        registry.register(Box::new(previous_key_accepted.clone()))?;
        registry.register(Box::new(rotation_duration_seconds.clone()))?;
        registry.register(Box::new(upstream_request_duration_seconds.clone()))?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        registry.register(Box::new(
            config_last_reload_success_timestamp_seconds.clone(),
        ))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(pending_deactivations.clone()))?;
        registry.register(Box::new(deactivation_due_timestamp_seconds.clone()))?;
        registry.register(Box::new(keys_deactivated_total.clone()))?;
        registry.register(Box::new(journal_entries.clone()))?;
        let hygiene_findings = IntGaugeVec::new(
            opts(
                "hygiene_findings",
                "What the last [hygiene] run found, by kind (unused, unmanaged, no_active_key).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(hygiene_findings.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        Ok(Metrics {
            registry,
            rotations_total,
            errors_total,
            last_rotation_timestamp_seconds,
            last_success_timestamp_seconds,
            next_rotation_timestamp_seconds,
            retain_until_timestamp_seconds,
            policy_healthy,
            previous_key_accepted,
            rotation_duration_seconds,
            upstream_request_duration_seconds,
            config_last_reload_successful,
            config_last_reload_success_timestamp_seconds,
            build_info,
            pending_deactivations,
            deactivation_due_timestamp_seconds,
            keys_deactivated_total,
            journal_entries,
            hygiene_findings,
            pending_by_policy: Mutex::new(BTreeMap::new()),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format except on invalid metric names,
        // which are fixed at compile time here.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn error(&self, policy: &str, stage: Stage) {
        self.errors_total
            .with_label_values(&[policy, stage.as_str()])
            .inc();
    }

    /// Creates a policy's counters at zero for every result and stage, so they exist from the
    /// start: `increase()` over the first error then sees it, and "absent" never stands for "no
    /// error yet".
    pub fn init_policy(&self, policy: &str) {
        for result in ["success", "failure", "refused"] {
            self.rotations_total.with_label_values(&[policy, result]);
        }
        for stage in Stage::ALL {
            self.errors_total
                .with_label_values(&[policy, stage.as_str()]);
        }
    }

    /// Drops every series of a policy that is no longer in the config (after a reload): the
    /// gauges and the counters too, whatever their other labels, so a removed policy leaves no
    /// stale series for alerts to fire on.
    pub fn forget_policy(&self, policy: &str) {
        for g in [
            &self.last_rotation_timestamp_seconds,
            &self.last_success_timestamp_seconds,
            &self.next_rotation_timestamp_seconds,
            &self.retain_until_timestamp_seconds,
            &self.deactivation_due_timestamp_seconds,
        ] {
            remove_policy(g, policy);
        }
        remove_policy(&self.policy_healthy, policy);
        remove_policy(&self.previous_key_accepted, policy);
        remove_policy(&self.rotations_total, policy);
        remove_policy(&self.errors_total, policy);
        remove_policy(&self.keys_deactivated_total, policy);
        self.set_deactivation_due(policy, 0, None);
    }

    /// Sets `deactivation_due_timestamp_seconds{policy}` while keys of the policy wait for their
    /// deactivation (removed otherwise, so `time() > due + grace` alerts only while one is
    /// pending), and `pending_deactivations` over every policy.
    pub fn set_deactivation_due(
        &self,
        policy: &str,
        pending: usize,
        due: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let mut map = match self.pending_by_policy.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        match due {
            Some(t) if pending > 0 => {
                self.deactivation_due_timestamp_seconds
                    .with_label_values(&[policy])
                    .set(t.timestamp() as f64);
                map.insert(policy.to_owned(), pending);
            }
            _ => {
                let _ = self
                    .deactivation_due_timestamp_seconds
                    .remove_label_values(&[policy]);
                map.remove(policy);
            }
        }
        self.pending_deactivations
            .set(i64::try_from(map.values().sum::<usize>()).unwrap_or(i64::MAX));
    }
}

/// Removes every child of `vec` whose `policy` label is `policy`.
fn remove_policy<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    policy: &str,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("policy") == Some(&policy) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The process-wide metrics. Metric construction only fails on a programming error (a bad name or
/// a duplicate registration), which the unit tests below catch.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| match Metrics::new() {
        Ok(m) => m,
        Err(e) => panic!("metric registration is broken: {e}"),
    })
}

/// Records the duration of one request to an upstream (`zenml`, `vault`, `aws`, `file`).
pub fn observe_upstream(upstream: &str, operation: &str, elapsed: Duration) {
    get()
        .upstream_request_duration_seconds
        .with_label_values(&[upstream, operation])
        .observe(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
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
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
    }
}

/// What `/readyz` reports on, updated by the daemon.
#[derive(Debug, Default)]
pub struct Health {
    /// A valid policy is loaded.
    pub policy_loaded: std::sync::atomic::AtomicBool,
    /// ZenML answered during the last pass.
    pub zenml_reachable: std::sync::atomic::AtomicBool,
    /// Passes completed since start.
    pub passes: std::sync::atomic::AtomicU64,
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (policy loaded and ZenML reachable in the
/// last pass) until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, health: std::sync::Arc<Health>) {
    use axum::http::{StatusCode, header};
    use axum::routing::get as route;
    use std::sync::atomic::Ordering;

    let ready = move || {
        let health = health.clone();
        async move {
            let loaded = health.policy_loaded.load(Ordering::Relaxed);
            let passes = health.passes.load(Ordering::Relaxed);
            let zenml = health.zenml_reachable.load(Ordering::Relaxed);
            if loaded && passes > 0 && zenml {
                (StatusCode::OK, "ready\n".to_string())
            } else if !loaded {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no valid policy loaded\n".into(),
                )
            } else if passes == 0 {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "first pass not finished\n".into(),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ZenML was not reachable in the last pass\n".into(),
                )
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            route(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    get().render(),
                )
            }),
        )
        .route("/healthz", route(|| async { "ok\n" }))
        .route("/readyz", route(ready));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// `once` and `rotate`: hand the metrics to node-exporter's textfile collector and/or a
/// Pushgateway, so one-shot runs (CronJob, systemd timer) are as observable as the daemon.
/// Failures are logged, never fatal: the rotation itself already happened.
pub async fn export_one_shot(settings: &crate::config::MetricsSettings) {
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
        match write_textfile(path, &m.render()) {
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
            if has_child(&self.policy_healthy, policy)
                && !has_child(&self.last_success_timestamp_seconds, policy)
            {
                self.last_success_timestamp_seconds
                    .with_label_values(&[policy])
                    .set(value);
            }
        }
    }
}

/// The policies `vec` has series for.
fn policies_seen<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
) -> Vec<String> {
    use prometheus::core::Collector;
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

/// Whether `vec` already has a series for `policy` (without creating one).
fn has_child<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    policy: &str,
) -> bool {
    use prometheus::core::Collector;
    vec.collect().iter().any(|f| {
        f.get_metric().iter().any(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "policy" && l.value() == policy)
        })
    })
}

/// Atomic (temp file + rename) so the collector never reads half a file; 0644 so it can read it.
pub fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The collector reads only `*.prom`: the temp name must not end in it.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
pub fn group_by_policy(
    families: Vec<prometheus::proto::MetricFamily>,
) -> std::collections::BTreeMap<Option<String>, Vec<prometheus::proto::MetricFamily>> {
    let mut groups: std::collections::BTreeMap<Option<String>, Vec<_>> = Default::default();
    for mut family in families {
        let mut by_policy: std::collections::BTreeMap<Option<String>, Vec<_>> = Default::default();
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
async fn push(base: &str, families: Vec<prometheus::proto::MetricFamily>) -> Result<(), String> {
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
fn group_segment(label: &str, value: &str) -> String {
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

#[cfg(test)]
mod export_tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        m.render()
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
        }
        m.forget_policy("gone");
        let t = text(&m);
        assert!(
            !t.contains("\"gone\""),
            "series of a removed policy remain:\n{t}"
        );
        assert_eq!(t.matches("policy=\"kept\"").count(), 7, "{t}");
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
}
