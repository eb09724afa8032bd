//! Process wiring: load, build the engine, serve, drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use llmserve_engine::config::{GenerationConfig, ModelConfig};
use llmserve_engine::engine::{self, EngineConfig};
use llmserve_engine::metrics::{CacheInfo, EngineMetrics};
use llmserve_engine::model::Model;
use llmserve_engine::scheduler::SchedulerConfig;
use llmserve_engine::tokenizer::Tokenizer;

use crate::args::Args;
use llmserve_openai::body::BodyLimits;
use llmserve_openai::serve::{Limits, positive_seconds, shutdown_signal};

use crate::state::{AppState, Loaded};
use llmserve_engine::guided::Guidance;

/// Logs as JSON lines or text, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" { b.json().flatten_event(true).init() } else { b.init() }
}

fn device(args: &Args) -> anyhow::Result<Device> {
    match args.device.as_str() {
        "cuda" => Ok(Device::new_cuda(0)?),
        _ => Ok(Device::Cpu),
    }
}

fn dtype(args: &Args, cfg: &ModelConfig, device: &Device) -> DType {
    match (args.dtype.as_str(), device.is_cpu()) {
        ("float16", _) => DType::F16,
        ("bfloat16", _) => DType::BF16,
        ("float32", _) | ("auto", true) => DType::F32,
        _ => match cfg.torch_dtype.as_deref() {
            Some("bfloat16") => DType::BF16,
            Some("float16") => DType::F16,
            _ => DType::F32,
        },
    }
}

/// KV-cache bytes on CPU when `--kv-cache-bytes` is not given.
pub const DEFAULT_CPU_KV_CACHE_BYTES: usize = 256 << 20;

/// Memory a step's activations may take on the GPU, kept out of the KV cache: the hidden states
/// of a full token budget through the widest layer, the logits of a full batch, and 256 MiB for
/// the CUDA libraries' workspaces.
fn activation_reserve(cfg: &ModelConfig, args: &Args, dtype: DType) -> usize {
    let tokens = args.max_num_batched_tokens.max(args.max_model_len.unwrap_or(0));
    let width = cfg.hidden_size * 4 + cfg.intermediate_size * 3;
    tokens * width * dtype.size_in_bytes() + args.max_num_seqs * cfg.vocab_size * 4 + (256 << 20)
}

/// Weights under this size run on one CPU thread when `--cpu-threads auto`.
pub const SMALL_MODEL_BYTES: u64 = 64 << 20;

/// The `RAYON_NUM_THREADS` this process must run with, when it differs from what it has (candle
/// reads that variable at every matrix product, so the engine can only steer it through the
/// environment; the binary re-executes itself with it set before any thread starts).
pub fn cpu_threads_to_set(args: &Args) -> anyhow::Result<Option<usize>> {
    if args.device != "cpu" {
        return Ok(None);
    }
    let current = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok());
    let wanted = match args.cpu_threads.as_str() {
        "auto" if current.is_some() => return Ok(None),
        "auto" => {
            let dir = args.model_dir()?;
            let bytes: u64 = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum();
            if bytes < SMALL_MODEL_BYTES {
                1
            } else {
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            }
        }
        n => n
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| anyhow::anyhow!("--cpu-threads takes a positive number or auto, got {n:?}"))?,
    };
    Ok((current != Some(wanted)).then_some(wanted))
}

