//! The `[[key]]` policies: `[defaults]` and built-in defaults applied to each key, and the rules
//! that involve more than one setting (every vs retain, schedule gaps, windows, jitter), each
//! reported once, at the most specific level that set one of its inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::toolkit::Validator;
use super::{DEFAULT_EVERY, DEFAULT_RETAIN, GAP_HORIZON, IMPLICIT_STORE, fmt_duration};
use crate::config::error::FieldPath;
use crate::config::raw::{RawDefaults, RawKey, RawWindow};
use crate::config::{Cadence, KeyPolicy, MaintenanceWindow, StoreSettings, Strategy};
use crate::cron::CronSpec;

/// Where a setting's value came from; decides where a problem with a combination is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Builtin,
    Defaults,
    Key,
}

/// A setting after inheritance. `value` is None when the file has it but it is invalid (already
/// reported), so checks that depend on it are skipped rather than piling up.
#[derive(Debug, Clone)]
struct Setting<T> {
    value: Option<T>,
    level: Level,
    at: FieldPath,
}

impl<T> Setting<T> {
    fn origin(&self) -> (Level, &FieldPath) {
        (self.level, &self.at)
    }
}

#[derive(Debug, Clone)]
enum RawCadence {
    Every(Duration),
    /// A validated expression; the time zone is applied per key.
    Schedule(String),
}

#[derive(Debug, Clone)]
struct RawWindowSpec {
    expr: String,
    duration: Duration,
}

/// The inheritable settings of one level (`[defaults]` or one `[[key]]`), each checked on its own.
#[derive(Debug, Default)]
pub(super) struct Layer {
    every: Option<Setting<Duration>>,
    schedule: Option<Setting<String>>,
    /// Both `every` and `schedule` at this level (an error): the cadence is unusable.
    cadence_conflict: bool,
    retain: Option<Setting<Duration>>,
    strategy: Option<Setting<Strategy>>,
    store: Option<Setting<String>>,
    jitter: Option<Setting<Duration>>,
    window: Option<Setting<RawWindowSpec>>,
    timezone: Option<Setting<Tz>>,
    retire_previous: Option<Setting<bool>>,
    delete_after: Option<Setting<Duration>>,
}

/// The inheritable fields, borrowed from either `[defaults]` or a `[[key]]`.
pub(super) struct Inheritable<'r> {
    every: Option<&'r str>,
    retain: Option<&'r str>,
    strategy: Option<&'r str>,
    store: Option<&'r str>,
    jitter: Option<&'r str>,
    schedule: Option<&'r str>,
    window: Option<&'r RawWindow>,
    timezone: Option<&'r str>,
    retire_previous: Option<bool>,
    delete_after: Option<&'r str>,
}

/// `[defaults]` and `[[key]]` spell the inheritable settings alike; one conversion serves both.
macro_rules! inheritable_from {
    ($raw:ty) => {
        impl<'r> From<&'r $raw> for Inheritable<'r> {
            fn from(r: &'r $raw) -> Self {
                Inheritable {
                    every: r.every.as_deref(),
                    retain: r.retain.as_deref(),
                    strategy: r.strategy.as_deref(),
                    store: r.store.as_deref(),
                    jitter: r.jitter.as_deref(),
                    schedule: r.schedule.as_deref(),
                    window: r.window.as_ref(),
                    timezone: r.timezone.as_deref(),
                    retire_previous: r.retire_previous,
                    delete_after: r.delete_after.as_deref(),
                }
            }
        }
    };
}

inheritable_from!(RawDefaults);
inheritable_from!(RawKey);

/// A key's settings with `[defaults]` and the built-in defaults applied.
struct Resolved {
    strategy: Setting<Strategy>,
    retain: Setting<Duration>,
    cadence: Setting<RawCadence>,
    timezone: Setting<Tz>,
    jitter: Option<Setting<Duration>>,
    window: Option<Setting<RawWindowSpec>>,
    store: Option<Setting<String>>,
    retire_previous: Option<Setting<bool>>,
    delete_after: Option<Setting<Duration>>,
}

