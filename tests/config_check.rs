//! `zenml-rotator check` on the built binary: every rule of the policy file has an invalid fixture
//! (tests/fixtures/config/invalid/NAME.toml) and the exact stderr it must produce (NAME.expected,
//! with FILE for the fixture's path); valid fixtures and config.example.toml must pass.
//! The environment is cleared: `check` must not need the credentials a file names.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{describe, rotator, run, run_expect};

const EX_CONFIG: i32 = 78;

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind)
}

fn files_with(dir: &Path, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_invalid_fixture_fails_with_its_expected_messages() {
    let dir = fixtures("invalid");
    let fixtures = files_with(&dir, "toml");
    assert_eq!(
        fixtures,
        files_with(&dir, "expected"),
        "every invalid fixture needs a NAME.expected and every NAME.expected a fixture"
    );
    assert!(fixtures.len() >= 40, "{fixtures:?}");
    let mut failures = Vec::new();
    for name in &fixtures {
        let file = format!("{name}.toml");
        let expected = fs::read_to_string(dir.join(format!("{name}.expected")))
            .unwrap()
            .replace("FILE", &file);
        let mut cmd = rotator(&dir);
        cmd.args(["check", "-c", &file]);
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(EX_CONFIG) || stderr != expected || !out.stdout.is_empty() {
            failures.push(format!(
                "== {name}: expected exit {EX_CONFIG} and stderr:\n{expected}{}",
                describe(&cmd, &out)
            ));
        }
        // Fixtures put would-be secrets where they do not belong; none may be echoed.
        if stderr.contains("do-not-print-me") {
            failures.push(format!(
                "== {name}: a misplaced secret was echoed\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_diagnostic_names_file_line_column_and_field() {
    let dir = fixtures("invalid");
    for name in files_with(&dir, "expected") {
        let text = fs::read_to_string(dir.join(format!("{name}.expected"))).unwrap();
        assert!(!text.is_empty(), "{name}.expected is empty");
        for line in text.lines() {
            let mut parts = line.splitn(5, ':');
            let (file, l, c, field) = (parts.next(), parts.next(), parts.next(), parts.next());
            assert_eq!(file, Some("FILE"), "{name}: {line}");
            assert!(
                l.is_some_and(|l| l.parse::<usize>().is_ok_and(|n| n >= 1)),
                "{name}: {line}"
            );
            assert!(
                c.is_some_and(|c| c.parse::<usize>().is_ok_and(|n| n >= 1)),
                "{name}: {line}"
            );
            assert!(
                field.is_some_and(|f| !f.trim().is_empty()),
                "{name}: {line}"
            );
            assert!(
                parts.next().is_some_and(|m| !m.trim().is_empty()),
                "{name}: {line}"
            );
        }
    }
}

/// Valid fixtures pass; stderr is empty, or exactly NAME.expected (warnings about what the file
/// is allowed to do but must be told, e.g. `allow_insecure_http`).
#[test]
fn valid_fixtures_and_the_example_pass_without_their_credentials() {
    let dir = fixtures("valid");
    let mut files: Vec<PathBuf> = files_with(&dir, "toml")
        .into_iter()
        .map(|n| dir.join(format!("{n}.toml")))
        .collect();
    assert!(files.len() >= 3);
    for expected in files_with(&dir, "expected") {
        assert!(
            files.contains(&dir.join(format!("{expected}.toml"))),
            "{expected}.expected has no fixture"
        );
    }
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"));
    for file in files {
        let expected = fs::read_to_string(file.with_extension("expected"))
            .map(|e| e.replace("FILE", &file.display().to_string()))
            .unwrap_or_default();
        let mut cmd = rotator(&dir);
        cmd.arg("check").arg("-c").arg(&file);
        let out = run_expect(&mut cmd, 0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("ok: "), "{}", describe(&cmd, &out));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "{}",
            describe(&cmd, &out)
        );
    }
}

#[test]
fn the_summary_counts_keys_and_stores() {
    let mut cmd = rotator(Path::new(env!("CARGO_MANIFEST_DIR")));
    cmd.args(["check", "-c", "config.example.toml"]);
    let out = run_expect(&mut cmd, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 3 keys, 3 stores\n"
    );
    let mut cmd = rotator(&fixtures("valid"));
    cmd.args(["check", "-c", "minimal.toml"]);
    let out = run_expect(&mut cmd, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok: 1 key, 1 store\n");
}

#[test]
fn the_config_path_comes_from_the_environment_too() {
    let dir = fixtures("valid");
    let mut cmd = rotator(&dir);
    cmd.arg("check").env("ZENML_ROTATOR_CONFIG", "minimal.toml");
    run_expect(&mut cmd, 0);
    // -c wins over the environment.
    let mut cmd = rotator(&fixtures("invalid"));
    cmd.args(["check", "-c", "missing_zenml.toml"])
        .env("ZENML_ROTATOR_CONFIG", dir.join("minimal.toml"));
    run_expect(&mut cmd, EX_CONFIG);
}

#[test]
fn an_unreadable_file_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = rotator(tmp.path());
    cmd.args(["check", "-c", "nope.toml"]);
    let out = run_expect(&mut cmd, EX_CONFIG);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("nope.toml: cannot read the policy file: "),
        "{}",
        describe(&cmd, &out)
    );
    // A directory is not a policy file either.
    let mut cmd = rotator(tmp.path());
    cmd.args(["check", "-c", "."]);
    run_expect(&mut cmd, EX_CONFIG);
}

#[test]
fn every_command_rejects_an_invalid_file_before_doing_anything() {
    let dir = fixtures("invalid");
    let expected = fs::read_to_string(dir.join("bad_urls.expected"))
        .unwrap()
        .replace("FILE", "bad_urls.toml");
    let commands: [&[&str]; 5] = [
        &["plan"],
        &["once", "--dry-run"],
        &["rotate", "training", "--force"],
        &["run"],
        &["inventory"],
    ];
    for args in commands {
        let mut cmd = rotator(&dir);
        cmd.args(args).args(["-c", "bad_urls.toml"]);
        let out = run_expect(&mut cmd, EX_CONFIG);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "{}",
            describe(&cmd, &out)
        );
    }
}

#[test]
fn a_missing_config_argument_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = rotator(tmp.path());
    cmd.arg("check");
    let out = run_expect(&mut cmd, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// A policy file its group may write is loaded, and said: by `check` on stderr, by the other
/// commands in the log, each time the file is loaded.
#[test]
fn a_policy_file_its_group_may_write_is_loaded_with_a_warning() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.toml");
    fs::copy(fixtures("valid").join("minimal.toml"), &policy).unwrap();
    let gid = fs::metadata(&policy).unwrap().gid();
    let check = |mode: u32| {
        fs::set_permissions(&policy, fs::Permissions::from_mode(mode)).unwrap();
        let mut cmd = rotator(tmp.path());
        cmd.args(["check", "-c", "policy.toml"]);
        let out = run_expect(&mut cmd, 0);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for mode in [0o664, 0o620] {
        assert_eq!(
            check(mode),
            format!(
                "policy.toml: warning: permissions {mode:04o} for the policy file let group {gid} write it: its members may send the keys to a store of their own or run a hook of their own with them; run chmod g-w policy.toml\n"
            )
        );
    }
    assert_eq!(check(0o644), "");
    // `plan` logs it (and then stops: the API key's variable is not set).
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o664)).unwrap();
    let mut cmd = rotator(tmp.path());
    cmd.args(["plan", "-c", "policy.toml"]);
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("for the policy file let group").count(),
        1,
        "{}",
        describe(&cmd, &out)
    );
}

