//! Crash anywhere (invariants 1, 3, 7, 8): `once`, `rotate --force` and `run` over 20 keys, each
//! SIGKILLed at a random moment, half of the time with the state directory deleted after the
//! kill (a pod without a volume); then undisturbed passes. After it: every stored value logs in,
//! no claim is held and no journal entry is left, `plan` blocks nothing, and no unforced pass
//! rotated a key inside the retain window of its previous rotation.
//!
//! The schedule (which command, which key, when to kill) comes from a seeded generator: the seed
//! is printed, and `ZR_CHAOS_SEED=<seed>` replays the same schedule (the servers' timing varies,
//! so where each kill lands varies with it). A kill is either anywhere (a random time after the
//! start) or aimed (a random time after the process's first call that makes ZenML issue a value).
//!
//! How a kill is judged to have landed inside a rotation: right after it, the killed process
//! holds an unreleased claim on a key (claims name their holder's pid) and had begun rotating
//! it (the claim records the rotation's retain, or keeps its new value), or had asked ZenML for
//! a new value of it (the proxy saw the rotate or create call). Of those, the ones where ZenML
//! had already issued the new value and the store did not have it yet are counted apart.
//!
//! Which rotations were unforced: `once` and `run` reach ZenML through one proxy, `rotate --force`
//! through another; each records every rotate call with its time and the retain it sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::common::fault_proxy::{Exchange, FaultProxy};
use crate::common::{transcript, zenml_admin};
use crate::world::{Kind, Setup, StoreAt, World};
use crate::{figure, no_panic};

const KEYS: usize = 20;
/// Kills that must land inside a rotation, per store (half with the state directory kept, half
/// with it deleted).
const LANDED_PER_HALF: usize = 13;
/// Attempts per half before the test gives up (and fails, saying how far it got).
const MAX_CYCLES_PER_HALF: usize = 60;
/// Claims short enough that a killed holder on another host would not hold the run up for long
/// (the rotators here share one host, where a dead holder's claim is taken over at once).
const SHORT_CLAIMS: &str = "[coordination]\nclaim_ttl = \"8s\"\nmax_clock_skew = \"1s\"";

/// splitmix64: small, seedable, good enough to pick commands and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn seed() -> u64 {
    match std::env::var("ZR_CHAOS_SEED") {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|_| panic!("ZR_CHAOS_SEED={s:?} is not a number")),
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Cmd {
    Once,
    Force,
    Run,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Once => "once",
            Cmd::Force => "rotate --force",
            Cmd::Run => "run",
        }
    }
}

/// When to kill: a random time after the start, or after the process's first call that makes
/// ZenML issue a value (plus a random time).
#[derive(Clone, Copy)]
enum Aim {
    Anywhere(Duration),
    AfterIssue(Duration),
}

#[derive(Default)]
struct Tally {
    kills: BTreeMap<Cmd, usize>,
    landed: BTreeMap<Cmd, usize>,
    /// Landed after ZenML issued the new value and before the store had it.
    value_in_flight: usize,
    /// Processes that finished before their kill was due.
    finished: usize,
    landed_with_state_deleted: usize,
}

impl Tally {
    fn landed(&self) -> usize {
        self.landed.values().sum()
    }
}

struct Chaos {
    world: World,
    unforced: FaultProxy,
    forced: FaultProxy,
    forced_config: PathBuf,
    rng: Rng,
    tally: Tally,
    outputs: Vec<(PathBuf, PathBuf)>,
    n: usize,
    /// Service account id -> index of its key.
    by_account: BTreeMap<String, usize>,
}

