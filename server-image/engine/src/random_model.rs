//! Random-weight models in Hugging Face layout, for tests and for GPU checks on machines that
//! cannot reach a model hub. The weights are noise; the shapes, names and config are real.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::error::{Error, Result};

/// Shapes of a random model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Qwen2 with q/k/v biases and tied embeddings, tiny enough for CPU tests.
    TinyQwen2,
    /// The shapes of Qwen2.5-0.5B-Instruct (llmserve's reference deployment), in bfloat16.
    Qwen25_05b,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny-qwen2" => Ok(Preset::TinyQwen2),
            "qwen2.5-0.5b" => Ok(Preset::Qwen25_05b),
            other => Err(Error::Invalid(format!("unknown preset {other:?}; use tiny-qwen2 or qwen2.5-0.5b"))),
        }
    }
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` of `preset` into `dir`,
/// with weights drawn from N(0, 0.02) (norm weights 1). `tokenizer.json`, when given, is copied.
pub fn write(dir: &Path, preset: Preset, tokenizer: Option<&Path>) -> Result<()> {
    let (hidden, inter, layers, heads, kv, vocab, max_pos, theta, dtype, torch_dtype) = match preset {
        Preset::TinyQwen2 => (32, 64, 2, 4, 2, 512, 256, 10000.0, DType::F32, "float32"),
        Preset::Qwen25_05b => (896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, DType::BF16, "bfloat16"),
    };
    let hd = hidden / heads;
    std::fs::create_dir_all(dir).map_err(|e| Error::Load(format!("{}: {e}", dir.display())))?;
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-6, "rope_theta": theta, "tie_word_embeddings": true,
        "torch_dtype": torch_dtype, "bos_token_id": 1, "eos_token_id": 2,
    });
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Load(format!("{name}: {e}")))?;
        std::fs::write(dir.join(name), bytes).map_err(|e| Error::Load(format!("{name}: {e}")))
    };
    write("config.json", &config)?;
    write("generation_config.json", &json!({"bos_token_id": 1, "eos_token_id": [2]}))?;
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut rand = |name: String, shape: &[usize]| -> Result<()> {
        t.insert(name, Tensor::randn(0f32, 0.02, shape, &dev)?.to_dtype(dtype)?);
        Ok(())
    };
    rand("model.embed_tokens.weight".into(), &[vocab, hidden])?;
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        rand(format!("{p}.self_attn.q_proj.weight"), &[heads * hd, hidden])?;
        rand(format!("{p}.self_attn.q_proj.bias"), &[heads * hd])?;
        rand(format!("{p}.self_attn.k_proj.weight"), &[kv * hd, hidden])?;
        rand(format!("{p}.self_attn.k_proj.bias"), &[kv * hd])?;
        rand(format!("{p}.self_attn.v_proj.weight"), &[kv * hd, hidden])?;
        rand(format!("{p}.self_attn.v_proj.bias"), &[kv * hd])?;
        rand(format!("{p}.self_attn.o_proj.weight"), &[hidden, heads * hd])?;
        rand(format!("{p}.mlp.gate_proj.weight"), &[inter, hidden])?;
        rand(format!("{p}.mlp.up_proj.weight"), &[inter, hidden])?;
        rand(format!("{p}.mlp.down_proj.weight"), &[hidden, inter])?;
    }
    let ones = |n: usize| Tensor::ones(n, dtype, &dev);
    for l in 0..layers {
        t.insert(format!("model.layers.{l}.input_layernorm.weight"), ones(hidden)?);
        t.insert(format!("model.layers.{l}.post_attention_layernorm.weight"), ones(hidden)?);
    }
    t.insert("model.norm.weight".into(), ones(hidden)?);
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    if let Some(tok) = tokenizer {
        std::fs::copy(tok, dir.join("tokenizer.json")).map_err(|e| Error::Load(format!("{}: {e}", tok.display())))?;
    }
    Ok(())
}
