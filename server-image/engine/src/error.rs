//! The engine's one error type.

/// What can go wrong loading or running a model.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The model directory is missing a file or holds something we cannot read.
    #[error("cannot load model: {0}")]
    Load(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Tokenising or detokenising failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Not enough free KV-cache blocks.
    #[error("KV cache exhausted: need {needed} blocks, {free} free")]
    CacheFull {
        /// Blocks asked for.
        needed: usize,
        /// Blocks free.
        free: usize,
    },
    /// A request the engine cannot serve as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// Stable short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Load(_) => "load",
            Error::Tensor(_) => "tensor",
            Error::Tokenizer(_) => "tokenizer",
            Error::CacheFull { .. } => "cache_full",
            Error::Invalid(_) => "invalid",
        }
    }
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
