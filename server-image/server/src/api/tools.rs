//! Tool calling: chat's `tools`, `tool_choice` and `parallel_tool_calls`, in the Hermes format
//! that Qwen2.5's, Hermes' and many other chat templates teach their models: each call is
//! `<tool_call>` + `{"name": ..., "arguments": {...}}` + `</tool_call>` in the generated text
//! (vLLM's `hermes` parser reads the same).
//!
//! - `tool_choice: "none"`: the template still sees the tools (as in vLLM); the text is not parsed.
//! - `"auto"` (the default with tools): the model chooses; calls found in its text become
//!   `tool_calls`, the text before the first call is the message's `content`.
//! - `"required"` or a named function: a grammar (llguidance, as for `response_format`) forces one
//!   call, or with `required` and `parallel_tool_calls` one or more, each valid under the chosen
//!   function's `parameters` schema; nothing else can be generated.
//!
//! One parser, [`ToolParser`], serves streamed and whole answers alike, so both say the same.

use serde_json::{Map, Value, json};

use super::error::ApiError;

/// At most this many tools in one request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
/// A function name: 1 to 64 of `a-z A-Z 0-9 _ -` (OpenAI's rule).
pub const MAX_NAME_CHARS: usize = 64;
/// Where a call begins in the model's text.
pub const OPEN: &str = "<tool_call>";
/// Where a call ends.
pub const CLOSE: &str = "</tool_call>";

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No call: the text is the answer.
    None,
    /// The model decides.
    Auto,
    /// At least one call, of any of the tools.
    Required,
    /// Exactly one call of this function.
    Named(String),
}

/// A request's validated tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The tools as the client sent them, for the chat template (OpenAI's shape, which Hugging
    /// Face templates take).
    pub list: Vec<Value>,
    /// Each function's name and `parameters` schema (`{"type": "object"}` when it has none).
    functions: Vec<(String, Value)>,
    /// What `tool_choice` asks for.
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: more than one call in an answer (with `required`).
    pub parallel: bool,
}

fn invalid(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(param, msg)
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the request has no
/// tools (then `tool_choice` may only be absent or `"none"`).
pub fn parse(body: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let parallel = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("parallel_tool_calls", "`parallel_tool_calls` must be a boolean")),
    };
    let list = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_TOOLS => a.clone(),
        Some(Value::Array(_)) => {
            return Err(invalid("tools", format!("`tools` may list at most {MAX_TOOLS} functions")));
        }
        Some(_) => return Err(invalid("tools", "`tools` must be a list of functions")),
    };
    let mut functions: Vec<(String, Value)> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(&format!("tools[{i}].type"), "each tool must have `type` \"function\""));
        }
        let Some(function) = tool.get("function").and_then(Value::as_object) else {
            return Err(invalid(&format!("tools[{i}].function"), "each tool needs a `function` object"));
        };
        let name = match function.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            _ => {
                return Err(invalid(
                    &format!("tools[{i}].function.name"),
                    format!("a function's `name` must be 1 to {MAX_NAME_CHARS} of a-z, A-Z, 0-9, _ and -"),
                ));
            }
        };
        if functions.iter().any(|(n, _)| *n == name) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                format!("the function `{name}` is listed twice"),
            ));
        }
        if !matches!(function.get("description"), None | Some(Value::Null | Value::String(_))) {
            return Err(invalid(&format!("tools[{i}].function.description"), "`description` must be a string"));
        }
        if !matches!(function.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
            return Err(invalid(&format!("tools[{i}].function.strict"), "`strict` must be a boolean"));
        }
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(invalid(
                    &format!("tools[{i}].function.parameters"),
                    "`parameters` must be a JSON schema object",
                ));
            }
        };
        functions.push((name, parameters));
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) if functions.is_empty() => ToolChoice::None,
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) if functions.iter().any(|(n, _)| n == name) => ToolChoice::Named(name.to_string()),
                Some(name) => {
                    let name: String = name.chars().filter(|c| !c.is_control()).take(MAX_NAME_CHARS).collect();
                    return Err(invalid(
                        "tool_choice",
                        format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    ));
                }
                None => return Err(invalid("tool_choice", "a named `tool_choice` needs `function.name`")),
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
                 \"function\": {\"name\": ...}}",
            ));
        }
    };
    if functions.is_empty() {
        if choice != ToolChoice::None {
            return Err(invalid("tool_choice", "`tool_choice` is only allowed when `tools` are specified"));
        }
        return Ok(None);
    }
    Ok(Some(Tools { list, functions, choice, parallel }))
}

