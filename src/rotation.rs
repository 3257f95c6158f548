//! The per-key state machine: observe, pre-flight, journal intent, rotate, journal the value,
//! verify, store, read back, forget the journal entry; and after the retain window, finalize.
//! Every step is idempotent and resumable: a pass first replays what the journal holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::config::{Config, KeyPolicy, StoreSettings, Strategy, ZenmlAuth};
use crate::decide::{self, Action, KeyPlan, Observed, Why};
use crate::fault;
use crate::journal::{Entry, Journal, JournalError, Phase};
use crate::metrics::{self, Stage};
use crate::secret::{ExposeSecret, SecretString, fingerprint, secrets_equal};
use crate::store::dry_run::DryRunStore;
use crate::store::{self, Payload, RotationRecord, SecretStore, StoreError, StoreSnapshot};
use crate::zenml::{
    ApiKey, ClientOptions, Credentials, KeyCheck, ServiceAccount, ZenmlClient, ZenmlError,
};

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

/// One key failed at one stage; the message never holds a secret.
#[derive(Debug, Clone)]
pub struct KeyFailure {
    pub stage: Stage,
    pub message: String,
}

impl KeyFailure {
    pub(crate) fn new(stage: Stage, message: impl Into<String>) -> KeyFailure {
        KeyFailure {
            stage,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.message)
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
    /// `--dry-run`: what a real pass would have done.
    WouldDo { action: Action, reason: String },
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

/// How `rotate NAME` treats invariant 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    No,
    Yes,
}

/// Stores are connected lazily, once, and retried on the next use when connecting failed.
struct StoreSlot {
    settings: StoreSettings,
    cell: OnceCell<Arc<dyn SecretStore>>,
}

pub struct Engine {
    zenml: ZenmlClient,
    zenml_url: String,
    stores: BTreeMap<String, StoreSlot>,
    journal: Journal,
    dry_run: bool,
    concurrency: usize,
    /// Set by SIGTERM: keys not yet started are skipped; those in flight finish.
    stopping: std::sync::atomic::AtomicBool,
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

#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    /// Reads pass through, every write (ZenML, stores, journal) is skipped and reported.
    pub dry_run: bool,
    /// `plan`: never create the state directory.
    pub read_only: bool,
}

impl Engine {
    pub fn new(config: &Config, opts: EngineOptions) -> Result<Engine, EngineError> {
        let creds = zenml_credentials(&config.zenml.auth)?;
        let zenml = ZenmlClient::new(
            &config.zenml.url,
            creds,
            ClientOptions {
                timeout: config.zenml.timeout,
                ca_file: config.zenml.ca_file.clone(),
            },
        )?;
        let journal = if opts.read_only || opts.dry_run {
            Journal::read_only(&config.state.dir)
        } else {
            Journal::open(&config.state.dir)?
        };
        let stores = config
            .stores
            .iter()
            .map(|(name, settings)| {
                (
                    name.clone(),
                    StoreSlot {
                        settings: settings.clone(),
                        cell: OnceCell::new(),
                    },
                )
            })
            .collect();
        Ok(Engine {
            zenml,
            zenml_url: config.zenml.url.clone(),
            stores,
            journal,
            dry_run: opts.dry_run,
            concurrency: config.concurrency.max(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops starting new keys; the ones in flight run to completion.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn zenml(&self) -> &ZenmlClient {
        &self.zenml
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) async fn store(&self, name: &str) -> Result<Arc<dyn SecretStore>, KeyFailure> {
        let slot = self.stores.get(name).ok_or_else(|| {
            KeyFailure::new(Stage::Preflight, format!("store {name:?} is not defined"))
        })?;
        let dry_run = self.dry_run;
        slot.cell
            .get_or_try_init(|| async {
                let inner = store::open(&slot.settings).await?;
                Ok::<_, StoreError>(if dry_run {
                    Arc::new(DryRunStore::new(inner)) as Arc<dyn SecretStore>
                } else {
                    inner
                })
            })
            .await
            .cloned()
            .map_err(|e| KeyFailure::new(Stage::Preflight, format!("store {name:?}: {e}")))
    }

    /// Journal entries whose policy is gone from the config: their values cannot be replayed
    /// without it, and may be the only copy of a working key.
    pub fn orphaned_journal_entries(&self, config: &Config) -> Vec<String> {
        match self.journal.entries() {
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
                        self.journal.dir().display()
                    )
                })
                .collect(),
            Err(e) => vec![format!("journal: {e}")],
        }
    }

    /// Every service account by name: one paged listing per pass instead of a lookup per key.
    pub async fn service_accounts(&self) -> Result<BTreeMap<String, ServiceAccount>, ZenmlError> {
        Ok(self
            .zenml
            .list_service_accounts()
            .await?
            .into_iter()
            .map(|sa| (sa.name.clone(), sa))
            .collect())
    }

    /// Reads everything `decide` needs for one key. Read-only.
    pub async fn observe(
        &self,
        policy: &KeyPolicy,
        accounts: &BTreeMap<String, ServiceAccount>,
    ) -> Observed {
        let mut obs = Observed::default();
        match self.journal.get(&policy.name) {
            Ok(entry) => obs.journal = entry,
            Err(e) => {
                obs.read_error = Some(format!("Journal: {e}"));
                return obs;
            }
        }
        let store = match self.store(&policy.store).await {
            Ok(s) => s,
            Err(e) => {
                obs.read_error = Some(format!("Store: {}", e.message));
                return obs;
            }
        };
        let snapshot = match store.inspect(&policy.path).await {
            Ok(s) => s,
            Err(e) => {
                obs.read_error = Some(format!("Store: {e}"));
                return obs;
            }
        };
        let Some(sa) = accounts.get(&policy.service_account) else {
            obs.snapshot = Some(snapshot);
            return obs;
        };
        obs.service_account = Some(sa.clone());
        // Strategy replace keeps the current key's id in the store's record.
        let key_ref = match (policy.strategy, snapshot.record.as_ref()) {
            (Strategy::Replace, Some(r)) if !r.key_id.is_empty() => r.key_id.clone(),
            _ => policy.api_key.clone(),
        };
        match self.zenml.get_api_key(sa.id, &key_ref).await {
            Ok(key) => obs.key = Some(key),
            Err(ZenmlError::NotFound { .. }) => {}
            Err(e) => obs.read_error = Some(format!("ZenML: {e}")),
        }
        if policy.strategy == Strategy::Replace && obs.read_error.is_none() {
            self.observe_replace(policy, sa, &store, &snapshot, &mut obs)
                .await;
        }
        obs.snapshot = Some(snapshot);
        obs
    }

    /// `plan`: the decision for every key, read-only. The bool is false when a key could not be read.
    pub async fn plan(&self, keys: &[KeyPolicy], now: DateTime<Utc>) -> Vec<(KeyPlan, bool)> {
        let accounts = match self.service_accounts().await {
            Ok(a) => a,
            Err(e) => {
                let msg = format!("ZenML: {e}");
                return keys
                    .iter()
                    .map(|k| {
                        let obs = Observed {
                            read_error: Some(msg.clone()),
                            ..Observed::default()
                        };
                        (decide::decide(k, &obs, now), false)
                    })
                    .collect();
            }
        };
        let accounts = Arc::new(accounts);
        self.for_each_key(keys, |policy| {
            let accounts = accounts.clone();
            async move {
                let obs = self.observe(&policy, &accounts).await;
                let readable = obs.read_error.is_none();
                (decide::decide(&policy, &obs, now), readable)
            }
        })
        .await
    }

    /// Runs `f` for every key with at most `concurrency` at once; results in key order.
    async fn for_each_key<'a, F, Fut, T>(&'a self, keys: &[KeyPolicy], f: F) -> Vec<T>
    where
        F: Fn(KeyPolicy) -> Fut,
        Fut: std::future::Future<Output = T> + 'a,
    {
        use futures_util::StreamExt;
        futures_util::stream::iter(keys.iter().cloned().map(f))
            .buffered(self.concurrency)
            .collect()
            .await
    }

