//! Faults at the AWS boundary: a private moto stopped (SIGSTOP) mid-pass, once right before the
//! rotate call (the value can only go to the local journal) and once right before the store
//! write (it waits in `AWSPENDING`). The rotator talks to moto through a fault proxy that only
//! counts. Each faulted run fails at stage `store` after a bounded number of requests; once moto
//! goes on (SIGCONT), the next `once` stores that very value, and nothing is lost.

use zenml_rotator::zenml::KeyCheck;

use crate::common::fault_proxy::{Exchange, FaultProxy};
use crate::common::private_moto::PrivateMoto;
use crate::common::stores::check;
use crate::common::zenml_admin;
use crate::vault::judged;
use crate::world::{Setup, StoreAt, World};

/// Seconds the AWS store waits for an answer, retries included.
const TIMEOUT: &str = "timeout = \"3s\"";

/// A request that met the stopped server: it never answered (so far).
fn unanswered(e: &Exchange) -> bool {
    e.upstream_status.is_none()
}

async fn moto_stopped_at(point: &str, expect_journal: bool) {
    let moto = PrivateMoto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let mut setup = Setup::new("flt-aws-stop", 1);
    setup.store_extra = TIMEOUT;
    let world = World::new(StoreAt::aws(&proxy.url, &moto.endpoint), setup).await;
    world.run_with(&["once"], &[], 0);
    let before = world.stored(&world.keys[0]).await.expect("stored");
    let sa = world.keys[0].sa.id;
    let last_rotated = || async move {
        zenml_admin()
            .get_api_key(sa, "default")
            .await
            .unwrap()
            .last_rotated
    };

    proxy.reset_log();
    let stop = format!("{point}:kill -STOP {}", moto.pid());
    let ran = world.run_with(
        &["rotate", "k00", "--force", "--output", "json"],
        &[("ZR_FAULT_EXEC", &stop)],
        1,
    );
    // Keeping the value (before_rotate), then three attempts at the store step, each bounded by
    // the timeout with the SDK's own retries inside it (at most three).
    judged(
        &format!("moto stopped at {point}"),
        &world,
        &ran,
        "store",
        &proxy,
        unanswered,
        1..=12,
    );
    assert_eq!(
        !world.rig.journal_files().is_empty(),
        expect_journal,
        "{:?}",
        world.rig.journal_names()
    );
    let rotated = last_rotated().await;

    moto.resume();
    let after = world.run_with(&["once", "--output", "json"], &[], 0);
    assert_eq!(after.results_of("k00"), ["rotated"], "{}", after.describe());
    assert_eq!(last_rotated().await, rotated, "not rotated again");
    assert_eq!(check(&zenml_admin(), &before).await, KeyCheck::Accepted);
    world.assert_nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_stopped_before_the_rotate_call_keeps_the_value_in_the_journal() {
    moto_stopped_at("before_rotate", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_stopped_before_the_store_write_keeps_the_value_in_awspending() {
    moto_stopped_at("before_store", false).await;
}
