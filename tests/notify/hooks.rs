//! Hooks: the documented environment and standard input, output scrubbed into the log, and a
//! failing hook retried by the next passes until it succeeds, or given up after five attempts.

use zenml_rotator::secret::ExposeSecret;

use crate::common::rig::{PASSWORD_ENV, Ran, Rig};
use crate::common::{new_service_account_with_key, zenml, zenml_admin};
use crate::{assert_no_value, audit_lines, fingerprint, script, stored_value};

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_gets_the_documented_environment_and_the_value_only_on_stdin() {
    let admin = zenml_admin();
    let (sa, old) = new_service_account_with_key(&admin, "nt-hook-env").await;
    let old = old.value.expose_secret().to_owned();
    let mut rig = Rig::new();
    let out = rig.path().join("hook-out");
    std::fs::create_dir(&out).unwrap();
    let hook = script(
        &rig,
        "hook.sh",
        "env > \"$1/env\"\ncat > \"$1/stdin\"\nprintf '%s\\n' \"$0\" \"$@\" > \"$1/args\"\n\
         echo \"pushed ZENKEY_not-really-a-key to the consumer\"\necho 'a warning' >&2",
    );
    rig.file_store("local").key(
        "k",
        &sa.name,
        "local",
        "k.env",
        &format!(
            "on_rotated = {{ command = [{hook:?}, {:?}], stdin = \"payload\", timeout = \"20s\" }}",
            out.display().to_string()
        ),
    );
    rig.write();
    let ran = once_with(&rig, 0, &["rotated", "hook ran"]);
    let new = stored_value(&rig, "k.env");
    let key = admin.get_api_key(sa.id, "default").await.unwrap();

    let env = std::fs::read_to_string(out.join("env")).unwrap();
    let mut ours: Vec<&str> = env.lines().filter(|l| l.starts_with("ZENML_")).collect();
    ours.sort_unstable();
    let fp = fingerprint(&new);
    let key_id = key.id.to_string();
    assert_eq!(
        ours,
        [
            "ZENML_ROTATOR_EVENT=rotated".to_owned(),
            format!("ZENML_ROTATOR_FINGERPRINT={fp}"),
            format!("ZENML_ROTATOR_KEY_ID={key_id}"),
            "ZENML_ROTATOR_POLICY=k".to_owned(),
        ]
    );
    // The rotator's own credentials stay with it.
    assert!(
        !env.contains(PASSWORD_ENV) && !env.contains("AWS_SECRET_ACCESS_KEY"),
        "{env}"
    );
    assert!(
        !env.contains(&zenml().admin_password),
        "the admin password reached the hook"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("stdin")).unwrap(),
        format!(
            "ZENML_STORE_URL={}\nZENML_STORE_API_KEY={new}\n",
            zenml().url
        )
    );
    let args = std::fs::read_to_string(out.join("args")).unwrap();
    assert_eq!(args, format!("{hook}\n{}\n", out.display()));
    assert_no_value("the hook's environment", &env, &[&old, &new]);
    assert_no_value("the hook's arguments", &args, &[&old, &new]);
    // Its output is in the log, scrubbed.
    assert!(
        ran.stderr
            .contains("hook output: pushed ZENKEY_[redacted] to the consumer"),
        "{}",
        ran.describe()
    );
    assert!(
        ran.stderr.contains("hook output: a warning"),
        "{}",
        ran.describe()
    );
    assert!(!ran.stderr.contains("not-really-a-key"));
    // Done for this value: the next pass runs nothing.
    std::fs::remove_file(out.join("env")).unwrap();
    once_with(&rig, 0, &["wait"]);
    assert!(!out.join("env").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_is_retried_by_the_next_passes_until_it_succeeds() {
    let (mut rig, runs, _) = hooked(
        "nt-hook-retry",
        "flaky.sh",
        "echo run >> \"$1\"\ntest -e \"$2\" || { echo 'consumer unreachable' >&2; exit 3; }",
        &["fixed"],
        "",
    )
    .await;
    let fixed = rig.path().join("fixed");
    let audit = rig.path().join("audit.jsonl");
    rig.section(&format!(
        "[[notify]]\npath = {:?}\n",
        audit.display().to_string()
    ));
    rig.write();
    let count = || crate::lines_in(&runs);

    // The rotation stands; the pass fails because of the hook.
    once_with(&rig, 1, &["rotated", "hook failed"]);
    assert_eq!(count(), 1);
    let stored = stored_value(&rig, "k.env");
    once_with(&rig, 1, &["wait", "hook failed"]);
    assert_eq!(count(), 2);
    assert_eq!(stored_value(&rig, "k.env"), stored, "no new rotation");

    std::fs::write(&fixed, "").unwrap();
    once_with(&rig, 0, &["wait", "hook ran"]);
    assert_eq!(count(), 3);
    once_with(&rig, 0, &["wait"]);
    assert_eq!(
        count(),
        3,
        "a hook that succeeded runs no more for this value"
    );

    let failures: Vec<_> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["event"] == "hook_failed")
        .collect();
    assert_eq!(failures.len(), 2, "{failures:#?}");
    let detail = failures[1]["detail"].as_str().unwrap();
    assert!(
        detail.contains("exited with status 3") && detail.contains("attempt 2 of 5"),
        "{detail}"
    );
    assert_eq!(failures[0]["fingerprint"], fingerprint(&stored).as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_that_keeps_failing_is_given_up_after_five_attempts() {
    let (rig, runs, _) = hooked(
        "nt-hook-bound",
        "slow.sh",
        "echo run >> \"$1\"\nsleep 30",
        &[],
        ", timeout = \"1s\"",
    )
    .await;
    rig.write();
    let count = || crate::lines_in(&runs);
    for pass in 1..=5 {
        let started = std::time::Instant::now();
        let ran = rig.expect(&["once", "--output", "json"], 1);
        assert!(
            started.elapsed().as_secs() < 25,
            "the timeout killed the hook"
        );
        let (_, _, detail) = ran
            .rows()
            .into_iter()
            .find(|(_, r, _)| r == "hook failed")
            .unwrap();
        assert!(detail.contains("timed out after 1s"), "{detail}");
        assert!(detail.contains(&format!("attempt {pass} of 5")), "{detail}");
        assert_eq!(count(), pass as usize);
    }
    once_with(&rig, 0, &["wait"]);
    assert_eq!(count(), 5, "given up after five attempts");
}

/// A hook's program gets the key on its standard input: one that other users may change, or put
/// another program in the place of, is not run (a failed attempt, said why), and runs once fixed;
/// one its group may change runs, with a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_hook_program_others_could_change_is_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let (rig, runs, hook) = hooked(
        "nt-hook-trust",
        "bin/hook.sh",
        "cat > /dev/null\necho run >> \"$1\"",
        &[],
        ", stdin = \"payload\"",
    )
    .await;
    let bin = rig.path().join("bin");
    rig.write();
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |expected: &str| {
        let ran = rig.expect(&["once", "--output", "json"], 1);
        let (_, _, detail) = ran
            .rows()
            .into_iter()
            .find(|(_, r, _)| r == "hook failed")
            .unwrap_or_else(|| panic!("{}", ran.describe()));
        assert!(detail.contains(expected), "{detail}");
        assert_eq!(crate::lines_in(&runs), 0, "the hook ran");
    };
    chmod(std::path::Path::new(&hook), 0o777);
    refused(&format!(
        "not run: permissions 0777 for {hook} are too open: other users may change the program a hook runs with the key; run chmod o-w {hook}"
    ));
    chmod(std::path::Path::new(&hook), 0o755);
    chmod(&bin, 0o777);
    refused(&format!(
        "not run: permissions 0777 for directory {0} of {hook} are too open: other users may put another program in its place, which would run with the key; run chmod o-w {0} (or chmod +t {0})",
        bin.display()
    ));
    chmod(&bin, 0o755);
    // Its group may change it: it runs, and the log says so.
    chmod(std::path::Path::new(&hook), 0o775);
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&hook).unwrap());
    let ran = once_with(&rig, 0, &["wait", "hook ran"]);
    assert_eq!(crate::lines_in(&runs), 1);
    let warning = format!(
        "permissions 0775 for {hook} let group {gid} write it: its members may change the program a hook runs with the key; run chmod g-w {hook}"
    );
    assert_eq!(
        ran.stderr.matches(&warning).count(),
        1,
        "{}",
        ran.describe()
    );
}

