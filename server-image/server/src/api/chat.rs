//! `POST /v1/chat/completions`: messages rendered with the model's `chat_template`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use llmserve_engine::guided::GuideSpec;

use super::error::ApiError;
use super::generate::{Kind, respond};
use super::{tools, validate};
use crate::state::AppState;

/// Creates a chat completion.
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = validate::parse_object(&body)?;
    validate::check_model(&body, &state)?;
    validate::check_fields(&body, validate::CHAT_FIELDS)?;
    let loaded = state.loaded.get().ok_or_else(|| ApiError::unavailable("the model is loading"))?;
    let tools = tools::parse(&body)?;
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be a non-empty list")),
        None => return Err(ApiError::invalid("messages", "`messages` is required")),
    };
    let mut plain = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        // An assistant's turn that only called tools may leave `content` out (as OpenAI allows).
        let calls_only = role == Some("assistant") && m.get("tool_calls").is_some_and(Value::is_array);
        let ok = role.is_some_and(|r| ["system", "user", "assistant", "tool", "developer"].contains(&r))
            && match m.get("content") {
                Some(c) => c.is_string() || c.is_array() || c.is_null(),
                None => calls_only,
            };
        if !ok {
            return Err(ApiError::invalid(
                &format!("messages[{i}]"),
                "each message needs a known `role` and a `content`",
            ));
        }
        plain.push(text_content(i, m)?);
    }
    tools::template_messages(&mut plain)?;
    let messages = &plain;
    let template = loaded
        .chat_template
        .as_deref()
        .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template; use /v1/completions"))?;
    let text = render(template, messages, tools.as_ref().map(|t| t.list.as_slice()))
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    let prompt = validate::encode(&loaded.tokenizer, text, "messages").await?;
    let mut valid = validate::generation(&body, &state, prompt, None)?;
    if let Some(tools) = &tools {
        if let Some(grammar) = tools.grammar() {
            if valid.request.guide.is_some() {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` \"required\" or a named function cannot be combined with `response_format` \
                     or `guided_*`",
                ));
            }
            valid.request.guide = Some(validate::compile_guide(&state, "tool_choice", &GuideSpec::Grammar(grammar))?);
        }
        valid.tool_calls = tools.parses();
    }
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

/// Renders `messages` (and `tools`, for templates that take them) through a Hugging Face chat
/// template (Jinja), asking for the assistant turn. A template's `raise_exception(msg)` (how
/// Hugging Face templates refuse a conversation) fails the render with its message.
pub fn render(template: &str, messages: &[Value], tools: Option<&[Value]>) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template)?;
    env.get_template("chat")?.render(minijinja::context! {
        messages => messages,
        tools => tools,
        add_generation_prompt => true,
        bos_token => "",
        eos_token => "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Hermes-style template, as Qwen2.5's writes tools, calls and their results.
    pub const HERMES: &str = r#"{%- if tools %}<|im_start|>system
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == "tool" %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.tool_calls %}<|im_start|>assistant
{%- for c in m.tool_calls %}
<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

    #[test]
    fn tools_calls_and_results_reach_the_template() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut messages = vec![
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "22 C"}),
        ];
        tools::template_messages(&mut messages).unwrap();
        let text = render(HERMES, &messages, Some(&tools)).unwrap();
        assert!(text.contains("<tools>\n{") && text.contains(r#""name":"get_weather""#), "{text}");
        assert!(
            text.contains(
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
            ),
            "{text}"
        );
        assert!(text.contains("<tool_response>\n22 C\n</tool_response>") && text.ends_with("<|im_start|>assistant\n"));
        // Without tools the same template leaves the system block out.
        assert!(!render(HERMES, &messages[..1], None).unwrap().contains("<tools>"));
        let refuse = "{{ raise_exception('System role not supported') }}";
        let err = render(refuse, &messages, None).unwrap_err().to_string();
        assert!(err.contains("System role not supported"), "{err}");
    }
}
