//! Raw OpenAI request bodies become `Valid*` values here; nothing unchecked reaches the engine.

use std::sync::Arc;
use std::time::Instant;

use llmserve_engine::engine::EngineRequest;
use llmserve_engine::guided::{Guide, GuideSpec};
use llmserve_engine::sampling::SamplingParams;
use llmserve_engine::tokenizer::Tokenizer;
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
    /// Text every choice begins with (completions' `echo`: the prompt).
    pub echo: Option<String>,
    /// Chat with tools: the answers are read for tool calls.
    pub tool_calls: bool,
}

// === which fields a request may carry ===

/// Fields every generation route implements.
const GENERATION_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "frequency_penalty",
    "n",
    "best_of",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "user",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
];

/// `POST /v1/completions`'s own fields.
pub const COMPLETION_FIELDS: &[&str] = &["prompt", "echo"];

/// `POST /v1/chat/completions`'s own fields.
pub const CHAT_FIELDS: &[&str] = &["messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls"];

/// Fields of OpenAI's and vLLM's APIs this server does not implement, each with the values that ask
/// for nothing (accepted, as clients send them by default); any other value is refused. (Chat's
/// `echo` is vLLM's: it repeats the last message.)
const UNSUPPORTED: &[(&str, &[&str])] = &[
    ("echo", &["false"]),
    ("suffix", &["\"\""]),
    ("tools", &["[]"]),
    ("tool_choice", &["\"none\""]),
    ("functions", &["[]"]),
    ("function_call", &["\"none\""]),
    ("guided_decoding_backend", &[]),
    ("structured_outputs", &[]),
    ("use_beam_search", &["false"]),
    ("length_penalty", &["1", "1.0"]),
    ("min_tokens", &["0"]),
    ("min_p", &["0", "0.0"]),
    ("repetition_penalty", &["1", "1.0"]),
    ("prompt_logprobs", &[]),
    ("include_stop_str_in_output", &["false"]),
    ("skip_special_tokens", &["true"]),
    ("store", &["false"]),
    ("metadata", &["{}"]),
    ("service_tier", &["\"auto\"", "\"default\""]),
    ("modalities", &[r#"["text"]"#]),
    ("audio", &[]),
    ("prediction", &[]),
    ("reasoning_effort", &[]),
    ("web_search_options", &[]),
];

/// Refuses a field the route does not know, and a field it does not implement unless its value
/// asks for nothing: a client must never believe it got what the server silently dropped.
pub fn check_fields(body: &serde_json::Map<String, Value>, route_fields: &[&str]) -> Result<(), ApiError> {
    for (key, value) in body {
        if GENERATION_FIELDS.contains(&key.as_str()) || route_fields.contains(&key.as_str()) {
            continue;
        }
        match UNSUPPORTED.iter().find(|(name, _)| name == key) {
            Some((_, neutral)) if value.is_null() || neutral.contains(&value.to_string().as_str()) => {}
            Some(_) => {
                return Err(ApiError::unsupported(key, format!("`{key}` is not supported by this server yet")));
            }
            None => {
                return Err(ApiError::invalid(key, format!("Unrecognized request argument supplied: {key}")));
            }
        }
    }
    Ok(())
}

/// At most this many stop strings (OpenAI's limit) ...
pub const MAX_STOP_STRINGS: usize = 4;
/// ... of at most this many characters each.
pub const MAX_STOP_CHARS: usize = 256;
/// At most this many `stop_token_ids`.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Temperatures below this sample greedily (vLLM's threshold): dividing logits by a tiny
/// temperature overflows to infinities and samples garbage.
pub const GREEDY_BELOW_TEMPERATURE: f64 = 1e-5;

/// Token ids of `text`, computed on the blocking pool: a multi-megabyte prompt must not hold up
/// the async workers that serve every other connection.
pub async fn encode(tokenizer: &Arc<Tokenizer>, text: String, param: &str) -> Result<Vec<u32>, ApiError> {
    let tokenizer = tokenizer.clone();
    match tokio::task::spawn_blocking(move || tokenizer.encode(&text)).await {
        Ok(Ok(ids)) => Ok(ids),
        Ok(Err(e)) => Err(ApiError::invalid(param, e.to_string())),
        Err(_) => Err(ApiError::internal("tokenization failed")),
    }
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

/// `stop`: a string or a list of strings, each non-empty and bounded.
fn stop_strings(body: &serde_json::Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let refuse = || {
        ApiError::invalid(
            "stop",
            format!(
                "`stop` must be a string or a list of at most {MAX_STOP_STRINGS} strings, each of 1 to \
                 {MAX_STOP_CHARS} characters"
            ),
        )
    };
    let stops: Vec<String> = match body.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP_STRINGS => {
            a.iter().map(|v| v.as_str().map(String::from)).collect::<Option<_>>().ok_or_else(refuse)?
        }
        Some(_) => return Err(refuse()),
    };
    if stops.iter().any(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS) {
        return Err(refuse());
    }
    Ok(stops)
}

/// Most samples one request may ask for (`n`); `--max-num-seqs` bounds it too, since a request's
/// samples run at once.
pub const MAX_N: usize = 16;

/// `n`, within [1, MAX_N] and what the engine can seat; `best_of` only as `n` (the samples
/// returned are all the samples drawn).
fn samples(body: &serde_json::Map<String, Value>, state: &AppState) -> Result<usize, ApiError> {
    let engine_max = state.loaded.get().map_or(MAX_N, |l| l.engine.max_samples());
    let max = MAX_N.min(engine_max);
    let n = integer(body, "n")?.unwrap_or(1);
    let n = usize::try_from(n).ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
        let why = if engine_max < MAX_N { " (--max-num-seqs)" } else { "" };
        ApiError::invalid("n", format!("`n` must be between 1 and {max}{why}, got {n}"))
    })?;
    match integer(body, "best_of")? {
        None => Ok(n),
        Some(b) if b == n as i64 => Ok(n),
        Some(b) if b < n as i64 => Err(ApiError::invalid("best_of", format!("`best_of` must be at least `n` ({n})"))),
        Some(_) => Err(ApiError::unsupported(
            "best_of",
            "`best_of` greater than `n` is not supported by this server; ask for `n` samples",
        )),
    }
}

