//! The binary settles its CPU threading before serving: `--cpu-threads` re-executes it with
//! `RAYON_NUM_THREADS` set (same process id), `auto` picks one thread for a tiny model.

use std::process::{Command, Stdio};
use std::time::Duration;

use llmserve_test_support::process::{Process, free_port};
use llmserve_test_support::stories260k;

fn environ_of(args: &[&str], env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmserve-server"));
    cmd.arg("--model")
        .arg(stories260k())
        .args(["--port", &port.to_string()])
        .args(args)
        .env_remove("RAYON_NUM_THREADS")
        .envs(env.iter().copied())
        .stderr(Stdio::null());
    let server = Process::spawn(cmd, port);
    // Once the process listens, any re-exec has happened.
    server.wait_listening(Duration::from_secs(20));
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    drop(server);
    String::from_utf8_lossy(&environ)
        .split('\0')
        .filter(|v| v.starts_with("RAYON_NUM_THREADS="))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn cpu_threads_reach_candle_through_the_environment() {
    assert_eq!(environ_of(&["--cpu-threads", "3"], &[]), "RAYON_NUM_THREADS=3");
    assert_eq!(environ_of(&[], &[]), "RAYON_NUM_THREADS=1", "auto: stories260k is tiny");
    assert_eq!(
        environ_of(&[], &[("RAYON_NUM_THREADS", "2")]),
        "RAYON_NUM_THREADS=2",
        "an explicit variable wins over auto"
    );
}
