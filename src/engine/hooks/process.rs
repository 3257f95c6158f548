//! Running one hook: the command itself (no shell), a clean environment that names the key but
//! never holds its value, the value only on standard input when asked (`stdin = "payload"`), a
//! timeout that kills the hook and everything it started, and its output, scrubbed, to the log.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::{Hook, HookStdin};
use crate::secret::{ExposeSecret, SecretString};
use crate::store::{ENV_API_KEY, ENV_URL};

/// What a hook inherits from the rotator's environment: enough to run programs and read its own
/// credentials (systemd `LoadCredential=`), never the rotator's (`*_env` secrets, AWS keys).
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "CREDENTIALS_DIRECTORY",
];

/// Output kept per stream for the log; the rest is read and dropped.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// Which value a run is for.
pub struct HookContext<'a> {
    pub policy: &'a str,
    /// `rotated` or `finalized`.
    pub event: &'static str,
    /// `on_rotated` or `on_finalized`, for the log.
    pub hook: &'static str,
    pub key_id: &'a str,
    pub fingerprint: &'a str,
}

/// `ZENML_STORE_URL=...` and `ZENML_STORE_API_KEY=...`, one a line.
pub fn payload(zenml_url: &str, value: &SecretString) -> SecretString {
    SecretString::from(format!(
        "{ENV_URL}={zenml_url}\n{ENV_API_KEY}={}\n",
        value.expose_secret()
    ))
}

/// Runs the hook to its end or its timeout. `Err` says why it failed, for people.
pub async fn run(
    hook: &Hook,
    cx: &HookContext<'_>,
    payload: Option<&SecretString>,
) -> Result<Duration, String> {
    let started = Instant::now();
    trusted_program(&hook.command[0])?;
    let mut cmd = tokio::process::Command::new(&hook.command[0]);
    cmd.args(&hook.command[1..])
        .env_clear()
        .stdin(match (hook.stdin, payload) {
            (HookStdin::Payload, Some(_)) => Stdio::piped(),
            _ => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills whatever the hook started too.
        .process_group(0)
        .kill_on_drop(true);
    for name in INHERITED {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env("ZENML_ROTATOR_POLICY", cx.policy)
        .env("ZENML_ROTATOR_EVENT", cx.event)
        .env("ZENML_ROTATOR_KEY_ID", cx.key_id)
        .env("ZENML_ROTATOR_FINGERPRINT", cx.fingerprint);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", hook.command[0]))?;
    let pid = child.id();
    if let (Some(mut stdin), Some(p)) = (child.stdin.take(), payload) {
        // A hook that does not read its input closes it: that is no failure of the rotator's.
        let _ = stdin.write_all(p.expose_secret().as_bytes()).await;
        drop(stdin);
    }
    let out = tokio::spawn(read_capped(child.stdout.take()));
    let err = tokio::spawn(read_capped(child.stderr.take()));
    let status = match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("cannot wait for the hook: {e}")),
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            Err(format!(
                "timed out after {}s and was killed",
                hook.timeout.as_secs_f64()
            ))
        }
    };
    let scrub_with = payload;
    for (stream, task) in [("stdout", out), ("stderr", err)] {
        let bytes = task.await.unwrap_or_default();
        log_output(cx, stream, &String::from_utf8_lossy(&bytes), scrub_with);
    }
    let status = status?;
    if status.success() {
        return Ok(started.elapsed());
    }
    Err(match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    })
}

/// A hook's program runs with the key on its standard input, or with whatever the rotator's user
/// can reach: one that other users may change, or put another program in the place of
/// (`trust.rs`), is not run. `Err` says why, as a failed run does. One its group may write runs,
/// with a warning (once per program and process).
fn trusted_program(program: &str) -> Result<(), String> {
    use crate::trust::Changeable;
    let path = std::path::Path::new(program);
    let io = |e| format!("cannot start {program}: {e}");
    let meta = std::fs::metadata(path).map_err(io)?;
    match crate::trust::changeable_by_others(path, &meta).map_err(io)? {
        Some(Changeable::File { mode }) => Err(format!(
            "not run: permissions {mode:04o} for {program} are too open: other users may change the program a hook runs with the key; run chmod o-w {program}"
        )),
        Some(Changeable::Directory { dir, mode }) => {
            let dir = dir.display();
            Err(format!(
                "not run: permissions {mode:04o} for directory {dir} of {program} are too open: other users may put another program in its place, which would run with the key; run chmod o-w {dir} (or chmod +t {dir})"
            ))
        }
        None => {
            if let Some((mode, gid)) = crate::trust::group_writable(path, &meta) {
                crate::trust::warn_once(format!(
                    "permissions {mode:04o} for {program} let group {gid} write it: its members may change the program a hook runs with the key; run chmod g-w {program}"
                ));
            }
            Ok(())
        }
    }
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // SAFETY: sends SIGKILL to the process group the hook leads (created by `process_group(0)`).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

async fn read_capped<R: AsyncRead + Unpin>(stream: Option<R>) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

fn log_output(cx: &HookContext<'_>, stream: &str, text: &str, value: Option<&SecretString>) {
    for line in scrub(text, value).lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!(
            policy = cx.policy,
            hook = cx.hook,
            stream,
            "hook output: {line}"
        );
    }
}

/// The output as it may be logged: the payload's lines and any `ZENKEY_...` word replaced.
pub fn scrub(text: &str, payload: Option<&SecretString>) -> String {
    let mut out = text.to_owned();
    if let Some(p) = payload {
        for line in p.expose_secret().lines() {
            if let Some((_, value)) = line.split_once('=')
                && value.len() >= 8
                && line.starts_with(ENV_API_KEY)
            {
                out = out.replace(value, "[redacted]");
            }
        }
    }
    let mut scrubbed = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("ZENKEY_") {
        scrubbed.push_str(&rest[..i]);
        scrubbed.push_str("ZENKEY_[redacted]");
        let tail = &rest[i + "ZENKEY_".len()..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    scrubbed.push_str(rest);
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_and_any_zenkey_are_scrubbed() {
        let p = payload("https://z", &SecretString::from("s3cr3t-value-xyz"));
        let text = "pushed s3cr3t-value-xyz\nalso ZENKEY_abc=def done\n";
        let out = scrub(text, Some(&p));
        assert_eq!(out, "pushed [redacted]\nalso ZENKEY_[redacted] done\n");
        assert_eq!(scrub("nothing here", None), "nothing here");
    }
}
