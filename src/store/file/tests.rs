use std::os::unix::fs::PermissionsExt;

use super::*;

fn payload(key: &str) -> Payload {
    Payload {
        zenml_url: "https://zenml.example.com".into(),
        api_key: SecretString::from(key.to_owned()),
    }
}

fn record(fp: &str) -> RotationRecord {
    RotationRecord {
        policy: "p".into(),
        fingerprint: fp.into(),
        ..RotationRecord::default()
    }
}

#[tokio::test]
async fn write_read_back_previous_and_mode() {
    let dir = crate::testing::private_tempdir();
    let store = FileStore::new(&FileSettings {
        dir: dir.path().join("keys"),
    });
    let snap = store.preflight("training.env").await.unwrap();
    assert!(!snap.exists);
    store
        .stage(
            "training.env",
            &payload("ZENKEY_one"),
            &record("1"),
            &snap,
            "t1",
        )
        .await
        .unwrap();
    let file = dir.path().join("keys/training.env");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("ZENML_STORE_URL=https://zenml.example.com\n"));
    assert!(text.contains("ZENML_STORE_API_KEY=ZENKEY_one\n"));
    assert_eq!(
        store
            .read_current("training.env")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ZENKEY_one"
    );
    assert!(store.read_previous("training.env").await.unwrap().is_none());

    let snap2 = store.preflight("training.env").await.unwrap();
    assert_eq!(snap2.record.as_ref().unwrap().fingerprint, "1");
    store
        .stage(
            "training.env",
            &payload("ZENKEY_two"),
            &record("2"),
            &snap2,
            "t2",
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .read_previous("training.env")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ZENKEY_one"
    );
    // A retry of the same write succeeds without touching the previous value.
    store
        .stage(
            "training.env",
            &payload("ZENKEY_two"),
            &record("2"),
            &snap2,
            "t2",
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .read_previous("training.env")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ZENKEY_one"
    );
    store.retire_previous("training.env").await.unwrap();
    assert!(store.read_previous("training.env").await.unwrap().is_none());
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test]
async fn a_write_behind_our_back_is_a_conflict() {
    let dir = crate::testing::private_tempdir();
    let store = FileStore::new(&FileSettings {
        dir: dir.path().into(),
    });
    let snap = store.preflight("k").await.unwrap();
    std::fs::write(dir.path().join("k"), "ZENML_STORE_API_KEY=someone-else\n").unwrap();
    let err = store
        .stage("k", &payload("ZENKEY_x"), &record("x"), &snap, "t")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        store
            .read_current("k")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "someone-else"
    );
}

#[tokio::test]
async fn paths_cannot_escape_the_directory() {
    let dir = crate::testing::private_tempdir();
    let store = FileStore::new(&FileSettings {
        dir: dir.path().into(),
    });
    for bad in ["../x", "/etc/passwd", "", "a/../../b"] {
        assert!(store.preflight(bad).await.is_err(), "{bad}");
    }
    assert!(store.preflight("team/a.env").await.is_ok());
}

#[tokio::test]
async fn preflight_fails_on_a_read_only_directory() {
    if unsafe { libc::geteuid() } == 0 {
        // root ignores directory permissions; a read-only bind mount is the real-world case,
        // covered by the NotWritable mapping. Prove the mapping instead.
        let e = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(matches!(
            io_error("preflight", "k", &e),
            StoreError::NotWritable { .. }
        ));
        return;
    }
    let dir = crate::testing::private_tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let store = FileStore::new(&FileSettings {
        dir: dir.path().into(),
    });
    let err = store.preflight("k").await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
}

#[test]
fn parses_systemd_env_syntax() {
    assert_eq!(
        parse_api_key("# c\nZENML_STORE_URL=x\n ZENML_STORE_API_KEY = \"ZENKEY_q\" \n")
            .unwrap()
            .expose_secret(),
        "ZENKEY_q"
    );
    assert!(parse_api_key("OTHER=1\n").is_none());
}

#[tokio::test]
async fn a_directory_others_may_enter_is_refused_before_anything_is_written() {
    let dir = crate::testing::private_tempdir();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = FileStore::new(&FileSettings { dir: keys.clone() });
    let expected = format!("file store directory {0} are too open", keys.display());
    let err = store.preflight("k.env").await.unwrap_err();
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "file preflight k.env: permissions 0755 for {expected}: a directory that holds keys must not be accessible by other users; run chmod o-rwx {}",
            keys.display()
        )
    );
    let err = store
        .stage(
            "k.env",
            &payload("ZENKEY_x"),
            &record("x"),
            &StoreSnapshot::default(),
            "t",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&expected), "{err}");
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);

    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    let snap = store.preflight("k.env").await.unwrap();
    store
        .stage("k.env", &payload("ZENKEY_x"), &record("x"), &snap, "t")
        .await
        .unwrap();
}

#[tokio::test]
async fn every_file_the_store_keeps_is_0600_in_a_0700_directory() {
    let dir = crate::testing::private_tempdir();
    let keys = dir.path().join("a/keys");
    let store = FileStore::new(&FileSettings { dir: keys.clone() });
    for (i, key) in ["ZENKEY_one", "ZENKEY_two", "ZENKEY_three"]
        .iter()
        .enumerate()
    {
        let snap = store.preflight("k.env").await.unwrap();
        store
            .stage("k.env", &payload(key), &record(&i.to_string()), &snap, "t")
            .await
            .unwrap();
        store.set_record("k.env", &record("r")).await.unwrap();
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&keys).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(mode(&entry.path()), 0o600, "{:?}", entry.file_name());
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["k.env", "k.env.meta.json", "k.env.previous"]);
}

/// A crash between a write's temporary file and its rename leaves a copy of a key beside the
/// env file, which nothing reads and nothing else would remove: the first write into the
/// directory removes it once it is old; a fresh one (maybe another process's write) stays.
#[tokio::test]
async fn the_first_write_removes_what_a_crashed_write_left() {
    let dir = crate::testing::private_tempdir();
    let keys = dir.path().join("keys");
    let store = FileStore::new(&FileSettings { dir: keys.clone() });
    let snap = store.preflight("k.env").await.unwrap();
    store
        .stage("k.env", &payload("ZENKEY_one"), &record("1"), &snap, "t")
        .await
        .unwrap();
    // Left while this store had already written here: found by the next process's first write.
    let before = keys.join(".k.env.tmp-0123456789abcdef0123456789abcdef");
    crate::testing::write_two_hours_ago(&before, "ZENML_STORE_API_KEY=ZENKEY_left");
    let fresh = keys.join(".k.env.tmp-fedcba9876543210fedcba9876543210");
    std::fs::write(&fresh, "in progress").unwrap();
    let next = FileStore::new(&FileSettings { dir: keys.clone() });
    let snap = next.preflight("k.env").await.unwrap();
    assert!(before.exists(), "pre-flight removes nothing");
    next.stage("k.env", &payload("ZENKEY_two"), &record("2"), &snap, "t")
        .await
        .unwrap();
    assert!(!before.exists());
    assert!(fresh.exists());
    assert_eq!(
        next.read_current("k.env")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ZENKEY_two"
    );
    assert_eq!(
        next.read_previous("k.env")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "ZENKEY_one"
    );
}
