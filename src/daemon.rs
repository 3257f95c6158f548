//! `run`: passes at the next due time of any key (and a periodic safety pass), per-key backoff,
//! SIGHUP reload, SIGTERM/SIGINT shutdown that lets the rotation in flight finish, sd_notify.
//! Each pass is the same level-triggered reconcile as `once`; timers only decide when to look.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::backoff::{BackoffPolicy, KeyBackoff};
use crate::config::{Config, KeyPolicy};
use crate::journal::StateLock;
use crate::metrics::{self, Health};
use crate::rotation::{Engine, EngineOptions, KeyReport};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] crate::rotation::EngineError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error(
        "rotations were still in flight after the shutdown timeout ({}); the journal holds them and \
         the next start (run or once) replays them into the store",
        humantime::format_duration(*.0)
    )]
    ShutdownTimeout(Duration),
}

/// The shortest gap between two passes when a key stays due after a pass (a rotation just
/// happened and the key must be looked at again, or a decision that cannot act yet): a pass
/// never follows another at once, so nothing can spin.
const MIN_GAP: Duration = Duration::from_secs(1);

/// The timer fires this much after a due time, never before: the monotonic clock the timer
/// uses and the wall clock `ready` compares against may disagree by a hair, and a wake that
/// comes a microsecond early would find nothing ready and cost a second pass.
const LATE_BY: Duration = Duration::from_millis(20);

/// Tells systemd about our state when it started us with `Type=notify`.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = PathBuf::from(path);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot create a socket");
            return;
        }
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The daemon's mutable state between passes.
struct State {
    config: Config,
    engine: Arc<Engine>,
    backoff: HashMap<String, KeyBackoff>,
    next_due: HashMap<String, DateTime<Utc>>,
}

impl State {
    fn backoff_policy(&self) -> BackoffPolicy {
        BackoffPolicy::from_settings(&self.config.daemon)
    }

    /// Keys whose backoff allows an attempt now: a failing key waits out its delay even when the
    /// safety pass or another key's due time wakes the daemon.
    fn ready_keys(&self, now: DateTime<Utc>) -> Vec<KeyPolicy> {
        self.config
            .keys
            .iter()
            .filter(|k| self.backoff.get(&k.name).is_none_or(|b| b.ready(now)))
            .cloned()
            .collect()
    }

    fn absorb(&mut self, reports: &[KeyReport]) {
        let now = Utc::now();
        let policy = self.backoff_policy();
        for r in reports {
            let b = self.backoff.entry(r.policy.clone()).or_default();
            match &r.result {
                Ok(_) => b.record_success(),
                Err(f) => {
                    b.record_failure(&policy, &r.policy, now);
                    tracing::warn!(
                        policy = %r.policy,
                        stage = f.stage.as_str(),
                        failures = b.failures(),
                        retry_at = ?b.next_attempt(),
                        "{}", f.message
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
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.config
            .keys
            .iter()
            .filter_map(|k| match self.backoff.get(&k.name) {
                Some(b) if b.failures() > 0 => b.next_attempt(),
                _ => self.next_due.get(&k.name).copied(),
            })
            .min()
    }
}

/// When a wall-clock time falls on the monotonic clock the timer sleeps on. A time already past
/// (the key is still due after the pass that just ran) waits `MIN_GAP`.
fn timer_deadline(at: DateTime<Utc>, now: DateTime<Utc>) -> Instant {
    match (at - now).to_std() {
        Ok(ahead) if !ahead.is_zero() => Instant::now() + ahead + LATE_BY,
        _ => Instant::now() + MIN_GAP,
    }
}

fn load(path: &Path) -> Result<Config, crate::config::ConfigError> {
    let m = metrics::get();
    match Config::load(path) {
        Ok(c) => {
            m.config_last_reload_successful.set(1);
            m.config_last_reload_success_timestamp_seconds
                .set(Utc::now().timestamp() as f64);
            Ok(c)
        }
        Err(e) => {
            m.config_last_reload_successful.set(0);
            Err(e)
        }
    }
}

/// Applies a reload; the running policy stays when the new file is invalid.
fn reload(state: &mut State, path: &Path) {
    let new = match load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %path.display(), "reload rejected, the running policy stays:\n{e}");
            return;
        }
    };
    if new.state.dir != state.config.state.dir {
        metrics::get().config_last_reload_successful.set(0);
        tracing::error!(
            "reload rejected: state.dir changed; restart the daemon to move the journal"
        );
        return;
    }
    if new.metrics.listen != state.config.metrics.listen {
        tracing::warn!("metrics.listen changed; it takes effect at the next restart");
    }
    let engine = match Engine::new(&new, EngineOptions::default()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            metrics::get().config_last_reload_successful.set(0);
            tracing::error!(error = %e, "reload rejected, the running policy stays");
            return;
        }
    };
    let change = crate::config::diff(&state.config, &new);
    for removed in &change.removed {
        metrics::get().forget_policy(removed);
        state.backoff.remove(removed);
        state.next_due.remove(removed);
    }
    for changed in &change.changed {
        state.next_due.remove(changed);
        state.backoff.remove(changed);
    }
    for added in &change.added {
        metrics::get().init_policy(added);
    }
    tracing::info!(
        added = ?change.added, removed = ?change.removed, changed = ?change.changed,
        "policy reloaded"
    );
    state.config = new;
    state.engine = engine;
}