impl Chaos {
    async fn new(kind: Kind, seed: u64) -> Chaos {
        let zenml = crate::common::zenml().url;
        let unforced = FaultProxy::start(&zenml);
        let forced = FaultProxy::start(&zenml);
        let mut setup = Setup::new("flt-chaos", KEYS);
        setup.zenml_url = Some(&unforced.url);
        setup.defaults = &["retain = \"1m\"", "every = \"2m\""];
        setup.sections = &[SHORT_CLAIMS];
        let world = World::new(StoreAt::shared(kind), setup).await;
        let forced_config = world.rig.write_variant("forced", &forced.url);
        let by_account = world
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.sa.id.to_string(), i))
            .collect();
        Chaos {
            world,
            unforced,
            forced,
            forced_config,
            rng: Rng(seed),
            tally: Tally::default(),
            outputs: Vec::new(),
            n: 0,
            by_account,
        }
    }

    fn spawn(&mut self, cmd: Cmd) -> Child {
        self.n += 1;
        let out = self.world.rig.path().join(format!("chaos-{}.out", self.n));
        let err = self.world.rig.path().join(format!("chaos-{}.err", self.n));
        let mut command = match cmd {
            Cmd::Once => self.world.rig.cmd(&["once", "--output", "json"]),
            Cmd::Run => self.world.rig.cmd(&["run"]),
            Cmd::Force => {
                let k = &self.world.keys[self.rng.below(KEYS as u64) as usize].policy;
                self.world
                    .rig
                    .cmd_with(&self.forced_config, &["rotate", k, "--force"])
            }
        };
        command
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null());
        self.outputs.push((out, err));
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    /// Calls through `proxy` since `since` that make ZenML issue a value (rotate, create key).
    fn issued_since(proxy: &FaultProxy, since: DateTime<Utc>) -> Vec<Exchange> {
        proxy
            .log()
            .into_iter()
            .filter(|e| e.at >= since && issues_value(e))
            .collect()
    }

    /// One cycle: start a command, kill it as the schedule says, judge where the kill landed.
    async fn cycle(&mut self, delete_state: bool) {
        let cmd = match self.rng.below(10) {
            0..=3 => Cmd::Once,
            4..=6 => Cmd::Force,
            _ => Cmd::Run,
        };
        let aim = if self.rng.below(2) == 0 {
            Aim::Anywhere(self.rng.millis(100, 5000))
        } else {
            Aim::AfterIssue(self.rng.millis(0, 1500))
        };
        let proxy_is_forced = cmd == Cmd::Force;
        let started = Utc::now();
        let mut child = self.spawn(cmd);
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(12);
        let finished = match aim {
            Aim::Anywhere(after) => wait_or_exit(&mut child, Instant::now() + after).await,
            Aim::AfterIssue(after) => {
                let proxy = if proxy_is_forced {
                    &self.forced
                } else {
                    &self.unforced
                };
                let mut exited = false;
                while Instant::now() < deadline {
                    if !Self::issued_since(proxy, started).is_empty() {
                        break;
                    }
                    if child.try_wait().unwrap().is_some() {
                        exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                exited || wait_or_exit(&mut child, Instant::now() + after).await
            }
        };
        if finished {
            self.tally.finished += 1;
        } else {
            let _ = child.kill();
            let _ = child.wait();
            *self.tally.kills.entry(cmd).or_default() += 1;
            let issued: Vec<Exchange> = [&self.unforced, &self.forced]
                .iter()
                .flat_map(|p| Self::issued_since(p, started))
                .collect();
            let (landed, in_flight) = self.judge(pid, &issued).await;
            if landed {
                *self.tally.landed.entry(cmd).or_default() += 1;
                if delete_state {
                    self.tally.landed_with_state_deleted += 1;
                }
            }
            if in_flight {
                self.tally.value_in_flight += 1;
            }
        }
        if delete_state {
            let _ = std::fs::remove_dir_all(self.world.rig.state_dir());
        }
    }

    /// Whether the kill of `pid` landed inside a rotation, and whether a new value was in flight.
    async fn judge(&self, pid: u32, issued: &[Exchange]) -> (bool, bool) {
        let admin = zenml_admin();
        let (mut landed, mut in_flight) = (false, false);
        for (i, key) in self.world.keys.iter().enumerate() {
            let claim = self.world.claim(key).await;
            if claim.is_null() || claim["phase"] == "released" || holder_pid(&claim) != Some(pid) {
                continue;
            }
            let asked = issued
                .iter()
                .any(|e| self.account_of(e) == Some(i) && e.upstream_status.is_some());
            let kept = claim["phase"] == "rotated";
            let begun = claim["retain_minutes"].as_u64().unwrap_or(0) > 0;
            if !(kept || begun || asked) {
                continue;
            }
            landed = true;
            let moved = match admin.get_api_key(key.sa.id, &key.key_id).await {
                Ok(now) => {
                    now.last_rotated.map(|t| t.to_rfc3339())
                        != claim["previous_last_rotated"]
                            .as_str()
                            .map(|s| parse_time(s).to_rfc3339())
                }
                Err(_) => false,
            };
            let created = issued.iter().any(|e| {
                self.account_of(e) == Some(i)
                    && e.method == "POST"
                    && e.upstream_status == Some(200)
            });
            in_flight |= kept || moved || created;
        }
        (landed, in_flight)
    }

    fn account_of(&self, e: &Exchange) -> Option<usize> {
        let rest = e.path.strip_prefix("/api/v1/service_accounts/")?;
        let sa = rest.split('/').next()?;
        self.by_account.get(sa).copied()
    }

    /// Every captured output goes to the transcript; no process may have panicked.
    fn collect_outputs(&self) -> String {
        let mut all = String::new();
        for (out, err) in &self.outputs {
            for path in [out, err] {
                transcript::file(path);
                let text = std::fs::read_to_string(path).unwrap_or_default();
                no_panic(&path.display().to_string(), &text);
                all.push_str(&text);
            }
        }
        all
    }
}

/// Waits until `until`; true when the child exited first.
async fn wait_or_exit(child: &mut Child, until: Instant) -> bool {
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.try_wait().unwrap().is_some()
}

fn issues_value(e: &Exchange) -> bool {
    (e.method == "PUT" && e.path.ends_with("/rotate"))
        || (e.method == "POST" && e.path.ends_with("/api_keys"))
}

fn holder_pid(claim: &Value) -> Option<u32> {
    let holder = claim["holder"].as_str()?;
    let mut parts = holder.rsplitn(3, '/');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&Utc)
}