    /// One reconcile pass (`once`, and each pass of `run`): replay, finalize, rotate what is due.
    pub async fn pass(&self, keys: &[KeyPolicy]) -> Vec<KeyReport> {
        let accounts = match self.service_accounts().await {
            Ok(a) => Arc::new(a),
            Err(e) => {
                return keys
                    .iter()
                    .map(|k| {
                        metrics::get().error(&k.name, Stage::Preflight);
                        metrics::get()
                            .policy_healthy
                            .with_label_values(&[&k.name])
                            .set(0);
                        KeyReport {
                            policy: k.name.clone(),
                            result: Err(KeyFailure::new(Stage::Preflight, format!("ZenML: {e}"))),
                            next_due: None,
                            zenml_reached: false,
                        }
                    })
                    .collect();
            }
        };
        self.for_each_key(keys, |policy| {
            let accounts = accounts.clone();
            async move {
                let mut next_due = None;
                let result = if self.stopping() {
                    Ok(vec![Outcome::Waited {
                        reason: "shutting down: not started".into(),
                    }])
                } else {
                    let r = self
                        .reconcile(&policy, &accounts, None, &mut next_due)
                        .await;
                    self.refresh_after_rotation(&policy, &accounts, &r, &mut next_due)
                        .await;
                    self.account(&policy, &r);
                    r
                };
                KeyReport {
                    policy: policy.name.clone(),
                    result,
                    next_due,
                    zenml_reached: true,
                }
            }
        })
        .await
    }

