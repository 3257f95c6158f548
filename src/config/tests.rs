//! Defaults, inheritance and the shape of errors, on in-memory files with a fixed clock.
//! The one-fixture-per-rule checks of the command line live in tests/config_check.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::validate::{Context, parse};
use super::*;

const ZENML: &str = r#"
[zenml]
url = "https://zenml.example.com/"
api_key_env = "ZENML_STORE_API_KEY"
"#;

fn ctx() -> Context {
    Context {
        now: DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap(),
        state_directory: None,
    }
}

fn ok(src: &str) -> Config {
    ok_in(src, &ctx())
}

fn ok_in(src: &str, ctx: &Context) -> Config {
    match parse(src, Path::new("policy.toml"), ctx) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid file, got:\n{e}\n--- source ---\n{src}"),
    }
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(src, Path::new("policy.toml"), &ctx()) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

#[test]
fn a_minimal_file_gets_every_default() {
    let c = ok(&format!(
        "{ZENML}\n[[key]]\nname = \"t\"\nservice_account = \"sa\"\napi_key = \"default\"\npath = \"t.env\"\n"
    ));
    assert_eq!(c.source, PathBuf::from("policy.toml"));
    assert_eq!(c.zenml.url, "https://zenml.example.com");
    assert_eq!(
        c.zenml.auth,
        ZenmlAuth::ApiKey(SecretSource::Env("ZENML_STORE_API_KEY".into()))
    );
    assert_eq!(c.zenml.timeout, Duration::from_secs(30));
    assert_eq!(c.zenml.ca_file, None);
    assert_eq!(c.concurrency, 4);
    assert_eq!(c.metrics.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(c.metrics.textfile, None);
    assert_eq!(c.metrics.pushgateway, None);
    assert_eq!(c.state.dir, PathBuf::from("/var/lib/zenml-rotator"));
    assert_eq!(c.daemon, DaemonSettings::default());
    assert_eq!(c.daemon.safety_pass, mins(5));
    assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(120));
    assert_eq!(c.daemon.backoff_initial, Duration::from_secs(30));
    assert_eq!(c.daemon.backoff_max, mins(60));
    assert_eq!(c.hygiene, None);
    // No [stores]: the embedded file store under the state dir.
    assert_eq!(c.stores.len(), 1);
    assert_eq!(
        c.stores.get("file"),
        Some(&StoreSettings::File(FileSettings {
            dir: PathBuf::from("/var/lib/zenml-rotator/keys")
        }))
    );
    let k = &c.keys[0];
    assert_eq!(
        k,
        &KeyPolicy {
            name: "t".into(),
            service_account: "sa".into(),
            api_key: "default".into(),
            store: "file".into(),
            path: "t.env".into(),
            strategy: Strategy::Rotate,
            cadence: Cadence::Every(days(30)),
            window: None,
            jitter: None,
            retain: mins(60),
            retire_previous: false,
            delete_after: None,
            hooks: Default::default(),
        }
    );
    assert_eq!(c.key("t"), Some(k));
    assert_eq!(c.key("nope"), None);
}

#[test]
fn state_dir_defaults_to_systemds_state_directory() {
    let ctx = Context {
        state_directory: Some("/var/lib/private/zr:/var/lib/other".into()),
        ..ctx()
    };
    let c = ok_in(ZENML, &ctx);
    assert_eq!(c.state.dir, PathBuf::from("/var/lib/private/zr"));
    assert_eq!(
        c.stores.get("file"),
        Some(&StoreSettings::File(FileSettings {
            dir: PathBuf::from("/var/lib/private/zr/keys")
        }))
    );
    // An explicit dir wins over the environment.
    let c = ok_in(&format!("{ZENML}\n[state]\ndir = \"/srv/zr\"\n"), &ctx);
    assert_eq!(c.state.dir, PathBuf::from("/srv/zr"));
}

const TWO_STORES: &str = r#"
[stores.a]
kind = "file"
dir = "/srv/a"

[stores.b]
kind = "aws-secrets-manager"
"#;

