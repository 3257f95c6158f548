//! Faults at the ZenML boundary, through a fault proxy in front of the real server: a key stored
//! once (the value consumers hold), then `rotate --force` meets one fault. Each case ends with
//! exit 1 and the failing stage named (or success when a retry was enough), a bounded number of
//! requests at the proxy, the right `errors_total{stage}`, no panic; then an undisturbed `once`
//! completes (recovering a rotation whose answer was lost) and nothing is lost.

use std::time::Duration;

use zenml_rotator::zenml::KeyCheck;

use crate::common::fault_proxy::{Exchange, Fault, FaultProxy, Head};
use crate::common::rig::failed_at;
use crate::common::stores::check;
use crate::common::zenml_admin;
use crate::world::{Kind, Setup, StoreAt, World};
use crate::{figure, metric, no_panic};

/// The ZenML client's timeout in these tests: a hang must outlast it.
const TIMEOUT: &str = "timeout = \"2s\"";

fn rotate_call(h: &Head) -> bool {
    h.method == "PUT" && h.path.ends_with("/rotate")
}

fn login_call(h: &Head) -> bool {
    h.method == "POST" && h.path == "/api/v1/login"
}

/// A GET of one API key (observing it).
fn get_key(h: &Head) -> bool {
    h.method == "GET" && h.path.contains("/api_keys/") && !h.path.ends_with("/rotate")
}

/// What the faulted run must end with.
struct Expect {
    /// `None`: exit 0 (a retry was enough).
    stage: Option<&'static str>,
    /// Requests the fault's target may see in the faulted run (retries included).
    requests: std::ops::RangeInclusive<usize>,
    /// What the undisturbed `once` after it reports for the key.
    then: &'static str,
}

struct Case {
    name: &'static str,
    target: fn(&Head) -> bool,
    fault: Fault,
    /// How many times the fault applies (`None`: always).
    times: Option<u32>,
    expect: Expect,
}

/// One key in the shared Vault, ZenML through a fault proxy, stored once.
async fn stored_once(tag: &str) -> (FaultProxy, World, String) {
    let proxy = FaultProxy::start(&crate::common::zenml().url);
    let mut setup = Setup::new(tag, 1);
    setup.zenml_url = Some(&proxy.url);
    let world = World::new(StoreAt::shared(Kind::Vault), setup).await;
    let ran = world.rig.expect(&["once", "--output", "json"], 0);
    assert_eq!(ran.results_of("k00"), ["rotated"], "{}", ran.describe());
    let value = world.stored(&world.keys[0]).await.expect("a stored value");
    (proxy, world, value)
}

async fn run_case(case: Case) {
    let (proxy, mut world, before) = stored_once(&format!("flt-zen-{}", case.name)).await;
    // Only a hang needs the short timeout (it must outlast it, and each try should not wait the
    // default 30 s); every other case keeps the default, since a real answer on a loaded machine
    // can take longer than 2 s.
    if matches!(case.fault, Fault::Hang { .. }) {
        world.rig.zenml_line(TIMEOUT);
    }
    world.rig.write();
    proxy.reset_log();
    proxy.inject(case.target, case.fault.clone(), 0, case.times);

    let code = if case.expect.stage.is_some() { 1 } else { 0 };
    let ran = world
        .rig
        .expect(&["rotate", "k00", "--force", "--output", "json"], code);
    no_panic(case.name, &ran.stderr);
    let metrics = world.textfile();
    let errors = |stage: &str| {
        metric(
            &metrics,
            "zenml_rotator_errors_total",
            &[("policy", "k00"), ("stage", stage)],
        )
    };
    match case.expect.stage {
        Some(stage) => {
            failed_at(&ran, "k00", stage);
            assert_eq!(errors(stage), 1.0, "{metrics}");
        }
        None => assert_eq!(ran.results_of("k00"), ["rotated"], "{}", ran.describe()),
    }
    let total_errors: f64 = ["preflight", "rotate", "verify", "store", "finalize"]
        .iter()
        .map(|s| errors(s))
        .sum();
    assert_eq!(
        total_errors, code as f64,
        "one error, at its stage: {metrics}"
    );
    let log = proxy.log();
    let hits = log.iter().filter(|e| (case.target)(&head_of(e))).count();
    assert!(
        case.expect.requests.contains(&hits),
        "{}: {hits} requests to the faulted call, expected {:?}: {log:#?}",
        case.name,
        case.expect.requests
    );
    figure(&format!(
        "zenml {}: exit {code}, stage {}, {hits} requests to the faulted call (all calls: {}), errors_total +{total_errors}",
        case.name,
        case.expect.stage.unwrap_or("-"),
        log.len()
    ));

    proxy.clear();
    // The healing pass meets no fault: it runs with the default timeout, since the 2 s that
    // keeps the hang cases short is too short for real answers on a loaded machine.
    world.rig.clear_zenml_lines();
    world.rig.write();
    let after = world.rig.expect(&["once", "--output", "json"], 0);
    no_panic(case.name, &after.stderr);
    assert_eq!(
        after.results_of("k00"),
        [case.expect.then],
        "{}",
        after.describe()
    );
    // Nobody was cut off: the value consumers held still works (a forced rotation keeps it for
    // the retain window), and so does what is stored now.
    assert_eq!(check(&zenml_admin(), &before).await, KeyCheck::Accepted);
    world.assert_nothing_lost().await;
}