/// `stream_options`: only with `stream`, and only `include_usage` (vLLM's
/// `continuous_usage_stats` is not implemented). Returns `include_usage`.
fn stream_options(body: &serde_json::Map<String, Value>, stream: bool) -> Result<bool, ApiError> {
    let options = match body.get("stream_options") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(ApiError::invalid("stream_options", "`stream_options` must be an object")),
    };
    if !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed when `stream` is true"));
    }
    let mut include_usage = false;
    for (key, value) in options {
        let param = format!("stream_options.{key}");
        match (key.as_str(), value) {
            ("include_usage", Value::Bool(b)) => include_usage = *b,
            ("include_usage", Value::Null) | ("continuous_usage_stats", Value::Null | Value::Bool(false)) => {}
            ("include_usage", _) => return Err(ApiError::invalid(&param, format!("`{param}` must be a boolean"))),
            ("continuous_usage_stats", _) => {
                return Err(ApiError::unsupported(&param, format!("`{param}` is not supported by this server yet")));
            }
            _ => return Err(ApiError::invalid(&param, format!("Unrecognized request argument supplied: {param}"))),
        }
    }
    Ok(include_usage)
}

/// Most alternatives per token `logprobs` / `top_logprobs` may ask for (vLLM's default limit).
pub const MAX_LOGPROBS: usize = 20;

/// Completions' `logprobs: N` (an integer), or chat's `logprobs: true` with `top_logprobs: N`.
fn logprobs(body: &serde_json::Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let bounded = |key: &str, n: i64| -> Result<usize, ApiError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_LOGPROBS)
            .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be between 0 and {MAX_LOGPROBS}, got {n}")))
    };
    let chat = body.contains_key("messages");
    let top = integer(body, "top_logprobs")?;
    match (chat, body.get("logprobs")) {
        (_, None | Some(Value::Null) | Some(Value::Bool(false))) => match top {
            Some(n) if n > 0 => Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`")),
            _ => Ok(None),
        },
        (true, Some(Value::Bool(true))) => Ok(Some(bounded("top_logprobs", top.unwrap_or(0))?)),
        (true, Some(_)) => Err(ApiError::invalid("logprobs", "`logprobs` must be a boolean (set `top_logprobs`)")),
        (false, Some(Value::Number(n))) if n.is_i64() || n.is_u64() => {
            Ok(Some(bounded("logprobs", n.as_i64().unwrap_or(i64::MAX))?))
        }
        (false, Some(_)) => Err(ApiError::invalid("logprobs", "`logprobs` must be an integer")),
    }
}

/// At most this many `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// `logit_bias`: `{"token id": bias}`, ids within the model's vocabulary, biases in [-100, 100].
fn logit_bias(body: &serde_json::Map<String, Value>, state: &AppState) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match body.get("logit_bias") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) if m.len() <= MAX_LOGIT_BIAS => m,
        Some(_) => {
            let msg = format!("`logit_bias` must be an object of at most {MAX_LOGIT_BIAS} token ids and biases");
            return Err(ApiError::invalid("logit_bias", msg));
        }
    };
    let vocab = state.loaded.get().map_or(usize::MAX, |l| l.model_vocab_size);
    let mut out = Vec::with_capacity(map.len());
    for (id, bias) in map {
        let token = id.parse::<u32>().ok().filter(|&t| (t as usize) < vocab).ok_or_else(|| {
            ApiError::invalid("logit_bias", format!("`logit_bias` key {id:?} is not a token id of this model"))
        })?;
        let bias = bias.as_f64().filter(|b| (-100.0..=100.0).contains(b)).ok_or_else(|| {
            ApiError::invalid("logit_bias", format!("`logit_bias` value of token {token} must be between -100 and 100"))
        })?;
        out.push((token, bias as f32));
    }
    Ok(out)
}