/// Loads the model, starts the engine, and attaches it to `state`.
pub fn load(args: &Args, state: &AppState) -> anyhow::Result<()> {
    let dir = args.model_dir()?;
    let cfg = ModelConfig::load(&dir)?;
    let device = device(args)?;
    let dtype = dtype(args, &cfg, &device);
    let started = std::time::Instant::now();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    tracing::info!(
        model = %dir.display(), architecture = cfg.architecture(), ?dtype, device = %args.device,
        cpu_threads = %threads, "loading weights"
    );
    let model = Model::load(&dir, &device, dtype)?;
    let tokenizer = Arc::new(Tokenizer::load(&dir)?);
    let generation = GenerationConfig::load(&dir)?;
    let per_block = llmserve_engine::model::KvCache::bytes_per_block(&cfg, args.block_size, dtype);
    let kv_bytes = match (args.kv_cache_bytes, crate::gpu::mem_info(&device)) {
        (Some(b), _) => b,
        (None, Some((free, total))) => {
            let budget = crate::gpu::kv_cache_budget(
                free,
                total,
                args.gpu_memory_utilization,
                activation_reserve(&cfg, args, dtype),
            );
            tracing::info!(
                free_bytes = free,
                total_bytes = total,
                utilization = args.gpu_memory_utilization,
                kv_cache_bytes = budget,
                "sized the KV cache from GPU memory"
            );
            budget
        }
        (None, None) => DEFAULT_CPU_KV_CACHE_BYTES,
    };
    let num_blocks = (kv_bytes / per_block.max(1)).max(1);
    let kv_tokens = num_blocks * args.block_size;
    if kv_tokens < state.max_model_len {
        anyhow::bail!(
            "the KV cache holds {kv_tokens} tokens ({num_blocks} blocks of {} tokens in {kv_bytes} bytes), fewer than \
             one sequence of --max-model-len {}: raise --kv-cache-bytes (on CUDA: --gpu-memory-utilization) or lower \
             --max-model-len",
            args.block_size,
            state.max_model_len
        );
    }
    let mut cache = model.new_cache(num_blocks, args.block_size)?;
    cache.blocks.set_prefix_caching(args.enable_prefix_caching);
    let metrics = if args.disable_engine_metrics {
        None
    } else {
        let info = CacheInfo {
            block_size: args.block_size,
            num_blocks,
            prefix_caching: args.enable_prefix_caching,
            cache_dtype: format!("{dtype:?}").to_lowercase(),
        };
        let m = EngineMetrics::register(&state.registry, &state.model_id, state.max_model_len, &info)?;
        if !device.is_cpu() {
            crate::gpu::watch(device.clone(), &state.registry, &state.model_id)?;
        }
        Some(m)
    };
    let chat_template = match &args.chat_template {
        Some(given) => Some(chat_template(given)?),
        None => std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template")?.as_str().map(String::from)),
    };
    let engine_cfg = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: args.max_num_seqs,
            // Never raised to the context length: long prompts are prefilled in chunks of this
            // budget, which bounds the memory one step needs whatever the prompt's length.
            max_num_batched_tokens: args.max_num_batched_tokens,
        },
        max_model_len: state.max_model_len,
        max_waiting: args.max_waiting_requests,
        eos_token_ids: generation.eos_token_ids.clone(),
    };
    let guidance = match Guidance::load(&dir, cfg.vocab_size, &generation.eos_token_ids) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            tracing::warn!(error = %e, "structured output is off: llguidance cannot read this tokenizer");
            None
        }
    };
    let handle = engine::spawn(model, cache, tokenizer.clone(), engine_cfg, metrics)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        kv_blocks = num_blocks,
        block_size = args.block_size,
        "model loaded"
    );
    state.set_loaded(Loaded {
        engine: handle,
        tokenizer,
        chat_template,
        architecture: cfg.architecture().to_string(),
        model_vocab_size: cfg.vocab_size,
        guidance,
    });
    Ok(())
}

/// `--chat-template`: the file's text, or the argument itself when it is a template; either
/// must compile, so a broken template stops the server at start, not at the first chat.
fn chat_template(given: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(given);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--chat-template {given:?}: {e}"))?
    } else if given.contains("{{") || given.contains("{%") {
        given.to_string()
    } else {
        anyhow::bail!("--chat-template {given:?}: no such file, and not a Jinja template");
    };
    let mut env = minijinja::Environment::new();
    env.add_template("chat", &text).map_err(|e| anyhow::anyhow!("--chat-template: {e}"))?;
    Ok(text)
}

