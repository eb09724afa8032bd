//! Llama and Qwen2 decoder on candle tensors, over a paged KV cache.
//!
//! One `forward` runs a whole engine step: the new tokens of every scheduled sequence (whole
//! prompts being prefilled and single tokens being decoded, mixed) go through the embedding, the
//! projections and the MLP as one `[tokens, hidden]` matrix; attention then runs per sequence,
//! writing the sequence's new keys and values into its cache blocks and reading its whole context
//! back through its block table. candle-transformers' models keep one contiguous cache per
//! sequence and cannot batch sequences of different lengths, hence this layer of our own.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::blocks::{BlockCopy, BlockManager};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// `y = x W^T + b`, with `W^T` stored contiguous once at load time.
struct Linear {
    wt: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A loaded model, ready to run steps.
pub struct Model {
    cfg: ModelConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head_t: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// The KV cache tensors: per layer, keys and values for every slot, `[slots, kv_heads, head_dim]`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Which blocks are free.
    pub blocks: BlockManager,
}

impl KvCache {
    /// Bytes one block takes over all layers (keys and values).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers * block_size * cfg.kv_heads() * cfg.head_dim() * dtype.size_in_bytes()
    }

    /// Copies each block's keys and values, every layer, into another block (copy on write of a
    /// block that forked sequences shared).
    pub fn copy_blocks(&self, copies: &[BlockCopy]) -> Result<()> {
        let bs = self.blocks.block_size();
        for c in copies {
            for t in self.k.iter().chain(&self.v) {
                // A copy of its own: `slice_set` refuses a source that shares the target's storage.
                let src = t.narrow(0, c.src as usize * bs, bs)?.copy()?;
                t.slice_set(&src, 0, c.dst as usize * bs)?;
            }
        }
        Ok(())
    }
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct StepSeq<'a> {
    /// Tokens to run now: the prompt (or its next chunk) when prefilling, one token when decoding.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: how many tokens of this sequence are already in the cache.
    pub start: usize,
    /// The sequence's cache blocks, holding at least `start + tokens.len()` slots.
    pub block_table: &'a [u32],
}

