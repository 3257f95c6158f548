//! The rotator's Prometheus metrics: one registry, the names of DESIGN.md, `policy` as the only
//! per-key label. The same values serve `/metrics` in `run` mode and the textfile/Pushgateway of `once`.

use std::sync::OnceLock;
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

    /// Drops every series of a policy that is no longer in the config (after a reload).
    pub fn forget_policy(&self, policy: &str) {
        for g in [
            &self.last_rotation_timestamp_seconds,
            &self.last_success_timestamp_seconds,
            &self.next_rotation_timestamp_seconds,
            &self.retain_until_timestamp_seconds,
            &self.deactivation_due_timestamp_seconds,
        ] {
            let _ = g.remove_label_values(&[policy]);
        }
        let _ = self.policy_healthy.remove_label_values(&[policy]);
        let _ = self.previous_key_accepted.remove_label_values(&[policy]);
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
    let text = get().render();
    if let Some(path) = &settings.textfile {
        match write_textfile(path, &text) {
            Ok(()) => tracing::debug!(file = %path.display(), "metrics textfile written"),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot write the metrics textfile")
            }
        }
    }
    if let Some(url) = &settings.pushgateway {
        match push(url, &text).await {
            Ok(()) => tracing::debug!(pushgateway = %url, "metrics pushed"),
            Err(e) => tracing::error!(pushgateway = %url, error = %e, "cannot push the metrics"),
        }
    }
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
        std::fs::rename(&tmp, path)
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

/// Push-add (POST): replaces only the metric families this run sends, under job `zenml_rotator`
/// grouped by instance, so a failed run does not erase the last success's series.
async fn push(base: &str, text: &str) -> Result<(), String> {
    let instance = instance();
    let url = format!(
        "{}/metrics/job/zenml_rotator/instance/{}",
        base.trim_end_matches('/'),
        url_segment(&instance)
    );
    let client = crate::http::client(Duration::from_secs(15), None).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let resp = client
        .post(&url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text.to_owned())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    observe_upstream("pushgateway", "push", started.elapsed());
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", resp.status()))
    }
}

/// Percent-encodes a path segment (host names are tame, but be exact).
fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
