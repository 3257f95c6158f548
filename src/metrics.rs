//! The rotator's Prometheus metrics: one registry, the names the README lists ("Metrics"), `policy` as the only
//! per-key label. The same values serve `/metrics` in `run` mode (`endpoint`) and the
//! textfile/Pushgateway of `once` (`export`).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod endpoint;
mod export;
#[cfg(test)]
mod tests;

pub use endpoint::{Health, serve};
pub use export::{export_one_shot, group_by_policy, write_textfile};

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
    pub config_last_reload_success_timestamp_seconds: Gauge,
    pub build_info: IntGaugeVec,
    pub pending_deactivations: IntGauge,
    pub deactivation_due_timestamp_seconds: GaugeVec,
    pub keys_deactivated_total: IntCounterVec,
    pub keys_deleted_total: IntCounterVec,
    pub journal_entries: IntGauge,
    pub hygiene_findings: IntGaugeVec,
    pub claims: ClaimMetrics,
    pub recoveries_total: IntCounterVec,
    pub insecure_endpoints: IntGauge,
    pub notifications_failed_total: IntCounterVec,
    pub hook_failures_total: IntCounterVec,
    /// Per policy, how many keys wait for deactivation: `pending_deactivations` is the sum.
    pending_by_policy: Mutex<BTreeMap<String, usize>>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// Creates each metric in the registry it is exposed from, so none can be left unregistered.
struct Builder {
    registry: Registry,
}

impl Builder {
    fn add<C: Collector + Clone + 'static>(&self, metric: C) -> Result<C, prometheus::Error> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    /// `build_info{version}`, 1 for this build's version.
    fn build_info(&self) -> Result<IntGaugeVec, prometheus::Error> {
        let info = self.int_gauges(
            "build_info",
            "Always 1; the version as a label.",
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(info)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(opts(name, help), labels)?)
    }

    /// A gauge per policy.
    fn gauges(&self, name: &str, help: &str) -> Result<GaugeVec, prometheus::Error> {
        self.add(GaugeVec::new(opts(name, help), &["policy"])?)
    }

    fn int_gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(opts(name, help), labels)?)
    }

    fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::with_opts(opts(name, help))?)
    }

    fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(buckets.to_vec())
    }
}

/// Coordination between rotators (claims on keys).
pub struct ClaimMetrics {
    pub waits_total: IntCounterVec,
    pub lost_total: IntCounterVec,
    pub since_timestamp_seconds: GaugeVec,
}

