//! Runs a validated generation on the engine and answers it as one JSON body or as SSE chunks
//! (ending `data: [DONE]`). Dropping the response (client gone) drops the engine stream, which
//! aborts the sequence and frees its KV blocks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use std::sync::Arc;

use llmserve_engine::engine::{Event, RequestStream, SubmitError};
use llmserve_engine::sampling::TokenLogprobs;
use llmserve_engine::tokenizer::Tokenizer;
use serde_json::{Value, json};

use super::error::ApiError;
use super::tools::{Call, Piece, ToolParser, parse_answer};
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
    let with_logprobs = valid.request.sampling.logprobs.is_some();
    let last_prompt_token = valid.request.prompt.last().copied();
    let stream = loaded.engine.submit(valid.request).map_err(|e| match e {
        SubmitError::QueueFull => {
            state.http.rejected.with_label_values(&[&state.model_id, crate::http_metrics::REJECTED_QUEUE_FULL]).inc();
            ApiError::overloaded()
        }
        SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
        SubmitError::TooManySamples { max } => ApiError::invalid("n", format!("`n` must be between 1 and {max}")),
    })?;
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Completion => format!("cmpl-{:016x}{:08x}", state.created, n),
        Kind::Chat => format!("chatcmpl-{:016x}{:08x}", state.created, n),
    };
    let tokenizer = loaded.tokenizer.clone();
    let head = Head {
        id,
        created: now(),
        model: state.model_id.clone(),
        kind,
        tokenizer,
        last_prompt_token,
        streamed: valid.stream,
        echo: valid.echo.unwrap_or_default(),
        tool_calls: valid.tool_calls && kind == Kind::Chat,
    };
    if valid.stream {
        Ok(sse(head, stream, valid.include_usage, with_logprobs))
    } else {
        whole(head, stream, with_logprobs).await
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    tokenizer: Arc<Tokenizer>,
    last_prompt_token: Option<u32>,
    /// Answered as SSE chunks.
    streamed: bool,
    /// What each choice's text begins with (completions' `echo`), or nothing.
    echo: String,
    /// Chat with tools: each answer is read for tool calls (see [`super::tools`]).
    tool_calls: bool,
}

/// A token's log-probabilities with the token (and its alternatives) as text.
struct Entry {
    token: String,
    logprob: f32,
    top: Vec<(String, f32)>,
}

/// Completions' `top_logprobs` entry: token text to log-probability.
fn top_map(top: &[(String, f32)]) -> serde_json::Map<String, Value> {
    top.iter().map(|(t, l)| (t.clone(), json!(finite(*l)))).collect()
}

/// JSON has no infinities: vLLM's stand-in for a log-probability of minus infinity.
fn finite(lp: f32) -> f64 {
    if lp.is_finite() { f64::from(lp) } else { -9999.0 }
}

impl Head {
    /// The entry of token `id`, which followed `prev`. A token's text is what it adds after
    /// `prev`: decoded alone, a SentencePiece token loses its leading space.
    fn entry(&self, prev: Option<u32>, id: u32, lp: TokenLogprobs) -> Entry {
        let alone = |id: u32| self.tokenizer.decode(&[id]).unwrap_or_default();
        let text = |id: u32| {
            let Some(prev) = prev else { return alone(id) };
            let (before, after) = (self.tokenizer.decode(&[prev]), self.tokenizer.decode(&[prev, id]));
            match (before, after) {
                (Ok(b), Ok(a)) => a.strip_prefix(b.as_str()).map(String::from).unwrap_or_else(|| alone(id)),
                _ => alone(id),
            }
        };
        Entry { token: text(id), logprob: lp.logprob, top: lp.top.into_iter().map(|(t, l)| (text(t), l)).collect() }
    }

    /// The `logprobs` of a choice in this family's shape; `offset` is where the entries' text
    /// starts in the choice's text (completions' `text_offset`).
    fn logprobs(&self, entries: &[Entry], offset: usize) -> Value {
        match self.kind {
            Kind::Completion => {
                let mut at = offset;
                let mut offsets = Vec::with_capacity(entries.len());
                for e in entries {
                    offsets.push(at);
                    at += e.token.len();
                }
                json!({
                    "tokens": entries.iter().map(|e| e.token.as_str()).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| finite(e.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": entries.iter().map(|e| top_map(&e.top)).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Kind::Chat => {
                let one = |t: &str, l: f32| json!({"token": t, "logprob": finite(l), "bytes": t.as_bytes()});
                let content: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        let mut entry = one(&e.token, e.logprob);
                        if let Some(o) = entry.as_object_mut() {
                            o.insert("top_logprobs".into(), e.top.iter().map(|(t, l)| one(t, *l)).collect());
                        }
                        entry
                    })
                    .collect();
                json!({"content": content})
            }
        }
    }

    fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        logprobs: Option<Value>,
    ) -> Value {
        let logprobs = logprobs.unwrap_or(Value::Null);
        let choice = match self.kind {
            Kind::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        self.envelope(vec![choice], None)
    }

    /// Tool call `k` of choice `index` in OpenAI's shape (`index` among the choice's calls
    /// when streamed, as its deltas carry it).
    fn tool_call(&self, index: usize, k: usize, call: &Call) -> Value {
        let serial = self.id.trim_start_matches("chatcmpl-");
        let mut v = json!({
            "id": format!("call_{serial}{index:02x}{k:02x}"),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        });
        if let (true, Some(o)) = (self.streamed, v.as_object_mut()) {
            o.insert("index".into(), k.into());
        }
        v
    }

    /// A streamed chunk carrying tool call `k` of choice `index`, whole.
    fn tool_chunk(&self, index: usize, k: usize, call: &Call, logprobs: Option<Value>) -> Value {
        let delta = json!({"tool_calls": [self.tool_call(index, k, call)]});
        let choice = json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null});
        self.envelope(vec![choice], None)
    }

    /// A response or chunk object around `choices`.
    fn envelope(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let object = match self.kind {
            Kind::Chat if self.streamed => "chat.completion.chunk",
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        let mut v =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let (Some(u), Some(o)) = (usage, v.as_object_mut()) {
            o.insert("usage".into(), u);
        }
        v
    }
}

