//! A private moto server for tests that stop it mid-pass: stopping the shared one would break
//! every AWS test running at the same moment. Killed on drop, pass or fail.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateMoto {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl PrivateMoto {
    pub fn start() -> PrivateMoto {
        let bin = super::required("ZR_MOTO_BIN");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let moto = PrivateMoto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "private moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGCONT: a moto stopped by a fault point goes on.
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