#[test]
fn a_key_overrides_each_default() {
    let c = ok(&format!(
        r#"{ZENML}
[defaults]
every = "10d"
retain = "2h"
strategy = "replace"
store = "a"
jitter = "5m"
window = {{ schedule = "0 2 * * *", duration = "2h" }}
timezone = "Europe/Berlin"
delete_after = "7d"
concurrency = 2
{TWO_STORES}
[[key]]
name = "inherits"
service_account = "sa1"
api_key = "k"
path = "one"

[[key]]
name = "overrides"
service_account = "sa2"
api_key = "k"
path = "two"
every = "20d"
retain = "3m"
strategy = "rotate"
store = "b"
jitter = "1m"
window = {{ schedule = "30 4 * * *", duration = "1h" }}
timezone = "UTC"
retire_previous = true
"#
    ));
    assert_eq!(c.concurrency, 2);
    let berlin = crate::cron::parse_timezone("Europe/Berlin").unwrap();
    let inherits = c.key("inherits").unwrap();
    assert_eq!(inherits.cadence, Cadence::Every(days(10)));
    assert_eq!(inherits.retain, mins(120));
    assert_eq!(inherits.strategy, Strategy::Replace);
    assert_eq!(inherits.store, "a");
    assert_eq!(inherits.jitter, Some(mins(5)));
    assert_eq!(
        inherits.window,
        Some(MaintenanceWindow {
            opens: CronSpec {
                expr: "0 2 * * *".into(),
                timezone: berlin
            },
            duration: mins(120),
        })
    );
    assert_eq!(inherits.delete_after, Some(days(7)));
    assert!(!inherits.retire_previous);

    let overrides = c.key("overrides").unwrap();
    assert_eq!(overrides.cadence, Cadence::Every(days(20)));
    assert_eq!(overrides.retain, mins(3));
    assert_eq!(overrides.strategy, Strategy::Rotate);
    assert_eq!(overrides.store, "b");
    assert_eq!(overrides.jitter, Some(mins(1)));
    assert_eq!(
        overrides.window,
        Some(MaintenanceWindow {
            opens: CronSpec {
                expr: "30 4 * * *".into(),
                timezone: chrono_tz::Tz::UTC
            },
            duration: mins(60),
        })
    );
    assert!(overrides.retire_previous);
    // delete_after from [defaults] is for "replace" keys; this one rotates.
    assert_eq!(overrides.delete_after, None);
}

#[test]
fn the_most_specific_cadence_wins_and_schedules_take_the_keys_time_zone() {
    let c = ok(&format!(
        r#"{ZENML}
[defaults]
schedule = "0 3 * * SUN"
timezone = "Europe/Berlin"

[[key]]
name = "scheduled"
service_account = "sa1"
api_key = "k"
path = "one"

[[key]]
name = "own-zone"
service_account = "sa2"
api_key = "k"
path = "two"
timezone = "America/New_York"

[[key]]
name = "every"
service_account = "sa3"
api_key = "k"
path = "three"
every = "7d"
"#
    ));
    let tz = |n| crate::cron::parse_timezone(n).unwrap();
    assert_eq!(
        c.key("scheduled").unwrap().cadence,
        Cadence::Schedule(CronSpec {
            expr: "0 3 * * SUN".into(),
            timezone: tz("Europe/Berlin")
        })
    );
    assert_eq!(
        c.key("own-zone").unwrap().cadence,
        Cadence::Schedule(CronSpec {
            expr: "0 3 * * SUN".into(),
            timezone: tz("America/New_York")
        })
    );
    assert_eq!(c.key("every").unwrap().cadence, Cadence::Every(days(7)));
}

#[test]
fn strategy_specific_defaults_apply_only_to_their_strategy() {
    let c = ok(&format!(
        r#"{ZENML}
[defaults]
retire_previous = true
delete_after = "3d"

[[key]]
name = "rotates"
service_account = "sa1"
api_key = "k"
path = "one"

[[key]]
name = "replaces"
service_account = "sa2"
api_key = "k"
path = "two"
strategy = "replace"
retain = "90s"
"#
    ));
    let r = c.key("rotates").unwrap();
    assert!(r.retire_previous);
    assert_eq!(r.delete_after, None);
    let r = c.key("replaces").unwrap();
    assert!(!r.retire_previous);
    assert_eq!(r.delete_after, Some(days(3)));
    // Any duration under "replace": ZenML's minutes apply to in-place rotation only.
    assert_eq!(r.retain, Duration::from_secs(90));
}

