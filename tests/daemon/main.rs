//! `zenml-rotator run` and the one-shot metrics export, end to end: the built binary against the
//! real ZenML server (file store), a real Prometheus scraping it and a real Pushgateway receiving
//! `once` runs. Signals, reload, readiness, idle cost and backoff are observed from outside.

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::*;
use zenml_rotator::daemon::backoff::BackoffPolicy;

/// Every metric name of the README ("Metrics"), with the label names each series must have (besides `le` on
/// histogram buckets): `policy` is the only per-key label.
const DESIGN_METRICS: &[(&str, &[&str])] = &[
    ("zenml_rotator_rotations_total", &["policy", "result"]),
    ("zenml_rotator_errors_total", &["policy", "stage"]),
    ("zenml_rotator_last_rotation_timestamp_seconds", &["policy"]),
    ("zenml_rotator_last_success_timestamp_seconds", &["policy"]),
    ("zenml_rotator_next_rotation_timestamp_seconds", &["policy"]),
    ("zenml_rotator_retain_until_timestamp_seconds", &["policy"]),
    ("zenml_rotator_policy_healthy", &["policy"]),
    ("zenml_rotator_rotation_duration_seconds_bucket", &[]),
    ("zenml_rotator_rotation_duration_seconds_count", &[]),
    ("zenml_rotator_rotation_duration_seconds_sum", &[]),
    (
        "zenml_rotator_upstream_request_duration_seconds_bucket",
        &["upstream", "operation"],
    ),
    (
        "zenml_rotator_upstream_request_duration_seconds_count",
        &["upstream", "operation"],
    ),
    ("zenml_rotator_config_last_reload_successful", &[]),
    ("zenml_rotator_build_info", &["version"]),
    ("zenml_rotator_insecure_endpoints", &[]),
];

/// Asserts every DESIGN metric is present and no series carries a label outside the bounded
/// set (never a key id, a path or a fingerprint).
fn assert_design_metrics(e: &Exposition) {
    for (name, labels) in DESIGN_METRICS {
        let series: Vec<_> = e.samples.iter().filter(|s| s.name == *name).collect();
        assert!(!series.is_empty(), "{name} is missing: {e:#?}");
        for s in series {
            let mut got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            got.remove("le");
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            assert_eq!(got, want, "labels of {name}: {:?}", s.labels);
        }
    }
    let allowed = [
        "policy",
        "result",
        "stage",
        "upstream",
        "operation",
        "version",
        "le",
        "reason",
        // on_rotated or on_finalized; notify[N] from the policy file: both bounded.
        "hook",
        "sink",
    ];
    for s in &e.samples {
        assert!(s.name.starts_with("zenml_rotator_"), "{}", s.name);
        for k in s.labels.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "unbounded label {k} on {s:?}"
            );
        }
    }
    let build = e.value("zenml_rotator_build_info", &[]).unwrap();
    assert_eq!(build, 1.0);
    assert!(
        e.samples
            .iter()
            .any(|s| s.name == "zenml_rotator_build_info"
                && s.labels["version"] == env!("CARGO_PKG_VERSION"))
    );
}

/// A service account with an API key `default`; returns its name and id.
fn account(prefix: &str) -> (String, uuid::Uuid) {
    let admin = common::zenml_admin();
    let (sa, _key) = block(common::new_service_account_with_key(&admin, prefix));
    (sa.name, sa.id)
}

fn set_active(id: uuid::Uuid, active: bool) {
    block(common::zenml_admin().set_service_account_active(id, active)).unwrap();
}

