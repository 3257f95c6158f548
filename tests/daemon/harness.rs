//! What the daemon tests share: a policy file over the file store, the built binary started as a
//! daemon (killed by PID when a test ends), plain HTTP/1.0 gets, a Prometheus text parser, and a
//! counting, delaying reverse proxy in front of the real ZenML.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zenml_rotator::secret::SecretString;

use crate::common;

pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A loopback port nothing listens on right now.
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One `[[key]]` over the file store: the policy name, its service account, its file.
pub struct Key<'a> {
    pub policy: &'a str,
    pub service_account: &'a str,
}

/// The parts of a policy file a test varies; everything else is fixed.
pub struct Policy<'a> {
    pub zenml_url: &'a str,
    pub dir: &'a Path,
    pub listen: &'a str,
    pub keys: &'a [Key<'a>],
    /// Lines inside `[defaults]` (every/retain default to 30d/1m).
    pub defaults: &'a str,
    /// Lines inside `[daemon]`.
    pub daemon: &'a str,
    /// Lines inside `[metrics]` besides `listen`.
    pub metrics: &'a str,
}

impl Policy<'_> {
    pub fn text(&self) -> String {
        let zenml = common::zenml();
        let defaults = if self.defaults.contains("every") {
            self.defaults.to_owned()
        } else {
            format!("every = \"30d\"\nretain = \"1m\"\n{}", self.defaults)
        };
        let mut t = format!(
            "[zenml]\nurl = \"{}\"\nusername = \"{}\"\npassword_env = \"ZR_TEST_PASSWORD\"\n\n\
             [defaults]\n{defaults}\nstore = \"local\"\n\n\
             [daemon]\n{}\n\n\
             [metrics]\nlisten = \"{}\"\n{}\n\n\
             [state]\ndir = \"{}\"\n\n\
             [stores.local]\nkind = \"file\"\ndir = \"{}\"\n",
            self.zenml_url,
            zenml.admin,
            self.daemon,
            self.listen,
            self.metrics,
            state_dir(self.dir).display(),
            keys_dir(self.dir).display(),
        );
        for k in self.keys {
            t.push_str(&format!(
                "\n[[key]]\nname = \"{}\"\nservice_account = \"{}\"\napi_key = \"default\"\npath = \"{}.env\"\n",
                k.policy, k.service_account, k.policy
            ));
        }
        t
    }

    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("policy.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// The policy of one key with every default, on the shared ZenML server: its path.
pub fn one_key_policy(dir: &Path, listen: &str, policy: &str, service_account: &str) -> PathBuf {
    Policy {
        zenml_url: &common::zenml().url,
        dir,
        listen,
        keys: &[Key {
            policy,
            service_account,
        }],
        defaults: "",
        daemon: "",
        metrics: "",
    }
    .write()
}

pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

pub fn keys_dir(dir: &Path) -> PathBuf {
    dir.join("keys")
}

/// The value the file store holds for a policy, if any.
pub fn stored_value(dir: &Path, policy: &str) -> Option<SecretString> {
    let text = std::fs::read_to_string(keys_dir(dir).join(format!("{policy}.env"))).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("ZENML_STORE_API_KEY="))?;
    common::transcript::secret(value);
    Some(SecretString::from(value.trim().to_owned()))
}

pub fn fingerprint(v: &SecretString) -> String {
    zenml_rotator::secret::fingerprint(v)
}

/// Whether ZenML accepts a value now (a key check: no token minted).
pub fn accepted(v: &SecretString) -> bool {
    matches!(
        block(common::zenml_admin().check_key(v)).unwrap(),
        zenml_rotator::zenml::KeyCheck::Accepted
    )
}

pub fn journal_entries(dir: &Path) -> BTreeMap<String, zenml_rotator::engine::journal::Entry> {
    zenml_rotator::engine::journal::Journal::new(&state_dir(dir))
        .entries()
        .unwrap()
}

/// The binary, ready to run with the admin password in the environment the policy names.
pub fn rotator(dir: &Path) -> std::process::Command {
    let mut cmd = common::rotator(dir);
    cmd.env("ZR_TEST_PASSWORD", common::zenml().admin_password)
        .env("RUST_LOG", "zenml_rotator=debug")
        .env("NO_COLOR", "1");
    cmd
}

