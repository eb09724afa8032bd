//! `POST /v1/chat/completions`: messages rendered with the model's `chat_template`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::generate::{Kind, respond};
use super::validate;
use crate::state::AppState;

/// Creates a chat completion.
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = validate::parse_object(&body)?;
    validate::check_model(&body, &state)?;
    validate::check_fields(&body, validate::CHAT_FIELDS)?;
    let loaded = state.loaded.get().ok_or_else(|| ApiError::unavailable("the model is loading"))?;
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be a non-empty list")),
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    let mut plain = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let ok = m
            .get("role")
            .and_then(Value::as_str)
            .is_some_and(|r| ["system", "user", "assistant", "tool", "developer"].contains(&r))
            && m.get("content").is_some_and(|c| c.is_string() || c.is_array() || c.is_null());
        if !ok {
            return Err(ApiError::invalid(
                &format!("messages[{i}]"),
                "each message needs a known `role` and a `content`",
            ));
        }
        plain.push(text_content(i, m)?);
    }
    let messages = &plain;
    let template = loaded
        .chat_template
        .as_deref()
        .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template; use /v1/completions"))?;
    let text = render(template, messages)
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    let prompt = validate::encode(&loaded.tokenizer, text, "messages").await?;
    let valid = validate::generation(&body, &state, prompt, None)?;
    respond(&state, valid, Kind::Chat).await
}

/// `message` with its `content` as one string, as chat templates expect it: an array of content
/// parts becomes its text parts joined by newlines (as vLLM joins them); a part of another type
/// (an image, audio, a file) is a 400 naming it, since this server serves text models.
fn text_content(i: usize, message: &Value) -> Result<Value, ApiError> {
    let Some(Value::Array(parts)) = message.get("content") else { return Ok(message.clone()) };
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
            (Some("text"), _) => return Err(ApiError::invalid(&param, "a text part needs a string `text`")),
            (Some(kind), _) => {
                // Echoed back bounded and on one line, whatever the client sent.
                let kind: String = kind.chars().filter(|c| !c.is_control()).take(40).collect();
                return Err(ApiError::invalid(
                    &format!("{param}.type"),
                    format!("content parts of type `{kind}` are not supported: this model reads text only"),
                ));
            }
            (None, _) => return Err(ApiError::invalid(&format!("{param}.type"), "each content part needs a `type`")),
        }
    }
    let mut out = message.clone();
    if let Some(content) = out.get_mut("content") {
        *content = Value::String(texts.join("\n"));
    }
    Ok(out)
}

/// Renders `messages` through a Hugging Face chat template (Jinja), asking for the assistant turn.
pub fn render(template: &str, messages: &[Value]) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template)?;
    env.get_template("chat")?.render(
        minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => "", eos_token => "" },
    )
}
