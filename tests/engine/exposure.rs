//! What the rotator refuses because it would leak: a credential file or a state directory other
//! users may read, and a ZenML server that redirects elsewhere. And what it writes stays its own:
//! every file 0600 in 0700 directories. Through the built binary, against the real ZenML.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zenml_rotator::secret::ExposeSecret;
use zenml_rotator::zenml::KeyCheck;

use crate::common::rig::{PASSWORD_ENV, Rig};
use crate::common::stores::{check, zenml_state};
use crate::common::stub_http::{StubReply, StubServer};
use crate::common::zenml;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The rig's policy, logging in with `password_file = file` instead of the environment.
fn with_password_file(rig: &Rig, file: &Path) {
    let policy = rig.config();
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        &format!("password_env = {PASSWORD_ENV:?}"),
        &format!("password_file = {:?}", file.display().to_string()),
    );
    std::fs::write(&policy, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_file_other_users_may_read_is_refused_before_anything_is_sent() {
    let (admin, sa, old, mut rig) = crate::file_store_key("exp-pw").await;
    let file = rig.path().join("zenml-password");
    std::fs::write(&file, format!("{}\n", zenml().admin_password)).unwrap();
    with_password_file(&rig, &file);
    let before = zenml_state(&admin, sa.id).await;
    for m in [0o644, 0o604] {
        chmod(&file, m);
        let ran = rig.expect(&["once"], 1);
        assert_eq!(
            ran.stderr,
            format!(
                "zenml-rotator: ZenML credentials: permissions {m:04o} for {0} are too open: a credential file must not be accessible by other users; run chmod o-rwx {0}\n",
                file.display()
            ),
            "{}",
            ran.describe()
        );
    }
    assert_eq!(zenml_state(&admin, sa.id).await, before, "ZenML changed");
    assert!(!rig.keys_dir().exists(), "nothing was written");

    // The owner's file, readable by its group too: it works, and the log says so once.
    chmod(&file, 0o640);
    let ran = rig.expect(&["once"], 0);
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&file).unwrap());
    let warning = format!(
        "permissions 0640 for {0} give group {gid} access to a credential file owned by the rotator's user; run chmod g-rwx {0}",
        file.display()
    );
    assert_eq!(
        ran.stderr.matches(&warning).count(),
        1,
        "{}",
        ran.describe()
    );
    assert_eq!(
        check(&admin, old.value.expose_secret()).await,
        KeyCheck::Accepted
    );

    // A systemd credential (a bare name read from $CREDENTIALS_DIRECTORY) is systemd's to guard.
    chmod(&file, 0o644);
    rig.env("CREDENTIALS_DIRECTORY", &rig.path().display().to_string());
    rig.write();
    with_password_file(&rig, Path::new("zenml-password"));
    let ran = rig.expect(&["once"], 0);
    assert!(!ran.stderr.contains("permissions"), "{}", ran.describe());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_directory_other_users_may_enter_is_refused_and_what_is_written_stays_private() {
    let (admin, sa, _old, rig) = crate::file_store_key("exp-state").await;
    std::fs::create_dir(rig.state_dir()).unwrap();
    chmod(&rig.state_dir(), 0o755);
    let before = zenml_state(&admin, sa.id).await;
    for args in [&["once"][..], &["rotate", "k"]] {
        let ran = rig.expect(args, 1);
        assert_eq!(
            ran.stderr,
            format!(
                "zenml-rotator: permissions 0755 for state directory {0} are too open: a directory that holds keys must not be accessible by other users; run chmod o-rwx {0}\n",
                rig.state_dir().display()
            ),
            "{}",
            ran.describe()
        );
    }
    assert_eq!(zenml_state(&admin, sa.id).await, before, "ZenML changed");
    assert_eq!(mode(&rig.state_dir()), 0o755, "refused, not repaired");

    // Made private: a rotation and its journal, lock, key file, `.previous` and record are the
    // rotator's alone (two rotations, so that a previous value exists).
    chmod(&rig.state_dir(), 0o700);
    rig.expect(&["rotate", "k"], 0);
    rig.expect(&["rotate", "k", "--force"], 0);
    for dir in [rig.state_dir(), rig.journal_dir(), rig.keys_dir()] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let mut files = Vec::new();
    for dir in [rig.state_dir(), rig.keys_dir()] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [".k.env.lock", "k.env", "k.env.meta.json", "k.env.previous"]
    );
}

