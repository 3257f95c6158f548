//! A private OpenBao dev server for tests that seal it: sealing the shared one would break every
//! Vault test running at the same moment. Killed on drop, pass or fail.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::stores::VaultAdmin;
use super::vault;

pub struct PrivateBao {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl PrivateBao {
    pub fn start() -> PrivateBao {
        PrivateBao::start_with(false)
    }

    /// With a generated CA and certificate (`-dev-tls`); the CA is at `ca()`.
    pub fn start_tls() -> PrivateBao {
        PrivateBao::start_with(true)
    }

    fn start_with(tls: bool) -> PrivateBao {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let mut cmd = Command::new(vault().bao_bin);
        cmd.arg("server")
            .arg("-dev")
            .arg("-dev-root-token-id=root")
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = cmd.spawn().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let bao = PrivateBao {
            child,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The dev server prints its unseal key once it is unsealed and serving.
        while !bao.log().contains("Unseal Key:") {
            assert!(
                Instant::now() < deadline,
                "private bao did not start:\n{}",
                bao.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bao
    }

    pub fn root(&self) -> VaultAdmin {
        VaultAdmin::new(&self.addr, "root")
    }

    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn unseal_key(&self) -> String {
        let log = self.log();
        log.lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key:"))
            .unwrap_or_else(|| panic!("no unseal key in the log:\n{log}"))
            .trim()
            .to_owned()
    }

    pub async fn seal(&self) {
        self.root().seal().await;
    }

    pub async fn unseal(&self) {
        self.root().unseal(&self.unseal_key()).await;
    }
}

impl Drop for PrivateBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dev server listens on `port` and its cluster port `port + 1`.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of ports");
}
