//! Raw OpenAI request bodies become `Valid*` values here; nothing unchecked reaches the engine.

use std::time::Instant;

use llmserve_engine::engine::EngineRequest;
use llmserve_engine::sampling::SamplingParams;
use serde_json::Value;

use super::error::ApiError;
use crate::state::AppState;

/// What both completion routes share once validated.
#[derive(Debug, Clone)]
pub struct ValidGeneration {
    /// The engine request.
    pub request: EngineRequest,
    /// Stream over SSE.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
}

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::malformed("the request body must be a JSON object")),
        Err(e) => Err(ApiError::malformed(format!("the request body is not valid JSON: {e}"))),
    }
}

/// Checks `model` against the served id.
pub fn check_model(body: &serde_json::Map<String, Value>, state: &AppState) -> Result<(), ApiError> {
    match body.get("model") {
        Some(Value::String(m)) if m == &state.model_id => Ok(()),
        Some(Value::String(m)) => Err(ApiError::model_not_found(m, &[&state.model_id])),
        Some(_) => Err(ApiError::invalid("model", "`model` must be a string")),
        None => Err(ApiError::invalid("model", "`model` is required")),
    }
}

fn number(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a number"))),
    }
}

fn integer(body: &serde_json::Map<String, Value>, key: &str) -> Result<Option<i64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.as_i64().or(Some(i64::MAX))),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be an integer"))),
    }
}

fn boolean(body: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(key, format!("`{key}` must be a boolean"))),
    }
}

/// Validates sampling and length fields for `prompt` and builds the engine request.
/// `default_max_tokens` is OpenAI's default for the route (16 for completions; the rest of the
/// context for chat).
pub fn generation(
    body: &serde_json::Map<String, Value>,
    state: &AppState,
    prompt: Vec<u32>,
    default_max_tokens: Option<usize>,
) -> Result<ValidGeneration, ApiError> {
    let max_len = state.max_model_len;
    if prompt.len() >= max_len {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "This model's maximum context length is {max_len} tokens, but the prompt has {} tokens.",
                prompt.len()
            ),
        ));
    }
    let room = max_len - prompt.len();
    let max_tokens = match integer(body, "max_tokens")?.or(integer(body, "max_completion_tokens")?) {
        Some(n) if n < 1 => {
            return Err(ApiError::invalid("max_tokens", format!("`max_tokens` must be at least 1, got {n}")));
        }
        Some(n) if n as u64 > room as u64 => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "This model's maximum context length is {max_len} tokens; the prompt has {} tokens and max_tokens \
                        is {n}.",
                    prompt.len()
                ),
            ));
        }
        Some(n) => n as usize,
        None => default_max_tokens.unwrap_or(room).min(room),
    };
    let temperature = number(body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = number(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
    }
    let top_k = integer(body, "top_k")?.unwrap_or(-1);
    if top_k < -1 {
        return Err(ApiError::invalid("top_k", "`top_k` must be -1 (all) or positive"));
    }
    let mut penalties = [0.0f32; 2];
    for (i, key) in ["presence_penalty", "frequency_penalty"].iter().enumerate() {
        let v = number(body, key)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid(key, format!("`{key}` must be between -2 and 2, got {v}")));
        }
        penalties[i] = v as f32;
    }
    if let Some(n) = integer(body, "n")?
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let seed = match integer(body, "seed")? {
        Some(s) => s as u64,
        None => state.next_seed(),
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => {
            a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
        }
        Some(_) => return Err(ApiError::invalid("stop", "`stop` must be a string or up to 4 non-empty strings")),
    };
    let stop_token_ids = match body.get("stop_token_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(|v| v.as_u64().is_some()) => {
            a.iter().map(|v| v.as_u64().unwrap() as u32).collect()
        }
        Some(_) => return Err(ApiError::invalid("stop_token_ids", "`stop_token_ids` must be a list of token ids")),
    };
    let stream = boolean(body, "stream")?;
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => o.get("include_usage").and_then(Value::as_bool).unwrap_or(false),
        Some(_) => return Err(ApiError::invalid("stream_options", "`stream_options` must be an object")),
    };
    Ok(ValidGeneration {
        request: EngineRequest {
            prompt,
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k: if top_k <= 0 { 0 } else { top_k as usize },
                seed,
                presence_penalty: penalties[0],
                frequency_penalty: penalties[1],
            },
            max_tokens,
            stop,
            stop_token_ids,
            ignore_eos: boolean(body, "ignore_eos")?,
            arrival: Instant::now(),
        },
        stream,
        include_usage,
    })
}
