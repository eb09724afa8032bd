//! The engine on the real stories260k model: greedy output equals llama2.c's `run.c`, and a
//! batched step over the paged cache equals a naive dense forward of each sequence alone.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use llmserve_engine::config::GenerationConfig;
use llmserve_engine::model::{Model, StepSeq};
use llmserve_engine::sampling::argmax;
use llmserve_engine::tokenizer::Tokenizer;

fn model_dir() -> PathBuf {
    let dir = llmserve_test_support::stories260k();
    assert!(dir.join("config.json").exists(), "stories260k not found at {}", dir.display());
    dir
}

/// Greedy decoding the way `run.c -t 0 -n 256` does: forward passes at positions 0..255, each
/// emitting the next token (so up to 257 tokens with BOS); stop on BOS/EOS.
fn greedy(model: &Model, tok: &Tokenizer, prompt: &str, block_size: usize) -> String {
    let generation = GenerationConfig::load(&model_dir()).unwrap();
    let mut ids = tok.encode(prompt).unwrap();
    let mut cache = model.new_cache(64, block_size).unwrap();
    let mut table = Vec::new();
    let mut start = 0;
    while ids.len() <= 256 {
        cache.blocks.grow(&mut table, ids.len()).unwrap();
        let step = [StepSeq { tokens: &ids[start..], start, block_table: &table }];
        let logits = model.forward(&step, &cache).unwrap().to_vec2::<f32>().unwrap();
        let next = argmax(&logits[0]);
        start = ids.len();
        if generation.eos_token_ids.contains(&next) {
            break;
        }
        ids.push(next);
    }
    tok.decode(&ids).unwrap()
}

#[test]
fn greedy_matches_llama2c_references() {
    let dir = model_dir();
    let model = Model::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    for (file, prompt) in [
        ("once_upon_a_time.txt", "Once upon a time"),
        ("the_cat.txt", "The cat"),
        ("tom_and_lily_went.txt", "Tom and Lily went"),
        ("zoo.txt", "Zoo"),
    ] {
        let reference = std::fs::read_to_string(dir.join("reference").join(file)).unwrap();
        // Block size 16 splits the context over many blocks; 7 makes runs straddle block edges.
        for bs in [16, 7] {
            let ours = greedy(&model, &tok, prompt, bs);
            assert_eq!(ours.trim_end(), reference.trim_end(), "{file} (block size {bs})");
        }
    }
}

/// A deliberately naive reference: dense causal attention over the whole sequence, each query
/// head looping over an explicitly repeated key/value head, RoPE written out by hand.
fn dense_logits(dir: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    let cfg = llmserve_engine::config::ModelConfig::load(dir).unwrap();
    let t = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let w = |n: &str| t[n].to_vec2::<f32>().unwrap();
    let w1 = |n: &str| t[n].to_vec1::<f32>().unwrap();
    let (h, heads, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
    let matvec = |m: &Vec<Vec<f32>>, x: &[f32]| -> Vec<f32> {
        m.iter().map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    };
    let rms = |x: &[f32], g: &[f32]| -> Vec<f32> {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let r = 1.0 / (ms + cfg.rms_norm_eps as f32).sqrt();
        x.iter().zip(g).map(|(v, g)| v * r * g).collect()
    };
    let rope = |v: &mut [f32], pos: usize| {
        for hh in 0..v.len() / hd {
            let s = &mut v[hh * hd..(hh + 1) * hd];
            for i in 0..hd / 2 {
                let f = pos as f32 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32);
                let (a, b) = (s[i], s[i + hd / 2]);
                s[i] = a * f.cos() - b * f.sin();
                s[i + hd / 2] = a * f.sin() + b * f.cos();
            }
        }
    };
    let embed = w("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f32>> = ids.iter().map(|&i| embed[i as usize].clone()).collect();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let (wq, wk, wv, wo) = (
            w(&format!("{p}.self_attn.q_proj.weight")),
            w(&format!("{p}.self_attn.k_proj.weight")),
            w(&format!("{p}.self_attn.v_proj.weight")),
            w(&format!("{p}.self_attn.o_proj.weight")),
        );
        let (wg, wu, wd) = (
            w(&format!("{p}.mlp.gate_proj.weight")),
            w(&format!("{p}.mlp.up_proj.weight")),
            w(&format!("{p}.mlp.down_proj.weight")),
        );
        let (g1, g2) =
            (w1(&format!("{p}.input_layernorm.weight")), w1(&format!("{p}.post_attention_layernorm.weight")));
        let normed: Vec<Vec<f32>> = xs.iter().map(|x| rms(x, &g1)).collect();
        // Qwen2 adds biases to q, k and v; Llama has none.
        let bias = |name: &str, y: Vec<f32>| -> Vec<f32> {
            match t.get(&format!("{p}.self_attn.{name}.bias")) {
                Some(b) => y.iter().zip(b.to_vec1::<f32>().unwrap()).map(|(a, b)| a + b).collect(),
                None => y,
            }
        };
        let mut q: Vec<Vec<f32>> = normed.iter().map(|x| bias("q_proj", matvec(&wq, x))).collect();
        let mut k: Vec<Vec<f32>> = normed.iter().map(|x| bias("k_proj", matvec(&wk, x))).collect();
        let v: Vec<Vec<f32>> = normed.iter().map(|x| bias("v_proj", matvec(&wv, x))).collect();
        for (pos, (qq, kk)) in q.iter_mut().zip(k.iter_mut()).enumerate() {
            rope(qq, pos);
            rope(kk, pos);
        }
        for i in 0..ids.len() {
            let mut out = vec![0f32; heads * hd];
            for hh in 0..heads {
                let kv = hh / (heads / kvh);
                let qh = &q[i][hh * hd..(hh + 1) * hd];
                let sc: Vec<f32> = (0..=i)
                    .map(|j| {
                        qh.iter().zip(&k[j][kv * hd..(kv + 1) * hd]).map(|(a, b)| a * b).sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for d in 0..hd {
                        out[hh * hd + d] += ej / z * v[j][kv * hd + d];
                    }
                }
            }
            let o = matvec(&wo, &out);
            for d in 0..h {
                xs[i][d] += o[d];
            }
            let n2 = rms(&xs[i], &g2);
            let (gg, uu) = (matvec(&wg, &n2), matvec(&wu, &n2));
            let act: Vec<f32> = gg.iter().zip(&uu).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = matvec(&wd, &act);
            for d in 0..h {
                xs[i][d] += dn[d];
            }
        }
    }
    let last = rms(xs.last().unwrap(), &w1("model.norm.weight"));
    matvec(&embed, &last)
}