#[test]
fn store_settings_and_their_defaults() {
    let c = ok(&format!(
        r#"{ZENML}
[stores.token]
kind = "vault"
address = "https://vault.example.com:8200/"
mount = "/kv/"
namespace = "team-a/"
auth = {{ method = "token", token_file = "/run/token" }}

[stores.approle]
kind = "vault"
address = "http://127.0.0.1:8200"
timeout = "5s"
ca_file = "/etc/ca.pem"
auth = {{ method = "approle", role_id_env = "ROLE", secret_id_file = "/run/sid" }}

[stores.k8s]
kind = "vault"
address = "https://vault:8200"
auth = {{ method = "kubernetes", role = "zr" }}

[stores.aws]
kind = "aws-secrets-manager"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:5000/"
kms_key_id = "alias/zr"
"#
    ));
    let vault = |name: &str| match c.stores.get(name) {
        Some(StoreSettings::Vault(v)) => v.clone(),
        other => panic!("{name}: {other:?}"),
    };
    let t = vault("token");
    assert_eq!(t.address, "https://vault.example.com:8200");
    assert_eq!(t.mount, "kv");
    assert_eq!(t.namespace.as_deref(), Some("team-a"));
    assert_eq!(t.timeout, Duration::from_secs(30));
    assert_eq!(
        t.auth,
        VaultAuth::Token(SecretSource::File("/run/token".into()))
    );
    let a = vault("approle");
    assert_eq!(a.mount, "secret");
    assert_eq!(a.timeout, Duration::from_secs(5));
    assert_eq!(a.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(
        a.auth,
        VaultAuth::AppRole {
            role_id: SecretSource::Env("ROLE".into()),
            secret_id: SecretSource::File("/run/sid".into()),
            mount: "approle".into(),
        }
    );
    assert_eq!(
        vault("k8s").auth,
        VaultAuth::Kubernetes {
            role: "zr".into(),
            jwt_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            mount: "kubernetes".into(),
        }
    );
    assert_eq!(
        c.stores.get("aws"),
        Some(&StoreSettings::Aws(AwsSettings {
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            kms_key_id: Some("alias/zr".into()),
            timeout: Duration::from_secs(30),
            claims: "zenml-rotator/claims".into(),
        }))
    );
    // Stores defined: no implicit one.
    assert!(!c.stores.contains_key("file"));
}

#[test]
fn zenml_password_login_and_hygiene() {
    let c = ok(r#"
[zenml]
url = "http://127.0.0.1:8080"
username = "rotator"
password_file = "/run/pw"
timeout = "10s"
ca_file = "/etc/ca.pem"

[metrics]
listen = "[::]:9000"
textfile = "/var/lib/node_exporter/zr.prom"
pushgateway = "https://pushgateway:9091/"

[hygiene]
deactivate_unused_after = "90d"
report_unmanaged = false
exclude_service_accounts = ["break-glass"]
"#);
    assert_eq!(
        c.zenml.auth,
        ZenmlAuth::Password {
            username: "rotator".into(),
            password: SecretSource::File("/run/pw".into())
        }
    );
    assert_eq!(c.zenml.timeout, Duration::from_secs(10));
    assert_eq!(c.metrics.listen, "[::]:9000".parse().unwrap());
    assert_eq!(
        c.metrics.pushgateway.as_deref(),
        Some("https://pushgateway:9091")
    );
    assert_eq!(
        c.hygiene,
        Some(HygieneSettings {
            deactivate_unused_after: Some(days(90)),
            report_unmanaged: false,
            report_service_accounts_without_keys: true,
            exclude_service_accounts: vec!["break-glass".into()],
        })
    );
    // An empty [hygiene] opts in with the defaults.
    let c = ok(&format!("{ZENML}\n[hygiene]\n"));
    let h = c.hygiene.unwrap();
    assert!(h.report_unmanaged && h.report_service_accounts_without_keys);
    assert_eq!(h.deactivate_unused_after, None);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let d = errors(
        r#"[zenml]
url = "ftp://zenml"
api_key_env = "K"

[defaults]
concurrency = 0

[[key]]
name = "a"
service_account = "sa"
api_key = "k"
path = "a"
retain = "61s"
"#,
    );
    let got: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "policy.toml:2:7: zenml.url: URL scheme must be http or https, not \"ftp\"",
            "policy.toml:6:15: defaults.concurrency: must be at least 1 (keys rotated at once)",
            "policy.toml:13:10: key[0].retain: retain (1m1s) must be a whole number of minutes under strategy \"rotate\" (ZenML's unit), e.g. \"2m\"",
        ]
    );
    let whole = ConfigError::Invalid(d).to_string();
    assert_eq!(whole.lines().count(), 3);
}