#[test]
fn run_rotates_a_key_when_it_becomes_due_and_exposes_every_metric() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("daemon-due");
    let zenml = common::zenml();
    let listen = free_addr();
    // every 2m / retain 1m: the smallest cadence validation allows. A 1h safety pass means the
    // second rotation can only come from the timer set at the key's due time.
    let policy = Policy {
        zenml_url: &zenml.url,
        dir: dir.path(),
        listen: &listen,
        keys: &[Key {
            policy: "due",
            service_account: &sa,
        }],
        defaults: "every = \"2m\"\nretain = \"1m\"",
        daemon: "safety_pass = \"1h\"",
        metrics: "",
    }
    .write();
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for(
        "the first rotation (the store is empty)",
        Duration::from_secs(60),
        |e| e.rotations("due") >= 1.0,
    );
    let first = stored_value(dir.path(), "due").unwrap();
    let first_at = daemon
        .metrics()
        .value(
            "zenml_rotator_last_rotation_timestamp_seconds",
            &[("policy", "due")],
        )
        .unwrap();
    let next = daemon
        .metrics()
        .value(
            "zenml_rotator_next_rotation_timestamp_seconds",
            &[("policy", "due")],
        )
        .unwrap();
    assert!(
        (next - first_at - 120.0).abs() <= 2.0,
        "next rotation {next} should be 2 minutes after {first_at}"
    );

    daemon.wait_for(
        "the rotation at the due time",
        Duration::from_secs(150),
        |e| e.rotations("due") >= 2.0,
    );
    let e = daemon.metrics();
    let second_at = e
        .value(
            "zenml_rotator_last_rotation_timestamp_seconds",
            &[("policy", "due")],
        )
        .unwrap();
    assert!(
        second_at - first_at >= 119.0 && second_at - first_at <= 125.0,
        "rotated {}s after the first rotation, expected 120s",
        second_at - first_at
    );
    let second = stored_value(dir.path(), "due").unwrap();
    assert_ne!(fingerprint(&first), fingerprint(&second));
    assert!(accepted(&second), "the stored value must authenticate");
    assert!(journal_entries(dir.path()).is_empty());
    // The first rotation's window (1m) ended before the second: finalized in the same pass.
    assert!(
        daemon.log().contains("rotation finalized"),
        "{}",
        daemon.log()
    );

    assert_design_metrics(&e);
    assert_eq!(
        e.value("zenml_rotator_policy_healthy", &[("policy", "due")]),
        Some(1.0)
    );
    assert_eq!(
        e.value("zenml_rotator_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        e.value("zenml_rotator_rotation_duration_seconds_count", &[]),
        Some(2.0)
    );
    for stage in ["preflight", "rotate", "verify", "store", "finalize"] {
        assert_eq!(
            e.value(
                "zenml_rotator_errors_total",
                &[("policy", "due"), ("stage", stage)]
            ),
            Some(0.0),
            "errors_total exists at zero from the start"
        );
    }
    let retain_until = e
        .value(
            "zenml_rotator_retain_until_timestamp_seconds",
            &[("policy", "due")],
        )
        .unwrap();
    assert!((retain_until - second_at - 60.0).abs() <= 1.0);
    assert!(
        e.value(
            "zenml_rotator_upstream_request_duration_seconds_count",
            &[("upstream", "zenml"), ("operation", "rotate_api_key")]
        )
        .is_some_and(|n| n >= 2.0),
        "{e:#?}"
    );
    assert!(
        e.value(
            "zenml_rotator_upstream_request_duration_seconds_count",
            &[("upstream", "file")]
        )
        .is_some()
    );
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("daemon-prom");
    let listen = free_addr();
    let policy = one_key_policy(dir.path(), &listen, "scraped", &sa);
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("the first rotation", Duration::from_secs(60), |e| {
        e.rotations("scraped") >= 1.0
    });

    let prom_addr = free_addr();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: zenml-rotator\n    static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let mut prom = Spawned::new(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(prom_dir.join("log")).unwrap()),
        "prometheus (Debian package `prometheus`; scripts/test.sh installs it)",
    );

    let query = |q: &str| -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", query_escape(q));
        match http_get(&prom_addr, &path) {
            Some((200, body)) => serde_json::from_str(&body).unwrap(),
            _ => serde_json::Value::Null,
        }
    };
    let end = Instant::now() + Duration::from_secs(60);
    let q = "zenml_rotator_rotations_total{policy=\"scraped\",result=\"success\"}";
    loop {
        let r = query(q);
        if r["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        if Instant::now() > end || prom.exited() {
            panic!(
                "Prometheus never returned {q}: {r}\n--- prometheus log ---\n{}",
                std::fs::read_to_string(prom_dir.join("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = query("up{job=\"zenml-rotator\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    // Every DESIGN metric is queryable, with its labels as scraped.
    for (name, labels) in DESIGN_METRICS {
        let r = query(name);
        let series = r["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!series.is_empty(), "Prometheus has no {name}: {r}");
        for s in series {
            let got: BTreeSet<String> = s["metric"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !["__name__", "job", "instance", "le"].contains(&k.as_str()))
                .cloned()
                .collect();
            let want: BTreeSet<String> = labels.iter().map(|s| s.to_string()).collect();
            assert_eq!(got, want, "{name}: {s}");
        }
    }
    let healthy = query("zenml_rotator_policy_healthy{policy=\"scraped\"}");
    assert_eq!(healthy["data"]["result"][0]["value"][1], "1");
    prom.stop();
}

/// A child process of the test (Prometheus, the Pushgateway), stopped by its PID.
struct Spawned {
    child: std::process::Child,
}

impl Spawned {
    fn new(cmd: &mut std::process::Command, what: &str) -> Spawned {
        match cmd.spawn() {
            Ok(child) => Spawned { child },
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Pushgateway's view: every `zenml_rotator_*` sample it holds, with job/instance/policy.
fn pushed(addr: &str) -> Exposition {
    let (status, body) = http_get(addr, "/metrics").expect("the Pushgateway answers");
    assert_eq!(status, 200);
    let mut e = Exposition::parse(&body);
    e.samples.retain(|s| s.name.starts_with("zenml_rotator_"));
    e
}

#[test]
fn once_pushes_to_a_real_pushgateway_and_writes_the_textfile_and_a_failed_run_keeps_the_last_success()
 {
    let dir = tempfile::tempdir().unwrap();
    let (sa_a, id_a) = account("push-a");
    let (sa_b, _) = account("push-b");
    let zenml = common::zenml();
    let pg_addr = free_addr();
    let mut pg = Spawned::new(
        std::process::Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address={pg_addr}"))
            // Debian's default persists to /var/lib/prometheus: keep this one in memory.
            .arg("--persistence.file=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        "prometheus-pushgateway (Debian package; scripts/test.sh installs it)",
    );
    let end = Instant::now() + Duration::from_secs(20);
    while http_get(&pg_addr, "/-/ready").is_none_or(|(s, _)| s != 200) {
        assert!(
            Instant::now() < end && !pg.exited(),
            "the Pushgateway did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let textfile_dir = dir.path().join("textfile");
    std::fs::create_dir_all(&textfile_dir).unwrap();
    let textfile = textfile_dir.join("zenml_rotator.prom");
    let both = format!(
        "textfile = \"{}\"\npushgateway = \"http://{pg_addr}\"",
        textfile.display()
    );
    let policy_with = |metrics: &str| {
        Policy {
            zenml_url: &zenml.url,
            dir: dir.path(),
            listen: "127.0.0.1:9",
            keys: &[
                Key {
                    policy: "pa",
                    service_account: &sa_a,
                },
                Key {
                    policy: "pb",
                    service_account: &sa_b,
                },
            ],
            defaults: "",
            daemon: "",
            metrics,
        }
        .write()
    };
    let policy = policy_with(&both);
    // What interrupted runs left: this file's temporary files, an hour old, go; another
    // program's in the same directory stay.
    let random = "0123456789abcdef0123456789abcdef";
    let ours = textfile_dir.join(format!(".zenml_rotator.prom.tmp-{random}"));
    let theirs = format!(".node.prom.tmp-{random}");
    for leftover in [ours.clone(), textfile_dir.join(&theirs)] {
        let f = std::fs::File::create(&leftover).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
            .unwrap();
    }
    let mut once = rotator(dir.path());
    once.arg("once")
        .arg("-c")
        .arg(&policy)
        .env("HOSTNAME", "test-host");
    common::run_expect(&mut once, 0);

    let e = pushed(&pg_addr);
    let success = |e: &Exposition, p: &str| {
        e.value(
            "zenml_rotator_last_success_timestamp_seconds",
            &[("policy", p)],
        )
    };
    let first_a = success(&e, "pa").expect("pa's last success was pushed");
    assert!(success(&e, "pb").is_some());
    for s in e.samples.iter() {
        assert_eq!(s.labels["job"], "zenml_rotator");
        assert_eq!(s.labels["instance"], "test-host");
    }
    assert_eq!(e.rotations("pa"), 1.0);
    assert_design_metrics(&Exposition {
        samples: e
            .samples
            .iter()
            .filter(|s| s.name != "zenml_rotator_config_last_reload_success_timestamp_seconds")
            .map(|s| {
                let mut s = s.clone();
                s.labels.remove("job");
                s.labels.remove("instance");
                s
            })
            .filter(|s| !s.name.starts_with("push_"))
            .collect(),
    });

    // The textfile: written whole (no temp file left, and the old one of ours gone), readable
    // by node-exporter, and the same series as pushed.
    let mut names: Vec<_> = std::fs::read_dir(&textfile_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [theirs.as_str(), "zenml_rotator.prom"]);
    assert!(!ours.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&textfile).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let file = Exposition::parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_same_series(&file, &e);

    // Policy pa now fails (its service account is deactivated) while pb passes. Each export
    // alone: the Pushgateway's groups, then the textfile's carry-over.
    set_active(id_a, false);
    std::thread::sleep(Duration::from_millis(1100));
    policy_with(&format!("pushgateway = \"http://{pg_addr}\""));
    common::run_expect(&mut once, 1);
    let e2 = pushed(&pg_addr);
    assert_eq!(
        success(&e2, "pa"),
        Some(first_a),
        "a failed run must not erase the last success"
    );
    assert!(success(&e2, "pb").unwrap() > success(&e, "pb").unwrap());
    assert_eq!(
        e2.value("zenml_rotator_policy_healthy", &[("policy", "pa")]),
        Some(0.0)
    );
    assert_eq!(
        e2.value(
            "zenml_rotator_errors_total",
            &[("policy", "pa"), ("stage", "preflight")]
        ),
        Some(1.0)
    );

    policy_with(&format!("textfile = \"{}\"", textfile.display()));
    common::run_expect(&mut once, 1);
    let file2 = Exposition::parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_eq!(success(&file2, "pa"), Some(first_a));
    assert_eq!(
        file2.value("zenml_rotator_policy_healthy", &[("policy", "pa")]),
        Some(0.0)
    );
    assert!(success(&file2, "pb").unwrap() >= success(&e2, "pb").unwrap());
    pg.stop();
}

/// Each series of the textfile is in the Pushgateway with the same value (which adds job,
/// instance and push_time series of its own).
fn assert_same_series(file: &Exposition, pushed: &Exposition) {
    for s in &file.samples {
        let found = pushed.samples.iter().any(|p| {
            p.name == s.name
                && p.value == s.value
                && s.labels.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        });
        assert!(
            found,
            "textfile series {s:?} is not in the Pushgateway: {pushed:#?}"
        );
    }
}

#[test]
fn sighup_with_a_broken_or_writable_file_keeps_the_running_policy_and_a_valid_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (sa_a, _) = account("hup-a");
    let (sa_b, _) = account("hup-b");
    let (sa_c, _) = account("hup-c");
    // Policy "late" names a service account that does not exist yet.
    let sa_late = common::unique("hup-late");
    let zenml = common::zenml();
    let listen = free_addr();
    let daemon_settings = "safety_pass = \"1s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"";
    let write = |keys: &[Key]| {
        Policy {
            zenml_url: &zenml.url,
            dir: dir.path(),
            listen: &listen,
            keys,
            defaults: "",
            daemon: daemon_settings,
            metrics: "",
        }
        .write()
    };
    let policy = write(&[
        Key {
            policy: "a",
            service_account: &sa_a,
        },
        Key {
            policy: "b",
            service_account: &sa_b,
        },
        Key {
            policy: "late",
            service_account: &sa_late,
        },
    ]);
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("a and b rotated", Duration::from_secs(60), |e| {
        e.rotations("a") >= 1.0 && e.rotations("b") >= 1.0
    });

    // A broken file: rejected whole, the running policy stays.
    std::fs::write(&policy, "[zenml\nurl = ").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("the reload to fail", Duration::from_secs(20), |e| {
        e.value("zenml_rotator_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert!(daemon.log().contains("reload rejected"), "{}", daemon.log());
    // The old policy still runs: the account "late" appears and gets rotated.
    let admin = common::zenml_admin();
    let sa = block(admin.create_service_account(&sa_late, "test")).unwrap();
    block(admin.create_api_key(sa.id, "default", "test")).unwrap();
    daemon.wait_for(
        "the running policy to rotate late",
        Duration::from_secs(30),
        |e| e.rotations("late") >= 1.0,
    );
    assert!(accepted(&stored_value(dir.path(), "late").unwrap()));
    assert_eq!(daemon.get("/readyz").map(|r| r.0), Some(200));

    // A valid file: b and late go, c comes; their series go with them.
    write(&[
        Key {
            policy: "a",
            service_account: &sa_a,
        },
        Key {
            policy: "c",
            service_account: &sa_c,
        },
    ]);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("the reload to succeed", Duration::from_secs(20), |e| {
        e.value("zenml_rotator_config_last_reload_successful", &[]) == Some(1.0)
    });
    daemon.wait_for("c rotated", Duration::from_secs(30), |e| {
        e.rotations("c") >= 1.0
    });
    let e = daemon.metrics();
    assert!(
        !e.has_policy("b"),
        "series of removed policy b remain: {e:#?}"
    );
    assert!(
        !e.has_policy("late"),
        "series of removed policy late remain"
    );
    assert!(e.has_policy("a"));
    assert_eq!(e.rotations("a"), 1.0, "a reload does not rotate again");

    // A valid file that other users may write: refused like a broken one, the policy stays.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("the reload to be refused", Duration::from_secs(20), |e| {
        e.value("zenml_rotator_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert!(
        daemon
            .log()
            .contains("permissions 0666 for the policy file are too open"),
        "{}",
        daemon.log()
    );
    let e = daemon.metrics();
    assert!(
        e.has_policy("a") && e.has_policy("c"),
        "the running policy stays"
    );
    assert_eq!(daemon.get("/readyz").map(|r| r.0), Some(200));
}

/// A cleartext endpoint allowed with `allow_insecure_http` is said at every load: by every
/// command, at the daemon's start and at each of its reloads; `insecure_endpoints` counts what
/// the running policy allows.
#[test]
fn an_allowed_cleartext_endpoint_is_logged_at_every_load_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let zenml = common::zenml();
    let listen = free_addr();
    let write = |metrics: &str| {
        Policy {
            zenml_url: &zenml.url,
            dir: dir.path(),
            listen: &listen,
            keys: &[],
            defaults: "",
            daemon: "",
            metrics,
        }
        .write()
    };
    let policy = write(
        "pushgateway = \"http://pushgateway.example.invalid:9091\"\nallow_insecure_http = true",
    );
    let warning = "metrics.pushgateway: warning: cleartext http:// to a host that is not loopback, \
                   allowed by `allow_insecure_http`: anyone on the network path can read and \
                   change what is sent there";
    for args in [&["plan"][..], &["once", "--dry-run"], &["inventory"]] {
        let mut cmd = rotator(dir.path());
        cmd.args(args).arg("-c").arg(&policy);
        let out = common::run_expect(&mut cmd, 0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches(warning).count(),
            1,
            "{}",
            common::describe(&cmd, &out)
        );
        assert!(
            stderr.contains(&format!("{}:", policy.display())),
            "the warning names the file"
        );
    }

    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("the start's count", Duration::from_secs(20), |e| {
        e.value("zenml_rotator_insecure_endpoints", &[]) == Some(1.0)
    });
    let warnings = || daemon.log().matches(warning).count();
    assert_eq!(warnings(), 1, "{}", daemon.log());
    daemon.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(20);
    while warnings() < 2 {
        assert!(Instant::now() < end, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Gone from the file: the count follows the running policy, and nothing is said any more.
    write("");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("the reload's count", Duration::from_secs(20), |e| {
        e.value("zenml_rotator_insecure_endpoints", &[]) == Some(0.0)
    });
    assert_eq!(warnings(), 2, "{}", daemon.log());
}

/// `after_rotate` runs while the new value exists only in ZenML and the journal: the signal lands
/// in the middle of the rotation.
#[test]
fn sigterm_during_a_rotation_lets_it_finish_and_starts_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let (sa1, _) = account("term-1");
    let (sa2, _) = account("term-2");
    let zenml = common::zenml();
    let listen = free_addr();
    let policy = Policy {
        zenml_url: &zenml.url,
        dir: dir.path(),
        listen: &listen,
        keys: &[
            Key {
                policy: "first",
                service_account: &sa1,
            },
            Key {
                policy: "second",
                service_account: &sa2,
            },
        ],
        defaults: "concurrency = 1",
        daemon: "",
        metrics: "",
    }
    .write();
    let mut daemon = Daemon::start_with(
        dir.path(),
        &policy,
        &listen,
        &[("ZR_FAULT_EXEC", "after_rotate:kill -TERM $PPID; sleep 1")],
    );
    let status = daemon.wait_exit(Duration::from_secs(60));
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("SIGTERM: waiting for the rotations in flight"),
        "{log}"
    );
    let stored = stored_value(dir.path(), "first").expect("the rotation in flight was stored");
    assert!(accepted(&stored));
    assert!(journal_entries(dir.path()).is_empty(), "{log}");
    assert!(
        stored_value(dir.path(), "second").is_none(),
        "no rotation starts after SIGTERM: {log}"
    );
}

#[test]
fn sigterm_past_the_shutdown_timeout_leaves_the_journal_and_once_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("term-slow");
    let marker = dir.path().join("slow");
    // Once the rotate call is done, every request to ZenML hangs 20 s: the verification of the
    // new value outlives the 1 s shutdown timeout.
    let proxy = Proxy::start(Some((marker.clone(), Duration::from_secs(20))));
    let zenml = common::zenml();
    let listen = free_addr();
    let keys = [Key {
        policy: "slow",
        service_account: &sa,
    }];
    let policy = Policy {
        zenml_url: &proxy.url,
        dir: dir.path(),
        listen: &listen,
        keys: &keys,
        defaults: "",
        daemon: "shutdown_timeout = \"1s\"",
        metrics: "",
    }
    .write();
    let hook = format!("after_rotate:touch {}; kill -TERM $PPID", marker.display());
    let mut daemon = Daemon::start_with(dir.path(), &policy, &listen, &[("ZR_FAULT_EXEC", &hook)]);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("shutdown timeout"), "{log}");
    let entries = journal_entries(dir.path());
    let entry = entries
        .get("slow")
        .expect("the rotation in flight is journaled");
    let journaled = entry.fingerprint.clone().unwrap();
    assert!(stored_value(dir.path(), "slow").is_none());

    // The next start replays it (straight to ZenML this time).
    let direct = Policy {
        zenml_url: &zenml.url,
        dir: dir.path(),
        listen: &listen,
        keys: &keys,
        defaults: "",
        daemon: "",
        metrics: "",
    }
    .write();
    let mut once = rotator(dir.path());
    once.arg("once").arg("-c").arg(&direct);
    common::run_expect(&mut once, 0);
    let stored = stored_value(dir.path(), "slow").unwrap();
    assert_eq!(fingerprint(&stored), journaled);
    assert!(accepted(&stored));
    assert!(journal_entries(dir.path()).is_empty());
}

#[test]
fn sd_notify_ready_comes_after_the_listener_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("notify");
    let listen = free_addr();
    let policy = one_key_policy(dir.path(), &listen, "n", &sa);
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Daemon::start_with(
        dir.path(),
        &policy,
        &listen,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message: {e}\n{}", daemon.log()));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Right at READY=1 the endpoints answer: no retry here.
    let health = http_get(&listen, "/healthz");
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert_eq!(health.map(|h| h.0), Some(200), "{}", daemon.log());
    daemon.stop();
    let mut rest = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
}

/// The core size limit of a process, soft and hard, as `/proc/<pid>/limits` gives it.
fn core_limit(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit in:\n{limits}"));
    let mut fields = line.split_whitespace();
    let mut next = || fields.next().unwrap_or_default().to_owned();
    (next(), next())
}

/// A dump of the daemon would hold key values: started where core dumps are allowed (as from a
/// shell with `ulimit -c unlimited`), it turns them off for itself, soft and hard limit, so
/// nothing it runs later (hooks inherit the limit) can turn them on again.
#[test]
fn the_daemon_turns_core_dumps_off() {
    let allowed = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct; this test's process (and its children) only.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &allowed) };
    assert_eq!(
        raised, 0,
        "the test needs to allow core dumps first (run as root, or with a hard limit of unlimited)"
    );
    let own = core_limit(std::process::id() as i32);
    assert_eq!(own, ("unlimited".to_owned(), "unlimited".to_owned()));

    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("core");
    let listen = free_addr();
    let policy = one_key_policy(dir.path(), &listen, "core", &sa);
    let mut daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("the first pass", Duration::from_secs(60), |e| {
        e.rotations("core") >= 1.0
    });
    assert_eq!(
        core_limit(daemon.pid()),
        ("0".to_owned(), "0".to_owned()),
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.log().contains("cannot turn core dumps off"),
        "{}",
        daemon.log()
    );
    daemon.stop();
}

#[test]
fn readyz_waits_for_a_successful_pass_and_fails_while_zenml_is_unreachable() {
    let (sa, _) = account("ready");
    // Unreachable: nothing listens on the policy's ZenML address.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://{}", free_addr());
    let listen = free_addr();
    let keys = [Key {
        policy: "r",
        service_account: &sa,
    }];
    let policy = Policy {
        zenml_url: &nowhere,
        dir: dir.path(),
        listen: &listen,
        keys: &keys,
        defaults: "",
        daemon: "",
        metrics: "",
    }
    .write();
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("a failed pass", Duration::from_secs(60), |e| {
        e.value(
            "zenml_rotator_errors_total",
            &[("policy", "r"), ("stage", "preflight")],
        ) >= Some(1.0)
    });
    assert_eq!(daemon.get("/healthz").map(|r| r.0), Some(200));
    let (status, body) = daemon.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ZenML was not reachable"), "{body}");
    drop(daemon);

    // Reachable, through a proxy that holds the first pass back: 503 until it ends, then 200.
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(None);
    proxy
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let listen = free_addr();
    let policy = Policy {
        zenml_url: &proxy.url,
        dir: dir.path(),
        listen: &listen,
        keys: &keys,
        defaults: "",
        daemon: "",
        metrics: "",
    }
    .write();
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    let end = Instant::now() + Duration::from_secs(10);
    let before = loop {
        if let Some(r) = daemon.get("/readyz") {
            break r;
        }
        assert!(Instant::now() < end, "no /readyz: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(before.0, 503, "{before:?}");
    assert!(before.1.contains("first pass"), "{before:?}");
    assert_eq!(daemon.get("/healthz").map(|r| r.0), Some(200));
    proxy.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(60);
    while daemon.get("/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < end, "never ready: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(daemon.metrics().rotations("r"), 1.0);
}

#[test]
fn an_idle_daemon_uses_no_cpu_between_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, _) = account("idle");
    let listen = free_addr();
    let policy = one_key_policy(dir.path(), &listen, "idle", &sa);
    let daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("the first pass", Duration::from_secs(60), |e| {
        e.rotations("idle") >= 1.0
    });
    // The pass right after a rotation comes 1 s later; let it and the blocking pool settle.
    std::thread::sleep(Duration::from_secs(3));
    let pid = daemon.pid();
    let passes = || daemon.log().matches("pass starting").count();
    let (cpu0, wake0, passes0, t0) = (cpu_ticks(pid), wakeups(pid), passes(), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let (cpu1, wake1, span) = (cpu_ticks(pid), wakeups(pid), t0.elapsed());
    let ticks = cpu1 - cpu0;
    let wakes = wake1.saturating_sub(wake0);
    eprintln!("idle for {span:?}: {ticks} clock ticks of CPU, {wakes} voluntary context switches");
    // Generous: 0.5 % of one core (10 ticks of 10 ms in 20 s); the measured figure is 0.
    assert!(ticks <= 10, "{ticks} ticks of CPU while idle for {span:?}");
    // A 500 ms ticker would show ~40 here; a sleeping process shows ~0.
    assert!(wakes <= 10, "{wakes} wake-ups while idle for {span:?}");
    assert_eq!(passes(), passes0, "no pass runs while nothing is due");
}

#[test]
fn a_failing_key_backs_off_without_hammering_zenml_while_the_others_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (bad_sa, bad_id) = account("backoff-bad");
    let (good_sa, good_id) = account("backoff-good");
    let late_sa = common::unique("backoff-late");
    set_active(bad_id, false);
    let proxy = Proxy::start(None);
    let listen = free_addr();
    let policy = Policy {
        zenml_url: &proxy.url,
        dir: dir.path(),
        listen: &listen,
        keys: &[
            Key {
                policy: "bad",
                service_account: &bad_sa,
            },
            Key {
                policy: "good",
                service_account: &good_sa,
            },
            Key {
                policy: "late",
                service_account: &late_sa,
            },
        ],
        defaults: "",
        daemon: "safety_pass = \"1s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"",
        metrics: "",
    }
    .write();
    let started = Instant::now();
    let mut daemon = Daemon::start(dir.path(), &policy, &listen);
    daemon.wait_for("good rotated", Duration::from_secs(60), |e| {
        e.rotations("good") >= 1.0
    });
    // Halfway through, the account of "late" appears: it must rotate although "bad" still fails.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    let admin = common::zenml_admin();
    let sa = block(admin.create_service_account(&late_sa, "test")).unwrap();
    block(admin.create_api_key(sa.id, "default", "test")).unwrap();
    daemon.wait_for("late rotated", Duration::from_secs(15), |e| {
        e.rotations("late") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(20).saturating_sub(started.elapsed()));
    // On a loaded machine the fourth attempt may still be under way: wait for its error to be
    // counted (the bound below is computed over the whole span, this wait included).
    let e = daemon.wait_for(
        "four failed attempts at bad",
        Duration::from_secs(20),
        |e| {
            e.value(
                "zenml_rotator_errors_total",
                &[("policy", "bad"), ("stage", "preflight")],
            )
            .is_some_and(|n| n >= 4.0)
        },
    );
    assert_eq!(daemon.stop().code(), Some(0));
    let span = started.elapsed();

    // Each attempt at "bad" is one GET of its key (the account listing is shared by all keys).
    let per_attempt = 1;
    let policy = BackoffPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(4),
    };
    let bound = policy.max_attempts_within(span) as usize * per_attempt;
    let bad = proxy.count(&format!("/service_accounts/{bad_id}/"));
    let good = proxy.count(&format!("/service_accounts/{good_id}/"));
    eprintln!(
        "over {span:?}: {bad} requests for the failing key (bound {bound}), {good} for the healthy one, {} in all",
        proxy.requests().len()
    );
    assert!(
        bad <= bound,
        "{bad} requests for the failing key, bound {bound}"
    );
    assert!(bad >= 4, "the failing key is retried: {bad}");
    // With a 1 s safety pass the healthy key is looked at about every second: not blocked.
    assert!(
        good >= 2 * bad,
        "healthy key looked at {good} times, failing {bad}"
    );
    assert!(
        e.value(
            "zenml_rotator_errors_total",
            &[("policy", "bad"), ("stage", "preflight")]
        )
        .is_some_and(|n| n >= 4.0 && n as usize <= bound)
    );
    assert_eq!(
        e.value("zenml_rotator_policy_healthy", &[("policy", "bad")]),
        Some(0.0)
    );
    assert_eq!(
        e.value("zenml_rotator_policy_healthy", &[("policy", "good")]),
        Some(1.0)
    );
    assert!(accepted(&stored_value(dir.path(), "late").unwrap()));
}
