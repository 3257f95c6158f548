//! Answers no server should give, from a fault proxy in front of the real ZenML, OpenBao or moto:
//! garbage JSON, wrong types, missing fields, a huge body. The rotator must end with a typed
//! error naming the stage (exit 1), never a panic; once the server answers properly again, the
//! next `once` completes and nothing is lost.

use crate::common::fault_proxy::{Fault, FaultProxy, Head};
use crate::common::rig::failed_at;
use crate::world::{Kind, Setup, StoreAt, World};
use crate::{figure, metric, no_panic};

/// Where the bad answer comes from.
#[derive(Clone, Copy)]
enum Boundary {
    Zenml,
    Vault,
    Aws,
}

struct Case {
    name: &'static str,
    boundary: Boundary,
    target: fn(&Head) -> bool,
    body: fn() -> Vec<u8>,
    /// Store a value first (so the path exists and the server answers 200), then run `rotate
    /// --force` against the bad answers; else a first `once`.
    after_a_first_rotation: bool,
    stage: &'static str,
    /// What the undisturbed `once` reports for the key afterwards.
    then: &'static str,
}

fn get_key(h: &Head) -> bool {
    h.method == "GET" && h.path.contains("/api_keys/")
}

fn list_accounts(h: &Head) -> bool {
    h.method == "GET" && h.path == "/api/v1/service_accounts"
}

fn rotate_call(h: &Head) -> bool {
    h.method == "PUT" && h.path.ends_with("/rotate")
}

fn vault_metadata(h: &Head) -> bool {
    h.method == "GET" && h.path.starts_with("/v1/secret/metadata/")
}

fn vault_claim(h: &Head) -> bool {
    h.method == "GET" && h.path.starts_with("/v1/secret/data/zenml-rotator/claims/")
}

fn aws_describe(h: &Head) -> bool {
    h.aws_op.as_deref() == Some("DescribeSecret")
}

fn aws_get_value(h: &Head) -> bool {
    h.aws_op.as_deref() == Some("GetSecretValue")
}

fn garbage() -> Vec<u8> {
    br#"{"id": "5", "name": [1, 2, {"#.to_vec()
}

fn empty_object() -> Vec<u8> {
    b"{}".to_vec()
}

/// 32 MiB: a JSON string nobody should send.
fn huge() -> Vec<u8> {
    let mut body = b"{\"id\": \"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 32 << 20));
    body.extend(b"\"}");
    body
}

fn zenml_key_wrong_types() -> Vec<u8> {
    br#"{"id": "not-a-uuid", "name": 7, "body": "active", "metadata": []}"#.to_vec()
}

fn zenml_rotate_answer_without_a_key() -> Vec<u8> {
    br#"{"id": "8a2b2d1e-0000-4000-8000-000000000000", "name": "default", "body": {"key": 42, "active": "yes"}}"#.to_vec()
}

fn zenml_page_of_wrong_items() -> Vec<u8> {
    br#"{"index": 1, "max_size": 20, "total_pages": "many", "total": 1, "items": [{"id": 1}]}"#
        .to_vec()
}

fn vault_metadata_wrong_types() -> Vec<u8> {
    br#"{"data": {"current_version": "three", "versions": [], "custom_metadata": 5}}"#.to_vec()
}

fn vault_claim_wrong_types() -> Vec<u8> {
    br#"{"data": {"data": {"holder": 5, "phase": ["rotated"], "expires_at": "yesterday"}, "metadata": {"version": "x"}}}"#.to_vec()
}

fn aws_wrong_types() -> Vec<u8> {
    br#"{"ARN": 5, "Name": {"x": 1}, "VersionIdsToStages": "AWSCURRENT", "SecretString": 42}"#
        .to_vec()
}

async fn run_case(case: Case) {
    let tag = format!("flt-bad-{}", case.name);
    let (zenml, store) = match case.boundary {
        Boundary::Zenml => (Some(FaultProxy::start(&crate::common::zenml().url)), None),
        Boundary::Vault => (None, Some(FaultProxy::start(&crate::common::vault().addr))),
        Boundary::Aws => (
            None,
            Some(FaultProxy::start(&crate::common::aws_endpoint())),
        ),
    };
    let at = match (case.boundary, &store) {
        (Boundary::Vault, Some(p)) => {
            StoreAt::vault(&p.url, crate::common::stores::VaultAdmin::shared())
        }
        (Boundary::Aws, Some(p)) => StoreAt::aws(&p.url, &crate::common::aws_endpoint()),
        _ => StoreAt::shared(Kind::Vault),
    };
    let mut setup = Setup::new(&tag, 1);
    setup.zenml_url = zenml.as_ref().map(|p| p.url.as_str());
    let world = World::new(at, setup).await;
    let proxy = zenml.as_ref().or(store.as_ref()).expect("a proxy");
    let args: &[&str] = if case.after_a_first_rotation {
        world.run_with(&["once"], &[], 0);
        &["rotate", "k00", "--force", "--output", "json"]
    } else {
        &["once", "--output", "json"]
    };
    proxy.inject(
        case.target,
        Fault::Body {
            body: (case.body)(),
            content_type: "application/json",
        },
        0,
        None,
    );
    let ran = world.run_with(args, &[], 1);
    let detail = failed_at(&ran, "k00", case.stage);
    let metrics = world.textfile();
    assert_eq!(
        metric(
            &metrics,
            "zenml_rotator_errors_total",
            &[("policy", "k00"), ("stage", case.stage)]
        ),
        1.0,
        "{metrics}"
    );
    let bad = proxy.count(|e| e.fault.is_some());
    assert!(
        bad >= 1,
        "the bad answer was never sent: {:#?}",
        proxy.log()
    );
    figure(&format!(
        "malformed {}: exit 1 at stage {} after {bad} bad answers ({})",
        case.name,
        case.stage,
        detail.chars().take(100).collect::<String>()
    ));

    proxy.clear();
    let after = world.run_with(&["once", "--output", "json"], &[], 0);
    no_panic(case.name, &after.stderr);
    assert_eq!(after.results_of("k00"), [case.then], "{}", after.describe());
    world.assert_nothing_lost().await;
}