    /// `rotate NAME [--force]`: replays a journaled rotation first, then rotates whatever the age.
    pub async fn rotate_now(&self, policy: &KeyPolicy, force: Force) -> KeyReport {
        let mut next_due = None;
        let (result, zenml_reached) = match self.service_accounts().await {
            Ok(accounts) => {
                let r = self
                    .reconcile(policy, &accounts, Some(force), &mut next_due)
                    .await;
                self.refresh_after_rotation(policy, &accounts, &r, &mut next_due)
                    .await;
                (r, true)
            }
            Err(e) => (
                Err(KeyFailure::new(Stage::Preflight, format!("ZenML: {e}"))),
                false,
            ),
        };
        self.account(policy, &result);
        KeyReport {
            policy: policy.name.clone(),
            result,
            next_due,
            zenml_reached,
        }
    }

    /// The decision that led to a rotation was published before it: last rotation, next due and
    /// retain-until still describe the old value. Look once more so the metrics a one-shot run
    /// exports, and the daemon's next wake, describe the new one.
    async fn refresh_after_rotation(
        &self,
        policy: &KeyPolicy,
        accounts: &BTreeMap<String, ServiceAccount>,
        result: &Result<Vec<Outcome>, KeyFailure>,
        next_due: &mut Option<DateTime<Utc>>,
    ) {
        let rotated = result
            .as_ref()
            .is_ok_and(|o| o.iter().any(|o| matches!(o, Outcome::Rotated { .. })));
        if !rotated || self.dry_run {
            return;
        }
        let obs = self.observe(policy, accounts).await;
        if obs.read_error.is_none() {
            let plan = decide::decide(policy, &obs, Utc::now());
            self.publish(&plan, &obs);
            *next_due = plan.wake_at.or(plan.next_due);
        }
    }

    fn account(&self, policy: &KeyPolicy, result: &Result<Vec<Outcome>, KeyFailure>) {
        let m = metrics::get();
        let name = policy.name.as_str();
        match result {
            Ok(outcomes) => {
                m.policy_healthy.with_label_values(&[name]).set(1);
                m.last_success_timestamp_seconds
                    .with_label_values(&[name])
                    .set(Utc::now().timestamp() as f64);
                for o in outcomes {
                    if let Outcome::Rotated { .. } = o {
                        m.rotations_total
                            .with_label_values(&[name, "success"])
                            .inc();
                    }
                }
            }
            Err(f) => {
                m.policy_healthy.with_label_values(&[name]).set(0);
                m.error(name, f.stage);
                if matches!(f.stage, Stage::Rotate | Stage::Verify | Stage::Store) {
                    m.rotations_total
                        .with_label_values(&[name, "failure"])
                        .inc();
                }
            }
        }
        if let Ok(entries) = self.journal.entries() {
            m.journal_entries.set(entries.len() as i64);
        }
    }