/// A rig whose key `k`, of a new service account, runs the script `name` (`body`) as its
/// `on_rotated` hook with the file `runs` (where the script counts its runs) and then the files
/// `more` of the rig's directory as its arguments, `fields` after the command. Not yet written.
async fn hooked(
    prefix: &str,
    name: &str,
    body: &str,
    more: &[&str],
    fields: &str,
) -> (Rig, std::path::PathBuf, String) {
    let (sa, _) = new_service_account_with_key(&zenml_admin(), prefix).await;
    let mut rig = Rig::new();
    if let Some(dir) = std::path::Path::new(name).parent() {
        std::fs::create_dir_all(rig.path().join(dir)).unwrap();
    }
    let hook = script(&rig, name, body);
    let runs = rig.path().join("runs");
    let args: Vec<String> = std::iter::once(hook.clone())
        .chain(std::iter::once(runs.display().to_string()))
        .chain(
            more.iter()
                .map(|m| rig.path().join(m).display().to_string()),
        )
        .map(|a| format!("{a:?}"))
        .collect();
    rig.file_store("local").key(
        "k",
        &sa.name,
        "local",
        "k.env",
        &format!("on_rotated = {{ command = [{}]{fields} }}", args.join(", ")),
    );
    (rig, runs, hook)
}

/// One `once` over the rig's policy: its exit code and what it reported for key `k` asserted.
fn once_with(rig: &Rig, code: i32, results: &[&str]) -> Ran {
    let ran = rig.expect(&["once", "--output", "json"], code);
    assert_eq!(ran.results_of("k"), results, "{}", ran.describe());
    ran
}
