//! Loading the policy file and SIGHUP: a new file replaces the running policy only when it is
//! valid and its engine can be built; otherwise the running policy stays (invariant 5) and
//! `config_last_reload_successful` says so.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::state::State;
use crate::config::{self, Config, ConfigError};
use crate::engine::{Engine, Mode};
use crate::metrics;

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let m = metrics::get();
    match Config::load(path) {
        Ok(c) => {
            c.log_warnings();
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
pub fn reload(state: &mut State, path: &Path) {
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
    let engine = match Engine::new(&new, Mode::Live) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            metrics::get().config_last_reload_successful.set(0);
            tracing::error!(error = %e, "reload rejected, the running policy stays");
            return;
        }
    };
    let change = config::diff(&state.config, &new);
    for removed in &change.removed {
        metrics::get().forget_policy(removed);
        state.forget(removed);
    }
    for changed in &change.changed {
        state.forget(changed);
    }
    for added in &change.added {
        metrics::get().init_policy(added);
    }
    tracing::info!(
        added = ?change.added, removed = ?change.removed, changed = ?change.changed,
        "policy reloaded"
    );
    metrics::get().set_insecure_endpoints(new.insecure_endpoints.len());
    crate::notify::install(&new);
    state.config = new;
    state.engine = engine;
}