impl Tools {
    /// Whether the model's text is read for calls.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The grammar (llguidance's Lark) `required` and a named function impose: calls in the
    /// Hermes format, each `{"name": ..., "arguments": ...}` valid under its function's schema;
    /// `None` for `none` and `auto`.
    pub fn grammar(&self) -> Option<String> {
        let (chosen, repeat): (Vec<&(String, Value)>, bool) = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => (self.functions.iter().collect(), self.parallel),
            ToolChoice::Named(name) => (self.functions.iter().filter(|(n, _)| n == name).collect(), false),
        };
        let alternatives: Vec<Value> = chosen
            .iter()
            .map(|(name, parameters)| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = llmserve_engine::guided::compact(json!({"anyOf": alternatives}));
        let start = if repeat { "start: call (\"\\n\" call)*" } else { "start: call" };
        // Lark's string escapes: `\n` is a newline; the schema is JSON, which `%json` reads whole.
        Some(format!("{start}\ncall: \"{OPEN}\\n\" body \"\\n{CLOSE}\"\nbody: %json {schema}\n"))
    }
}

/// One call read from the model's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The function's name.
    pub name: String,
    /// Its arguments as a JSON string (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// A piece of a parsed answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text for the message's `content`.
    Content(String),
    /// A tool call.
    Call(Call),
}

/// Reads Hermes-style calls out of text that arrives in pieces. Text before the first call is
/// content, sent as soon as it cannot be the start of `<tool_call>`; each call is sent whole
/// once its `</tool_call>` arrives (or the answer ends). Between and after calls, text that is
/// only whitespace is dropped. A call whose body is not `{"name": string, "arguments": ...}`
/// stops the parsing: it and everything after it is content, as the model wrote it.
#[derive(Debug, Default)]
pub struct ToolParser {
    /// Content not yet sent: it may be the start of `<tool_call>`.
    held: String,
    /// Inside a call: its body so far.
    body: Option<String>,
    calls: usize,
    failed: bool,
}

impl ToolParser {
    /// Whether a call has been read.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// What `text`, following what came before, completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        self.feed(text, &mut out);
        out
    }

    /// A loop, not recursion: a long answer read whole may hold thousands of calls.
    fn feed(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut pending = text.to_string();
        while !pending.is_empty() {
            if self.failed {
                self.content(pending, out);
                return;
            }
            match self.body.as_mut() {
                Some(body) => {
                    // Only where `</tool_call>` may end in the new text is searched, so a long
                    // call streamed token by token costs linear time.
                    let from = body.len().saturating_sub(CLOSE.len() - 1);
                    body.push_str(&pending);
                    pending.clear();
                    let found = match body.get(from..) {
                        Some(tail) => tail.find(CLOSE).map(|i| from + i),
                        None => body.find(CLOSE),
                    };
                    let Some(end) = found else { return };
                    let rest = body.split_off(end + CLOSE.len());
                    body.truncate(end);
                    let body = self.body.take().unwrap_or_default();
                    self.call(&body, Some(CLOSE), out);
                    pending = rest;
                }
                None => {
                    self.held.push_str(&pending);
                    pending.clear();
                    if let Some(start) = self.held.find(OPEN) {
                        pending = self.held.split_off(start + OPEN.len());
                        self.held.truncate(start);
                        let before = std::mem::take(&mut self.held);
                        self.content(before, out);
                        self.body = Some(String::new());
                    } else {
                        // Hold back the longest tail that `<tool_call>` could begin with.
                        // (`OPEN` is ASCII, so where such a tail starts is a character boundary.)
                        let keep = (1..OPEN.len())
                            .rev()
                            .find(|&k| OPEN.get(..k).is_some_and(|p| self.held.ends_with(p)))
                            .unwrap_or(0);
                        let tail = self.held.split_off(self.held.len() - keep);
                        let sendable = std::mem::replace(&mut self.held, tail);
                        self.content(sendable, out);
                    }
                }
            }
        }
    }

    /// Whatever is left once the answer has ended: held text, or a call cut off before its
    /// `</tool_call>` (read if its body is whole).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if let Some(body) = self.body.take() {
            self.call(&body, None, &mut out);
        }
        let held = std::mem::take(&mut self.held);
        self.content(held, &mut out);
        out
    }

    fn content(&mut self, text: String, out: &mut Vec<Piece>) {
        if text.is_empty() || (self.calls > 0 && !self.failed && text.trim().is_empty()) {
            return;
        }
        match out.last_mut() {
            Some(Piece::Content(c)) => c.push_str(&text),
            _ => out.push(Piece::Content(text)),
        }
    }

    fn call(&mut self, body: &str, close: Option<&str>, out: &mut Vec<Piece>) {
        match read_call(body) {
            Some(call) if !self.failed => {
                self.calls += 1;
                out.push(Piece::Call(call));
            }
            _ => {
                self.failed = true;
                self.content(format!("{OPEN}{body}{}", close.unwrap_or("")), out);
            }
        }
    }
}