/// The policy file says where the keys go and what runs with them: one that other users may
/// write, or replace through its directory, is refused before anything else. A file on a
/// read-only mount passes whatever its mode (a Kubernetes ConfigMap volume, as the shipped
/// manifests mount the policy: the directory 0777, the file 0644).
#[test]
fn a_policy_file_others_could_change_is_refused_unless_its_mount_is_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let from = tmp.path().join("configmap");
    let volume = tmp.path().join("config");
    fs::create_dir(&from).unwrap();
    fs::create_dir(&volume).unwrap();
    let policy = from.join("policy.toml");
    fs::copy(fixtures("valid").join("minimal.toml"), &policy).unwrap();
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    for mode in [0o666, 0o646] {
        chmod(&policy, mode);
        for args in [&["check"][..], &["once", "--dry-run"], &["run"]] {
            let mut cmd = rotator(tmp.path());
            cmd.args(args).args(["-c", "configmap/policy.toml"]);
            let out = run_expect(&mut cmd, EX_CONFIG);
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                format!(
                    "configmap/policy.toml: permissions {mode:04o} for the policy file are too open: other users may write it, and so send the keys to a store of their own or run a hook of their own with them; run chmod o-w configmap/policy.toml\n"
                ),
                "{}",
                describe(&cmd, &out)
            );
        }
    }
    chmod(&policy, 0o644);
    chmod(&from, 0o777);
    let mut cmd = rotator(tmp.path());
    cmd.args(["check", "-c", "configmap/policy.toml"]);
    let out = run_expect(&mut cmd, EX_CONFIG);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "configmap/policy.toml: permissions 0777 for directory {0} of the policy file are too open: other users may replace the file there with one of their own, which could send the keys anywhere; run chmod o-w {0} (or chmod +t {0})\n",
            fs::canonicalize(&from).unwrap().display()
        ),
        "{}",
        describe(&cmd, &out)
    );
    // Sticky (as /tmp): only the owner may replace it. Group-writable: directories are not
    // looked at for their group (a volume's fsGroup makes every one so).
    for mode in [0o1777, 0o775] {
        chmod(&from, mode);
        let mut cmd = rotator(tmp.path());
        cmd.args(["check", "-c", "configmap/policy.toml"]);
        run_expect(&mut cmd, 0);
    }
    // A ConfigMap volume: refused where it could be written, read where it is mounted read-only.
    chmod(&from, 0o755);
    let in_volume = volume.join("policy.toml");
    let mut check = rotator(tmp.path());
    check.args(["check", "-c"]).arg(&in_volume);
    let out = common::in_configmap_volume(&check, &volume, &from, false);
    assert_eq!(
        out.status.code(),
        Some(EX_CONFIG),
        "{}",
        describe(&check, &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "permissions 0777 for directory {} of the policy file are too open",
            volume.display()
        )),
        "{}",
        describe(&check, &out)
    );
    let out = common::in_configmap_volume(&check, &volume, &from, true);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&check, &out));
}
