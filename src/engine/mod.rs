//! The engine: what one pass does to the managed keys. [`Engine`] holds the [`Context`] a pass
//! works in (the ZenML client, the stores, the journal) and who acts (live, or a dry run);
//! `observe` reads a key, `decide` (pure) says what to do, `reconcile` has it done through the
//! policy's strategy (`crate::strategy`), and `writer` is the one way a new value reaches a store.
//! `events` says what happened: log line and metrics together.

use crate::config::{Config, KeyPolicy, ZenmlAuth};
use crate::zenml::{ClientOptions, Credentials, ZenmlClient, ZenmlError};

pub mod act;
pub mod claims;
pub mod context;
pub mod decide;
pub mod dry_run;
pub mod events;
pub mod failure;
pub mod guard;
pub mod hooks;
pub mod journal;
pub mod observe;
pub mod reconcile;
pub mod revoke;
pub mod stores;
pub mod writer;

use act::{Act, Live};
use claims::ClaimRules;
use context::Context;
use dry_run::DryRun;
use journal::{Journal, JournalError};

/// Setting up the engine failed: nothing was attempted.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ZenML credentials: {0}")]
    Credentials(#[from] crate::secret::SecretSourceError),
    #[error("ZenML client: {0}")]
    Zenml(#[from] ZenmlError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// How a command lets the engine touch the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `once`, `rotate`, `run`: act.
    Live,
    /// `--dry-run`: read everything, pre-flight the stores, change nothing, say what would happen.
    DryRun,
    /// `plan`, `inventory`: read only, and never create the state directory.
    ReadOnly,
}

/// A pass's context, who acts in it, and how many keys at once.
pub struct Engine {
    ctx: Context,
    act: Box<dyn Act>,
    concurrency: usize,
}

fn zenml_credentials(auth: &ZenmlAuth) -> Result<Credentials, EngineError> {
    Ok(match auth {
        ZenmlAuth::Password { username, password } => Credentials::Password {
            username: username.clone(),
            password: password.read()?,
        },
        ZenmlAuth::ApiKey(source) => Credentials::ApiKey(source.read()?),
    })
}

impl Engine {
    pub fn new(config: &Config, mode: Mode) -> Result<Engine, EngineError> {
        let creds = zenml_credentials(&config.zenml.auth)?;
        let zenml = ZenmlClient::new(
            &config.zenml.url,
            creds,
            ClientOptions {
                timeout: config.zenml.timeout,
                ca_file: config.zenml.ca_file.clone(),
            },
        )?;
        // The one place the mode matters: which journal, and who acts.
        let (journal, act): (Journal, Box<dyn Act>) = match mode {
            Mode::Live => (Journal::open(&config.state.dir)?, Box::new(Live)),
            Mode::DryRun | Mode::ReadOnly => (Journal::new(&config.state.dir), Box::new(DryRun)),
        };
        Ok(Engine {
            ctx: Context::new(
                zenml,
                &config.zenml.url,
                &config.stores,
                journal,
                ClaimRules::new(&config.coordination),
            ),
            act,
            concurrency: config.concurrency.max(1),
        })
    }

    pub fn ctx(&self) -> &Context {
        &self.ctx
    }

    pub fn zenml(&self) -> &ZenmlClient {
        self.ctx.zenml()
    }

    pub(crate) fn act(&self) -> &dyn Act {
        self.act.as_ref()
    }

    /// Runs `f` for every key with at most `concurrency` at once; results in key order. The
    /// stores are told the keys' paths first (`Context::expect`).
    pub async fn for_each_key<'a, F, Fut, T>(&'a self, keys: &[KeyPolicy], f: F) -> Vec<T>
    where
        F: Fn(KeyPolicy) -> Fut,
        Fut: std::future::Future<Output = T> + 'a,
    {
        use futures_util::StreamExt;
        self.ctx.expect(keys);
        futures_util::stream::iter(keys.iter().cloned().map(f))
            .buffered(self.concurrency)
            .collect()
            .await
    }

    /// Journal entries whose policy is gone from the config: their values cannot be replayed
    /// without it, and may be the only copy of a working key.
    pub fn orphaned_journal_entries(&self, config: &Config) -> Vec<String> {
        let journal = self.ctx.journal();
        match journal.entries() {
            Ok(entries) => entries
                .into_values()
                .filter(|e| config.key(&e.policy).is_none())
                .map(|e| {
                    format!(
                        "journal entry for policy {:?} (service account {:?}, key {:?}, started {}) has no [[key]] in the config: \
                         restore the policy so the next pass can replay it, or inspect {} and remove the entry",
                        e.policy,
                        e.service_account,
                        e.api_key,
                        e.started_at,
                        journal.dir().display()
                    )
                })
                .collect(),
            Err(e) => vec![format!("journal: {e}")],
        }
    }
}
