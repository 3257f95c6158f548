//! The contract every store's claims keep (`store::claim`), checked against the real server: a
//! claim is created once, replaced only from the version a writer read, and of several writers
//! racing from one version exactly one wins. What the store's own primitive enforces is recorded
//! here, since the coordination of rotators rests on it.

use std::sync::Arc;

use chrono::Utc;
use zenml_rotator::secret::{ExposeSecret, SecretString};
use zenml_rotator::store::{Claim, ClaimPhase, SecretStore, StoreError, ValueKept};

fn claim(holder: &str, value: Option<&str>) -> Claim {
    let now = Utc::now();
    Claim {
        holder: holder.into(),
        policy: "p".into(),
        expires_at: now,
        since: now,
        phase: if value.is_some() {
            ClaimPhase::Rotated
        } else {
            ClaimPhase::Claimed
        },
        token: uuid::Uuid::new_v4().to_string(),
        previous_last_rotated: None,
        service_account_id: "sa".into(),
        key_id: "key".into(),
        rotated_at: None,
        retain_minutes: 60,
        fingerprint: None,
        value: value.map(|v| SecretString::from(v.to_owned())),
    }
}

pub async fn claims_are_compare_and_set(store: Arc<dyn SecretStore>, path: &str) {
    assert!(store.read_claim(path).await.unwrap().is_none());
    let v1 = store
        .write_claim(path, &claim("a", None), None)
        .await
        .unwrap();
    // A second creation is refused: two rotators cannot both create the claim.
    let again = store.write_claim(path, &claim("b", None), None).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { .. })),
        "{again:?}"
    );
    let read = store.read_claim(path).await.unwrap().unwrap();
    assert_eq!(
        (read.claim.holder.as_str(), read.version.as_str()),
        ("a", v1.as_str())
    );

    // Replaced from the version read; a writer holding an older version is refused (fenced).
    let v2 = store
        .write_claim(path, &claim("b", Some("ZENKEY_in_flight")), Some(&v1))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let stale = store.write_claim(path, &claim("a", None), Some(&v1)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let read = store.read_claim(path).await.unwrap().unwrap();
    assert_eq!(read.claim.holder, "b");
    assert_eq!(read.claim.phase, ClaimPhase::Rotated);
    // The value rides in the claim only where the store keeps it there.
    match store.keeps_value() {
        ValueKept::InClaim => assert_eq!(
            read.claim
                .value
                .as_ref()
                .map(|v| v.expose_secret().to_owned()),
            Some("ZENKEY_in_flight".to_owned())
        ),
        ValueKept::Staged | ValueKept::Journal => assert!(read.claim.value.is_none()),
    }

    // Eight writers race from the same version: exactly one wins.
    let racers = (0..8).map(|i| {
        let (store, v2) = (store.clone(), v2.clone());
        let path = path.to_owned();
        tokio::spawn(async move {
            store
                .write_claim(&path, &claim(&format!("racer-{i}"), None), Some(&v2))
                .await
        })
    });
    let results = futures_util::future::join_all(racers).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::Conflict { .. }))))
        .count();
    assert_eq!((won, lost), (1, 7), "{results:?}");
}