/// Completions' `echo`: whether each choice begins with the prompt. The prompt's own
/// log-probabilities are not computed (the model's step yields the logits of a sequence's last
/// token only), so `echo` with `logprobs` is refused rather than answered without them.
pub fn echo(body: &serde_json::Map<String, Value>) -> Result<bool, ApiError> {
    let echo = boolean(body, "echo")?;
    if echo && !matches!(body.get("logprobs"), None | Some(Value::Null)) {
        return Err(ApiError::unsupported(
            "echo",
            "`echo` with `logprobs` (the prompt's log-probabilities) is not supported by this server yet",
        ));
    }
    Ok(echo)
}

// === structured output ===

/// Fields that constrain the output to a grammar; a request may set one of them.
const GUIDED_FIELDS: &[&str] = &["response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar"];

/// The grammar a field asks for, if any (`response_format: {"type": "text"}` asks for none).
fn guide_spec(key: &str, value: &Value) -> Result<Option<GuideSpec>, ApiError> {
    let invalid = |msg: &str| Err(ApiError::invalid(key, msg));
    match (key, value) {
        (_, Value::Null) => Ok(None),
        ("response_format", Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(GuideSpec::JsonObject)),
            Some("json_schema") => match o.get("json_schema").and_then(|j| j.get("schema")) {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(GuideSpec::JsonSchema(schema.clone()))),
                _ => invalid("`response_format.json_schema.schema` must be a JSON schema object"),
            },
            _ => invalid("`response_format.type` must be one of `text`, `json_object`, `json_schema`"),
        },
        ("response_format", _) => invalid("`response_format` must be an object"),
        ("guided_json", Value::Object(_) | Value::Bool(_)) => Ok(Some(GuideSpec::JsonSchema(value.clone()))),
        // vLLM also takes the schema as a JSON string.
        ("guided_json", Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(GuideSpec::JsonSchema(schema))),
            _ => invalid("`guided_json` must be a JSON schema (an object, or one as a string)"),
        },
        ("guided_json", _) => invalid("`guided_json` must be a JSON schema object"),
        ("guided_regex", Value::String(rx)) => Ok(Some(GuideSpec::Regex(rx.clone()))),
        ("guided_regex", _) => invalid("`guided_regex` must be a string"),
        ("guided_choice", Value::Array(a)) if !a.is_empty() => {
            match a.iter().map(|v| v.as_str().map(String::from)).collect::<Option<Vec<_>>>() {
                Some(choices) => Ok(Some(GuideSpec::Choice(choices))),
                None => invalid("`guided_choice` must be a non-empty list of strings"),
            }
        }
        ("guided_choice", _) => invalid("`guided_choice` must be a non-empty list of strings"),
        ("guided_grammar", Value::String(g)) => Ok(Some(GuideSpec::Grammar(g.clone()))),
        ("guided_grammar", _) => invalid("`guided_grammar` must be a string (a Lark grammar)"),
        _ => Ok(None),
    }
}