/// Builds the state for `args` (reads config.json for the context length).
pub fn state(args: &Args) -> anyhow::Result<AppState> {
    for (flag, value) in [
        ("--max-num-seqs", args.max_num_seqs),
        ("--max-num-batched-tokens", args.max_num_batched_tokens),
        ("--block-size", args.block_size),
        ("--max-connections", args.max_connections),
    ] {
        if value == 0 {
            anyhow::bail!("{flag} must be at least 1");
        }
    }
    if args.tensor_parallel_size != 1 {
        anyhow::bail!("--tensor-parallel-size {} is not supported yet; only 1", args.tensor_parallel_size);
    }
    let dir = args.model_dir()?;
    let cfg = ModelConfig::load(&dir)?;
    let max_model_len = args.max_model_len.unwrap_or(cfg.max_position_embeddings).min(cfg.max_position_embeddings);
    let id = args.served_name();
    let body = BodyLimits {
        max_bytes: args.max_body_bytes,
        timeout: positive_seconds("body-timeout-seconds", args.body_timeout_seconds).map_err(anyhow::Error::msg)?,
    };
    Ok(AppState::new(id, max_model_len, body, prometheus::Registry::new())?)
}

/// Serves until SIGTERM or Ctrl-C, then stops taking requests and gives running ones the grace
/// period to finish.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let state = state(&args)?;
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, model = %state.model_id, "listening; /health turns ready once the model is loaded");
    let loader = {
        let (args, state) = (args.clone(), state.clone());
        tokio::task::spawn_blocking(move || load(&args, &state))
    };
    let limits = Limits {
        max_connections: args.max_connections,
        header_timeout: positive_seconds("header-timeout-seconds", args.header_timeout_seconds)
            .map_err(anyhow::Error::msg)?,
    };
    let serving =
        llmserve_openai::serve::spawn(listener, crate::api::app(state.clone()), limits, state.http.connections.clone());
    let side = match args.metrics_port {
        Some(port) => {
            let listener = tokio::net::TcpListener::bind((args.host, port)).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
            Some(llmserve_openai::serve::spawn_side(
                listener,
                crate::api::side_app(state.clone()),
                limits.header_timeout,
            )?)
        }
        None => None,
    };
    tokio::select! {
        res = loader => {
            res??;
            println!("llmserve-server: serving {:?} at http://{addr}/v1 (try: curl http://{addr}/v1/completions -H \
                'content-type: application/json' -d '{{\"model\": \"{}\", \"prompt\": \"Once upon a time\", \
                    \"max_tokens\": 32}}')", state.model_id, state.model_id);
        }
        _ = shutdown_signal() => { return Ok(()); }
    }
    let engine = state.loaded.get().map(|l| l.engine.clone());
    let engine_died = async {
        match &engine {
            Some(e) => e.stopped().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {
            llmserve_openai::serve::announce_shutdown(&state.draining, Duration::from_secs(args.shutdown_delay_seconds))
                .await;
            serving.drain(Duration::from_secs(args.shutdown_grace_seconds)).await;
            if let Some(side) = side {
                side.drain(Duration::from_secs(1)).await;
            }
            Ok(())
        }
        _ = engine_died => {
            // /health already answers 503 and requests in flight got their 5xx; a moment for those
            // answers to leave, then exit non-zero so the kubelet restarts the replica.
            tracing::error!("the engine has stopped; exiting so that this replica is restarted");
            tokio::time::sleep(ENGINE_DEATH_FLUSH).await;
            anyhow::bail!("the engine thread stopped")
        }
    }
}

/// How long a server whose engine died keeps answering (503s, and the errors of requests in flight)
/// before it exits.
const ENGINE_DEATH_FLUSH: Duration = Duration::from_secs(2);