    fn publish(&self, plan: &KeyPlan, obs: &Observed) {
        let m = metrics::get();
        let name = plan.policy.as_str();
        if let Some(key) = &obs.key {
            let t = key.last_rotated.unwrap_or(key.created);
            m.last_rotation_timestamp_seconds
                .with_label_values(&[name])
                .set(t.timestamp() as f64);
        }
        if let Some(t) = plan.next_due {
            m.next_rotation_timestamp_seconds
                .with_label_values(&[name])
                .set(t.timestamp() as f64);
        }
        if let Some(t) = plan.retain_until {
            m.retain_until_timestamp_seconds
                .with_label_values(&[name])
                .set(t.timestamp() as f64);
        }
    }

    /// Observe, decide, act; then decide again, since a finalize may be followed by a rotation.
    /// At most three steps per key per pass, and at most one rotation.
    async fn reconcile(
        &self,
        policy: &KeyPolicy,
        accounts: &BTreeMap<String, ServiceAccount>,
        force: Option<Force>,
        next_due: &mut Option<DateTime<Utc>>,
    ) -> Result<Vec<Outcome>, KeyFailure> {
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let obs = self.observe(policy, accounts).await;
            let plan = decide::decide(policy, &obs, Utc::now());
            self.publish(&plan, &obs);
            *next_due = plan.wake_at.or(plan.next_due);
            if self.dry_run {
                if plan.action == Action::Blocked {
                    return Err(KeyFailure::new(Stage::Preflight, plan.reason));
                }
                let action = if force.is_some() {
                    Action::Rotate
                } else {
                    plan.action
                };
                // A rotation would start with the store's pre-flight: run it (it writes nothing),
                // so a dry run does not promise what the store would refuse.
                if action == Action::Rotate {
                    let store = self.store(&policy.store).await?;
                    store
                        .preflight(&policy.path)
                        .await
                        .map_err(|e| KeyFailure::new(Stage::Preflight, e.to_string()))?;
                }
                outcomes.push(Outcome::WouldDo {
                    action,
                    reason: plan.reason,
                });
                return Ok(outcomes);
            }
            let forced = force == Some(Force::Yes);
            let step = match plan.why {
                Why::Unreadable | Why::Unusable => {
                    return Err(KeyFailure::new(Stage::Preflight, plan.reason));
                }
                Why::LostRotation | Why::RotatedOutOfBand if !forced => {
                    return Err(KeyFailure::new(Stage::Preflight, plan.reason));
                }
                Why::LostRotation | Why::RotatedOutOfBand => {
                    self.journal.remove(&policy.name)?;
                    let o = self.rotate(policy, &obs, Force::Yes).await?;
                    outcomes.push(o);
                    return Ok(outcomes);
                }
                Why::StaleIntent => {
                    self.journal.remove(&policy.name)?;
                    tracing::info!(policy = %policy.name, "dropped a journaled intent whose rotate call never happened");
                    continue;
                }
                Why::ResumeJournal => {
                    // The journaled value is the rotation `rotate NAME` asked for: stop there.
                    let o = self.resume(policy, &obs).await?;
                    let done = matches!(o, Outcome::Rotated { .. });
                    outcomes.push(o);
                    if done {
                        return Ok(outcomes);
                    }
                    continue;
                }
                Why::FinalizeDue if forced => match self.finalize(policy, &obs).await {
                    Ok(o) => o,
                    Err(e) => {
                        // The operator asked for a rotation whatever the state: a finalize that
                        // cannot complete (the old value still accepted) must not stand in its way.
                        tracing::warn!(policy = %policy.name, error = %e, "--force: rotating although the last rotation could not be finalized");
                        let o = self.rotate(policy, &obs, Force::Yes).await?;
                        outcomes.push(o);
                        return Ok(outcomes);
                    }
                },
                Why::FinalizeDue => self.finalize(policy, &obs).await?,
                Why::RetireDue => self.retire(policy, &obs).await?,
                Why::StoreEmpty | Why::Due => {
                    let o = self
                        .rotate(policy, &obs, force.unwrap_or(Force::No))
                        .await?;
                    outcomes.push(o);
                    return Ok(outcomes);
                }
                Why::NotDue => match force {
                    Some(f) => {
                        let o = self.rotate(policy, &obs, f).await?;
                        outcomes.push(o);
                        return Ok(outcomes);
                    }
                    None => {
                        if outcomes.is_empty() {
                            outcomes.push(Outcome::Waited {
                                reason: plan.reason,
                            });
                        }
                        return Ok(outcomes);
                    }
                },
            };
            outcomes.push(step);
        }
        Ok(outcomes)
    }