/// `{"name": "...", "arguments": ...}` (arguments an object, or a string holding one, or absent).
fn read_call(body: &str) -> Option<Call> {
    let Value::Object(mut o) = serde_json::from_str::<Value>(body.trim()).ok()? else { return None };
    let Some(Value::String(name)) = o.remove("name") else { return None };
    let arguments = match o.remove("arguments").or_else(|| o.remove("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    Some(Call { name, arguments })
}

/// A whole answer read at once: its content (`None` when empty) and its calls.
pub fn parse_answer(text: &str) -> (Option<String>, Vec<Call>) {
    let mut parser = ToolParser::default();
    let mut pieces = parser.push(text);
    pieces.extend(parser.finish());
    let (mut content, mut calls) = (String::new(), Vec::new());
    for p in pieces {
        match p {
            Piece::Content(c) => content.push_str(&c),
            Piece::Call(c) => calls.push(c),
        }
    }
    let content = if calls.is_empty() || !content.trim().is_empty() { Some(content) } else { None };
    (content, calls)
}

/// The messages as chat templates expect them: an assistant message's `tool_calls[].function.
/// arguments`, a JSON string on the wire, becomes the object it holds (Qwen2.5's template and
/// others write it with `tojson`); a malformed call is a 400 naming it.
pub fn template_messages(messages: &mut [Value]) -> Result<(), ApiError> {
    for (i, m) in messages.iter_mut().enumerate() {
        let Some(calls) = m.get_mut("tool_calls") else { continue };
        let Value::Array(calls) = calls else {
            if calls.is_null() {
                continue;
            }
            return Err(invalid(&format!("messages[{i}].tool_calls"), "`tool_calls` must be a list"));
        };
        for (j, call) in calls.iter_mut().enumerate() {
            let param = format!("messages[{i}].tool_calls[{j}]");
            let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) else {
                return Err(invalid(&param, "each tool call needs a `function` object"));
            };
            if !function.get("name").is_some_and(Value::is_string) {
                return Err(invalid(&format!("{param}.function.name"), "a tool call's `name` must be a string"));
            }
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(invalid(
                            &format!("{param}.function.arguments"),
                            "`arguments` must be a JSON object encoded as a string",
                        ));
                    }
                },
                Some(v @ Value::Object(_)) => v.clone(),
                _ => {
                    return Err(invalid(&format!("{param}.function.arguments"), "`arguments` must be a string"));
                }
            };
            function.insert("arguments".into(), arguments);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::string_slice)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    fn param_of(e: ApiError) -> String {
        e.body()["error"]["param"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn choices_default_and_bad_shapes_name_their_parameter() {
        assert!(parse(&body(json!({}))).unwrap().is_none());
        assert!(parse(&body(json!({"tools": [], "tool_choice": "none"}))).unwrap().is_none());
        let t = parse(&body(json!({"tools": weather()}))).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.parallel && t.parses() && t.grammar().is_none());
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let t = parse(&body(json!({"tools": weather(), "tool_choice": named}))).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Named("get_weather".into()));
        for (bad, param) in [
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (json!({"tools": weather(), "tool_choice": "always"}), "tool_choice"),
            (
                json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "x"}}}),
                "tool_choice",
            ),
            (json!({"tools": {"a": 1}}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0].function.name"),
            (json!({"tools": [{"type": "function", "function": {"name": "é"}}]}), "tools[0].function.name"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
                "tools[0].function.parameters",
            ),
            (json!({"tools": weather(), "parallel_tool_calls": "yes"}), "parallel_tool_calls"),
        ] {
            assert_eq!(param_of(parse(&body(bad.clone())).unwrap_err()), param, "{bad}");
        }
        let twice = json!({"tools": [weather()[0].clone(), weather()[0].clone()]});
        assert_eq!(param_of(parse(&body(twice)).unwrap_err()), "tools[1].function.name");
        let many: Vec<Value> =
            (0..=MAX_TOOLS).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect();
        assert_eq!(param_of(parse(&body(json!({"tools": many}))).unwrap_err()), "tools");
    }

    #[test]
    fn the_grammar_names_only_the_chosen_functions() {
        let two = json!([weather()[0].clone(), {"type": "function", "function": {"name": "noop"}}]);
        let named = json!({"type": "function", "function": {"name": "noop"}});
        let g = parse(&body(json!({"tools": two, "tool_choice": named}))).unwrap().unwrap().grammar().unwrap();
        assert!(g.starts_with("start: call\n") && g.contains("\"noop\"") && !g.contains("get_weather"), "{g}");
        let g = parse(&body(json!({"tools": two, "tool_choice": "required"}))).unwrap().unwrap().grammar().unwrap();
        assert!(g.contains("call (\"\\n\" call)*") && g.contains("noop") && g.contains("get_weather"), "{g}");
        let one = json!({"tools": two, "tool_choice": "required", "parallel_tool_calls": false});
        assert!(parse(&body(one)).unwrap().unwrap().grammar().unwrap().starts_with("start: call\n"));
    }

    #[test]
    fn answers_split_into_content_and_calls() {
        let text = concat!(
            "Let me look.\n<tool_call>\n",
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            "\n</tool_call>\n<tool_call>\n",
            r#"{"name": "noop"}"#,
            "\n</tool_call>"
        );
        let (content, calls) = parse_answer(text);
        assert_eq!(content.as_deref(), Some("Let me look.\n"));
        assert_eq!(
            calls,
            vec![
                Call { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() },
                Call { name: "noop".into(), arguments: "{}".into() }
            ]
        );
        // Only calls: no content. A call cut off after its body is still read.
        let (content, calls) = parse_answer("<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\":1}\"}");
        assert_eq!((content, calls.len(), calls[0].arguments.as_str()), (None, 1, r#"{"a":1}"#));
        // No call, or a body that is not a call: the text as it was.
        assert_eq!(parse_answer("plain <tool text"), (Some("plain <tool text".into()), vec![]));
        let broken = "<tool_call>\n{\"name\": 3}\n</tool_call> after";
        assert_eq!(parse_answer(broken), (Some(broken.into()), vec![]));
    }

    #[test]
    fn thousands_of_calls_in_one_answer_are_read_without_recursion() {
        let one = format!("{OPEN}\n{{\"name\": \"f\", \"arguments\": {{}}}}\n{CLOSE}\n");
        let (content, calls) = parse_answer(&one.repeat(20_000));
        assert_eq!((content, calls.len()), (None, 20_000));
    }

    proptest! {
        /// However the text is cut into pieces, streaming reads what a whole read reads, and the
        /// content it sends is never more than the text holds.
        #[test]
        fn streamed_pieces_read_as_the_whole(
            before in "[a-zé<>_/ \n]{0,20}",
            args in "[a-z0-9é\"]{0,8}",
            cuts in proptest::collection::vec(0usize..200, 0..8),
            cut_off in any::<bool>(),
        ) {
            let call = json!({"name": "f", "arguments": {"k": args}}).to_string();
            let mut text = format!("{before}{OPEN}\n{call}\n");
            if !cut_off {
                text.push_str(CLOSE);
            }
            let whole = parse_answer(&text);
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            bounds.extend([0, text.len()]);
            bounds.retain(|&b| text.is_char_boundary(b));
            bounds.sort_unstable();
            bounds.dedup();
            let mut parser = ToolParser::default();
            let mut pieces = Vec::new();
            for w in bounds.windows(2) {
                pieces.extend(parser.push(&text[w[0]..w[1]]));
            }
            pieces.extend(parser.finish());
            let mut content = String::new();
            let mut calls = Vec::new();
            for p in pieces {
                match p {
                    Piece::Content(c) => content.push_str(&c),
                    Piece::Call(c) => calls.push(c),
                }
            }
            prop_assert_eq!(&calls, &whole.1);
            // (A whole read drops content that is only whitespace before the calls.)
            prop_assert_eq!(content.trim(), whole.0.as_deref().unwrap_or("").trim());
            prop_assert!(text.starts_with(content.as_str()) || !calls.is_empty());
        }
    }

    #[test]
    fn template_messages_get_arguments_as_objects() {
        let mut m = vec![json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]})];
        template_messages(&mut m).unwrap();
        assert_eq!(m[0]["tool_calls"][0]["function"]["arguments"], json!({"a": 1}));
        let mut bad =
            vec![json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]})];
        assert_eq!(param_of(template_messages(&mut bad).unwrap_err()), "messages[0].tool_calls[0].function.arguments");
    }
}
