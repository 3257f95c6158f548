//! One engine test's world on disk: a temp dir with its policy file, state dir and file-store dir,
//! and the environment the built binary gets (ZenML password, Vault tokens, AWS credentials), so
//! each test writes only the `[stores]` and `[[key]]` it needs and runs the binary in one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{describe, rotator, run, unique, zenml};

/// The environment variable the policy's `password_env` names.
pub const PASSWORD_ENV: &str = "ZR_TEST_ZENML_PASSWORD";

pub struct Rig {
    pub dir: tempfile::TempDir,
    defaults: Vec<String>,
    stores: Vec<String>,
    keys: Vec<String>,
    env: Vec<(String, String)>,
    /// `[zenml] url` when not the real server's (a fault proxy in front of it), and more lines.
    zenml_url: Option<String>,
    zenml_lines: Vec<String>,
    /// The AWS secret access key handed to the binary: unique per rig, so a leak test can look for it.
    pub aws_secret_access_key: String,
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}

impl Rig {
    pub fn new() -> Rig {
        let peer = zenml();
        let aws_secret_access_key = format!("awssecret{}", unique("k").replace('-', ""));
        super::transcript::secret(&aws_secret_access_key);
        Rig {
            dir: tempfile::tempdir().unwrap(),
            defaults: Vec::new(),
            stores: Vec::new(),
            keys: Vec::new(),
            zenml_url: None,
            zenml_lines: Vec::new(),
            env: vec![
                (PASSWORD_ENV.into(), peer.admin_password),
                // Static credentials for moto, from the SDK's environment provider.
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    aws_secret_access_key.clone(),
                ),
            ],
            aws_secret_access_key,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("zenml-rotator.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir().join("journal")
    }

    /// Where `file_store` keeps its env files.
    pub fn keys_dir(&self) -> PathBuf {
        self.path().join("keys")
    }

    /// A `[defaults]` line, e.g. `retain = "1m"` or `concurrency = 4`.
    pub fn default_line(&mut self, line: &str) -> &mut Self {
        self.defaults.push(line.to_owned());
        self
    }

    /// Talk to ZenML at `url` (a proxy in front of the real server) instead.
    pub fn zenml_url(&mut self, url: &str) -> &mut Self {
        self.zenml_url = Some(url.to_owned());
        self
    }

    /// A `[zenml]` line, e.g. `timeout = "2s"`.
    pub fn zenml_line(&mut self, line: &str) -> &mut Self {
        self.zenml_lines.push(line.to_owned());
        self
    }

    /// Drops the `[zenml]` lines added with `zenml_line` (write again to apply).
    pub fn clear_zenml_lines(&mut self) -> &mut Self {
        self.zenml_lines.clear();
        self
    }

    /// Any other table, as written (e.g. `[coordination]\nclaim_ttl = "10s"`).
    pub fn section(&mut self, text: &str) -> &mut Self {
        self.stores.push(format!("{text}\n"));
        self
    }

    pub fn env(&mut self, name: &str, value: &str) -> &mut Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn file_store(&mut self, name: &str) -> &mut Self {
        let dir = self.keys_dir();
        self.stores.push(format!(
            "[stores.{name}]\nkind = \"file\"\ndir = {:?}\n",
            dir.display().to_string()
        ));
        self
    }

    /// A Vault store with token auth; the token reaches the binary through `token_env`.
    pub fn vault_store(&mut self, name: &str, addr: &str, token: &str) -> &mut Self {
        let var = format!(
            "ZR_TEST_VAULT_TOKEN_{}",
            name.to_uppercase().replace('-', "_")
        );
        self.stores.push(format!(
            "[stores.{name}]\nkind = \"vault\"\naddress = {addr:?}\nmount = \"secret\"\n\
             auth = {{ method = \"token\", token_env = {var:?} }}\n"
        ));
        self.env.push((var, token.to_owned()));
        self
    }

    /// A Vault store with extra settings lines (e.g. `timeout = "2s"`).
    pub fn vault_store_with(
        &mut self,
        name: &str,
        addr: &str,
        token: &str,
        extra: &str,
    ) -> &mut Self {
        self.vault_store(name, addr, token);
        if let Some(last) = self.stores.last_mut() {
            last.push_str(extra);
            last.push('\n');
        }
        self
    }

    /// An AWS store with extra settings lines (e.g. `timeout = "3s"`).
    pub fn aws_store_with(&mut self, name: &str, endpoint: &str, extra: &str) -> &mut Self {
        self.aws_store(name, endpoint);
        if let Some(last) = self.stores.last_mut() {
            last.push_str(extra);
            last.push('\n');
        }
        self
    }

    pub fn aws_store(&mut self, name: &str, endpoint: &str) -> &mut Self {
        self.stores.push(format!(
            "[stores.{name}]\nkind = \"aws-secrets-manager\"\nregion = \"us-east-1\"\n\
             endpoint_url = {endpoint:?}\n"
        ));
        self
    }

    /// A `[[key]]`; `extra` holds more lines (e.g. `every = "7d"`), or is empty.
    pub fn key(
        &mut self,
        name: &str,
        service_account: &str,
        store: &str,
        path: &str,
        extra: &str,
    ) -> &mut Self {
        self.keys.push(format!(
            "[[key]]\nname = {name:?}\nservice_account = {service_account:?}\napi_key = \"default\"\n\
             store = {store:?}\npath = {path:?}\n{extra}\n"
        ));
        self
    }

    /// Forgets the `[[key]]`s declared so far (to write a changed policy file over the same state).
    pub fn clear_keys(&mut self) -> &mut Self {
        self.keys.clear();
        self
    }

    /// Writes the policy file from what was declared so far.
    pub fn write(&self) -> PathBuf {
        let path = self.config();
        let url = self.zenml_url.clone().unwrap_or_else(|| zenml().url);
        std::fs::write(&path, self.text(&url)).unwrap();
        path
    }

    /// Writes the same policy with ZenML at `zenml_url`, as `<dir>/<name>.toml`: rotators of one
    /// host (one state directory) that reach ZenML through different proxies.
    pub fn write_variant(&self, name: &str, zenml_url: &str) -> PathBuf {
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(&path, self.text(zenml_url)).unwrap();
        path
    }

    fn text(&self, zenml_url: &str) -> String {
        let peer = zenml();
        let mut text = format!(
            "[zenml]\nurl = {zenml_url:?}\nusername = {:?}\npassword_env = {PASSWORD_ENV:?}\n",
            peer.admin
        );
        for line in &self.zenml_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\n[defaults]\n");
        for line in &self.defaults {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[state]\ndir = {:?}\n\n",
            self.state_dir().display().to_string()
        ));
        for s in &self.stores {
            text.push_str(s);
            text.push('\n');
        }
        for k in &self.keys {
            text.push_str(k);
        }
        text
    }

