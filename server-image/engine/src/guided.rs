//! Structured output: a grammar (JSON schema, any JSON object, regex, a list of choices, a Lark
//! grammar) compiled by `llguidance` into a per-sequence [`Guide`], whose token mask bans what the
//! grammar forbids before each token is sampled.
//!
//! The vocabulary comes from `tokenizer.json` (`llguidance::token_bytes_from_tokenizer_json`, byte
//! level or SentencePiece with byte fallback) rather than `toktrie_hf_tokenizers`, which needs
//! `tokenizers` 0.21 while the engine uses 0.23. Masks need only each token's bytes; the greedy trie
//! tokenizer of [`ApproximateTokEnv`] serves llguidance's rare own tokenization.

use std::path::Path;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{Error, Result};

/// Longest error message a bad grammar yields (one line, for a 400 body).
pub const MAX_ERROR_CHARS: usize = 300;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GuideSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid under this schema (`json_schema`, vLLM's `guided_json`).
    JsonSchema(Value),
    /// Text the regex matches in full (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `guided_choice`).
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (vLLM's `guided_grammar`).
    Grammar(String),
}

/// The compiler of grammars for one model's vocabulary; built once, shared by every request.
pub struct Guidance {
    factory: ParserFactory,
}

impl std::fmt::Debug for Guidance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guidance").field("vocab_size", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Guidance {
    /// Reads `tokenizer.json` from `dir`; `vocab_size` is the length of the model's logits rows
    /// (ids past the tokenizer's are never allowed) and `eos` the ids that end a sequence.
    pub fn load(dir: &Path, vocab_size: usize, eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer_json(&json, vocab_size, eos)
    }

    /// As [`Guidance::load`], from the parsed `tokenizer.json`.
    pub fn from_tokenizer_json(json: &Value, vocab_size: usize, eos: &[u32]) -> Result<Self> {
        let load = |e: String| Error::Load(format!("structured output: {e}"));
        // It asserts on token names it does not expect: an odd tokenizer turns structured output
        // off rather than the server.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(json))
            .map_err(|_| load("unexpected token names in tokenizer.json".into()))?;
        let mut words = words.map_err(|e| load(e.to_string()))?;
        // Ids the model has and the tokenizer lacks: special placeholders no grammar allows.
        while words.len() < vocab_size {
            let mut name = format!(".<[{}]>", words.len()).into_bytes();
            if let Some(first) = name.first_mut() {
                *first = TokTrie::SPECIAL_TOKEN_MARKER;
            }
            words.push(name);
        }
        let first_eos = eos.first().copied().ok_or_else(|| load("the model has no EOS token".into()))?;
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(eos);
        }
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| load(e.to_string()))?;
        factory.quiet();
        Ok(Guidance { factory })
    }

    /// Compiles `spec` into a fresh guide; a bad schema, regex or grammar is an error of one
    /// line of at most [`MAX_ERROR_CHARS`] characters.
    pub fn compile(&self, spec: &GuideSpec) -> std::result::Result<Guide, String> {
        let grammar = match spec {
            GuideSpec::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            GuideSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            GuideSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GuideSpec::Choice(choices) => {
                let alternatives: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            GuideSpec::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| one_line(&e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(one_line(&e)),
            None => Ok(Guide { matcher }),
        }
    }
}

/// JSON without optional whitespace: a small model given the freedom fills its budget with
/// newlines. A schema that sets its own `x-guidance` options keeps them.
pub fn compact(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object()
        && !obj.contains_key("x-guidance")
    {
        let options = JsonCompileOptions { whitespace_flexible: false, ..Default::default() };
        options.apply_to(&mut schema);
    }
    schema
}

/// `s` as a regex matching itself (the metacharacters of `regex-syntax`, which llguidance uses).
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One line of at most [`MAX_ERROR_CHARS`] characters.
fn one_line(msg: &str) -> String {
    let flat = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_ERROR_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_ERROR_CHARS - 3).collect();
    cut.push_str("...");
    cut
}

/// One sequence's place in its grammar. Cloning (for the `n` samples of a request) copies the
/// state, so every sample goes its own way.
pub struct Guide {
    matcher: Matcher,
}

impl Clone for Guide {
    fn clone(&self) -> Self {
        Guide { matcher: self.matcher.deep_clone() }
    }
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

/// The tokens a guide allows next.
pub type Mask = SimpleVob;

impl Guide {
    /// The tokens the grammar allows next (EOS among them once the grammar may end).
    pub fn mask(&mut self) -> std::result::Result<Mask, String> {
        self.matcher.compute_mask().map_err(|e| one_line(&e.to_string()))
    }

    /// Advances past `token`, which the last mask allowed.
    pub fn commit(&mut self, token: u32) -> std::result::Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| one_line(&e.to_string()))
    }

    /// Whether the grammar is complete: nothing may follow.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Bans, in `logits`, every token `mask` does not allow. Returns whether any token is left.
pub fn apply_mask(mask: &Mask, logits: &mut [f32]) -> bool {
    let mut any = false;
    for (id, l) in logits.iter_mut().enumerate() {
        if mask.is_allowed(id as u32) {
            any |= *l != f32::NEG_INFINITY;
        } else {
            *l = f32::NEG_INFINITY;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_escaped_and_errors_are_one_bounded_line() {
        assert_eq!(escape_regex("a.b|c"), r"a\.b\|c");
        let long = format!("bad\n{}", "x ".repeat(400));
        let line = one_line(&long);
        assert!(!line.contains('\n') && line.chars().count() == MAX_ERROR_CHARS);
    }
}
