//! `POST /v1/completions`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::generate::{Kind, respond};
use super::validate;
use crate::state::AppState;

/// OpenAI's default `max_tokens` for completions.
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// Creates a completion of a text prompt (or a list of token ids).
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = validate::parse_object(&body)?;
    validate::check_model(&body, &state)?;
    validate::check_fields(&body, validate::COMPLETION_FIELDS)?;
    let loaded = state.loaded.get().ok_or_else(|| ApiError::unavailable("the model is loading"))?;
    // A list of one string stands for that string.
    let prompt = match body.get("prompt") {
        Some(Value::Array(a)) if matches!(a.as_slice(), [Value::String(_)]) => a.first(),
        other => other,
    };
    let echo = validate::echo(&body)?;
    let mut echoed = None;
    let prompt = match prompt {
        Some(Value::String(s)) => {
            echoed = echo.then(|| s.clone());
            validate::encode(&loaded.tokenizer, s.clone(), "prompt").await?
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|v| v.as_u64().is_some()) => {
            // An id the embedding cannot look up would fail the whole engine step, and with it
            // every request in flight: refuse it here.
            let vocab = loaded.tokenizer.vocab_size().min(loaded.model_vocab_size) as u64;
            if let Some(bad) = a.iter().filter_map(Value::as_u64).find(|&t| t >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                ));
            }
            a.iter().filter_map(Value::as_u64).map(|t| t as u32).collect()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must be a string, a list of one string, or a list of token ids",
            ));
        }
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    if echo && echoed.is_none() {
        // Token ids echo as their text (special tokens such as BOS decode to nothing).
        let text = loaded.tokenizer.decode(&prompt).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        echoed = Some(text);
    }
    let mut valid = validate::generation(&body, &state, prompt, Some(DEFAULT_MAX_TOKENS))?;
    valid.echo = echoed;
    respond(&state, valid, Kind::Completion).await
}
