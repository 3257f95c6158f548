//! Telling people and programs what happened. Every event the engine emits (`engine/events.rs`)
//! that a `[[notify]]` table asks for becomes one [`Notice`], delivered to webhooks (`webhook.rs`)
//! and audit files (`audit.rs`) beside the pass: a delivery never delays or fails a rotation.
//! One dispatcher per loaded policy file, installed by the command (and replaced on reload);
//! deliveries still running are waited for, within a bound, before a one-shot command exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, NoticeKind, NotifySink, NotifyTarget};
use crate::metrics;

mod audit;
mod webhook;

/// One event as notifications carry it. Never a key value, password or token: names, ids,
/// fingerprints, times and the log line's sentence (itself scrubbed where it was made).
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: NoticeKind,
    pub policy: String,
    /// Filled in from the policy file when the event does not say.
    pub service_account: Option<String>,
    pub api_key: Option<String>,
    pub key_id: Option<String>,
    /// The new value's, where there is one.
    pub fingerprint: Option<String>,
    pub at: DateTime<Utc>,
    /// The same sentence as the log line.
    pub detail: String,
}

impl Notice {
    pub fn new(kind: NoticeKind, policy: &str, detail: impl Into<String>) -> Notice {
        Notice {
            kind,
            policy: policy.to_owned(),
            service_account: None,
            api_key: None,
            key_id: None,
            fingerprint: None,
            at: Utc::now(),
            detail: detail.into(),
        }
    }

    pub fn key(mut self, api_key: Option<&str>, key_id: Option<&str>) -> Notice {
        self.api_key = api_key.map(str::to_owned).or(self.api_key);
        self.key_id = key_id.map(str::to_owned).or(self.key_id);
        self
    }

    pub fn service_account(mut self, name: &str) -> Notice {
        self.service_account = Some(name.to_owned());
        self
    }

    pub fn fingerprint(mut self, fingerprint: &str) -> Notice {
        self.fingerprint = (!fingerprint.is_empty()).then(|| fingerprint.to_owned());
        self
    }

    /// The JSON body: exactly these nine fields, `null` where a fact is unknown.
    pub fn body(&self, host: &str) -> serde_json::Value {
        serde_json::json!({
            "event": self.kind.as_str(),
            "policy": self.policy,
            "service_account": self.service_account,
            "api_key": self.api_key,
            "key_id": self.key_id,
            "fingerprint": self.fingerprint,
            "at": crate::time::rfc3339(self.at),
            "host": host,
            "detail": self.detail,
        })
    }
}

enum Sink {
    Webhook(Arc<webhook::Webhook>),
    Audit(Arc<audit::AuditFile>),
}

/// The `[[notify]]` tables of one policy file, ready to deliver.
struct Dispatcher {
    sinks: Vec<(NotifySink, Sink)>,
    /// Policy name -> (service account, API key name), for events that name only the policy.
    identities: BTreeMap<String, (String, String)>,
    host: String,
}

fn current() -> &'static RwLock<Option<Arc<Dispatcher>>> {
    static CURRENT: OnceLock<RwLock<Option<Arc<Dispatcher>>>> = OnceLock::new();
    CURRENT.get_or_init(|| RwLock::new(None))
}

/// Deliveries started and not finished, per sink label, whichever dispatcher started them.
struct InFlight {
    by_sink: Mutex<BTreeMap<String, usize>>,
    done: tokio::sync::Notify,
}

fn in_flight() -> &'static InFlight {
    static IN_FLIGHT: OnceLock<InFlight> = OnceLock::new();
    IN_FLIGHT.get_or_init(|| InFlight {
        by_sink: Mutex::new(BTreeMap::new()),
        done: tokio::sync::Notify::new(),
    })
}

impl InFlight {
    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        match self.by_sink.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn total(&self) -> usize {
        self.counts().values().sum()
    }
}

/// Counts a delivery in flight until dropped (finished, failed or cut short).
struct Ticket(String);

