//! One writer per key, everywhere (invariant 7). Before a rotator acts on a key it takes the key's
//! claim (`store::claim`): atomically, in the store, so rotators on other hosts, other state
//! directories and an operator's `rotate` all see it. A holder renews its claim once a third of
//! its life has passed and never acts past two thirds without a successful renewal, so it stops
//! before anyone else may take over (others wait `max_clock_skew` past the expiry on top). A
//! renewal is itself a check-and-set: when it succeeds, nobody took over in between.
//!
//! Between ZenML's answer and the store write the claim says where the new value waits, so any
//! rotator can finish the rotation once the claim expired; a holder that may have left ZenML
//! rotated without keeping the answer leaves the claim to expire instead of releasing it, and the
//! next pass sees the lost answer. File stores lock a file beside the value instead (one host).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::CoordinationSettings;
use crate::secret::{ExposeSecret, SecretString};
use crate::store::{
    Claim, ClaimPhase, Coordination, SecretStore, StoreError, StoreErrorKind, StoreSnapshot,
    StoredClaim,
};
use crate::zenml::ApiKey;

/// This process's name in claims: `<host>/<pid>/<random>`, so two processes never share one.
pub fn holder_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{}/{}/{}",
            crate::host::name(),
            std::process::id(),
            &random[..8]
        )
    })
}

/// Whether `holder` names a process of this host that no longer runs: this process's own pid
/// under another name (an earlier life of a restarted process), or a pid that does not exist.
/// A pid reused since by another process reads as alive: the claim then simply expires.
fn holder_gone(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, '/');
    let (Some(_random), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != crate::host::name() || holder == holder_id() {
        return false;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        return true;
    }
    // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// How a process plays by the claims of a policy file's `[coordination]`.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub ttl: Duration,
    pub skew: Duration,
}

impl ClaimRules {
    pub fn new(settings: &CoordinationSettings) -> ClaimRules {
        ClaimRules {
            ttl: settings.claim_ttl,
            skew: settings.max_clock_skew,
        }
    }

    /// When others may take the claim over: its expiry, plus the clock skew allowed; at once
    /// when its holder was a process on this host that is gone (crashed, killed, restarted).
    pub fn stale_at(&self, claim: &Claim) -> DateTime<Utc> {
        if holder_gone(&claim.holder) {
            return claim.since.min(Utc::now());
        }
        let skew = chrono::Duration::from_std(self.skew).unwrap_or(chrono::Duration::zero());
        claim.expires_at + skew
    }
}

/// Why a claim could not be taken or kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    #[error("claimed by {holder}{}: another rotator is working on this key", until.map(|t| format!(" until {}", crate::time::rfc3339(t))).unwrap_or_default())]
    Held {
        holder: String,
        until: Option<DateTime<Utc>>,
    },
    #[error("the claim on this key was lost ({why}); another rotator finishes what this one began")]
    Lost { why: String },
    #[error("{0}")]
    Store(Arc<StoreError>),
}

/// A claim this process holds on one key, until released (or dropped: then it expires).
pub struct ClaimHandle {
    store: Arc<dyn SecretStore>,
    path: String,
    claim: Claim,
    /// The claim's version in the store; `None` for a lock file.
    version: Option<String>,
    lock: Option<std::fs::File>,
    ttl: Duration,
    renew_at: Instant,
    stop_at: Instant,
    /// Set while ZenML may have issued a value not yet kept anywhere: then the claim is left to
    /// expire rather than released, so the next pass looks for a lost answer.
    in_flight: bool,
    /// Taken fresh (not over from a holder that is gone) in this step.
    fresh: bool,
    /// Taken over with the rotation its holder left (an intent, or a kept value), and no
    /// rotation of this process begun under it since: what it says is still that rotation's.
    inherited: bool,
    /// The claim says something new that the store does not have yet.
    dirty: bool,
    /// A write found another rotator's claim: this handle must not act any more.
    lost: bool,
    /// The value the claim kept is stored (or dropped as dead): nothing in flight is left.
    settled: bool,
    /// What the last write under this claim left known of the key and its store: after a
    /// rotation, the key as ZenML gave it and the store as the read-back showed it
    /// (`settle_rotated`); after a finalize, the key as looked at and the store as its record
    /// write showed it (`note_known`).
    known: Option<(ApiKey, Option<StoreSnapshot>)>,
}