    fn entry_for(
        &self,
        policy: &KeyPolicy,
        sa: &ServiceAccount,
        key: &ApiKey,
        token: String,
    ) -> Entry {
        Entry {
            policy: policy.name.clone(),
            token,
            phase: Phase::Intent,
            strategy: policy.strategy.as_str().into(),
            service_account: sa.name.clone(),
            service_account_id: sa.id.to_string(),
            api_key: key.name.clone(),
            key_id: key.id.to_string(),
            store: policy.store.clone(),
            path: policy.path.clone(),
            started_at: Utc::now(),
            previous_last_rotated: key.last_rotated,
            retain_minutes: retain_minutes(policy),
            rotated_at: None,
            fingerprint: None,
            value: None,
        }
    }

    /// Strategy `rotate`: in place, with ZenML's retain window.
    async fn rotate(
        &self,
        policy: &KeyPolicy,
        obs: &Observed,
        force: Force,
    ) -> Result<Outcome, KeyFailure> {
        if policy.strategy == Strategy::Replace {
            return self.replace(policy, obs, force).await;
        }
        let started = Instant::now();
        let (sa, key) = usable(obs)?;
        // Invariant 1: a second rotation inside the window cuts off every consumer of the oldest value.
        if let Some(until) = decide::zenml_retain_until(key)
            && until > Utc::now()
        {
            if force == Force::No {
                return Err(refuse(
                    policy,
                    format!(
                        "refused: the previous value is valid until {} (retain window of the rotation at {}); \
                         rotating now would cut off every consumer still using it. Pass --force to override.",
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        key.last_rotated
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default()
                    ),
                ));
            }
            tracing::warn!(policy = %policy.name, "--force: rotating inside the retain window; the value from two rotations back stops working now");
        }
        // Invariant 2: the destination must be writable now, before ZenML changes anything.
        let store = self.store(&policy.store).await?;
        let snapshot = self.preflight_store(&store, policy).await?;

        let entry = self.entry_for(policy, sa, key, Uuid::new_v4().to_string());
        self.journal.record(&entry).map_err(|e| {
            KeyFailure::new(Stage::Preflight, format!("cannot journal the intent: {e}"))
        })?;
        fault::point("before_rotate");
        let new = match self
            .zenml
            .rotate_api_key(sa.id, &key.id.to_string(), retain_minutes(policy))
            .await
        {
            Ok(new) => new,
            Err(e) => {
                if !outcome_unknown(&e) {
                    // The server refused: nothing changed, so the intent goes.
                    let _ = self.journal.remove(&policy.name);
                }
                return Err(KeyFailure::new(Stage::Rotate, e.to_string()));
            }
        };
        // The value exists only in memory: journal it before anything else happens.
        let mut entry = entry.with_value(&new.value);
        entry.rotated_at = new.key.last_rotated;
        if let Err(e) = self.journal.record(&entry) {
            // Keep going: storing the value is now the only way to keep it.
            tracing::error!(policy = %policy.name, error = %e, "could not journal the new value; storing it directly");
        }
        tracing::info!(policy = %policy.name, key_id = %key.id, fingerprint = %fingerprint(&new.value), "rotated in ZenML");
        fault::point("after_rotate");
        let outcome = self
            .complete(policy, &store, &entry, &new.value, snapshot)
            .await?;
        metrics::get()
            .rotation_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }

