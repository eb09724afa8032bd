//! The router in front of real `llmserve-server` processes (stories260k under several model ids):
//! routing by model, streaming passthrough, errors, balancing, service-level metrics, and
//! EndpointSlice discovery against the real test API server.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use llmserve_test_support::process::{Process, free_port};
use llmserve_test_support::server::{Server, host_ip};
use serde_json::{Value, json};

fn router(args: &[String], env: &[(&str, &str)]) -> Process {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmserve-router"));
    cmd.args(["--port", &port.to_string(), "--log-format", "text"]).args(args).envs(env.iter().copied());
    cmd.env("RUST_LOG", "warn");
    Process::spawn(cmd, port).ready("/health", Duration::from_secs(30))
}

fn backend(model: &str, url: &str) -> [String; 2] {
    ["--backend".into(), format!("{model}={url}")]
}

async fn post(url: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    post_as(url, None, &body).await
}

/// The value of one exposition line, `name{labels}` exactly as Prometheus text writes it.
/// The body of a `POST`, as text (an SSE stream whole).
async fn post_text(url: &str, body: &Value) -> String {
    reqwest::Client::new().post(url).json(body).send().await.unwrap().text().await.unwrap()
}

async fn sample(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

fn completion(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_by_model_streams_through_and_maps_errors() {
    let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
    let beta = Server::start("beta", &["--disable-engine-metrics"]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let args: Vec<String> = [backend("alpha", &alpha.url), backend("beta", &beta.url), backend("gamma", &dead)]
        .concat()
        .into_iter()
        .chain(["--route-prefix".into(), "/llm/".into()])
        .collect();
    let r = router(&args, &[]);
    let api = format!("{}/llm/v1", r.url);

    let models: Value = reqwest::get(format!("{api}/models")).await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "beta", "gamma"]);
    let one: Value = reqwest::get(format!("{api}/models/beta")).await.unwrap().json().await.unwrap();
    assert_eq!(one["ready_replicas"], 1);
    assert_eq!(reqwest::get(format!("{}/v1/models", r.url)).await.unwrap().status(), 404, "the prefix is honoured");

    // Each model id reaches its own server (which answers with its own id).
    for model in ["alpha", "beta"] {
        let (status, _, v) = post(&format!("{api}/completions"), completion(model, 8)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], model);
        let chat = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        let (status, _, v) = post(&format!("{api}/chat/completions"), chat).await;
        assert_eq!((status, v["object"].as_str()), (200, Some("chat.completion")), "{v}");
        assert_eq!(v["model"], model);
    }
    let served = |url: String| async move {
        sample(&url, r#"llmserve_http_requests_total{model="alpha",route="/v1/completions",status_class="2xx"}"#).await
    };
    assert_eq!(served(alpha.url.clone()).await, Some(1.0));
    assert!(
        metrics_text(&beta.url)
            .await
            .contains(r#"llmserve_http_requests_total{model="beta",route="/v1/completions",status_class="2xx"} 1"#)
    );

    // Streaming passes through as the tokens come: the first chunk reaches the client while the
    // backend is still generating, and the usage chunk the router asked for is stripped.
    let mut body = completion("alpha", 300);
    body["stream"] = true.into();
    body["ignore_eos"] = true.into();
    let resp = reqwest::Client::new().post(format!("{api}/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut chunks = resp.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    let in_flight =
        sample(&alpha.url, r#"llmserve_http_requests_in_flight{model="alpha",route="/v1/completions"}"#).await;
    assert_eq!(in_flight, Some(1.0), "the first chunk arrived only after the backend had finished");
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    let mut reads = 1;
    while let Some(c) = chunks.next().await {
        text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
        reads += 1;
    }
    assert!(reads > 10, "the stream came in {reads} reads");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(!text.contains("\"usage\""), "usage stripped when the client did not ask");
    assert!(text.contains(r#""finish_reason":"length""#));
    assert!(text.matches("data: {").count() > 250, "one event per token");

    // The client that asks for usage gets it.
    body["max_tokens"] = 5.into();
    body["stream_options"] = json!({"include_usage": true});
    let text = post_text(&format!("{api}/completions"), &body).await;
    assert!(text.contains(r#""usage":{"completion_tokens":5"#) || text.contains(r#""completion_tokens":5"#), "{text}");

    // Errors.
    let (status, _, v) = post(&format!("{api}/completions"), completion("gpt-4", 4)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("model_not_found")));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`alpha`") && msg.contains("`beta`") && msg.contains("`gamma`"), "{msg}");
    let (status, _, v) = post(&format!("{api}/completions"), json!({"prompt": "x"})).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("model")));
    let resp = reqwest::Client::new().post(format!("{api}/completions")).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let (status, headers, v) = post(&format!("{api}/completions"), completion("gamma", 4)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("no_ready_replica")), "{v}");
    assert_eq!(headers["retry-after"], "1");
    // A backend's own error passes through with its status and body.
    let (status, _, v) = post(&format!("{api}/completions"), completion("beta", 0)).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("max_tokens")), "{v}");
    let big = json!({"model": "alpha", "prompt": "x".repeat(5 << 20)});
    let (status, _, v) = post(&format!("{api}/completions"), big).await;
    assert_eq!((status, v["error"]["code"].as_str()), (413, Some("request_too_large")));

    let m = metrics_text(&r.url).await;
    assert!(
        m.contains(r#"llmserve_router_requests_total{model="gamma",route="/v1/completions",status_class="5xx"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"llmserve_router_requests_total{model="unknown",route="/v1/completions",status_class="4xx"} 4"#),
        "{m}"
    );
    assert!(m.contains(r#"llmserve_router_ready_replicas{model="alpha"} 1"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_level_counters_equal_what_clients_saw_with_engine_metrics_off() {
    let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
    let beta = Server::start("beta", &["--disable-engine-metrics"]);
    let args = [backend("alpha", &alpha.url), backend("beta", &beta.url)].concat();
    let r = router(&args, &[]);
    let mut want: std::collections::BTreeMap<(&str, &str), (u64, u64, u64)> = Default::default();
    for i in 0..12u32 {
        let model = if i % 3 == 0 { "beta" } else { "alpha" };
        let (route, mut body) = if i % 2 == 0 {
            ("/v1/completions", completion(model, 3 + i))
        } else {
            (
                "/v1/chat/completions",
                json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Tell me a story"}],
                    "max_tokens": 2 + i,
                }),
            )
        };
        let usage = if i % 4 == 1 {
            body["stream"] = true.into();
            body["stream_options"] = json!({"include_usage": true});
            let text = post_text(&format!("{}{route}", r.url), &body).await;
            let last: Value = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| d.contains("\"usage\""))
                .map(|d| serde_json::from_str(d).unwrap())
                .next_back()
                .unwrap();
            last["usage"].clone()
        } else {
            let (status, _, v) = post(&format!("{}{route}", r.url), body).await;
            assert_eq!(status, 200, "{v}");
            v["usage"].clone()
        };
        let e = want.entry((model, route)).or_default();
        e.0 += 1;
        e.1 += usage["prompt_tokens"].as_u64().unwrap();
        e.2 += usage["completion_tokens"].as_u64().unwrap();
    }
    for model in ["alpha", "beta"] {
        let (mut requests, mut prompt, mut completion_tokens) = (0, 0, 0);
        for ((m, route), (n, p, c)) in &want {
            if *m != model {
                continue;
            }
            let got = sample(
                &r.url,
                &format!(r#"llmserve_router_requests_total{{model="{m}",route="{route}",status_class="2xx"}}"#),
            )
            .await;
            assert_eq!(got, Some(*n as f64), "{m} {route}");
            let dur = sample(
                &r.url,
                &format!(r#"llmserve_router_request_duration_seconds_count{{model="{m}",route="{route}"}}"#),
            )
            .await;
            assert_eq!(dur, Some(*n as f64));
            let ttfb = sample(
                &r.url,
                &format!(r#"llmserve_router_time_to_first_byte_seconds_count{{model="{m}",route="{route}"}}"#),
            )
            .await;
            assert_eq!(ttfb, Some(*n as f64));
            requests += n;
            prompt += p;
            completion_tokens += c;
        }
        assert!(requests > 0);
        assert_eq!(
            sample(&r.url, &format!(r#"llmserve_router_prompt_tokens_total{{model="{model}"}}"#)).await,
            Some(prompt as f64)
        );
        assert_eq!(
            sample(&r.url, &format!(r#"llmserve_router_completion_tokens_total{{model="{model}"}}"#)).await,
            Some(completion_tokens as f64)
        );
        assert_eq!(
            sample(&r.url, &format!(r#"llmserve_router_requests_in_flight{{model="{model}"}}"#)).await,
            Some(0.0)
        );
    }
    for s in [&alpha, &beta] {
        assert!(!metrics_text(&s.url).await.contains("vllm:"), "engine metrics are off on the backends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_spreads_load_and_refused_replicas_are_retried() {
    let a1 = Server::start("alpha", &[]);
    let a2 = Server::start("alpha", &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let args = [backend("alpha", &a1.url), backend("alpha", &a2.url), backend("alpha", &dead)].concat();
    // Health checks off: they would eject the dead replica before the first request, and this test
    // is about the retry after a refused connection.
    let r = router(&args, &[("LLMSERVE_ROUTER_HEALTH_CHECK_INTERVAL_SECONDS", "0")]);
    let url = format!("{}/v1/completions", r.url);
    let mut body = completion("alpha", 48);
    body["ignore_eos"] = true.into();
    let started = Instant::now();
    let replies = futures::future::join_all((0..8).map(|_| {
        let (url, body) = (url.clone(), body.clone());
        async move { post(&url, body).await.0 }
    }))
    .await;
    assert!(replies.iter().all(|s| *s == 200), "{replies:?} (the dead replica must be skipped)");
    let count = |s: String| async move {
        sample(&s, r#"llmserve_http_requests_total{model="alpha",route="/v1/completions",status_class="2xx"}"#)
            .await
            .unwrap_or(0.0)
    };
    let (n1, n2) = (count(a1.url.clone()).await, count(a2.url.clone()).await);
    println!("8 concurrent requests in {:?}: {n1} on replica 1, {n2} on replica 2", started.elapsed());
    assert_eq!(n1 + n2, 8.0);
    assert!((n1 - n2).abs() <= 2.0, "least outstanding spreads the load: {n1} vs {n2}");
    let retries = sample(&r.url, r#"llmserve_router_retries_total{model="alpha"}"#).await.unwrap();
    assert!(retries >= 1.0, "the refused replica was tried and the request retried");
}

mod discovery {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};
    use llmserve_test_support::control_plane::{client, control_plane, namespace};
    use llmserve_test_support::eventually;

    use super::*;

    fn slice(name: &str, service: &str, endpoints: &[(&Server, bool)]) -> Value {
        let port = |s: &Server| s.url.rsplit(':').next().unwrap().parse::<i32>().unwrap();
        // One slice per port: EndpointSlices carry one port list for all their endpoints. The API
        // refuses loopback IPs in slices: the servers listen on every interface and go in by
        // this machine's own address.
        let ports: Vec<i32> = endpoints.iter().map(|(s, _)| port(s)).collect();
        assert!(ports.windows(2).all(|w| w[0] == w[1]), "one port per slice");
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": ports.first().copied().unwrap_or(1), "protocol": "TCP"}],
            "endpoints": endpoints
                .iter()
                .map(|(_, ready)| json!({"addresses": [host_ip().to_string()], "conditions": {"ready": ready}}))
                .collect::<Vec<_>>(),
        })
    }

    async fn served_by(router: &str, servers: &[&Server]) -> Vec<f64> {
        let mut out = Vec::new();
        for s in servers {
            out.push(
                sample(
                    &s.url,
                    r#"llmserve_http_requests_total{model="alpha",route="/v1/completions",status_class="2xx"}"#,
                )
                .await
                .unwrap_or(0.0),
            );
        }
        let _ = router;
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn endpoint_slices_change_the_routing_without_a_restart() {
        let client = client().await;
        let ns = "router-discovery";
        namespace(&client, ns).await;
        let a1 = Server::start("alpha", &["--disable-engine-metrics", "--host", "0.0.0.0"]);
        let a2 = Server::start("alpha", &["--disable-engine-metrics", "--host", "0.0.0.0"]);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let pp = PatchParams::apply("router-test").force();
        slices.patch("alpha-1", &pp, &Patch::Apply(slice("alpha-1", "model-alpha", &[(&a1, true)]))).await.unwrap();
        // A slice of another Service is not followed.
        slices.patch("other-1", &pp, &Patch::Apply(slice("other-1", "model-other", &[(&a2, true)]))).await.unwrap();

        let kubeconfig = control_plane().kubeconfig.to_string_lossy().into_owned();
        let args: Vec<String> =
            ["--backend-service", "alpha=model-alpha", "--namespace", ns].iter().map(|s| s.to_string()).collect();
        let r = router(&args, &[("KUBECONFIG", &kubeconfig)]);
        let url = format!("{}/v1/completions", r.url);

        for _ in 0..3 {
            assert_eq!(post(&url, completion("alpha", 4)).await.0, 200);
        }
        assert_eq!(served_by(&r.url, &[&a1, &a2]).await, [3.0, 0.0]);

        // The replica moves: the router follows.
        slices.patch("alpha-1", &pp, &Patch::Apply(slice("alpha-1", "model-alpha", &[(&a2, true)]))).await.unwrap();
        let moved = eventually(Duration::from_secs(20), || async {
            (post(&url, completion("alpha", 4)).await.0 == 200 && served_by(&r.url, &[&a2]).await[0] > 0.0)
                .then_some(())
        })
        .await;
        assert!(moved.is_some(), "requests never reached the new replica");
        let before = served_by(&r.url, &[&a1]).await[0];

        // Two slices, both ready: both take requests.
        slices.patch("alpha-2", &pp, &Patch::Apply(slice("alpha-2", "model-alpha", &[(&a1, true)]))).await.unwrap();
        let spread = eventually(Duration::from_secs(20), || async {
            let _ = futures::future::join_all((0..4).map(|_| post(&url, completion("alpha", 16)))).await;
            (served_by(&r.url, &[&a1]).await[0] > before).then_some(())
        })
        .await;
        assert!(spread.is_some(), "the added replica never took a request");

        // Not ready, then gone: no replica, 503.
        slices.patch("alpha-1", &pp, &Patch::Apply(slice("alpha-1", "model-alpha", &[(&a2, false)]))).await.unwrap();
        slices.delete("alpha-2", &DeleteParams::default()).await.unwrap();
        let gone = eventually(Duration::from_secs(20), || async {
            (post(&url, completion("alpha", 4)).await.0 == 503).then_some(())
        })
        .await;
        assert!(gone.is_some(), "requests still routed to a replica that is not ready");
        let models: Value = reqwest::get(format!("{}/v1/models", r.url)).await.unwrap().json().await.unwrap();
        assert_eq!(models["data"][0]["ready_replicas"], 0);
    }

    /// API keys from a Secret on the real API server: a key works, a key removed from the Secret
    /// stops working within seconds, a key added starts, the limits annotation applies, and a
    /// deleted Secret leaves no key working. No restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn keys_follow_their_secret_without_a_restart() {
        use k8s_openapi::api::core::v1::Secret;
        let client = client().await;
        let ns = "router-keys";
        namespace(&client, ns).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let pp = PatchParams::apply("router-test").force();
        let secret = |keys: &[(&str, &str)], limits: Option<&str>| {
            let mut annotations = serde_json::Map::new();
            if let Some(l) = limits {
                annotations.insert("llmserve.dev/limits".into(), l.into());
            }
            // `data`, not `stringData`: server-side apply removes a `data` entry the patch leaves
            // out, while `stringData` is merged in and never removes one.
            let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> =
                keys.iter().map(|(t, k)| (t.to_string(), k8s_openapi::ByteString(k.as_bytes().to_vec()))).collect();
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "keys", "annotations": annotations},
                "data": data,
            })
        };
        secrets
            .patch("keys", &pp, &Patch::Apply(secret(&[("team-a", "key-a"), ("team-b", "key-b")], None)))
            .await
            .unwrap();
        // A Secret the router must not read.
        secrets
            .patch(
                "other",
                &pp,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "other"}, "stringData": {"x": "key-x"}})),
            )
            .await
            .unwrap();

        let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
        let kubeconfig = control_plane().kubeconfig.to_string_lossy().into_owned();
        let mut args = backend("alpha", &alpha.url).to_vec();
        args.extend(["--api-keys-secret", "keys", "--namespace", ns].map(String::from));
        let r = router(&args, &[("KUBECONFIG", &kubeconfig)]);
        let url = format!("{}/v1/completions", r.url);
        let body = completion("alpha", 2);
        let status = |key: &'static str| {
            let (url, body) = (url.clone(), body.clone());
            async move { post_as(&url, Some(key), &body).await.0 }
        };
        assert_eq!(status("key-a").await, 200);
        assert_eq!(status("key-b").await, 200);
        assert_eq!(status("key-x").await, 401, "another Secret's value is no key");

        let until = |key: &'static str, want: u16| async move {
            llmserve_test_support::eventually(Duration::from_secs(10), || async {
                (status(key).await == want).then_some(())
            })
            .await
            .is_some()
        };
        let limits = r#"{"default": {"requestsPerMinute": 2}}"#;
        secrets
            .patch("keys", &pp, &Patch::Apply(secret(&[("team-a", "key-a"), ("team-c", "key-c")], Some(limits))))
            .await
            .unwrap();
        assert!(until("key-b", 401).await, "a removed key kept working");
        assert!(until("key-c", 200).await, "an added key did not start working");
        // key-c used one request above; the limits annotation allows two a minute.
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(status("key-c").await);
        }
        assert!(codes.contains(&429), "the annotation's limits apply: {codes:?}");
        secrets.delete("keys", &DeleteParams::default()).await.unwrap();
        assert!(until("key-a", 401).await, "a deleted Secret left its keys working");
        assert_eq!(reqwest::get(format!("{}/health", r.url)).await.unwrap().status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_streams() {
    let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
    let mut r = router(&backend("alpha", &alpha.url), &[]);
    let mut body = completion("alpha", 400);
    body["stream"] = true.into();
    body["ignore_eos"] = true.into();
    let resp = reqwest::Client::new().post(format!("{}/v1/completions", r.url)).json(&body).send().await.unwrap();
    let mut chunks = resp.bytes_stream();
    let mut text = String::from_utf8(chunks.next().await.unwrap().unwrap().to_vec()).unwrap();
    r.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused =
        reqwest::Client::new().post(format!("{}/v1/completions", r.url)).json(&completion("alpha", 2)).send().await;
    assert!(refused.is_err(), "a draining router takes no new connections");
    let running =
        sample(&alpha.url, r#"llmserve_http_requests_in_flight{model="alpha",route="/v1/completions"}"#).await;
    assert_eq!(running, Some(1.0), "the stream must still be running when the router is told to stop");
    while let Some(c) = chunks.next().await {
        text.push_str(std::str::from_utf8(&c.expect("the stream finishes")).unwrap());
    }
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(text.contains(r#""finish_reason":"length""#), "the whole stream arrived");
    assert!(r.wait().success(), "the router exits cleanly after the drain");
}

/// A replica whose engine dies mid-run (the debug builds' fault hook) costs at most the request it
/// was serving: the router stops sending to it (refused connections are retried, the dead replica is
/// ejected) and the other replica serves everything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_is_ejected_and_the_other_serves_everything() {
    let healthy = Server::start("alpha", &[]);
    let mut dying = Server::start_with_env("alpha", &[], &[("LLMSERVE_FAULT_ENGINE_PANIC_AFTER_STEPS", "30")]);
    let r = router(
        &[backend("alpha", &healthy.url), backend("alpha", &dying.url)].concat(),
        &[("LLMSERVE_ROUTER_HEALTH_CHECK_INTERVAL_SECONDS", "0.5")],
    );
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, _, body) = post(&format!("{}/v1/completions", r.url), completion("alpha", 8)).await;
        assert!(status == 200 || body["error"]["message"].is_string(), "an OpenAI envelope: {body}");
        statuses.push(status);
    }
    assert!(!dying.wait().success(), "the faulty replica exited non-zero");
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert!(failed <= 1, "only the request in flight on the dying replica may fail: {statuses:?}");
    let first_failure = statuses.iter().position(|s| *s != 200).unwrap_or(0);
    assert!(statuses[first_failure + 1..].iter().all(|s| *s == 200), "everything after is served: {statuses:?}");
    let m = metrics_text(&r.url).await;
    assert!(sample(&r.url, r#"llmserve_router_ejections_total{model="alpha"}"#).await >= Some(1.0), "{m}");
    let served = r#"llmserve_http_requests_total{model="alpha",route="/v1/completions",status_class="2xx"}"#;
    assert!(sample(&healthy.url, served).await >= Some(20.0), "the healthy replica served the rest");
}

/// A stand-in replica that answers every request with an SSE stream of `parts` chunks, one every
/// 200 ms, and then goes silent without closing. What it does is the point: no real replica can
/// be made to hang mid-stream on demand.
async fn hanging_replica(parts: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 65536];
                let _ = tcp.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = tcp.write_all(head.as_bytes()).await;
                for _ in 0..parts {
                    let event = "data: {\"choices\":[{\"index\":0,\"text\":\"x\"}]}\n\n";
                    let _ = tcp.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    url
}

/// Streams are bounded twice: a replica silent for `--response-timeout-seconds` mid-stream fails
/// the request (and counts against the replica), and no request outlives
/// `--request-timeout-seconds`. Either way the client gets an error event, not a hung stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_or_runs_too_long_ends_with_an_error_event() {
    let stalls = hanging_replica(2).await;
    let endless = hanging_replica(usize::MAX).await;
    let mut args = backend("stalls", &stalls).to_vec();
    args.extend(backend("endless", &endless));
    args.extend(["--response-timeout-seconds", "1", "--request-timeout-seconds", "3"].map(String::from));
    args.extend(["--health-check-interval-seconds", "0"].map(String::from));
    let r = router(&args, &[]);
    for (model, expected) in [("stalls", "sent nothing for 1 s"), ("endless", "request timeout")] {
        let mut body = completion(model, 8);
        body["stream"] = true.into();
        let started = Instant::now();
        let text =
            tokio::time::timeout(Duration::from_secs(20), post_text(&format!("{}/v1/completions", r.url), &body))
                .await
                .unwrap_or_else(|_| panic!("the {model} stream was never cut off"));
        let last = text.trim_end().lines().last().unwrap_or_default().to_string();
        let event: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or(Value::Null);
        assert_eq!(event["error"]["code"], "timeout", "{model}: {text}");
        assert!(event["error"]["message"].as_str().unwrap_or_default().contains(expected), "{model}: {text}");
        assert!(text.contains(r#""text":"x""#), "{model}: the parts before the cut arrived: {text}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let m = metrics_text(&r.url).await;
    assert!(m.contains(r#"llmserve_router_requests_in_flight{model="stalls"} 0"#), "{m}");
    assert!(m.contains(r#"llmserve_router_requests_in_flight{model="endless"} 0"#), "{m}");
}

/// The router's connection cap and header timeout come from its flags (the front itself is tested in
/// `llmserve-openai`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_connection_cap_follows_its_flag() {
    use llmserve_test_support::raw::{closed, hold, json_body, post as raw_post, response};
    use tokio::io::AsyncWriteExt;
    let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
    let mut args = backend("alpha", &alpha.url).to_vec();
    args.extend(["--max-connections", "2", "--header-timeout-seconds", "1"].map(String::from));
    let r = router(&args, &[]);
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut held = vec![hold(&addr).await, hold(&addr).await];
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    over.write_all(raw_post("/v1/completions", &completion("alpha", 2).to_string()).as_bytes()).await.unwrap();
    let answer = response(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections", "{answer}");
    for tcp in &mut held {
        assert!(closed(tcp).await, "an idle connection outlived --header-timeout-seconds");
    }
    let (status, _, _) = post(&format!("{}/v1/completions", r.url), completion("alpha", 2)).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&r.url, "llmserve_router_connections_refused_total").await, Some(1.0));
}

/// 2xx completions each server answered.
async fn answered(servers: &[&Server]) -> Vec<f64> {
    let series =
        |m: &str| format!(r#"llmserve_http_requests_total{{model="{m}",route="/v1/completions",status_class="2xx"}}"#);
    let mut out = Vec::new();
    for s in servers {
        out.push(sample(&s.url, &series(&s.model)).await.unwrap_or(0.0));
    }
    out
}

/// `prefixHash` against real replicas: one prefix keeps to one replica while that replica is under
/// its load bound, spills over when it is not, and moves when its replica leaves (here: killed,
/// then ejected by the failed requests and health checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_hash_keeps_a_prefix_on_one_replica_spills_over_and_moves_on_ejection() {
    let servers: Vec<Server> = (0..3).map(|_| Server::start("alpha", &["--enable-prefix-caching"])).collect();
    let refs: Vec<&Server> = servers.iter().collect();
    let mut args: Vec<String> = servers.iter().flat_map(|s| backend("alpha", &s.url)).collect();
    args.extend(["--routing-policy", "prefixHash", "--health-check-interval-seconds", "1"].map(String::from));
    args.extend(["--outlier-consecutive-failures", "1"].map(String::from));
    let r = router(&args, &[]);
    let url = format!("{}/v1/completions", r.url);
    let prompt = "Once upon a time, there was a little robot who loved to paint the sky.";
    let body = json!({"model": "alpha", "prompt": prompt, "max_tokens": 2, "temperature": 0});
    for _ in 0..6 {
        assert_eq!(post(&url, body.clone()).await.0, 200);
    }
    let counts = answered(&refs).await;
    let home = counts.iter().position(|&c| c == 6.0).unwrap_or_else(|| panic!("one replica takes all: {counts:?}"));
    let picks =
        |reason: &str| format!(r#"llmserve_router_picks_total{{model="alpha",policy="prefixHash",reason="{reason}"}}"#);
    assert_eq!(sample(&r.url, &picks("affinity")).await, Some(6.0));

    // Six long streams at once on the same prefix: the bound (ceil(1.25 x the mean) + 1) caps the home.
    let mut long = body.clone();
    long["max_tokens"] = 200.into();
    long["ignore_eos"] = true.into();
    let before = answered(&refs).await;
    let all = futures::future::join_all((0..6).map(|_| post(&url, long.clone()))).await;
    assert!(all.iter().all(|(s, _, _)| *s == 200));
    let after = answered(&refs).await;
    let took: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(took[home] >= 1.0 && took[home] <= 4.0, "the home replica took {took:?}");
    assert!(sample(&r.url, &picks("overflow")).await.unwrap_or(0.0) >= 1.0, "the hot prefix spilled over");

    // The home replica goes away: the prefix moves to one other replica, and stays there.
    let mut servers = servers;
    let gone = servers.remove(home);
    let _ = gone.terminate();
    let rest: Vec<&Server> = servers.iter().collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = answered(&rest).await;
    for _ in 0..5 {
        assert_eq!(post(&url, body.clone()).await.0, 200, "requests survive the replica's exit");
    }
    let took: Vec<f64> = answered(&rest).await.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(took.contains(&5.0), "the prefix has one new home: {took:?}");
}

async fn post_as(url: &str, key: Option<&str>, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = reqwest::Client::new().post(url).json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json::<Value>().await.unwrap_or(Value::Null))
}

/// API keys from a file, and each limit kind: 401 without or with a wrong key; requests per
/// minute, tokens per minute and requests at once each answer 429 at the right request, with
/// `Retry-After` and the `x-ratelimit-*` headers; per-tenant counters equal what was sent; a key
/// taken out of the file stops working without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_and_tenant_limits() {
    let alpha = Server::start("alpha", &["--disable-engine-metrics"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# tenants\nfast = key-fast\nslow = key-slow\ntokens = key-tokens\nsolo = key-solo\n")
        .unwrap();
    let limits = json!({
        "default": {"requestsPerMinute": 1000},
        "tenants": {
            "slow": {"requestsPerMinute": 3},
            "tokens": {"tokensPerMinute": 100},
            "solo": {"concurrentRequests": 1}
        }
    });
    let mut args = backend("alpha", &alpha.url).to_vec();
    args.extend(["--api-keys-file".into(), keys.to_string_lossy().into_owned()]);
    args.extend(["--tenant-limits".into(), limits.to_string()]);
    let r = router(&args, &[]);
    let url = format!("{}/v1/completions", r.url);
    let body = completion("alpha", 2);

    let (s, _, v) = post_as(&url, None, &body).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{v}");
    let (s, _, v) = post_as(&url, Some("key-wrong"), &body).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{v}");
    let models = reqwest::get(format!("{}/v1/models", r.url)).await.unwrap().status().as_u16();
    assert_eq!(models, 401, "every OpenAI route asks for the key");
    assert_eq!(reqwest::get(format!("{}/health", r.url)).await.unwrap().status().as_u16(), 200);

    for _ in 0..5 {
        let (s, h, _) = post_as(&url, Some("key-fast"), &body).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit-requests"], "1000");
    }
    // Requests per minute: the fourth is refused.
    for i in 0..3 {
        let (s, h, _) = post_as(&url, Some("key-slow"), &body).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-remaining-requests"], (2 - i).to_string().as_str());
    }
    let (s, h, v) = post_as(&url, Some("key-slow"), &body).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
    assert!(h.contains_key("retry-after") && h.contains_key("x-ratelimit-reset-requests"), "{h:?}");
    // Tokens per minute: a 400-character prompt reserves 100 tokens and settles at its usage.
    let long = json!({"model": "alpha", "prompt": "Once upon a time ".repeat(24), "max_tokens": 2, "temperature": 0});
    assert_eq!(post_as(&url, Some("key-tokens"), &long).await.0, 200);
    let (s, h, v) = post_as(&url, Some("key-tokens"), &long).await;
    assert_eq!(s, 429, "the first request used the minute's tokens: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("tokens per minute"), "{v}");
    assert_eq!(h["x-ratelimit-limit-tokens"], "100");
    // Requests at once: a second while a stream runs is refused, and served after.
    let mut stream_body = completion("alpha", 300);
    stream_body["stream"] = true.into();
    stream_body["ignore_eos"] = true.into();
    let running = reqwest::Client::new().post(&url).bearer_auth("key-solo").json(&stream_body).send().await.unwrap();
    assert_eq!(running.status().as_u16(), 200);
    let (s, _, v) = post_as(&url, Some("key-solo"), &body).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
    let _ = running.text().await.unwrap();
    assert_eq!(post_as(&url, Some("key-solo"), &body).await.0, 200);

    let m = metrics_text(&r.url).await;
    let series = |tenant: &str, class: &str| {
        format!(r#"llmserve_router_tenant_requests_total{{model="alpha",status_class="{class}",tenant="{tenant}"}}"#)
    };
    for (tenant, ok, limited) in [("fast", 5.0, 0.0), ("slow", 3.0, 1.0), ("tokens", 1.0, 1.0), ("solo", 2.0, 1.0)] {
        assert_eq!(sample(&r.url, &series(tenant, "2xx")).await, Some(ok), "{tenant}: {m}");
        assert_eq!(sample(&r.url, &series(tenant, "4xx")).await.unwrap_or(0.0), limited, "{tenant}: {m}");
    }
    let limited = r#"llmserve_router_tenant_rate_limited_total{limit="requests_per_minute",tenant="slow"}"#;
    assert_eq!(sample(&r.url, limited).await, Some(1.0), "{m}");
    let fast_prompt = r#"llmserve_router_tenant_tokens_total{kind="prompt",model="alpha",tenant="fast"}"#;
    assert!(sample(&r.url, fast_prompt).await.unwrap_or(0.0) > 0.0, "{m}");
    assert!(!m.contains("key-fast"), "keys never reach the metrics");

    // The key file changes: `fast` is gone within seconds, the others stay.
    std::fs::write(&keys, "slow = key-slow\n").unwrap();
    let gone = llmserve_test_support::eventually(Duration::from_secs(10), || async {
        (post_as(&url, Some("key-fast"), &body).await.0 == 401).then_some(())
    })
    .await;
    assert!(gone.is_some(), "a removed key kept working");
}

/// `GET /status`: the live figures the operator puts in the application's status, from real
/// replicas: requests and tokens per second over the last minute, TTFT quantiles from the
/// engines' histograms, the engines' gauges; also on the metrics port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_live_figures_per_model() {
    let alpha = Server::start("alpha", &[]);
    let side = free_port();
    let mut args = backend("alpha", &alpha.url).to_vec();
    args.extend(["--metrics-port".to_string(), side.to_string()]);
    let r = router(&args, &[]);
    let status = |base: String| async move {
        reqwest::get(format!("{base}/status")).await.unwrap().json::<Value>().await.unwrap()
    };
    let idle = status(r.url.clone()).await;
    assert_eq!(idle["windowSeconds"], 60, "{idle}");
    // The first reading comes at once; a rate needs two, five seconds apart.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut tokens = 0;
    for _ in 0..6 {
        let (code, _, body) = post(&format!("{}/v1/completions", r.url), completion("alpha", 8)).await;
        assert_eq!(code, 200, "{body}");
        tokens += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let figures = loop {
        let s = status(r.url.clone()).await;
        let m = s["models"][0].clone();
        if m["requestsPerSecond"].as_f64().unwrap_or(0.0) > 0.0 && m["ttftSecondsP95"].is_number() {
            break m;
        }
        assert!(Instant::now() < deadline, "no live figures: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(figures["model"], "alpha");
    assert_eq!(figures["readyReplicas"], 1);
    // Six requests, and their tokens, within at most the window's first 20 s or so.
    let rps = figures["requestsPerSecond"].as_f64().unwrap();
    assert!(rps > 6.0 / 60.0 && rps <= 6.0 / 4.0, "{figures}");
    let tps = figures["outputTokensPerSecond"].as_f64().unwrap();
    assert!((tps / rps - tokens as f64 / 6.0).abs() < 1e-6, "tokens per request as sent: {figures}");
    let (p50, p95) = (figures["ttftSecondsP50"].as_f64().unwrap(), figures["ttftSecondsP95"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p95 && p95 < 5.0, "{figures}");
    assert_eq!(figures["running"], 0.0, "nothing runs after the answers: {figures}");
    assert!(figures["kvCacheUsage"].is_number(), "{figures}");
    let on_side = status(format!("http://127.0.0.1:{side}")).await;
    assert_eq!(on_side["models"][0]["model"], "alpha", "{on_side}");
}
