//! Runs a validated generation on the engine and answers it as one JSON body or as SSE chunks
//! (ending `data: [DONE]`). Dropping the response (client gone) drops the engine stream, which
//! aborts the sequence and frees its KV blocks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use llmserve_engine::engine::{Event, RequestStream, SubmitError};
use serde_json::{Value, json};

use super::error::ApiError;
use super::validate::ValidGeneration;
use crate::state::AppState;

/// Which OpenAI family answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`.
    Completion,
    /// `/v1/chat/completions`.
    Chat,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Submits `valid` and answers it.
pub async fn respond(state: &AppState, valid: ValidGeneration, kind: Kind) -> Result<Response, ApiError> {
    let loaded = state.loaded.get().ok_or_else(|| ApiError::unavailable("the model is loading"))?;
    let stream = loaded.engine.submit(valid.request).map_err(|e| match e {
        SubmitError::QueueFull => {
            state.http.rejected.with_label_values(&[&state.model_id, crate::http_metrics::REJECTED_QUEUE_FULL]).inc();
            ApiError::overloaded()
        }
        SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
    })?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Completion => format!("cmpl-{:016x}{:08x}", state.created, n),
        Kind::Chat => format!("chatcmpl-{:016x}{:08x}", state.created, n),
    };
    let head = Head { id, created: now(), model: state.model_id.clone(), kind };
    if valid.stream { Ok(sse(head, stream, valid.include_usage)) } else { whole(head, stream).await }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Head {
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }
}

async fn whole(head: Head, mut stream: RequestStream) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match stream.next().await {
            Some(Event::Token { text: t, .. }) => text.push_str(&t),
            Some(Event::Finished { error: Some(e), .. }) => return Err(ApiError::internal(e)),
            Some(Event::Finished { reason, prompt_tokens, completion_tokens, .. }) => {
                let choice = match head.kind {
                    Kind::Completion => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason.as_str()})
                    }
                    Kind::Chat => {
                        let message = json!({"role": "assistant", "content": text});
                        json!({"index": 0, "message": message, "logprobs": null, "finish_reason": reason.as_str()})
                    }
                };
                let object = if head.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
                return Ok(Json(json!({
                    "id": head.id, "object": object, "created": head.created, "model": head.model,
                    "choices": [choice], "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response());
            }
            None => return Err(ApiError::internal("the engine stopped before the request finished")),
        }
    }
}

enum Phase {
    Start,
    Running,
    Done,
}

fn sse(head: Head, stream: RequestStream, include_usage: bool) -> Response {
    let events = stream::unfold((head, stream, Phase::Start), move |(head, mut stream, phase)| async move {
        let data = |v: &Value| SseEvent::default().data(v.to_string());
        match phase {
            Phase::Start if head.kind == Kind::Chat => {
                let first = vec![data(&head.chunk(Some(""), true, None))];
                Some((first, (head, stream, Phase::Running)))
            }
            Phase::Start | Phase::Running => {
                let out = match stream.next().await {
                    Some(Event::Token { text, .. }) if text.is_empty() => Vec::new(),
                    Some(Event::Token { text, .. }) => vec![data(&head.chunk(Some(&text), false, None))],
                    Some(Event::Finished { error: Some(e), .. }) => {
                        vec![data(&ApiError::internal(e).body()), SseEvent::default().data("[DONE]")]
                    }
                    Some(Event::Finished { reason, prompt_tokens, completion_tokens, .. }) => {
                        let mut v = vec![data(&head.chunk(None, false, Some(reason.as_str())))];
                        if include_usage {
                            let object =
                                if head.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                            v.push(data(&json!({
                                "id": head.id, "object": object, "created": head.created, "model": head.model,
                                "choices": [], "usage": usage(prompt_tokens, completion_tokens),
                            })));
                        }
                        v.push(SseEvent::default().data("[DONE]"));
                        return Some((v, (head, stream, Phase::Done)));
                    }
                    None => {
                        vec![data(&ApiError::internal("the engine stopped").body()), SseEvent::default().data("[DONE]")]
                    }
                };
                Some((out, (head, stream, Phase::Running)))
            }
            Phase::Done => None,
        }
    })
    .flat_map(|v| stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
