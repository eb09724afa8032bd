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

/// Turns generated ids into text pieces for streaming at a cost of O(new tokens) per token: it
/// decodes only the window from the last emitted piece on (`prefix..`), compares it with the same
/// window without the unsent ids (`prefix..read`), and emits the difference once it is whole
/// UTF-8. Ids before the window are dropped, so memory stays constant too.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl IncrementalDecoder {
    /// A decoder continuing after `context` (the prompt's last tokens): decoding in context keeps
    /// the leading space a tokenizer would strip from the first generated word.
    pub fn new(context: &[u32]) -> Self {
        let ids = context.get(context.len().saturating_sub(4)..).unwrap_or_default().to_vec();
        IncrementalDecoder { read: ids.len(), ids, prefix: 0 }
    }

    /// Adds `id` and returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let window = self.ids.get(self.prefix..).unwrap_or_default();
        let settled = tok.decode(window.get(..self.read - self.prefix).unwrap_or_default())?;
        let text = tok.decode(window)?;
        // A trailing replacement character means a multi-byte character is still incomplete.
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = text.get(settled.len()..).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let piece = piece.to_string();
        self.ids.drain(..self.read);
        self.prefix = 0;
        self.read = self.ids.len();
        Ok(Some(piece))
    }
}
