//! A replica whose engine thread dies says so and goes away: `/health` turns 503 at once, the
//! request in flight gets a 5xx in OpenAI's envelope, the engine gauges return to zero, and the
//! process exits non-zero so the kubelet restarts it. The fault is injected through
//! `LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS`, which only debug builds honour.

use std::process::Command;
use std::time::{Duration, Instant};

use llmserve_test_support::process::{Process, free_port};
use llmserve_test_support::stories260k;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_fails_health_and_requests_and_the_process_exits() {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmserve-server"));
    cmd.arg("--model").arg(stories260k()).args(["--port", &port.to_string(), "--log-format", "text"]);
    cmd.env("LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS", "40").env("RUST_LOG", "error");
    let mut server = Process::spawn(cmd, port).ready("/health", Duration::from_secs(60));
    let http = reqwest::Client::new();

    // 40 steps in, the engine thread panics under this request.
    let body = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true});
    let resp = http.post(format!("{}/v1/completions", server.url)).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let envelope: Value = resp.json().await.unwrap();
    assert!((500..600).contains(&status), "the request in flight fails with a 5xx, got {status}: {envelope}");
    assert!(envelope["error"]["message"].is_string(), "OpenAI's envelope: {envelope}");

    // Until it exits, the replica says it is not healthy, and its gauges show nothing running.
    let health = http.get(format!("{}/health", server.url)).send().await.map(|r| r.status().as_u16());
    if let Ok(code) = health {
        assert_eq!(code, 503, "/health of a replica whose engine died");
    }
    if let Ok(r) = http.get(format!("{}/metrics", server.url)).send().await {
        let text = r.text().await.unwrap_or_default();
        for gauge in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"] {
            let line = text.lines().find(|l| l.starts_with(gauge)).unwrap_or_default();
            assert!(line.is_empty() || line.ends_with(" 0"), "{gauge} is back to zero: {line}");
        }
    }

    let started = Instant::now();
    let status = server.wait();
    assert!(!status.success(), "the process exits non-zero, got {status}");
    assert!(started.elapsed() < Duration::from_secs(10), "it exits within seconds");
}
