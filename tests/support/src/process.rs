//! Processes of this workspace on free loopback ports, killed and reaped when dropped: the one place
//! Rust tests spawn `llmserve-server`, `llmserve-router` and `llmserve-operator`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, built by the same `cargo test --workspace` (cargo builds every
/// member's binaries before it runs any test); `LLMSERVE_<NAME>_BIN` overrides, e.g.
/// `LLMSERVE_SERVER_BIN`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.replace('-', "_").to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo test --workspace` or `cargo build -p {name}`, or set {var}",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that serves HTTP on `127.0.0.1:port`; killed and reaped when dropped.
pub struct Process {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port it was told to listen on.
    pub port: u16,
    child: Child,
}

impl Process {
    /// Spawns `cmd`, which must listen on `port`; its stdout is discarded, its stderr inherited.
    pub fn spawn(mut cmd: Command, port: u16) -> Process {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.stdout(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Process { url: format!("http://127.0.0.1:{port}"), port, child }
    }

    /// Blocks until `GET {url}{path}` answers 200, and returns the process.
    pub fn ready(self, path: &str, timeout: Duration) -> Process {
        wait_http_ok(&self.url, path, timeout);
        self
    }

    /// Blocks until the port accepts connections.
    pub fn wait_listening(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not listen within {timeout:?}", self.url);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful drain), without waiting.
    pub fn sigterm(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait")
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.sigterm();
        self.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocks until `GET {url}/health` answers 200.
pub fn wait_healthy(url: &str, timeout: Duration) {
    wait_http_ok(url, "/health", timeout)
}

/// Blocks until `GET {url}{path}` answers 200.
pub fn wait_http_ok(url: &str, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = url.trim_start_matches("http://").to_string();
    loop {
        if let Some(200) = get_status(&addr, path) {
            return;
        }
        assert!(Instant::now() < deadline, "{url}{path} not ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal blocking `GET` (no client crate needed), returning the status code.
fn get_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
