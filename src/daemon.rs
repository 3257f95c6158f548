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
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

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
    #[error("scheduler: {0}")]
    Scheduler(String),
}

/// Why the main loop woke up.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// A key's next due time (or a backoff expiry) arrived.
    Due,
    /// The periodic safety pass, for state changed behind the rotator's back.
    Safety,
}

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

struct Scheduler {
    inner: JobScheduler,
    tx: mpsc::Sender<Wake>,
    due_job: Option<Uuid>,
    safety_job: Option<Uuid>,
}

impl Scheduler {
    async fn new(tx: mpsc::Sender<Wake>) -> Result<Scheduler, DaemonError> {
        let inner = JobScheduler::new()
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
        inner
            .start()
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
        Ok(Scheduler {
            inner,
            tx,
            due_job: None,
            safety_job: None,
        })
    }

    async fn set_safety(&mut self, every: Duration) -> Result<(), DaemonError> {
        if let Some(id) = self.safety_job.take() {
            let _ = self.inner.remove(&id).await;
        }
        let tx = self.tx.clone();
        let job = Job::new_repeated_async(every.max(Duration::from_secs(1)), move |_, _| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.try_send(Wake::Safety);
            })
        })
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
        self.safety_job = Some(
            self.inner
                .add(job)
                .await
                .map_err(|e| DaemonError::Scheduler(e.to_string()))?,
        );
        Ok(())
    }

    /// One one-shot job at the earliest time anything is due; replaces the previous one.
    async fn wake_at(&mut self, at: DateTime<Utc>) -> Result<(), DaemonError> {
        if let Some(id) = self.due_job.take() {
            let _ = self.inner.remove(&id).await;
        }
        let delay = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        // The scheduler's one-shot needs a non-zero delay; it fires within its tick after.
        let delay = delay.max(Duration::from_millis(100));
        let tx = self.tx.clone();
        let job = Job::new_one_shot_async(delay, move |_, _| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.try_send(Wake::Due);
            })
        })
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
        self.due_job = Some(
            self.inner
                .add(job)
                .await
                .map_err(|e| DaemonError::Scheduler(e.to_string()))?,
        );
        tracing::debug!(at = %at, "next pass scheduled");
        Ok(())
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
        BackoffPolicy {
            initial: self.config.daemon.backoff_initial,
            max: self.config.daemon.backoff_max,
        }
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
            if let Some(t) = r.next_due {
                self.next_due.insert(r.policy.clone(), t);
            }
        }
    }

    /// The earliest moment anything needs looking at: a due key or a backoff expiry.
    fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.config
            .keys
            .iter()
            .filter_map(|k| {
                let b = self.backoff.get(&k.name);
                match b.and_then(|b| b.next_attempt()) {
                    Some(retry) if b.is_some_and(|b| b.failures() > 0) => Some(retry),
                    _ => self.next_due.get(&k.name).copied(),
                }
            })
            .min()
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
    tracing::info!(
        added = ?change.added, removed = ?change.removed, changed = ?change.changed,
        "policy reloaded"
    );
    state.config = new;
    state.engine = engine;
}

pub async fn run(config_path: PathBuf) -> Result<(), DaemonError> {
    let config = load(&config_path)?;
    let _lock = StateLock::acquire(&config.state.dir)?;
    let engine = Arc::new(Engine::new(&config, EngineOptions::default())?);
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

    let (tx, mut rx) = mpsc::channel::<Wake>(8);
    let mut sched = Scheduler::new(tx.clone()).await?;
    sched.set_safety(config.daemon.safety_pass).await?;

    let mut state = State {
        config,
        engine,
        backoff: HashMap::new(),
        next_due: HashMap::new(),
    };
    sd_notify("READY=1\nSTATUS=first pass");
    // The first pass runs at once: replay the journal, catch up on anything missed while down.
    let _ = tx.try_send(Wake::Due);

    loop {
        let wake = tokio::select! {
            w = rx.recv() => w,
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                let safety = state.config.daemon.safety_pass;
                reload(&mut state, &config_path);
                if state.config.daemon.safety_pass != safety {
                    sched.set_safety(state.config.daemon.safety_pass).await?;
                }
                // A reload may have added keys or changed schedules: look now.
                let _ = tx.try_send(Wake::Due);
                sd_notify("READY=1");
                continue;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        };
        let Some(wake) = wake else { break };
        tracing::debug!(?wake, "pass starting");
        let keys = state.ready_keys(Utc::now());
        let engine = state.engine.clone();
        let hygiene = crate::hygiene::due_in_daemon(&state.config, state.config.daemon.safety_pass)
            .then(|| state.config.clone());
        let mut pass = tokio::spawn(async move {
            let reports = engine.pass(&keys).await;
            if let Some(config) = hygiene {
                engine.hygiene(&config, false).await;
            }
            reports
        });
        // Signals keep working while a pass runs: TERM stops new rotations and waits for the
        // ones in flight; HUP is applied once the pass is over.
        let mut reload_after = false;
        let reports = loop {
            tokio::select! {
                r = &mut pass => break r.ok(),
                _ = hup.recv() => { reload_after = true; }
                _ = term.recv() => { return shutdown(&state, pass).await; }
                _ = int.recv() => { return shutdown(&state, pass).await; }
            }
        };
        let reports = reports.unwrap_or_default();
        health
            .zenml_reachable
            .store(reports.iter().any(|r| r.zenml_reached), Ordering::Relaxed);
        health.passes.fetch_add(1, Ordering::Relaxed);
        state.absorb(&reports);
        if reload_after {
            reload(&mut state, &config_path);
        }
        if let Some(at) = state.next_wake() {
            sched.wake_at(at).await?;
        }
        sd_notify(&format!("STATUS=last pass {}", Utc::now().to_rfc3339()));
    }
    sd_notify("STOPPING=1");
    Ok(())
}

/// SIGTERM during a pass: no new rotation starts; the ones in flight get `shutdown_timeout`.
async fn shutdown(
    state: &State,
    pass: tokio::task::JoinHandle<Vec<KeyReport>>,
) -> Result<(), DaemonError> {
    sd_notify("STOPPING=1");
    state.engine.stop();
    let limit = state.config.daemon.shutdown_timeout;
    tracing::info!(timeout = ?limit, "waiting for the rotations in flight to finish");
    match tokio::time::timeout(limit, pass).await {
        Ok(_) => tracing::info!("rotations in flight finished; exiting"),
        Err(_) => tracing::error!(
            "rotations still in flight after the shutdown timeout; exiting anyway (the journal replays them at the next start)"
        ),
    }
    Ok(())
}
