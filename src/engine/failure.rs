//! What a pass reports for each key: the outcomes of its steps, or the one failure that stopped
//! it, typed by cause and tagged with the stage it happened in (`errors_total{stage}`). Messages
//! never hold a secret: every source error is already scrubbed where it was made.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::claims::ClaimError;
use super::decide::Action;
use super::journal::JournalError;
use crate::metrics::Stage;
use crate::store::StoreError;
use crate::zenml::ZenmlError;

/// Why a key failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    /// `decide` stopped the key (`blocked`): the plan's reason says what a person must do.
    #[error("{0}")]
    Blocked(String),
    /// Invariant 1 refused a rotation inside the retain window.
    #[error("{0}")]
    Refused(String),
    /// A ZenML call failed or was refused.
    #[error("{context}{error}")]
    Zenml {
        context: String,
        error: Arc<ZenmlError>,
    },
    /// A store failed or refused.
    #[error("{context}{error}")]
    Store {
        context: String,
        error: Arc<StoreError>,
    },
    /// The local journal could not be read or written.
    #[error("{context}{error}")]
    Journal {
        context: String,
        error: Arc<JournalError>,
    },
    /// ZenML rejects a value the rotator holds, or still accepts one whose window ended.
    #[error("{0}")]
    Value(String),
    /// What a store returned differs from what was written.
    #[error("{0}")]
    ReadBack(String),
    /// The key guard refused, or a deactivation or deletion failed.
    #[error(transparent)]
    Disable(#[from] DisableError),
    /// State the rotator cannot work with (no record, a malformed id, an undefined store).
    #[error("{0}")]
    State(String),
    /// `rotate NAME` found another rotator working on the key.
    #[error("{0}")]
    Claimed(String),
    /// The key's claim could not be taken or was lost mid-way (invariant 7).
    #[error(transparent)]
    Claim(#[from] ClaimError),
}

/// Why a key was not taken out of service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DisableError {
    #[error("refused to {verb} key {name:?} ({id}): {why}")]
    Protected {
        verb: &'static str,
        name: String,
        id: Uuid,
        why: String,
    },
    #[error("cannot {verb} key {name:?} ({id}): {error}")]
    Zenml {
        verb: &'static str,
        name: String,
        id: Uuid,
        error: Arc<ZenmlError>,
    },
    #[error("ZenML still reports key {name:?} ({id}) active after deactivating it")]
    StillActive { name: String, id: Uuid },
    #[error("key {name:?} ({id}) is active (again): not deleting it")]
    ActiveAgain { name: String, id: Uuid },
    #[error("cannot read which key the store holds, so no key is deactivated: {0}")]
    StoreUnknown(Arc<StoreError>),
    #[error("not deactivated: cannot tell which keys the stores hold ({0})")]
    StoresUnknown(String),
}

/// One key failed at one stage.
#[derive(Debug, Clone)]
pub struct KeyFailure {
    pub stage: Stage,
    pub error: KeyError,
}

impl KeyFailure {
    pub fn new(stage: Stage, error: KeyError) -> KeyFailure {
        KeyFailure { stage, error }
    }

    pub fn blocked(reason: impl Into<String>) -> KeyFailure {
        KeyFailure::new(Stage::Preflight, KeyError::Blocked(reason.into()))
    }

    /// Invariant 1 said no: counted as `rotations_total{result="refused"}`, reported at pre-flight.
    pub fn refused(reason: impl Into<String>) -> KeyFailure {
        KeyFailure::new(Stage::Preflight, KeyError::Refused(reason.into()))
    }

    pub fn claim(stage: Stage, error: ClaimError) -> KeyFailure {
        KeyFailure::new(stage, KeyError::Claim(error))
    }

    pub fn state(stage: Stage, message: impl Into<String>) -> KeyFailure {
        KeyFailure::new(stage, KeyError::State(message.into()))
    }

    pub fn zenml(stage: Stage, error: ZenmlError) -> KeyFailure {
        KeyFailure::zenml_in(stage, "", error)
    }

    pub fn zenml_in(stage: Stage, context: impl Into<String>, error: ZenmlError) -> KeyFailure {
        KeyFailure::new(
            stage,
            KeyError::Zenml {
                context: context.into(),
                error: Arc::new(error),
            },
        )
    }

    pub fn store(stage: Stage, error: StoreError) -> KeyFailure {
        KeyFailure::store_in(stage, "", error)
    }

    pub fn store_in(stage: Stage, context: impl Into<String>, error: StoreError) -> KeyFailure {
        KeyFailure::new(
            stage,
            KeyError::Store {
                context: context.into(),
                error: Arc::new(error),
            },
        )
    }

    pub fn journal(stage: Stage, context: impl Into<String>, error: JournalError) -> KeyFailure {
        KeyFailure::new(
            stage,
            KeyError::Journal {
                context: context.into(),
                error: Arc::new(error),
            },
        )
    }

    /// The message for people (the stage is shown beside it).
    pub fn message(&self) -> String {
        self.error.to_string()
    }
}

impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.error)
    }
}

/// What a pass did with one key.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new value is stored, read back equal and accepted by ZenML.
    Rotated { key_id: String, fingerprint: String },
    /// The previous value was confirmed rejected after its window (or the old key deactivated).
    Finalized { detail: String },
    /// Nothing to do now.
    Waited { reason: String },
    /// A rotation whose new value nobody kept was healed (a rescue key stored, or the key rotated
    /// again and stored).
    Recovered {
        key_id: String,
        fingerprint: String,
        detail: String,
    },
    /// `--dry-run`: what a real pass would have done.
    WouldDo { action: Action, reason: String },
    /// A hook (`on_rotated`, `on_finalized`) ran for the stored value.
    HookRan { hook: &'static str, detail: String },
    /// A hook failed or timed out: the rotation stands, the pass fails, later passes retry it.
    HookFailed { hook: &'static str, detail: String },
}

#[derive(Debug, Clone)]
pub struct KeyReport {
    pub policy: String,
    pub result: Result<Vec<Outcome>, KeyFailure>,
    /// When the key is next due, as the last decision of the pass saw it.
    pub next_due: Option<DateTime<Utc>>,
    /// Whether ZenML answered during this key's work (for `/readyz`).
    pub zenml_reached: bool,
}

impl KeyReport {
    /// The key failed, or one of its hooks did.
    pub fn failed(&self) -> bool {
        match &self.result {
            Err(_) => true,
            Ok(outcomes) => outcomes
                .iter()
                .any(|o| matches!(o, Outcome::HookFailed { .. })),
        }
    }
}

/// How `rotate NAME` treats invariant 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    No,
    Yes,
}