impl ClaimMetrics {
    fn new(b: &Builder) -> Result<Self, prometheus::Error> {
        Ok(ClaimMetrics {
            waits_total: b.counters(
                "claim_waits_total",
                "Passes that found another rotator holding the policy's claim and left the key to it.",
                &["policy"],
            )?,
            lost_total: b.counters(
                "claims_lost_total",
                "Claims this rotator lost (expired or taken over) before finishing the key.",
                &["policy"],
            )?,
            since_timestamp_seconds: b.gauges(
                "claim_since_timestamp_seconds",
                "When the rotation the policy's claim guards began, while a rotator holds the claim.",
            )?,
        })
    }
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let b = Builder {
            registry: Registry::new(),
        };
        Ok(Metrics {
            rotations_total: b.counters(
                "rotations_total",
                "Rotations attempted, by policy and result (success, failure, refused).",
                &["policy", "result"],
            )?,
            errors_total: b.counters(
                "errors_total",
                "Errors by policy and stage (preflight, rotate, verify, store, finalize).",
                &["policy", "stage"],
            )?,
            last_rotation_timestamp_seconds: b.gauges(
                "last_rotation_timestamp_seconds",
                "When ZenML last rotated the policy's key (from the server's last_rotated, else created).",
            )?,
            last_success_timestamp_seconds: b.gauges(
                "last_success_timestamp_seconds",
                "When the rotator last completed a pass over the policy without error.",
            )?,
            next_rotation_timestamp_seconds: b.gauges(
                "next_rotation_timestamp_seconds",
                "When the policy's key is next due.",
            )?,
            retain_until_timestamp_seconds: b.gauges(
                "retain_until_timestamp_seconds",
                "Until when the previous value of the policy's key stays valid.",
            )?,
            policy_healthy: b.int_gauges(
                "policy_healthy",
                "1 when the last pass over the policy succeeded, else 0.",
                &["policy"],
            )?,
            previous_key_accepted: b.int_gauges(
                "previous_key_accepted",
                "1 when a finalize check found the previous value still accepted after its retain window.",
                &["policy"],
            )?,
            rotation_duration_seconds: b.add(Histogram::with_opts(Builder::histogram_opts(
                "rotation_duration_seconds",
                "Wall time of one rotation, pre-flight to stored.",
                &[0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0],
            ))?)?,
            upstream_request_duration_seconds: b.add(HistogramVec::new(
                Builder::histogram_opts(
                    "upstream_request_duration_seconds",
                    "Duration of requests to ZenML and the secret stores, by upstream and operation.",
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                ),
                &["upstream", "operation"],
            )?)?,
            config_last_reload_successful: b.int_gauge(
                "config_last_reload_successful",
                "1 when the last load of the policy file succeeded, else 0.",
            )?,
            config_last_reload_success_timestamp_seconds: b.add(Gauge::with_opts(opts(
                "config_last_reload_success_timestamp_seconds",
                "When the policy file was last loaded successfully.",
            ))?)?,
            build_info: b.build_info()?,
            pending_deactivations: b.int_gauge(
                "pending_deactivations",
                "Old API keys waiting for their retain window to end before deactivation.",
            )?,
            deactivation_due_timestamp_seconds: b.gauges(
                "deactivation_due_timestamp_seconds",
                "When the policy's retiring API key is due to be deactivated.",
            )?,
            keys_deactivated_total: b.counters(
                "keys_deactivated_total",
                "API keys deactivated, by policy and reason.",
                &["policy", "reason"],
            )?,
            keys_deleted_total: b.counters(
                "keys_deleted_total",
                "API keys deleted (orphans, and keys deactivated delete_after ago), by policy.",
                &["policy"],
            )?,
            journal_entries: b.int_gauge(
                "journal_entries",
                "Rotations in flight recorded in the local journal.",
            )?,
            hygiene_findings: b.int_gauges(
                "hygiene_findings",
                "What the last [hygiene] run found, by kind (unused, unmanaged, no_active_key).",
                &["kind"],
            )?,
            claims: ClaimMetrics::new(&b)?,
            recoveries_total: b.counters(
                "recoveries_total",
                "Rotations whose new value nobody kept, healed (result success) or not yet (failure).",
                &["policy", "result"],
            )?,
            insecure_endpoints: b.int_gauge(
                "insecure_endpoints",
                "Cleartext http endpoints beyond loopback that the policy file allows with allow_insecure_http.",
            )?,
            notifications_failed_total: b.counters(
                "notifications_failed_total",
                "Notifications ([[notify]] webhooks and audit files) given up after their retries, by sink (notify[N]).",
                &["sink"],
            )?,
            hook_failures_total: b.counters(
                "hook_failures_total",
                "Hook runs that failed or timed out, by policy and hook (on_rotated, on_finalized).",
                &["policy", "hook"],
            )?,
            pending_by_policy: Mutex::new(BTreeMap::new()),
            registry: b.registry,
        })
    }

    /// The text exposition streamed to `w`, one metric family at a time (a one-shot run's
    /// textfile: no copy of the whole text in memory).
    pub fn write_text(&self, mut w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let encoder = TextEncoder::new();
        for family in self.registry.gather() {
            encoder
                .encode(std::slice::from_ref(&family), &mut w)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
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
        self.claims.waits_total.with_label_values(&[policy]);
        self.claims.lost_total.with_label_values(&[policy]);
        for result in ["success", "failure"] {
            self.recoveries_total.with_label_values(&[policy, result]);
        }
        for hook in ["on_rotated", "on_finalized"] {
            self.hook_failures_total.with_label_values(&[policy, hook]);
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
            &self.claims.since_timestamp_seconds,
        ] {
            remove_policy(g, policy);
        }
        remove_policy(&self.claims.waits_total, policy);
        remove_policy(&self.claims.lost_total, policy);
        remove_policy(&self.recoveries_total, policy);
        remove_policy(&self.policy_healthy, policy);
        remove_policy(&self.previous_key_accepted, policy);
        remove_policy(&self.rotations_total, policy);
        remove_policy(&self.errors_total, policy);
        remove_policy(&self.keys_deactivated_total, policy);
        remove_policy(&self.keys_deleted_total, policy);
        remove_policy(&self.hook_failures_total, policy);
        self.set_deactivation_due(policy, 0, None);
    }

    /// The cleartext endpoints the running policy allows (`allow_insecure_http`); an alert watches it.
    pub fn set_insecure_endpoints(&self, count: usize) {
        self.insecure_endpoints
            .set(i64::try_from(count).unwrap_or(i64::MAX));
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
/// a duplicate registration), which the unit tests (metrics/tests.rs) catch.
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
