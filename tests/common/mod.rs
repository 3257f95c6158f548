//! The test harness: the addresses of the real servers `scripts/peers.sh` started, names unique to
//! each test, and a way to run the built binary that explains itself when it fails.
//! A test that needs a server fails loudly when it is absent: it is never skipped.
#![allow(dead_code)]

pub mod claims;
pub mod fault_proxy;
pub mod policies;
pub mod private_bao;
pub mod private_moto;
pub mod rig;
pub mod stores;
pub mod stub_http;
pub mod transcript;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the real servers are, from the environment `scripts/peers.sh start` writes.
pub struct Peers {
    pub zenml_url: String,
    pub zenml_admin: String,
    pub zenml_admin_password: String,
    pub vault_addr: String,
    pub vault_root_token: String,
    pub aws_endpoint: String,
}

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs the real servers. Run scripts/test.sh, or \
             `scripts/peers.sh start && source .peers/run/env` before cargo nextest run"
        ),
    }
}

pub fn peers() -> Peers {
    Peers {
        zenml_url: required("ZR_ZENML_URL"),
        zenml_admin: required("ZR_ZENML_ADMIN"),
        zenml_admin_password: required("ZR_ZENML_ADMIN_PASSWORD"),
        vault_addr: required("ZR_VAULT_ADDR"),
        vault_root_token: required("ZR_VAULT_ROOT_TOKEN"),
        aws_endpoint: required("ZR_AWS_ENDPOINT"),
    }
}

/// The moto endpoint alone, for tests that need only AWS (`scripts/peers.sh start moto`).
pub fn aws_endpoint() -> String {
    required("ZR_AWS_ENDPOINT")
}

/// Where the real OpenBao is, for tests that need only it (`scripts/peers.sh start bao`).
pub struct VaultPeer {
    pub addr: String,
    pub root_token: String,
    /// The `bao` binary, for tests that start a private server (to seal it, or with TLS).
    pub bao_bin: String,
}

pub fn vault() -> VaultPeer {
    VaultPeer {
        addr: required("ZR_VAULT_ADDR"),
        root_token: required("ZR_VAULT_ROOT_TOKEN"),
        bao_bin: required("ZR_BAO_BIN"),
    }
}

/// A name no other test (or earlier run against the same server) uses: `prefix-<pid>-<n>-<rand>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{n}-{:05x}",
        std::process::id(),
        nanos & 0xfffff
    )
}

/// The built `zenml-rotator` binary, run in `dir` with an environment cleared of anything that
/// could leak in from the developer's shell (config paths, credentials, log settings).
pub fn rotator(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zenml-rotator"));
    cmd.current_dir(dir).env_clear();
    for keep in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd
}

/// Runs a command and returns its output; the panic message of a later assertion can use `describe`.
/// What the command wrote goes to the suite's transcript (the leak check reads it).
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => {
            transcript::command(cmd, &o);
            o
        }
        Err(e) => panic!("could not run {cmd:?}: {e}"),
    }
}

/// Runs `cmd` in a mount namespace of its own (`unshare`, as root of a user namespace of its
/// own, so it needs no privilege) where `volume` is a tmpfs laid out as Kubernetes mounts a
/// ConfigMap or Secret volume: the directory 0777, holding copies of the files in `from` with
/// their modes, and remounted read-only when `read_only`. Returns what `run` returns.
pub fn in_configmap_volume(cmd: &Command, volume: &Path, from: &Path, read_only: bool) -> Output {
    const SCRIPT: &str = r#"mount -t tmpfs -o mode=0777 tmpfs "$VOLUME" && cp -p "$FROM"/* "$VOLUME"/ && if [ "$READ_ONLY" = 1 ]; then mount -o remount,ro "$VOLUME"; fi && exec "$@""#;
    let mut wrapped = Command::new("unshare");
    wrapped.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("VOLUME", volume)
        .env("FROM", from)
        .env("READ_ONLY", if read_only { "1" } else { "0" });
    run(&mut wrapped)
}

/// Everything needed to understand a failed command: the command, exit status, stdout, stderr.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {cmd:?}\ndir: {:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd.get_current_dir(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs and asserts the exit code, printing everything when it differs.
pub fn run_expect(cmd: &mut Command, code: i32) -> Output {
    let out = run(cmd);
    if out.status.code() != Some(code) {
        panic!("expected exit {code}\n{}", describe(cmd, &out));
    }
    out
}

/// The ZenML server alone, for tests that need no other peer.
pub struct ZenmlPeer {
    pub url: String,
    pub admin: String,
    pub admin_password: String,
}

pub fn zenml() -> ZenmlPeer {
    let password = required("ZR_ZENML_ADMIN_PASSWORD");
    transcript::secret(&password);
    ZenmlPeer {
        url: required("ZR_ZENML_URL"),
        admin: required("ZR_ZENML_ADMIN"),
        admin_password: password,
    }
}

/// A client logged in (lazily) as the server's admin user.
pub fn zenml_admin() -> zenml_rotator::zenml::ZenmlClient {
    let peer = zenml();
    let creds = zenml_rotator::zenml::Credentials::Password {
        username: peer.admin,
        password: peer.admin_password.into(),
    };
    zenml_rotator::zenml::ZenmlClient::new(&peer.url, creds, Default::default()).unwrap()
}

/// A client that logs in with a service account's API key value.
pub fn zenml_key_client(
    value: &zenml_rotator::secret::SecretString,
) -> zenml_rotator::zenml::ZenmlClient {
    let creds = zenml_rotator::zenml::Credentials::ApiKey(value.clone());
    zenml_rotator::zenml::ZenmlClient::new(&zenml().url, creds, Default::default()).unwrap()
}

/// A fresh service account named `unique(prefix)` holding one API key named `default`.
pub async fn new_service_account_with_key(
    admin: &zenml_rotator::zenml::ZenmlClient,
    prefix: &str,
) -> (
    zenml_rotator::zenml::ServiceAccount,
    zenml_rotator::zenml::NewApiKey,
) {
    let name = unique(prefix);
    let sa = admin
        .create_service_account(&name, "created by a zenml-rotator test")
        .await
        .unwrap_or_else(|e| panic!("create service account {name}: {e}"));
    let key = admin
        .create_api_key(sa.id, "default", "created by a zenml-rotator test")
        .await
        .unwrap_or_else(|e| panic!("create API key on {name}: {e}"));
    transcript::secret(zenml_rotator::secret::ExposeSecret::expose_secret(
        &key.value,
    ));
    (sa, key)
}