#[test]
fn batched_paged_step_equals_dense_unbatched_forward() {
    let dir = model_dir();
    let tok = Tokenizer::load(&dir).unwrap();
    let prompts =
        ["Once upon a time, there was a big dog", "The cat", "Tom and Lily went to the park to play with a ball"];
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    batched_equals_dense(&dir, &seqs);
}

#[test]
fn qwen2_with_qkv_biases_batched_equals_dense() {
    let dir = tempfile::tempdir().unwrap();
    llmserve_engine::random_model::write(dir.path(), llmserve_engine::random_model::Preset::TinyQwen2, None).unwrap();
    let cfg = llmserve_engine::config::ModelConfig::load(dir.path()).unwrap();
    assert_eq!(cfg.architecture(), "Qwen2ForCausalLM");
    let seqs: Vec<Vec<u32>> = vec![(1..30).collect(), vec![7, 8, 9], (100..117).collect()];
    batched_equals_dense(dir.path(), &seqs);
}

fn batched_equals_dense(dir: &std::path::Path, seqs: &[Vec<u32>]) {
    let model = Model::load(dir, &Device::Cpu, DType::F32).unwrap();
    let mut cache = model.new_cache(32, 4).unwrap();
    // Interleave block allocation so every sequence's blocks are scattered over the cache.
    let mut tables = [Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=8 {
        for (t, s) in tables.iter_mut().zip(seqs) {
            cache.blocks.grow(t, (round * 4).min(s.len() + 1)).unwrap();
        }
    }
    // Step 1: sequence 0 prefills all but its last token alone; step 2 mixes sequence 0's last
    // token (a decode) with full prefills of sequences 1 and 2.
    let n0 = seqs[0].len();
    model.forward(&[StepSeq { tokens: &seqs[0][..n0 - 1], start: 0, block_table: &tables[0] }], &cache).unwrap();
    let step = [
        StepSeq { tokens: &seqs[0][n0 - 1..], start: n0 - 1, block_table: &tables[0] },
        StepSeq { tokens: &seqs[1], start: 0, block_table: &tables[1] },
        StepSeq { tokens: &seqs[2], start: 0, block_table: &tables[2] },
    ];
    let batched: Tensor = model.forward(&step, &cache).unwrap();
    let batched = batched.to_vec2::<f32>().unwrap();
    for (i, ids) in seqs.iter().enumerate() {
        let dense = dense_logits(dir, ids);
        let max_diff = dense.iter().zip(&batched[i]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-4, "sequence {i}: max |dense - batched| = {max_diff}");
        // The argmax must agree unless the two best logits are closer than the tolerance.
        let mut sorted = dense.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 1e-3 {
            assert_eq!(argmax(&dense), argmax(&batched[i]));
        }
    }
}