/// What every key is checked against.
pub(super) struct KeyScope<'s> {
    pub defaults: &'s Layer,
    pub stores: &'s BTreeMap<String, StoreSettings>,
    /// Store names as written, valid or not: a key naming a broken store gets that store's
    /// error, not a second "no store named" one.
    pub store_names: &'s BTreeSet<&'s str>,
    /// The file defines no store: keys without one go to the built-in file store.
    pub implicit_store: bool,
}

/// The first key to use each thing that must be unique, for "already used by key[0]" messages.
#[derive(Default)]
struct Seen {
    names: BTreeMap<String, usize>,
    targets: BTreeMap<(String, String), usize>,
    destinations: BTreeMap<(String, String), usize>,
}

/// Where a combination check reports, if it runs in this pass: a combination made entirely of
/// inherited values was already checked (and reported once) in the `[defaults]` pass.
fn report_at<'s>(pass: Level, involved: &[(Level, &'s FieldPath)]) -> Option<&'s FieldPath> {
    let top = involved.iter().map(|(l, _)| *l).max()?;
    if top != pass {
        return None;
    }
    involved.iter().find(|(l, _)| *l == pass).map(|(_, p)| *p)
}

/// A gap between fire times shorter than `threshold`, within the next year. Cron fires on whole
/// minutes, so a threshold of a minute or less can never be undercut and the year-long walk
/// (half a million steps for "* * * * *") is skipped.
fn shortest_gap_below(
    spec: &CronSpec,
    threshold: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if threshold <= Duration::from_secs(60) {
        return None;
    }
    spec.gap_shorter_than(threshold, now, GAP_HORIZON)
        .map(|(_, gap)| gap)
}

fn make<T>(value: Option<T>, (level, at): (Level, FieldPath)) -> Setting<T> {
    Setting { value, level, at }
}

fn pick<T: Clone>(key: &Option<Setting<T>>, defaults: &Option<Setting<T>>) -> Option<Setting<T>> {
    key.clone().or_else(|| defaults.clone())
}

/// When a key is due and may be rotated: its cadence and maintenance window in its time zone.
/// `None` for a value that is invalid (already reported); the window's inner `None` is no window.
fn timing(resolved: &Resolved) -> (Option<Cadence>, Option<Option<MaintenanceWindow>>) {
    let tz = resolved.timezone.value;
    let cadence = match (&resolved.cadence.value, tz) {
        (Some(RawCadence::Every(d)), _) => Some(Cadence::Every(*d)),
        (Some(RawCadence::Schedule(expr)), Some(tz)) => {
            CronSpec::parse(expr, tz).ok().map(Cadence::Schedule)
        }
        _ => None,
    };
    let window = match (&resolved.window, tz) {
        (None, _) => Some(None),
        (Some(w), Some(tz)) => w.value.as_ref().and_then(|spec| {
            let opens = CronSpec::parse(&spec.expr, tz).ok()?;
            Some(Some(MaintenanceWindow {
                opens,
                duration: spec.duration,
            }))
        }),
        (Some(_), None) => None,
    };
    (cadence, window)
}