    pub(crate) async fn preflight_store(
        &self,
        store: &Arc<dyn SecretStore>,
        policy: &KeyPolicy,
    ) -> Result<StoreSnapshot, KeyFailure> {
        let mut snapshot = store
            .preflight(&policy.path)
            .await
            .map_err(|e| KeyFailure::new(Stage::Preflight, e.to_string()))?;
        if let Some(pending) = snapshot.pending.clone() {
            // A staged value no journal entry of ours knows about: a crashed run of ours whose entry
            // was resolved, or an abandoned rotation. It would block this one; clear it.
            tracing::warn!(policy = %policy.name, token = %pending, "clearing a stuck staged value");
            store
                .discard_staged(&policy.path, &pending)
                .await
                .map_err(|e| KeyFailure::new(Stage::Preflight, e.to_string()))?;
            snapshot = store
                .preflight(&policy.path)
                .await
                .map_err(|e| KeyFailure::new(Stage::Preflight, e.to_string()))?;
        }
        Ok(snapshot)
    }

    /// Verify, store, read back, promote, record; then forget the journal entry.
    async fn complete(
        &self,
        policy: &KeyPolicy,
        store: &Arc<dyn SecretStore>,
        entry: &Entry,
        value: &SecretString,
        snapshot: StoreSnapshot,
    ) -> Result<Outcome, KeyFailure> {
        let sa_id = parse_uuid(&entry.service_account_id, Stage::Verify)?;
        match self.check_key(value).await? {
            KeyCheck::Accepted => {}
            KeyCheck::Rejected => {
                return Err(KeyFailure::new(
                    Stage::Verify,
                    format!(
                        "ZenML rejects the new value ({}); it stays in the journal and the next pass checks again",
                        fingerprint(value)
                    ),
                ));
            }
        }
        // ZenML's own timestamp, so later passes can tell our rotation from someone else's. The
        // journaled one first: if the key was rotated again between a crash and this replay, the
        // key's timestamp is that other rotation's, and recording it would hide that the value
        // stored here is now the previous generation, alive only until that window ends.
        let key_now = self
            .zenml
            .get_api_key(sa_id, &entry.key_id)
            .await
            .map_err(|e| KeyFailure::new(Stage::Verify, e.to_string()))?;
        let rotated_at = entry
            .rotated_at
            .or(key_now.last_rotated)
            .unwrap_or_else(Utc::now);
        let retain = ChronoDuration::minutes(i64::from(entry.retain_minutes));
        let record = RotationRecord {
            policy: policy.name.clone(),
            service_account: entry.service_account.clone(),
            api_key: key_now.name.clone(),
            key_id: key_now.id.to_string(),
            fingerprint: fingerprint(value),
            rotated_at: Some(rotated_at),
            retain_until: Some(rotated_at + retain),
            finalized_at: None,
            retiring_key_id: None,
            retire_at: None,
        };
        self.store_value(policy, store, &entry.token, value, &record, &snapshot)
            .await?;
        self.journal.remove(&policy.name).map_err(|e| {
            KeyFailure::new(
                Stage::Store,
                format!("stored, but the journal entry stays: {e}"),
            )
        })?;
        tracing::info!(policy = %policy.name, key_id = %key_now.id, fingerprint = %record.fingerprint, store = store.kind(), path = %policy.path, "rotation stored and verified");
        Ok(Outcome::Rotated {
            key_id: key_now.id.to_string(),
            fingerprint: record.fingerprint,
        })
    }

