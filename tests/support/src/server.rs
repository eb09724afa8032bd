//! Real `llmserve-server` processes serving stories260k on free loopback ports.

use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::Process;
pub use crate::process::{free_port, wait_healthy, workspace_bin};

/// A running `llmserve-server`.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The served model id.
    pub model: String,
    process: Process,
}

impl Server {
    /// Serves stories260k as `model`, with extra flags, and waits until `/health` says ready.
    pub fn start(model: &str, extra: &[&str]) -> Server {
        Server::start_with_env(model, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(workspace_bin("llmserve-server"));
        cmd.arg("--model")
            .arg(crate::stories260k())
            .args(["--served-model-name", model, "--port", &port.to_string(), "--log-format", "text"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        let process = Process::spawn(cmd, port).ready("/health", Duration::from_secs(60));
        Server { url: process.url.clone(), model: model.into(), process }
    }

    /// Sends SIGTERM (a graceful drain) and waits for the exit.
    pub fn terminate(self) -> ExitStatus {
        self.process.terminate()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.process.wait()
    }
}

/// This machine's address on its default route: what an EndpointSlice may name (the API refuses
/// loopback addresses there), for servers listening on `0.0.0.0`.
pub fn host_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    // A UDP connect sends nothing; it only picks the route and so the source address.
    s.connect("198.51.100.1:9").expect("this machine needs a default route (any non-loopback interface)");
    s.local_addr().unwrap().ip()
}
