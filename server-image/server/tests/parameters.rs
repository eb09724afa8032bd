//! OpenAI's request parameters beyond text in, text out, through `app(state)` on stories260k:
//! `n` samples sharing their prompt's KV blocks, `echo`, `max_completion_tokens`, `user`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{call, json_call, loaded, metrics_text, reference, sample, sse_chunks};

const COMPLETIONS: &str = "/v1/completions";
const CHAT: &str = "/v1/chat/completions";

/// A completion request for "Once upon a time" (5 tokens with BOS) with `extra` fields.
fn completion(extra: Value) -> Value {
    let mut body = json!({"model": "stories260k", "prompt": "Once upon a time"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn texts(v: &Value) -> Vec<String> {
    v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

// === n ===

#[tokio::test]
async fn greedy_samples_are_identical_and_equal_a_single_one() {
    // Block size 4: the prompt fills one block and part of a second, which the samples share
    // until each writes its first token; 16: all of it sits in one shared partial block. With
    // prefix caching, the second request's first block comes from the cache before the fork.
    for flags in
        [&["--block-size", "4"][..], &["--block-size", "16"], &["--block-size", "4", "--enable-prefix-caching"]]
    {
        let (_, app) = loaded(flags);
        let (_, one) =
            json_call(&app, "POST", COMPLETIONS, Some(completion(json!({"max_tokens": 24, "temperature": 0})))).await;
        let one = texts(&one).remove(0);
        assert!(reference("once_upon_a_time.txt").starts_with(&format!("Once upon a time{one}")), "{one:?}");
        let body = completion(json!({"max_tokens": 24, "temperature": 0, "n": 4}));
        let (s, v) = json_call(&app, "POST", COMPLETIONS, Some(body.clone())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(texts(&v), vec![one.clone(); 4], "{flags:?}");
        let (_, again) = json_call(&app, "POST", COMPLETIONS, Some(body)).await;
        assert_eq!(texts(&again), vec![one.clone(); 4], "{flags:?}, again");
        let indices: Vec<u64> = v["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        assert!(v["choices"].as_array().unwrap().iter().all(|c| c["finish_reason"] == "length"));
        // The prompt once, every sample's tokens.
        assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 96, "total_tokens": 101}));
    }
}

/// Sample `i` draws with seed `seed + i`: each equals a lone request with that seed, which it could
/// not if the samples wrote into the block they shared: with blocks of 16, positions 5 to 15 lie in
/// the prompt's partial block, and the samples part ways there.
#[tokio::test]
async fn sample_i_equals_a_lone_request_seeded_seed_plus_i_and_the_prompt_runs_once() {
    let (_, app) = loaded(&["--block-size", "16"]);
    let body = |n: usize, seed: u64| {
        completion(json!({"max_tokens": 16, "temperature": 1.0, "ignore_eos": true, "n": n, "seed": seed}))
    };
    let (s, four) = json_call(&app, "POST", COMPLETIONS, Some(body(4, 11))).await;
    assert_eq!(s, StatusCode::OK, "{four}");
    // The first request on this engine: its metrics are all there is.
    let m = metrics_text(&app).await;
    let l = r#"{engine="0",model_name="stories260k"}"#;
    assert_eq!(sample(&m, &format!("vllm:prompt_tokens_total{l}")), Some(5.0), "the prompt counted once");
    assert_eq!(sample(&m, &format!("vllm:generation_tokens_total{l}")), Some(64.0));
    // Run through the model: the prompt once, then every sample's tokens but its last.
    assert_eq!(sample(&m, &format!("vllm:iteration_tokens_total_sum{l}")), Some(5.0 + 4.0 * 15.0));
    assert_eq!(sample(&m, &format!("vllm:request_prompt_tokens_count{l}")), Some(1.0));
    assert_eq!(sample(&m, &format!("vllm:time_to_first_token_seconds_count{l}")), Some(1.0));
    assert_eq!(sample(&m, &format!("vllm:request_generation_tokens_count{l}")), Some(4.0), "one per sample");
    assert_eq!(sample(&m, &format!("vllm:request_params_n_sum{l}")), Some(4.0));
    assert_eq!(sample(&m, &format!("vllm:kv_cache_usage_perc{l}")), Some(0.0), "every block returned");

    let four = texts(&four);
    assert!(four.iter().collect::<std::collections::HashSet<_>>().len() > 1, "samples differ: {four:?}");
    for (i, text) in four.iter().enumerate() {
        let (_, alone) = json_call(&app, "POST", COMPLETIONS, Some(body(1, 11 + i as u64))).await;
        assert_eq!(&texts(&alone)[0], text, "sample {i}");
    }
    let (_, again) = json_call(&app, "POST", COMPLETIONS, Some(body(4, 11))).await;
    assert_eq!(texts(&again), four, "reproducible");
}

/// A cache too small for all samples at once preempts some; recomputed, they still equal lone
/// requests.
#[tokio::test]
async fn samples_preempted_for_lack_of_blocks_are_recomputed_to_the_same_text() {
    // Blocks of 16 tokens take 20,480 bytes (5 layers, 4 KV heads of 8, keys and values, f32).
    let (_, small) = loaded(&["--kv-cache-bytes", &(6 * 20480).to_string(), "--max-model-len", "64"]);
    let (_, roomy) = loaded(&[]);
    let body = |n: usize, seed: u64| {
        completion(json!({"max_tokens": 40, "temperature": 0.9, "ignore_eos": true, "n": n, "seed": seed}))
    };
    let (s, v) = json_call(&small, "POST", COMPLETIONS, Some(body(4, 3))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = metrics_text(&small).await;
    assert!(sample(&m, "vllm:num_preemptions_total").unwrap() > 0.0, "four samples of 45 tokens need 12 blocks of 6");
    for (i, text) in texts(&v).iter().enumerate() {
        let (_, alone) = json_call(&roomy, "POST", COMPLETIONS, Some(body(1, 3 + i as u64))).await;
        assert_eq!(&texts(&alone)[0], text, "sample {i}");
    }
}

#[tokio::test]
async fn streamed_samples_carry_their_index_and_finish_each() {
    let (_, app) = loaded(&[]);
    let msgs = json!([{"role": "user", "content": "Tom and Lily went"}]);
    let chat =
        json!({"model": "stories260k", "messages": msgs, "max_tokens": 10, "temperature": 0.9, "seed": 3, "n": 3});
    let (s, whole) = json_call(&app, "POST", CHAT, Some(chat.clone())).await;
    assert_eq!(s, StatusCode::OK, "{whole}");
    let mut streamed_body = chat.clone();
    streamed_body["stream"] = json!(true);
    streamed_body["stream_options"] = json!({"include_usage": true});
    let (s, _, b) = call(&app, "POST", CHAT, Some(streamed_body)).await;
    assert_eq!(s, StatusCode::OK);
    let chunks = sse_chunks(&b);
    for i in 0..3 {
        let of_i: Vec<&Value> =
            chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()).filter(|c| c["index"] == i).collect();
        assert_eq!(of_i.first().unwrap()["delta"]["role"], "assistant", "choice {i} opens with the role");
        let text: String = of_i.iter().filter_map(|c| c["delta"]["content"].as_str()).collect();
        assert_eq!(text, whole["choices"][i]["message"]["content"].as_str().unwrap(), "choice {i}");
        let finishes: Vec<&Value> = of_i.iter().map(|c| &c["finish_reason"]).filter(|f| !f.is_null()).collect();
        assert_eq!(finishes, [&whole["choices"][i]["finish_reason"]], "choice {i} finishes once");
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"], "usage once, after every choice finished");
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() > 10, "summed over the choices");

    // Greedy completions, streamed: every index spells the single answer.
    let body = completion(json!({"max_tokens": 12, "temperature": 0, "stream": true, "n": 2}));
    let chunks = sse_chunks(&call(&app, "POST", COMPLETIONS, Some(body)).await.2);
    let (_, one) =
        json_call(&app, "POST", COMPLETIONS, Some(completion(json!({"max_tokens": 12, "temperature": 0})))).await;
    for i in 0..2 {
        let text: String = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == i)
            .filter_map(|c| c["text"].as_str())
            .collect();
        assert_eq!(text, texts(&one)[0], "choice {i}");
    }
}

#[tokio::test]
async fn a_client_gone_mid_stream_aborts_every_sample() {
    let (_, app) = loaded(&[]);
    let body = completion(json!({"max_tokens": 400, "ignore_eos": true, "stream": true, "n": 3}));
    let req = Request::post(COMPLETIONS)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let mut body = app.clone().oneshot(req).await.unwrap().into_body();
    let mut seen = String::new();
    while !(0..3).all(|i| seen.contains(&format!("\"index\":{i}"))) {
        seen.push_str(&String::from_utf8_lossy(&body.frame().await.unwrap().unwrap().into_data().unwrap()));
    }
    drop(body);
    let mut aborted = false;
    for _ in 0..200 {
        let m = metrics_text(&app).await;
        if sample(&m, r#"vllm:request_success_total{engine="0",finished_reason="abort""#) == Some(3.0)
            && sample(&m, "vllm:kv_cache_usage_perc") == Some(0.0)
        {
            aborted = true;
            assert_eq!(sample(&m, "vllm:num_requests_running"), Some(0.0));
            assert!(sample(&m, "vllm:generation_tokens_total").unwrap() < 1200.0, "stopped early");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(aborted, "all three samples aborted and their blocks freed");
}

#[tokio::test]
async fn n_is_bounded_and_best_of_may_only_equal_it() {
    let (_, app) = loaded(&["--max-num-seqs", "2"]);
    let (s, v) = json_call(&app, "POST", COMPLETIONS, Some(completion(json!({"n": 3, "max_tokens": 2})))).await;
    assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("n")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--max-num-seqs"), "{v}");
    let (s, _) = json_call(&app, "POST", COMPLETIONS, Some(completion(json!({"n": 2, "max_tokens": 2})))).await;
    assert_eq!(s, StatusCode::OK);

    let (_, app) = loaded(&[]);
    for (fields, status, param, code) in [
        (json!({"n": 16}), StatusCode::OK, None, None),
        (json!({"n": 17}), StatusCode::BAD_REQUEST, Some("n"), None),
        (json!({"n": -1}), StatusCode::BAD_REQUEST, Some("n"), None),
        (json!({"n": "2"}), StatusCode::BAD_REQUEST, Some("n"), None),
        (json!({"n": 2, "best_of": 2}), StatusCode::OK, None, None),
        (json!({"n": 2, "best_of": 1}), StatusCode::BAD_REQUEST, Some("best_of"), None),
        (json!({"n": 2, "best_of": 3}), StatusCode::BAD_REQUEST, Some("best_of"), Some("unsupported")),
    ] {
        let mut body = completion(fields.clone());
        body["max_tokens"] = json!(2);
        let (s, v) = json_call(&app, "POST", COMPLETIONS, Some(body)).await;
        assert_eq!(s, status, "{fields}: {v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{fields}: {v}");
        assert_eq!(v["error"]["code"].as_str(), code, "{fields}: {v}");
        if s == StatusCode::OK {
            assert_eq!(v["choices"].as_array().unwrap().len() as u64, fields["n"].as_u64().unwrap());
        }
    }
}

// === echo ===

#[tokio::test]
async fn echo_begins_every_choice_with_the_prompt_whole_and_streamed() {
    let (_, app) = loaded(&[]);
    let plain = completion(json!({"max_tokens": 10, "temperature": 0}));
    let (_, one) = json_call(&app, "POST", COMPLETIONS, Some(plain.clone())).await;
    let want = format!("Once upon a time{}", texts(&one)[0]);
    let mut echoed = plain.clone();
    echoed["echo"] = json!(true);
    echoed["n"] = json!(2);
    let (s, v) = json_call(&app, "POST", COMPLETIONS, Some(echoed.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(texts(&v), [want.clone(), want.clone()]);
    assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}));

    echoed["stream"] = json!(true);
    let chunks = sse_chunks(&call(&app, "POST", COMPLETIONS, Some(echoed)).await.2);
    for i in 0..2 {
        let of_i: Vec<&str> = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == i)
            .filter_map(|c| c["text"].as_str())
            .collect();
        assert_eq!(of_i.first(), Some(&"Once upon a time"), "the prompt comes first, alone");
        assert_eq!(of_i.concat(), want, "choice {i}");
    }

    // Token ids echo as their text; BOS (1) decodes to nothing.
    let ids =
        llmserve_engine::tokenizer::Tokenizer::load(&common::model_dir()).unwrap().encode("Once upon a time").unwrap();
    assert_eq!(ids[0], 1);
    let (_, v) = json_call(
        &app,
        "POST",
        COMPLETIONS,
        Some(json!({"model": "stories260k", "prompt": ids, "max_tokens": 10, "temperature": 0, "echo": true})),
    )
    .await;
    assert_eq!(texts(&v)[0], want, "these ids are the prompt's");

    for (route, body) in [
        (COMPLETIONS, completion(json!({"echo": true, "logprobs": 1}))),
        (CHAT, json!({"model": "stories260k", "messages": [{"role": "user", "content": "x"}], "echo": true})),
        (COMPLETIONS, completion(json!({"echo": "yes"}))),
    ] {
        let (s, v) = json_call(&app, "POST", route, Some(body)).await;
        assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("echo")), "{v}");
    }
}

// === max_completion_tokens, user, stop ===

#[tokio::test]
async fn chat_prefers_max_completion_tokens_and_accepts_user_and_stop_strings() {
    let (_, app) = loaded(&[]);
    let chat = |extra: Value| {
        let mut body = json!({"model": "stories260k", "messages": [{"role": "user", "content": "The cat"}],
            "temperature": 0, "ignore_eos": true});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (s, v) = json_call(&app, "POST", CHAT, Some(chat(json!({"max_tokens": 2, "max_completion_tokens": 5})))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "max_completion_tokens wins over max_tokens");
    let (s, v) = json_call(&app, "POST", CHAT, Some(chat(json!({"max_completion_tokens": 0})))).await;
    assert_eq!((s, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("max_completion_tokens")), "{v}");

    let (_, whole) = json_call(&app, "POST", CHAT, Some(chat(json!({"max_tokens": 30, "user": "u-1"})))).await;
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    // A stop string taken from the text ends it where the string begins, as a string or a list.
    let stop: String = text.chars().skip(text.chars().count() / 2).take(4).collect();
    let cut = &text[..text.find(&stop).unwrap()];
    for stop in [json!(stop), json!(["zzz", stop])] {
        let (s, v) = json_call(&app, "POST", CHAT, Some(chat(json!({"max_tokens": 30, "stop": stop})))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], cut, "{stop}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}
