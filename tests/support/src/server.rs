//! Real `llmserve-server` processes on free loopback ports, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    assert!(path.is_file(), "{} not built: run `cargo test --workspace` or `cargo build -p {name}`, or set {var}", path.display());
    path
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `llmserve-server`.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The served model id.
    pub model: String,
    child: Child,
}

impl Server {
    /// Serves stories260k as `model`, with extra flags, and waits until `/health` says ready.
    pub fn start(model: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(workspace_bin("llmserve-server"))
            .arg("--model")
            .arg(crate::stories260k())
            .args(["--served-model-name", model, "--port", &port.to_string(), "--log-format", "text"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn llmserve-server");
        let server = Server { url: format!("http://127.0.0.1:{port}"), model: model.into(), child };
        wait_healthy(&server.url, Duration::from_secs(60));
        server
    }

    /// Sends SIGTERM (a graceful drain) and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("wait")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocks until `GET {url}/health` answers 200.
pub fn wait_healthy(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = url.trim_start_matches("http://").to_string();
    loop {
        if let Some(200) = get_status(&addr, "/health") {
            return;
        }
        assert!(Instant::now() < deadline, "{url}/health not ready within {timeout:?}");
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

/// This machine's address on its default route: what an EndpointSlice may name (the API refuses
/// loopback addresses there), for servers listening on `0.0.0.0`.
pub fn host_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    // A UDP connect sends nothing; it only picks the route and so the source address.
    s.connect("198.51.100.1:9").expect("this machine needs a default route (any non-loopback interface)");
    s.local_addr().unwrap().ip()
}