/// One choice as it is generated.
struct Choice {
    text: String,
    entries: Vec<Entry>,
    /// The token before the next one (for its text, see [`Head::entry`]).
    prev: Option<u32>,
    finish: Option<&'static str>,
    completion_tokens: usize,
}

impl Choice {
    fn new(head: &Head) -> Self {
        let (prev, text) = (head.last_prompt_token, head.echo.clone());
        Choice { text, entries: Vec::new(), prev, finish: None, completion_tokens: 0 }
    }
}

async fn whole(head: Head, mut stream: RequestStream, with_logprobs: bool) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..stream.n()).map(|_| Choice::new(&head)).collect();
    let mut prompt_tokens = 0;
    while let Some(event) = stream.next().await {
        match event {
            Event::Token { index, id, text, logprobs } => {
                let Some(c) = choices.get_mut(index) else { continue };
                c.text.push_str(&text);
                c.entries.extend(logprobs.map(|lp| head.entry(c.prev, id, lp)));
                c.prev = Some(id);
            }
            Event::Finished { error: Some(e), .. } => return Err(ApiError::internal(e)),
            Event::Finished { index, reason, prompt_tokens: p, completion_tokens, .. } => {
                let Some(c) = choices.get_mut(index) else { continue };
                c.finish = Some(reason.as_str());
                c.completion_tokens = completion_tokens;
                prompt_tokens = p;
            }
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::internal("the engine stopped before the request finished"));
    }
    // The prompt once, every choice's tokens (as OpenAI counts `n`).
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let out: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = if with_logprobs { head.logprobs(&c.entries, 0) } else { Value::Null };
            match head.kind {
                Kind::Completion => {
                    json!({"index": index, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish})
                }
                Kind::Chat if head.tool_calls => {
                    let (content, calls) = parse_answer(&c.text);
                    let mut message = json!({"role": "assistant", "content": content});
                    let finish = finish_reason(c.finish, !calls.is_empty());
                    if let (false, Some(o)) = (calls.is_empty(), message.as_object_mut()) {
                        let calls = calls.iter().enumerate().map(|(k, call)| head.tool_call(index, k, call));
                        o.insert("tool_calls".into(), calls.collect());
                    }
                    json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
                }
                Kind::Chat => {
                    let message = json!({"role": "assistant", "content": c.text});
                    json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": c.finish})
                }
            }
        })
        .collect();
    Ok(Json(head.envelope(out, Some(usage(prompt_tokens, completion_tokens)))).into_response())
}

