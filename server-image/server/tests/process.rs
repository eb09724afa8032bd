//! The binary settles its CPU threading before serving: `--cpu-threads` re-executes it with
//! `RAYON_NUM_THREADS` set (same process id), `auto` picks one thread for a tiny model.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn environ_of(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/stories260k");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmserve-server"));
    cmd.args(["--model", dir, "--port", &port]).args(args).env_remove("RAYON_NUM_THREADS").stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Wait until the process listens: by then any re-exec has happened.
    let start = Instant::now();
    while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    String::from_utf8_lossy(&environ).split('\0').filter(|v| v.starts_with("RAYON_NUM_THREADS=")).collect::<Vec<_>>().join(",")
}

#[test]
fn cpu_threads_reach_candle_through_the_environment() {
    assert_eq!(environ_of(&["--cpu-threads", "3"], &[]), "RAYON_NUM_THREADS=3");
    assert_eq!(environ_of(&[], &[]), "RAYON_NUM_THREADS=1", "auto: stories260k is tiny");
    assert_eq!(environ_of(&[], &[("RAYON_NUM_THREADS", "2")]), "RAYON_NUM_THREADS=2", "an explicit variable wins over auto");
}
