//! Hugging Face `config.json` and `generation_config.json`, for the architectures we serve.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Architectures the engine implements (`architectures[0]` of config.json).
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "Qwen2ForCausalLM"];

/// The fields of `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// `architectures[0]`: `LlamaForCausalLM` or `Qwen2ForCausalLM`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Checkpoint dtype.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}

impl ModelConfig {
    /// Reads and checks `config.json` in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        let cfg: ModelConfig =
            serde_json::from_str(&text).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        let arch = self.architecture();
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(Error::Load(format!(
                "unsupported architecture {arch:?}; supported: {SUPPORTED_ARCHITECTURES:?}"
            )));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(Error::Load("num_attention_heads must be a multiple of num_key_value_heads".into()));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::Load("head_dim must be even for rotary embeddings".into()));
        }
        Ok(())
    }

    /// `architectures[0]`, or `unknown`.
    pub fn architecture(&self) -> &str {
        self.architectures.first().map(String::as_str).unwrap_or("unknown")
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// `generation_config.json`: the token ids that end a sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Generation stops on any of these.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence id, if any.
    pub bos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Reads `generation_config.json` (optional), falling back to `config.json`'s ids.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut out = GenerationConfig::default();
        for file in ["generation_config.json", "config.json"] {
            let Ok(text) = std::fs::read_to_string(dir.join(file)) else { continue };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Load(format!("{file}: {e}")))?;
            if out.eos_token_ids.is_empty() {
                match v.get("eos_token_id") {
                    Some(serde_json::Value::Number(n)) => {
                        out.eos_token_ids = n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
                    }
                    Some(serde_json::Value::Array(a)) => {
                        out.eos_token_ids = a.iter().filter_map(|n| n.as_u64()).map(|n| n as u32).collect()
                    }
                    _ => {}
                }
            }
            if out.bos_token_id.is_none() {
                out.bos_token_id = v.get("bos_token_id").and_then(serde_json::Value::as_u64).map(|n| n as u32);
            }
        }
        Ok(out)
    }
}
