//! Engine metrics with vLLM V1's names, types, labels (`model_name`, `engine`) and buckets, so
//! dashboards and adapters written for vLLM work unchanged. Every name lives here; a test compares
//! them with the catalogue file `server-image/metrics-catalogue.txt`.

use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Running requests.
pub const NUM_REQUESTS_RUNNING: &str = "vllm:num_requests_running";
/// Waiting requests.
pub const NUM_REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
/// KV-cache blocks in use, 0..1.
pub const KV_CACHE_USAGE_PERC: &str = "vllm:kv_cache_usage_perc";
/// Prompt tokens processed (counter; exposed as `_total`).
pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens";
/// Tokens generated (counter; exposed as `_total`).
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens";
/// Finished requests by `finished_reason` (counter; exposed as `_total`).
pub const REQUEST_SUCCESS: &str = "vllm:request_success";
/// Preemptions (counter; exposed as `_total`).
pub const NUM_PREEMPTIONS: &str = "vllm:num_preemptions";
/// Prompt tokens looked up in the prefix cache (counter; exposed as `_total`).
pub const PREFIX_CACHE_QUERIES: &str = "vllm:prefix_cache_queries";
/// Prompt tokens found in the prefix cache (counter; exposed as `_total`).
pub const PREFIX_CACHE_HITS: &str = "vllm:prefix_cache_hits";
/// Time to first token.
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "vllm:time_to_first_token_seconds";
/// Time between consecutive output tokens.
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "vllm:inter_token_latency_seconds";
/// Mean time per output token of a request.
pub const REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS: &str = "vllm:request_time_per_output_token_seconds";
/// Arrival to finish.
pub const E2E_REQUEST_LATENCY_SECONDS: &str = "vllm:e2e_request_latency_seconds";
/// Arrival to first scheduling.
pub const REQUEST_QUEUE_TIME_SECONDS: &str = "vllm:request_queue_time_seconds";
/// First scheduling to finish.
pub const REQUEST_INFERENCE_TIME_SECONDS: &str = "vllm:request_inference_time_seconds";
/// First scheduling to first token.
pub const REQUEST_PREFILL_TIME_SECONDS: &str = "vllm:request_prefill_time_seconds";
/// First token to finish.
pub const REQUEST_DECODE_TIME_SECONDS: &str = "vllm:request_decode_time_seconds";
/// Prompt length per request.
pub const REQUEST_PROMPT_TOKENS: &str = "vllm:request_prompt_tokens";
/// Generated length per request.
pub const REQUEST_GENERATION_TOKENS: &str = "vllm:request_generation_tokens";
/// `max_tokens` per request.
pub const REQUEST_PARAMS_MAX_TOKENS: &str = "vllm:request_params_max_tokens";
/// `n` per request (always 1 for now).
pub const REQUEST_PARAMS_N: &str = "vllm:request_params_n";
/// Tokens per engine step.
pub const ITERATION_TOKENS: &str = "vllm:iteration_tokens_total";
/// Cache configuration, as labels of a gauge fixed at 1.
pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";
/// Sequences in the current batch (llmserve's own).
pub const BATCH_SIZE: &str = "llmserve:batch_size";

/// Every engine family as exposed on `/metrics` (counters with `_total`).
pub const ENGINE_FAMILIES: &[&str] = &[
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    TIME_TO_FIRST_TOKEN_SECONDS,
    INTER_TOKEN_LATENCY_SECONDS,
    REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
    E2E_REQUEST_LATENCY_SECONDS,
    REQUEST_QUEUE_TIME_SECONDS,
    REQUEST_INFERENCE_TIME_SECONDS,
    REQUEST_PREFILL_TIME_SECONDS,
    REQUEST_DECODE_TIME_SECONDS,
    REQUEST_PROMPT_TOKENS,
    REQUEST_GENERATION_TOKENS,
    REQUEST_PARAMS_MAX_TOKENS,
    REQUEST_PARAMS_N,
    ITERATION_TOKENS,
    CACHE_CONFIG_INFO,
    BATCH_SIZE,
];

const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
const TOKEN_LATENCY_BUCKETS: [f64; 19] =
    [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const REQUEST_LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
const ITERATION_BUCKETS: [f64; 13] =
    [1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];
const N_BUCKETS: [f64; 5] = [1.0, 2.0, 5.0, 10.0, 20.0];

/// vLLM's 1-2-5 series up to `max`: 1, 2, 5, 10, 20, 50, ...
pub fn one_two_five_buckets(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1usize;
    'outer: loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max {
                break 'outer;
            }
            out.push(v as f64);
        }
        scale *= 10;
    }
    out
}

