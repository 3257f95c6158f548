//! What the daemon keeps between passes: the running policy and its engine, per-key backoff and
//! due times, when hygiene last ran, the stop flag passes honour, and what `/readyz` reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::backoff::{BackoffPolicy, KeyBackoff};
use crate::config::{Config, KeyPolicy};
use crate::engine::Engine;
use crate::engine::failure::KeyReport;
use crate::metrics::Health;
use crate::pass::PassReport;

pub struct State {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub backoff: HashMap<String, KeyBackoff>,
    pub next_due: HashMap<String, DateTime<Utc>>,
    /// Server-wide hygiene runs at most once per safety pass (a pass per due key would be too many).
    pub last_hygiene: Option<Instant>,
    /// Set by SIGTERM: passes start no new key; the ones in flight finish.
    pub stop: Arc<AtomicBool>,
    pub health: Arc<Health>,
}

impl State {
    pub fn new(config: Config, engine: Arc<Engine>, health: Arc<Health>) -> State {
        State {
            config,
            engine,
            backoff: HashMap::new(),
            next_due: HashMap::new(),
            last_hygiene: None,
            stop: Arc::new(AtomicBool::new(false)),
            health,
        }
    }

    fn backoff_policy(&self) -> BackoffPolicy {
        BackoffPolicy::from_settings(&self.config.daemon)
    }

    /// Keys whose backoff allows an attempt now: a failing key waits out its delay even when the
    /// safety pass or another key's due time wakes the daemon.
    pub fn ready_keys(&self, now: DateTime<Utc>) -> Vec<KeyPolicy> {
        self.config
            .keys
            .iter()
            .filter(|k| self.backoff.get(&k.name).is_none_or(|b| b.ready(now)))
            .cloned()
            .collect()
    }

    /// Whether this pass should run `[hygiene]`: when the file has it and the last run is at
    /// least `every` ago. Marks the run.
    pub fn hygiene_due(&mut self, every: Duration) -> bool {
        if self.config.hygiene.is_none() || self.last_hygiene.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.last_hygiene = Some(Instant::now());
        true
    }

    /// Takes in a finished pass: backoff per key, due times, readiness.
    pub fn absorb(&mut self, report: &PassReport) {
        if let Some(reached) = report.zenml_reached() {
            self.health
                .zenml_reachable
                .store(reached, Ordering::Relaxed);
            self.health.passes.fetch_add(1, Ordering::Relaxed);
        }
        self.absorb_keys(&report.keys);
    }

    fn absorb_keys(&mut self, reports: &[KeyReport]) {
        let now = Utc::now();
        let policy = self.backoff_policy();
        for r in reports {
            let b = self.backoff.entry(r.policy.clone()).or_default();
            match &r.result {
                Ok(_) => b.record_success(),
                Err(f) => {
                    b.record_failure(&policy, &r.policy, now);
                    tracing::info!(
                        policy = %r.policy,
                        stage = f.stage.as_str(),
                        failures = b.failures(),
                        retry_at = ?b.next_attempt(),
                        "backing off"
                    );
                }
            }
            match r.next_due {
                Some(t) => self.next_due.insert(r.policy.clone(), t),
                None => self.next_due.remove(&r.policy),
            };
        }
    }

    /// The earliest moment anything needs looking at: a due key or a backoff expiry.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        earliest_wake(&self.config.keys, &self.backoff, &self.next_due)
    }

    /// Forgets what it knew of policies a reload removed or changed.
    pub fn forget(&mut self, policy: &str) {
        self.backoff.remove(policy);
        self.next_due.remove(policy);
    }
}

/// The earliest of, per key: its backoff expiry while it fails, else its next due time.
pub fn earliest_wake(
    keys: &[KeyPolicy],
    backoff: &HashMap<String, KeyBackoff>,
    next_due: &HashMap<String, DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    keys.iter()
        .filter_map(|k| match backoff.get(&k.name) {
            Some(b) if b.failures() > 0 => b.next_attempt(),
            _ => next_due.get(&k.name).copied(),
        })
        .min()
}