/// An answer that called tools and ended by itself finishes with `tool_calls` (as OpenAI's do).
fn finish_reason(reason: Option<&'static str>, called: bool) -> Option<&'static str> {
    match reason {
        Some("stop") if called => Some("tool_calls"),
        other => other,
    }
}

enum Phase {
    Start,
    Running,
    Done,
}

/// What a streamed choice carries between chunks: log-probability entries of tokens whose text
/// is still held back (a stop string may follow, or a character is incomplete), sent with the
/// next text, and the length of the text sent so far (completions' `text_offset`).
struct Streamed {
    pending: Vec<Entry>,
    sent: usize,
    prev: Option<u32>,
    /// Chat with tools: what reads the calls out of the text, and how many it has sent.
    parser: Option<ToolParser>,
    calls: usize,
}

struct Flow {
    head: Head,
    stream: RequestStream,
    phase: Phase,
    choices: Vec<Streamed>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Flow {
    /// Choice `index`'s pending entries in this family's shape, if the request asked for
    /// log-probabilities.
    fn take_logprobs(&mut self, index: usize, with_logprobs: bool) -> Option<Value> {
        let c = self.choices.get_mut(index)?;
        if !with_logprobs {
            return None;
        }
        let v = self.head.logprobs(&c.pending, c.sent);
        c.pending.clear();
        Some(v)
    }

    /// The chunks of what choice `index`'s tool parser let through: content and whole calls.
    fn pieces(&mut self, index: usize, pieces: Vec<Piece>, with_logprobs: bool) -> Vec<Value> {
        let mut out = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let lp = self.take_logprobs(index, with_logprobs);
            match piece {
                Piece::Content(text) => out.push(self.head.chunk(index, Some(&text), false, None, lp)),
                Piece::Call(call) => {
                    let k = self.choices.get(index).map_or(0, |c| c.calls);
                    out.push(self.head.tool_chunk(index, k, &call, lp));
                    if let Some(c) = self.choices.get_mut(index) {
                        c.calls += 1;
                    }
                }
            }
        }
        out
    }
}

fn sse(head: Head, stream: RequestStream, include_usage: bool, with_logprobs: bool) -> Response {
    let choices = (0..stream.n())
        .map(|_| Streamed {
            pending: Vec::new(),
            sent: 0,
            prev: head.last_prompt_token,
            parser: head.tool_calls.then(ToolParser::default),
            calls: 0,
        })
        .collect();
    let flow = Flow { head, stream, phase: Phase::Start, choices, prompt_tokens: 0, completion_tokens: 0 };
    let events = stream::unfold(flow, move |mut f| async move {
        let data = |v: &Value| SseEvent::default().data(v.to_string());
        let done = || SseEvent::default().data("[DONE]");
        match f.phase {
            Phase::Start if f.head.kind == Kind::Chat => {
                // Every choice opens with the assistant's role, as OpenAI's and vLLM's streams do.
                let first = (0..f.choices.len()).map(|i| data(&f.head.chunk(i, Some(""), true, None, None))).collect();
                f.phase = Phase::Running;
                Some((first, f))
            }
            Phase::Start if !f.head.echo.is_empty() => {
                // Every choice opens with the echoed prompt.
                let echo = f.head.echo.clone();
                let first =
                    (0..f.choices.len()).map(|i| data(&f.head.chunk(i, Some(&echo), false, None, None))).collect();
                for c in &mut f.choices {
                    c.sent = echo.len();
                }
                f.phase = Phase::Running;
                Some((first, f))
            }
            Phase::Start | Phase::Running => {
                f.phase = Phase::Running;
                let out = match f.stream.next().await {
                    Some(Event::Token { index, id, text, logprobs }) => {
                        let Some(c) = f.choices.get_mut(index) else { return Some((Vec::new(), f)) };
                        if let Some(lp) = logprobs {
                            let e = f.head.entry(c.prev, id, lp);
                            c.pending.push(e);
                        }
                        c.prev = Some(id);
                        let parsed = if text.is_empty() { None } else { c.parser.as_mut().map(|p| p.push(&text)) };
                        if let Some(pieces) = parsed {
                            f.pieces(index, pieces, with_logprobs).iter().map(data).collect()
                        } else if text.is_empty() {
                            Vec::new()
                        } else {
                            let lp = f.take_logprobs(index, with_logprobs);
                            if let Some(c) = f.choices.get_mut(index) {
                                c.sent += text.len();
                            }
                            vec![data(&f.head.chunk(index, Some(&text), false, None, lp))]
                        }
                    }
                    Some(Event::Finished { error: Some(e), .. }) => {
                        f.phase = Phase::Done;
                        vec![data(&ApiError::internal(e).body()), done()]
                    }
                    Some(Event::Finished { index, reason, prompt_tokens, completion_tokens, .. }) => {
                        f.prompt_tokens = prompt_tokens;
                        f.completion_tokens += completion_tokens;
                        // What the tool parser still held: text, or a call cut off at the end.
                        let rest = f.choices.get_mut(index).and_then(|c| c.parser.as_mut()).map(ToolParser::finish);
                        let mut out: Vec<SseEvent> =
                            f.pieces(index, rest.unwrap_or_default(), with_logprobs).iter().map(data).collect();
                        let called = f.choices.get(index).is_some_and(|c| c.calls > 0);
                        let pending = f.choices.get(index).is_some_and(|c| !c.pending.is_empty());
                        let lp = if pending { f.take_logprobs(index, with_logprobs) } else { None };
                        let reason = finish_reason(Some(reason.as_str()), called);
                        out.push(data(&f.head.chunk(index, None, false, reason, lp)));
                        out
                    }
                    None if f.stream.finished() => {
                        let mut v = Vec::new();
                        if include_usage {
                            let usage = usage(f.prompt_tokens, f.completion_tokens);
                            v.push(data(&f.head.envelope(Vec::new(), Some(usage))));
                        }
                        v.push(done());
                        f.phase = Phase::Done;
                        v
                    }
                    None => {
                        f.phase = Phase::Done;
                        vec![data(&ApiError::internal("the engine stopped").body()), done()]
                    }
                };
                Some((out, f))
            }
            Phase::Done => None,
        }
    })
    .flat_map(|v| stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