impl Ticket {
    fn take(sink: &str) -> Ticket {
        *in_flight().counts().entry(sink.to_owned()).or_default() += 1;
        Ticket(sink.to_owned())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut counts = in_flight().counts();
            if let Some(n) = counts.get_mut(&self.0) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.0);
                }
            }
        }
        in_flight().done.notify_waiters();
    }
}

/// Sets up delivery for a loaded policy file (every command that acts, and each reload of the
/// daemon). A webhook secret that cannot be read is said now; that webhook's deliveries then
/// fail (and are counted), the others go on.
pub fn install(config: &Config) {
    let sinks = config
        .notify
        .iter()
        .map(|sink| {
            metrics::get()
                .notifications_failed_total
                .with_label_values(&[&sink.label]);
            let built = match &sink.target {
                NotifyTarget::Webhook {
                    url,
                    format,
                    secret,
                } => Sink::Webhook(Arc::new(webhook::Webhook::new(
                    &sink.label,
                    url,
                    *format,
                    secret.as_ref(),
                ))),
                NotifyTarget::Audit { path } => {
                    Sink::Audit(Arc::new(audit::AuditFile::new(&sink.label, path)))
                }
            };
            (sink.clone(), built)
        })
        .collect();
    let identities = config
        .keys
        .iter()
        .map(|k| {
            (
                k.name.clone(),
                (k.service_account.clone(), k.api_key.clone()),
            )
        })
        .collect();
    let dispatcher = Dispatcher {
        sinks,
        identities,
        host: crate::host::name(),
    };
    let mut slot = match current().write() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    *slot = Some(Arc::new(dispatcher));
}

/// Offers one event to every sink that wants it. Audit files are written at once (in event
/// order); webhooks are posted by background tasks. Outside a runtime (unit tests), or before
/// `install`, nothing is delivered.
pub fn publish(mut notice: Notice) {
    let dispatcher = match current().read() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let Some(d) = dispatcher else {
        return;
    };
    if let Some((sa, key)) = d.identities.get(&notice.policy) {
        notice.service_account.get_or_insert_with(|| sa.clone());
        notice.api_key.get_or_insert_with(|| key.clone());
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let body = notice.body(&d.host);
    for (sink, target) in d.sinks.iter().filter(|(s, _)| s.wants(notice.kind)) {
        let ticket = Ticket::take(&sink.label);
        match target {
            Sink::Audit(file) => {
                if let Err(e) = file.append(&body) {
                    let (file, body) = (file.clone(), body.clone());
                    runtime.spawn(async move {
                        file.retry(&body, e).await;
                        drop(ticket);
                    });
                }
            }
            Sink::Webhook(hook) => {
                let (hook, body, summary) = (hook.clone(), body.clone(), summary(&notice));
                runtime.spawn(async move {
                    hook.deliver(&body, &summary).await;
                    drop(ticket);
                });
            }
        }
    }
}

/// One line for people (Slack's `text`).
fn summary(n: &Notice) -> String {
    let mut who = format!("policy {}", n.policy);
    if let Some(sa) = &n.service_account {
        who.push_str(&format!(", service account {sa}"));
    }
    if let Some(key) = &n.api_key {
        who.push_str(&format!(", key {key}"));
    }
    format!("zenml-rotator {}: {who}: {}", n.kind.as_str(), n.detail)
}

/// Waits for the deliveries still running, at most `limit`; those cut short are logged and
/// counted as failed (they retry no more: the process is about to exit).
pub async fn drain(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let done = in_flight().done.notified();
        if in_flight().total() == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            for (sink, left) in in_flight().counts().iter() {
                metrics::get()
                    .notifications_failed_total
                    .with_label_values(&[sink])
                    .inc_by(*left as u64);
                tracing::error!(sink = %sink, undelivered = left, waited = ?limit,
                    "notifications still undelivered at exit; given up");
            }
            return;
        }
    }
}

/// What a one-shot command waits at most for deliveries before it exits.
pub const EXIT_WAIT: Duration = Duration::from_secs(30);
