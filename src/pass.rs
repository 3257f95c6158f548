//! What one pass is, for `once`, `rotate` and every pass of `run` alike: the journal entries no
//! policy can replay are reported, every key is reconciled (`concurrency` at a time), and, when
//! asked, `[hygiene]` looks at the whole server.

use std::sync::atomic::AtomicBool;

use crate::audit::hygiene::{self, HygieneResult};
use crate::config::{Config, KeyPolicy};
use crate::engine::Engine;
use crate::engine::failure::{Force, KeyReport};
use crate::engine::reconcile;

/// Which keys a pass covers and how.
pub struct Scope<'a> {
    pub keys: &'a [KeyPolicy],
    /// `rotate NAME [--force]`: rotate whatever the age.
    pub force: Option<Force>,
    /// Run `[hygiene]` after the keys (when the file has it).
    pub hygiene: bool,
}

impl<'a> Scope<'a> {
    /// Every key of the file, and hygiene (`once`).
    pub fn all(config: &'a Config) -> Scope<'a> {
        Scope {
            keys: &config.keys,
            force: None,
            hygiene: true,
        }
    }
}

pub struct PassReport {
    pub keys: Vec<KeyReport>,
    pub hygiene: Vec<HygieneResult>,
    /// Journal entries whose policy is gone from the file (each a sentence for people).
    pub orphans: Vec<String>,
}

impl PassReport {
    /// Keys and hygiene rows that failed; a key whose hook failed counts (its rotation stands).
    pub fn failed(&self) -> usize {
        self.keys.iter().filter(|r| r.failed()).count()
            + self.hygiene.iter().filter(|h| h.failed).count()
    }

    /// Everything done: exit 0.
    pub fn success(&self) -> bool {
        self.failed() == 0 && self.orphans.is_empty()
    }

    /// Whether ZenML answered during the pass (for `/readyz`); `None` when no key was looked at.
    pub fn zenml_reached(&self) -> Option<bool> {
        (!self.keys.is_empty()).then(|| self.keys.iter().any(|r| r.zenml_reached))
    }
}

pub async fn run(
    engine: &Engine,
    config: &Config,
    scope: Scope<'_>,
    stop: &AtomicBool,
) -> PassReport {
    let orphans = engine.orphaned_journal_entries(config);
    for o in &orphans {
        tracing::error!("{o}");
    }
    let keys = reconcile::keys(engine, scope.keys, scope.force, stop).await;
    let hygiene = if scope.hygiene && config.hygiene.is_some() {
        hygiene::run(engine, config).await
    } else {
        Vec::new()
    };
    let report = PassReport {
        keys,
        hygiene,
        orphans,
    };
    let failed = report.failed();
    if !report.success() {
        tracing::error!(
            failed,
            keys = report.keys.len(),
            "pass finished with failures"
        );
    }
    report
}