impl Validator<'_> {
    /// One level's inheritable settings, each checked on its own.
    pub(super) fn layer(
        &mut self,
        raw: Inheritable<'_>,
        at: &FieldPath,
        level: Level,
        stores: &BTreeSet<&str>,
    ) -> Layer {
        let setting = |name: &str| (level, at.key(name));
        let mut layer = Layer::default();
        if raw.every.is_some() {
            let v = self.positive_duration(raw.every, &at.key("every"));
            layer.every = Some(make(v, setting("every")));
        }
        if raw.schedule.is_some() {
            let v = self.cron_expr(raw.schedule, &at.key("schedule"));
            layer.schedule = Some(make(v, setting("schedule")));
        }
        if raw.every.is_some() && raw.schedule.is_some() {
            self.err_key(
                &at.key("schedule"),
                "set either `every` or `schedule`, not both: a schedule replaces `every`",
            );
            layer.cadence_conflict = true;
        }
        if raw.retain.is_some() {
            let v = self.positive_duration(raw.retain, &at.key("retain"));
            layer.retain = Some(make(v, setting("retain")));
        }
        if let Some(s) = raw.strategy {
            let v = Strategy::from_name(s);
            if v.is_none() {
                let names: Vec<String> = Strategy::ALL
                    .iter()
                    .map(|s| format!("{:?}", s.as_str()))
                    .collect();
                self.err(
                    &at.key("strategy"),
                    format!("unknown strategy {s:?}: use {}", names.join(" or ")),
                );
            }
            layer.strategy = Some(make(v, setting("strategy")));
        }
        if raw.store.is_some() {
            let store_at = at.key("store");
            let v = self.text(raw.store, &store_at).and_then(|name| {
                if stores.contains(name.as_str()) {
                    Some(name)
                } else {
                    let known: Vec<String> = stores.iter().map(|s| format!("{s:?}")).collect();
                    self.err(
                        &store_at,
                        format!("no store named {name:?} (defined: {}); add a [stores.{name}] table or fix the name", known.join(", ")),
                    );
                    None
                }
            });
            layer.store = Some(make(v, setting("store")));
        }
        if raw.jitter.is_some() {
            let v = self.duration(raw.jitter, &at.key("jitter"));
            layer.jitter = Some(make(v, setting("jitter")));
        }
        if let Some(w) = raw.window {
            let wat = at.key("window");
            let expr = if w.schedule.is_none() {
                self.err(
                    &wat,
                    "missing `schedule`: when the window opens, e.g. \"0 2 * * *\"",
                );
                None
            } else {
                self.cron_expr(w.schedule.as_deref(), &wat.key("schedule"))
            };
            let duration = if w.duration.is_none() {
                self.err(
                    &wat,
                    "missing `duration`: how long the window stays open, e.g. \"2h\"",
                );
                None
            } else {
                self.positive_duration(w.duration.as_deref(), &wat.key("duration"))
            };
            let v = match (expr, duration) {
                (Some(expr), Some(duration)) => Some(RawWindowSpec { expr, duration }),
                _ => None,
            };
            layer.window = Some(make(v, setting("window")));
        }
        if raw.timezone.is_some() {
            let v = self.timezone(raw.timezone, &at.key("timezone"));
            layer.timezone = Some(make(v, setting("timezone")));
        }
        if let Some(b) = raw.retire_previous {
            layer.retire_previous = Some(make(Some(b), setting("retire_previous")));
        }
        if raw.delete_after.is_some() {
            let v = self.duration(raw.delete_after, &at.key("delete_after"));
            layer.delete_after = Some(make(v, setting("delete_after")));
        }
        layer
    }

    /// The combinations made of inherited values only, checked once and reported in [defaults]
    /// rather than once per key.
    pub(super) fn check_defaults(&mut self, defaults: &Layer) {
        let inherited = self.resolve(
            &Layer::default(),
            defaults,
            &FieldPath::root().key("defaults"),
        );
        self.check_combinations(&inherited, Level::Defaults);
    }

    /// `key` over `defaults` over the built-in defaults. The most specific level that sets a
    /// cadence (`every` or `schedule`) decides it.
    fn resolve(&self, key: &Layer, defaults: &Layer, defaults_at: &FieldPath) -> Resolved {
        let builtin = |name: &str| defaults_at.key(name);
        let cadence_of = |l: &Layer| -> Option<Setting<RawCadence>> {
            if l.cadence_conflict {
                let s = l.schedule.as_ref()?;
                return Some(Setting {
                    value: None,
                    level: s.level,
                    at: s.at.clone(),
                });
            }
            if let Some(s) = &l.schedule {
                return Some(Setting {
                    value: s.value.clone().map(RawCadence::Schedule),
                    level: s.level,
                    at: s.at.clone(),
                });
            }
            l.every.as_ref().map(|e| Setting {
                value: e.value.map(RawCadence::Every),
                level: e.level,
                at: e.at.clone(),
            })
        };
        Resolved {
            strategy: pick(&key.strategy, &defaults.strategy).unwrap_or(Setting {
                value: Some(Strategy::Rotate),
                level: Level::Builtin,
                at: builtin("strategy"),
            }),
            retain: pick(&key.retain, &defaults.retain).unwrap_or(Setting {
                value: Some(DEFAULT_RETAIN),
                level: Level::Builtin,
                at: builtin("retain"),
            }),
            cadence: cadence_of(key)
                .or_else(|| cadence_of(defaults))
                .unwrap_or(Setting {
                    value: Some(RawCadence::Every(DEFAULT_EVERY)),
                    level: Level::Builtin,
                    at: builtin("every"),
                }),
            timezone: pick(&key.timezone, &defaults.timezone).unwrap_or(Setting {
                value: Some(Tz::UTC),
                level: Level::Builtin,
                at: builtin("timezone"),
            }),
            jitter: pick(&key.jitter, &defaults.jitter),
            window: pick(&key.window, &defaults.window),
            store: pick(&key.store, &defaults.store),
            retire_previous: pick(&key.retire_previous, &defaults.retire_previous),
            delete_after: pick(&key.delete_after, &defaults.delete_after),
        }
    }

    /// The rules that involve more than one setting. Each runs in the pass of the most specific
    /// level involved, so an error made in `[defaults]` is reported once, there.
    fn check_combinations(&mut self, r: &Resolved, pass: Level) {
        let now = self.ctx.now;
        let (Some(retain), Some(strategy)) = (r.retain.value, r.strategy.value) else {
            return;
        };
        // ZenML keeps the previous value for whole minutes only.
        if strategy.retain_in_whole_minutes() && retain.as_nanos() % 60_000_000_000 != 0 {
            if let Some(at) = report_at(pass, &[r.retain.origin(), r.strategy.origin()]) {
                self.err(
                    at,
                    format!(
                        "retain ({}) must be a whole number of minutes under strategy \"rotate\" (ZenML's unit), e.g. \"2m\"",
                        fmt_duration(retain)
                    ),
                );
            }
        }
        let tz = r.timezone.value;
        match (&r.cadence.value, tz) {
            (Some(RawCadence::Every(every)), _) => {
                if *every <= retain {
                    if let Some(at) = report_at(pass, &[r.cadence.origin(), r.retain.origin()]) {
                        self.err(
                            at,
                            format!(
                                "every ({}) must be longer than retain ({}): the next rotation would fall inside the previous value's retain window",
                                fmt_duration(*every),
                                fmt_duration(retain)
                            ),
                        );
                    }
                }
                if let Some(j) = &r.jitter {
                    if let Some(jitter) = j.value {
                        if jitter >= *every {
                            if let Some(at) = report_at(pass, &[j.origin(), r.cadence.origin()]) {
                                self.err(
                                    at,
                                    format!(
                                        "jitter ({}) must be shorter than every ({}): an offset this large silently changes the cadence",
                                        fmt_duration(jitter),
                                        fmt_duration(*every)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            (Some(RawCadence::Schedule(expr)), Some(tz)) => {
                let Ok(spec) = CronSpec::parse(expr, tz) else {
                    return;
                };
                let involved = [r.cadence.origin(), r.timezone.origin(), r.retain.origin()];
                if let Some(at) = report_at(pass, &involved) {
                    if let Some(gap) = shortest_gap_below(&spec, retain, now) {
                        self.err(
                            at,
                            format!(
                                "schedule fires as little as {} apart, less than retain ({}): a rotation would fall inside the previous value's retain window",
                                fmt_duration(gap),
                                fmt_duration(retain)
                            ),
                        );
                    }
                }
                if let Some(j) = &r.jitter {
                    if let Some(jitter) = j.value.filter(|j| !j.is_zero()) {
                        let involved = [j.origin(), r.cadence.origin(), r.timezone.origin()];
                        if let Some(at) = report_at(pass, &involved) {
                            let threshold = jitter + Duration::from_nanos(1);
                            if let Some(gap) = shortest_gap_below(&spec, threshold, now) {
                                self.err(
                                    at,
                                    format!(
                                        "jitter ({}) must be shorter than the time between scheduled rotations (as little as {})",
                                        fmt_duration(jitter),
                                        fmt_duration(gap)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let (Some(w), Some(tz)) = (&r.window, tz) {
            if let Some(spec) = &w.value {
                if let Ok(opens) = CronSpec::parse(&spec.expr, tz) {
                    if let Some(at) = report_at(pass, &[w.origin(), r.timezone.origin()]) {
                        let at = if *at == w.at {
                            at.key("duration")
                        } else {
                            at.clone()
                        };
                        let threshold = spec.duration + Duration::from_nanos(1);
                        if let Some(gap) = shortest_gap_below(&opens, threshold, now) {
                            self.err(
                                &at,
                                format!(
                                    "window duration ({}) must be shorter than the time between window openings (as little as {}), so each window closes before the next opens; to rotate at any time, remove `window`",
                                    fmt_duration(spec.duration),
                                    fmt_duration(gap)
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every `[[key]]`, in file order; a key with any problem is left out (and reported).
    pub(super) fn keys(&mut self, raw: &[RawKey], scope: &KeyScope<'_>) -> Vec<KeyPolicy> {
        let mut seen = Seen::default();
        raw.iter()
            .enumerate()
            .filter_map(|(i, k)| self.key(i, k, scope, &mut seen))
            .collect()
    }

    fn key(
        &mut self,
        i: usize,
        k: &RawKey,
        scope: &KeyScope<'_>,
        seen: &mut Seen,
    ) -> Option<KeyPolicy> {
        let at = FieldPath::root().key("key").index(i);
        let (name, service_account, api_key) = self.identity(i, k, &at, seen);
        let layer = self.layer(Inheritable::from(k), &at, Level::Key, scope.store_names);
        let resolved = self.resolve(&layer, scope.defaults, &FieldPath::root().key("defaults"));
        self.check_combinations(&resolved, Level::Key);
        let strategy = resolved.strategy.value;
        self.check_strategy_only_settings(&layer, strategy);
        let (store, path) = self.destination(i, k, &at, &resolved, scope, seen);
        let (cadence, window) = timing(&resolved);
        let jitter = match &resolved.jitter {
            None => Some(None),
            Some(j) => j.value.map(|d| (!d.is_zero()).then_some(d)),
        };
        let hooks = self.key_hooks(k, &at);
        let strategy = strategy?;
        let retire_previous = match &resolved.retire_previous {
            None => Some(false),
            Some(r) => r.value.map(|b| b && strategy.keeps_previous_value()),
        };
        let delete_after = match &resolved.delete_after {
            None => Some(None),
            Some(d) => d
                .value
                .map(|d| strategy.deactivates_old_keys().then_some(d)),
        };
        Some(KeyPolicy {
            name: name?,
            service_account: service_account?,
            api_key: api_key?,
            store: store?,
            path: path?,
            strategy,
            cadence: cadence?,
            window: window?,
            jitter: jitter?,
            retain: resolved.retain.value?,
            retire_previous: retire_previous?,
            delete_after: delete_after?,
            hooks: hooks?,
        })
    }

    /// A key's `name`, `service_account` and `api_key`: present, no key material, and neither the
    /// name nor the (service account, API key) pair used by an earlier key.
    fn identity(
        &mut self,
        i: usize,
        k: &RawKey,
        at: &FieldPath,
        seen: &mut Seen,
    ) -> (Option<String>, Option<String>, Option<String>) {
        let name = self.required_text(
            k.name.as_deref(),
            &at.key("name"),
            "missing `name`: every key needs a unique name",
        );
        let service_account = self.required_text(
            k.service_account.as_deref(),
            &at.key("service_account"),
            "missing `service_account`: the service account whose key this is",
        );
        let api_key = self.required_text(
            k.api_key.as_deref(),
            &at.key("api_key"),
            "missing `api_key`: the name of the API key on the service account",
        );
        // A key's value pasted where its name belongs would end up in every log line.
        for (field, value) in [("service_account", &service_account), ("api_key", &api_key)] {
            if value.as_deref().is_some_and(|v| v.starts_with("ZENKEY_")) {
                self.err(
                    &at.key(field),
                    format!("looks like key material: `{field}` is a name, never the key's value (remove it from this file)"),
                );
            }
        }
        if let Some(n) = &name {
            if let Some(first) = seen.names.get(n) {
                self.err(
                    &at.key("name"),
                    format!("duplicate key name {n:?}: also used by key[{first}]"),
                );
            } else {
                seen.names.insert(n.clone(), i);
            }
        }
        if let (Some(sa), Some(ak)) = (&service_account, &api_key) {
            let target = (sa.clone(), ak.clone());
            if let Some(first) = seen.targets.get(&target) {
                self.err(
                    &at.key("api_key"),
                    format!("key[{first}] already manages API key {ak:?} of service account {sa:?}: two policies would rotate one key twice"),
                );
            } else {
                seen.targets.insert(target, i);
            }
        }
        (name, service_account, api_key)
    }

    /// Set on the key itself for the other strategy: an error, since it would silently do
    /// nothing. Set in [defaults], it applies only to keys of its strategy.
    fn check_strategy_only_settings(&mut self, layer: &Layer, strategy: Option<Strategy>) {
        if let Some(rp) = &layer.retire_previous
            && strategy.is_some_and(|s| !s.keeps_previous_value())
            && rp.value == Some(true)
        {
            self.err(
                &rp.at,
                "`retire_previous` applies to strategy \"rotate\" only: under \"replace\" the old key is deactivated after retain, so there is no previous value to retire",
            );
        }
        if let Some(da) = &layer.delete_after
            && strategy.is_some_and(|s| !s.deactivates_old_keys())
        {
            self.err(
                &da.at,
                "`delete_after` applies to strategy \"replace\" only: \"rotate\" keeps one API key and never deactivates it, so there is nothing to delete",
            );
        }
    }

    /// The key's store and `path` in it: the store named (or the implicit one), the path valid
    /// for that store and used by no earlier key of the same store.
    fn destination(
        &mut self,
        i: usize,
        k: &RawKey,
        at: &FieldPath,
        resolved: &Resolved,
        scope: &KeyScope<'_>,
        seen: &mut Seen,
    ) -> (Option<String>, Option<String>) {
        let store = match &resolved.store {
            Some(s) => s.value.clone(),
            None if scope.implicit_store => Some(IMPLICIT_STORE.to_owned()),
            None => {
                self.err(at, "no store: set `store` on this key or in [defaults]");
                None
            }
        };
        let path_at = at.key("path");
        let path = self.required_text(
            k.path.as_deref(),
            &path_at,
            "missing `path`: where the key is written in its store",
        );
        let path = match (&store, path) {
            (Some(store), Some(path)) => scope
                .stores
                .get(store)
                .and_then(|s| self.store_path(s, &path, &path_at)),
            _ => None,
        };
        if let (Some(store), Some(path)) = (&store, &path) {
            let dest = (store.clone(), path.clone());
            if let Some(first) = seen.destinations.get(&dest) {
                self.err(
                    &path_at,
                    format!("key[{first}] already writes to {path:?} in store {store:?}: each key needs its own path"),
                );
            } else {
                seen.destinations.insert(dest, i);
            }
        }
        (store, path)
    }

    /// A key's `path` as its store understands it; nothing may escape the store's namespace.
    fn store_path(&mut self, store: &StoreSettings, path: &str, at: &FieldPath) -> Option<String> {
        match store.check_path(path) {
            Ok(()) => Some(path.to_owned()),
            Err(message) => {
                self.err(at, message);
                None
            }
        }
    }
}