/// A running `zenml-rotator run`; killed (by its PID) if the test ends without stopping it.
pub struct Daemon {
    pub child: Child,
    pub listen: String,
    log: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, policy: &Path, listen: &str) -> Daemon {
        Daemon::start_with(dir, policy, listen, &[])
    }

    pub fn start_with(dir: &Path, policy: &Path, listen: &str, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join(format!("daemon-{}.log", common::unique("run")));
        let mut cmd = rotator(dir);
        cmd.arg("run")
            .arg("-c")
            .arg(policy)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            listen: listen.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.listen, path)
    }

    pub fn metrics(&self) -> Exposition {
        match self.get("/metrics") {
            Some((200, body)) => Exposition::parse(&body),
            other => panic!(
                "GET /metrics: {other:?}\n--- daemon log ---\n{}",
                self.log()
            ),
        }
    }

    /// Polls `/metrics` until `ok` holds and returns that exposition, or fails with the last
    /// exposition and the log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        let end = Instant::now() + timeout;
        loop {
            if let Some((200, body)) = self.get("/metrics") {
                let e = Exposition::parse(&body);
                if ok(&e) {
                    return e;
                }
                if Instant::now() > end {
                    panic!(
                        "timed out waiting for {what}\n--- metrics ---\n{body}\n--- daemon log ---\n{}",
                        self.log()
                    );
                }
            } else if Instant::now() > end {
                panic!("timed out waiting for {what}: no /metrics\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                panic!("the daemon did not exit within {timeout:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // For the leak check: its log, and what it left in its state directory.
        common::transcript::file(&self.log);
        if let Some(dir) = self.log.parent() {
            common::transcript::tree(&state_dir(dir));
        }
    }
}

/// A GET over HTTP/1.0 (no chunked bodies): status and body, or None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Percent-encodes a query parameter value.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            let mut rest = labels;
            while let Some((k, v)) = rest.split_once("=\"") {
                let end = v.find('"').unwrap();
                map.insert(k.trim_start_matches(',').to_owned(), v[..end].to_owned());
                rest = &v[end + 1..];
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels: map,
                value: value.parse().unwrap(),
            });
        }
        Exposition { samples }
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    pub fn has_policy(&self, policy: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.get("policy").map(String::as_str) == Some(policy))
    }

    pub fn rotations(&self, policy: &str) -> f64 {
        self.value(
            "zenml_rotator_rotations_total",
            &[("policy", policy), ("result", "success")],
        )
        .unwrap_or(0.0)
    }
}

/// A reverse proxy in front of the real ZenML: logs every request (method and path) and can hold
/// each request back a while before forwarding it, from a set time or while a marker file exists.
pub struct Proxy {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub delay_ms: Arc<AtomicU64>,
    _thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    /// `marker`: while this file exists, every request waits `marker_delay` first.
    pub fn start(marker: Option<(PathBuf, Duration)>) -> Proxy {
        zenml_rotator::http::install_crypto_provider();
        let upstream = common::zenml().url.trim_end_matches('/').to_owned();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (log, delay) = (requests.clone(), delay_ms.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder().build().unwrap();
                let handler = move |req: axum::extract::Request| {
                    let (client, upstream, log, delay, marker) = (
                        client.clone(),
                        upstream.clone(),
                        log.clone(),
                        delay.clone(),
                        marker.clone(),
                    );
                    async move { forward(req, client, upstream, log, delay, marker).await }
                };
                let app = axum::Router::new().fallback(handler);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Proxy {
            url,
            requests,
            delay_ms,
            _thread: thread,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }
}

async fn forward(
    req: axum::extract::Request,
    client: reqwest::Client,
    upstream: String,
    log: Arc<Mutex<Vec<String>>>,
    delay: Arc<AtomicU64>,
    marker: Option<(PathBuf, Duration)>,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    log.lock()
        .unwrap()
        .push(format!("{} {}", parts.method, parts.uri.path()));
    let wait = Duration::from_millis(delay.load(Ordering::SeqCst));
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if let Some((file, d)) = &marker
        && file.exists()
    {
        tokio::time::sleep(*d).await;
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut up = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (k, v) in &parts.headers {
        if k != "host" {
            up = up.header(k, v);
        }
    }
    let resp = match up.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return axum::response::Response::builder()
                .status(502)
                .body(axum::body::Body::from(e.to_string()))
                .unwrap();
        }
    };
    let mut out = axum::response::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    out.body(axum::body::Body::from(bytes)).unwrap()
}

/// utime + stime of a process, in clock ticks (all threads, live and exited).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Voluntary context switches summed over the process's live threads: each is a wake-up.
pub fn wakeups(pid: i32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    total
}