/// What a matcher sees of a recorded exchange (no body: matchers here look at method and path).
fn head_of(e: &Exchange) -> Head {
    Head {
        method: e.method.clone(),
        path: e.path.clone(),
        aws_op: e.aws_op.clone(),
        body: Vec::new(),
    }
}

macro_rules! cases {
    ($($name:ident => $case:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            run_case($case).await;
        }
    )*};
}

fn lost(requests: std::ops::RangeInclusive<usize>) -> Expect {
    Expect {
        stage: Some("rotate"),
        requests,
        then: "recovered",
    }
}

cases! {
    zenml_500_before_the_rotate_reached_the_server => Case {
        name: "rotate-500-unsent",
        target: rotate_call,
        fault: Fault::status(500, r#"{"detail":["RuntimeError","boom"]}"#),
        times: None,
        // Not retried (the server may have acted), and since it cannot tell, the next pass
        // looks: ZenML did not rotate, so the intent is dropped and the key waits.
        expect: Expect { stage: Some("rotate"), requests: 1..=1, then: "wait" },
    };
    zenml_500_after_the_server_rotated_is_a_lost_answer => Case {
        name: "rotate-500-after",
        target: rotate_call,
        fault: Fault::status_after(500, r#"{"detail":["RuntimeError","boom"]}"#),
        times: None,
        expect: lost(1..=1),
    };
    zenml_503_on_the_rotate_call_is_not_retried => Case {
        name: "rotate-503",
        target: rotate_call,
        fault: Fault::status(503, "Service Unavailable"),
        times: None,
        expect: Expect { stage: Some("rotate"), requests: 1..=1, then: "wait" },
    };
    zenml_429_once_is_retried_after_retry_after => Case {
        name: "rotate-429-once",
        target: rotate_call,
        fault: Fault::Status {
            status: 429,
            body: r#"{"detail": "Minute request limit exceeded."}"#.into(),
            content_type: "application/json",
            headers: vec![("retry-after".into(), "1".into())],
            forward: false,
        },
        times: Some(1),
        expect: Expect { stage: None, requests: 2..=2, then: "wait" },
    };
    zenml_429_always_gives_up_after_four_attempts => Case {
        name: "rotate-429-always",
        target: rotate_call,
        fault: Fault::Status {
            status: 429,
            body: r#"{"detail": "Minute request limit exceeded."}"#.into(),
            content_type: "application/json",
            headers: vec![("retry-after".into(), "1".into())],
            forward: false,
        },
        times: None,
        expect: Expect { stage: Some("rotate"), requests: 4..=4, then: "wait" },
    };
    zenml_503_on_reads_is_retried => Case {
        name: "get-key-503-twice",
        target: get_key,
        fault: Fault::status(503, "Service Unavailable"),
        times: Some(2),
        expect: Expect { stage: None, requests: 3..=12, then: "wait" },
    };
    zenml_503_on_every_read_fails_preflight_after_bounded_retries => Case {
        name: "get-key-503-always",
        target: get_key,
        fault: Fault::status(503, "Service Unavailable"),
        times: None,
        expect: Expect { stage: Some("preflight"), requests: 4..=4, then: "wait" },
    };
    zenml_connection_reset_after_the_rotate_was_sent_is_a_lost_answer => Case {
        name: "rotate-reset",
        target: rotate_call,
        fault: Fault::ResetAfter,
        times: None,
        expect: lost(1..=1),
    };
    zenml_hang_past_the_timeout_on_the_rotate_is_a_lost_answer => Case {
        name: "rotate-hang",
        target: rotate_call,
        fault: Fault::Hang { forward: true },
        times: None,
        expect: lost(1..=1),
    };
    zenml_hang_on_every_read_fails_after_bounded_retries => Case {
        name: "get-key-hang",
        target: get_key,
        fault: Fault::Hang { forward: false },
        times: None,
        expect: Expect { stage: Some("preflight"), requests: 4..=4, then: "wait" },
    };
    zenml_truncated_rotate_answer_is_a_lost_answer => Case {
        name: "rotate-truncated",
        target: rotate_call,
        fault: Fault::Truncate,
        times: None,
        expect: lost(1..=1),
    };
    zenml_truncated_read_is_retried => Case {
        name: "get-key-truncated-once",
        target: get_key,
        fault: Fault::Truncate,
        times: Some(1),
        expect: Expect { stage: None, requests: 2..=12, then: "wait" },
    };
    zenml_html_instead_of_the_rotate_answer_is_a_lost_answer => Case {
        name: "rotate-html",
        target: rotate_call,
        fault: Fault::html(),
        times: None,
        expect: lost(1..=1),
    };
    zenml_html_instead_of_the_login_answer_fails_preflight => Case {
        name: "login-html",
        target: login_call,
        fault: Fault::html(),
        times: None,
        expect: Expect { stage: Some("preflight"), requests: 1..=2, then: "wait" },
    };
}

/// The proxy forwards faithfully: without a fault, a pass through it behaves as without it.
#[tokio::test(flavor = "multi_thread")]
async fn zenml_through_the_proxy_without_faults_rotates_and_counts_requests() {
    let (proxy, world, _) = stored_once("flt-zen-clean").await;
    let rotates = proxy.count(|e| e.method == "PUT" && e.path.ends_with("/rotate"));
    assert_eq!(rotates, 1, "{:#?}", proxy.log());
    assert!(proxy.log().iter().all(|e| e.fault.is_none()));
    assert!(
        proxy
            .log()
            .iter()
            .all(|e| e.upstream_status.is_some_and(|s| s < 300)),
        "{:#?}",
        proxy.log()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    world.assert_nothing_lost().await;
}
