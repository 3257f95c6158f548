//! Invariant 7, one writer per key everywhere: rotators with their own state directories (as on
//! other hosts) over the same keys at once never rotate a key twice and leave only working values;
//! `rotate --force` beside a rotation in flight waits for its claim; a holder killed after ZenML
//! answered is finished by another rotator once its claim expired, with its state directory gone;
//! a holder paused past its claim cannot overwrite the newer value when it wakes; `once` needs no
//! state directory at all when every key lives in Vault or AWS; and what a claim costs a rotation.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::{KeyCheck, NewApiKey, ServiceAccount};

use crate::common::rig::{Ran, Rig};
use crate::common::stores::{VaultAdmin, aws, aws_value, check, payload_of};
use crate::common::{aws_endpoint, new_service_account_with_key, unique, zenml_admin};
use crate::key_now;

/// Claims short enough for a test to outwait, with little clock skew allowed.
const SHORT_CLAIMS: &str = "[coordination]\nclaim_ttl = \"8s\"\nmax_clock_skew = \"1s\"";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Vault,
    Aws,
}

/// A rig (its own policy file and state directory: another host) over the given keys.
fn rig_for(kind: Kind, token: &str, keys: &[(String, String)], extra: &str) -> Rig {
    rig_of(keys, extra, |rig| match kind {
        Kind::Vault => rig.vault_store("store", &VaultAdmin::shared().addr, token),
        Kind::Aws => rig.aws_store("store", &aws_endpoint()),
    })
}

/// A rig over the given keys in the store named `store`, which `store` adds.
fn rig_of(keys: &[(String, String)], extra: &str, store: impl FnOnce(&mut Rig) -> &mut Rig) -> Rig {
    let mut rig = Rig::new();
    store(&mut rig);
    if !extra.is_empty() {
        rig.section(extra);
    }
    for (i, (sa, path)) in keys.iter().enumerate() {
        rig.key(&format!("k{i:02}"), sa, "store", path, "");
    }
    rig.write();
    rig
}

/// The API key value stored at `path`.
async fn stored(kind: Kind, path: &str) -> Option<String> {
    let raw = match kind {
        Kind::Vault => {
            let data = VaultAdmin::shared().data(path, None).await;
            if data.is_null() {
                return None;
            }
            data.to_string()
        }
        Kind::Aws => aws_value(&aws().await, path, "AWSCURRENT").await?,
    };
    Some(payload_of(&raw).1)
}

/// The claim on the key at `path`, as the store keeps it.
async fn claim_doc(kind: Kind, path: &str) -> Value {
    let name = format!("zenml-rotator/claims/{path}");
    match kind {
        Kind::Vault => VaultAdmin::shared().data(&name, None).await,
        Kind::Aws => match aws_value(&aws().await, &name, "AWSCURRENT").await {
            Some(raw) => serde_json::from_str(&raw).unwrap(),
            None => Value::Null,
        },
    }
}