#[test]
fn semantic_checks_wait_for_a_file_that_parses() {
    // `every` is bad too, but a syntax error stops before any rule runs.
    let d = errors(&format!(
        "{ZENML}\n[[key]]\nname = \"a\"\nevery = \"1s\"\nretain = 5m\n"
    ));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].line, d[0].column, d[0].field.as_str()),
        (9, 10, "key[0].retain")
    );
}

#[test]
fn an_error_made_in_defaults_is_reported_once() {
    let key = |n: u32| {
        format!(
            "\n[[key]]\nname = \"k{n}\"\nservice_account = \"sa{n}\"\napi_key = \"k\"\npath = \"p{n}\"\n"
        )
    };
    let d = errors(&format!(
        "{ZENML}\n[defaults]\nevery = \"1h\"\nretain = \"2h\"\n{}{}{}",
        key(1),
        key(2),
        key(3)
    ));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, "defaults.every");
    // A key that changes one side of the combination gets its own report.
    let d = errors(&format!(
        "{ZENML}\n[defaults]\nevery = \"2h\"\n{}[[key]]\nname = \"x\"\nservice_account = \"x\"\napi_key = \"k\"\npath = \"x\"\nretain = \"3h\"\n",
        key(1)
    ));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, "key[1].retain");
}

#[test]
fn a_schedule_is_checked_against_dst_in_its_time_zone() {
    // In Berlin 02:30 happens twice on the autumn day and not at all on the spring day. A daily
    // schedule fires once a day through both (gaps of 23h to 25h), so a 22h retain fits.
    let c = ok(&format!(
        "{ZENML}\n[[key]]\nname = \"a\"\nservice_account = \"a\"\napi_key = \"k\"\npath = \"a\"\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nretain = \"22h\"\n"
    ));
    assert_eq!(c.keys.len(), 1);
    // Hourly in any zone is an hour apart: a 2h retain cannot fit.
    let d = errors(&format!(
        "{ZENML}\n[[key]]\nname = \"a\"\nservice_account = \"a\"\napi_key = \"k\"\npath = \"a\"\nschedule = \"0 * * * *\"\ntimezone = \"Asia/Tokyo\"\nretain = \"2h\"\n"
    ));
    assert_eq!(d[0].field, "key[0].schedule");
}

#[test]
fn the_example_file_is_valid() {
    let src = include_str!("../../config.example.toml");
    let c = ok(src);
    assert_eq!(c.keys.len(), 3);
    assert_eq!(
        c.stores.keys().map(String::as_str).collect::<Vec<_>>(),
        ["aws", "local", "vault"]
    );
    assert_eq!(c.key("serving").unwrap().strategy, Strategy::Replace);
    assert!(matches!(
        c.key("batch").unwrap().cadence,
        Cadence::Schedule(_)
    ));
}

#[test]
fn a_key_with_several_problems_gets_all_of_them() {
    let d = errors(&format!(
        "{ZENML}\n[[key]]\nname = \"a\"\nservice_account = \"a\"\napi_key = \"k\"\nstrategy = \"swap\"\nretain = \"soon\"\npath = \"../a\"\n"
    ));
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["key[0].strategy", "key[0].retain", "key[0].path"]);
}