    /// The built binary with this rig's environment and `-c <policy>` after the command's args.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_with(&self.config(), args)
    }

    /// Like `cmd`, with another policy file (a `write_variant`).
    pub fn cmd_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = rotator(self.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(args).arg("-c").arg(config);
        cmd
    }

    /// Runs a command and asserts its exit code; returns stdout and stderr as text.
    pub fn expect(&self, args: &[&str], code: i32) -> Ran {
        let mut cmd = self.cmd(args);
        let out = run(&mut cmd);
        let ran = Ran::new(&cmd, out);
        assert_eq!(
            ran.output.status.code(),
            Some(code),
            "expected exit {code}\n{}",
            ran.describe()
        );
        ran
    }

    /// Every file under the journal dir (name and bytes); empty when the dir does not exist.
    pub fn journal_files(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(rd) = std::fs::read_dir(self.journal_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The names of the files under the journal dir (for assertion messages: no key material).
    pub fn journal_names(&self) -> Vec<String> {
        self.journal_files().into_iter().map(|(n, _)| n).collect()
    }

    /// The journal entry of one policy, parsed.
    pub fn journal_entry(&self, policy: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.journal_dir().join(format!("{policy}.json"))).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }
}

/// What the rotator left behind goes to the suite's transcript: the state directory, metrics
/// textfiles and the file store's records (never its values: holding them is its job).
impl Drop for Rig {
    fn drop(&mut self) {
        super::transcript::tree(&self.state_dir());
        for dir in [self.path().to_path_buf(), self.keys_dir()] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".prom") || name.ends_with(".meta.json") {
                    super::transcript::file(&e.path());
                }
            }
        }
    }
}

/// A finished run of the binary: output as text, and everything needed to explain a failure.
pub struct Ran {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
    described: String,
}

impl Ran {
    pub fn new(cmd: &Command, output: Output) -> Ran {
        Ran {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            described: describe(cmd, &output),
            output,
        }
    }

    pub fn describe(&self) -> &str {
        &self.described
    }

    /// The pass report of `--output json`, as (policy, result, detail) rows.
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.described));
        v.as_array()
            .unwrap_or_else(|| panic!("stdout is not a JSON array\n{}", self.described))
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("policy"), s("result"), s("detail"))
            })
            .collect()
    }

    /// The results of one policy's rows in a `--output json` pass report.
    pub fn results_of(&self, policy: &str) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|(p, _, _)| p == policy)
            .map(|(_, r, _)| r)
            .collect()
    }
}

/// A finished run with what it cost: wall time and the child's peak RSS (`ru_maxrss` of wait4).
pub struct Measured {
    pub ran: Ran,
    pub wall: std::time::Duration,
    pub peak_rss_kib: i64,
}

impl Rig {
    /// Like `expect`, measuring the run. Output goes through files so nothing blocks on a pipe.
    pub fn expect_measured(&self, args: &[&str], code: i32) -> Measured {
        use std::os::unix::process::ExitStatusExt;
        let out_path = self.path().join(".measured.stdout");
        let err_path = self.path().join(".measured.stderr");
        let mut cmd = self.cmd(args);
        cmd.stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let started = std::time::Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child, which std never reaps
        // (the Child is forgotten below instead of waited on).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = started.elapsed();
        assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
        std::mem::forget(child);
        let output = Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: std::fs::read(&out_path).unwrap(),
            stderr: std::fs::read(&err_path).unwrap(),
        };
        super::transcript::command(&cmd, &output);
        let ran = Ran::new(&cmd, output);
        assert_eq!(
            ran.output.status.code(),
            Some(code),
            "expected exit {code}\n{}",
            ran.describe()
        );
        Measured {
            ran,
            wall,
            peak_rss_kib: usage.ru_maxrss,
        }
    }
}

/// The one row of `policy` in a `--output json` pass report: failed, at `stage`. Returns the detail.
pub fn failed_at(ran: &Ran, policy: &str, stage: &str) -> String {
    let rows: Vec<_> = ran
        .rows()
        .into_iter()
        .filter(|(p, _, _)| p == policy)
        .collect();
    assert_eq!(rows.len(), 1, "{}", ran.describe());
    let (_, result, detail) = &rows[0];
    assert_eq!(result, "failed", "{}", ran.describe());
    assert!(
        detail.starts_with(&format!("{stage}: ")),
        "expected stage {stage}\n{}",
        ran.describe()
    );
    detail.clone()
}
