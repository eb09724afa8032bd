//! Shared server state: the engine (once loaded), tokenizer, chat template, metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use llmserve_engine::engine::EngineHandle;
use llmserve_engine::guided::Guidance;
use llmserve_engine::tokenizer::Tokenizer;
use llmserve_openai::body::BodyLimits;

use crate::http_metrics::HttpMetrics;

/// What a loaded model contributes.
pub struct Loaded {
    /// Submits requests.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// `chat_template` of tokenizer_config.json, if any.
    pub chat_template: Option<String>,
    /// `architectures[0]`.
    pub architecture: String,
    /// Token ids the model can embed (`vocab_size` of config.json).
    pub model_vocab_size: usize,
    /// Compiles structured-output grammars; `None` when llguidance cannot read the tokenizer.
    pub guidance: Option<Arc<Guidance>>,
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The fields behind [`AppState`].
pub struct Inner {
    /// The id clients send as `model`.
    pub model_id: String,
    /// Longest prompt + completion.
    pub max_model_len: usize,
    /// Largest request body accepted, and how long it may take to arrive.
    pub body: BodyLimits,
    /// Set once the model is loaded; `/health` is ready from then on.
    pub loaded: OnceLock<Loaded>,
    /// Every metric family (engine and HTTP).
    pub registry: prometheus::Registry,
    /// Service-level HTTP metrics.
    pub http: HttpMetrics,
    /// Server start, as Unix seconds (the `created` of `/v1/models`).
    pub created: u64,
    /// Set on SIGTERM: `/health` answers 503 while requests are still served.
    pub draining: std::sync::atomic::AtomicBool,
    seed: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// State for a server of `model_id`; the model is attached later with [`AppState::set_loaded`].
    pub fn new(
        model_id: String,
        max_model_len: usize,
        body: BodyLimits,
        registry: prometheus::Registry,
    ) -> prometheus::Result<Self> {
        let http = HttpMetrics::register(&registry, &model_id)?;
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(AppState(Arc::new(Inner {
            model_id,
            max_model_len,
            body,
            loaded: OnceLock::new(),
            registry,
            http,
            created,
            draining: std::sync::atomic::AtomicBool::new(false),
            seed: AtomicU64::new(created),
        })))
    }

    /// Marks the model loaded.
    pub fn set_loaded(&self, loaded: Loaded) {
        let _ = self.0.loaded.set(loaded);
    }

    /// A fresh seed for a request that brought none.
    pub fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }
}