/// Rotate calls (path = the key) that ZenML carried out, unforced or not, in time order.
fn rotations(unforced: &FaultProxy, forced: &FaultProxy) -> Vec<(Exchange, bool)> {
    let mut all: Vec<(Exchange, bool)> = unforced
        .log()
        .into_iter()
        .map(|e| (e, false))
        .chain(forced.log().into_iter().map(|e| (e, true)))
        .filter(|(e, _)| {
            e.method == "PUT" && e.path.ends_with("/rotate") && e.upstream_status == Some(200)
        })
        .collect();
    all.sort_by_key(|(e, _)| e.at);
    all
}

/// Unforced rotations that came inside the retain window of the key's previous rotation. The
/// previous rotation's `last_rotated` is at or after its call reached the proxy, so a call
/// before `previous call + retain` is certainly inside the window.
fn inside_windows(rotations: &[(Exchange, bool)]) -> Vec<String> {
    let mut last: BTreeMap<&str, &Exchange> = BTreeMap::new();
    let mut bad = Vec::new();
    for (e, forced) in rotations {
        if let Some(prev) = last.get(e.path.as_str())
            && !forced
        {
            let until = prev.at + chrono::Duration::minutes(prev.retain.unwrap_or(0));
            if e.at < until {
                bad.push(format!(
                    "{} at {} inside the window until {} of the rotation at {}",
                    e.path, e.at, until, prev.at
                ));
            }
        }
        last.insert(e.path.as_str(), e);
    }
    bad
}

async fn crash_anywhere(kind: Kind) {
    let started = Instant::now();
    let seed = seed();
    figure(&format!(
        "chaos {}: seed {seed} (ZR_CHAOS_SEED={seed} replays this schedule)",
        kind.name()
    ));
    let mut chaos = Chaos::new(kind, seed).await;
    let mut cycles = 0;
    for delete_state in [false, true] {
        let goal = if delete_state {
            2 * LANDED_PER_HALF
        } else {
            LANDED_PER_HALF
        };
        let mut n = 0;
        while chaos.tally.landed() < goal && n < MAX_CYCLES_PER_HALF {
            chaos.cycle(delete_state).await;
            n += 1;
        }
        cycles += n;
    }
    let chaos_took = started.elapsed();

    // Undisturbed: two passes, each must complete.
    let mut settle = Vec::new();
    for _ in 0..2 {
        let ran = chaos.world.rig.expect(&["once", "--output", "json"], 0);
        no_panic("undisturbed once", &ran.stderr);
        settle.push(ran);
    }
    let logs = chaos.collect_outputs();
    let all_logs = logs + &settle.iter().map(|r| r.stderr.as_str()).collect::<String>();
    let recovered = all_logs
        .matches("recovered a rotation whose new value nobody kept")
        .count();
    chaos.world.assert_nothing_lost().await;
    let rotations = rotations(&chaos.unforced, &chaos.forced);
    let violations = inside_windows(&rotations);
    let t = &chaos.tally;
    let per_cmd = |m: &BTreeMap<Cmd, usize>| {
        [Cmd::Once, Cmd::Force, Cmd::Run]
            .iter()
            .map(|c| format!("{} {}", c.name(), m.get(c).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    figure(&format!(
        "chaos {}: {KEYS} keys, {cycles} runs, {} kills ({}), {} landed inside a rotation ({}; {} with the state directory deleted), {} of them with a new value issued and not yet stored, {} finished before their kill; {} keys recovered; {} rotations ({} unforced), {} unforced inside a retain window; lost 0, blocked 0; {:.0}s of kills, {:.0}s in all",
        kind.name(),
        t.kills.values().sum::<usize>(),
        per_cmd(&t.kills),
        t.landed(),
        per_cmd(&t.landed),
        t.landed_with_state_deleted,
        t.value_in_flight,
        t.finished,
        recovered,
        rotations.len(),
        rotations.iter().filter(|(_, f)| !f).count(),
        violations.len(),
        chaos_took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    ));
    assert!(
        violations.is_empty(),
        "unforced rotations inside a retain window:\n{}",
        violations.join("\n")
    );
    assert!(
        t.landed() >= 2 * LANDED_PER_HALF,
        "only {} kills landed inside a rotation in {cycles} runs",
        t.landed()
    );
    assert!(
        t.landed_with_state_deleted >= LANDED_PER_HALF,
        "only {} landed with the state directory deleted",
        t.landed_with_state_deleted
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkills_over_20_vault_keys_lose_nothing() {
    crash_anywhere(Kind::Vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_sigkills_over_20_aws_keys_lose_nothing() {
    crash_anywhere(Kind::Aws).await;
}