/// What a step knows of its key afterwards (its release, or the claim it carries on), so the
/// next look does not read it again. Empty when the release wrote nothing (see
/// `ClaimHandle::release`).
#[derive(Default)]
pub struct After {
    /// The claim exactly as the release wrote it.
    pub claim: Option<StoredClaim>,
    /// The key as ZenML gave it after the rotation the step stored.
    pub key: Option<ApiKey>,
    /// The store as that rotation's read-back showed it, where one read showed it whole.
    pub snapshot: Option<StoreSnapshot>,
}

/// What a fresh claim says about the key it guards.
pub struct Draft {
    pub policy: String,
    pub service_account_id: String,
    pub key_id: String,
    pub previous_last_rotated: Option<DateTime<Utc>>,
    pub retain_minutes: u32,
}

impl ClaimHandle {
    /// Takes the claim on the key at `path`. `seen` is the claim observed for it; an unreleased
    /// one whose holder is gone is taken over with the rotation it carries (token, value).
    pub async fn acquire(
        rules: &ClaimRules,
        store: Arc<dyn SecretStore>,
        path: &str,
        seen: Option<&StoredClaim>,
        draft: Draft,
    ) -> Result<ClaimHandle, ClaimError> {
        let now = Utc::now();
        let lock = match store.coordination() {
            Coordination::LockFile(dir) => Some(lock_file(&dir, path)?),
            Coordination::Shared => None,
        };
        let fresh = seen.is_none_or(|s| s.claim.phase == ClaimPhase::Released);
        let claim = match seen.map(|s| &s.claim) {
            Some(c) if c.phase != ClaimPhase::Released => {
                if c.holder != holder_id() && now < rules.stale_at(c) {
                    return Err(ClaimError::Held {
                        holder: c.holder.clone(),
                        until: Some(c.expires_at),
                    });
                }
                // Taken over with the rotation it guards, and when that began.
                Claim {
                    holder: holder_id().to_owned(),
                    ..c.clone()
                }
            }
            _ => Claim {
                holder: holder_id().to_owned(),
                policy: draft.policy,
                expires_at: now,
                since: now,
                phase: ClaimPhase::Claimed,
                token: uuid::Uuid::new_v4().to_string(),
                previous_last_rotated: draft.previous_last_rotated,
                service_account_id: draft.service_account_id,
                key_id: draft.key_id,
                rotated_at: None,
                retain_minutes: draft.retain_minutes,
                fingerprint: None,
                value: None,
            },
        };
        let mut handle = ClaimHandle {
            store,
            path: path.to_owned(),
            claim,
            version: seen.map(|s| s.version.clone()),
            lock,
            ttl: rules.ttl,
            renew_at: Instant::now(),
            stop_at: Instant::now(),
            in_flight: false,
            fresh,
            inherited: !fresh,
            dirty: false,
            lost: false,
            settled: false,
            known: None,
        };
        if handle.lock.is_none() {
            if let Err(e) = handle.write().await {
                return Err(match e {
                    // Another rotator wrote the claim between our read and our write: say who.
                    ClaimError::Lost { .. } => match handle.store.read_claim(path).await {
                        Ok(Some(now)) => ClaimError::Held {
                            holder: now.claim.holder,
                            until: Some(now.claim.expires_at),
                        },
                        _ => ClaimError::Held {
                            holder: "another rotator".into(),
                            until: None,
                        },
                    },
                    other => other,
                });
            }
        } else {
            handle.renew_at = Instant::now() + rules.ttl;
            handle.stop_at = handle.renew_at;
        }
        Ok(handle)
    }

    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The claim's version in the store (`None` for a lock file).
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The claim exactly as the store holds it: this handle wrote it last and has changed nothing
    /// since, so nobody else can have written it before it expires. `None` for a lock file, or
    /// once it says something the store does not have yet.
    pub fn as_stored(&self) -> Option<StoredClaim> {
        let version = self.version.as_ref()?;
        (!self.dirty && !self.lost && self.lock.is_none()).then(|| StoredClaim {
            claim: self.claim.clone(),
            version: version.clone(),
        })
    }

    /// The rotation's id (AWS ClientRequestToken).
    pub fn token(&self) -> &str {
        &self.claim.token
    }

