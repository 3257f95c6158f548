//! The suite's record for the leak check (invariant 4): every byte a rotator process wrote that the
//! tests captured (stdout, stderr, daemon logs, metrics textfiles, the files left in a state
//! directory), and every secret the tests created or saw (key values, passwords, tokens). Both go
//! under the directory `ZR_TRANSCRIPTS` names (`scripts/test.sh` sets it); after the tests,
//! `scripts/scan-transcripts.py` looks for every secret in every transcript. Unset, nothing is
//! recorded.
//!
//! Layout: `<dir>/out/<pid>.log` (what processes wrote, appended, one header line per capture) and
//! `<dir>/secrets/<pid>.txt` (one secret per line). Each test process writes its own files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;

/// Secrets shorter than this are not recorded: a scan for them would match by chance (the dev
/// servers' `root` token, moto's `testing` credentials: both fixed and public).
pub const MIN_SECRET_LEN: usize = 12;

static LOCK: Mutex<()> = Mutex::new(());

fn dir() -> Option<PathBuf> {
    std::env::var_os("ZR_TRANSCRIPTS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn append(kind: &str, ext: &str, bytes: &[u8]) {
    let Some(dir) = dir() else { return };
    let dir = dir.join(kind);
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = dir.join(format!("{}.{ext}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// Records what a process wrote (`what` says which process and which stream).
pub fn output(what: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut text = format!("\n==== {what} ({} bytes)\n", bytes.len()).into_bytes();
    text.extend_from_slice(bytes);
    append("out", "log", &text);
}

/// Records both streams of a finished command.
pub fn command(cmd: &std::process::Command, out: &std::process::Output) {
    let what = format!(
        "{:?} {:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    output(&format!("{what} stdout"), &out.stdout);
    output(&format!("{what} stderr"), &out.stderr);
}

/// Records a file a process wrote (a log, a metrics textfile), if it exists.
pub fn file(path: &Path) {
    if dir().is_none() {
        return;
    }
    if let Ok(bytes) = std::fs::read(path) {
        output(&format!("file {}", path.display()), &bytes);
    }
}

/// Records every file under `dir` (a state directory after the test is done), recursively.
pub fn tree(dir: &Path) {
    if self::dir().is_none() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.is_dir() {
            tree(&path);
        } else if !journal_entry(&path) {
            file(&path);
        }
    }
}

/// A journal entry still holding a rotation's new value is that value's durable copy by design
/// (invariant 3: 0600, fsync'd, kept until the value is stored): a test that ends with a
/// rotation in flight on purpose (an orphaned entry, a store that stays down) leaves one. It is
/// recorded without its `value` (everything else in it is scanned), and counted under
/// `<dir>/inflight/` so the leak check says how many there were. Returns whether `path` was one.
fn journal_entry(path: &Path) -> bool {
    if path.parent().and_then(Path::file_name) != Some("journal".as_ref()) {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(serde_json::Value::Object(mut entry)) = serde_json::from_str(&text) else {
        return false;
    };
    if entry.remove("value").is_none() {
        return false;
    }
    let rest = serde_json::Value::Object(entry).to_string();
    output(
        &format!("journal entry {} (its value left out)", path.display()),
        rest.as_bytes(),
    );
    append(
        "inflight",
        "txt",
        format!("{}\n", path.display()).as_bytes(),
    );
    true
}

/// Records a secret the suite created or saw. A ZenML key value also gives its inner 64-hex
/// secret (a decoded value in a log would leak it too).
pub fn secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN || dir().is_none() {
        return;
    }
    let mut lines = format!("{value}\n");
    if let Some(inner) = zenkey_inner(value) {
        lines.push_str(&format!("{inner}\n"));
    }
    append("secrets", "txt", lines.as_bytes());
}

/// The 64-hex secret inside `ZENKEY_<base64 of {"id":..,"key":..}>`, if `value` is one.
fn zenkey_inner(value: &str) -> Option<String> {
    let b64 = value.strip_prefix("ZENKEY_")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    v["key"].as_str().map(str::to_owned)
}

/// Every `ZENKEY_...` value in `text` (an answer of ZenML, Vault or AWS), recorded as secrets.
pub fn secrets_in(text: &[u8]) {
    if dir().is_none() {
        return;
    }
    let text = String::from_utf8_lossy(text);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("ZENKEY_") {
        let tail = &rest[at..];
        let end = tail["ZENKEY_".len()..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
            .map_or(tail.len(), |i| i + "ZENKEY_".len());
        secret(&tail[..end]);
        rest = &tail[end..];
    }
}
