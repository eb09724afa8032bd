//! Every route and error case of `llmserve-server`, through `app(state)` with the real
//! stories260k model loaded (no socket: `oneshot`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use llmserve_server::api::app;
use llmserve_server::args::Args;
use llmserve_server::serve;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{args, call, json_call, loaded, metrics_text, reference, sample, sse_chunks};

#[tokio::test]
async fn models_routes() {
    let (_, app) = loaded(&["--served-model-name", "stories"]);
    let (s, v) = json_call(&app, "GET", "/v1/models", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"][0]["id"], "stories");
    assert_eq!(v["data"][0]["architecture"], "LlamaForCausalLM");
    let (s, v) = json_call(&app, "GET", "/v1/models/stories", None).await;
    assert_eq!((s, v["object"].as_str()), (StatusCode::OK, Some("model")));
    let (s, v) = json_call(&app, "GET", "/v1/models/other", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn greedy_completion_matches_the_reference_and_counts_usage() {
    let (_, app) = loaded(&[]);
    let body = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0});
    let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(reference("once_upon_a_time.txt").starts_with(&format!("Once upon a time{text}")), "{text:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 40);
    assert_eq!(v["usage"]["prompt_tokens"], 5, "BOS + 4 tokens");
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test]
async fn stop_strings_and_stop_token_ids_end_generation() {
    let (_, app) = loaded(&[]);
    let body = json!({
        "model": "stories260k", "prompt": "Once upon a time", "max_tokens": 60, "temperature": 0, "stop": [" Lily"],
    });
    let (_, v) = json_call(&app, "POST", "/v1/completions", Some(body)).await;
    assert_eq!(v["choices"][0]["text"], ", there was a little girl named");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // stories260k ends a story with BOS (1): EOS ids come from generation_config.json.
    let body = json!({"model": "stories260k", "prompt": "Zoo", "max_tokens": 400, "temperature": 0});
    let (_, v) = json_call(&app, "POST", "/v1/completions", Some(body)).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(reference("zoo.txt").trim_end().ends_with(v["choices"][0]["text"].as_str().unwrap().trim_end()));
}

#[tokio::test]
async fn chat_completion_whole_and_streamed() {
    let (_, app) = loaded(&[]);
    let msgs = json!([{"role": "user", "content": "The cat"}]);
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "stories260k", "messages": msgs, "max_tokens": 12, "temperature": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let whole = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(reference("the_cat.txt").starts_with(&format!("The cat{whole}")), "{whole:?}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");

    let body = json!({
        "model": "stories260k", "messages": msgs, "max_tokens": 12, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let (s, h, b) = call(&app, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = String::from_utf8(b).unwrap();
    let datas: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*datas.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = datas[..datas.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, whole, "streamed text equals the whole answer");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));

    let body = json!({"model": "stories260k", "prompt": "The cat", "max_tokens": 3, "stream": true});
    let text = String::from_utf8(call(&app, "POST", "/v1/completions", Some(body)).await.2).unwrap();
    assert!(!text.contains("\"usage\""), "no usage chunk unless asked");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn every_error_case_uses_the_openai_envelope() {
    let (_, app) = loaded(&["--max-body-bytes", "2000", "--max-model-len", "128"]);
    let long_prompt = "Once upon a time ".repeat(200);
    let cases: Vec<(Value, StatusCode, Option<&str>, Option<&str>)> = vec![
        (json!({"prompt": "x"}), StatusCode::BAD_REQUEST, Some("model"), None),
        (json!({"model": "gpt-4", "prompt": "x"}), StatusCode::NOT_FOUND, Some("model"), Some("model_not_found")),
        (json!({"model": "stories260k"}), StatusCode::BAD_REQUEST, Some("prompt"), None),
        (
            json!({"model": "stories260k", "prompt": "x", "max_tokens": 0}),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            None,
        ),
        (
            json!({"model": "stories260k", "prompt": "x", "max_tokens": 100000}),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            None,
        ),
        (
            json!({"model": "stories260k", "prompt": "x", "temperature": 2.5}),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
            None,
        ),
        (json!({"model": "stories260k", "prompt": "x", "top_p": 0}), StatusCode::BAD_REQUEST, Some("top_p"), None),
        (json!({"model": "stories260k", "prompt": "x", "n": 0}), StatusCode::BAD_REQUEST, Some("n"), None),
        (json!({"model": "stories260k", "prompt": "x", "stop": 5}), StatusCode::BAD_REQUEST, Some("stop"), None),
        (json!({"model": "stories260k", "prompt": [100000]}), StatusCode::BAD_REQUEST, Some("prompt"), None),
        (
            json!({"model": "stories260k", "prompt": long_prompt[..1900].to_string()}),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            None,
        ),
        (
            json!({"model": "stories260k", "prompt": "x".repeat(3000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            Some("request_too_large"),
        ),
    ];
    for (body, status, param, code) in cases {
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string());
        assert_eq!(e["param"].as_str(), param, "{body}: {v}");
        if let Some(c) = code {
            assert_eq!(e["code"], c);
        }
    }
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "stories260k", "messages": [{"role": "wizard", "content": "x"}]})),
    )
    .await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("messages[0]")));
    let (s, v) = json_call(&app, "GET", "/v2/nothing", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_loading_answers_503() {
    let (_, app) = loaded(&["--max-waiting-requests", "0"]);
    let (s, h, b) = call(&app, "POST", "/v1/completions", Some(json!({"model": "stories260k", "prompt": "x"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["error"]["code"], "queue_full");
    let (_, _, m) = call(&app, "GET", "/metrics", None).await;
    let m = String::from_utf8(m.to_vec()).unwrap();
    assert!(m.contains(r#"llmserve_http_requests_rejected_total{model="stories260k",reason="queue_full"} 1"#), "{m}");

    let a = args(&[]);
    let not_loaded = app_without_model(&a);
    let (s, h, _) = call(&not_loaded, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.contains_key("retry-after"));
    let (s, _, _) =
        call(&not_loaded, "POST", "/v1/completions", Some(json!({"model": "stories260k", "prompt": "x"}))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
}

fn app_without_model(a: &Args) -> Router {
    app(serve::state(a).unwrap())
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_aborts_and_frees_its_blocks() {
    let (_, app) = loaded(&[]);
    let body = json!({
        "model": "stories260k", "prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": true, "stream": true,
    });
    let req = Request::post("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains("\"text\"") {
        first.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    // Gauges are published after each step: wait until they show the running sequence.
    let mut running = false;
    for _ in 0..200 {
        let m = metrics_text(&app).await;
        if sample(&m, "vllm:kv_cache_usage_perc").unwrap() > 0.0 && sample(&m, "vllm:num_requests_running") == Some(1.0)
        {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(running, "the sequence runs and holds KV blocks");
    drop(body); // the client goes away
    let mut freed = false;
    for _ in 0..200 {
        let m = metrics_text(&app).await;
        if sample(&m, r#"vllm:request_success_total{engine="0",finished_reason="abort""#) == Some(1.0)
            && sample(&m, "vllm:kv_cache_usage_perc") == Some(0.0)
        {
            freed = true;
            assert_eq!(sample(&m, "vllm:num_requests_running"), Some(0.0));
            assert!(sample(&m, r#"vllm:generation_tokens_total"#).unwrap() < 500.0, "stopped early");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "abort counted and KV blocks freed");
}

#[tokio::test]
async fn metrics_count_exactly_what_was_sent() {
    let (state, app) = loaded(&[]);
    let prompts = ["Once upon a time", "The cat", "Tom and Lily went", "Zoo", "The cat sat"];
    let max_tokens = 7;
    let mut prompt_total = 0;
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let app = app.clone();
            let body = json!({
                "model": "stories260k", "prompt": p, "max_tokens": max_tokens,
                "ignore_eos": true, "temperature": 0.8, "seed": 1,
            });
            tokio::spawn(async move { json_call(&app, "POST", "/v1/completions", Some(body)).await })
        })
        .collect();
    for h in handles {
        let (s, v) = h.await.unwrap();
        assert_eq!(s, StatusCode::OK);
        prompt_total += v["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    let n = prompts.len() as f64;
    let m = metrics_text(&app).await;
    let l = r#"{engine="0",model_name="stories260k"}"#;
    assert_eq!(sample(&m, &format!("vllm:prompt_tokens_total{l}")), Some(prompt_total as f64));
    assert_eq!(sample(&m, &format!("vllm:generation_tokens_total{l}")), Some(n * max_tokens as f64));
    assert_eq!(
        sample(&m, r#"vllm:request_success_total{engine="0",finished_reason="length",model_name="stories260k"}"#),
        Some(n)
    );
    for h in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_time_per_output_token_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
        "request_params_max_tokens",
        "request_params_n",
    ] {
        assert_eq!(sample(&m, &format!("vllm:{h}_count{l}")), Some(n), "{h}");
    }
    assert_eq!(sample(&m, &format!("vllm:inter_token_latency_seconds_count{l}")), Some(n * (max_tokens - 1) as f64));
    assert_eq!(sample(&m, &format!("vllm:request_prompt_tokens_sum{l}")), Some(prompt_total as f64));
    assert_eq!(sample(&m, &format!("vllm:request_generation_tokens_sum{l}")), Some(n * max_tokens as f64));
    // Every prompt token and every generated token but the last is run through the model once.
    assert_eq!(
        sample(&m, &format!("vllm:iteration_tokens_total_sum{l}")),
        Some(prompt_total as f64 + n * (max_tokens - 1) as f64)
    );
    assert_eq!(
        sample(&m, r#"vllm:time_to_first_token_seconds_bucket{engine="0",model_name="stories260k",le="+Inf"}"#),
        Some(n)
    );
    assert_eq!(
        sample(&m, r#"llmserve_http_requests_total{model="stories260k",route="/v1/completions",status_class="2xx"}"#),
        Some(n)
    );
    assert_eq!(sample(&m, &format!("vllm:kv_cache_usage_perc{l}")), Some(0.0));
    assert!(m.contains("vllm:cache_config_info{block_size=\"16\""));
    assert_eq!(state.model_id, "stories260k");
}

#[tokio::test]
async fn disabled_engine_metrics_leave_only_service_metrics() {
    let (_, app) = loaded(&["--disable-engine-metrics"]);
    let (s, _) = json_call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"model": "stories260k", "prompt": "Zoo", "max_tokens": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let m = metrics_text(&app).await;
    assert!(!m.contains("vllm:"), "{m}");
    assert!(m.contains("llmserve_http_requests_total{"));
    assert!(m.contains("llmserve_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn metric_names_match_the_catalogue() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../metrics-catalogue.txt");
    let catalogue: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut ours: Vec<String> = llmserve_engine::metrics::ENGINE_FAMILIES
        .iter()
        .chain(llmserve_server::http_metrics::HTTP_FAMILIES)
        .chain(llmserve_server::gpu::GPU_FAMILIES)
        .map(|s| s.to_string())
        .collect();
    ours.sort();
    let mut cat = catalogue.clone();
    cat.sort();
    assert_eq!(ours, cat, "metric names in code differ from {}", path.display());
    let (_, app) = loaded(&[]);
    json_call(&app, "POST", "/v1/completions", Some(json!({"model": "stories260k", "prompt": "Zoo", "max_tokens": 2})))
        .await;
    let m = metrics_text(&app).await;
    for name in catalogue.iter().filter(|n| !llmserve_server::gpu::GPU_FAMILIES.contains(&n.as_str())) {
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} is not exported");
    }
    for name in llmserve_server::gpu::GPU_FAMILIES {
        assert!(!m.contains(name), "{name} is for CUDA devices only");
    }
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_answer_as_if_alone() {
    let (_, app) = loaded(&["--max-num-seqs", "8", "--block-size", "4"]);
    let prompts = ["Once upon a time", "The cat", "Tom and Lily went", "Zoo"];
    let solo: Vec<String> = {
        let mut v = Vec::new();
        for p in prompts {
            let (_, r) = json_call(
                &app,
                "POST",
                "/v1/completions",
                Some(json!({"model": "stories260k", "prompt": p, "max_tokens": 30, "temperature": 0})),
            )
            .await;
            v.push(r["choices"][0]["text"].as_str().unwrap().to_string());
        }
        v
    };
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let app = app.clone();
            let body = json!({"model": "stories260k", "prompt": prompts[i % 4], "max_tokens": 30, "temperature": 0});
            tokio::spawn(async move { json_call(&app, "POST", "/v1/completions", Some(body)).await.1 })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.await.unwrap();
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), solo[i % 4], "request {i}");
    }
    let m = metrics_text(&app).await;
    // At least one step ran more than one sequence's tokens at once.
    let steps = sample(&m, r#"vllm:iteration_tokens_total_count"#).unwrap();
    let tokens = sample(&m, r#"vllm:iteration_tokens_total_sum"#).unwrap();
    assert!(tokens / steps > 1.5, "mean tokens per step {}", tokens / steps);
}

#[tokio::test]
async fn prefix_caching_reuses_blocks_and_changes_no_output() {
    let prompt_ids: Vec<u32> = (0..70).map(|i| 300 + (i * 7 % 150)).collect();
    let body = |ids: &[u32]| json!({"model": "stories260k", "prompt": ids, "max_tokens": 24, "temperature": 0});
    let (_, plain) = loaded(&[]);
    let (_, cached) = loaded(&["--enable-prefix-caching", "--block-size", "16"]);
    let (_, want) = json_call(&plain, "POST", "/v1/completions", Some(body(&prompt_ids))).await;
    let want = want["choices"][0]["text"].as_str().unwrap().to_string();
    // Same prompt twice, then one sharing only its first 40 tokens.
    let mut other = prompt_ids.clone();
    other[40] = 17;
    let (_, want_other) = json_call(&plain, "POST", "/v1/completions", Some(body(&other))).await;
    for (ids, expect) in [
        (&prompt_ids, &want),
        (&prompt_ids, &want),
        (&other, &want_other["choices"][0]["text"].as_str().unwrap().to_string()),
    ] {
        let (s, v) = json_call(&cached, "POST", "/v1/completions", Some(body(ids))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), expect, "prefix caching must not change greedy output");
    }
    let m = metrics_text(&cached).await;
    assert_eq!(sample(&m, "vllm:prefix_cache_queries_total"), Some(210.0), "every prompt token is looked up");
    // 70 tokens: 4 whole blocks of 16 (the last token is always computed); the third prompt
    // shares two whole blocks (32 of its first 40 tokens).
    assert_eq!(sample(&m, "vllm:prefix_cache_hits_total"), Some(64.0 + 32.0));
    assert_eq!(sample(&m, "vllm:prompt_tokens_total"), Some(210.0), "hits do not change the prompt count");
    assert!(m.contains(r#"enable_prefix_caching="true""#) || m.contains(r#"prefix_caching="true""#), "{m}");
    let plain_m = metrics_text(&plain).await;
    assert_eq!(sample(&plain_m, "vllm:prefix_cache_hits_total"), Some(0.0));
}

#[tokio::test]
async fn fields_the_server_does_not_implement_are_refused_by_name() {
    let (_, app) = loaded(&[]);
    let base = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 4});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    for (body, param, code) in [
        (with("best_of", json!(3)), "best_of", json!("unsupported")),
        (with("tools", json!([{"type": "function"}])), "tools", json!("unsupported")),
        (with("guided_json", json!({"type": "frobnicate"})), "guided_json", Value::Null),
        (with("guided_choice", json!([])), "guided_choice", Value::Null),
        (with("guided_grammar", json!("start: (")), "guided_grammar", Value::Null),
        (with("stream_options", json!({"include_usage": true})), "stream_options", Value::Null),
        (with("user", json!(7)), "user", Value::Null),
        (with("max_completion_tokens", json!(4)), "max_completion_tokens", Value::Null),
        (with("response_format", json!({"type": "json_schema"})), "response_format", Value::Null),
        (with("guided_regex", json!("[a-")), "guided_regex", Value::Null),
        (with("structured_outputs", json!({"regex": "a"})), "structured_outputs", json!("unsupported")),
        (with("repetition_penalty", json!(1.3)), "repetition_penalty", json!("unsupported")),
        (with("n", json!(17)), "n", Value::Null),
        (with("temperatur", json!(0.5)), "temperatur", Value::Null),
    ] {
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let tools = json!([{"type": "function", "function": {"name": "f g", "parameters": {}}}]);
    let chat = json!({"model": "stories260k", "messages": [{"role": "user", "content": "Hi"}], "tools": tools});
    let (s, v) = json_call(&app, "POST", "/v1/chat/completions", Some(chat)).await;
    assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("tools[0].function.name")), "{v}");
    let mut streamed = base.clone();
    streamed["stream"] = json!(true);
    for (options, param) in [
        (json!({"continuous_usage_stats": true}), "stream_options.continuous_usage_stats"),
        (json!({"include_usage": "yes"}), "stream_options.include_usage"),
        (json!({"usage": true}), "stream_options.usage"),
    ] {
        streamed["stream_options"] = options;
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(streamed.clone())).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!(param)), "{v}");
    }

    // The values clients send by default ask for nothing and are accepted.
    let mut neutral = base.clone();
    for (k, v) in [("logprobs", Value::Null), ("echo", json!(false)), ("best_of", json!(1)), ("user", json!("u"))] {
        neutral[k] = v;
    }
    let (s, v) = json_call(&app, "POST", "/v1/completions", Some(neutral)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let chat = json!({
        "model": "stories260k", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": false, "n": 1,
    });
    let (s, v) = json_call(&app, "POST", "/v1/chat/completions", Some(chat)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn stop_lists_are_bounded_and_a_tiny_temperature_is_greedy() {
    let (_, app) = loaded(&[]);
    let base = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 24});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    for (body, param) in [
        (with("stop", json!("")), "stop"),
        (with("stop", json!(["a", "b", "c", "d", "e"])), "stop"),
        (with("stop", json!("x".repeat(257))), "stop"),
        (with("stop", json!([1, 2])), "stop"),
        (with("stop_token_ids", json!(vec![2; 65])), "stop_token_ids"),
        (with("stop_token_ids", json!([1u64 << 33])), "stop_token_ids"),
    ] {
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body.clone())).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!(param)), "{body}: {v}");
    }
    let (_, greedy) = json_call(&app, "POST", "/v1/completions", Some(with("temperature", json!(0)))).await;
    let (s, tiny) = json_call(&app, "POST", "/v1/completions", Some(with("temperature", json!(1e-38)))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(tiny["choices"][0]["text"], greedy["choices"][0]["text"], "1e-38 acts as greedy");
}

/// `logit_bias` moves greedy decoding as OpenAI's does (-100 bans a token, 100 forces it) and
/// refuses what is no token id of the model or out of range; `seed` takes the whole u64 range.
#[tokio::test]
async fn logit_bias_bans_and_forces_tokens_and_seeds_span_u64() {
    let (state, app) = loaded(&[]);
    let tokenizer = state.loaded.get().unwrap().tokenizer.clone();
    let base = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let (_, plain) = json_call(&app, "POST", "/v1/completions", Some(base.clone())).await;
    let text = plain["choices"][0]["text"].as_str().unwrap().to_string();
    let first = tokenizer.encode(&format!("Once upon a time{text}")).unwrap()
        [tokenizer.encode("Once upon a time").unwrap().len()];
    let (s, banned) =
        json_call(&app, "POST", "/v1/completions", Some(with("logit_bias", json!({first.to_string(): -100})))).await;
    assert_eq!(s, StatusCode::OK, "{banned}");
    assert_ne!(banned["choices"][0]["text"], plain["choices"][0]["text"], "the greedy first token is banned");
    let forced_id = tokenizer.encode(" dog").unwrap().last().copied().unwrap();
    let (_, forced) =
        json_call(&app, "POST", "/v1/completions", Some(with("logit_bias", json!({forced_id.to_string(): 100})))).await;
    let one = tokenizer.decode(&[forced_id]).unwrap();
    assert_eq!(forced["choices"][0]["text"].as_str().unwrap(), one.repeat(8), "every token forced: {forced}");
    for bad in [json!({"512": 1}), json!({"x": 1}), json!({"5": 101}), json!({"5": "1"}), json!([1])] {
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(with("logit_bias", bad.clone()))).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("logit_bias")), "{bad}: {v}");
    }
    let sampled = |seed: Value| {
        let mut b = with("temperature", json!(1.0));
        b["seed"] = seed;
        let app = app.clone();
        async move { json_call(&app, "POST", "/v1/completions", Some(b)).await }
    };
    let (s, a) = sampled(json!(u64::MAX)).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let (_, b) = sampled(json!(i64::MAX)).await;
    assert_ne!(a["choices"][0]["text"], b["choices"][0]["text"], "seeds past i64::MAX are their own seeds");
    assert_eq!(sampled(json!(u64::MAX)).await.1["choices"][0]["text"], a["choices"][0]["text"], "and repeat");
    assert_eq!(sampled(json!(-1)).await.0, StatusCode::OK);
}

/// The request that stopped a replica for good: non-ASCII text, a high temperature and stop
/// strings with accents. Every answer is 200 and the engine serves on.
#[tokio::test]
async fn accented_text_with_stop_strings_at_a_high_temperature_keeps_the_engine_alive() {
    let (state, app) = loaded(&[]);
    for seed in 0..24 {
        let body = json!({
            "model": "stories260k", "prompt": "Il était une fois, à l'école, un élève très curieux",
            "max_tokens": 48, "temperature": 2.0, "top_p": 1.0, "seed": seed,
            "stop": ["é", "à l", "ç", "\u{1F600}"],
        });
        let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "seed {seed}: {v}");
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(!["é", "à l", "ç"].iter().any(|st| text.contains(st)), "no stop string is sent: {text:?}");
    }
    assert!(state.loaded.get().unwrap().engine.is_alive());
    let (s, v) = json_call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({
            "model": "stories260k", "prompt": "Once upon a time", "max_tokens": 60, "temperature": 0,
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        reference("once_upon_a_time.txt")
            .starts_with(&format!("Once upon a time{}", v["choices"][0]["text"].as_str().unwrap()))
    );
}

#[test]
fn a_kv_cache_too_small_for_one_full_sequence_is_a_clear_error_at_start() {
    let a = args(&["--kv-cache-bytes", "4096", "--max-model-len", "256"]);
    let state = serve::state(&a).unwrap();
    let err = serve::load(&a, &state).expect_err("refused at start").to_string();
    assert!(err.contains("--kv-cache-bytes") && err.contains("--max-model-len 256"), "{err}");
    let Err(err) = serve::state(&args(&["--max-num-batched-tokens", "0"])) else { panic!("a zero budget is refused") };
    let err = err.to_string();
    assert!(err.contains("--max-num-batched-tokens"), "{err}");
}

/// A prompt longer than the step's token budget is prefilled in chunks and gives the same text.
#[tokio::test]
async fn long_prompts_are_chunked_under_the_token_budget() {
    let (_, whole) = loaded(&[]);
    let (_, chunked) = loaded(&["--max-num-batched-tokens", "8"]);
    let body = json!({"model": "stories260k", "prompt": "Once upon a time, there was a little girl named Lily.",
                      "max_tokens": 20, "temperature": 0});
    let (s, a) = json_call(&whole, "POST", "/v1/completions", Some(body.clone())).await;
    let (t, b) = json_call(&chunked, "POST", "/v1/completions", Some(body)).await;
    assert_eq!((s, t), (StatusCode::OK, StatusCode::OK), "{b}");
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

/// Chat `content` as an array of text parts renders as the same prompt as the joined string;
/// other part types are a 400 naming the part.
#[tokio::test]
async fn chat_content_parts_are_text_or_refused_by_name() {
    let (_, app) = loaded(&[]);
    let chat = |content: Value| {
        let messages = json!([{"role": "user", "content": content}]);
        json!({"model": "stories260k", "messages": messages, "max_tokens": 6, "temperature": 0})
    };
    let (s, joined) = json_call(&app, "POST", "/v1/chat/completions", Some(chat(json!("Once upon\na time")))).await;
    assert_eq!(s, StatusCode::OK, "{joined}");
    let parts = json!([{"type": "text", "text": "Once upon"}, {"type": "text", "text": "a time"}]);
    let (s, split) = json_call(&app, "POST", "/v1/chat/completions", Some(chat(parts))).await;
    assert_eq!(s, StatusCode::OK, "{split}");
    assert_eq!(split["choices"][0]["message"]["content"], joined["choices"][0]["message"]["content"]);
    assert_eq!(split["usage"]["prompt_tokens"], joined["usage"]["prompt_tokens"]);
    for (content, param) in [
        (json!([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]), "messages[0].content[0].type"),
        (json!([{"type": "text", "text": "a"}, {"type": "input_audio\n\u{202e}"}]), "messages[0].content[1].type"),
        (json!([{"text": "no type"}]), "messages[0].content[0].type"),
        (json!([{"type": "text", "text": 5}]), "messages[0].content[0]"),
    ] {
        let (s, v) = json_call(&app, "POST", "/v1/chat/completions", Some(chat(content.clone()))).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!(param)), "{content}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().contains('\n'), "{v}");
    }
}

/// Log-probabilities in OpenAI's two shapes, whole and streamed: one entry per generated token,
/// the tokens spell the text, greedy picks the most likely token, alternatives are ranked and
/// as many as asked, the streamed entries equal the whole answer's, bad values are 400s.
#[tokio::test]
async fn logprobs_in_both_shapes_whole_and_streamed() {
    let (_, app) = loaded(&[]);
    let body = json!({"model": "stories260k", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0,
        "logprobs": 3});
    let (s, v) = json_call(&app, "POST", "/v1/completions", Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let choice = &v["choices"][0];
    let lp = &choice["logprobs"];
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 12);
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap(), "the tokens spell the text");
    let mut at = 0;
    for (i, token) in tokens.iter().enumerate() {
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 3, "{top:?}");
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-6, "greedy takes the most likely: {chosen} {top:?}");
        assert_eq!(lp["text_offset"][i], at);
        at += token.len();
    }
    let mut streamed = body.clone();
    streamed["stream"] = true.into();
    let (_, _, b) = call(&app, "POST", "/v1/completions", Some(streamed)).await;
    let chunks = sse_chunks(&b);
    let streamed_lps: Vec<f64> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array().cloned().unwrap_or_default())
        .map(|x| x.as_f64().unwrap())
        .collect();
    let whole_lps: Vec<f64> = lp["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(streamed_lps, whole_lps, "a stream carries the same entries, each with its text");

    let chat = json!({"model": "stories260k", "messages": [{"role": "user", "content": "Once upon a time"}],
        "max_tokens": 8, "temperature": 1.0, "seed": 5, "logprobs": true, "top_logprobs": 2});
    let (s, v) = json_call(&app, "POST", "/v1/chat/completions", Some(chat.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 8);
    let text: String = content.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64(), "ranked: {top:?}");
        assert!(e["logprob"].as_f64().unwrap() <= top[0]["logprob"].as_f64().unwrap() + 1e-6);
        assert_eq!(e["bytes"].as_array().unwrap().len(), e["token"].as_str().unwrap().len());
    }
    let mut streamed = chat.clone();
    streamed["stream"] = true.into();
    let (_, _, b) = call(&app, "POST", "/v1/chat/completions", Some(streamed)).await;
    let entries: Vec<Value> = sse_chunks(&b)
        .iter()
        .flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(&entries, content, "the seeded stream carries the same entries");

    let without = json!({"model": "stories260k", "prompt": "Once", "max_tokens": 2});
    let (_, v) = json_call(&app, "POST", "/v1/completions", Some(without)).await;
    assert!(v["choices"][0]["logprobs"].is_null(), "none unless asked");
    for (body, route, param) in [
        (json!({"prompt": "x", "logprobs": 21}), "/v1/completions", "logprobs"),
        (json!({"prompt": "x", "logprobs": true}), "/v1/completions", "logprobs"),
        (json!({"messages": [{"role": "user", "content": "x"}], "logprobs": 3}), "/v1/chat/completions", "logprobs"),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "/v1/chat/completions",
            "top_logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": -1}),
            "/v1/chat/completions",
            "top_logprobs",
        ),
    ] {
        let mut body = body;
        body["model"] = "stories260k".into();
        let (s, v) = json_call(&app, "POST", route, Some(body.clone())).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!(param)), "{body}: {v}");
    }
}