/// The compiled grammar of the request's structured-output field, if it has one; a bad schema,
/// regex or grammar is a 400 naming the field, with llguidance's message.
fn guide(body: &serde_json::Map<String, Value>, state: &AppState) -> Result<Option<Guide>, ApiError> {
    let mut found: Option<(&str, GuideSpec)> = None;
    for &key in GUIDED_FIELDS {
        let Some(spec) = body.get(key).map(|v| guide_spec(key, v)).transpose()?.flatten() else { continue };
        if let Some((first, _)) = found {
            return Err(ApiError::invalid(key, format!("`{key}` cannot be combined with `{first}`")));
        }
        found = Some((key, spec));
    }
    let Some((key, spec)) = found else { return Ok(None) };
    compile_guide(state, key, &spec).map(Some)
}

/// `spec` compiled for this model; an error is a 400 naming `key`, with llguidance's message.
pub fn compile_guide(state: &AppState, key: &str, spec: &GuideSpec) -> Result<Guide, ApiError> {
    let loaded = state.loaded.get().ok_or_else(|| ApiError::unavailable("the model is loading"))?;
    let Some(guidance) = &loaded.guidance else {
        return Err(ApiError::unsupported(
            key,
            format!("`{key}`: structured output needs a tokenizer.json llguidance reads"),
        ));
    };
    guidance.compile(spec).map_err(|e| ApiError::invalid(key, format!("invalid `{key}`: {e}")))
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
    if prompt.is_empty() {
        // A tokenizer that adds no BOS (Qwen2) makes no token of an empty prompt: nothing to compute.
        return Err(ApiError::invalid("prompt", "The prompt cannot be empty."));
    }
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
    // Chat's `max_completion_tokens` replaced `max_tokens` and wins over it (as in vLLM).
    let length_param = match integer(body, "max_completion_tokens")? {
        Some(_) => "max_completion_tokens",
        None => "max_tokens",
    };
    let max_tokens = match integer(body, length_param)? {
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(length_param, format!("`{length_param}` must be at least 1, got {n}")));
        }
        Some(n) if n as u64 > room as u64 => {
            return Err(ApiError::invalid(
                length_param,
                format!(
                    "This model's maximum context length is {max_len} tokens; the prompt has {} tokens and \
                     {length_param} is {n}.",
                    prompt.len()
                ),
            ));
        }
        Some(n) => n as usize,
        None => default_max_tokens.unwrap_or(room).min(room),
    };
    let mut temperature = number(body, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}"),
        ));
    }
    if temperature < GREEDY_BELOW_TEMPERATURE {
        temperature = 0.0;
    }
    let top_p = number(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
    }
    let top_k = integer(body, "top_k")?.unwrap_or(-1);
    if top_k < -1 {
        return Err(ApiError::invalid("top_k", "`top_k` must be -1 (all) or positive"));
    }
    let penalty = |key: &str| {
        let v = number(body, key)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid(key, format!("`{key}` must be between -2 and 2, got {v}")));
        }
        Ok(v as f32)
    };
    let (presence_penalty, frequency_penalty) = (penalty("presence_penalty")?, penalty("frequency_penalty")?);
    let n = samples(body, state)?;
    if let Some(user) = body.get("user")
        && !user.is_string()
        && !user.is_null()
    {
        return Err(ApiError::invalid("user", "`user` must be a string"));
    }
    let seed = match body.get("seed") {
        None | Some(Value::Null) => state.next_seed(),
        // The whole u64 range, and negative seeds as their two's complement (vLLM takes both).
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or_default(),
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default() as u64,
        Some(_) => return Err(ApiError::invalid("seed", "`seed` must be an integer")),
    };
    let logit_bias = logit_bias(body, state)?;
    let logprobs = logprobs(body)?;
    let stop = stop_strings(body)?;
    let stop_token_ids = match body.get("stop_token_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_STOP_TOKEN_IDS => a
            .iter()
            .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| ApiError::invalid("stop_token_ids", "`stop_token_ids` must be token ids"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_token_ids",
                format!("`stop_token_ids` must be a list of at most {MAX_STOP_TOKEN_IDS} token ids"),
            ));
        }
    };
    let stream = boolean(body, "stream")?;
    let include_usage = stream_options(body, stream)?;
    Ok(ValidGeneration {
        request: EngineRequest {
            prompt,
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k: if top_k <= 0 { 0 } else { top_k as usize },
                seed,
                presence_penalty,
                frequency_penalty,
                logit_bias,
                logprobs,
            },
            max_tokens,
            stop,
            stop_token_ids,
            ignore_eos: boolean(body, "ignore_eos")?,
            n,
            guide: guide(body, state)?,
            arrival: Instant::now(),
        },
        stream,
        include_usage,
        echo: None,
        tool_calls: false,
    })
}