impl Model {
    /// Loads `config.json` and every `*.safetensors` of `dir` onto `device`, computing in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = ModelConfig::load(dir)?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::Load(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Load(format!("no *.safetensors in {}", dir.display())));
        }
        let mut tensors = std::collections::HashMap::new();
        for f in &files {
            tensors.extend(candle_core::safetensors::load(f, device)?);
        }
        let mut take = |name: &str| -> Result<Tensor> {
            let t = tensors.remove(name).ok_or_else(|| Error::Load(format!("missing tensor {name}")))?;
            Ok(t.to_dtype(dtype)?)
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linear = |name: &str, bias: bool| -> Result<Linear> {
                let wt = take(&format!("{p}.{name}.weight"))?.t()?.contiguous()?;
                let bias = if bias { Some(take(&format!("{p}.{name}.bias"))?) } else { None };
                Ok(Linear { wt, bias })
            };
            // Qwen2 has biases on q, k and v; Llama has none.
            let qkv_bias = cfg.architecture() == "Qwen2ForCausalLM";
            let (q, k, v, o) = (
                linear("self_attn.q_proj", qkv_bias)?,
                linear("self_attn.k_proj", qkv_bias)?,
                linear("self_attn.v_proj", qkv_bias)?,
                linear("self_attn.o_proj", false)?,
            );
            let (gate, up, down) =
                (linear("mlp.gate_proj", false)?, linear("mlp.up_proj", false)?, linear("mlp.down_proj", false)?);
            layers.push(Layer {
                input_norm: take(&format!("{p}.input_layernorm.weight"))?,
                post_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let norm = take("model.norm.weight")?;
        let lm_head_t = match take("lm_head.weight") {
            Ok(w) => w.t()?.contiguous()?,
            Err(_) => embed.t()?.contiguous()?, // tied embeddings
        };
        let (cos, sin) = rope_tables(&cfg, device, dtype)?;
        Ok(Model { cfg, device: device.clone(), dtype, embed, layers, norm, lm_head_t, cos, sin })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// A zeroed cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache> {
        let shape = (num_blocks * block_size, self.cfg.kv_heads(), self.cfg.head_dim());
        let mut k = Vec::new();
        let mut v = Vec::new();
        // On CPU a zeroed allocation is only mapped, and its pages would be touched one by one as
        // blocks are first used: resident memory would creep up under load for hours, looking like
        // a leak and meeting the pod's memory limit late. Writing every page now makes the
        // replica's memory what it will use from the start (as a GPU allocation is).
        let cache = |device: &Device| -> Result<Tensor> {
            let zeros = Tensor::zeros(shape, self.dtype, device)?;
            Ok(if device.is_cpu() { zeros.affine(1.0, 0.0)? } else { zeros })
        };
        for _ in 0..self.cfg.num_hidden_layers {
            k.push(cache(&self.device)?);
            v.push(cache(&self.device)?);
        }
        Ok(KvCache { k, v, blocks: BlockManager::new(num_blocks, block_size) })
    }

    /// Runs one step; returns the logits of each sequence's last token, `[seqs, vocab]` in f32.
    pub fn forward(&self, seqs: &[StepSeq<'_>], cache: &KvCache) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (heads, kv_heads, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let bs = cache.blocks.block_size();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last = Vec::with_capacity(seqs.len());
        let mut plans = Vec::with_capacity(seqs.len());
        for s in seqs {
            let end = s.start + s.tokens.len();
            if s.tokens.is_empty() || s.block_table.len() * bs < end {
                return Err(Error::Invalid("step sequence without tokens or cache blocks".into()));
            }
            let offset = ids.len();
            ids.extend_from_slice(s.tokens);
            positions.extend((s.start..end).map(|p| p as u32));
            last.push((ids.len() - 1) as u32);
            // The table holds at least `end` slots (checked above).
            let mut ctx_slots: Vec<u32> = Vec::with_capacity(end);
            let table_slots = s.block_table.iter().flat_map(|&b| b as usize * bs..(b as usize + 1) * bs);
            ctx_slots.extend(table_slots.take(end).map(|slot| slot as u32));
            // New tokens are written in runs that stay inside one block.
            let mut runs = Vec::new();
            let mut p = s.start;
            while p < end {
                let run = (bs - p % bs).min(end - p);
                let slot =
                    cache.blocks.slot(s.block_table, p).ok_or_else(|| Error::Invalid("short block table".into()))?;
                runs.push((p - s.start, slot, run));
                p += run;
            }
            plans.push((offset, s.tokens.len(), s.start, Tensor::new(ctx_slots, &self.device)?, runs));
        }
        let n = ids.len();
        let ids = Tensor::new(ids, &self.device)?;
        let pos = Tensor::new(positions, &self.device)?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f64).sqrt();

        if cache.k.len() != self.layers.len() || cache.v.len() != self.layers.len() {
            return Err(Error::Invalid("KV cache made for another number of layers".into()));
        }
        for ((layer, cache_k), cache_v) in self.layers.iter().zip(&cache.k).zip(&cache.v) {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let q = layer.q.forward(&h)?.reshape((1, n, heads, hd))?;
            let k = layer.k.forward(&h)?.reshape((1, n, kv_heads, hd))?;
            let v = layer.v.forward(&h)?.reshape((n, kv_heads, hd))?;
            let q = candle_nn::rotary_emb::rope_thd(&q.contiguous()?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_thd(&k.contiguous()?, &cos, &sin)?.squeeze(0)?;

            let mut outs = Vec::with_capacity(plans.len());
            for (offset, len, start, ctx_slots, runs) in &plans {
                let k_new = k.narrow(0, *offset, *len)?;
                let v_new = v.narrow(0, *offset, *len)?;
                for &(from, slot, run) in runs {
                    cache_k.slice_set(&k_new.narrow(0, from, run)?.contiguous()?, 0, slot)?;
                    cache_v.slice_set(&v_new.narrow(0, from, run)?.contiguous()?, 0, slot)?;
                }
                let kc = cache_k.index_select(ctx_slots, 0)?.transpose(0, 1)?.contiguous()?; // [kv, ctx, hd]
                let vc = cache_v.index_select(ctx_slots, 0)?.transpose(0, 1)?.contiguous()?;
                let qi = q.narrow(0, *offset, *len)?.transpose(0, 1)?.contiguous()?; // [heads, len, hd]
                outs.push(attention(&qi, &kc, &vc, *start, scale, kv_heads)?);
            }
            let attn = if outs.len() == 1
                && let Some(one) = outs.pop()
            {
                one
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            let mlp = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&mlp)?)?;
        }
        let last = Tensor::new(last, &self.device)?;
        let x = candle_nn::ops::rms_norm(&x.index_select(&last, 0)?, &self.norm, eps)?;
        Ok(x.matmul(&self.lm_head_t)?.to_dtype(DType::F32)?)
    }
}

/// Causal attention of one sequence: `q` `[heads, len, hd]` at positions `start..start+len`
/// over its whole context `k`, `v` `[kv_heads, ctx, hd]`. Query heads are grouped by the key/value
/// head they share (GQA) so keys are never copied per query head. Returns `[len, heads * hd]`.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, start: usize, scale: f64, kv_heads: usize) -> Result<Tensor> {
    let (heads, len, hd) = q.dims3()?;
    let ctx = k.dim(1)?;
    let rep = heads / kv_heads;
    let q = q.reshape((kv_heads, rep * len, hd))?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?; // [kv, rep*len, ctx]
    if len > 1 {
        let mut mask = vec![0f32; len * ctx];
        // Row `i` (position `start + i`) sees the context up to itself; `max(1)`: no rows when `ctx` is 0.
        for (i, row) in mask.chunks_exact_mut(ctx.max(1)).enumerate() {
            if let Some(future) = row.get_mut(start + i + 1..) {
                future.fill(f32::NEG_INFINITY);
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, len, ctx), q.device())?.to_dtype(scores.dtype())?;
        scores =
            scores.reshape((kv_heads, rep, len, ctx))?.broadcast_add(&mask)?.reshape((kv_heads, rep * len, ctx))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?; // [kv, rep*len, hd]
    Ok(out.reshape((heads, len, hd))?.transpose(0, 1)?.reshape((len, heads * hd))?)
}

/// cos and sin of every position's rotary angles, `[max_positions, head_dim / 2]`.
fn rope_tables(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
    let max = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, max as u32, device)?.to_dtype(DType::F32)?.reshape((max, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}
