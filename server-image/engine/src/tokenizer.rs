//! `tokenizer.json` through Hugging Face's `tokenizers`, with incremental detokenisation for
//! streaming (text is emitted only once it is valid UTF-8 and stable).

use std::path::Path;

use crate::error::{Error, Result};

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Reads `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (BOS for Llama).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of generated ids into text pieces for streaming.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl IncrementalDecoder {
    /// A decoder continuing after `context` (the prompt's last tokens): decoding in context keeps
    /// the leading space a tokenizer would strip from the first generated word.
    pub fn new(tok: &Tokenizer, context: &[u32]) -> Result<Self> {
        let ids = context[context.len().saturating_sub(4)..].to_vec();
        let emitted = tok.decode(&ids)?.len();
        Ok(IncrementalDecoder { ids, emitted })
    }

    /// Adds `id` and returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // A trailing replacement character means a multi-byte character is still incomplete.
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}