macro_rules! cases {
    ($($name:ident => $case:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            run_case($case).await;
        }
    )*};
}

cases! {
    zenml_garbage_json_for_a_key_is_a_typed_error => Case {
        name: "zenml-key-garbage", boundary: Boundary::Zenml, target: get_key, body: garbage,
        after_a_first_rotation: false, stage: "preflight", then: "rotated",
    };
    zenml_wrong_types_for_a_key_are_a_typed_error => Case {
        name: "zenml-key-types", boundary: Boundary::Zenml, target: get_key,
        body: zenml_key_wrong_types, after_a_first_rotation: false, stage: "preflight",
        then: "rotated",
    };
    zenml_missing_fields_in_the_account_list_are_a_typed_error => Case {
        name: "zenml-accounts-missing", boundary: Boundary::Zenml, target: list_accounts,
        body: empty_object, after_a_first_rotation: false, stage: "preflight", then: "rotated",
    };
    zenml_wrong_types_in_the_account_list_are_a_typed_error => Case {
        name: "zenml-accounts-types", boundary: Boundary::Zenml, target: list_accounts,
        body: zenml_page_of_wrong_items, after_a_first_rotation: false, stage: "preflight",
        then: "rotated",
    };
    zenml_huge_body_for_a_key_is_a_typed_error => Case {
        name: "zenml-key-huge", boundary: Boundary::Zenml, target: get_key, body: huge,
        after_a_first_rotation: false, stage: "preflight", then: "rotated",
    };
    zenml_rotate_answer_without_a_key_is_a_lost_answer => Case {
        name: "zenml-rotate-no-key", boundary: Boundary::Zenml, target: rotate_call,
        body: zenml_rotate_answer_without_a_key, after_a_first_rotation: true, stage: "rotate",
        then: "recovered",
    };
    vault_garbage_metadata_is_a_typed_error => Case {
        name: "vault-metadata-garbage", boundary: Boundary::Vault, target: vault_metadata,
        body: garbage, after_a_first_rotation: true, stage: "preflight", then: "wait",
    };
    vault_wrong_types_in_metadata_are_a_typed_error => Case {
        name: "vault-metadata-types", boundary: Boundary::Vault, target: vault_metadata,
        body: vault_metadata_wrong_types, after_a_first_rotation: true, stage: "preflight",
        then: "wait",
    };
    // After a first rotation the claim exists, so the claim read that decides whether the key is
    // free gets the bad document with Vault's 200 (on a key never claimed it would be a 404).
    vault_wrong_types_in_a_claim_are_a_typed_error => Case {
        name: "vault-claim-types", boundary: Boundary::Vault, target: vault_claim,
        body: vault_claim_wrong_types, after_a_first_rotation: true, stage: "preflight",
        then: "wait",
    };
    vault_huge_metadata_is_a_typed_error => Case {
        name: "vault-metadata-huge", boundary: Boundary::Vault, target: vault_metadata,
        body: huge, after_a_first_rotation: true, stage: "preflight", then: "wait",
    };
    aws_garbage_for_describe_secret_is_a_typed_error => Case {
        name: "aws-describe-garbage", boundary: Boundary::Aws, target: aws_describe,
        body: garbage, after_a_first_rotation: false, stage: "preflight", then: "rotated",
    };
    aws_wrong_types_for_a_secret_value_are_a_typed_error => Case {
        name: "aws-value-types", boundary: Boundary::Aws, target: aws_get_value,
        body: aws_wrong_types, after_a_first_rotation: true, stage: "preflight", then: "wait",
    };
    aws_huge_describe_secret_is_a_typed_error => Case {
        name: "aws-describe-huge", boundary: Boundary::Aws, target: aws_describe, body: huge,
        after_a_first_rotation: false, stage: "preflight", then: "rotated",
    };
}