    /// Stage, read back equal, promote, read back current equal, record. Idempotent on retry.
    pub(crate) async fn store_value(
        &self,
        policy: &KeyPolicy,
        store: &Arc<dyn SecretStore>,
        token: &str,
        value: &SecretString,
        record: &RotationRecord,
        snapshot: &StoreSnapshot,
    ) -> Result<(), KeyFailure> {
        let fail = |e: StoreError| KeyFailure::new(Stage::Store, e.to_string());
        let payload = Payload {
            zenml_url: self.zenml_url.clone(),
            api_key: SecretString::from(value.expose_secret().to_owned()),
        };
        fault::point("before_store");
        retry(|| store.stage(&policy.path, &payload, record, snapshot, token))
            .await
            .map_err(fail)?;
        let staged = retry(|| store.read_staged(&policy.path, token))
            .await
            .map_err(fail)?;
        if !staged.as_ref().is_some_and(|s| secrets_equal(s, value)) {
            return Err(KeyFailure::new(
                Stage::Store,
                "the staged value read back differs from what was written",
            ));
        }
        fault::point("after_stage");
        retry(|| store.promote(&policy.path, token, snapshot))
            .await
            .map_err(fail)?;
        let current = retry(|| store.read_current(&policy.path))
            .await
            .map_err(fail)?;
        if !current.as_ref().is_some_and(|s| secrets_equal(s, value)) {
            return Err(KeyFailure::new(
                Stage::Store,
                "the current value read back differs from what was written",
            ));
        }
        retry(|| store.set_record(&policy.path, record))
            .await
            .map_err(fail)?;
        fault::point("after_store");
        Ok(())
    }

    /// Replays a journaled value: store it if ZenML still accepts it, drop it if not.
    async fn resume(&self, policy: &KeyPolicy, obs: &Observed) -> Result<Outcome, KeyFailure> {
        let Some(entry) = obs.journal.clone() else {
            return Err(KeyFailure::new(Stage::Store, "no journal entry to resume"));
        };
        let Some(value) = entry.value.as_ref() else {
            return Err(KeyFailure::new(
                Stage::Store,
                "the journal entry holds no value",
            ));
        };
        // Where the policy stores the key now: `complete` writes to the policy's path, so the
        // pre-flight snapshot it checks-and-sets against must come from that same place, even if
        // the policy file moved the key since the crash.
        let store = self.store(&policy.store).await?;
        if (entry.store.as_str(), entry.path.as_str())
            != (policy.store.as_str(), policy.path.as_str())
        {
            tracing::warn!(policy = %policy.name, journaled_store = %entry.store, journaled_path = %entry.path,
                store = %policy.store, path = %policy.path,
                "the policy's store or path changed since the rotation started; replaying into the current one");
        }
        if let KeyCheck::Rejected = self.check_key(value).await? {
            tracing::warn!(policy = %policy.name, fingerprint = entry.fingerprint.as_deref().unwrap_or("?"),
                "the journaled value is no longer accepted by ZenML (rotated again or deactivated elsewhere); dropping it");
            self.journal
                .remove(&policy.name)
                .map_err(|e| KeyFailure::new(Stage::Store, e.to_string()))?;
            return Ok(Outcome::Waited {
                reason: "dropped a journaled value ZenML no longer accepts".into(),
            });
        }
        tracing::info!(policy = %policy.name, fingerprint = entry.fingerprint.as_deref().unwrap_or("?"), "replaying a journaled rotation into the store");
        let snapshot = store
            .preflight(&policy.path)
            .await
            .map_err(|e| KeyFailure::new(Stage::Store, e.to_string()))?;
        // A pending version with our own token is ours: staging again with it is idempotent.
        let snapshot = StoreSnapshot {
            pending: snapshot.pending.filter(|p| p != &entry.token),
            ..snapshot
        };
        if let Some(pending) = &snapshot.pending {
            store
                .discard_staged(&policy.path, pending)
                .await
                .map_err(|e| KeyFailure::new(Stage::Store, e.to_string()))?;
        }
        self.complete(policy, &store, &entry, value, snapshot).await
    }

