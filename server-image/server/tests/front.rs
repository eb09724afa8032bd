//! `llmserve-server`'s connection limits come from its flags: the cap answers 503 in OpenAI's
//! envelope, slow headers and bodies are cut off, an oversized body gets its 413 after the
//! server read it, not a reset connection. (The front itself is tested in `llmserve-openai`.)

use llmserve_test_support::raw::{closed, hold, json_body, post, response};
use llmserve_test_support::server::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn connection_cap_and_timeouts_follow_the_flags() {
    let server = Server::start(
        "m",
        &[
            "--max-connections",
            "2",
            "--header-timeout-seconds",
            "1",
            "--body-timeout-seconds",
            "1",
            "--max-body-bytes",
            "1024",
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut held = vec![hold(&addr).await, hold(&addr).await];
    let mut over = TcpStream::connect(&addr).await.unwrap();
    over.write_all(post("/v1/completions", r#"{"model": "m", "prompt": "Hi"}"#).as_bytes()).await.unwrap();
    let answer = response(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections", "{answer}");
    // The held connections idle past --header-timeout-seconds and are closed, freeing the slots.
    for tcp in &mut held {
        assert!(closed(tcp).await, "an idle connection outlived --header-timeout-seconds");
    }
    let mut slow = hold(&addr).await;
    let head =
        "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n";
    slow.write_all(format!("{head}{{\"model\"").as_bytes()).await.unwrap();
    let answer = response(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(slow);
    // 5 MiB declared and sent over a 1 KiB limit: read and dropped, then a 413.
    let mut big = hold(&addr).await;
    let body = format!(r#"{{"model": "m", "prompt": "{}"}}"#, "x".repeat(5 << 20));
    let (mut rd, mut wr) = big.split();
    let send = async {
        let _ = wr.write_all(post("/v1/completions", &body).as_bytes()).await;
    };
    let ((), answer) = tokio::join!(send, response(&mut rd));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "request_too_large", "{answer}");
    drop(big);
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "llmserve_http_connections_refused_total 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("llmserve_http_connections_open ")), "{metrics}");
}

/// `--shutdown-delay-seconds`: after SIGTERM, `/health` answers 503 at once (routers and probes
/// stop sending here) while new requests are still served; after the delay the server drains and
/// exits cleanly.
#[tokio::test]
async fn sigterm_announces_first_and_serves_through_the_delay() {
    let mut server = Server::start("m", &["--shutdown-delay-seconds", "3"]);
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let health = llmserve_test_support::eventually(std::time::Duration::from_secs(2), || async {
        let s = reqwest::get(format!("{}/health", server.url)).await.ok()?.status().as_u16();
        (s == 503).then_some(())
    })
    .await;
    assert!(health.is_some(), "/health did not turn 503 on SIGTERM");
    let body = serde_json::json!({"model": "m", "prompt": "Once upon a time", "max_tokens": 4});
    let r = reqwest::Client::new().post(format!("{}/v1/completions", server.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "new requests are served during the delay");
    assert!(server.wait().success(), "a clean exit after the delay and the drain");
}

/// `--metrics-port`: `/metrics` and `/health` on a second, plain listener, and nothing else there,
/// so a NetworkPolicy can open that port to Prometheus without opening the API.
#[tokio::test]
async fn the_metrics_port_serves_metrics_and_health_only() {
    let port = llmserve_test_support::process::free_port();
    let server = Server::start("m", &["--metrics-port", &port.to_string()]);
    let side = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let health = client.get(format!("{side}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = client.get(format!("{side}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vllm:num_requests_running"), "{metrics}");
    for path in ["/v1/models", "/v1/completions"] {
        let r = client.post(format!("{side}{path}")).body(r#"{"model": "m", "prompt": "Hi"}"#).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} reachable on the metrics port");
        let r = client.get(format!("{side}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} reachable on the metrics port");
    }
    // Both stay on the API port too (the router reads replicas' /metrics there).
    let on_api = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(on_api.contains("vllm:num_requests_running"));
}
