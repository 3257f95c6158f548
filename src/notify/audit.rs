//! A `[[notify]]` audit file: one JSON line per event, appended with one write and synced to
//! disk, in event order. Created 0600 (it holds no secret, but says where and when keys changed);
//! its directory is created when missing. A write that fails is retried in the background like a
//! webhook delivery, then logged and counted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics;

const RETRY_FOR: Duration = Duration::from_secs(10 * 60);
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(60);

pub struct AuditFile {
    label: String,
    path: PathBuf,
    /// One writer at a time, so lines never interleave and keep their order.
    lock: std::sync::Mutex<()>,
}

impl AuditFile {
    pub fn new(label: &str, path: &Path) -> AuditFile {
        AuditFile {
            label: label.to_owned(),
            path: path.to_path_buf(),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Appends one line now.
    pub fn append(&self, body: &serde_json::Value) -> std::io::Result<()> {
        let _one_writer = match self.lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut line = body.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_data()
    }

    /// Retries a line whose first write failed, within `RETRY_FOR`; logs and counts a final failure.
    pub async fn retry(&self, body: &serde_json::Value, first: std::io::Error) {
        tracing::warn!(sink = %self.label, path = %self.path.display(), error = %first,
            "cannot append to the audit file; retrying");
        let started = tokio::time::Instant::now();
        let mut delay = FIRST_DELAY;
        let mut last = first;
        while started.elapsed() + delay < RETRY_FOR {
            tokio::time::sleep(delay).await;
            match self.append(body) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            delay = (delay * 2).min(MAX_DELAY);
        }
        metrics::get()
            .notifications_failed_total
            .with_label_values(&[&self.label])
            .inc();
        tracing::error!(sink = %self.label, path = %self.path.display(), event = %body["event"],
            policy = %body["policy"], error = %last, "audit line not written; given up");
    }
}