/// Handles to every engine metric, labelled for one model.
#[derive(Clone)]
pub struct EngineMetrics {
    /// Running requests.
    pub running: Gauge,
    /// Waiting requests.
    pub waiting: Gauge,
    /// KV-cache usage.
    pub kv_usage: Gauge,
    /// Prompt tokens.
    pub prompt_tokens: IntCounter,
    /// Generated tokens.
    pub generation_tokens: IntCounter,
    /// Finished requests by reason.
    pub success: IntCounterVec,
    /// Preemptions.
    pub preemptions: IntCounter,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: IntCounter,
    /// Prompt tokens found there.
    pub prefix_hits: IntCounter,
    /// TTFT.
    pub ttft: Histogram,
    /// Inter-token latency.
    pub itl: Histogram,
    /// Time per output token.
    pub tpot: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    /// Queue time.
    pub queue: Histogram,
    /// Inference time.
    pub inference: Histogram,
    /// Prefill time.
    pub prefill: Histogram,
    /// Decode time.
    pub decode: Histogram,
    /// Prompt length.
    pub prompt_len: Histogram,
    /// Generated length.
    pub generation_len: Histogram,
    /// `max_tokens`.
    pub max_tokens: Histogram,
    /// `n`.
    pub n: Histogram,
    /// Tokens per step.
    pub iteration_tokens: Histogram,
    /// Sequences in the current batch.
    pub batch_size: Gauge,
}

/// Cache facts for `vllm:cache_config_info`.
#[derive(Debug, Clone)]
pub struct CacheInfo {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Whether prefix caching is on.
    pub prefix_caching: bool,
    /// Cache dtype.
    pub cache_dtype: String,
}

impl EngineMetrics {
    /// Registers every engine family in `registry` with `model_name` and `engine="0"` labels.
    pub fn register(
        registry: &Registry,
        model_name: &str,
        max_model_len: usize,
        cache: &CacheInfo,
    ) -> prometheus::Result<Self> {
        let labels = [("model_name", model_name), ("engine", "0")];
        let opts = |name: &str, help: &str| {
            let mut o = Opts::new(name, help);
            for (k, v) in labels {
                o = o.const_label(k, v);
            }
            o
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let mut o = HistogramOpts::new(name, help).buckets(buckets);
            for (k, v) in labels {
                o = o.const_label(k, v);
            }
            let h = Histogram::with_opts(o)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let g = Gauge::with_opts(opts(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(opts(&format!("{name}_total"), help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let success = IntCounterVec::new(
            opts(&format!("{REQUEST_SUCCESS}_total"), "Finished requests by finish reason."),
            &["finished_reason"],
        )?;
        registry.register(Box::new(success.clone()))?;
        let lens = one_two_five_buckets(max_model_len.max(1));
        let info = GaugeVec::new(
            opts(CACHE_CONFIG_INFO, "Information of the KV cache configuration."),
            &["block_size", "num_gpu_blocks", "enable_prefix_caching", "cache_dtype"],
        )?;
        registry.register(Box::new(info.clone()))?;
        info.with_label_values(&[
            &cache.block_size.to_string(),
            &cache.num_blocks.to_string(),
            &cache.prefix_caching.to_string(),
            &cache.cache_dtype,
        ])
        .set(1.0);
        Ok(EngineMetrics {
            running: gauge(NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.")?,
            waiting: gauge(NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.")?,
            kv_usage: gauge(KV_CACHE_USAGE_PERC, "KV-cache usage. 1 means 100 percent usage.")?,
            prompt_tokens: counter(PROMPT_TOKENS, "Number of prefill tokens processed.")?,
            generation_tokens: counter(GENERATION_TOKENS, "Number of generation tokens processed.")?,
            success,
            preemptions: counter(NUM_PREEMPTIONS, "Cumulative number of preemptions from the engine.")?,
            prefix_queries: counter(
                PREFIX_CACHE_QUERIES,
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_hits: counter(PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens.")?,
            ttft: hist(
                TIME_TO_FIRST_TOKEN_SECONDS,
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS.to_vec(),
            )?,
            itl: hist(
                INTER_TOKEN_LATENCY_SECONDS,
                "Histogram of inter-token latency in seconds.",
                TOKEN_LATENCY_BUCKETS.to_vec(),
            )?,
            tpot: hist(
                REQUEST_TIME_PER_OUTPUT_TOKEN_SECONDS,
                "Histogram of time per output token in seconds.",
                TOKEN_LATENCY_BUCKETS.to_vec(),
            )?,
            e2e: hist(
                E2E_REQUEST_LATENCY_SECONDS,
                "Histogram of end to end request latency in seconds.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            queue: hist(
                REQUEST_QUEUE_TIME_SECONDS,
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            inference: hist(
                REQUEST_INFERENCE_TIME_SECONDS,
                "Histogram of time spent in RUNNING phase for request.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            prefill: hist(
                REQUEST_PREFILL_TIME_SECONDS,
                "Histogram of time spent in PREFILL phase for request.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            decode: hist(
                REQUEST_DECODE_TIME_SECONDS,
                "Histogram of time spent in DECODE phase for request.",
                REQUEST_LATENCY_BUCKETS.to_vec(),
            )?,
            prompt_len: hist(REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.", lens.clone())?,
            generation_len: hist(REQUEST_GENERATION_TOKENS, "Number of generation tokens processed.", lens.clone())?,
            max_tokens: hist(REQUEST_PARAMS_MAX_TOKENS, "Histogram of the max_tokens request parameter.", lens)?,
            n: hist(REQUEST_PARAMS_N, "Histogram of the n request parameter.", N_BUCKETS.to_vec())?,
            iteration_tokens: hist(
                ITERATION_TOKENS,
                "Histogram of number of tokens per engine_step.",
                ITERATION_BUCKETS.to_vec(),
            )?,
            batch_size: gauge(BATCH_SIZE, "Sequences in the engine's current batch.")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_series() {
        assert_eq!(one_two_five_buckets(512), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]);
    }
}