    /// Writes the claim with a fresh expiry, checked-and-set against the version it holds.
    async fn write(&mut self) -> Result<(), ClaimError> {
        let sent = Instant::now();
        self.claim.expires_at =
            Utc::now() + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::zero());
        match self
            .store
            .write_claim(&self.path, &self.claim, self.version.as_deref())
            .await
        {
            Ok(version) => {
                self.version = Some(version);
                // Timed from before the request: the claim may have been written at once.
                self.renew_at = sent + self.ttl / 3;
                self.stop_at = sent + self.ttl * 2 / 3;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                self.lost = true;
                Err(ClaimError::Lost {
                    why: "another rotator wrote the claim".into(),
                })
            }
            Err(e) => Err(ClaimError::Store(Arc::new(e))),
        }
    }

    /// A new rotation of the key under this claim: the claim records the key's `last_rotated`
    /// before it (so a lost answer shows) and, unless the claim was taken fresh for it, a new
    /// token. Written by the next `ensure`.
    pub fn begin_rotation(
        &mut self,
        previous_last_rotated: Option<DateTime<Utc>>,
        retain_minutes: u32,
    ) {
        if !self.fresh {
            self.claim.token = uuid::Uuid::new_v4().to_string();
            self.dirty = true;
        }
        if self.claim.previous_last_rotated != previous_last_rotated
            || self.claim.retain_minutes != retain_minutes
            || self.claim.phase != ClaimPhase::Claimed
        {
            self.claim.previous_last_rotated = previous_last_rotated;
            self.claim.retain_minutes = retain_minutes;
            self.claim.phase = ClaimPhase::Claimed;
            self.claim.value = None;
            self.claim.fingerprint = None;
            self.claim.rotated_at = None;
            self.dirty = true;
        }
        self.fresh = false;
        self.inherited = false;
        // Whatever an earlier step under this claim stored, this rotation's value is not yet.
        self.settled = false;
    }

    /// Whether the next step of the key's pass may go on under this claim instead of releasing
    /// it and taking it again: it is this process's as the store holds it, and it carries no
    /// rotation (none in flight, no value kept, none taken over from a gone holder). A step that
    /// did any of that releases, and the next takes the claim anew, as it always did.
    pub fn carries_on(&self) -> bool {
        !self.lost
            && !self.dirty
            && !self.in_flight
            && !self.inherited
            && self.claim.phase == ClaimPhase::Claimed
    }

    /// Whether the look the claim was taken on still stands, so no second look is needed under
    /// it: the claim was taken fresh (over a released claim, or none) by a check-and-set against
    /// exactly the claim that look read, and the look reads the claim before the store and the
    /// key. Any rotator that changed the key or its store since wrote the claim first, and the
    /// take would have failed. Not for a lock file (no check-and-set), nor a claim taken over
    /// from a holder that is gone (its rotation is looked at again under the claim).
    pub fn look_stands(&self) -> bool {
        self.lock.is_none() && self.fresh && !self.lost && !self.dirty && self.version.is_some()
    }

    /// Whether the claim still carries the rotation a gone holder left in it (see `inherited`).
    pub fn inherited(&self) -> bool {
        self.inherited
    }

    /// Before each step that changes ZenML or the store: writes what the claim says anew,
    /// renews it once a third of its life has passed, and fails when it can no longer be proven
    /// this process's.
    pub async fn ensure(&mut self) -> Result<(), ClaimError> {
        if self.lost {
            return Err(ClaimError::Lost {
                why: "another rotator wrote the claim".into(),
            });
        }
        if self.lock.is_some() || (!self.dirty && Instant::now() < self.renew_at) {
            return Ok(());
        }
        if self.dirty {
            self.dirty = false;
            return self.write().await;
        }
        match self.write().await {
            Ok(()) => Ok(()),
            // The store did not answer: the claim still holds until `stop_at`.
            Err(ClaimError::Store(_)) if Instant::now() < self.stop_at => Ok(()),
            Err(ClaimError::Store(e)) => Err(ClaimError::Lost {
                why: format!("it could not be renewed in time: {e}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// ZenML is about to issue a new value: until it is kept, the claim is not released.
    pub fn mark_in_flight(&mut self) {
        self.in_flight = true;
    }

    /// ZenML refused (nothing was issued), or the value is kept: the claim may be released.
    pub fn clear_in_flight(&mut self) {
        self.in_flight = false;
    }

    /// The kept value is stored (or found dead and dropped): releasing the claim loses nothing.
    pub fn settle(&mut self) {
        self.in_flight = false;
        self.settled = true;
    }

    /// `settle`, for a rotation whose value is stored: `key` is the key as ZenML gave it after
    /// the rotation and `stored` the store as its read-back showed it, which `release` hands on.
    pub fn settle_rotated(&mut self, key: ApiKey, stored: Option<StoreSnapshot>) {
        self.settle();
        self.known = Some((key, stored));
    }

    /// After a write under this claim that left the key as it was (a finalize): `key` as it was
    /// looked at, and the store as the write showed it, for the look of the next step.
    pub fn note_known(&mut self, key: ApiKey, stored: Option<StoreSnapshot>) {
        self.known = Some((key, stored));
    }

    /// What the claim's steps left known, for a next step that goes on under it.
    pub fn take_known(&mut self) -> After {
        let (key, snapshot) = self.known.take().unzip();
        After {
            claim: None,
            key,
            snapshot: snapshot.flatten(),
        }
    }

    /// Keeps the new value in the claim (phase `Rotated`), where the store keeps it there, or
    /// records that it is staged under the token.
    pub async fn keep(
        &mut self,
        value: Option<&SecretString>,
        rotated_at: Option<DateTime<Utc>>,
        fingerprint: &str,
    ) -> Result<(), ClaimError> {
        self.claim.phase = ClaimPhase::Rotated;
        self.claim.rotated_at = rotated_at;
        self.claim.fingerprint = Some(fingerprint.to_owned());
        self.claim.value = value.map(|v| SecretString::from(v.expose_secret().to_owned()));
        if self.lock.is_some() {
            return Ok(());
        }
        self.write().await
    }

    /// Gives the claim up: anyone may claim the key now. A claim whose rotation may have left a
    /// value nobody kept is not released: it expires, and the next pass sees the lost answer; nor
    /// is one that keeps a value not stored yet: the next pass (of any rotator) stores it.
    /// Returns what the release knows of the key now (nothing when it wrote nothing).
    pub async fn release(mut self) -> After {
        if self.lost {
            return After::default();
        }
        if self.in_flight {
            tracing::warn!(policy = %self.claim.policy, holder = %self.claim.holder,
                "leaving the claim to expire: ZenML may have issued a value that was not kept");
            return After::default();
        }
        if self.claim.phase == ClaimPhase::Rotated && !self.settled {
            tracing::warn!(policy = %self.claim.policy, holder = %self.claim.holder,
                "keeping the claim: it holds a new value that is not stored yet; the next pass stores it");
            return After::default();
        }
        let known = self.take_known();
        if self.lock.is_some() {
            return known;
        }
        self.claim.phase = ClaimPhase::Released;
        self.claim.value = None;
        self.claim.rotated_at = None;
        self.claim.fingerprint = None;
        match self.write().await {
            Ok(()) => {
                // The whole claim was written: the store holds exactly what the handle says.
                self.dirty = false;
                After {
                    claim: self.as_stored(),
                    ..known
                }
            }
            Err(e) => {
                tracing::warn!(policy = %self.claim.policy, error = %e,
                    "could not release the claim; it expires by itself");
                After::default()
            }
        }
    }
}

/// Locks `<dir>/.<path>.lock` for the life of the handle; says who holds it when taken.
fn lock_file(dir: &Path, path: &str) -> Result<std::fs::File, ClaimError> {
    let file = dir.join(format!(".{path}.lock"));
    let store_error = |e: std::io::Error| {
        ClaimError::Store(Arc::new(StoreError::new(
            StoreErrorKind::Unavailable,
            "file",
            "lock",
            file.display().to_string(),
            e.to_string(),
        )))
    };
    // Nothing is written into a directory others may enter (pre-flight says why); a missing one
    // is created as the file store creates it (0700).
    crate::durable::check_private_dir(dir, "file store directory").map_err(|e| {
        ClaimError::Store(Arc::new(StoreError::new(
            StoreErrorKind::NotWritable,
            "file",
            "lock",
            file.display().to_string(),
            e.to_string(),
        )))
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(store_error)?;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&file)
        .map_err(store_error)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ClaimError::Held {
            holder: "another process on this host".to_owned(),
            until: None,
        });
    }
    Ok(handle)
}