    /// After the window: confirm the previous value is rejected, then mark the rotation final.
    async fn finalize(&self, policy: &KeyPolicy, obs: &Observed) -> Result<Outcome, KeyFailure> {
        let store = self.store(&policy.store).await?;
        let Some(mut record) = obs.snapshot.as_ref().and_then(|s| s.record.clone()) else {
            return Err(KeyFailure::new(
                Stage::Finalize,
                "the store has no rotation record",
            ));
        };
        let fail = |e: StoreError| KeyFailure::new(Stage::Finalize, e.to_string());
        // A version written on top that keeps the same key (an operator adding a field with
        // `vault kv patch`, a re-put of the same JSON) makes the "previous" version hold the
        // current value: that one is meant to work, and is no retired value to confirm dead.
        let previous = store.read_previous(&policy.path).await.map_err(fail)?;
        let m = metrics::get();
        let detail = match previous {
            Some(prev) if fingerprint(&prev) == record.fingerprint => format!(
                "the previous version holds the current value {} (a version was written on top with the same key)",
                record.fingerprint
            ),
            Some(prev) => match self.check_key(&prev).await {
                Ok(KeyCheck::Rejected) => {
                    format!("previous value {} is rejected", fingerprint(&prev))
                }
                Ok(KeyCheck::Accepted) => {
                    m.previous_key_accepted
                        .with_label_values(&[&policy.name])
                        .set(1);
                    return Err(KeyFailure::new(
                        Stage::Finalize,
                        format!(
                            "the previous value {} is still accepted after its retain window ended",
                            fingerprint(&prev)
                        ),
                    ));
                }
                Err(e) => return Err(KeyFailure::new(Stage::Finalize, e.message)),
            },
            None => "no previous value is stored".into(),
        };
        m.previous_key_accepted
            .with_label_values(&[&policy.name])
            .set(0);
        if policy.retire_previous {
            store.retire_previous(&policy.path).await.map_err(fail)?;
        }
        record.finalized_at = Some(Utc::now());
        store
            .set_record(&policy.path, &record)
            .await
            .map_err(fail)?;
        tracing::info!(policy = %policy.name, %detail, retired = policy.retire_previous, "rotation finalized");
        Ok(Outcome::Finalized { detail })
    }

    /// A key check that retries transient errors; the value is never logged.
    pub(crate) async fn check_key(&self, value: &SecretString) -> Result<KeyCheck, KeyFailure> {
        let mut delay = Duration::from_millis(300);
        for attempt in 1..=3 {
            match self.zenml.check_key(value).await {
                Ok(c) => return Ok(c),
                Err(e) if e.is_retryable() && attempt < 3 => {
                    tracing::debug!(error = %e, attempt, "key check failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(KeyFailure::new(Stage::Verify, e.to_string())),
            }
        }
        Err(KeyFailure::new(Stage::Verify, "key check failed"))
    }
}

/// Invariant 1 said no: counted as `rotations_total{result="refused"}`, reported at pre-flight.
pub(crate) fn refuse(policy: &KeyPolicy, message: String) -> KeyFailure {
    metrics::get()
        .rotations_total
        .with_label_values(&[&policy.name, "refused"])
        .inc();
    KeyFailure::new(Stage::Preflight, message)
}

fn usable(obs: &Observed) -> Result<(&ServiceAccount, &ApiKey), KeyFailure> {
    match (&obs.service_account, &obs.key) {
        (Some(sa), Some(key)) if sa.active && key.active => Ok((sa, key)),
        _ => Err(KeyFailure::new(
            Stage::Preflight,
            "the service account or API key is missing or inactive",
        )),
    }
}

/// A rotate call whose outcome is unknown: the server may have rotated (timeout, dropped
/// connection, 5xx, an unreadable answer). Only a 4xx says for sure that nothing happened.
fn outcome_unknown(e: &ZenmlError) -> bool {
    !matches!(e.status(), Some(400..=499))
}

fn parse_uuid(s: &str, stage: Stage) -> Result<Uuid, KeyFailure> {
    Uuid::parse_str(s)
        .map_err(|_| KeyFailure::new(stage, format!("malformed id {s:?} in the journal")))
}

/// Whole minutes of retain, as ZenML takes them (config validation guarantees whole minutes).
fn retain_minutes(policy: &KeyPolicy) -> u32 {
    u32::try_from(policy.retain.as_secs() / 60).unwrap_or(u32::MAX)
}

/// Retries an idempotent store operation on `Unavailable`, briefly: a pass is not the place to wait
/// out an outage (the next pass, with backoff, is).
async fn retry<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(StoreError::Unavailable { .. }) if attempt < 3 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl From<JournalError> for KeyFailure {
    fn from(e: JournalError) -> Self {
        KeyFailure::new(Stage::Rotate, e.to_string())
    }
}