fn spawn(rig: &Rig, args: &[&str], env: &[(&str, &str)]) -> (Child, Command) {
    let mut cmd = rig.cmd(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (child, cmd)
}

fn finish(child: Child, cmd: &Command) -> Ran {
    let out = child.wait_with_output().unwrap();
    crate::common::transcript::command(cmd, &out);
    Ran::new(cmd, out)
}

/// `once` in each rig, all started together; their results once all have ended.
fn once_side_by_side(rigs: &[Rig]) -> Vec<Ran> {
    let running: Vec<(Child, Command)> = rigs
        .iter()
        .map(|rig| spawn(rig, &["once", "--output", "json"], &[]))
        .collect();
    running
        .into_iter()
        .map(|(child, cmd)| finish(child, &cmd))
        .collect()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ready().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sleeps until others may take the claim on `path` over: its expiry plus the skew allowed.
async fn outwait_claim(kind: Kind, path: &str) {
    let doc = claim_doc(kind, path).await;
    let expires = crate::parse_time(doc["expires_at"].as_str().expect("a claim"));
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
}

/// Every key rotated exactly once: ZenML still accepts its original value (a second rotation
/// inside the one-hour window would have cut it off), and the stored value logs in.
async fn rotated_once_and_stored(kind: Kind, keys: &[(ServiceAccount, NewApiKey, String)]) {
    let admin = zenml_admin();
    let (mut twice, mut refused) = (Vec::new(), Vec::new());
    for (sa, original, path) in keys {
        assert!(
            key_now(&admin, sa.id).await.last_rotated.is_some(),
            "{path} rotated"
        );
        if check(&admin, original.value.expose_secret()).await != KeyCheck::Accepted {
            twice.push(path.clone());
        }
        let value = stored(kind, path).await.unwrap_or_default();
        if check(&admin, &value).await != KeyCheck::Accepted {
            refused.push(path.clone());
        }
    }
    assert!(twice.is_empty(), "rotated twice: {twice:?}");
    assert!(
        refused.is_empty(),
        "stored values ZenML refuses: {refused:?}"
    );
}

async fn three_rotators_at_once(kind: Kind) {
    let admin = zenml_admin();
    let accounts = futures_util::future::join_all(
        (0..20).map(|_| new_service_account_with_key(&admin, "eng-coord")),
    )
    .await;
    let prefix = unique("eng-coord");
    let token = VaultAdmin::shared().rotator_token(&prefix).await;
    let keys: Vec<(ServiceAccount, NewApiKey, String)> = accounts
        .into_iter()
        .enumerate()
        .map(|(i, (sa, key))| (sa, key, format!("{prefix}/k{i:02}")))
        .collect();
    let names: Vec<(String, String)> = keys
        .iter()
        .map(|(sa, _, path)| (sa.name.clone(), path.clone()))
        .collect();
    let rigs: Vec<Rig> = (0..3).map(|_| rig_for(kind, &token, &names, "")).collect();
    let runs = once_side_by_side(&rigs);
    // Each key is rotated by exactly one of them; the others find it claimed or done.
    for i in 0..keys.len() {
        let policy = format!("k{i:02}");
        let rotations: usize = runs
            .iter()
            .map(|r| {
                r.results_of(&policy)
                    .iter()
                    .filter(|x| *x == "rotated")
                    .count()
            })
            .sum();
        let all: Vec<Vec<String>> = runs.iter().map(|r| r.results_of(&policy)).collect();
        assert_eq!(rotations, 1, "{policy}: {all:?}");
    }
    for run in &runs {
        assert_eq!(run.output.status.code(), Some(0), "{}", run.describe());
    }
    rotated_once_and_stored(kind, &keys).await;
    for (_, _, path) in &keys {
        assert_eq!(claim_doc(kind, path).await["phase"], "released", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_rotators_at_once_rotate_each_vault_key_once() {
    three_rotators_at_once(Kind::Vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_rotators_at_once_rotate_each_aws_key_once() {
    three_rotators_at_once(Kind::Aws).await;
}

/// Rotator B rotates the key between rotator A's look at it and A's claim (run from A's fault
/// point `before_claim`). A's look is stale by then, and A does not look again under a claim it
/// takes fresh: its take, checked-and-set against the claim its look read, must fail, so A waits
/// instead of rotating the key a second time. ZenML rotated once; B's stored value works.
async fn a_rotation_between_a_look_and_its_claim_is_not_repeated(kind: Kind) {
    let (sa, original, path, token) = one_key("eng-coord-between").await;
    let path = match kind {
        Kind::Vault => path,
        Kind::Aws => unique("eng-coord-between"),
    };
    let keys = [(sa.name.clone(), path.clone())];
    let (a, b) = (
        rig_for(kind, &token, &keys, ""),
        rig_for(kind, &token, &keys, ""),
    );
    // B inherits A's environment (the same secrets' variables), without the fault point.
    let b_out = b.path().join("b.json");
    let b_run = format!(
        "env -u ZR_FAULT_EXEC {:?} once --output json -c {:?} > {:?} 2>&1",
        env!("CARGO_BIN_EXE_zenml-rotator"),
        b.config(),
        b_out,
    );
    let (child, cmd) = spawn(
        &a,
        &["once", "--output", "json"],
        &[("ZR_FAULT_EXEC", &format!("before_claim:{b_run}"))],
    );
    let ran = finish(child, &cmd);
    let b_said = std::fs::read_to_string(&b_out).unwrap_or_default();
    assert!(b_said.contains("\"rotated\""), "B: {b_said}");
    assert_eq!(ran.results_of("k00"), ["wait"], "{}", ran.describe());
    assert!(ran.describe().contains("laimed by"), "{}", ran.describe());
    rotated_once_and_stored(kind, &[(sa, original, path.clone())]).await;
    assert_eq!(claim_doc(kind, &path).await["phase"], "released");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_rotation_between_a_look_and_its_claim_is_not_repeated() {
    a_rotation_between_a_look_and_its_claim_is_not_repeated(Kind::Vault).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_rotation_between_a_look_and_its_claim_is_not_repeated() {
    a_rotation_between_a_look_and_its_claim_is_not_repeated(Kind::Aws).await;
}

/// Two rotators create a key's first claim at the same moment, in a store whose create is not
/// atomic: moto's threaded server checks for the name and then adds the secret, so both creates
/// can succeed, the later replacing the earlier (AWS itself refuses the second). A proxy in front
/// of moto makes that happen every time: it holds the first `CreateSecret` of the claim until the
/// second arrives, lets the first through, turns the second into the replacement it would be, and
/// only then answers both. The rotator whose claim was replaced must find out before it rotates:
/// ZenML rotates the key once, the other rotator waits, naming the holder.
#[tokio::test(flavor = "multi_thread")]
async fn two_first_aws_claims_created_at_once_rotate_the_key_once() {
    use std::sync::{Arc, Condvar, Mutex};

    use crate::common::stub_http::{StubRequest, StubServer, forward};

    /// Where the two creates are: the first arrived, the second arrived, the first was
    /// created, the second replaced it.
    #[derive(Clone, Copy, PartialEq, PartialOrd)]
    enum Step {
        None,
        First,
        Second,
        FirstCreated,
        SecondReplaced,
    }

    let (sa, original) = new_service_account_with_key(&zenml_admin(), "eng-coord-create").await;
    let path = unique("eng-coord-create");
    let claim = format!("zenml-rotator/claims/{path}");
    let upstream = aws_endpoint();
    let steps = Arc::new((Mutex::new(Step::None), Condvar::new()));
    let proxy = StubServer::start(move |r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.header("x-amz-target") != Some("secretsmanager.CreateSecret") || body["Name"] != *claim
        {
            return forward(&upstream, r);
        }
        let (step, changed) = &*steps;
        let wait_until = |at: Step| {
            let guard = step.lock().unwrap();
            // Off the runtime's worker, so the other request can be served meanwhile.
            tokio::task::block_in_place(|| {
                let limit = Duration::from_secs(90);
                drop(changed.wait_timeout_while(guard, limit, |now| *now < at));
            });
        };
        let advance = |to: Step| {
            *step.lock().unwrap() = to;
            changed.notify_all();
        };
        let first = {
            let mut now = step.lock().unwrap();
            let first = *now == Step::None;
            *now = if first { Step::First } else { Step::Second };
            changed.notify_all();
            first
        };
        if first {
            wait_until(Step::Second);
            let answer = forward(&upstream, r);
            advance(Step::FirstCreated);
            wait_until(Step::SecondReplaced);
            answer
        } else {
            wait_until(Step::FirstCreated);
            // The second create, applied the way a non-atomic create applies it: its version
            // becomes the claim's AWSCURRENT over the first one's.
            let replace = serde_json::json!({
                "SecretId": body["Name"],
                "ClientRequestToken": body["ClientRequestToken"],
                "SecretString": body["SecretString"],
                "VersionStages": ["AWSCURRENT"],
            });
            let mut request: StubRequest = r.clone();
            request.body = replace.to_string().into_bytes();
            for (k, v) in &mut request.headers {
                if k.eq_ignore_ascii_case("x-amz-target") {
                    *v = "secretsmanager.PutSecretValue".into();
                }
            }
            let answer = forward(&upstream, &request);
            advance(Step::SecondReplaced);
            answer
        }
    })
    .await;

    let keys = [(sa.name.clone(), path.clone())];
    let rigs: Vec<Rig> = (0..2)
        .map(|_| rig_of(&keys, "", |rig| rig.aws_store("store", &proxy.url)))
        .collect();
    let runs = once_side_by_side(&rigs);
    let creates = proxy
        .requests()
        .iter()
        .filter(|r| r.header("x-amz-target") == Some("secretsmanager.CreateSecret"))
        .filter(|r| r.body_text().contains("zenml-rotator/claims/"))
        .count();
    assert_eq!(creates, 2, "both rotators created the claim");
    let mut results: Vec<Vec<String>> = runs.iter().map(|r| r.results_of("k00")).collect();
    results.sort();
    assert_eq!(
        results,
        [["rotated"], ["wait"]],
        "{}\n{}",
        runs[0].describe(),
        runs[1].describe()
    );
    let waited = runs.iter().find(|r| r.results_of("k00") == ["wait"]);
    assert!(
        waited.is_some_and(|r| r.describe().contains("claimed by")),
        "{}",
        waited.map(Ran::describe).unwrap_or_default()
    );
    rotated_once_and_stored(Kind::Aws, &[(sa, original, path.clone())]).await;
    assert_eq!(claim_doc(Kind::Aws, &path).await["phase"], "released");
}

/// One key of one service account at `<prefix>/k00`, and a token for it.
async fn one_key(tag: &str) -> (ServiceAccount, NewApiKey, String, String) {
    let admin = zenml_admin();
    let (sa, key) = new_service_account_with_key(&admin, tag).await;
    let prefix = unique(tag);
    let token = VaultAdmin::shared().rotator_token(&prefix).await;
    (sa, key, format!("{prefix}/k00"), token)
}

/// A daemon rotating a key holds its claim: `rotate --force` by hand says so, fails and changes
/// nothing; `plan` names the holder. The daemon's rotation is the only one.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_by_hand_beside_a_daemon_rotating_the_key_waits_for_its_claim() {
    let (sa, original, path, token) = one_key("eng-coord-hand").await;
    let keys = [(sa.name.clone(), path.clone())];
    let daemon_rig = rig_for(
        Kind::Vault,
        &token,
        &keys,
        "[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    // The daemon pauses 10 s right after ZenML's answer, holding the claim.
    let (mut daemon, _) = spawn(
        &daemon_rig,
        &["run"],
        &[("ZR_FAULT_EXEC", "after_rotate:sleep 10")],
    );
    wait_for("the daemon's claim", Duration::from_secs(60), || async {
        claim_doc(Kind::Vault, &path).await["phase"] == "rotated"
    })
    .await;
    let hand = rig_for(Kind::Vault, &token, &keys, "");
    let plan = hand.expect(&["plan", "--output", "json"], 0);
    let rows: Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(rows[0]["action"], "wait", "{}", plan.describe());
    assert!(rows[0]["claim_holder"].is_string(), "{}", plan.describe());
    assert!(
        rows[0]["claim_expires_at"].is_string(),
        "{}",
        plan.describe()
    );
    let ran = hand.expect(&["rotate", "k00", "--force", "--output", "json"], 1);
    let (_, result, detail) = ran.rows().remove(0);
    assert_eq!(result, "failed", "{}", ran.describe());
    assert!(detail.contains("laimed by"), "{detail}");

    wait_for(
        "the daemon's store write",
        Duration::from_secs(60),
        || async { claim_doc(Kind::Vault, &path).await["phase"] == "released" },
    )
    .await;
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    rotated_once_and_stored(Kind::Vault, &[(sa, original, path)]).await;
}

/// A holder on another host is SIGKILLed after ZenML answered and before the store write, and its
/// state directory is gone: another rotator waits for the claim to expire (counting the wait),
/// then stores the value the dead holder kept in its claim. ZenML rotated once.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_holder_is_finished_by_another_rotator_once_its_claim_expired() {
    let (sa, original, path, token) = one_key("eng-coord-kill").await;
    let keys = [(sa.name.clone(), path.clone())];
    // A claim with room for a slow server: the second rotator must find it still held.
    let claims = "[coordination]\nclaim_ttl = \"30s\"\nmax_clock_skew = \"1s\"";
    let holder = rig_for(Kind::Vault, &token, &keys, claims);
    let (child, cmd) = spawn(
        &holder,
        &["once"],
        &[
            ("ZR_FAULT_HOST", "elsewhere"),
            ("ZR_FAULT_EXEC", "after_rotate:kill -KILL $PPID"),
        ],
    );
    let ran = finish(child, &cmd);
    assert_eq!(ran.output.status.code(), None, "killed: {}", ran.describe());
    std::fs::remove_dir_all(holder.state_dir()).ok();
    let claim = claim_doc(Kind::Vault, &path).await;
    assert_eq!(claim["phase"], "rotated", "{claim}");
    assert!(claim["holder"].as_str().unwrap().starts_with("elsewhere/"));
    let kept = claim["value"].as_str().unwrap().to_owned();

    let textfile = std::env::temp_dir().join(format!("{}.prom", unique("zr-waits")));
    let other = rig_for(
        Kind::Vault,
        &token,
        &keys,
        &format!(
            "{claims}\n[metrics]\ntextfile = {:?}",
            textfile.display().to_string()
        ),
    );
    let waited = other.expect(&["once", "--output", "json"], 0);
    assert_eq!(waited.results_of("k00"), ["wait"], "{}", waited.describe());
    assert!(waited.rows()[0].2.contains("Claimed by elsewhere/"));
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("zenml_rotator_claim_waits_total{policy=\"k00\"} 1"),
        "{metrics}"
    );
    assert_eq!(stored(Kind::Vault, &path).await, None, "nothing stored yet");

    outwait_claim(Kind::Vault, &path).await;
    let done = other.expect(&["once", "--output", "json"], 0);
    assert_eq!(done.results_of("k00"), ["rotated"], "{}", done.describe());
    assert_eq!(
        stored(Kind::Vault, &path).await.as_deref(),
        Some(kept.as_str())
    );
    assert_eq!(claim_doc(Kind::Vault, &path).await["phase"], "released");
    rotated_once_and_stored(Kind::Vault, &[(sa, original, path)]).await;
}

/// A holder paused (SIGSTOP) right after ZenML answered, past its claim: another rotator takes
/// the claim over and finishes, then rotates again by hand. Woken (SIGCONT), the old holder finds
/// its claim gone and stops: the newer value stays, and its lost claim is counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_paused_past_its_claim_cannot_overwrite_the_newer_value() {
    let (sa, _original, path, token) = one_key("eng-coord-stop").await;
    let keys = [(sa.name.clone(), path.clone())];
    let textfile = std::env::temp_dir().join(format!("{}.prom", unique("zr-lost")));
    let holder = rig_for(
        Kind::Vault,
        &token,
        &keys,
        &format!(
            "{SHORT_CLAIMS}\n[metrics]\ntextfile = {:?}",
            textfile.display().to_string()
        ),
    );
    let (child, cmd) = spawn(
        &holder,
        &["once", "--output", "json"],
        &[("ZR_FAULT_EXEC", "after_rotate:kill -STOP $PPID")],
    );
    wait_for(
        "the paused holder's claim",
        Duration::from_secs(60),
        || async { claim_doc(Kind::Vault, &path).await["phase"] == "rotated" },
    )
    .await;
    outwait_claim(Kind::Vault, &path).await;

    let other = rig_for(Kind::Vault, &token, &keys, SHORT_CLAIMS);
    let done = other.expect(&["once", "--output", "json"], 0);
    assert_eq!(done.results_of("k00"), ["rotated"], "{}", done.describe());
    let forced = other.expect(&["rotate", "k00", "--force", "--output", "json"], 0);
    assert_eq!(
        forced.results_of("k00"),
        ["rotated"],
        "{}",
        forced.describe()
    );
    let newer = stored(Kind::Vault, &path).await.unwrap();

    let _ = Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status();
    let woke = finish(child, &cmd);
    assert_eq!(woke.output.status.code(), Some(1), "{}", woke.describe());
    let (_, result, detail) = woke.rows().remove(0);
    assert_eq!(result, "failed", "{}", woke.describe());
    assert!(detail.contains("claim on this key was lost"), "{detail}");
    assert_eq!(stored(Kind::Vault, &path).await, Some(newer.clone()));
    assert_eq!(check(&zenml_admin(), &newer).await, KeyCheck::Accepted);
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("zenml_rotator_claims_lost_total{policy=\"k00\"} 1"),
        "{metrics}"
    );
}

/// With every key in Vault or AWS, `once` needs no state directory: here it is a file, so it
/// could not even be created.
#[tokio::test(flavor = "multi_thread")]
async fn once_needs_no_state_directory_for_vault_and_aws_keys() {
    let (sa, original, path, token) = one_key("eng-coord-nostate").await;
    let admin = zenml_admin();
    let (aws_sa, aws_original) = new_service_account_with_key(&admin, "eng-coord-nostate").await;
    let aws_path = unique("eng-coord-nostate");
    let root = VaultAdmin::shared();
    let mut rig = Rig::new();
    rig.vault_store("vault", &root.addr, &token)
        .aws_store("aws", &aws_endpoint())
        .key("v", &sa.name, "vault", &path, "")
        .key("a", &aws_sa.name, "aws", &aws_path, "");
    rig.write();
    std::fs::write(rig.state_dir(), b"not a directory").unwrap();
    let ran = rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("v"), ["rotated"], "{}", ran.describe());
    assert_eq!(ran.results_of("a"), ["rotated"], "{}", ran.describe());
    rotated_once_and_stored(Kind::Vault, &[(sa, original, path)]).await;
    rotated_once_and_stored(Kind::Aws, &[(aws_sa, aws_original, aws_path)]).await;
}

/// What claims add to a rotation, counted in front of the real stores: every request that
/// touches the claim. A first rotation creates the claim, a later one rewrites it; Vault keeps the
/// new value in the claim, AWS stages it in the key's own secret. The README quotes these figures.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_claim_costs_per_rotation_in_vault_and_aws() {
    use crate::common::stub_http::{StubRequest, StubServer, forward};

    let (sa, original, path, token) = one_key("eng-coord-cost").await;
    let (aws_sa, _) = new_service_account_with_key(&zenml_admin(), "eng-coord-cost").await;
    let aws_path = unique("eng-coord-cost");
    let (w_sa, _) = new_service_account_with_key(&zenml_admin(), "eng-coord-cost").await;
    // Beside v's path, where the rotator's token may write.
    let w_path = format!("{}/w", path.rsplit_once('/').map_or("", |(dir, _)| dir));
    let vault_up = VaultAdmin::shared().addr.clone();
    let aws_up = aws_endpoint();
    let vault = StubServer::start(move |r| forward(&vault_up, r)).await;
    let aws_proxy = StubServer::start(move |r| forward(&aws_up, r)).await;
    let zenml_up = std::env::var("ZR_ZENML_URL").unwrap();
    let zenml = StubServer::start(move |r| forward(&zenml_up, r)).await;
    let mut rig = Rig::new();
    // A one-minute window, so the last part can finalize a rotation and rotate again.
    rig.zenml_url(&zenml.url)
        .default_line("retain = \"1m\"")
        .vault_store("vault", &vault.url, &token)
        .aws_store("aws", &aws_proxy.url)
        .key("v", &sa.name, "vault", &path, "")
        .key("a", &aws_sa.name, "aws", &aws_path, "")
        .key("w", &w_sa.name, "vault", &w_path, "");
    let textfile = rig.path().join("metrics.prom");
    rig.section(&format!(
        "[metrics]\ntextfile = {:?}",
        textfile.display().to_string()
    ));
    rig.write();
    let rig = std::sync::Arc::new(rig);

    let vault_claim = format!("zenml-rotator/claims/{path}");
    let aws_claim = format!("zenml-rotator/claims/{aws_path}");
    // Vault: (reads, writes) of the claim; AWS: the operations on the claim's secret.
    let vault_calls = |from: usize| {
        let calls: Vec<String> = vault.requests()[from..]
            .iter()
            .filter(|r| r.path().contains(&vault_claim))
            .map(|r| r.method.clone())
            .collect();
        let reads = calls.iter().filter(|m| *m == "GET").count();
        (reads, calls.len() - reads)
    };
    // Every request on the key's own path, as "METHOD data|metadata" (claims live elsewhere).
    let vault_key_calls = |from: usize| {
        let (data, meta) = (format!("/data/{path}"), format!("/metadata/{path}"));
        vault.requests()[from..]
            .iter()
            .filter_map(|r| {
                let kind = if r.path().ends_with(&data) {
                    "data"
                } else if r.path().ends_with(&meta) {
                    "metadata"
                } else {
                    return None;
                };
                Some(format!("{} {kind}", r.method))
            })
            .collect::<Vec<_>>()
    };
    // The Vault key's requests to ZenML, as "METHOD name|id|rotate" (how the key is addressed).
    let zenml_key_calls = |from: usize| {
        let keys = format!("/service_accounts/{}/api_keys/", sa.id);
        let name = original.key.name.clone();
        zenml.requests()[from..]
            .iter()
            .filter(|r| r.path().contains(&keys))
            .map(|r| {
                let kind = if r.path().ends_with("/rotate") {
                    "rotate"
                } else if r.path().ends_with(&format!("/{name}")) {
                    "name"
                } else {
                    "id"
                };
                format!("{} {kind}", r.method)
            })
            .collect::<Vec<_>>()
    };
    let aws_calls = |from: usize| {
        aws_proxy.requests()[from..]
            .iter()
            .filter(|r| r.body_text().contains(&aws_claim))
            .map(|r: &StubRequest| {
                let target = r.header("x-amz-target").unwrap_or_default();
                target.trim_start_matches("secretsmanager.").to_owned()
            })
            .collect::<Vec<_>>()
    };
    let run = |args: &'static [&'static str]| {
        let rig = std::sync::Arc::clone(&rig);
        tokio::task::spawn_blocking(move || rig.expect(args, 0))
    };

    let ran = run(&["once", "--output", "json"]).await.unwrap();
    assert_eq!(ran.results_of("v"), ["rotated"], "{}", ran.describe());
    assert_eq!(ran.results_of("a"), ["rotated"], "{}", ran.describe());
    // What the look after the rotation publishes describes the new value, though it took the
    // key, the claim and the store from the rotation and its release instead of reading them:
    // the record's rotation time and window, and no claim held.
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let record = VaultAdmin::shared().metadata(&path).await["custom_metadata"].clone();
    let rotated_at = crate::parse_time(record["rotated_at"].as_str().unwrap()).timestamp() as f64;
    let gauge = |name: &str, policy: &str| -> f64 {
        let series = format!("zenml_rotator_{name}{{policy=\"{policy}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(
        (gauge("last_rotation_timestamp_seconds", "v") - rotated_at).abs() < 1.0,
        "{metrics}"
    );
    assert!(
        (gauge("retain_until_timestamp_seconds", "v") - rotated_at - 60.0).abs() < 1.0,
        "{metrics}"
    );
    // Due again `every` (30 days by default) after it: the store's record says the rotation is
    // this rotator's, so nothing is due at once.
    assert!(
        (gauge("next_rotation_timestamp_seconds", "v") - rotated_at - 30.0 * 86_400.0).abs() < 1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("zenml_rotator_claim_since_timestamp_seconds{"),
        "no claim is held after the pass:\n{metrics}"
    );
    // Looked at before taking, and not again: under the claim, and after its release, the
    // taker knows what it wrote. Taken, value kept, released.
    assert_eq!(vault_calls(0), (1, 3), "first rotation, Vault");
    // KV v2 writes the value current at once, with its record: one read-back after the
    // ownership check, and no second record write.
    assert_eq!(
        vault_key_calls(0),
        [
            // Looked at, the claim first: taken by check-and-set over the claim this look read,
            // so it still stands; pre-flight checks-and-sets against the version it saw.
            "GET metadata",
            "POST data",      // the value, check-and-set
            "PATCH metadata", // the record, merged by Vault (the shipped policy may patch)
            // Read back equal, its stamp this rotation's (promote); the look after the
            // rotation takes the path's state from this read too.
            "GET data",
        ],
        "first rotation, Vault key path"
    );
    // The key as the rotate answer and the look before it give it (last_rotated is the answer's
    // `updated`) is what the record says, and what the look after the rotation takes: not read
    // back, not read again. The next pass's look compares it with ZenML's own: below, a finalize
    // follows, not a "rotated elsewhere".
    assert_eq!(
        zenml_key_calls(0),
        [
            "GET name",   // looked at (the look stands under the claim)
            "PUT rotate", //
        ],
        "first rotation, ZenML"
    );
    let get = "GetSecretValue";
    let (put, stage) = ("PutSecretValue", "UpdateSecretVersionStage");
    assert_eq!(
        aws_calls(0),
        // Created, then read back once: a store whose create is not atomic may have let
        // another rotator's create replace it.
        [get, "CreateSecret", get, put, stage],
        "first rotation, AWS"
    );

    let (v_from, a_from) = (vault.requests().len(), aws_proxy.requests().len());
    for name in ["v", "a"] {
        let args: &'static [&'static str] = if name == "v" {
            &["rotate", "v", "--force", "--output", "json"]
        } else {
            &["rotate", "a", "--force", "--output", "json"]
        };
        let ran = run(args).await.unwrap();
        assert_eq!(ran.results_of(name), ["rotated"], "{}", ran.describe());
    }
    assert_eq!(vault_calls(v_from), (1, 3), "later rotation, Vault");
    assert_eq!(
        aws_calls(a_from),
        [get, put, stage, put, stage],
        "later rotation, AWS"
    );

    // Once the window is over, a finalize and the rotation it leads to share one claim: taken
    // once, the rotation's value kept in it, released once; the look between the two steps is
    // made under it, so the claim is not read again there.
    let (v_from, a_from) = (vault.requests().len(), aws_proxy.requests().len());
    let z_from = zenml.requests().len();
    tokio::time::sleep(Duration::from_secs(62)).await;
    for name in ["v", "a"] {
        let args: &'static [&'static str] = if name == "v" {
            &["rotate", "v", "--output", "json"]
        } else {
            &["rotate", "a", "--output", "json"]
        };
        let ran = run(args).await.unwrap();
        assert_eq!(
            ran.results_of(name),
            ["finalized", "rotated"],
            "{}",
            ran.describe()
        );
    }
    assert_eq!(vault_calls(v_from), (1, 3), "finalize and rotation, Vault");
    assert_eq!(
        vault_key_calls(v_from),
        [
            "GET metadata", // looked at (stands under the claim): which version is current
            "GET data",     // the one before it, to check ZenML rejects its value now
            // Finalized: nothing in this process has pre-flighted yet, so the store asks Vault
            // once whether the token may patch (the shipped policy: yes) and patches the
            // record. The look after it, under the same claim, takes the store as its look saw
            // it with that record, and pre-flight its version.
            "PATCH metadata",
            "POST data", // check-and-set over the last rotation's stamped version: no read first
            "PATCH metadata", // the record
            "GET data",  // read back equal, its stamp this rotation's
        ],
        "finalize and rotation, Vault key path"
    );
    // Two questions about the token's capabilities: the finalize's whether it may patch, and
    // the rotation's pre-flight.
    let asked = vault.requests()[v_from..]
        .iter()
        .filter(|r| r.path().ends_with("/sys/capabilities-self"))
        .count();
    assert_eq!(asked, 2, "finalize and rotation, capability questions");
    // The key is looked at once: a finalize leaves it as it was, so the look after it takes it.
    assert_eq!(
        zenml_key_calls(z_from),
        ["GET name", "PUT rotate"],
        "finalize and rotation, ZenML"
    );
    assert_eq!(
        aws_calls(a_from),
        [get, put, stage, put, stage],
        "finalize and rotation, AWS"
    );

    // A finalize with no rotation due after it: the look after the finalize is made under the
    // claim, which is released when the key's pass ends; the metrics do not say it is held.
    let ran = run(&["once", "--output", "json"]).await.unwrap();
    assert_eq!(ran.results_of("w"), ["finalized"], "{}", ran.describe());
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("zenml_rotator_last_success_timestamp_seconds{policy=\"w\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("zenml_rotator_claim_since_timestamp_seconds{"),
        "no claim is held after the pass:\n{metrics}"
    );
    assert_eq!(
        claim_doc(Kind::Vault, &w_path).await["phase"],
        "released",
        "w's claim"
    );
}
