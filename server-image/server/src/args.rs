//! `llmserve-server` flags: vLLM's names, each also an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

/// Flags of `llmserve-server`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "llmserve-server",
    version,
    about = "Serves a Hugging Face Llama or Qwen2 model with OpenAI routes and vLLM-compatible metrics"
)]
pub struct Args {
    /// Model directory (config.json, *.safetensors, tokenizer.json), or a Hugging Face repo id
    /// (downloaded into the Hugging Face cache: `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`).
    #[arg(long, env = "LLMSERVE_MODEL")]
    pub model: String,
    /// Revision of a Hugging Face repo id: branch, tag or commit.
    #[arg(long, env = "LLMSERVE_REVISION", default_value = "main")]
    pub revision: String,
    /// The local directory `--model` resolved to (set at start).
    #[arg(skip)]
    pub model_path: Option<PathBuf>,
    /// The id clients send as `model`; defaults to the repo id, or the directory's name.
    #[arg(long, env = "LLMSERVE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "LLMSERVE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "LLMSERVE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// `cpu`, or `cuda` (needs the `cuda` build).
    #[arg(long, env = "LLMSERVE_DEVICE", default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Compute dtype; `auto` is float32 on CPU and the checkpoint's dtype on CUDA.
    #[arg(
        long,
        env = "LLMSERVE_DTYPE",
        default_value = "auto",
        value_parser = ["auto", "float32", "float16", "bfloat16"]
    )]
    pub dtype: String,
    /// Longest prompt + completion; defaults to the model's `max_position_embeddings`.
    #[arg(long, env = "LLMSERVE_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// Most sequences in one batch.
    #[arg(long, env = "LLMSERVE_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Most tokens scheduled in one step.
    #[arg(long, env = "LLMSERVE_MAX_NUM_BATCHED_TOKENS", default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Tokens per KV-cache block.
    #[arg(long, env = "LLMSERVE_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// Bytes for the KV cache; default 256 MiB on CPU, and on CUDA what
    /// `--gpu-memory-utilization` leaves after the weights and the activations.
    #[arg(long, env = "LLMSERVE_KV_CACHE_BYTES")]
    pub kv_cache_bytes: Option<usize>,
    /// Fraction of the GPU's memory the process may use (weights, activations, KV cache).
    #[arg(long, env = "LLMSERVE_GPU_MEMORY_UTILIZATION", default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// GPUs to shard over; only 1 is supported.
    #[arg(long, env = "LLMSERVE_TENSOR_PARALLEL_SIZE", default_value_t = 1)]
    pub tensor_parallel_size: usize,
    /// Requests allowed to wait before new ones get 429.
    #[arg(long, env = "LLMSERVE_MAX_WAITING_REQUESTS", default_value_t = 256)]
    pub max_waiting_requests: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "LLMSERVE_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request body may take to arrive, from when its headers did (408 after).
    #[arg(long, env = "LLMSERVE_BODY_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub body_timeout_seconds: f64,
    /// Seconds a connection may take to send a request's headers, counted from when it opened or
    /// its previous response ended (so also how long an idle keep-alive connection stays open).
    #[arg(long, env = "LLMSERVE_HEADER_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub header_timeout_seconds: f64,
    /// Connections open at once; the ones over it are answered 503 with `Retry-After` and closed.
    #[arg(long, env = "LLMSERVE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Export no `vllm:*` engine metrics (service-level HTTP metrics stay).
    #[arg(long, env = "LLMSERVE_DISABLE_ENGINE_METRICS")]
    pub disable_engine_metrics: bool,
    /// Reuse the KV blocks of prompt prefixes seen before (whole blocks; hits and queries are
    /// counted in `vllm:prefix_cache_*`).
    #[arg(long, env = "LLMSERVE_ENABLE_PREFIX_CACHING")]
    pub enable_prefix_caching: bool,
    /// Seconds running requests get to finish after SIGTERM.
    #[arg(long, env = "LLMSERVE_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and the drain during which `/health` answers 503 and new requests
    /// are still served, so that routers and Services stop sending here before connections are
    /// refused (Kubernetes propagates an endpoint's removal asynchronously; the operator sets 5).
    #[arg(long, env = "LLMSERVE_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,
    /// CPU compute threads: a number, or `auto` (one thread for weights under 64 MiB, where
    /// candle's per-op thread pool costs more than it gains, else every core). An explicit
    /// `RAYON_NUM_THREADS` in the environment wins over `auto`.
    #[arg(long, env = "LLMSERVE_CPU_THREADS", default_value = "auto")]
    pub cpu_threads: String,
    /// Also serve `/metrics` and `/health` (nothing else) in plain HTTP on this port, so that a
    /// NetworkPolicy can let Prometheus scrape without reaching the API; both stay on `--port`.
    #[arg(long, env = "LLMSERVE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// The chat template (Jinja, as Hugging Face writes them): a file, or the template itself
    /// when no such file exists; instead of the model's `tokenizer_config.json` `chat_template`.
    /// A tool-calling model's template renders `tools`, assistant `tool_calls` and `tool` turns.
    #[arg(long, env = "LLMSERVE_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
    /// `json` or `text` logs.
    #[arg(long, env = "LLMSERVE_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

impl Args {
    /// The model directory: what `--model` resolved to at start, or `--model` itself.
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        let p = self.model_path.clone().unwrap_or_else(|| PathBuf::from(&self.model));
        if p.join("config.json").is_file() {
            return Ok(p);
        }
        anyhow::bail!("--model {:?} is not a model directory (no config.json there)", self.model)
    }

    /// The served model id: `--served-model-name`, else `--model` as given when it is a repo id,
    /// else the directory's name.
    pub fn served_name(&self) -> String {
        if let Some(n) = &self.served_model_name {
            return n.clone();
        }
        let given = PathBuf::from(&self.model);
        if self.model_path.as_ref().is_some_and(|p| *p != given) {
            return self.model.clone();
        }
        given.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    }
}
