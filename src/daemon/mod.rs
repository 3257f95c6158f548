//! `run`: passes at the next due time of any key (and a periodic safety pass), per-key backoff,
//! SIGHUP reload, SIGTERM/SIGINT shutdown that lets the rotation in flight finish, sd_notify.
//! Each pass is the same level-triggered pass as `once` (`crate::pass`); timers only decide when
//! to look.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod backoff;
mod notify;
mod reload;
mod state;

use crate::engine::{Engine, Mode};
use crate::metrics::{self, Health};
use crate::pass::{self, PassReport, Scope};
use notify::sd_notify;
use reload::{load, reload};
use state::State;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Journal(#[from] crate::engine::journal::JournalError),
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

/// When a wall-clock time falls on the monotonic clock the timer sleeps on. A time already past
/// (the key is still due after the pass that just ran) waits `MIN_GAP`.
fn timer_deadline(at: DateTime<Utc>, now: DateTime<Utc>) -> Instant {
    match (at - now).to_std() {
        Ok(ahead) if !ahead.is_zero() => Instant::now() + ahead + LATE_BY,
        _ => Instant::now() + MIN_GAP,
    }
}

/// What woke the main loop.
enum Wake {
    /// The timer: a key is due, a backoff expired, or the safety pass is up.
    Timer,
    Reload,
    Stop(&'static str),
}

struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Signals, DaemonError> {
        let on = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Signals {
            hup: on(SignalKind::hangup())?,
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
        })
    }
}

/// Binds `[metrics] listen` and serves `/metrics`, `/healthz`, `/readyz` in the background.
async fn serve_metrics(state: &State) -> Result<(), DaemonError> {
    let addr = state.config.metrics.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let local = listener.local_addr().ok();
    tokio::spawn(metrics::serve(listener, state.health.clone()));
    tracing::info!(listen = ?local, keys = state.config.keys.len(), "zenml-rotator running");
    Ok(())
}

pub async fn run(config_path: PathBuf) -> Result<(), DaemonError> {
    let config = load(&config_path)?;
    metrics::get().set_insecure_endpoints(config.insecure_endpoints.len());
    let engine = Arc::new(Engine::new(&config, Mode::Live)?);
    crate::notify::install(&config);
    for key in &config.keys {
        metrics::get().init_policy(&key.name);
    }
    let health = Arc::new(Health::default());
    health.policy_loaded.store(true, Ordering::Relaxed);
    let mut state = State::new(config, engine, health);
    serve_metrics(&state).await?;
    let mut signals = Signals::new()?;
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
            _ = signals.hup.recv() => Wake::Reload,
            _ = signals.term.recv() => Wake::Stop("SIGTERM"),
            _ = signals.int.recv() => Wake::Stop("SIGINT"),
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
        last_pass = Instant::now();
        if let Some(stopped_by) = one_pass(&mut state, &mut signals, &config_path).await {
            return shutdown(&state, stopped_by.0, stopped_by.1).await;
        }
        let now = Utc::now();
        due_at = state.next_wake().map(|at| timer_deadline(at, now));
        if let Some(at) = state.next_wake() {
            tracing::debug!(at = %at, "next pass scheduled");
        }
    }
    sd_notify("STOPPING=1");
    crate::notify::drain(crate::notify::EXIT_WAIT).await;
    Ok(())
}

/// A signal that stopped the daemon during a pass, and the pass still running.
type Interrupted = (JoinHandle<PassReport>, &'static str);

/// Runs one pass over the keys that are ready, with signals still heard: TERM stops new
/// rotations and returns the running pass to wait for; HUP is applied once the pass is over.
async fn one_pass(
    state: &mut State,
    signals: &mut Signals,
    config_path: &std::path::Path,
) -> Option<Interrupted> {
    let keys = state.ready_keys(Utc::now());
    let hygiene = state.hygiene_due(state.config.daemon.safety_pass);
    if state.config.keys.is_empty() {
        // No policy to pass over: /readyz still reports whether ZenML answers.
        let reachable = state.engine.zenml().server_info().await.is_ok();
        state
            .health
            .zenml_reachable
            .store(reachable, Ordering::Relaxed);
        state.health.passes.fetch_add(1, Ordering::Relaxed);
    }
    if keys.is_empty() && !hygiene {
        // Every key is backing off: nothing to ask ZenML or the stores, and nothing learnt
        // about ZenML's reachability either.
        tracing::debug!("no key ready; pass skipped");
        return None;
    }
    tracing::debug!(keys = keys.len(), "pass starting");
    let (engine, config, stop) = (
        state.engine.clone(),
        state.config.clone(),
        state.stop.clone(),
    );
    let mut pass = tokio::spawn(async move {
        let scope = Scope {
            keys: &keys,
            force: None,
            hygiene,
        };
        pass::run(&engine, &config, scope, &stop).await
    });
    let mut reload_after = false;
    let report = loop {
        tokio::select! {
            r = &mut pass => break r,
            _ = signals.hup.recv() => { reload_after = true; }
            _ = signals.term.recv() => return Some((pass, "SIGTERM")),
            _ = signals.int.recv() => return Some((pass, "SIGINT")),
        }
    };
    match report {
        Ok(report) => state.absorb(&report),
        // A panic inside the engine is a bug; the daemon keeps running and the next pass looks again.
        Err(e) => tracing::error!(error = %e, "a pass ended abnormally"),
    }
    if reload_after {
        reload(state, config_path);
    }
    sd_notify(&format!("STATUS=last pass {}", Utc::now().to_rfc3339()));
    None
}

/// SIGTERM during a pass: no new rotation starts; the ones in flight get `shutdown_timeout`.
async fn shutdown(
    state: &State,
    pass: JoinHandle<PassReport>,
    signal: &str,
) -> Result<(), DaemonError> {
    sd_notify("STOPPING=1");
    state.stop.store(true, Ordering::SeqCst);
    let limit = state.config.daemon.shutdown_timeout;
    tracing::info!(timeout = ?limit, "{signal}: waiting for the rotations in flight to finish");
    match tokio::time::timeout(limit, pass).await {
        Ok(_) => {
            tracing::info!("rotations in flight finished; exiting");
            crate::notify::drain(crate::notify::EXIT_WAIT).await;
            Ok(())
        }
        Err(_) => Err(DaemonError::ShutdownTimeout(limit)),
    }
}

#[cfg(test)]
mod tests;
