//! Faults at the Vault boundary: a private OpenBao sealed for real (`sys/seal`) right before the
//! rotate call, and the rotator's token revoked right before the store write. The rotator talks
//! to Vault through a fault proxy that only counts. Each faulted run fails at stage `store` with
//! bounded retries and the value kept (the local journal when the claim could not be written,
//! else the claim); once Vault is back (unsealed, a new token), the next `once` stores that very
//! value without rotating again, and nothing is lost.

use zenml_rotator::zenml::KeyCheck;

use crate::common::fault_proxy::{Exchange, FaultProxy};
use crate::common::private_bao::PrivateBao;
use crate::common::rig::Ran;
use crate::common::rig::failed_at;
use crate::common::stores::{VaultAdmin, check};
use crate::common::zenml_admin;
use crate::world::{Setup, StoreAt, World};
use crate::{figure, metric};

/// The faulted run failed at `stage`, counted once in `errors_total`; the requests that met the
/// fault (`which`) stayed within `bound`. Returns how many there were.
pub fn judged(
    what: &str,
    world: &World,
    ran: &Ran,
    stage: &str,
    proxy: &FaultProxy,
    which: impl Fn(&Exchange) -> bool,
    bound: std::ops::RangeInclusive<usize>,
) -> usize {
    let detail = failed_at(ran, "k00", stage);
    let metrics = world.textfile();
    assert_eq!(
        metric(
            &metrics,
            "zenml_rotator_errors_total",
            &[("policy", "k00"), ("stage", stage)]
        ),
        1.0,
        "{metrics}"
    );
    let n = proxy.count(which);
    assert!(
        bound.contains(&n),
        "{what}: {n} requests, expected {bound:?}: {:#?}",
        proxy.log()
    );
    figure(&format!(
        "{what}: exit 1 at stage {stage} ({}), {n} requests met the fault, {} in all",
        detail.chars().take(120).collect::<String>(),
        proxy.log().len()
    ));
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_sealed_before_the_rotate_call_keeps_the_value_in_the_journal_until_unsealed() {
    let bao = PrivateBao::start();
    let proxy = FaultProxy::start(&bao.addr);
    let world = World::new(
        StoreAt::vault(&proxy.url, bao.root()),
        Setup::new("flt-vault-seal", 1),
    )
    .await;
    let key = &world.keys[0];
    world.run_with(&["once"], &[], 0);
    let before = world.stored(key).await.expect("stored");
    let last_rotated = |sa| async move {
        zenml_admin()
            .get_api_key(sa, "default")
            .await
            .unwrap()
            .last_rotated
    };

    proxy.reset_log();
    let seal = format!("before_rotate:{}", bao.root().seal_command());
    let ran = world.run_with(
        &["rotate", "k00", "--force", "--output", "json"],
        &[("ZR_FAULT_EXEC", &seal)],
        1,
    );
    judged(
        "vault sealed before the rotate call",
        &world,
        &ran,
        "store",
        &proxy,
        // The claim write that keeps the value, then three attempts at the store step.
        |e: &Exchange| e.upstream_status == Some(503),
        2..=4,
    );
    assert!(
        ran.stderr.contains("journaling it locally"),
        "{}",
        ran.describe()
    );
    let rotated = last_rotated(key.sa.id).await;
    assert_eq!(world.rig.journal_names(), ["k00.json"]);

    bao.unseal().await;
    let after = world.run_with(&["once", "--output", "json"], &[], 0);
    assert_eq!(after.results_of("k00"), ["rotated"], "{}", after.describe());
    assert_eq!(last_rotated(key.sa.id).await, rotated, "not rotated again");
    assert_eq!(check(&zenml_admin(), &before).await, KeyCheck::Accepted);
    world.assert_nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_token_revoked_before_the_store_write_is_finished_with_a_new_token() {
    let root = VaultAdmin::shared();
    let proxy = FaultProxy::start(&root.addr);
    let mut world = World::new(
        StoreAt::vault(&proxy.url, VaultAdmin::shared()),
        Setup::new("flt-vault-revoke", 1),
    )
    .await;
    let key = &world.keys[0];
    world.run_with(&["once"], &[], 0);
    let before = world.stored(key).await.expect("stored");

    proxy.reset_log();
    let token = world.token.clone().expect("a Vault token");
    let revoke = format!(
        "before_store:curl -sf -X POST -H 'X-Vault-Token: {}' -d '{{\"token\":\"{token}\"}}' {}/v1/auth/token/revoke",
        crate::common::vault().root_token,
        root.addr
    );
    let ran = world.run_with(
        &["rotate", "k00", "--force", "--output", "json"],
        &[("ZR_FAULT_EXEC", &revoke)],
        1,
    );
    // A refusal is not retried.
    judged(
        "vault token revoked before the store write",
        &world,
        &ran,
        "store",
        &proxy,
        |e: &Exchange| e.upstream_status == Some(403),
        1..=1,
    );
    let claim = world.claim(key).await;
    assert_eq!(claim["phase"], "rotated", "the value waits in the claim");

    let fresh = root
        .rotator_token(key.path.split('/').next().unwrap())
        .await;
    world.rig.env("ZR_TEST_VAULT_TOKEN_STORE", &fresh);
    world.token = Some(fresh);
    let after = world.run_with(&["once", "--output", "json"], &[], 0);
    assert_eq!(after.results_of("k00"), ["rotated"], "{}", after.describe());
    let stored = world.stored(&world.keys[0]).await.expect("stored");
    assert_eq!(
        Some(stored.as_str()),
        claim["value"].as_str(),
        "the kept value is what landed"
    );
    assert_eq!(check(&zenml_admin(), &before).await, KeyCheck::Accepted);
    world.assert_nothing_lost().await;
}