/// What woke the main loop.
enum Wake {
    /// The timer: a key is due, a backoff expired, or the safety pass is up.
    Timer,
    Reload,
    Stop(&'static str),
}

pub async fn run(config_path: PathBuf) -> Result<(), DaemonError> {
    let config = load(&config_path)?;
    let _lock = StateLock::acquire(&config.state.dir)?;
    let engine = Arc::new(Engine::new(&config, EngineOptions::default())?);
    for key in &config.keys {
        metrics::get().init_policy(&key.name);
    }
    let health = Arc::new(Health::default());
    health.policy_loaded.store(true, Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.metrics.listen,
            source,
        })?;
    let local = listener.local_addr().ok();
    tokio::spawn(metrics::serve(listener, health.clone()));
    tracing::info!(listen = ?local, keys = config.keys.len(), "zenml-rotator running");

    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let mut state = State {
        config,
        engine,
        backoff: HashMap::new(),
        next_due: HashMap::new(),
    };
    sd_notify("READY=1\nSTATUS=first pass");

    // One timer, set to the earliest of: a key's due time or backoff expiry, and the safety
    // pass. Between passes the process sleeps in the kernel: no ticker, no polling. The first
    // pass runs at once: replay the journal, catch up on anything missed while down.
    let mut due_at = Some(Instant::now());
    let mut last_pass = Instant::now();
    loop {
        let safety_at = last_pass + state.config.daemon.safety_pass;
        let deadline = due_at.map_or(safety_at, |d| d.min(safety_at));
        let wake = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            _ = hup.recv() => Wake::Reload,
            _ = term.recv() => Wake::Stop("SIGTERM"),
            _ = int.recv() => Wake::Stop("SIGINT"),
        };
        match wake {
            Wake::Timer => {}
            Wake::Reload => {
                sd_notify("RELOADING=1");
                reload(&mut state, &config_path);
                sd_notify("READY=1");
                // A reload may have added keys or changed schedules: look now.
                due_at = Some(Instant::now());
                continue;
            }
            Wake::Stop(signal) => {
                tracing::info!("{signal}: shutting down");
                break;
            }
        }

        let keys = state.ready_keys(Utc::now());
        last_pass = Instant::now();
        // Server-wide hygiene (opt-in) rides along at most once per safety pass.
        let hygiene = crate::hygiene::due_in_daemon(&state.config, state.config.daemon.safety_pass)
            .then(|| state.config.clone());
        if state.config.keys.is_empty() {
            // No policy to pass over: /readyz still reports whether ZenML answers.
            let reachable = state.engine.zenml().server_info().await.is_ok();
            health.zenml_reachable.store(reachable, Ordering::Relaxed);
            health.passes.fetch_add(1, Ordering::Relaxed);
        }
        if keys.is_empty() && hygiene.is_none() {
            // Every key is backing off: nothing to ask ZenML or the stores, and nothing learnt
            // about ZenML's reachability either.
            tracing::debug!("no key ready; pass skipped");
        } else {
            tracing::debug!(keys = keys.len(), "pass starting");
            let engine = state.engine.clone();
            let mut pass = tokio::spawn(async move {
                let reports = engine.pass(&keys).await;
                if let Some(config) = hygiene {
                    engine.hygiene(&config, false).await;
                }
                reports
            });
            // Signals keep working while a pass runs: TERM stops new rotations and waits for
            // the ones in flight; HUP is applied once the pass is over.
            let mut reload_after = false;
            let reports = loop {
                tokio::select! {
                    r = &mut pass => break r,
                    _ = hup.recv() => { reload_after = true; }
                    _ = term.recv() => { return shutdown(&state, pass, "SIGTERM").await; }
                    _ = int.recv() => { return shutdown(&state, pass, "SIGINT").await; }
                }
            };
            let reports = match reports {
                Ok(r) => r,
                Err(e) => {
                    // A panic inside the engine is a bug; the daemon keeps running and the next
                    // pass looks again.
                    tracing::error!(error = %e, "a pass ended abnormally");
                    Vec::new()
                }
            };
            if !reports.is_empty() {
                health
                    .zenml_reachable
                    .store(reports.iter().any(|r| r.zenml_reached), Ordering::Relaxed);
                health.passes.fetch_add(1, Ordering::Relaxed);
            }
            state.absorb(&reports);
            if reload_after {
                reload(&mut state, &config_path);
            }
            sd_notify(&format!("STATUS=last pass {}", Utc::now().to_rfc3339()));
        }
        let now = Utc::now();
        due_at = state.next_wake().map(|at| timer_deadline(at, now));
        if let Some(at) = state.next_wake() {
            tracing::debug!(at = %at, "next pass scheduled");
        }
    }
    sd_notify("STOPPING=1");
    Ok(())
}

/// SIGTERM during a pass: no new rotation starts; the ones in flight get `shutdown_timeout`.
async fn shutdown(
    state: &State,
    pass: tokio::task::JoinHandle<Vec<KeyReport>>,
    signal: &str,
) -> Result<(), DaemonError> {
    sd_notify("STOPPING=1");
    state.engine.stop();
    let limit = state.config.daemon.shutdown_timeout;
    tracing::info!(timeout = ?limit, "{signal}: waiting for the rotations in flight to finish");
    match tokio::time::timeout(limit, pass).await {
        Ok(_) => {
            tracing::info!("rotations in flight finished; exiting");
            Ok(())
        }
        Err(_) => Err(DaemonError::ShutdownTimeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_never_fires_before_a_due_time_and_never_spins_on_a_past_one() {
        let now = Utc::now();
        let before = Instant::now();
        let ahead = timer_deadline(now + chrono::TimeDelta::seconds(10), now);
        assert!(ahead >= before + Duration::from_secs(10) + LATE_BY);
        assert!(ahead <= Instant::now() + Duration::from_secs(10) + LATE_BY);
        for past in [now, now - chrono::TimeDelta::days(3)] {
            let at = timer_deadline(past, now);
            assert!(at >= before + MIN_GAP, "a past due time must wait MIN_GAP");
        }
    }
}