#[test]
fn notify_tables_and_hooks_get_their_defaults() {
    use crate::config::{Hook, HookStdin, NoticeKind, NotifyTarget, WebhookFormat};
    let src = r#"
[zenml]
url = "https://zenml.example.com"
api_key_env = "ZENML_STORE_API_KEY"

[[notify]]
url = "https://hooks.example.com/zenml/"

[[notify]]
path = "audit.jsonl"

[[notify]]
url = "http://127.0.0.1:8080/h"
format = "slack"
events = ["revoked", "rotated"]
secret_file = "hook-secret"

[[key]]
name = "t"
service_account = "sa"
api_key = "default"
path = "t.env"
on_rotated = { command = ["/usr/bin/true", "x"] }
on_finalized = { command = ["/bin/sh"], timeout = "5s", stdin = "payload" }
"#;
    let c = Config::parse(src, Path::new("t.toml")).unwrap();
    let labels: Vec<&str> = c.notify.iter().map(|n| n.label.as_str()).collect();
    assert_eq!(labels, ["notify[0]", "notify[1]", "notify[2]"]);
    assert_eq!(
        c.notify[0].events,
        [NoticeKind::Failed, NoticeKind::Blocked]
    );
    assert_eq!(
        c.notify[0].target,
        NotifyTarget::Webhook {
            url: "https://hooks.example.com/zenml".into(),
            format: WebhookFormat::Json,
            secret: None,
        }
    );
    assert_eq!(c.notify[1].events, NoticeKind::ALL);
    assert!(matches!(c.notify[1].target, NotifyTarget::Audit { .. }));
    // In NoticeKind::ALL order, whatever the file's order.
    assert_eq!(
        c.notify[2].events,
        [NoticeKind::Rotated, NoticeKind::Revoked]
    );
    assert!(matches!(
        c.notify[2].target,
        NotifyTarget::Webhook {
            format: WebhookFormat::Slack,
            secret: Some(_),
            ..
        }
    ));
    let hooks = &c.keys[0].hooks;
    assert_eq!(
        hooks.on_rotated,
        Some(Hook {
            command: vec!["/usr/bin/true".into(), "x".into()],
            timeout: Duration::from_secs(60),
            stdin: HookStdin::None,
        })
    );
    assert_eq!(
        hooks.on_finalized.as_ref().map(|h| (h.timeout, h.stdin)),
        Some((Duration::from_secs(5), HookStdin::Payload))
    );
}

#[test]
fn a_mount_a_url_would_read_otherwise_is_refused() {
    for (mount, auth_mount) in [
        ("kv#1", "approle"),
        ("kv", "app?role"),
        ("a/../b", "approle"),
        ("kv", "team//approle"),
        ("kv", "app%2Frole"),
        ("kv", "."),
    ] {
        let src = format!(
            r#"{ZENML}
[stores.v]
kind = "vault"
address = "https://vault.example.com:8200"
mount = "{mount}"
auth = {{ method = "approle", role_id_env = "R", secret_id_env = "S", mount = "{auth_mount}" }}
"#
        );
        let got: Vec<String> = errors(&src).iter().map(ToString::to_string).collect();
        let field = if mount == "kv" {
            "stores.v.auth.mount"
        } else {
            "stores.v.mount"
        };
        assert_eq!(got.len(), 1, "{mount} {auth_mount}: {got:?}");
        assert!(
            got[0].contains(&format!("{field}: must be a mount path")),
            "{mount} {auth_mount}: {got:?}"
        );
    }
    // Nested mounts and surrounding slashes stay fine.
    let c = ok(&format!(
        "{ZENML}\n[stores.v]\nkind = \"vault\"\naddress = \"https://vault:8200\"\nmount = \"/team/kv/\"\n\
         auth = {{ method = \"kubernetes\", role = \"zr\", mount = \"k8s/prod\" }}\n"
    ));
    match c.stores.get("v") {
        Some(StoreSettings::Vault(v)) => assert_eq!(v.mount, "team/kv"),
        other => panic!("{other:?}"),
    }
}