/// A ZenML server that redirects: the command fails saying so, and the server pointed at never
/// hears from the rotator (neither the password of the login nor a token).
#[test]
fn a_zenml_server_that_redirects_gets_no_credential_elsewhere() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (elsewhere, redirector) = rt.block_on(async {
        let elsewhere = StubServer::recorder().await;
        let to = elsewhere.url.replace("127.0.0.1", "localhost");
        let redirector = StubServer::start(move |r| StubReply::redirect(308, &to, r)).await;
        (elsewhere, redirector)
    });
    let mut rig = Rig::new();
    rig.file_store("local")
        .key("k", "any", "local", "k.env", "");
    rig.write();
    let policy = rig.config();
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        &format!("url = {:?}", zenml().url),
        &format!("url = {:?}", redirector.url),
    );
    std::fs::write(&policy, text).unwrap();
    for args in [&["inventory"][..], &["once"]] {
        let ran = rig.expect(args, 1);
        assert!(
            ran.stdout.contains(
                "the ZenML server answered with a redirect (HTTP 308 to http://localhost:"
            ) || ran.stderr.contains(
                "the ZenML server answered with a redirect (HTTP 308 to http://localhost:"
            ),
            "{}",
            ran.describe()
        );
    }
    let login = redirector.requests();
    assert!(
        login.iter().all(|r| r.path() == "/api/v1/login"),
        "{login:?}"
    );
    assert!(login[0].body_text().contains("grant_type=password"));
    assert!(
        elsewhere.requests().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.requests()
    );
}

/// A CA file its group may write is read (here it holds no certificate, which stops `plan` after
/// it), and the log says so first.
#[test]
fn a_ca_file_its_group_may_write_is_read_with_a_warning() {
    let mut rig = Rig::new();
    let ca = rig.path().join("ca.pem");
    std::fs::write(&ca, "no certificate").unwrap();
    chmod(&ca, 0o664);
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&ca).unwrap());
    rig.zenml_line(&format!("ca_file = {:?}", ca.display().to_string()))
        .file_store("local")
        .key("k", "any", "local", "k.env", "");
    rig.write();
    let mut cmd = rig.cmd(&["plan"]);
    let out = crate::common::run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let described = crate::common::describe(&cmd, &out);
    let ca = ca.display();
    let warned = format!(
        "permissions 0664 for CA file {ca} let group {gid} write it: its members may add a certificate authority of their own that the rotator would trust; run chmod g-w {ca}"
    );
    assert_eq!(stderr.matches(&warned).count(), 1, "{described}");
    let read = format!("CA file {ca} holds no usable PEM certificate");
    assert!(stderr.contains(&read), "{described}");
    assert!(stderr.find(&warned) < stderr.find(&read), "{described}");
}

/// A Kubernetes ConfigMap volume's directory is 0777 and its files take the volume's
/// `defaultMode`, but the volume is mounted read-only, so nobody can write to either: a CA file
/// there is read. The same modes on a writable mount are refused, the file's and then the
/// directory's.
#[test]
fn a_ca_file_others_could_replace_is_refused_unless_its_mount_is_read_only() {
    let mut rig = Rig::new();
    let volume = rig.path().join("zenml-ca");
    let from = rig.path().join("configmap");
    std::fs::create_dir(&volume).unwrap();
    std::fs::create_dir(&from).unwrap();
    std::fs::write(from.join("ca.pem"), "no certificate").unwrap();
    let ca = volume.join("ca.pem");
    rig.zenml_line(&format!("ca_file = {:?}", ca.display().to_string()))
        .file_store("local")
        .key("k", "any", "local", "k.env", "");
    rig.write();
    let plan = |file_mode: u32, read_only: bool| {
        chmod(&from.join("ca.pem"), file_mode);
        let cmd = rig.cmd(&["plan"]);
        let out = crate::common::in_configmap_volume(&cmd, &volume, &from, read_only);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (said, crate::common::describe(&cmd, &out))
    };
    let ca = ca.display();
    let (said, described) = plan(0o666, false);
    let file_refused = format!("permissions 0666 for CA file {ca} are too open");
    assert!(said.contains(&file_refused), "{described}\n{said}");
    let (said, described) = plan(0o644, false);
    let dir_refused = format!(
        "permissions 0777 for directory {} of CA file {ca} are too open",
        volume.display()
    );
    assert!(said.contains(&dir_refused), "{described}\n{said}");
    let (said, described) = plan(0o666, true);
    let read = format!("CA file {ca} holds no usable PEM certificate");
    assert!(
        said.contains(&read),
        "read, not refused: {described}\n{said}"
    );
}
